"""The control API under ``/_emulator``: JSON in, JSON out, no authentication (loopback test tooling).

It sets up tenants, users and apps, drives sign-in and consent without a browser, revokes grants,
sets access policies, expires an app's client secret (AADSTS7000222), tunes limits and latency, injects
faults (``faults/send``: the next sends fail before sending, or are sent and their answer lost) and reads
per-mailbox counters. Routes under ``mailboxes/``, ``subscriptions/`` and ``delta/``
belong to the mail store, and so does ``outbox`` (mail sent to addresses outside the emulator).

Invariants: a malformed or impossible request answers 4xx with ``{"error": "..."}`` and changes
nothing; ``/_emulator/authorize`` and ``/_emulator/admin-consent`` do exactly what the person's form
post would and answer the URL the browser would be redirected to.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from emulator.core import Request, Response
from emulator.directory import App, DirectoryError, Tenant, User
from emulator.identity import IdentityPlatform, PageError, PendingRequest, RedirectError, SignInError

if TYPE_CHECKING:
    from emulator.state import EmulatorState

MAIL_CONTROL_PREFIXES = ("mailboxes", "subscriptions", "delta", "outbox")
REVOKE_REASONS = ("revoked", "expired", "consent_removed")
Route = Callable[[Request, re.Match[str]], Response]
FAULT_FIELDS = (
    "status", "retry_after", "delay_ms", "drop_connection", "count", "path_contains", "mailbox", "method", "after",
)


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "display_name": tenant.display_name,
        "default_domain": tenant.default_domain,
        "domains": tenant.domain_names(),
    }


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "tenant_id": user.tenant_id,
        "user_principal_name": user.user_principal_name,
        "mail": user.mail,
        "display_name": user.display_name,
        "proxy_addresses": list(user.proxy_addresses),
        "shared": user.is_shared,
    }


def app_json(app: App) -> dict[str, Any]:
    return {
        "client_id": app.client_id,
        "display_name": app.display_name,
        "redirect_uris": list(app.redirect_uris),
        "app_roles": list(app.app_roles),
    }


class ControlApi:
    def __init__(self, state: EmulatorState, identity: IdentityPlatform, ca_pem: Path) -> None:
        self.state = state
        self.identity = identity
        self.ca_pem = ca_pem
        self.routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("POST", re.compile(r"reset"), self._reset),
            ("GET", re.compile(r"ca\.pem"), self._ca),
            ("GET", re.compile(r"config"), self._get_config),
            ("PUT", re.compile(r"config"), self._put_config),
            ("POST", re.compile(r"tenants"), self._create_tenant),
            ("POST", re.compile(r"tenants/(?P<tenant>[^/]+)/users"), self._create_user),
            ("POST", re.compile(r"apps"), self._create_app),
            ("PUT", re.compile(r"apps/(?P<client>[^/]+)/app-roles"), self._set_app_roles),
            ("POST", re.compile(r"apps/(?P<client_id>[^/]+)/secret"), self._secret_expiry),
            ("POST", re.compile(r"authorize"), self._authorize),
            ("POST", re.compile(r"admin-consent"), self._admin_consent),
            ("POST", re.compile(r"grants/revoke"), self._revoke),
            ("POST", re.compile(r"access-policy"), self._access_policy),
            ("POST", re.compile(r"faults"), self._add_fault),
            ("DELETE", re.compile(r"faults"), self._clear_faults),
            ("POST", re.compile(r"faults/send"), self._send_fault),
            ("GET", re.compile(r"stats/mailboxes/(?P<user>[^/]+)"), self._mailbox_stats),
            ("POST", re.compile(r"tokens/expire"), self._expire_tokens),
        ]

    def handle(self, request: Request, origin: str) -> Response:
        route = request.path.removeprefix("/_emulator").strip("/")
        if route.split("/", 1)[0] in MAIL_CONTROL_PREFIXES:
            return self.state.mail.handle_control(request)
        matches = [(method, handler, m) for method, pattern, handler in self.routes if (m := pattern.fullmatch(route))]
        for method, handler, match in matches:
            if method == request.method:
                try:
                    return handler(request, match)
                except ControlError as exc:
                    return Response.json(exc.status, {"error": str(exc)})
                except (DirectoryError, KeyError, TypeError, ValueError) as exc:
                    return Response.json(400, {"error": f"bad request: {exc}"})
        if matches:
            return Response.json(405, {"error": f"{request.method} not allowed on /_emulator/{route}"})
        return Response.json(404, {"error": f"no control route /_emulator/{route}"})

    # -- lookups -------------------------------------------------------------------------------

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        body = request.json()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise ControlError(400, "the body must be a JSON object")
        return body

    def _tenant(self, reference: str) -> Tenant:
        tenant = self.state.directory.find_tenant(reference)
        if tenant is None:
            raise ControlError(404, f"unknown tenant {reference}")
        return tenant

    def _user(self, key: str) -> User:
        user = self.state.directory.lookup_user(key)
        if user is None:
            raise ControlError(404, f"unknown user {key}")
        return user

    def _app(self, client_id: str) -> App:
        app = self.state.directory.get_app(client_id)
        if app is None:
            raise ControlError(404, f"unknown app {client_id}")
        return app

    # -- routes --------------------------------------------------------------------------------

    def _reset(self, request: Request, match: re.Match[str]) -> Response:
        self.state.reset()
        return Response.json(200, {})

    def _ca(self, request: Request, match: re.Match[str]) -> Response:
        return Response(200, {"Content-Type": "application/x-pem-file"}, self.ca_pem.read_bytes())

    def _get_config(self, request: Request, match: re.Match[str]) -> Response:
        with self.state.lock:
            return Response.json(200, self.state.config.as_dict())

    def _put_config(self, request: Request, match: re.Match[str]) -> Response:
        return Response.json(200, self.state.configure(self._body(request)))

    def _create_tenant(self, request: Request, match: re.Match[str]) -> Response:
        body = self._body(request)
        tenant = self.state.directory.add_tenant(body["display_name"], list(body["domains"]), body.get("id"))
        return Response.json(201, tenant_json(tenant))

    def _create_user(self, request: Request, match: re.Match[str]) -> Response:
        body = self._body(request)
        tenant = self._tenant(match["tenant"])
        user = self.state.directory.add_user(
            tenant.id,
            body["user_principal_name"],
            mail=body.get("mail"),
            display_name=body.get("display_name"),
            proxy_addresses=list(body.get("proxy_addresses") or []),
            shared=bool(body.get("shared", False)),
            password=body.get("password"),
        )
        return Response.json(201, user_json(user))

    def _create_app(self, request: Request, match: re.Match[str]) -> Response:
        body = self._body(request)
        app = App(
            client_id=body["client_id"],
            client_secret=body["client_secret"],
            redirect_uris=list(body.get("redirect_uris") or []),
            app_roles=list(body.get("app_roles") or []),
        )
        if body.get("display_name"):
            app.display_name = body["display_name"]
        return Response.json(201, app_json(self.state.directory.add_app(app)))

    def _set_app_roles(self, request: Request, match: re.Match[str]) -> Response:
        roles = self._body(request).get("app_roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise ControlError(400, "app_roles must be a list of permission names")
        app = self.state.directory.set_app_roles(self._app(match["client"]).client_id, roles)
        return Response.json(200, app_json(app))

    def _secret_expiry(self, request: Request, match: re.Match[str]) -> Response:
        """``{"expired": bool}``: the app's client secret passes its end date (or is renewed)."""
        app = self._app(match["client_id"])
        app.secret_expired = bool(self._body(request).get("expired", True))
        return Response.json(200, app_json(app))

    @staticmethod
    def _split_uri(uri: str, suffix: str) -> tuple[str, dict[str, str]]:
        """(tenant segment, query) of an identity URL ending in ``/{tenant}/{suffix}``."""
        parts = urlsplit(uri)
        path = parts.path.strip("/")
        if not path.endswith(suffix) or "/" not in path:
            raise ControlError(400, f"not a .../{{tenant}}/{suffix} URL: {uri}")
        return path.split("/", 1)[0], dict(parse_qsl(parts.query, keep_blank_values=True))

    def _authorize(self, request: Request, match: re.Match[str]) -> Response:
        body = self._body(request)
        segment, query = self._split_uri(body["auth_uri"], "oauth2/v2.0/authorize")
        return self._run_flow(
            query,
            lambda: self.identity.start_authorization(segment, query),
            lambda pending: self.identity.complete_authorization(
                pending, str(body["user"]), bool(body.get("consent", True)), None
            ),
        )

    def _admin_consent(self, request: Request, match: re.Match[str]) -> Response:
        body = self._body(request)
        segment, query = self._split_uri(body["consent_uri"], "v2.0/adminconsent")
        return self._run_flow(
            query,
            lambda: self.identity.start_admin_consent(segment, query),
            lambda pending: self.identity.complete_admin_consent(
                pending, str(body["admin"]), bool(body.get("accept", True)), None
            ),
        )

    @staticmethod
    def _run_flow(
        query: dict[str, str],
        start: Callable[[], PendingRequest],
        complete: Callable[[PendingRequest], str],
    ) -> Response:
        try:
            pending = start()
        except PageError as exc:
            raise ControlError(400, str(exc)) from exc
        except RedirectError as exc:
            return Response.json(200, {"redirect_url": IdentityPlatform.error_redirect(query, exc)})
        try:
            return Response.json(200, {"redirect_url": complete(pending)})
        except SignInError as exc:
            raise ControlError(400, str(exc)) from exc

    def _revoke(self, request: Request, match: re.Match[str]) -> Response:
        body = self._body(request)
        user, app = self._user(body["user"]), self._app(body["client_id"])
        reason = body.get("reason", "revoked")
        if reason not in REVOKE_REASONS:
            raise ControlError(400, f"reason must be one of {REVOKE_REASONS}")
        if reason == "consent_removed":
            self.state.directory.remove_delegated_consent(user.id, app.client_id)
            return Response.json(200, {"grants": 0})
        changed = self.state.directory.end_grants(
            user.id, app.client_id, "revoked" if reason == "revoked" else "expired"
        )
        return Response.json(200, {"grants": changed})

    def _access_policy(self, request: Request, match: re.Match[str]) -> Response:
        body = self._body(request)
        tenant, app = self._tenant(body["tenant"]), self._app(body["client_id"])
        allowed = body.get("allowed_users")
        if allowed is None:
            self.state.directory.set_access_policy(tenant.id, app.client_id, None)
        else:
            users = [self._user(key) for key in allowed]
            if any(u.tenant_id != tenant.id for u in users):
                raise ControlError(400, "allowed_users must belong to the tenant")
            self.state.directory.set_access_policy(tenant.id, app.client_id, {u.id for u in users})
        return Response.json(200, {})

    def _add_fault(self, request: Request, match: re.Match[str]) -> Response:
        spec = self._body(request)
        if unknown := set(spec) - set(FAULT_FIELDS):
            raise ControlError(400, f"unknown fault fields: {sorted(unknown)}")
        mailbox = spec.pop("mailbox", None)
        if mailbox is not None:
            spec["mailbox_id"] = self._user(str(mailbox)).id
        rule = self.state.add_fault(**spec)
        return Response.json(201, {"id": rule.id})

    def _send_fault(self, request: Request, match: re.Match[str]) -> Response:
        """The next ``count`` sends (``…/send`` and ``sendMail``, optionally of one ``mailbox``) fail:
        with ``status`` before anything is sent, or, with ``lost``, after the message was sent (the
        connection drops, or ``status`` replaces the 202): "accepted but the answer was lost"."""
        spec = self._body(request)
        if unknown := set(spec) - {"mailbox", "count", "status", "retry_after", "lost"}:
            raise ControlError(400, f"unknown fields: {sorted(unknown)}")
        lost = bool(spec.get("lost", False))
        status = spec.get("status")
        if status is None and not lost:
            raise ControlError(400, "a send fault needs a status, or lost: true")
        mailbox = spec.get("mailbox")
        rule = self.state.add_fault(
            status=status,
            retry_after=spec.get("retry_after"),
            drop_connection=lost and status is None,
            after=lost,
            count=int(spec.get("count", 1)),
            path_contains="/send",
            method="POST",
            mailbox_id=self._user(str(mailbox)).id if mailbox is not None else None,
        )
        return Response.json(201, {"id": rule.id})

    def _clear_faults(self, request: Request, match: re.Match[str]) -> Response:
        self.state.clear_faults()
        return Response.json(200, {})

    def _mailbox_stats(self, request: Request, match: re.Match[str]) -> Response:
        return Response.json(200, self.state.mailbox_stats(self._user(match["user"]).id))

    def _expire_tokens(self, request: Request, match: re.Match[str]) -> Response:
        key = self._body(request).get("user")
        user_id = self._user(str(key)).id if key is not None else None
        return Response.json(200, {"expired": self.state.tokens.expire_access_tokens(user_id)})
