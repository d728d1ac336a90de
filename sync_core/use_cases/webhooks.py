"""CRM webhooks (spec §4): each new activity and each deletion POSTed to the org's ``webhook_url``.

    activity saved (sync, ingest) + its outbox event, in one transaction ── WebhookEvents.created ─┐
    an outbox event a crash left behind ── drain_outbox (maintenance timer) ──────────────────────┤
    activity deleted ── WebhookEvents.deleted ──────────────────────────────────────────────────┤
                                          delivery logged "pending" + push-queue message <────────┘
                                          (then the outbox event is cleared)
    push queue ── deliver ── 2xx ──────────────────────────────> "delivered"
                          ── other status / no answer ──────────> "retrying", queued again after RETRY_DELAYS[n]
                          ── attempts exhausted / URL refused ──> "failed"
                          ── webhook removed / activity gone ──> "skipped"

A request: ``POST <webhook_url>`` with ``Content-Type: application/json`` and
- ``X-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes under the org's webhook secret>``
- ``X-Delivery-Id`` (the same on every attempt: receivers dedupe on it), ``X-Timestamp`` (unix seconds of
  this attempt; the body's ``sent_at`` holds it too, so it is covered by the signature), ``X-Event-Type``.
- body: ``{"id", "type": "activity.created"|"activity.deleted", "org_id", "occurred_at", "sent_at",
  "attempt", "data"}``; ``data`` is the activity as ``GET …/activities/{id}`` shows it (created), or
  ``{"id": activity_id}`` (deleted).

The secret: generated on first use (the first delivery or the first ``POST …/webhooks/secret``), stored
encrypted, and shown exactly once by ``reveal_secret``; revealing again needs ``rotate`` (a new secret).
A stored secret no configured key opens (a key dropped too early, or a key id reused for a new key):
revealing answers ``WebhookSecretUnreadable`` (409), ``rotate`` replaces it without reading it, and
deliveries meanwhile are retried on their schedule with a note saying so (never sent unsigned).

Invariants:
- Creations are delivered at least once, with a stable event id: the use cases save an org's activities
  with an outbox event each (when the org has a webhook URL), written in the same transaction as the
  activity; the event is cleared only after its delivery was logged and queued. A crash between the
  save and the announcement leaves the event in the outbox, and ``drain_outbox`` announces it later
  with the same id (``X-Delivery-Id`` and the body's ``id``), so receivers dedupe on it. Announcing
  never fails the caller (a failure is logged and the event stays in the outbox). Cost: the outbox row
  is one more operation in the activity's transaction, and clearing a page's events one transaction.
- Deletions are announced after the activity is deleted (at least once from the moment the event is
  queued).
- Nothing but an authenticated (function-key) org setting chooses the URL; the sender refuses non-https
  and private, loopback and link-local targets unless ``WEBHOOKS_ALLOW_PRIVATE_NETWORKS`` is set.
- The delivery log keeps the newest ``LOG_KEPT`` deliveries per org.
- Every attempt logs one operational event as it ends (``telemetry.WebhookDeliveryEvent``; never the URL).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from sync_core.domain.model import Activity
from sync_core.domain.representation import iso
from sync_core.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    SecretAlreadyRevealed,
    WebhookSecretUnreadable,
    WebhookSendFailed,
    WebhookUrlRefused,
)
from sync_core.ports import ActivityEvent, ActivityStore, Clock, SettingsRepository, WorkQueue
from sync_core.ports.push import WebhookDelivery, WebhookLog, WebhookSecret, WebhookSecretStore, WebhookSender
from sync_core.use_cases.commands import WEBHOOK_EVENTS, DeliverWebhook
from sync_core.use_cases.telemetry import WebhookDeliveryEvent, emit

log = logging.getLogger(__name__)

CREATED, DELETED = WEBHOOK_EVENTS  # "activity.created", "activity.deleted"
RETRY_DELAYS = (30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600)  # seconds; ~23 h in all
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
LOG_KEPT = 1000
TRIM_EVERY = 64  # trim an org's log on about one delivery in this many
# drain_outbox leaves events younger than this to the run or request that wrote them (announced within
# moments), so it does not announce them a second time; it announces only what a crash left behind.
OUTBOX_GRACE = timedelta(minutes=2)
OUTBOX_BATCH = 200
OUTBOX_ROUNDS = 25  # batches per org and drain; the rest waits for the next one
SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix of generated secrets, not a secret
UNREADABLE_NOTE = "the webhook secret cannot be decrypted with the configured keys; rotate it (webhooks/secret)"
NO_WEBHOOK_NOTE = "the org has no webhook URL any more"
ACTIVITY_GONE_NOTE = "the activity was deleted"
NO_ANSWER_PREFIX = "no answer: "
REFUSED_PREFIX = "URL not allowed: "


@dataclass
class WebhookDeps:
    settings: SettingsRepository
    activities: ActivityStore
    deliveries: WebhookLog
    secrets: WebhookSecretStore
    queue: WorkQueue
    clock: Clock
    sender: WebhookSender
    render: Callable[[Activity], Mapping[str, Any]]
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex
    new_secret: Callable[[], str] = lambda: SECRET_PREFIX + secrets.token_urlsafe(32)


# -- events ------------------------------------------------------------------------------------------


class WebhookEvents:
    """The ``ActivityEvents`` that queue a webhook delivery per event when the org has a webhook URL."""

    def __init__(self, deps: WebhookDeps) -> None:
        self._deps = deps

    def created(self, org_id: str, events: Sequence[ActivityEvent]) -> None:
        if not events:
            return
        try:
            publish(self._deps, org_id, events)
        except Exception as exc:  # announcing must never fail the sync or the request that caused it
            left = len(events)
            log.error("webhooks: could not announce %d events of org %s (kept): %s", left, org_id, type(exc).__name__)

    def deleted(self, org_id: str, activity_ids: Sequence[str]) -> None:
        self._announce(org_id, DELETED, list(activity_ids))

    def _announce(self, org_id: str, event: str, activity_ids: list[str]) -> None:
        if not activity_ids:
            return
        try:
            url = self._deps.settings.get(org_id).webhook_url
            if not url:
                return
            for activity_id in activity_ids:
                announce(self._deps, org_id, event, activity_id, url)
        except Exception as exc:  # announcing must never fail the sync or the request that caused it
            log.error("webhooks: could not queue %s for org %s: %s", event, org_id, type(exc).__name__)


def announce(deps: WebhookDeps, org_id: str, event: str, activity_id: str, url: str) -> WebhookDelivery:
    """Log a pending delivery and queue its first attempt."""
    delivery = WebhookDelivery(
        org_id=org_id,
        delivery_id=deps.new_id(),
        event=event,
        activity_id=activity_id,
        created_at=deps.clock.now(),
        url=url,
    )
    return _queue_first(deps, delivery)


def _queue_first(deps: WebhookDeps, delivery: WebhookDelivery) -> WebhookDelivery:
    deps.deliveries.record(delivery)
    deps.queue.enqueue(_work(delivery, 1).to_json())
    return delivery


def publish(deps: WebhookDeps, org_id: str, events: Sequence[ActivityEvent]) -> int:
    """Announce outbox events of the org: a delivery per event, its id the event id and its time the
    event's, logged and queued; then clear the events from the outbox. Without a webhook URL (removed
    since the save) the events are only cleared. Raises on a storage or queue failure: the events not
    cleared stay in the outbox, and announcing them again repeats the same delivery ids."""
    url = deps.settings.get(org_id).webhook_url
    if url:
        for event in events:
            _queue_first(
                deps,
                WebhookDelivery(
                    org_id=org_id,
                    delivery_id=event.event_id,
                    event=CREATED,
                    activity_id=event.activity_id,
                    created_at=event.occurred_at,
                    url=url,
                ),
            )
    deps.activities.clear_events(org_id, events)
    return len(events) if url else 0


def drain_outbox(deps: WebhookDeps, org_id: str) -> int:
    """Announce the org's outbox events older than ``OUTBOX_GRACE`` (left by a crash between a save and
    its announcement); returns how many were announced. Raises on a storage or queue failure."""
    written_before = deps.clock.now() - OUTBOX_GRACE
    announced = 0
    for _ in range(OUTBOX_ROUNDS):
        pending = deps.activities.pending_events(org_id, written_before, OUTBOX_BATCH)
        if pending:
            announced += publish(deps, org_id, pending)
            log.info("webhooks: %d outbox events of org %s left by an interrupted run", len(pending), org_id)
        if len(pending) < OUTBOX_BATCH:
            break
    return announced


def _work(delivery: WebhookDelivery, attempt: int) -> DeliverWebhook:
    return DeliverWebhook(
        delivery.org_id, delivery.delivery_id, delivery.event, delivery.activity_id, delivery.created_at, attempt
    )


# -- delivery ----------------------------------------------------------------------------------------


def deliver(deps: WebhookDeps, message: DeliverWebhook | Mapping[str, Any]) -> WebhookDelivery:
    """One attempt of a queued delivery (the command, or its JSON); logs and returns its new state.
    Raises only when storage or the queue fail (the host then retries the message). Logs one
    ``telemetry.WebhookDeliveryEvent`` either way."""
    started = time.perf_counter()
    done: WebhookDelivery | None = None
    try:
        done = _deliver(deps, message)
        return done
    finally:
        try:
            emit(_delivery_event(message, done, started))
        except Exception as exc:  # a message too broken to describe: the delivery's own error stands
            log.warning("webhooks: could not log a delivery event: %s", type(exc).__name__)


def _deliver(deps: WebhookDeps, message: DeliverWebhook | Mapping[str, Any]) -> WebhookDelivery:
    command = message if isinstance(message, DeliverWebhook) else DeliverWebhook.from_json(message)
    delivery = WebhookDelivery(
        org_id=command.org_id,
        delivery_id=command.delivery_id,
        event=command.event,
        activity_id=command.activity_id,
        created_at=command.created_at,
    )
    attempt = command.attempt
    now = deps.clock.now()
    url = deps.settings.get(delivery.org_id).webhook_url
    if not url:
        return _log(deps, replace(delivery, status="skipped", error=NO_WEBHOOK_NOTE))
    data: Mapping[str, Any]
    if delivery.event == CREATED:
        activity = deps.activities.get(delivery.org_id, delivery.activity_id)
        if activity is None:
            return _log(deps, replace(delivery, status="skipped", error=ACTIVITY_GONE_NOTE, url=url))
        data = deps.render(activity)
    else:
        data = {"id": delivery.activity_id}
    try:
        secret = current_secret(deps, delivery.org_id)
    except WebhookSecretUnreadable:
        # Not sent unsigned or under a made-up secret: retried on the usual schedule, so restoring the key
        # or rotating the secret lets the next attempt through.
        tried = replace(delivery, attempts=attempt, last_attempt_at=now, url=url)
        return _retry_or_fail(deps, replace(tried, error=UNREADABLE_NOTE), attempt)
    body = json.dumps(
        {
            "id": delivery.delivery_id,
            "type": delivery.event,
            "org_id": delivery.org_id,
            "occurred_at": iso(delivery.created_at),
            "sent_at": iso(now),
            "attempt": attempt,
            "data": data,
        },
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    ).encode("utf-8")
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Signature": signature(secret, body),
        "X-Delivery-Id": delivery.delivery_id,
        "X-Timestamp": str(int(now.timestamp())),
        "X-Event-Type": delivery.event,
    }
    tried = replace(delivery, attempts=attempt, last_attempt_at=now, url=url)
    try:
        status = deps.sender.post(url, body, headers)
    except WebhookUrlRefused as exc:
        return _log(deps, replace(tried, status="failed", error=f"{REFUSED_PREFIX}{exc}"))
    except WebhookSendFailed as exc:
        return _retry_or_fail(deps, replace(tried, error=f"{NO_ANSWER_PREFIX}{exc}"), attempt)
    if 200 <= status < 300:
        done = _log(deps, replace(tried, status="delivered", response_status=status, error=""))
        _maybe_trim(deps, done)
        return done
    return _retry_or_fail(deps, replace(tried, response_status=status, error=f"HTTP {status}"), attempt)


def _delivery_event(
    message: DeliverWebhook | Mapping[str, Any], done: WebhookDelivery | None, started: float
) -> WebhookDeliveryEvent:
    """The attempt's event: its outcome, what failed in one word, never the URL or an error's text."""
    elapsed = int((time.perf_counter() - started) * 1000)
    fields = message.to_json() if isinstance(message, DeliverWebhook) else message
    attempt = fields.get("attempt")
    event = WebhookDeliveryEvent(
        org_id=str(fields.get("org_id", "")),
        delivery_id=str(fields.get("delivery_id", "")),
        event_type=str(fields.get("event", "")),
        attempt=attempt if isinstance(attempt, int) else 0,
        outcome="raised",  # storage or the queue failed: the host retries the message
        duration_ms=elapsed,
    )
    if done is None:
        return event
    retry = None
    if done.next_attempt_at is not None and done.last_attempt_at is not None:
        retry = (done.next_attempt_at - done.last_attempt_at).total_seconds()
    return replace(
        event,
        outcome=done.status,
        failure=_failure_word(done),
        response_status=done.response_status or 0,
        final=done.status in ("delivered", "failed", "skipped"),
        next_retry_s=retry,
    )


def _failure_word(delivery: WebhookDelivery) -> str:
    if delivery.status == "delivered":
        return ""
    error = delivery.error
    words = {NO_WEBHOOK_NOTE: "no_webhook", ACTIVITY_GONE_NOTE: "activity_gone", UNREADABLE_NOTE: "secret_unreadable"}
    if error in words:
        return words[error]
    if error.startswith(REFUSED_PREFIX):
        return "url_refused"
    if error.startswith(NO_ANSWER_PREFIX):
        return "no_answer"
    return "http_status" if delivery.response_status else "other"


def _retry_or_fail(deps: WebhookDeps, delivery: WebhookDelivery, attempt: int) -> WebhookDelivery:
    if attempt >= MAX_ATTEMPTS:
        return _log(deps, replace(delivery, status="failed", next_attempt_at=None))
    delay = RETRY_DELAYS[attempt - 1]
    retrying = replace(delivery, status="retrying", next_attempt_at=deps.clock.now() + timedelta(seconds=delay))
    deps.queue.enqueue(_work(retrying, attempt + 1).to_json(), delay)
    return _log(deps, retrying)


def _log(deps: WebhookDeps, delivery: WebhookDelivery) -> WebhookDelivery:
    deps.deliveries.record(delivery)
    return delivery


def _maybe_trim(deps: WebhookDeps, delivery: WebhookDelivery) -> None:
    if int(hashlib.sha256(delivery.delivery_id.encode()).hexdigest()[:8], 16) % TRIM_EVERY == 0:
        deps.deliveries.trim(delivery.org_id, LOG_KEPT)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


# -- the secret --------------------------------------------------------------------------------------


def current_secret(deps: WebhookDeps, org_id: str) -> str:
    """The org's secret, generated on first use. Raises ``WebhookSecretUnreadable`` when no configured
    key opens the stored one."""
    for _ in range(5):
        found = deps.secrets.get(org_id)
        if found is not None:
            return found.value.value
        try:
            fresh = WebhookSecret(deps.new_secret(), deps.clock.now())
            deps.secrets.put(org_id, fresh, None)
            return fresh.value
        except AlreadyExists:
            continue  # generated concurrently: use that one
    raise ConcurrencyConflict("the webhook secret kept changing")


def reveal_secret(deps: WebhookDeps, org_id: str, rotate: bool = False) -> WebhookSecret:
    """Show the org's secret once: generated on first use; a secret shown before is never shown again
    (``SecretAlreadyRevealed``). ``rotate`` replaces it with a new one, which is shown and signs every
    attempt from then on; it never reads the old one, so it also replaces a secret no configured key
    opens (which otherwise raises ``WebhookSecretUnreadable``)."""
    if rotate:
        return _rotate(deps, org_id)
    current_secret(deps, org_id)
    for _ in range(5):
        found = deps.secrets.get(org_id)
        if found is None:
            continue
        if found.value.revealed and not rotate:
            raise SecretAlreadyRevealed("the webhook secret was already shown; rotate it to get a new one")
        shown = (
            WebhookSecret(deps.new_secret(), deps.clock.now(), revealed=True)
            if rotate
            else replace(found.value, revealed=True)
        )
        try:
            deps.secrets.put(org_id, shown, found.etag)
            return shown
        except ConcurrencyConflict:
            continue
    raise ConcurrencyConflict("the webhook secret kept changing")


def _rotate(deps: WebhookDeps, org_id: str) -> WebhookSecret:
    for _ in range(5):
        shown = WebhookSecret(deps.new_secret(), deps.clock.now(), revealed=True)
        try:
            deps.secrets.put(org_id, shown, deps.secrets.version(org_id))
            return shown
        except (AlreadyExists, ConcurrencyConflict):
            continue  # replaced concurrently: replace that one
    raise ConcurrencyConflict("the webhook secret kept changing")
