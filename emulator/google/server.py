"""The Google emulator's HTTPS server: one port for every Google host the product talks to, with the
real paths of each (the product changes only base URLs), plus the control API under ``/_emulator``.

It reuses the Graph emulator's TLS material (the same local CA and ``localhost`` certificate, so one
``ca-bundle.pem`` trusts both) and its HTTP plumbing. With ``persist`` its whole state is kept in
``{state_dir}/google-state.pickle`` (``emulator.persistence.StateFile``), next to the Graph emulator's.

Invariants: a handler bug answers 500 in Google's error shape, never kills the connection thread; the
access log shows method, path (never the query) and status, never a token.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path
from types import TracebackType

from emulator.certs import TlsMaterial, ensure_tls_material
from emulator.core import Request, Response
from emulator.google import state as google_state
from emulator.google.control import GoogleControl
from emulator.google.gmail import FAULT_BODIES, GmailApi, gmail_error
from emulator.google.oauth import GoogleOAuth
from emulator.google.push import PushDeliverer
from emulator.google.state import GoogleState
from emulator.persistence import StateFile
from emulator.server import _TlsHttpServer

log = logging.getLogger("emulator.google")

STATE_FILE = "google-state.pickle"
# A snapshot is loaded only by code with the same shape of persisted classes.
SCHEMA = tuple(
    (cls.__qualname__, tuple(cls.__dataclass_fields__))
    for cls in (
        google_state.GoogleConfig, google_state.Domain, google_state.Label, google_state.GmailMessage,
        google_state.HistoryRecord, google_state.Watch, google_state.Draft, google_state.Mailbox,
        google_state.GoogleUser, google_state.OAuthClient, google_state.ServiceAccount, google_state.Grant,
        google_state.PendingAuthorization, google_state.AuthCode, google_state.AccessToken, google_state.Topic,
        google_state.PushRecord, google_state.OutboxEntry, google_state.GoogleFault,
    )
)
GMAIL_PREFIXES = ("/gmail/v1/", "/upload/gmail/v1/", "/batch/gmail/v1", "/batch")


def google_settings(url: str) -> dict[str, str]:
    """The product's Google settings pointing at an emulator at ``url`` (each Google default with its
    host replaced: the paths are Google's own)."""
    return {
        "GOOGLE_AUTHORIZE_URL": f"{url}/o/oauth2/v2/auth",
        "GOOGLE_TOKEN_URL": f"{url}/token",
        "GMAIL_BASE_URL": url,
        "GOOGLE_OPENID_CONFIG_URL": f"{url}/.well-known/openid-configuration",
        "GOOGLE_JWKS_URL": f"{url}/oauth2/v3/certs",
        "GOOGLE_USERINFO_URL": f"{url}/v1/userinfo",
        "GOOGLE_REVOKE_URL": f"{url}/revoke",
    }


class GoogleEmulatorServer:
    """The Google emulator on one HTTPS port. ``start()`` serves on a daemon thread; ``stop()`` is idempotent."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, state_dir: Path, seed: str | None = None, persist: bool = False
    ) -> None:
        self.tls: TlsMaterial = ensure_tls_material(Path(state_dir))
        self.state = GoogleState(seed)
        self.state_file = (
            StateFile(self.state, Path(state_dir), file_name=STATE_FILE, schema=SCHEMA) if persist else None
        )
        self.restored = self.state_file.load() if self.state_file else False
        self.oauth = GoogleOAuth(self.state)
        self.pusher = PushDeliverer(self.state)
        self.gmail = GmailApi(self.state, self.oauth, self.pusher)
        self.control = GoogleControl(self.state, self.oauth, self.pusher, self.tls.ca_pem)
        self._routes = self.oauth.routes()
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
    def ca_bundle_path(self) -> Path:
        return self.tls.ca_bundle

    def settings(self) -> dict[str, str]:
        """The URLs a client sets to reach this emulator instead of Google (the product's setting names)."""
        return google_settings(self.url)

    def start(self) -> GoogleEmulatorServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._http.serve_forever, kwargs={"poll_interval": 0.1}, name="google-emulator", daemon=True
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
        self.pusher.close()
        if self.state_file:
            self.state_file.stop()

    def __enter__(self) -> GoogleEmulatorServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def dispatch(self, request: Request) -> Response:
        try:
            return self._dispatch(request)
        except Exception:  # a bug answers 500 in Google's shape; the server thread lives on
            log.exception("unhandled error for %s %s", request.method, request.path)
            return gmail_error(500, "Backend Error", "backendError")
        finally:
            if self.state_file:
                self.state_file.changed()

    def _dispatch(self, request: Request) -> Response:
        origin = f"https://{request.headers.get('host') or f'localhost:{self.port}'}"
        path = request.path
        if path == "/_emulator" or path.startswith("/_emulator/"):
            return self.control.handle(request, origin)
        if path.startswith(GMAIL_PREFIXES):
            return self.gmail.handle(request)
        handler = self._routes.get((request.method, path.rstrip("/") or "/"))
        if handler is None:
            known = any(p == path for _, p in self._routes)
            return Response.text(405 if known else 404, "Method Not Allowed" if known else "Not Found")
        rule = self.state.take_fault(request.method, path, None)
        if rule is not None and rule.drop_connection:
            return Response(drop_connection=True)
        if rule is not None and rule.status is not None:
            reason, domain, message = FAULT_BODIES[rule.status]
            return gmail_error(rule.status, message, rule.reason or reason, domain)
        response: Response = handler(request, origin)
        return response
