"""Sends that wait: the minute timer releases those that fell due; the CRM cancels those not begun.

Invariants:
- ``release_due`` only queues ``DeliverSend`` commands; whether a send may go is decided by the state
  machine when the command runs (a send that is not due yet stays as it is), so releasing twice is
  harmless. A released send stays due until the machine moves or ends it, so a lost queue message is
  released again by a later tick.
- ``cancel`` is a compare-and-set from ``scheduled``/``queued`` with no provider call made (step
  ``none``): once the machine checkpointed its first step the send is ``sending`` and cancel is refused,
  so a canceled send never reaches the provider.
"""

from __future__ import annotations

from datetime import timedelta

from sync_core.domain.sending import CANCELABLE, Send, SendStep
from sync_core.errors import ConcurrencyConflict, SendNotCancelable, SendNotFound
from sync_core.use_cases.send.common import SendDeps, enqueue

RELEASE_BATCH = 500
REDUE_AFTER = timedelta(minutes=5)  # a released send not moved by then is released again


def release_due(deps: SendDeps, limit: int = RELEASE_BATCH) -> int:
    """Queue every send due by now (up to ``limit``); returns how many were queued."""
    now = deps.clock.now()
    released = 0
    for org_id, send_id in deps.sends.due(now + timedelta(seconds=1), limit):
        deps.sends.set_due(org_id, send_id, now + REDUE_AFTER)
        enqueue(deps, org_id, send_id)
        released += 1
    return released


def cancel(deps: SendDeps, org_id: str, send_id: str) -> Send:
    for _ in range(5):
        stored = deps.sends.get(org_id, send_id)
        if stored is None:
            raise SendNotFound(send_id)
        send = stored.value
        if send.status not in CANCELABLE or send.step is not SendStep.NONE:
            raise SendNotCancelable(send.status.value)
        try:
            deps.sends.replace(send.canceled().forgotten(), stored.etag)
        except ConcurrencyConflict:
            continue
        deps.sends.set_due(org_id, send_id, None)
        deps.sends.drop_content(org_id, send_id)
        return send.canceled()
    raise ConcurrencyConflict("the send kept changing; try again")


def get(deps: SendDeps, org_id: str, send_id: str) -> Send:
    stored = deps.sends.get(org_id, send_id)
    if stored is None:
        raise SendNotFound(send_id)
    return stored.value
