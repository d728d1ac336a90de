"""Sending mail from the CRM through a connected mailbox, exactly once (docs/sending.md).

- ``request``: the CRM's request, stored once per Idempotency-Key, queued or scheduled.
- ``machine``: the state machine that takes a send through the provider (``MailSender``), its essay.
- ``pacing``: per-mailbox slots inside the provider's sending limits.
- ``schedule``: the timer's release of due sends, and cancel.
"""

from sync_core.use_cases.send.common import SendDeps
from sync_core.use_cases.send.machine import deliver
from sync_core.use_cases.send.request import SendRequested, fingerprint, request_send
from sync_core.use_cases.send.schedule import cancel, get, release_due

__all__ = ["SendDeps", "SendRequested", "cancel", "deliver", "fingerprint", "get", "release_due", "request_send"]
