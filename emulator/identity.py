"""The emulated Microsoft identity platform (v2.0 endpoints), good enough for unchanged MSAL Python.

Routes, all under ``/{tenant}`` where tenant is a GUID, a verified domain, ``organizations`` or
``common``:

* ``GET  v2.0/.well-known/openid-configuration`` and ``GET discovery/v2.0/keys``
* ``GET  oauth2/v2.0/authorize`` renders a sign-in/consent page; ``POST login`` is its form
* ``POST oauth2/v2.0/token`` for authorization_code (with PKCE), refresh_token and client_credentials
* ``GET  v2.0/adminconsent`` renders the admin consent page; its form also posts to ``login``

Invariants:

* Problems that make a redirect unsafe (unknown client, unregistered redirect URI, unknown tenant)
  render an HTML error page and never redirect; everything later redirects with ``error=...``.
* Authorization codes are single-use and short-lived; refresh tokens rotate, and every refresh token of
  a grant stays usable until the grant is revoked or expired.
* Access tokens are JWT-shaped, but Graph validates them by looking them up here, so expiry and
  ``expire_access_tokens`` are authoritative. Revoking a grant leaves its access tokens valid.
* Token endpoint errors have the exact AAD JSON shape (``error``, ``error_description`` starting with
  ``AADSTSnnnn:``, ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``).

Documented facts the connect and consent flows rely on (and the emulator reproduces):

* An id_token carries ``tid``, the tenant the user signed in to, and ``oid``
  (https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference); a sign-in asking only
  for OpenID scopes gets one, which is how an app identifies an admin's organisation before asking for
  admin consent (https://learn.microsoft.com/entra/identity-platform/v2-admin-consent, "Sign the user
  into your app").
* ``/{tenant}/v2.0/adminconsent`` makes an admin of that tenant sign in (an account of another tenant
  cannot; the emulator models no directory roles, so any member of the tenant stands for its admin) and
  redirects with ``admin_consent=True``, ``tenant`` (the admin's tenant id), ``scope`` and
  ``state``, or with ``error`` and ``error_description``
  (https://learn.microsoft.com/entra/identity-platform/v2-admin-consent). With ``…/.default`` it grants
  every permission the app registration requests.
* An app-only (client-credentials) access token lists the application permissions granted to the app
  in the tenant in its ``roles`` claim
  (https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference); without an admin
  consent in the tenant there is no token (AADSTS700016).
* ``prompt=select_account`` on the authorize request shows the account picker; the emulator's sign-in
  form always asks which account, so it accepts the parameter as it is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from emulator.core import Principal, Request, Response, now_utc
from emulator.directory import App, Tenant, User

if TYPE_CHECKING:
    from emulator.state import EmulatorState

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
TENANTLESS = ("common", "organizations")
# Canonical spelling of the Graph permissions this project meets; any other well-formed name is
# accepted as written (permission names are case-insensitive in Entra ID).
KNOWN_PERMISSIONS = {
    name.lower(): name
    for name in (
        "Mail.Read",
        "Mail.ReadBasic",
        "Mail.ReadBasic.All",
        "Mail.ReadWrite",
        "Mail.Read.Shared",
        "Mail.ReadWrite.Shared",
        "Mail.Send",
        "Mail.Send.Shared",
        "MailboxSettings.Read",
        "User.Read",
        "User.ReadBasic.All",
        "User.Read.All",
        "Organization.Read.All",
        "Directory.Read.All",
    )
}
PERMISSION_PATTERN = re.compile(r"^[A-Za-z]+(\.[A-Za-z]+)+$")
CANCEL_DESCRIPTION = "AADSTS65004: User declined to consent to access the app."
ADMIN_DECLINE_DESCRIPTION = "AADSTS65004: The resource owner or authorization server denied the request."


class TokenError(Exception):
    """A token endpoint refusal: OAuth ``error``, AADSTS ``code`` and message, HTTP status."""

    def __init__(self, error: str, code: int, message: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.error, self.code, self.message, self.status = error, code, message, status


class SignInError(Exception):
    """Why a sign-in form (or its control-API equivalent) could not be completed."""


class RedirectError(Exception):
    """A problem reported by redirecting back to the client with ``error=...``."""

    def __init__(self, error: str, code: int, message: str) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.error, self.code, self.message = error, code, message


class PageError(Exception):
    """A problem shown as an HTML error page, because redirecting would be unsafe."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.code, self.message = code, message


# -- keys and token records ------------------------------------------------------------------------


class SigningKey:
    """The RSA key that signs every JWT the emulator issues; published at the JWKS endpoint."""

    def __init__(self, pem: bytes | None = None, kid: str | None = None) -> None:
        """A new key, or (``pem`` and ``kid``, from :meth:`to_pem`) the key of a restored emulator."""
        if pem is None:
            self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = serialization.load_pem_private_key(pem, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ValueError("the stored signing key is not an RSA key")
            self._key = key
        self.kid = kid or secrets.token_urlsafe(16)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (kept in the emulator's local state dir only)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "typ": "JWT"})

    def jwk(self) -> dict[str, Any]:
        public = json.loads(RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"kty": "RSA", "use": "sig", "kid": self.kid, "n": public["n"], "e": public["e"]}


@dataclass
class PendingRequest:
    """A validated authorize or admin-consent request waiting for the person (or control API)."""

    id: str
    kind: Literal["authorize", "adminconsent"]
    tenant: Tenant | None  # None for organizations/common
    app: App
    redirect_uri: str
    state: str | None
    scope_param: str
    scopes: frozenset[str] = frozenset()
    oidc_scopes: frozenset[str] = frozenset()
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str = "plain"
    client_info: bool = False
    login_hint: str = ""


@dataclass
class AuthCode:
    client_id: str
    redirect_uri: str
    user_id: str
    tenant_id: str
    scopes: frozenset[str]
    oidc_scopes: frozenset[str]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str
    expires_at: float
    redeemed: bool = False


@dataclass
class AccessTokenRecord:
    principal: Principal
    expires_at: float


@dataclass
class TokenStore:
    """Issued codes and tokens, guarded by the shared state lock."""

    lock: threading.RLock
    signing_key: SigningKey
    pending: dict[str, PendingRequest] = field(default_factory=dict)
    codes: dict[str, AuthCode] = field(default_factory=dict)
    access_tokens: dict[str, AccessTokenRecord] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> grant id

    def principal_for(self, token: str) -> Principal | None:
        """The principal of a current access token; None if unknown, expired or not yet valid."""
        with self.lock:
            record = self.access_tokens.get(token)
        if record is None or time.time() >= record.expires_at:
            return None
        return record.principal

    def expire_access_tokens(self, user_id: str | None = None) -> int:
        """Make current access tokens (of one user, or all) expired; returns how many."""
        expired = 0
        with self.lock:
            for record in self.access_tokens.values():
                if user_id is None or record.principal.user_id == user_id:
                    record.expires_at = min(record.expires_at, time.time() - 1)
                    expired += 1
        return expired


# -- helpers ---------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def client_info(user: User) -> str:
    return b64url(json.dumps({"uid": user.id, "utid": user.tenant_id}, separators=(",", ":")).encode())


def with_query(uri: str, params: dict[str, str]) -> str:
    """``uri`` with ``params`` appended to any query it already has."""
    parts = urlsplit(uri)
    query = urlencode([*parse_qsl(parts.query, keep_blank_values=True), *params.items()])
    return urlunsplit(parts._replace(query=query))


def parse_scopes(raw: str, tenant_label: str) -> tuple[set[str], set[str], bool]:
    """Split a scope parameter into (Graph permissions, OIDC scopes, asked for ``.default``).

    Graph permissions may be bare (``Mail.Read``) or resource-qualified
    (``https://graph.microsoft.com/Mail.Read``); both normalise to the bare canonical name.
    """
    graph: set[str] = set()
    oidc: set[str] = set()
    default = False
    for item in raw.split():
        if item.lower() in OIDC_SCOPES:
            oidc.add(item.lower())
            continue
        permission = item
        if "/" in item:
            resource, _, permission = item.rpartition("/")
            if resource.rstrip("/").lower() not in (GRAPH_RESOURCE, GRAPH_APP_ID):
                raise TokenError(
                    "invalid_resource",
                    500011,
                    f"The resource principal named {resource} was not found in the tenant named "
                    f"{tenant_label}. This can happen if the application has not been installed by the "
                    "administrator of the tenant or consented to by any user in the tenant. You might have "
                    "sent your authentication request to the wrong tenant.",
                )
        if permission == ".default":
            default = True
        elif PERMISSION_PATTERN.match(permission):
            graph.add(KNOWN_PERMISSIONS.get(permission.lower(), permission))
        else:
            raise TokenError(
                "invalid_scope",
                650053,
                f"The application asked for scope '{permission}' that doesn't exist on the resource "
                f"'{GRAPH_APP_ID}'. Contact the app vendor.",
            )
    return graph, oidc, default


def _pkce_matches(verifier: str, challenge: str, method: str) -> bool:
    computed = b64url(hashlib.sha256(verifier.encode("ascii")).digest()) if method == "S256" else verifier
    return hmac.compare_digest(computed, challenge)


def _aad_time() -> str:
    return now_utc().strftime("%Y-%m-%d %H:%M:%SZ")


def aad_error(
    origin: str, error: str, code: int, message: str, *, status: int = 400, correlation_id: str = ""
) -> Response:
    """An identity platform error body, shaped exactly like the real service's."""
    trace_id, correlation = str(uuid.uuid4()), correlation_id or str(uuid.uuid4())
    timestamp = _aad_time()
    body = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation}\r\n"
            f"Timestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation,
        "error_uri": f"{origin}/error?code={code}",
    }
    return Response(
        status,
        {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store, no-cache"},
        json.dumps(body).encode("utf-8"),
    )


def html_page(title: str, body: str, status: int = 200) -> Response:
    document = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:34em;margin:3em auto}"
        "label{display:block;margin:.8em 0 .2em}input{width:100%;padding:.4em}"
        "button{margin:1em .5em 0 0;padding:.5em 1.2em}.error{color:#a4262c}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response.text(status, document, "text/html; charset=utf-8")


def error_page(code: int, message: str) -> Response:
    return html_page(
        "Sign in error",
        f"<p class='error'>AADSTS{code}: {html.escape(message)}</p>"
        f"<p>Timestamp: {_aad_time()}<br>Trace ID: {uuid.uuid4()}</p>",
        status=400,
    )


# -- the identity platform -------------------------------------------------------------------------


class IdentityPlatform:
    """Request handlers for the identity endpoints; all state lives in :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def handle(self, request: Request, origin: str) -> Response:
        segments = request.path.strip("/").split("/", 1)
        if segments[0] == "error" and request.method == "GET":
            code = request.query.get("code", "")
            return html_page("Error code lookup", f"<p>AADSTS{html.escape(code)}</p>")
        if len(segments) < 2:
            return Response.text(404, "Not Found")
        tenant_segment, route = segments
        routes = {
            ("GET", "v2.0/.well-known/openid-configuration"): self._openid_configuration,
            ("GET", "discovery/v2.0/keys"): self._keys,
            ("GET", "oauth2/v2.0/authorize"): self._authorize_page,
            ("POST", "login"): self._login,
            ("POST", "oauth2/v2.0/token"): self._token,
            ("GET", "v2.0/adminconsent"): self._admin_consent_page,
        }
        handler = routes.get((request.method, route))
        if handler is None:
            known = any(r == route for _, r in routes)
            return Response.text(405 if known else 404, "Method Not Allowed" if known else "Not Found")
        return handler(request, origin, tenant_segment)

    # -- tenants and discovery -----------------------------------------------------------------

    def _tenant(self, segment: str) -> Tenant | None:
        """The tenant a path segment names; None for organizations/common; PageError if unknown."""
        if segment.lower() in TENANTLESS:
            return None
        tenant = self.state.directory.find_tenant(segment)
        if tenant is None:
            raise PageError(
                90002,
                f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud. Check with your subscription administrator, this may happen "
                "if there are no active subscriptions for the tenant.",
            )
        return tenant

    def _openid_configuration(self, request: Request, origin: str, segment: str) -> Response:
        try:
            tenant = self._tenant(segment)
        except PageError as exc:
            return aad_error(origin, "invalid_tenant", exc.code, exc.message)
        path_tenant = tenant.id if tenant else segment.lower()
        issuer_tenant = tenant.id if tenant else "{tenantid}"
        base = f"{origin}/{path_tenant}"
        return Response.json(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{origin}/{issuer_tenant}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{origin}/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "code_challenge_methods_supported": ["plain", "S256"],
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nbf",
                    "name",
                    "nonce",
                    "oid",
                    "preferred_username",
                    "tid",
                    "ver",
                    "email",
                ],
                "tenant_region_scope": "EU",
            },
            {"Content-Type": "application/json; charset=utf-8"},
        )

    def _keys(self, request: Request, origin: str, segment: str) -> Response:
        return Response.json(
            200, {"keys": [self.state.signing_key.jwk()]}, {"Content-Type": "application/json; charset=utf-8"}
        )

    # -- authorize -----------------------------------------------------------------------------

    def start_authorization(self, segment: str, query: dict[str, str]) -> PendingRequest:
        """Validate an authorize request. Raises PageError (no redirect) or RedirectError."""
        tenant, app, redirect_uri = self._validate_client(segment, query)
        pending = PendingRequest(
            id=secrets.token_urlsafe(24),
            kind="authorize",
            tenant=tenant,
            app=app,
            redirect_uri=redirect_uri,
            state=query.get("state"),
            scope_param=query.get("scope", ""),
            nonce=query.get("nonce"),
            client_info=query.get("client_info") == "1",
            login_hint=query.get("login_hint", ""),
        )
        if query.get("response_type") != "code":
            raise RedirectError(
                "unsupported_response_type",
                700054,
                f"response_type '{query.get('response_type', '')}' is not enabled for the application.",
            )
        if query.get("response_mode", "query") != "query":
            raise RedirectError("invalid_request", 9002313, "The emulator supports response_mode=query only.")
        if not pending.scope_param:
            raise RedirectError(
                "invalid_request", 900144, "The request body must contain the following parameter: 'scope'."
            )
        try:
            scopes, oidc, default = parse_scopes(pending.scope_param, tenant.display_name if tenant else segment)
        except TokenError as exc:
            raise RedirectError(exc.error, exc.code, exc.message) from exc
        pending.scopes, pending.oidc_scopes = frozenset(scopes | ({"User.Read"} if default else set())), frozenset(oidc)
        challenge, method = query.get("code_challenge"), query.get("code_challenge_method", "plain")
        if challenge is not None and method not in ("plain", "S256"):
            raise RedirectError("invalid_request", 9002313, "Invalid request. Request is malformed or invalid.")
        pending.code_challenge, pending.code_challenge_method = challenge, method
        if query.get("prompt") == "none":
            raise RedirectError("login_required", 50058, "A silent sign-in request was sent but no user is signed in.")
        with self.state.lock:
            self.state.tokens.pending[pending.id] = pending
        return pending

    def _validate_client(self, segment: str, query: dict[str, str]) -> tuple[Tenant | None, App, str]:
        tenant = self._tenant(segment)
        client_id = query.get("client_id", "")
        if not client_id:
            raise PageError(900144, "The request body must contain the following parameter: 'client_id'.")
        app = self.state.directory.get_app(client_id)
        if app is None:
            raise PageError(700016, self._app_not_found(client_id, tenant.display_name if tenant else segment))
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in app.redirect_uris:
            raise PageError(
                50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
                f"configured for the application '{app.client_id}'. Make sure the redirect URI sent in the "
                "request matches one added to your application in the Azure portal.",
            )
        return tenant, app, redirect_uri

    @staticmethod
    def _app_not_found(client_id: str, directory_name: str) -> str:
        return (
            f"Application with identifier '{client_id}' was not found in the directory '{directory_name}'. "
            "This can happen if the application has not been installed by the administrator of the tenant or "
            "consented to by any user in the tenant. You may have sent your authentication request to the "
            "wrong tenant."
        )

    def _authorize_page(self, request: Request, origin: str, segment: str) -> Response:
        try:
            pending = self.start_authorization(segment, request.query)
        except PageError as exc:
            return error_page(exc.code, exc.message)
        except RedirectError as exc:
            return Response.redirect(self.error_redirect(request.query, exc))
        return self._sign_in_form(pending, segment)

    @staticmethod
    def error_redirect(query: dict[str, str], exc: RedirectError) -> str:
        """Where to send the browser for a RedirectError (the request's redirect URI was validated)."""
        params = {"error": exc.error, "error_description": f"AADSTS{exc.code}: {exc.message}"}
        if "state" in query:
            params["state"] = query["state"]
        return with_query(query["redirect_uri"], params)

    def _sign_in_form(self, pending: PendingRequest, segment: str, problem: str = "") -> Response:
        accounts = self.state.directory.users_of(pending.tenant.id if pending.tenant else None)
        options = "".join(
            f"<option value='{html.escape(u.user_principal_name)}'>{html.escape(u.display_name)}</option>"
            for u in accounts
            if not u.is_shared
        )
        if pending.kind == "authorize":
            title = "Sign in"
            asks = ", ".join(sorted(pending.scopes)) or "sign you in"
            lead = f"<p><b>{html.escape(pending.app.display_name)}</b> wants to: {html.escape(asks)}.</p>"
            decline = "Cancel"
        else:
            title = "Permissions requested: accept for your organization"
            roles = ", ".join(sorted(pending.app.app_roles))
            lead = (
                f"<p><b>{html.escape(pending.app.display_name)}</b> needs these application permissions for "
                f"every mailbox in your organization: {html.escape(roles)}.</p><p>Sign in as an administrator.</p>"
            )
            decline = "Decline"
        error = f"<p class='error'>{html.escape(problem)}</p>" if problem else ""
        return html_page(
            title,
            f"{lead}{error}<form method='post' action='/{html.escape(segment)}/login'>"
            f"<input type='hidden' name='request_id' value='{html.escape(pending.id)}'>"
            "<label for='login'>Account</label>"
            f"<input id='login' name='login' list='accounts' value='{html.escape(pending.login_hint)}' "
            "autocomplete='username' required>"
            f"<datalist id='accounts'>{options}</datalist>"
            "<label for='password'>Password (only if the account has one)</label>"
            "<input id='password' name='password' type='password' autocomplete='current-password'>"
            "<button type='submit' name='action' value='accept'>Accept</button>"
            f"<button type='submit' name='action' value='decline' formnovalidate>{decline}</button></form>",
        )

    def _login(self, request: Request, origin: str, segment: str) -> Response:
        form = request.form()
        with self.state.lock:
            pending = self.state.tokens.pending.get(form.get("request_id", ""))
        if pending is None:
            return error_page(90014, "The sign-in request has expired or was already completed. Start again.")
        accept = form.get("action") == "accept"
        try:
            if pending.kind == "authorize":
                location = self.complete_authorization(pending, form.get("login", ""), accept, form.get("password", ""))
            else:
                location = self.complete_admin_consent(pending, form.get("login", ""), accept, form.get("password", ""))
        except SignInError as exc:
            return self._sign_in_form(pending, segment, str(exc))
        return Response.redirect(location)

    def _sign_in(self, pending: PendingRequest, login: str, password: str | None) -> User:
        """The user signing in; password is checked only when given (the control API gives None)."""
        directory = self.state.directory
        user = directory.resolve_user(pending.tenant.id, login) if pending.tenant else directory.lookup_user(login)
        if user is None:
            where = f"the {pending.tenant.display_name}" if pending.tenant else "this"
            raise SignInError(
                f"AADSTS50034: The user account {login} does not exist in {where} directory. To sign into "
                "this application, the account must be added to the directory."
            )
        if password is not None and user.password is not None and not hmac.compare_digest(password, user.password):
            raise SignInError("AADSTS50126: Error validating credentials due to invalid username or password.")
        if user.is_shared:
            raise SignInError("AADSTS50057: The user account is disabled.")
        return user

    def complete_authorization(self, pending: PendingRequest, login: str, accept: bool, password: str | None) -> str:
        """Finish a sign-in: the redirect URL carrying a code, or the cancel error. Raises SignInError."""
        state = {"state": pending.state} if pending.state is not None else {}
        if not accept:
            self._forget(pending)
            return with_query(
                pending.redirect_uri,
                {"error": "access_denied", "error_subcode": "cancel", "error_description": CANCEL_DESCRIPTION, **state},
            )
        user = self._sign_in(pending, login, password)
        self.state.directory.consent_delegated(user.id, pending.app.client_id, pending.scopes)
        code = secrets.token_urlsafe(48)
        with self.state.lock:
            self.state.tokens.codes[code] = AuthCode(
                client_id=pending.app.client_id,
                redirect_uri=pending.redirect_uri,
                user_id=user.id,
                tenant_id=user.tenant_id,
                scopes=pending.scopes,
                oidc_scopes=pending.oidc_scopes,
                nonce=pending.nonce,
                code_challenge=pending.code_challenge,
                code_challenge_method=pending.code_challenge_method,
                expires_at=time.time() + self.state.config.auth_code_lifetime_s,
            )
        self._forget(pending)
        params = {"code": "1.A" + code, **state, "session_state": str(uuid.uuid4())}
        if pending.client_info:
            params["client_info"] = client_info(user)
        return with_query(pending.redirect_uri, params)

    def _forget(self, pending: PendingRequest) -> None:
        with self.state.lock:
            self.state.tokens.pending.pop(pending.id, None)

    # -- admin consent -------------------------------------------------------------------------

    def start_admin_consent(self, segment: str, query: dict[str, str]) -> PendingRequest:
        """Validate an admin consent request. Raises PageError (no redirect) or RedirectError."""
        if segment.lower() == "common":
            raise PageError(
                90130,
                f"Application '{query.get('client_id', '')}' is not supported over the /common or /consumers "
                "endpoints. Please use the /organizations or tenant-specific endpoint.",
            )
        tenant, app, redirect_uri = self._validate_client(segment, query)
        scope = query.get("scope", "")
        try:
            _, _, default = parse_scopes(scope, tenant.display_name if tenant else segment)
        except TokenError as exc:
            raise RedirectError(exc.error, exc.code, exc.message) from exc
        if not default:
            raise RedirectError(
                "invalid_request",
                70011,
                "The provided value for the input parameter 'scope' is not valid. Application permissions "
                f"require the '{GRAPH_RESOURCE}/.default' scope.",
            )
        pending = PendingRequest(
            id=secrets.token_urlsafe(24),
            kind="adminconsent",
            tenant=tenant,
            app=app,
            redirect_uri=redirect_uri,
            state=query.get("state"),
            scope_param=scope,
        )
        with self.state.lock:
            self.state.tokens.pending[pending.id] = pending
        return pending

    def _admin_consent_page(self, request: Request, origin: str, segment: str) -> Response:
        try:
            pending = self.start_admin_consent(segment, request.query)
        except PageError as exc:
            return error_page(exc.code, exc.message)
        except RedirectError as exc:
            return Response.redirect(self.error_redirect(request.query, exc))
        return self._sign_in_form(pending, segment)

    def complete_admin_consent(self, pending: PendingRequest, login: str, accept: bool, password: str | None) -> str:
        """Finish admin consent: the redirect URL with ``admin_consent=True``. Raises SignInError."""
        state = {"state": pending.state} if pending.state is not None else {}
        if not accept:
            self._forget(pending)
            return with_query(
                pending.redirect_uri,
                {
                    "admin_consent": "True",
                    "error": "consent_required",
                    "error_description": ADMIN_DECLINE_DESCRIPTION,
                    **state,
                },
            )
        admin = self._sign_in(pending, login, password)
        self.state.directory.consent_admin(admin.tenant_id, pending.app.client_id)
        self._forget(pending)
        return with_query(
            pending.redirect_uri,
            {"admin_consent": "True", "tenant": admin.tenant_id, "scope": pending.scope_param, **state},
        )

    # -- token endpoint ------------------------------------------------------------------------

    def _token(self, request: Request, origin: str, segment: str) -> Response:
        correlation = request.headers.get("client-request-id", "")
        try:
            tenant = self._tenant(segment)
        except PageError as exc:
            return aad_error(origin, "invalid_request", exc.code, exc.message, correlation_id=correlation)
        form = request.form()
        try:
            grant_type = self._required(form, "grant_type")
            app = self._authenticate_client(request, form, tenant.display_name if tenant else segment)
            if grant_type == "authorization_code":
                body = self._redeem_code(origin, tenant, app, form)
            elif grant_type == "refresh_token":
                body = self._redeem_refresh_token(origin, tenant, app, form)
            elif grant_type == "client_credentials":
                body = self._client_credentials(origin, tenant, app, form)
            else:
                raise TokenError(
                    "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'."
                )
        except TokenError as exc:
            return aad_error(origin, exc.error, exc.code, exc.message, status=exc.status, correlation_id=correlation)
        return Response.json(
            200, body, {"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store, no-cache"}
        )

    @staticmethod
    def _required(form: dict[str, str], name: str) -> str:
        value = form.get(name, "")
        if not value:
            raise TokenError(
                "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'."
            )
        return value

    def _authenticate_client(self, request: Request, form: dict[str, str], directory_name: str) -> App:
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:], validate=True).decode("utf-8")
            except ValueError as exc:
                raise TokenError("invalid_client", 7000216, "Malformed client credentials.", 401) from exc
            user, _, password = decoded.partition(":")
            client_id, secret = unquote_plus(user), unquote_plus(password)
        if not client_id:
            self._required(form, "client_id")
        app = self.state.directory.get_app(client_id)
        if app is None:
            raise TokenError("unauthorized_client", 700016, self._app_not_found(client_id, directory_name))
        if not secret:
            raise TokenError(
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                401,
            )
        if not hmac.compare_digest(secret.encode(), app.client_secret.encode()):
            raise TokenError(
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client "
                f"secret value, not the client secret ID, for a secret added to app '{app.client_id}'.",
                401,
            )
        if app.secret_expired:
            # learn.microsoft.com/entra/identity-platform/reference-error-codes: AADSTS7000222
            # InvalidClientSecretExpiredKeysProvided, an invalid_client error like a wrong secret.
            raise TokenError(
                "invalid_client",
                7000222,
                f"The provided client secret keys for app '{app.client_id}' are expired. Visit the Azure portal "
                "to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate "
                "credentials for added security: https://aka.ms/certCreds.",
                401,
            )
        return app

    def _redeem_code(self, origin: str, tenant: Tenant | None, app: App, form: dict[str, str]) -> dict[str, Any]:
        raw = self._required(form, "code")
        with self.state.lock:
            code = self.state.tokens.codes.get(raw.removeprefix("1.A"))
            if code is None or code.client_id != app.client_id:
                raise TokenError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
            if code.redeemed:
                raise TokenError(
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use "
                    "an existing refresh token.",
                )
            if time.time() >= code.expires_at:
                raise self._expired_grant()
            if tenant is not None and tenant.id != code.tenant_id:
                raise TokenError(
                    "invalid_grant",
                    700005,
                    "Provided Authorization Code is intended to use against other tenant, thus rejected.",
                )
            if form.get("redirect_uri", "") != code.redirect_uri:
                raise TokenError(
                    "invalid_grant",
                    500112,
                    f"The reply address '{form.get('redirect_uri', '')}' does not match the reply address "
                    f"'{code.redirect_uri}' provided when requesting Authorization code.",
                )
            if code.code_challenge is not None and not _pkce_matches(
                form.get("code_verifier", ""), code.code_challenge, code.code_challenge_method
            ):
                raise TokenError(
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                )
            code.redeemed = True
        user = self._user(code.user_id)
        scopes = self._consented(user, app, code.scopes)
        grant = self.state.directory.create_grant(user.tenant_id, user.id, app.client_id)
        return self._user_tokens(
            origin, app, user, scopes=scopes, oidc=code.oidc_scopes, grant_id=grant.id, form=form, nonce=code.nonce
        )

    def _redeem_refresh_token(
        self, origin: str, tenant: Tenant | None, app: App, form: dict[str, str]
    ) -> dict[str, Any]:
        raw = self._required(form, "refresh_token")
        with self.state.lock:
            grant_id = self.state.tokens.refresh_tokens.get(raw)
        grant = self.state.directory.get_grant(grant_id) if grant_id else None
        if grant is None or grant.client_id != app.client_id:
            raise TokenError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if grant.status == "revoked":
            changed = (grant.status_changed_at or now_utc()).strftime("%m/%d/%Y %H:%M:%S")
            raise TokenError(
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user "
                "might have changed or reset their password. The grant was issued on "
                f"'{grant.issued_at.strftime('%Y-%m-%dT%H:%M:%S.%f')}Z' and the TokensValidFrom date (before which "
                f"tokens are not valid) for this user is '{changed}'.",
            )
        if grant.status == "expired":
            raise self._expired_grant()
        if tenant is not None and tenant.id != grant.tenant_id:
            raise TokenError(
                "invalid_grant",
                700005,
                "Provided refresh token is intended to use against other tenant, thus rejected.",
            )
        user = self._user(grant.user_id)
        requested, oidc, _ = parse_scopes(form.get("scope", ""), tenant.display_name if tenant else "common")
        scopes = self._consented(user, app, requested)
        return self._user_tokens(
            origin, app, user, scopes=scopes, oidc=frozenset(oidc), grant_id=grant.id, form=form, nonce=None
        )

    @staticmethod
    def _expired_grant() -> TokenError:
        return TokenError(
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new "
            "interactive authorization request for this user and resource.",
        )

    def _user(self, user_id: str) -> User:
        user = self.state.directory.get_user(user_id)
        if user is None:  # the directory was reset under a live grant
            raise TokenError("invalid_grant", 50034, "The user account does not exist in the directory.")
        return user

    def _consented(self, user: User, app: App, requested: Iterable[str]) -> frozenset[str]:
        """Every consented scope (what a token carries); refuses with AADSTS65001 if any requested is missing."""
        consented = self.state.directory.delegated_consent(user.id, app.client_id)
        if consented is None or not set(requested) <= consented:
            raise TokenError(
                "invalid_grant",
                65001,
                f"The user or administrator has not consented to use the application with ID '{app.client_id}' "
                f"named '{app.display_name}'. Send an interactive authorization request for this user and resource.",
            )
        return frozenset(consented)

    def _client_credentials(self, origin: str, tenant: Tenant | None, app: App, form: dict[str, str]) -> dict[str, Any]:
        if tenant is None:
            raise TokenError(
                "invalid_request",
                50059,
                "No tenant-identifying information found in either the request or implied by any provided credentials.",
            )
        scope = self._required(form, "scope")
        graph, oidc, default = parse_scopes(scope, tenant.display_name)
        if not default or graph or oidc or len(scope.split()) != 1:
            raise TokenError(
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a scope "
                "value with /.default suffixed to the resource identifier (application ID URI).",
            )
        roles = self.state.directory.admin_consent(tenant.id, app.client_id)
        if roles is None:
            raise TokenError("unauthorized_client", 700016, self._app_not_found(app.client_id, tenant.display_name))
        principal = Principal(tenant.id, app.client_id, None, roles=frozenset(roles))
        token, lifetime = self._access_token(origin, principal, app, None)
        return {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}

    # -- issuing -------------------------------------------------------------------------------

    def _user_tokens(
        self,
        origin: str,
        app: App,
        user: User,
        *,
        scopes: frozenset[str],
        oidc: frozenset[str],
        grant_id: str,
        form: dict[str, str],
        nonce: str | None,
    ) -> dict[str, Any]:
        principal = Principal(user.tenant_id, app.client_id, user.id, scopes=scopes)
        access_token, lifetime = self._access_token(origin, principal, app, user)
        refresh_token = "1.AQ" + secrets.token_urlsafe(96)
        with self.state.lock:
            self.state.tokens.refresh_tokens[refresh_token] = grant_id
        granted = sorted(scopes) + [s for s in ("profile", "openid", "email") if "openid" in oidc]
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
            "refresh_token": refresh_token,
        }
        if "openid" in oidc:
            body["id_token"] = self._id_token(origin, app, user, oidc, nonce)
        if form.get("client_info") == "1":
            body["client_info"] = client_info(user)
        return body

    def _access_token(self, origin: str, principal: Principal, app: App, user: User | None) -> tuple[str, int]:
        lifetime = self.state.config.access_token_lifetime_s
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": GRAPH_RESOURCE,
            "iss": f"{origin}/{principal.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "app_displayname": app.display_name,
            "appid": app.client_id,
            "appidacr": "1",
            "idtyp": "app" if user is None else "user",
            "tid": principal.tenant_id,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        if user is None:
            service_principal = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp:{principal.tenant_id}:{app.client_id}"))
            claims.update(oid=service_principal, sub=service_principal, roles=sorted(principal.roles))
        else:
            claims.update(
                oid=user.id,
                sub=user.id,
                name=user.display_name,
                upn=user.user_principal_name,
                unique_name=user.user_principal_name,
                scp=" ".join(sorted(principal.scopes)),
            )
        token = self.state.signing_key.sign(claims)
        with self.state.lock:
            self.state.tokens.access_tokens[token] = AccessTokenRecord(principal, float(now + lifetime))
        return token, lifetime

    def _id_token(self, origin: str, app: App, user: User, oidc: frozenset[str], nonce: str | None) -> str:
        now = int(time.time())
        pairwise = b64url(hashlib.sha256(f"{app.client_id}:{user.id}".encode()).digest())
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": f"{origin}/{user.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.display_name,
            "oid": user.id,
            "preferred_username": user.user_principal_name,
            "sub": pairwise,
            "tid": user.tenant_id,
            "uti": secrets.token_urlsafe(16),
            "ver": "2.0",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if "email" in oidc:
            claims["email"] = user.mail
        return self.state.signing_key.sign(claims)
