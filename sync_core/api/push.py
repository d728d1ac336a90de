"""Push routes: Graph notifications (anonymous), RFC 822 ingest, CRM webhook deliveries and secret, and the
org's Graph subscriptions (function key). The push queue's messages are commands
(``use_cases.commands``), dispatched there.

- ``POST /api/notifications`` and ``POST /api/notifications/lifecycle``: with ``?validationToken=`` the
  Graph validation handshake (200, ``text/plain``, the decoded token, never HTML); otherwise a
  notification collection → 202 with an empty body, whatever it held (a forger learns nothing). 400 for a
  body that is not ``{"value": [...]}``, 503 when storage is unreachable (Graph retries).
- ``POST /api/google/push``: a Gmail watch's Pub/Sub push, verified by its OIDC token (``gmail_push``).
- ``POST /api/orgs/{org}/messages:ingest[?mailbox_id=]`` with ``Content-Type: message/rfc822``: 201 with
  ``{"outcome": "created", ...}`` for a new activity, 200 otherwise (``merged``, ``unchanged``,
  ``not_logged`` with ``reason``). 415 other content types, 413 over ``INGEST_MAX_MESSAGE_BYTES`` (25 MiB
  by default), 400 ``malformed_message`` / ``message_too_complex`` / ``header_line_too_long`` (a physical header
  line over 8 KiB) / ``header_section_too_large`` (a header section over 256 KiB), with ``details.limit``
  (never the header itself), 404 unknown mailbox, 409 disconnected.
- ``GET /api/orgs/{org}/webhooks/deliveries?limit=&cursor=`` → ``{deliveries, next_cursor}``, newest first.
- ``POST /api/orgs/{org}/webhooks/secret[?rotate=true]`` → 201 ``{secret, created_at}``, shown once; 409
  ``secret_already_revealed`` when shown before and not rotated.
- ``GET /api/orgs/{org}/subscriptions`` → ``{enabled, subscriptions}``: the Graph subscriptions of the
  org's mailboxes with their expiry and counters.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sync_core.api.errors import api_error_of
from sync_core.api.http import ID_PATTERN, ApiError, ApiRequest, ApiResponse, ok
from sync_core.domain.representation import iso_or_none
from sync_core.errors import StorageUnavailable, WebhookSecretUnreadable
from sync_core.ports.push import PushSubscription, WebhookDelivery
from sync_core.use_cases import ingest, mailbox_watch, notifications, webhooks

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

log = logging.getLogger(__name__)

MAX_NOTIFICATION_BYTES = 1024 * 1024
MAX_VALIDATION_TOKEN = 4096
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_TEXT = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}


# -- Graph notifications (anonymous) ----------------------------------------------------------------


def change_notifications(svc: Services, req: ApiRequest) -> ApiResponse:
    return _notifications(svc, req, notifications.handle_changes)


def lifecycle_notifications(svc: Services, req: ApiRequest) -> ApiResponse:
    return _notifications(svc, req, notifications.handle_lifecycle)


def _notifications(svc: Services, req: ApiRequest, handle: Any) -> ApiResponse:
    token = req.query.get("validationToken")
    if token is not None:
        if len(token) > MAX_VALIDATION_TOKEN:
            raise ApiError(400, "invalid_validation_token", "the validation token is too long")
        return ApiResponse(200, token, _TEXT)
    payload = req.json_body(max_bytes=MAX_NOTIFICATION_BYTES)
    try:
        handle(svc.notification_deps(), payload)
    except StorageUnavailable as exc:  # a 503 at the edge
        log.warning("notifications: storage unavailable (%s); Graph will retry", type(exc).__name__)
        raise
    return ApiResponse(202, "", _TEXT)


# -- mailbox pushes (anonymous: the provider's credentials protect them) ------------------------------


def gmail_push(svc: Services, req: ApiRequest) -> ApiResponse:
    """``POST /api/google/push``: a Pub/Sub push of a Gmail watch. 204 once the push's OIDC token is
    verified (whether or not it named a watch of ours, so a sender learns nothing); 400
    ``invalid_notification`` without a valid token (one message whichever check failed) or for a body that
    is not a push; 503 when storage is unreachable (Pub/Sub retries). The sync
    is only requested (coalesced), never run here."""
    if len(req.body) > MAX_NOTIFICATION_BYTES:
        raise ApiError(413, "body_too_large", f"the body is over {MAX_NOTIFICATION_BYTES} bytes")
    mailbox_watch.receive_push(svc.mailbox_watch_deps(), "google", req.headers.get("authorization", ""), req.body)
    return ApiResponse(204, "", _TEXT)


# -- RFC 822 ingest ------------------------------------------------------------------------------------


def ingest_message(svc: Services, req: ApiRequest) -> ApiResponse:
    org = req.param("org")
    content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "message/rfc822":
        raise ApiError(415, "unsupported_media_type", "send the message as message/rfc822")
    mailbox_id = req.query.get("mailbox_id") or None
    if mailbox_id is not None and not ID_PATTERN.match(mailbox_id):
        raise ApiError(400, "invalid_query", "'mailbox_id' is not a mailbox id", {"field": "mailbox_id"})
    limit = svc.settings.ingest_max_bytes
    if len(req.body) > limit:
        raise ApiError(413, "message_too_large", f"the message is over {limit} bytes", {"limit": limit})
    if not req.body.strip():
        raise ApiError(400, "malformed_message", "the body is empty")
    result = ingest.ingest(svc.ingest_deps(), org, req.body, mailbox_id, max_bytes=limit)
    body = {
        "outcome": result.outcome,
        "reason": result.reason,
        "internet_message_id": result.internet_message_id,
        "activity_id": result.activity_id,
        "mailbox_id": result.mailbox_id,
        "direction": result.direction,
    }
    return ok(body, 201 if result.outcome == "created" else 200)


# -- CRM webhooks ------------------------------------------------------------------------------------


def webhook_deliveries(svc: Services, req: ApiRequest) -> ApiResponse:
    org = req.param("org")
    limit = _limit(req.query.get("limit"))
    cursor = req.query.get("cursor") or None
    try:
        page = svc.webhook_deps().deliveries.recent(org, cursor, limit)
    except ValueError as exc:
        raise ApiError(400, "invalid_cursor", "the cursor is not valid", {"field": "cursor"}) from exc
    return ok({"deliveries": [delivery_json(d) for d in page.items], "next_cursor": page.cursor})


def webhook_secret(svc: Services, req: ApiRequest) -> ApiResponse:
    org = req.param("org")
    rotate = (req.query.get("rotate") or "").lower() in ("1", "true", "yes")
    try:
        secret = webhooks.reveal_secret(svc.webhook_deps(), org, rotate=rotate)
    except WebhookSecretUnreadable as exc:
        # Mapped here too (by the one table) because callers outside the runner (the key-rotation tests,
        # an operator's script) call this handler directly and need the rotate hint.
        raise api_error_of(exc) or ApiError(409, exc.code, str(exc)) from exc
    return ok({"secret": secret.value, "created_at": iso_or_none(secret.created_at)}, 201)


def list_subscriptions(svc: Services, req: ApiRequest) -> ApiResponse:
    org = req.param("org")
    deps = svc.subscription_deps()
    return ok({"enabled": deps.enabled, "subscriptions": [subscription_json(s) for s in deps.store.for_org(org)]})


# -- JSON --------------------------------------------------------------------------------------------


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": delivery.delivery_id,
        "event": delivery.event,
        "activity_id": delivery.activity_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "created_at": iso_or_none(delivery.created_at),
        "last_attempt_at": iso_or_none(delivery.last_attempt_at),
        "next_attempt_at": iso_or_none(delivery.next_attempt_at),
        "response_status": delivery.response_status,
        "error": delivery.error or None,
        "url": delivery.url or None,
    }


def subscription_json(sub: PushSubscription) -> dict[str, Any]:
    return {
        "subscription_id": sub.subscription_id,
        "mailbox_id": sub.mailbox_id,
        "folder": sub.folder,
        "resource": sub.resource,
        "expires_at": iso_or_none(sub.expires_at),
        "created_at": iso_or_none(sub.created_at),
        "renewed_at": iso_or_none(sub.renewed_at),
        "notifications": sub.notifications,
        "rejected_notifications": sub.rejected,
        "last_notification_at": iso_or_none(sub.last_notification_at),
        "last_lifecycle_event": sub.last_lifecycle_event or None,
    }


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ApiError(400, "invalid_query", f"'limit' must be an integer from 1 to {MAX_LIMIT}", {"field": "limit"})
    return int(raw)
