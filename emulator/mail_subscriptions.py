"""Graph change-notification subscriptions for messages, and their outbound HTTP (facts §5).

* :class:`Subscription` is the stored subscription and its Graph JSON.
* :func:`parse_resource` accepts the Outlook message resources the emulator supports.
* :class:`SubscriptionService` serves ``/subscriptions`` and fans changes out to subscriptions.
* :class:`Notifier` performs the outbound calls: the validation handshake (synchronous, 10 s limit);
  change notifications on a few daemon worker threads, never on the thread of the change; lifecycle
  notifications synchronously (they are fired through the control API, whose caller gets the attempt
  record). Deliveries are retried with backoff (0.5 s, 1 s, 2 s) after a non-2xx answer, a connection
  error or no answer within 3 s. Every attempt is logged (status, duration, ``slow`` over 2,900 ms).

The notifier never holds the store lock during network I/O; it takes the lock it is given only to append
to its log.

Default HTTP client: one shared ``requests.Session`` that verifies TLS as usual (``REQUESTS_CA_BUNDLE`` or
certifi) except for loopback hosts (localhost, 127.0.0.0/8, ::1), whose certificates are not verified and
which are never sent through a proxy, so a local Functions host or test endpoint with any certificate
works. ``MailStore(directory, notifier_client_factory)`` replaces it: the factory is called for every
outbound request and must return an object with requests' ``post(url, data=, json=, headers=, timeout=)``
(return a shared session from it to keep connections alive).
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import re
import ssl
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus, urlsplit

import requests
from requests.adapters import BaseAdapter, HTTPAdapter

from .core import Principal, Request, Response, graph_error, graph_time, now_utc

MAX_EXPIRATION_MINUTES = 10080  # facts §5: likely current maximum for Outlook messages (unverified)
MAX_CLIENT_STATE = 128
MAX_SUBSCRIPTIONS_PER_MAILBOX = 1000
VALIDATION_TIMEOUT = 10.0
WORKERS = 8
_FAILED = "Subscription validation request failed."

_RESOURCE = re.compile(
    r"^/?(?:(?P<me>me)|users(?:/(?P<user>[^/()]+)|\('(?P<user_q>[^']+)'\)))"
    r"(?:/mailfolders(?:\('(?P<folder_q>[^']+)'\)|/(?P<folder>[^/()]+)))?/messages/?$",
    re.IGNORECASE,
)

log = logging.getLogger(__name__)

warnings.filterwarnings(
    "ignore", message=r"Unverified HTTPS request is being made to host '(localhost|127\.[0-9.]+|::1|\[::1\])'"
)


def parse_resource(resource: str) -> tuple[str | None, str | None] | None:
    """``(user key or None for me, folder key or None for the whole mailbox)``, or None if unsupported."""
    match = _RESOURCE.match(resource.strip())
    if match is None:
        return None
    user = None if match.group("me") else (match.group("user") or match.group("user_q"))
    return user, match.group("folder") or match.group("folder_q")


@dataclass
class Subscription:
    """A message subscription; ``folder_id`` None watches every folder of the mailbox."""

    id: str
    tenant_id: str
    application_id: str
    creator_id: str
    resource: str
    mailbox_id: str
    folder_id: str | None
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    expiration: datetime
    client_state: str | None
    immutable_ids: bool

    def is_active(self, moment: datetime | None = None) -> bool:
        return self.expiration > (moment or now_utc())

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.application_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _expiration_text(self.expiration),
            "creatorId": self.creator_id,
            "includeResourceData": None,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


def _expiration_text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def is_loopback(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _UnverifiedTlsAdapter(HTTPAdapter):
    """Transport for loopback endpoints: TLS without verification, from one prebuilt SSL context
    (so no CA bundle is loaded per connection)."""

    def __init__(self) -> None:
        self._context = ssl.create_default_context()
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        super().__init__(pool_maxsize=16)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


class LoopbackTrustingSession(requests.Session):
    """``requests.Session`` that skips TLS verification and proxies for loopback hosts only."""

    def __init__(self) -> None:
        super().__init__()
        self._loopback = _UnverifiedTlsAdapter()

    def get_adapter(self, url: str) -> BaseAdapter:
        return self._loopback if is_loopback(url) else super().get_adapter(url)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        text_url = url if isinstance(url, str) else url.decode()
        if is_loopback(text_url):
            kwargs.setdefault("verify", False)
            kwargs.setdefault("proxies", {"http": None, "https": None})
        verb = method if isinstance(method, str) else method.decode()
        return super().request(verb, text_url, *args, **kwargs)


class Notifier:
    """Outbound calls of the subscription machinery, with an attempt log guarded by the store's lock."""

    def __init__(self, lock: threading.RLock, client_factory: Callable[[], Any] | None = None) -> None:
        self._lock = lock
        self._client_factory = client_factory
        self._session = LoopbackTrustingSession()  # shared by all threads: urllib3's pools are thread-safe
        self._jobs: queue.Queue[tuple[str, dict[str, Any], dict[str, Any]] | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.log: list[dict[str, Any]] = []
        self.timeout = 3.0
        self.retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0)

    def validate(self, url: str) -> str | None:
        """Run the validation handshake against ``url``; the error message if it failed, else None."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        target = url + ("&" if "?" in url else "?") + "validationToken=" + quote_plus(token)
        started = time.monotonic()
        status, error = None, None
        try:
            answer = self._send(
                target, data=b"", headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=VALIDATION_TIMEOUT
            )
            status = answer.status_code
            if status != 200:
                error = f"{_FAILED} Notification endpoint must respond with 200 OK to validation request."
            elif not answer.headers.get("Content-Type", "").lower().startswith("text/plain"):
                error = f"{_FAILED} Response must be of Content-Type 'text/plain'."
            elif answer.text != token:
                error = f"{_FAILED} Response must exactly match validationToken query parameter."
        except requests.Timeout:
            error = "Subscription validation request timed out."
        except requests.RequestException as exc:
            error = f"{_FAILED} {type(exc).__name__}: the notification endpoint is unreachable."
        self._record({"kind": "validation", "url": url, "attempt": 1, "status": status, "error": error}, started)
        return error

    def post_async(self, url: str, payload: dict[str, Any], info: dict[str, Any]) -> None:
        """Deliver ``payload`` to ``url`` on a worker thread; returns at once."""
        with self._lock:
            if not self._workers:
                for number in range(WORKERS):
                    worker = threading.Thread(target=self._work, name=f"graph-notify-{number}", daemon=True)
                    worker.start()
                    self._workers.append(worker)
        self._jobs.put((url, payload, info))

    def _work(self) -> None:
        """Worker loop (daemon threads, so a retrying delivery never holds up interpreter exit)."""
        while (job := self._jobs.get()) is not None:
            try:
                self.post(*job)
            except Exception:  # a worker must survive anything a delivery does
                log.exception("notification delivery to %s failed", job[0])

    def post(self, url: str, payload: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        """Deliver with retries; returns the last attempt's log record."""
        record: dict[str, Any] = {}
        for attempt in range(1, len(self.retry_delays) + 2):
            started = time.monotonic()
            status, error = None, None
            try:
                answer = self._send(url, json=payload, timeout=self.timeout)
                status = answer.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except requests.Timeout:
                error = f"no response within {self.timeout:g} s"
            except requests.RequestException as exc:
                error = type(exc).__name__
            record = self._record({**info, "url": url, "attempt": attempt, "status": status, "error": error}, started)
            if error is None or attempt > len(self.retry_delays):
                return record
            if self._stopping.wait(self.retry_delays[attempt - 1]):
                return record
        return record

    def _send(self, url: str, **kwargs: Any) -> Any:
        """POST through a client from the factory, else through the shared default session."""
        client = self._client_factory() if self._client_factory is not None else self._session
        return client.post(url, **kwargs)

    def _record(self, entry: dict[str, Any], started: float) -> dict[str, Any]:
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        entry = {
            **entry,
            "time": graph_time(now_utc()),
            "durationMs": duration_ms,
            "slow": duration_ms > 2900,
            "ok": entry.get("error") is None,
        }
        with self._lock:
            self.log.append(entry)
        return entry

    def shutdown(self) -> None:
        """Stop the workers (pending retries are dropped) and close the default session."""
        self._stopping.set()
        for _ in self._workers:
            self._jobs.put(None)
        self._session.close()


LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
_READ_PERMISSIONS = ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic", "Mail.ReadBasic.All")


class SubscriptionService:
    """``/subscriptions`` CRUD, change-notification fan-out and lifecycle events.

    Shares the store's lock; never calls the directory or the network while holding it. Expired
    subscriptions are invisible to the Graph API (404, left out of lists) and never deliver.
    """

    def __init__(
        self,
        lock: threading.RLock,
        directory: Any,
        notifier: Notifier,
        resolve_folder: Callable[[str, str, str], str | None],
        allow_http: Callable[[], bool],
    ) -> None:
        self._lock = lock
        self._directory = directory
        self._notifier = notifier
        self._resolve_folder = resolve_folder
        self._allow_http = allow_http
        self.subscriptions: dict[str, Subscription] = {}

    # -- Graph API ---------------------------------------------------------------------------------

    def handle(self, request: Request, principal: Principal, base_url: str) -> Response:
        parts = [p for p in request.path.split("/") if p]
        tail = parts[parts.index(next(p for p in parts if p.lower() == "subscriptions")) + 1 :]
        method = request.method.upper()
        if not tail:
            if method == "POST":
                return self._create(request, principal, base_url)
            if method == "GET":
                with self._lock:
                    mine = [s.to_json() for s in self.subscriptions.values() if self._owned(s, principal)]
                return Response.json(200, {"@odata.context": f"{base_url}/$metadata#subscriptions", "value": mine})
            return _method_not_allowed(method)
        with self._lock:
            sub = self.subscriptions.get(tail[0])
            if sub is None or not self._owned(sub, principal):
                return graph_error(404, "ResourceNotFound", f"The object '{tail[0]}' was not found.")
        if len(tail) == 2 and tail[1].lower() == "reauthorize" and method == "POST":
            return Response(204)
        if len(tail) != 1:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{tail[-1]}'.")
        if method == "GET":
            return Response.json(
                200, {"@odata.context": f"{base_url}/$metadata#subscriptions/$entity", **sub.to_json()}
            )
        if method == "DELETE":
            with self._lock:
                self.subscriptions.pop(sub.id, None)
            return Response(204)
        if method == "PATCH":
            return self._renew(request, sub, base_url)
        return _method_not_allowed(method)

    def _owned(self, sub: Subscription, principal: Principal) -> bool:
        if not sub.is_active() or sub.tenant_id != principal.tenant_id or sub.application_id != principal.client_id:
            return False
        return principal.is_app or sub.creator_id == principal.user_id

    def _create(self, request: Request, principal: Principal, base_url: str) -> Response:
        body = _json_object(request)
        if isinstance(body, Response):
            return body
        for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not body.get(name):
                return graph_error(
                    400, "InvalidRequest", f"The property '{name}' is required to create a subscription."
                )
        resource = str(body["resource"])
        change_types = tuple(c.strip() for c in str(body["changeType"]).split(",") if c.strip())
        bad = [c for c in change_types if c not in ("created", "updated", "deleted")]
        if bad or not change_types:
            return graph_error(
                400, "InvalidRequest", f"ChangeType '{','.join(bad)}' is not supported for resource '{resource}'."
            )
        target = parse_resource(resource)
        if target is None:
            return graph_error(
                400, "InvalidRequest", f"Resource '{resource}' is not supported for change notifications."
            )
        urls = [str(body["notificationUrl"])] + (
            [str(body["lifecycleNotificationUrl"])] if body.get("lifecycleNotificationUrl") else []
        )
        for url in urls:
            if problem := self._url_problem(url):
                return graph_error(400, "ValidationError", problem)
        client_state = body.get("clientState")
        if client_state is not None and len(str(client_state)) > MAX_CLIENT_STATE:
            return graph_error(
                400, "ValidationError", f"The clientState must not exceed {MAX_CLIENT_STATE} characters."
            )
        expiration = _expiration(body["expirationDateTime"])
        if isinstance(expiration, Response):
            return expiration
        user_key, folder_key = target
        if user_key is None and principal.is_app:
            return graph_error(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
        user = self._directory.resolve_user(principal.tenant_id, user_key or principal.user_id or "")
        if user is None:
            return _extension_error(404, "NotFound", "The mailbox was not found")
        if not principal.has_permission(*_READ_PERMISSIONS) or (not principal.is_app and user.id != principal.user_id):
            return _extension_error(403, "Forbidden", "Forbidden")
        allowed = getattr(self._directory, "mailbox_allowed", None)
        if principal.is_app and allowed is not None and not allowed(principal.tenant_id, principal.client_id, user.id):
            return graph_error(403, "ErrorAccessDenied", "Access to OData is disabled.")
        folder_id = None
        if folder_key is not None:
            folder_id = self._resolve_folder(user.id, user.tenant_id, folder_key)
            if folder_id is None:
                return _extension_error(404, "NotFound", "The specified folder could not be found in the store")
        with self._lock:
            if (
                sum(1 for s in self.subscriptions.values() if s.mailbox_id == user.id and s.is_active())
                >= MAX_SUBSCRIPTIONS_PER_MAILBOX
            ):
                return _extension_error(403, "Forbidden", "Too many subscriptions for this mailbox")
        for url in urls:
            if failure := self._notifier.validate(url):
                code = "InvalidRequest" if "timed out" in failure else "ValidationError"
                return graph_error(400, code, failure)
        sub = Subscription(
            id=str(uuid.uuid4()),
            tenant_id=principal.tenant_id,
            application_id=principal.client_id,
            creator_id=principal.user_id or principal.client_id,
            resource=resource,
            mailbox_id=user.id,
            folder_id=folder_id,
            change_types=change_types,
            notification_url=urls[0],
            lifecycle_url=urls[1] if len(urls) > 1 else None,
            expiration=expiration,
            client_state=None if client_state is None else str(client_state),
            immutable_ids=request.prefer().get("idtype", "").lower() == "immutableid",
        )
        with self._lock:
            self.subscriptions[sub.id] = sub
        return Response.json(201, {"@odata.context": f"{base_url}/$metadata#subscriptions/$entity", **sub.to_json()})

    def _renew(self, request: Request, sub: Subscription, base_url: str) -> Response:
        body = _json_object(request)
        if isinstance(body, Response):
            return body
        if "lifecycleNotificationUrl" in body:
            return graph_error(
                400, "InvalidRequest", "lifecycleNotificationUrl can only be set when the subscription is created."
            )
        expiration = _expiration(body["expirationDateTime"]) if "expirationDateTime" in body else sub.expiration
        if isinstance(expiration, Response):
            return expiration
        url = str(body.get("notificationUrl") or sub.notification_url)
        if url != sub.notification_url and (
            (problem := self._url_problem(url)) or (problem := self._notifier.validate(url))
        ):
            return graph_error(400, "ValidationError", problem)
        with self._lock:
            sub.expiration, sub.notification_url = expiration, url
            payload = sub.to_json()
        return Response.json(200, {"@odata.context": f"{base_url}/$metadata#subscriptions/$entity", **payload})

    def _url_problem(self, url: str) -> str | None:
        scheme = urlsplit(url).scheme.lower()
        if scheme == "https" or (scheme == "http" and self._allow_http()):
            return None
        return f"Subscription validation request failed. The notification URL '{url}' must use the HTTPS scheme."

    # -- delivery ----------------------------------------------------------------------------------

    def notify(
        self, mailbox_id: str, folder_id: str, change_type: str, *, immutable_id: str, rest_id: str, change_key: str
    ) -> None:
        """Queue a change notification to every active subscription watching it. Call under the lock."""
        now = now_utc()
        for sub in self.subscriptions.values():
            if (
                sub.mailbox_id != mailbox_id
                or change_type not in sub.change_types
                or not sub.is_active(now)
                or sub.folder_id not in (None, folder_id)
            ):
                continue
            shown = immutable_id if sub.immutable_ids else rest_id
            resource = f"Users/{mailbox_id}/Messages/{shown}"
            item = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": _expiration_text(sub.expiration),
                "changeType": change_type,
                "resource": resource,
                "resourceData": {
                    "@odata.type": "#Microsoft.Graph.Message",
                    "@odata.id": resource,
                    "@odata.etag": f'W/"{change_key}"',
                    "id": shown,
                },
                "clientState": sub.client_state,
                "tenantId": sub.tenant_id,
            }
            info = {"kind": "notification", "subscriptionId": sub.id, "changeType": change_type, "resource": resource}
            self._notifier.post_async(sub.notification_url, {"value": [item]}, info)

    def fire_lifecycle(self, subscription_id: str, event: str) -> dict[str, Any]:
        """Send a lifecycle event now (synchronously, with retries); ``subscriptionRemoved`` deletes it.

        Raises KeyError for an unknown subscription, ValueError for a bad event or no lifecycle URL.
        """
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"lifecycle event must be one of {', '.join(LIFECYCLE_EVENTS)}")
        with self._lock:
            sub = self.subscriptions[subscription_id]
            if not sub.lifecycle_url:
                raise ValueError("the subscription has no lifecycleNotificationUrl")
            if event == "subscriptionRemoved":
                del self.subscriptions[subscription_id]
            item = {
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": _expiration_text(sub.expiration),
                "tenantId": sub.tenant_id,
                "clientState": sub.client_state,
                "lifecycleEvent": event,
            }
            url = sub.lifecycle_url
        return self._notifier.post(
            url, {"value": [item]}, {"kind": "lifecycle", "subscriptionId": sub.id, "lifecycleEvent": event}
        )

    def describe(self) -> list[dict[str, Any]]:
        """Every stored subscription, expired ones included, for the control API."""
        with self._lock:
            return [
                {
                    **s.to_json(),
                    "mailboxId": s.mailbox_id,
                    "folderId": s.folder_id,
                    "tenantId": s.tenant_id,
                    "expired": not s.is_active(),
                    "immutableIds": s.immutable_ids,
                }
                for s in self.subscriptions.values()
            ]


def _json_object(request: Request) -> dict[str, Any] | Response:
    try:
        body = request.json()
    except ValueError:
        return graph_error(400, "BadRequest", "Invalid JSON in the request body.")
    if not isinstance(body, dict):
        return graph_error(400, "BadRequest", "The request body must be a JSON object.")
    return body


def _expiration(raw: Any) -> datetime | Response:
    try:
        parsed: datetime | None = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        parsed = _parse_long_fraction(str(raw))
    if parsed is None:
        return graph_error(400, "InvalidRequest", f"'{raw}' is not a valid value for expirationDateTime.")
    moment = parsed
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    now = now_utc()
    if moment <= now:
        return graph_error(400, "InvalidRequest", "Subscription expiration must be in the future.")
    if moment - now > timedelta(minutes=MAX_EXPIRATION_MINUTES):
        return _plain_extension_error(
            f"Subscription expiration can only be {MAX_EXPIRATION_MINUTES} minutes in the future."
        )
    return moment


def _parse_long_fraction(raw: str) -> datetime | None:
    """Graph sends seven fractional digits (``…00.0000000Z``); Python's parser takes at most six."""
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(Z|[+-]\d\d:\d\d)?$", raw)
    if match is None:
        return None
    try:
        return datetime.fromisoformat(
            f"{match.group(1)}.{match.group(2)[:6].ljust(6, '0')}" + (match.group(3) or "Z").replace("Z", "+00:00")
        )
    except ValueError:
        return None


def _extension_error(status: int, reason_status: str, reason: str) -> Response:
    return graph_error(
        status, "ExtensionError", f"Operation: Create; Exception: [Status Code: {reason_status}; Reason: {reason}]"
    )


def _plain_extension_error(message: str) -> Response:
    return graph_error(400, "ExtensionError", message)


def _method_not_allowed(method: str) -> Response:
    return graph_error(405, "BadRequest", f"The HTTP method '{method}' is not supported by this resource.")
