"""Google's OAuth 2.0 and OpenID Connect endpoints, on the real paths of each host:

* accounts.google.com: ``GET /o/oauth2/v2/auth`` (sign-in and consent page; its form posts to
  ``POST /signin/oauth/consent``) and ``GET /.well-known/openid-configuration``
* oauth2.googleapis.com: ``POST /token`` (authorization_code with PKCE, refresh_token, and the
  service-account ``urn:ietf:params:oauth:grant-type:jwt-bearer``) and ``POST /revoke``
* www.googleapis.com: ``GET /oauth2/v3/certs`` (JWKS); openidconnect.googleapis.com: ``GET /v1/userinfo``

Invariants:

* Problems that make redirecting unsafe (unknown client, unregistered redirect URI, malformed request)
  render an HTML error page ("Error 400: redirect_uri_mismatch"); a person declining redirects with
  ``error=access_denied``.
* Codes are single-use and expire after ``auth_code_lifetime_s``; a refresh token is issued only with
  ``access_type=offline`` and only on the first consent or with ``prompt=consent``; refresh tokens do not
  rotate. ``include_granted_scopes=true`` adds the scopes granted before to the new token.
* Token endpoint errors are Google's JSON (``error``, ``error_description``), e.g. ``invalid_grant``
  "Token has been expired or revoked." for a revoked refresh token.
* Every JWT (id_token, Pub/Sub push token) is RS256, signed by the emulator's one Google key and
  published at the JWKS endpoint; ``iss`` is the configured issuer (https://accounts.google.com).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.core import Request, Response
from emulator.google.state import (
    KNOWN_SCOPES,
    SCOPE_ALIASES,
    USERINFO_EMAIL,
    USERINFO_PROFILE,
    AccessToken,
    AuthCode,
    GoogleState,
    GoogleUser,
    Grant,
    PendingAuthorization,
)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REAL_TOKEN_URI = "https://oauth2.googleapis.com/token"
EXPIRED_OR_REVOKED = "Token has been expired or revoked."
UNAUTHORIZED_CLIENT = (
    "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of "
    "the scopes requested."
)
BASIC_SCOPES = frozenset({"openid", USERINFO_EMAIL, USERINFO_PROFILE})
JSON_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Cache-Control": "no-cache, no-store, max-age=0, must-revalidate",
    "Pragma": "no-cache",
}
INVALID_TOKEN_CHALLENGE = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'


class OAuthError(Exception):
    """A token endpoint refusal: ``error``, ``error_description`` and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status


class PageError(Exception):
    """An authorize problem shown on Google's error page (never redirected): "Error {status}: {error}"."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class SignInError(Exception):
    """Why a sign-in could not be completed (unknown account, unknown request)."""


def token_error(exc: OAuthError) -> Response:
    return Response(exc.status, dict(JSON_HEADERS),
                    json.dumps({"error": exc.error, "error_description": exc.description}).encode())


def json_response(status: int, payload: Any) -> Response:
    return Response(status, dict(JSON_HEADERS), json.dumps(payload).encode())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def with_query(uri: str, params: dict[str, str]) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(query=urlencode([*parse_qsl(parts.query, keep_blank_values=True),
                                                      *params.items()])))


def normalise_scopes(raw: str) -> tuple[list[str], list[str]]:
    """(known scopes in URL form, unknown ones) of a space-separated scope parameter."""
    known, unknown = [], []
    for item in raw.split():
        scope = SCOPE_ALIASES.get(item, item)
        if scope in KNOWN_SCOPES:
            if scope not in known:
                known.append(scope)
        else:
            unknown.append(item)
    return known, unknown


def page(title: str, body: str, status: int = 200) -> Response:
    document = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:34em;margin:3em auto}"
        "label{display:block;margin:.6em 0 .2em}input[type=email]{width:100%;padding:.4em}"
        "button{margin:1em .5em 0 0;padding:.5em 1.2em}.error{color:#c5221f}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response.text(status, document, "text/html; charset=utf-8")


def error_page(exc: PageError) -> Response:
    return page(
        "Access blocked: authorization error",
        f"<p class='error'>Error {exc.status}: {html.escape(exc.error)}</p><p>{html.escape(exc.message)}</p>",
        status=exc.status,
    )


class GoogleOAuth:
    """The OAuth/OIDC endpoints; every piece of state lives in :class:`GoogleState`."""

    def __init__(self, state: GoogleState) -> None:
        self.state = state

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/o/oauth2/v2/auth"): self._authorize_page,
            ("GET", "/o/oauth2/auth"): self._authorize_page,
            ("POST", "/signin/oauth/consent"): self._consent_form,
            ("POST", "/token"): self._token,
            ("POST", "/revoke"): self._revoke,
            ("GET", "/.well-known/openid-configuration"): self._openid_configuration,
            ("GET", "/oauth2/v3/certs"): self._certs,
            ("GET", "/v1/userinfo"): self._userinfo,
            ("GET", "/oauth2/v3/userinfo"): self._userinfo,
        }

    # -- discovery -----------------------------------------------------------------------------

    def _openid_configuration(self, request: Request, origin: str) -> Response:
        with self.state.lock:
            issuer = self.state.config.issuer
        return json_response(200, {
            "issuer": issuer,
            "authorization_endpoint": f"{origin}/o/oauth2/v2/auth",
            "device_authorization_endpoint": f"{origin}/device/code",
            "token_endpoint": f"{origin}/token",
            "userinfo_endpoint": f"{origin}/v1/userinfo",
            "revocation_endpoint": f"{origin}/revoke",
            "jwks_uri": f"{origin}/oauth2/v3/certs",
            "response_types_supported": ["code", "token", "id_token", "code token", "code id_token",
                                         "token id_token", "code token id_token", "none"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "claims_supported": ["aud", "email", "email_verified", "exp", "family_name", "given_name", "iat",
                                 "iss", "name", "picture", "sub"],
            "code_challenge_methods_supported": ["plain", "S256"],
            "grant_types_supported": ["authorization_code", "refresh_token",
                                      "urn:ietf:params:oauth:grant-type:device_code", JWT_BEARER],
        })

    def _certs(self, request: Request, origin: str) -> Response:
        jwk = {**self.state.signing_key.jwk(), "alg": "RS256"}
        return json_response(200, {"keys": [jwk]})

    # -- authorize -----------------------------------------------------------------------------

    def start_authorization(self, query: dict[str, str]) -> PendingAuthorization:
        """Validate an authorize request; PageError (shown, never redirected) when it is unsafe or malformed."""
        client_id = query.get("client_id", "")
        with self.state.lock:
            client = self.state.clients.get(client_id)
        if not client_id:
            raise PageError(400, "invalid_request", "Missing required parameter: client_id")
        if client is None:
            raise PageError(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = query.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise PageError(
                400, "redirect_uri_mismatch",
                "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy. "
                f"Request details: redirect_uri={redirect_uri}",
            )
        if "response_type" not in query:
            raise PageError(400, "invalid_request", "Required parameter is missing: response_type")
        if query["response_type"] != "code":
            raise PageError(400, "unsupported_response_type",
                            f"Invalid response_type: {query['response_type']} (the emulator issues codes only)")
        if not query.get("scope", "").strip():
            raise PageError(400, "invalid_request", "Missing required parameter: scope")
        scopes, unknown = normalise_scopes(query["scope"])
        if unknown:
            raise PageError(400, "invalid_scope",
                            f"Some requested scopes were invalid. {{invalid=[{', '.join(unknown)}]}}")
        access_type = query.get("access_type", "online")
        if access_type not in ("online", "offline"):
            raise PageError(400, "invalid_request", f"Invalid access_type: {access_type}")
        challenge = query.get("code_challenge")
        method = query.get("code_challenge_method", "plain")
        if challenge is not None and method not in ("plain", "S256"):
            raise PageError(400, "invalid_request", f"Invalid code_challenge_method: {method}")
        pending = PendingAuthorization(
            id=secrets.token_urlsafe(24),
            client_id=client_id,
            redirect_uri=redirect_uri,
            scopes=scopes,
            state=query.get("state"),
            access_type=access_type,
            prompt=query.get("prompt", ""),
            include_granted_scopes=query.get("include_granted_scopes", "false").lower() == "true",
            code_challenge=challenge,
            code_challenge_method=method,
            nonce=query.get("nonce"),
            login_hint=query.get("login_hint", ""),
            hd=query.get("hd"),
        )
        with self.state.lock:
            self.state.pending[pending.id] = pending
        return pending

    def _authorize_page(self, request: Request, origin: str) -> Response:
        try:
            pending = self.start_authorization(request.query)
        except PageError as exc:
            return error_page(exc)
        return self._consent_page(pending)

    def _consent_page(self, pending: PendingAuthorization, problem: str = "") -> Response:
        with self.state.lock:
            client = self.state.clients[pending.client_id]
            accounts = sorted(self.state.users)
        options = "".join(f"<option value='{html.escape(a)}'>" for a in accounts)
        boxes = "".join(
            f"<label><input type='checkbox' name='grant' value='{html.escape(s)}' checked> {html.escape(s)}</label>"
            for s in pending.scopes if s not in BASIC_SCOPES
        )
        error = f"<p class='error'>{html.escape(problem)}</p>" if problem else ""
        return page(
            "Sign in with Google",
            f"<p><b>{html.escape(client.name)}</b> wants to access your Google Account.</p>{error}"
            "<form method='post' action='/signin/oauth/consent'>"
            f"<input type='hidden' name='request_id' value='{html.escape(pending.id)}'>"
            "<label for='email'>Email</label>"
            f"<input id='email' name='email' type='email' list='accounts' value='{html.escape(pending.login_hint)}' "
            f"autocomplete='username' required><datalist id='accounts'>{options}</datalist>"
            f"<p>Select what it can access:</p>{boxes}"
            "<button type='submit' name='action' value='allow'>Continue</button>"
            "<button type='submit' name='action' value='deny' formnovalidate>Cancel</button></form>",
        )

    def _consent_form(self, request: Request, origin: str) -> Response:
        form = request.form()
        chosen = [v for k, v in parse_qsl(request.body.decode("utf-8"), keep_blank_values=True) if k == "grant"]
        with self.state.lock:
            pending = self.state.pending.get(form.get("request_id", ""))
        if pending is None:
            return error_page(PageError(400, "invalid_request", "This sign-in request has expired. Start again."))
        try:
            location = self.complete(pending.id, form.get("email", ""), form.get("action") == "allow",
                                     declined=[s for s in pending.scopes if s not in BASIC_SCOPES and s not in chosen])
        except SignInError as exc:
            return self._consent_page(pending, str(exc))
        return Response.redirect(location)

    def complete(self, request_id: str, email: str, allow: bool, declined: list[str] | None = None) -> str:
        """What the person's answer does: the URL the browser is redirected to (code or access_denied).
        ``declined`` are scopes unticked on the consent screen (Google's granular consent)."""
        with self.state.lock:
            pending = self.state.pending.get(request_id)
            if pending is None:
                raise SignInError("unknown or finished sign-in request")
            if not allow:
                del self.state.pending[request_id]
                return with_query(pending.redirect_uri, self._with_state(pending, {"error": "access_denied"}))
            user = self.state.users.get(email.strip().lower())
            if user is None:
                raise SignInError("Couldn't find your Google Account")
            del self.state.pending[request_id]
            grant = self.state.grants.setdefault((user.email, pending.client_id), Grant(user.email, pending.client_id))
            granted = {s for s in pending.scopes if s not in set(declined or [])}
            token_scopes = granted | (grant.scopes if pending.include_granted_scopes else set())
            grant.scopes |= granted
            issue_refresh = pending.access_type == "offline" and ("consent" in pending.prompt.split()
                                                                    or not grant.refresh_tokens)
            code = "4/0" + secrets.token_urlsafe(48)
            self.state.codes[code] = AuthCode(
                client_id=pending.client_id,
                redirect_uri=pending.redirect_uri,
                user_email=user.email,
                scopes=frozenset(token_scopes),
                issue_refresh_token=issue_refresh,
                code_challenge=pending.code_challenge,
                code_challenge_method=pending.code_challenge_method,
                nonce=pending.nonce,
                expires_at=time.time() + self.state.config.auth_code_lifetime_s,
            )
        params = {"code": code, "scope": " ".join(sorted(token_scopes)), "authuser": "0"}
        if user.hosted_domain:
            params["hd"] = user.hosted_domain
        params["prompt"] = "consent"
        return with_query(pending.redirect_uri, self._with_state(pending, params))

    @staticmethod
    def _with_state(pending: PendingAuthorization, params: dict[str, str]) -> dict[str, str]:
        return {**params, "state": pending.state} if pending.state is not None else params

    # -- token endpoint ------------------------------------------------------------------------

    def _token(self, request: Request, origin: str) -> Response:
        form = request.form()
        try:
            grant_type = form.get("grant_type")
            if not grant_type:
                raise OAuthError("unsupported_grant_type", "Invalid grant_type: ")
            if grant_type == JWT_BEARER:
                return json_response(200, self._jwt_bearer(form, origin))
            client_id = self._authenticate_client(request, form)
            if grant_type == "authorization_code":
                return json_response(200, self._redeem_code(form, client_id))
            if grant_type == "refresh_token":
                return json_response(200, self._refresh(form, client_id))
            raise OAuthError("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        except OAuthError as exc:
            return token_error(exc)

    def _authenticate_client(self, request: Request, form: dict[str, str]) -> str:
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                client_id, _, secret = base64.b64decode(credentials).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise OAuthError("invalid_client", "Unauthorized", 401) from exc
        if not client_id:
            raise OAuthError("invalid_request", "Could not determine client ID from request.")
        with self.state.lock:
            client = self.state.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "The OAuth client was not found.", 401)
        if secret is None:
            raise OAuthError("invalid_request", "client_secret is missing.")
        if not hmac.compare_digest(secret, client.client_secret):
            raise OAuthError("invalid_client", "Unauthorized", 401)
        return client_id

    def _redeem_code(self, form: dict[str, str], client_id: str) -> dict[str, Any]:
        raw = form.get("code")
        if not raw:
            raise OAuthError("invalid_request", "Missing required parameter: code")
        if "redirect_uri" not in form:
            raise OAuthError("invalid_request", "Missing parameter: redirect_uri")
        with self.state.lock:
            code = self.state.codes.get(raw)
            if code is None:
                raise OAuthError("invalid_grant", "Malformed auth code.")
            if code.redeemed or time.time() >= code.expires_at or code.client_id != client_id:
                raise OAuthError("invalid_grant", "Bad Request")
            if form["redirect_uri"] != code.redirect_uri:
                raise OAuthError("redirect_uri_mismatch", "Bad Request")
            if code.code_challenge is not None:
                verifier = form.get("code_verifier")
                if not verifier:
                    raise OAuthError("invalid_grant", "Missing code verifier.")
                computed = (b64url(hashlib.sha256(verifier.encode("ascii", "replace")).digest())
                            if code.code_challenge_method == "S256" else verifier)
                if not hmac.compare_digest(computed, code.code_challenge):
                    raise OAuthError("invalid_grant", "Invalid code verifier.")
            code.redeemed = True
            grant = self.state.grants.get((code.user_email, client_id))
            if grant is None:
                raise OAuthError("invalid_grant", EXPIRED_OR_REVOKED)
            user = self.state.users[code.user_email]
            response = self._issue(user, client_id, code.scopes, code.nonce)
            if code.issue_refresh_token:
                refresh = "1//" + secrets.token_urlsafe(64)
                grant.refresh_tokens[refresh] = code.scopes
                response["refresh_token"] = refresh
            return response

    def _refresh(self, form: dict[str, str], client_id: str) -> dict[str, Any]:
        token = form.get("refresh_token")
        if not token:
            raise OAuthError("invalid_request", "Missing required parameter: refresh_token")
        with self.state.lock:
            for grant in self.state.grants.values():
                if token in grant.refresh_tokens:
                    if grant.client_id != client_id:
                        raise OAuthError("unauthorized_client", "Unauthorized")
                    scopes = grant.refresh_tokens[token]
                    requested = form.get("scope")
                    if requested:
                        narrowed, unknown = normalise_scopes(requested)
                        if unknown or not set(narrowed) <= scopes:
                            raise OAuthError("invalid_scope", "Bad Request")
                        scopes = frozenset(narrowed)
                    return self._issue(self.state.users[grant.user_email], client_id, scopes, None)
        raise OAuthError("invalid_grant", EXPIRED_OR_REVOKED)

    def _issue(self, user: GoogleUser, client_id: str, scopes: frozenset[str], nonce: str | None) -> dict[str, Any]:
        """An access token (and id_token with ``openid``) for a user's grant; the caller holds the lock."""
        lifetime = self.state.config.access_token_lifetime_s
        access = "ya29." + secrets.token_urlsafe(96)
        self.state.access_tokens[access] = AccessToken(
            client_id=client_id, user_email=user.email, scopes=scopes, expires_at=time.time() + lifetime,
            grant_key=(user.email, client_id),
        )
        response: dict[str, Any] = {
            "access_token": access,
            "expires_in": lifetime,
            "scope": " ".join(sorted(scopes)),
            "token_type": "Bearer",
        }
        if "openid" in scopes:
            response["id_token"] = self.id_token(user, client_id, scopes, nonce, access)
        return response

    def id_token(self, user: GoogleUser, client_id: str, scopes: frozenset[str], nonce: str | None,
                 access_token: str) -> str:
        now = int(time.time())
        digest = hashlib.sha256(access_token.encode()).digest()
        claims: dict[str, Any] = {
            "iss": self.state.config.issuer,
            "azp": client_id,
            "aud": client_id,
            "sub": user.sub,
            "at_hash": b64url(digest[: len(digest) // 2]),
            "iat": now,
            "exp": now + 3600,
        }
        if user.hosted_domain:
            claims["hd"] = user.hosted_domain
        if USERINFO_EMAIL in scopes:
            claims["email"] = user.email
            claims["email_verified"] = True
        if USERINFO_PROFILE in scopes:
            claims["name"] = user.name
        if nonce is not None:
            claims["nonce"] = nonce
        return self.state.signing_key.sign(claims)

    # -- service accounts (domain-wide delegation) ---------------------------------------------

    def _jwt_bearer(self, form: dict[str, str], origin: str) -> dict[str, Any]:
        assertion = form.get("assertion")
        if not assertion:
            raise OAuthError("invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.") from exc
        with self.state.lock:
            account = self.state.service_accounts.get(str(unverified.get("iss", "")))
        if account is None or header.get("kid") not in (None, account.private_key_id):
            raise OAuthError("invalid_grant", "Invalid JWT Signature.")
        private = serialization.load_pem_private_key(account.private_key_pem.encode(), password=None)
        assert isinstance(private, rsa.RSAPrivateKey)
        try:
            claims = jwt.decode(assertion, private.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "verify_exp": False, "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_grant", "Invalid JWT Signature.") from exc
        if claims.get("aud") not in (f"{origin}/token", REAL_TOKEN_URI):
            raise OAuthError("invalid_grant", "Invalid JWT: Failed audience check.")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float) or exp - iat > 3600 \
                or iat > now + 300 or exp < now - 300:
            raise OAuthError(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check "
                "your iat and exp values in the JWT claim.",
            )
        scopes, unknown = normalise_scopes(str(claims.get("scope", "")))
        if not scopes or unknown:
            raise OAuthError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        subject = claims.get("sub")
        lifetime = self.state.config.access_token_lifetime_s
        access = "ya29.c." + secrets.token_urlsafe(96)
        with self.state.lock:
            if subject:
                user = self.state.users.get(str(subject).lower())
                if user is None:
                    raise OAuthError("invalid_grant", "Invalid email or User ID")
                domain = self.state.domains.get(user.hosted_domain or "")
                delegated = domain.delegations.get(account.client_id, frozenset()) if domain else frozenset()
                if not set(scopes) <= delegated:
                    raise OAuthError("unauthorized_client", UNAUTHORIZED_CLIENT, 401)
            self.state.access_tokens[access] = AccessToken(
                client_id=account.client_id, user_email=str(subject).lower() if subject else None,
                scopes=frozenset(scopes), expires_at=now + lifetime, grant_key=None,
                service_account=account.client_email,
            )
        return {"access_token": access, "expires_in": lifetime, "token_type": "Bearer"}

    # -- revocation and userinfo ---------------------------------------------------------------

    def _revoke(self, request: Request, origin: str) -> Response:
        token = request.form().get("token") or request.query.get("token", "")
        with self.state.lock:
            key: tuple[str, str] | None = None
            record = self.state.access_tokens.get(token)
            if record is not None and record.grant_key is not None and time.time() < record.expires_at:
                key = record.grant_key
            for grant_key, grant in self.state.grants.items():
                if token in grant.refresh_tokens:
                    key = grant_key
            if key is None:
                return json_response(400, {"error": "invalid_token", "error_description": "Token expired or revoked"})
            self.revoke_grant(*key)
        return json_response(200, {})

    def revoke_grant(self, user_email: str, client_id: str) -> bool:
        """Remove the grant, its refresh tokens and access tokens (the user removed the app's access)."""
        with self.state.lock:
            grant = self.state.grants.pop((user_email, client_id), None)
            for token, record in list(self.state.access_tokens.items()):
                if record.grant_key == (user_email, client_id):
                    del self.state.access_tokens[token]
            return grant is not None

    def access_token(self, request: Request) -> AccessToken | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self.state.lock:
            record = self.state.access_tokens.get(token.strip())
        if record is None or time.time() >= record.expires_at:
            return None
        return record

    def _userinfo(self, request: Request, origin: str) -> Response:
        record = self.access_token(request)
        if record is None or record.user_email is None:
            body = {"error": "invalid_request", "error_description": "Invalid Credentials"}
            headers = {**JSON_HEADERS, "WWW-Authenticate": INVALID_TOKEN_CHALLENGE}
            return Response(401, headers, json.dumps(body).encode())
        with self.state.lock:
            user = self.state.users[record.user_email]
        info: dict[str, Any] = {"sub": user.sub}
        if USERINFO_PROFILE in record.scopes:
            info["name"] = user.name
        if USERINFO_EMAIL in record.scopes:
            info.update({"email": user.email, "email_verified": True})
        if user.hosted_domain:
            info["hd"] = user.hosted_domain
        return json_response(200, info)

