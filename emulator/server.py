"""The HTTPS server: one port for identity (``/{tenant}/...``), Graph (``/v1.0/...``) and control
(``/_emulator/...``), plus Graph's own front door: authentication, directory routes, mailbox checks,
limits, injected faults and ``$batch``.

Invariants:

* Every response carries Content-Length, so HTTP/1.1 keep-alive works for clients that reuse
  connections; ``drop_connection`` closes the socket without a byte of response.
* A Graph call that targets a mailbox goes: token (401) → permission (403) → mailbox lookup (404) →
  own-mailbox / access policy (403) → limits (429) → latency and faults → ``mail``. From the mailbox
  lookup on, every outcome is counted per mailbox. The permission a route needs is
  ``mail_send.required_permissions``; a delegated user reaches another's mailbox only with its
  ``.Shared`` permission and the FullAccess right on that mailbox (control API ``…/rights``).
* A fault with ``after`` lets the call happen first and then answers with the fault (or drops the
  connection): "accepted, but the answer was lost".
* Attachment upload URLs (``/api/v2.0/…AttachmentSessions(…)?authtoken=…``) need no bearer token (the
  authtoken is the credential); faults and per-mailbox counters apply to them as to Graph calls.
* ``$batch`` sub-requests go through exactly the same path as direct calls (each is throttled and
  counted on its own), at most four at a time, with ``dependsOn`` ordering and 424 for dependents of a
  failure.
* The access log shows method, path (never the query) and status; tokens and secrets are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from werkzeug.datastructures import Headers

from emulator.certs import TlsMaterial, ensure_tls_material
from emulator.control import ControlApi
from emulator.core import GraphContext, Principal, Request, Response, graph_error, graph_time, now_utc
from emulator.directory import USER_DEFAULT_PROPERTIES, organization_properties, user_properties
from emulator.identity import GRAPH_APP_ID, IdentityPlatform, aad_error
from emulator.mail_send import required_permissions
from emulator.persistence import StateFile
from emulator.state import BUDGET_MESSAGE, EmulatorState, FaultRule

access_log = logging.getLogger("emulator.access")
log = logging.getLogger("emulator")

BATCH_LIMIT = 20
BATCH_PARALLELISM = 4
MAIL_SEGMENTS = ("mailfolders", "messages")
USER_READ_OTHERS = ("User.ReadBasic.All", "User.Read.All", "User.ReadWrite.All", "Directory.Read.All")
ORGANIZATION_READ_APP = ("Organization.Read.All", "Organization.ReadWrite.All", "Directory.Read.All")
ACCESS_DENIED = "Access is denied. Check credentials and try again."
INSUFFICIENT_PRIVILEGES = "Insufficient privileges to complete the operation."
USERS_BY_KEY = re.compile(r"^users\('(?P<key>[^']+)'\)$", re.IGNORECASE)


def throttled(retry_after: int | None, message: str) -> Response:
    """Graph's 429 body (as in the throttling docs), with Retry-After when one is known."""
    return Response.json(
        429,
        {
            "error": {
                "code": "TooManyRequests",
                "innerError": {
                    "code": "429",
                    "date": graph_time(now_utc()),
                    "message": "Please retry after",
                    "request-id": str(uuid.uuid4()),
                    "status": "429",
                },
                "message": message,
            }
        },
        {"Retry-After": str(retry_after)} if retry_after is not None else {},
    )


GRAPH_FAULT_ERRORS = {
    500: ("generalException", "An unspecified error has occurred."),
    503: (
        "serviceNotAvailable",
        "The service is temporarily unavailable for maintenance or is overloaded. You may repeat the request "
        "after a delay, the length of which may be specified in a Retry-After header.",
    ),
    502: ("UnknownError", ""),  # a gateway error: seen from Graph's front door; its body is not documented
    504: ("UnknownError", ""),
}


def graph_fault(rule: FaultRule) -> Response:
    """What an injected fault answers on Graph; Retry-After only when the rule gives one."""
    status = rule.status or 500
    if status == 429:
        return throttled(rule.retry_after, BUDGET_MESSAGE)
    code, message = GRAPH_FAULT_ERRORS[status]
    return graph_error(status, code, message, {"Retry-After": str(rule.retry_after)} if rule.retry_after else {})


def identity_fault(rule: FaultRule, origin: str) -> Response:
    """What an injected fault answers on the identity endpoints, in the AAD error shape."""
    response = aad_error(
        origin,
        "temporarily_unavailable",
        90033,
        "A transient error has occurred. Please try again.",
        status=rule.status or 500,
    )
    if rule.retry_after is not None:
        response.headers["Retry-After"] = str(rule.retry_after)
    return response


class GraphApi:
    """Microsoft Graph ``/v1.0``: authentication, directory routes, mailbox gatekeeping and ``$batch``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._batch_pool = ThreadPoolExecutor(BATCH_PARALLELISM * 4, thread_name_prefix="graph-batch")

    def close(self) -> None:
        self._batch_pool.shutdown(wait=False, cancel_futures=True)

    def upload(self, request: Request, origin: str) -> Response:
        """An attachment upload URL: faults and counters of its mailbox, then ``mail``; no bearer token."""
        mailbox_id = self.state.mail.upload_mailbox(request.path)
        response = self._after_simulation(
            request, lambda: self.state.mail.handle_upload(request, origin), mailbox_id
        )
        if mailbox_id is not None:
            self.state.count_mailbox_request(mailbox_id, "dropped" if response.drop_connection else response.status)
        return response

    def handle(self, request: Request, origin: str) -> Response:
        principal = self._authenticate(request, origin)
        if isinstance(principal, Response):
            return principal
        return self._route(request, principal, origin, in_batch=False)

    def _authenticate(self, request: Request, origin: str) -> Principal | Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        challenge = {
            "WWW-Authenticate": (
                f'Bearer realm="", authorization_uri="{origin}/common/oauth2/authorize", client_id="{GRAPH_APP_ID}"'
            )
        }
        if scheme.lower() != "bearer" or not token.strip():
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.", challenge)
        principal = self.state.tokens.principal_for(token.strip())
        if principal is None:
            return graph_error(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", challenge
            )
        return principal

    def _route(self, request: Request, principal: Principal, origin: str, *, in_batch: bool) -> Response:
        segments = request.path.removeprefix("/v1.0").strip("/").split("/")
        head = segments[0].lower()
        if head == "$batch":
            if in_batch:
                return graph_error(400, "BadRequest", "Nested batch requests are not supported.")
            return self._after_simulation(request, lambda: self._batch(request, principal, origin))
        if head == "subscriptions":
            return self._after_simulation(
                request, lambda: self.state.mail.handle_subscriptions(request, principal, f"{origin}/v1.0")
            )
        if head == "organization" and len(segments) == 1:
            return self._after_simulation(request, lambda: self._organization(request, principal, origin))
        if head == "me":
            user_segment, key = "me", None
        elif head == "users" and len(segments) > 1:
            user_segment, key = f"users/{segments[1]}", segments[1]
            segments = segments[1:]
        elif match := USERS_BY_KEY.match(segments[0]):
            user_segment, key = segments[0], match["key"]
        else:
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{segments[0]}'.")
        rest = "/".join(segments[1:])
        if not rest:
            return self._after_simulation(request, lambda: self._user(request, principal, origin, key))
        if rest.lower().startswith(MAIL_SEGMENTS) or rest.lower().strip("/") == "sendmail":
            return self._mailbox_call(request, principal, origin, user_segment=user_segment, key=key, rest=rest)
        return graph_error(400, "BadRequest", f"Resource not found for the segment '{rest.split('/')[0]}'.")

    # -- latency and faults ----------------------------------------------------------------------

    def _after_simulation(
        self, request: Request, handler: Callable[[], Response], mailbox_id: str | None = None
    ) -> Response:
        """Latency and faults, then ``handler`` unless a fault answers instead."""
        rule = simulate(self.state, request, mailbox_id)
        if rule is None or (rule.status is None and not rule.drop_connection):
            return handler()
        if rule.after:
            handler()  # the call happens; only its answer is lost or replaced
        if rule.drop_connection:
            return Response(drop_connection=True)
        return graph_fault(rule)

    # -- directory routes ----------------------------------------------------------------------

    def _user(self, request: Request, principal: Principal, origin: str, key: str | None) -> Response:
        if request.method != "GET":
            return graph_error(
                405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
            )
        if key is None:
            if principal.is_app:
                return graph_error(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
            user = self.state.directory.get_user(principal.user_id or "")
            allowed = principal.has_permission("User.Read", *USER_READ_OTHERS)
        else:
            if principal.is_app and not principal.has_permission(*USER_READ_OTHERS):
                return graph_error(403, "Authorization_RequestDenied", INSUFFICIENT_PRIVILEGES)
            user = self.state.directory.resolve_user(principal.tenant_id, key)
            is_self = user is not None and user.id == principal.user_id
            allowed = principal.has_permission(*USER_READ_OTHERS) or (is_self and principal.has_permission("User.Read"))
        if user is None:
            return graph_error(
                404,
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
            )
        if not allowed:
            return graph_error(403, "Authorization_RequestDenied", INSUFFICIENT_PRIVILEGES)
        return select_properties(
            request,
            user_properties(user),
            USER_DEFAULT_PROPERTIES,
            f"{origin}/v1.0/$metadata#users",
            "user",
            entity=True,
        )

    def _organization(self, request: Request, principal: Principal, origin: str) -> Response:
        if request.method != "GET":
            return graph_error(
                405, "Request_BadRequest", "Specified HTTP method is not allowed for the request target."
            )
        readers = ORGANIZATION_READ_APP if principal.is_app else ("User.Read", *ORGANIZATION_READ_APP)
        if not principal.has_permission(*readers):
            return graph_error(403, "Authorization_RequestDenied", INSUFFICIENT_PRIVILEGES)
        tenant = self.state.directory.find_tenant(principal.tenant_id)
        properties = organization_properties(tenant) if tenant else {}
        return select_properties(
            request,
            properties,
            tuple(properties),
            f"{origin}/v1.0/$metadata#organization",
            "organization",
            entity=False,
        )

    # -- mailbox routes ------------------------------------------------------------------------

    def _mailbox_call(
        self, request: Request, principal: Principal, origin: str, *, user_segment: str, key: str | None, rest: str
    ) -> Response:
        own, shared = required_permissions(request.method, rest)
        needed = own + (shared if not principal.is_app and key is not None else ())
        if not principal.has_permission(*needed):
            return graph_error(403, "ErrorAccessDenied", ACCESS_DENIED)
        if key is None:
            if principal.is_app:
                return graph_error(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
            mailbox = self.state.directory.get_user(principal.user_id or "")
        else:
            mailbox = self.state.directory.resolve_user(principal.tenant_id, key)
        if mailbox is None:
            return graph_error(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
        context = GraphContext(request, principal, mailbox.id, f"{origin}/v1.0", user_segment, rest)
        response = self._admitted_mailbox_call(context)
        self.state.count_mailbox_request(mailbox.id, "dropped" if response.drop_connection else response.status)
        return response

    def _admitted_mailbox_call(self, context: GraphContext) -> Response:
        principal, mailbox_id = context.principal, context.mailbox_id
        if not principal.is_app and principal.user_id != mailbox_id:
            _, shared = required_permissions(context.request.method, context.rest)
            if not (
                principal.has_permission(*shared)
                and self.state.mail.has_right(mailbox_id, principal.user_id, "FullAccess")
            ):
                return graph_error(403, "ErrorAccessDenied", ACCESS_DENIED)
        if principal.is_app and not self.state.directory.mailbox_allowed(
            principal.tenant_id, principal.client_id, mailbox_id
        ):
            return graph_error(403, "ErrorAccessDenied", "Access to OData is disabled.")
        refusal = self.state.limiter.admit(principal.client_id, mailbox_id)
        if refusal is not None:
            return throttled(refusal.retry_after, refusal.message)
        try:
            return self._after_simulation(context.request, lambda: self.state.mail.handle(context), mailbox_id)
        finally:
            self.state.limiter.release(principal.client_id, mailbox_id)

    # -- $batch --------------------------------------------------------------------------------

    def _batch(self, request: Request, principal: Principal, origin: str) -> Response:
        if request.method != "POST":
            return graph_error(405, "BadRequest", "Only POST is supported on $batch.")
        try:
            items = validate_batch(request.json())
        except (ValueError, TypeError) as exc:
            return graph_error(400, "BadRequest", str(exc))
        results: dict[str, dict[str, Any]] = {}
        waiting = {item["id"].lower(): item for item in items}
        running: dict[Future[dict[str, Any]], str] = {}
        while waiting or running:
            # Start (in request order) whatever has all its dependencies answered, up to the parallelism cap;
            # a dependent of a failure is answered 424 without running. Cycles were refused up front.
            for key, item in list(waiting.items()):
                if len(running) >= BATCH_PARALLELISM:
                    break
                dependencies = [d.lower() for d in item.get("dependsOn", [])]
                if any(d not in results for d in dependencies):
                    continue
                del waiting[key]
                if any(results[d]["status"] >= 400 for d in dependencies):
                    results[key] = failed_dependency(item)
                else:
                    running[self._batch_pool.submit(self._sub_request, item, principal, origin)] = key
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    results[running.pop(future)] = future.result()
        return Response.json(200, {"responses": list(results.values())})

    def _sub_request(self, item: dict[str, Any], principal: Principal, origin: str) -> dict[str, Any]:
        target = urlsplit("/" + item["url"].lstrip("/"))
        body = item.get("body")
        raw = b"" if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        path = "/v1.0" + unquote(target.path)
        try:
            sub = Request(item["method"].upper(), path, target.query, Headers(item.get("headers") or {}), raw)
            response = self._route(sub, principal, origin, in_batch=True)
        except Exception:  # one broken sub-request (even a header value with a newline) must not take the batch down
            log.exception("unhandled error for batch request %s %s", item["method"].upper(), path)
            response = graph_error(500, *GRAPH_FAULT_ERRORS[500])
        if response.drop_connection:
            response = graph_error(504, "UnknownError", "")
        entry: dict[str, Any] = {
            "id": item["id"],
            "status": response.status,
            "headers": {k: v for k, v in response.headers.items() if k.lower() != "content-length"},
        }
        if response.body:
            if "json" in response.headers.get("Content-Type", ""):
                entry["body"] = json.loads(response.body)
            else:
                entry["body"] = base64.b64encode(response.body).decode("ascii")
        return entry


def validate_batch(payload: Any) -> list[dict[str, Any]]:
    """The batch's requests, or ValueError naming why the whole batch is refused (HTTP 400)."""
    items = payload.get("requests") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items:
        raise ValueError("Invalid batch payload format.")
    if len(items) > BATCH_LIMIT:
        raise ValueError(f"Too many requests in batch. The maximum number of requests in a batch is {BATCH_LIMIT}.")
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) and item[k] for k in ("id", "method", "url")
        ):
            raise ValueError("Each request in a batch needs a non-empty 'id', 'method' and 'url'.")
        if item["id"].lower() in seen:
            raise ValueError(f"Batch request ids must be unique; '{item['id']}' is repeated.")
        seen.add(item["id"].lower())
        if "://" in item["url"]:
            raise ValueError(f"Batch request urls must be relative; '{item['url']}' is absolute.")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValueError(f"Request '{item['id']}': headers must be an object.")
        if item.get("body") is not None and "content-type" not in {k.lower() for k in headers}:
            raise ValueError(f"Request '{item['id']}' has a body but no Content-Type header.")
    by_id = {item["id"].lower(): item for item in items}
    for item in items:
        dependencies = item.get("dependsOn", [])
        if not isinstance(dependencies, list) or any(
            not isinstance(d, str) or d.lower() not in by_id or d.lower() == item["id"].lower() for d in dependencies
        ):
            raise ValueError(f"Request '{item['id']}' depends on an unknown request.")
    _reject_cycles(by_id)
    return items


def _reject_cycles(by_id: dict[str, dict[str, Any]]) -> None:
    resolved: set[str] = set()
    remaining = dict(by_id)
    while remaining:
        ready = [k for k, item in remaining.items() if all(d.lower() in resolved for d in item.get("dependsOn", []))]
        if not ready:
            raise ValueError("Batch requests have circular dependsOn references.")
        for key in ready:
            resolved.add(key)
            del remaining[key]


def failed_dependency(item: dict[str, Any]) -> dict[str, Any]:
    response = graph_error(424, "FailedDependency", "Request failed because a request it depends on failed.")
    return {
        "id": item["id"],
        "status": 424,
        "headers": {"Content-Type": response.headers["Content-Type"]},
        "body": json.loads(response.body),
    }


def select_properties(
    request: Request,
    properties: dict[str, Any],
    defaults: tuple[str, ...],
    context: str,
    type_name: str,
    *,
    entity: bool,
) -> Response:
    """Apply ``$select`` (case-insensitive names) to one entity, or to the single-item collection."""
    raw = request.query.get("$select", "")
    if raw:
        by_lower = {name.lower(): name for name in properties}
        wanted = []
        for name in (n.strip() for n in raw.split(",") if n.strip()):
            if name.lower() not in by_lower:
                return graph_error(
                    400,
                    "BadRequest",
                    f"Could not find a property named '{name}' on type 'microsoft.graph.{type_name}'.",
                )
            wanted.append(by_lower[name.lower()])
        context = f"{context}({','.join(wanted)})"
    else:
        wanted = list(defaults)
    shaped = {name: properties[name] for name in wanted}
    if entity:
        return Response.json(200, {"@odata.context": f"{context}/$entity", **shaped})
    return Response.json(200, {"@odata.context": context, "value": [shaped]})


def simulate(state: EmulatorState, request: Request, mailbox_id: str | None) -> FaultRule | None:
    """Apply global latency, then the first matching fault's delay; returns that fault (if any)."""
    latency = state.config.latency_ms
    if latency:
        time.sleep(latency / 1000)
    rule = state.take_fault(request.method, request.path, mailbox_id)
    if rule is not None and rule.delay_ms:
        time.sleep(rule.delay_ms / 1000)
    return rule


# -- HTTP plumbing ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LocalGraphEmulator/1.0"
    sys_version = ""
    timeout = 75  # seconds an idle keep-alive connection stays open
    wbufsize = -1  # buffer head and body into one send: separate small sends meet delayed ACKs (40 ms stalls)
    server: _TlsHttpServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        target = urlsplit(self.path)
        try:
            # Folded (obs-fold) header lines are unfolded as werkzeug's own server does; werkzeug's Headers
            # refuses newlines in values. The last of repeated headers wins, as it always did here.
            headers = Headers({k: v.replace("\r\n", "") for k, v in self.headers.items()})
            request = Request(self.command, unquote(target.path), target.query, headers, body)
            response = self.server.dispatch(request)
        except Exception:  # a bug must not kill the connection thread silently
            log.exception("unhandled error for %s %s", self.command, target.path)
            response = graph_error(500, *GRAPH_FAULT_ERRORS[500])
        if response.drop_connection:
            access_log.info("%s %s dropped", self.command, target.path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        access_log.info("%s %s %s", self.command, self.path.split("?", 1)[0], code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _TlsHttpServer(ThreadingHTTPServer):
    """A threading HTTP server doing the TLS handshake on the connection's own thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, dispatch: Callable[[Request], Response]
    ) -> None:
        self.context = context
        self.dispatch = dispatch
        self._open: set[ssl.SSLSocket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request.settimeout(10)
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        with self._open_lock:
            self._open.add(connection)
        try:
            _Handler(connection, client_address, self)
        except OSError as exc:
            log.debug("connection from %s ended: %s", client_address, exc)
        finally:
            with self._open_lock:
                self._open.discard(connection)
            connection.close()

    def close_connections(self) -> None:
        with self._open_lock:
            for connection in list(self._open):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class EmulatorServer:
    """The whole emulator on one HTTPS port. ``start()`` serves on a daemon thread; ``stop()`` is idempotent.

    ``persist``: restore the state from ``state_dir`` (if a snapshot is there) and keep saving it there
    (``emulator.persistence``); ``restored`` says whether a snapshot was loaded. Without it the state
    lives in memory only, as tests and benchmarks want.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state_dir: Path,
        seed: str | None = None,
        persist: bool = False,
    ) -> None:
        self.tls: TlsMaterial = ensure_tls_material(Path(state_dir))
        self.state = EmulatorState(seed)
        self.state_file = StateFile(self.state, Path(state_dir)) if persist else None
        self.restored = self.state_file.load() if self.state_file else False
        self.identity = IdentityPlatform(self.state)
        self.graph = GraphApi(self.state)
        self.control = ControlApi(self.state, self.identity, self.tls.ca_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
        self._http = _TlsHttpServer((host, port), context, self.dispatch)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def graph_url(self) -> str:
        return f"{self.url}/v1.0"

    @property
    def ca_bundle_path(self) -> Path:
        return self.tls.ca_bundle

    def start(self) -> EmulatorServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._http.serve_forever, kwargs={"poll_interval": 0.1}, name="emulator", daemon=True
            )
            self._thread.start()
            if self.state_file:
                self.state_file.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.close_connections()
        self._http.server_close()
        self.graph.close()
        if self.state_file:
            self.state_file.stop()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def dispatch(self, request: Request) -> Response:
        """Answer one request; with ``persist``, every request counts as a change to save (delta reads
        mint tokens, sign-ins issue codes: telling reads from writes would be a second source of truth)."""
        try:
            return self._dispatch(request)
        finally:
            if self.state_file:
                self.state_file.changed()

    def _dispatch(self, request: Request) -> Response:
        origin = f"https://{request.headers.get('host') or f'localhost:{self.port}'}"
        path = request.path
        if path == "/_emulator" or path.startswith("/_emulator/"):
            return self.control.handle(request, origin)
        if path == "/v1.0" or path.startswith("/v1.0/"):
            return self.graph.handle(request, origin)
        if path.startswith("/api/v2.0/"):
            return self.graph.upload(request, origin)
        rule = simulate(self.state, request, None)
        if rule is not None and rule.drop_connection:
            return Response(drop_connection=True)
        if rule is not None and rule.status is not None:
            return identity_fault(rule, origin)
        return self.identity.handle(request, origin)
