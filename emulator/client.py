"""Python client for the emulator's control API (``/_emulator``), for tests and developer tooling.

* :class:`EmulatorClient`: every method is one control route; a non-2xx answer raises
  :class:`EmulatorError`.
* :class:`EmulatorTenant` (from :meth:`EmulatorClient.provision_tenant`): a fresh tenant with users and
  an app registration, plus MSAL helpers for delegated and application tokens.

Sessions ignore proxy and CA environment variables (``trust_env=False``) and verify TLS against the
emulator's CA bundle, so they work whatever ``REQUESTS_CA_BUNDLE`` the process under test uses.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import requests
from msal import ConfidentialClientApplication

from emulator.client_mail import MailControlMixin, SendControlMixin


class EmulatorError(RuntimeError):
    """The control API refused a call; ``status`` and ``body`` are its answer."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status, self.body = status, body


def emulator_session(ca_bundle: str | Path) -> requests.Session:
    """A requests session trusting ``ca_bundle`` regardless of environment variables (also for MSAL)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_bundle)
    return session


DELEGATED_SCOPES = ["Mail.Read", "User.Read"]
APP_SCOPES = ["https://graph.microsoft.com/.default"]
REDIRECT_URI = "http://127.0.0.1:7071/api/auth/callback"
ADMIN_CONSENT_REDIRECT_URI = "http://127.0.0.1:7071/api/auth/admin-consent/callback"


class EmulatorClient(MailControlMixin, SendControlMixin):
    def __init__(self, base_url: str, ca_bundle: str | Path) -> None:
        self.base_url = base_url.rstrip("/")
        self.ca_bundle = Path(ca_bundle)
        self.session = emulator_session(ca_bundle)

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        """Call a control route (``path`` with or without the ``/_emulator`` prefix); the decoded answer."""
        if not path.startswith("/_emulator"):
            path = "/_emulator" + path
        response = self.session.request(method, self.base_url + path, json=json, timeout=30)
        is_json = "json" in response.headers.get("Content-Type", "")
        body = response.json() if response.content and is_json else response.text or None
        if not response.ok:
            raise EmulatorError(method, path, response.status_code, body)
        return body

    # -- lifecycle and settings ----------------------------------------------------------------

    def reset(self) -> None:
        self._call("POST", "/reset")

    def ca_pem(self) -> str:
        return str(self._call("GET", "/ca.pem"))

    def config(self) -> dict[str, Any]:
        return dict(self._call("GET", "/config"))

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change settings (``latency_ms``, ``access_token_lifetime_s``, ``auth_code_lifetime_s``,
        ``mailbox_request_budget``, ``budget_window_s``, ``mailbox_concurrency``,
        ``allow_http_notification_urls``); returns every setting."""
        return dict(self._call("PUT", "/config", settings))

    # -- directory -----------------------------------------------------------------------------

    def create_tenant(self, display_name: str, domains: list[str], tenant_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"display_name": display_name, "domains": domains}
        if tenant_id is not None:
            body["id"] = tenant_id
        return dict(self._call("POST", "/tenants", body))

    def create_user(
        self,
        tenant_id: str,
        upn: str,
        *,
        mail: str | None = None,
        display_name: str | None = None,
        proxy_addresses: list[str] | None = None,
        shared: bool = False,
        password: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "user_principal_name": upn,
            "mail": mail,
            "display_name": display_name,
            "proxy_addresses": proxy_addresses or [],
            "shared": shared,
            "password": password,
        }
        return dict(self._call("POST", f"/tenants/{quote(tenant_id, safe='')}/users", body))

    def create_app(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: list[str],
        app_roles: list[str],
        display_name: str | None = None,
    ) -> dict[str, Any]:
        body = {
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": redirect_uris,
            "app_roles": app_roles,
            "display_name": display_name,
        }
        return dict(self._call("POST", "/apps", body))

    def set_app_roles(self, client_id: str, app_roles: list[str]) -> dict[str, Any]:
        """Change the application permissions an app registration requests; later admin consents grant
        exactly these (consents already given keep theirs)."""
        return dict(self._call("PUT", f"/apps/{quote(client_id, safe='')}/app-roles", {"app_roles": app_roles}))

    # -- sign-in and consent -------------------------------------------------------------------

    def authorize(self, auth_uri: str, user: str, consent: bool = True) -> str:
        """Do what the person on the sign-in page would; returns the URL the browser is sent to."""
        answer = self._call("POST", "/authorize", {"auth_uri": auth_uri, "user": user, "consent": consent})
        return str(answer["redirect_url"])

    def admin_consent(self, consent_uri: str, admin: str, accept: bool = True) -> str:
        """Do what the admin on the consent page would; returns the URL the browser is sent to."""
        answer = self._call("POST", "/admin-consent", {"consent_uri": consent_uri, "admin": admin, "accept": accept})
        return str(answer["redirect_url"])

    def sign_in(
        self, msal_app: ConfidentialClientApplication, user: str, scopes: list[str], redirect_uri: str
    ) -> dict[str, Any]:
        """Run an MSAL auth-code flow (PKCE) end to end, the control API standing in for the browser.

        ``msal_app`` is an ``msal.ConfidentialClientApplication``; returns what
        ``acquire_token_by_auth_code_flow`` returns (tokens, or a dict with ``error``).
        """
        flow = msal_app.initiate_auth_code_flow(scopes, redirect_uri=redirect_uri, login_hint=user)
        redirect = self.authorize(flow["auth_uri"], user)
        response = dict(parse_qsl(urlsplit(redirect).query, keep_blank_values=True))
        return dict(msal_app.acquire_token_by_auth_code_flow(flow, response))

    def expire_client_secret(self, client_id: str, expired: bool = True) -> None:
        """The app's client secret passes its end date (token requests: AADSTS7000222), or is renewed."""
        self._call("POST", f"/apps/{quote(client_id, safe='')}/secret", {"expired": expired})

    def revoke_grant(self, user: str, client_id: str, reason: str = "revoked") -> int:
        """End a user's grants for a client: ``revoked`` (AADSTS50173), ``expired`` (AADSTS70008) or
        ``consent_removed`` (AADSTS65001). Access tokens already issued stay valid. Returns grants changed."""
        answer = self._call("POST", "/grants/revoke", {"user": user, "client_id": client_id, "reason": reason})
        return int(answer["grants"])

    def set_access_policy(self, tenant: str, client_id: str, allowed_users: list[str] | None) -> None:
        """Limit an app's mailbox access in a tenant to ``allowed_users``; None removes the policy."""
        self._call("POST", "/access-policy", {"tenant": tenant, "client_id": client_id, "allowed_users": allowed_users})

    def expire_access_tokens(self, user: str | None = None) -> int:
        """Make current access tokens (of ``user``, or everyone's) expired; returns how many."""
        return int(self._call("POST", "/tokens/expire", {"user": user})["expired"])

    # -- faults and limits ---------------------------------------------------------------------

    def add_fault(self, **rule: Any) -> str:
        """Inject a fault: ``status`` (429/500/502/503/504), ``retry_after``, ``delay_ms``, ``drop_connection``,
        ``count`` (-1: until cleared), ``path_contains``, ``mailbox`` (id or UPN), ``method``, ``after`` (handle the
        request first, then fail or drop: the call happened but its answer was lost). Returns its id."""
        return str(self._call("POST", "/faults", rule)["id"])

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def mailbox_stats(self, user: str) -> dict[str, Any]:
        """``{"requests": n, "by_status": {"200": n, ...}}`` for Graph calls that targeted the mailbox."""
        return dict(self._call("GET", f"/stats/mailboxes/{quote(user, safe='')}"))

    def provision_tenant(self, label: str = "test") -> EmulatorTenant:
        """A new tenant with a unique domain, users ``adele`` (alias ``adele.vance@...``), ``megan`` and the
        shared mailbox ``sales``, and its own app registration (``Mail.Read``, ``User.Read.All``)."""
        suffix = uuid.uuid4().hex[:10]
        domain = f"t{suffix}.example"
        created = self.create_tenant(f"{label[:40]} {suffix}", [domain, f"t{suffix}.onmicrosoft.example"])
        users = {}
        for short, extra in (
            ("adele", {"display_name": "Adele Vance", "proxy_addresses": [f"smtp:adele.vance@{domain}"]}),
            ("megan", {"display_name": "Megan Bowen"}),
            ("sales", {"display_name": "Sales", "shared": True}),
        ):
            user = self.create_user(created["id"], f"{short}@{domain}", **extra)
            users[short] = TenantUser(user["id"], user["user_principal_name"], user["mail"])
        app = TenantApp(str(uuid.uuid4()), f"secret-{uuid.uuid4().hex}", REDIRECT_URI, ADMIN_CONSENT_REDIRECT_URI)
        self.create_app(
            app.client_id,
            app.client_secret,
            [app.redirect_uri, app.admin_consent_redirect_uri],
            ["Mail.Read", "User.Read.All"],
        )
        return EmulatorTenant(
            created["id"], domain, created["display_name"], app, users, self, emulator_session(self.ca_bundle)
        )


class Record:
    """Attribute access plus ``record["field"]``, so callers may use either style."""

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


@dataclass
class TenantUser(Record):
    id: str
    upn: str
    mail: str


@dataclass
class TenantApp(Record):
    client_id: str
    client_secret: str
    redirect_uri: str
    admin_consent_redirect_uri: str


@dataclass
class EmulatorTenant(Record):
    """A provisioned tenant and MSAL helpers bound to it; ``users`` maps short names to users."""

    id: str
    domain: str
    display_name: str
    app: TenantApp
    users: dict[str, TenantUser]
    client: EmulatorClient
    session: requests.Session = field(repr=False)

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def graph_url(self) -> str:
        return f"{self.client.base_url}/v1.0"

    @property
    def authority(self) -> str:
        return f"{self.client.base_url}/{self.id}"

    def msal_app(self, authority: str | None = None, secret: str | None = None) -> ConfidentialClientApplication:
        """A fresh MSAL app (its own token cache, and none of MSAL's memory of earlier 400 answers)."""
        return ConfidentialClientApplication(
            self.app.client_id,
            client_credential=self.app.client_secret if secret is None else secret,
            authority=authority or self.authority,
            instance_discovery=False,
            http_client=self.session,
        )

    def sign_in(
        self,
        user: str = "adele",
        scopes: list[str] | None = None,
        app: ConfidentialClientApplication | None = None,
    ) -> tuple[ConfidentialClientApplication, dict[str, Any]]:
        """Auth-code flow with PKCE for ``user`` (a short name); returns the MSAL app and its result."""
        app = app or self.msal_app()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "response_mode='form_post' is recommended", UserWarning)
            result = self.client.sign_in(app, self.users[user].upn, scopes or DELEGATED_SCOPES, self.app.redirect_uri)
        return app, result

    def delegated_token(self, user: str = "adele", scopes: list[str] | None = None) -> str:
        _, result = self.sign_in(user, scopes)
        if "access_token" not in result:
            raise EmulatorError("sign-in", user, 400, result)
        return str(result["access_token"])

    def admin_consent_uri(self, tenant: str | None = None, state: str = "admin-state") -> str:
        query = {
            "client_id": self.app.client_id,
            "scope": APP_SCOPES[0],
            "redirect_uri": self.app.admin_consent_redirect_uri,
            "state": state,
        }
        return f"{self.base_url}/{tenant or self.id}/v2.0/adminconsent?{urlencode(query)}"

    def consent_as_admin(self, admin: str = "megan") -> str:
        """Admin consent for the tenant; returns the redirect URL."""
        return self.client.admin_consent(self.admin_consent_uri(), self.users[admin].upn)

    def app_token(self) -> str:
        """An application token for the tenant (admin consent first), via MSAL client credentials."""
        self.consent_as_admin()
        result = self.msal_app().acquire_token_for_client(APP_SCOPES)
        if "access_token" not in result:
            raise EmulatorError("client-credentials", self.id, 400, result)
        return str(result["access_token"])

    def graph(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        """Call Graph (``path`` relative to ``/v1.0``) with an optional bearer token."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(method, self.graph_url + path, headers=headers, timeout=30, **kwargs)

    def token_request(self, **form: str) -> requests.Response:
        """POST the token endpoint directly (no MSAL), for exact status codes and bodies."""
        return self.session.post(f"{self.authority}/oauth2/v2.0/token", data=form, timeout=30)
