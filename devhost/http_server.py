"""HTTP front end: routes requests to HTTP-trigger functions and serves the admin API.

Invariants:

* Error replies are the app's JSON ``{"error": {"code": ..., "message": ..., "details": null}}``:
  401 unauthorized, 404 not_found, 405 method_not_allowed (with ``Allow``), 413 request_too_large,
  500 internal_error (a function failed; never with exception text, the traceback goes to the log).
  Requests the HTTP layer itself refuses (malformed request line or headers, an unusable ``Host``) get
  the same JSON shape with their 4xx (505 for an HTTP version other than 1.x), never an HTML page.
* Every method token is dispatched like GET or POST (TRACE, CONNECT, OPTIONS, HEAD, anything):
  a route that exists for other methods answers 405 with ``Allow``, no route 404; never 501. A reply
  to HEAD carries the headers (with the Content-Length) and no body.
* Keys: when ``LOCAL_FUNCTIONS_KEY`` is set, ``function``/``admin`` functions and the admin API
  need it in ``x-functions-key`` or ``?code=``; when it is unset nothing is enforced (as Core
  Tools does locally). ``anonymous`` functions and ``GET /admin/host/status`` are always open.
* Nothing here logs bodies, query strings or headers: only method, path and status.

Replies are werkzeug Responses. The socket side stays the stdlib's ThreadingHTTPServer: werkzeug's
server (``werkzeug.serving``) answers every request with ``Connection: close``, drops headers whose
name holds ``_`` and joins repeated ones. Routes stay ASP.NET Core templates (:mod:`devhost.routing`).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from devhost.functions import FunctionSpec
from devhost.routing import RouteTemplate, compile_route

log = logging.getLogger("devhost")

DRAIN_LIMIT = 8 * 1024 * 1024  # read (and drop) at most this much of a too-large body


class Reply(Response):
    """werkzeug's Response without its defaults: no Content-Type unless given (the admin API's 202 has
    none), no Content-Length (the socket side writes the body's length, for HEAD too)."""

    default_mimetype = None
    automatically_set_content_length = False


def error_reply(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> Reply:
    body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode("utf-8")
    return Reply(body, status, headers, content_type="application/json; charset=utf-8")


@dataclass(frozen=True)
class HttpRoute:
    template: RouteTemplate
    methods: frozenset[str] | None  # None: any method
    auth_level: str
    spec: FunctionSpec


def build_routes(specs: list[FunctionSpec], prefix: str) -> list[HttpRoute]:
    """HTTP routes in precedence order (route defaults to the function name)."""
    routes = []
    for spec in specs:
        trigger = spec.trigger
        methods = trigger.get("methods")
        routes.append(
            HttpRoute(
                template=compile_route(prefix, str(trigger.get("route") or spec.name)),
                methods=frozenset(str(m).upper() for m in methods) if methods else None,
                auth_level=str(trigger.get("authLevel", "function")).lower(),
                spec=spec,
            )
        )
    return sorted(routes, key=lambda r: r.template.precedence)


class HttpApp:
    """Pure request → :class:`Reply` dispatch, independent of sockets.

    ``invoke(spec, request)`` runs an HTTP function and returns its return value;
    ``admin_invoke(name, input)`` runs a non-HTTP function (LookupError: unknown function,
    ValueError: not invocable this way).
    """

    def __init__(
        self,
        routes: list[HttpRoute],
        key: str | None,
        invoke: Callable[[FunctionSpec, func.HttpRequest], Any],
        admin_invoke: Callable[[str, str], None],
    ) -> None:
        self._routes = routes
        self._key = key
        self._invoke = invoke
        self._admin_invoke = admin_invoke

    def authorized(self, headers: Mapping[str, str], params: Mapping[str, str]) -> bool:
        if not self._key:
            return True
        supplied = headers.get("x-functions-key") or params.get("code") or ""
        return hmac.compare_digest(supplied.encode("utf-8"), self._key.encode("utf-8"))

    def handle(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Dispatch one request; ``headers`` keys are lower-case."""
        parts = urlsplit(url)
        args = MultiDict(parse_qsl(parts.query, keep_blank_values=True))
        params = {name: ",".join(args.getlist(name)) for name in args}  # repeats joined, as Functions does
        if parts.path.lower().startswith("/admin/"):
            return self._admin(method, parts.path, headers, params, body)
        candidates = [(r, v) for r in self._routes if (v := r.template.match(parts.path)) is not None]
        if not candidates:
            return error_reply(404, "not_found", "No function matches this route.")
        allowed = [(r, v) for r, v in candidates if r.methods is None or method in r.methods]
        if not allowed:
            methods = sorted({m for r, _ in candidates for m in (r.methods or ())})
            return error_reply(
                405, "method_not_allowed", f"Method {method} is not allowed here.",
                [("Allow", ", ".join(methods))],
            )
        route, values = allowed[0]
        if route.auth_level != "anonymous" and not self.authorized(headers, params):
            return error_reply(401, "unauthorized", "A valid function key is required.")
        request = func.HttpRequest(
            method, url, headers=dict(headers), params=params, route_params=values, body=body
        )
        try:
            result = self._invoke(route.spec, request)
        except Exception:
            return _internal_error()
        return _to_reply(result, method)

    def _admin(
        self, method: str, path: str, headers: Mapping[str, str], params: Mapping[str, str], body: bytes
    ) -> Reply:
        segments = [s for s in path.split("/") if s]
        if [s.lower() for s in segments] == ["admin", "host", "status"]:
            if method != "GET":
                return error_reply(405, "method_not_allowed", "Use GET.", [("Allow", "GET")])
            return Reply(b'{"state": "Running"}', 200, content_type="application/json")
        if len(segments) != 3 or segments[1].lower() != "functions":
            return error_reply(404, "not_found", "Unknown admin endpoint.")
        if method != "POST":
            return error_reply(405, "method_not_allowed", "Use POST.", [("Allow", "POST")])
        if not self.authorized(headers, params):
            return error_reply(401, "unauthorized", "A valid function key is required.")
        try:
            payload = json.loads(body or b"{}")
            text = payload.get("input", "") if isinstance(payload, dict) else None
        except ValueError:
            text = None
        if not isinstance(text, str):
            return error_reply(400, "bad_request", 'Body must be JSON {"input": "<string>"}.')
        try:
            self._admin_invoke(segments[2], text)
        except LookupError:
            return error_reply(404, "not_found", "No such function.")
        except ValueError:
            return error_reply(400, "bad_request", "HTTP functions are invoked through their route.")
        except Exception:
            return _internal_error()
        return Reply(status=202)


def _internal_error() -> Reply:
    return error_reply(500, "internal_error", "The function failed; details are in the host log.")


def _to_reply(result: Any, method: str) -> Reply:
    """Convert a function's return value (HttpResponse, str or bytes) to a reply."""
    if isinstance(result, str | bytes):
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        log.error("HTTP function returned %s, not an HttpResponse", type(result).__name__)
        return _internal_error()
    skip = {"content-length", "transfer-encoding", "connection"}
    headers = [(k, v) for k, v in result.headers.items() if k.lower() not in skip]
    typed = any(k.lower() == "content-type" for k, _ in headers)
    try:
        return Reply(
            b"" if method == "HEAD" else result.get_body(),
            result.status_code,
            headers,
            content_type=None if typed else f"{result.mimetype}; charset={result.charset}",
        )
    except ValueError:  # a header value with a line break: never written to the socket
        log.error("HTTP function returned a header value with a line break")
        return _internal_error()


_HTTP_ERRORS = {
    400: "bad_request",
    408: "request_timeout",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    505: "http_version_not_supported",
}


class _BodyTooLarge(Exception):
    pass


class _BadFraming(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    """Socket side: reads the request within the body limit and writes the reply."""

    server: FunctionsServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds of socket inactivity before an idle keep-alive connection closes
    wbufsize = -1  # head and body leave in one send: two small sends meet the client's delayed ACK (~40 ms)

    def _serve(self) -> None:
        try:
            body = self._read_body(self.server.max_body_bytes)
        except _BodyTooLarge:
            reply = error_reply(413, "request_too_large", "Request body is too large.")
            self.close_connection = True
        except _BadFraming:
            reply = error_reply(400, "bad_request", "Malformed Content-Length or chunked body.")
            self.close_connection = True
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            host = self.headers.get("Host") or f"{self.server.bind_host}:{self.server.server_port}"
            try:
                reply = self.server.app.handle(self.command, f"http://{host}{self.path}", headers, body)
            except ValueError:  # e.g. a Host header that is no host: the URL cannot be parsed
                reply = error_reply(400, "bad_request", "Malformed request target or Host header.")
                self.close_connection = True
        self._write(reply)

    def __getattr__(self, name: str) -> Any:
        """``do_<METHOD>`` for every method token: the app, not the socket layer, decides (405/404)."""
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The socket layer's own refusals (bad request line, too long, bad version) in the app's JSON."""
        reason = _HTTP_ERRORS.get(code, "bad_request")
        if not str(self.request_version).startswith("HTTP/1."):
            self.request_version = "HTTP/1.1"  # refused before the version was known: still a full reply
        self.close_connection = True
        self._write(error_reply(code, reason, message or "The request could not be read."))

    def _read_body(self, limit: int) -> bytes:
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked(limit)
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError as exc:
            raise _BadFraming from exc
        if length < 0:
            raise _BadFraming
        if length > limit:
            if length <= DRAIN_LIMIT:
                self.rfile.read(length)  # lets the client finish sending and read the 413
            raise _BodyTooLarge
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int) -> bytes:
        body = bytearray()
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > limit:
                raise _BodyTooLarge
            body += self.rfile.read(size)
            self.rfile.readline(1024)

    def _write(self, reply: Reply) -> None:
        body = reply.get_data()
        self.send_response(reply.status_code)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", self.command, urlsplit(getattr(self, "path", "")).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("HTTP connection error (details withheld)")


class FunctionsServer(ThreadingHTTPServer):
    """Thread-per-request HTTP server bound to one :class:`HttpApp`."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: HttpApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.bind_host = address[0]
        super().__init__(address, _Handler)
