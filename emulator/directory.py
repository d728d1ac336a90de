"""The emulated Entra ID directory: tenants, users, app registrations, consents, grants, policies.

Invariants:

* Every verified domain belongs to exactly one tenant; a tenant is referenced by its GUID or any of its
  domains, case-insensitively.
* User principal names are unique across tenants (their domains are); a user's UPN domain is one of
  its tenant's verified domains.
* App registrations are multi-tenant and global. An app exists *in* a tenant (for client credentials)
  only once an admin of that tenant consented.
* A grant is one refresh-token family issued by one authorization-code redemption. Revoking or expiring
  it never touches access tokens already issued (as in the real service).
* All methods take the shared state lock, so callers on any thread see a consistent directory.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from emulator.core import now_utc

GrantStatus = Literal["active", "revoked", "expired"]


class DirectoryError(ValueError):
    """A directory change that the real service would refuse (duplicate domain, unknown tenant...)."""


@dataclass
class Tenant:
    id: str
    display_name: str
    verified_domains: list[dict[str, Any]]

    @property
    def default_domain(self) -> str:
        return str(next(d["name"] for d in self.verified_domains if d["isDefault"]))

    def domain_names(self) -> list[str]:
        return [d["name"] for d in self.verified_domains]


@dataclass
class User:
    id: str
    tenant_id: str
    user_principal_name: str
    mail: str
    display_name: str
    proxy_addresses: list[str]
    is_shared: bool = False
    password: str | None = None

    def addresses(self) -> set[str]:
        """Every address that reaches this mailbox, lower-cased (UPN, mail, proxy addresses)."""
        found = {self.user_principal_name.lower(), self.mail.lower()}
        for proxy in self.proxy_addresses:
            prefix, _, address = proxy.partition(":")
            if prefix.lower() == "smtp" and address:
                found.add(address.lower())
        return found


@dataclass
class App:
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    app_roles: list[str]
    display_name: str = "CRM Mailbox Sync"
    secret_expired: bool = False  # the secret still matches, but its end date passed (AADSTS7000222)


@dataclass
class Grant:
    """One refresh-token family: who authorised which client, and whether it still stands."""

    id: str
    tenant_id: str
    user_id: str
    client_id: str
    issued_at: datetime
    status: GrantStatus = "active"
    status_changed_at: datetime | None = None


@dataclass
class Directory:
    """In-memory directory guarded by ``lock`` (the emulator state's single re-entrant lock)."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    apps: dict[str, App] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    # (user_id, client_id) -> delegated scopes the user consented to.
    delegated_consents: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # (tenant_id, client_id) -> application permissions an admin consented to.
    admin_consents: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    # (tenant_id, client_id) -> mailbox user ids an application access policy allows.
    access_policies: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    # -- tenants -----------------------------------------------------------------------------------

    def add_tenant(self, display_name: str, domains: list[str], tenant_id: str | None = None) -> Tenant:
        """Create a tenant. The first domain is the default; a ``*.onmicrosoft.*`` one is the initial."""
        if not domains:
            raise DirectoryError("a tenant needs at least one domain")
        names = [d.lower() for d in domains]
        initial = next((d for d in names if ".onmicrosoft." in d), names[0])
        tenant = Tenant(
            id=str(uuid.UUID(tenant_id)) if tenant_id else str(uuid.uuid4()),
            display_name=display_name,
            verified_domains=[
                {
                    "capabilities": "Email, OfficeCommunicationsOnline",
                    "isDefault": name == names[0],
                    "isInitial": name == initial,
                    "name": name,
                    "type": "Managed",
                }
                for name in names
            ],
        )
        with self.lock:
            if tenant.id in self.tenants:
                raise DirectoryError(f"tenant {tenant.id} already exists")
            taken = {n for t in self.tenants.values() for n in t.domain_names()}
            if clash := taken.intersection(names):
                raise DirectoryError(f"domain already verified by another tenant: {sorted(clash)[0]}")
            self.tenants[tenant.id] = tenant
        return tenant

    def find_tenant(self, reference: str) -> Tenant | None:
        """A tenant by GUID or verified domain (case-insensitive)."""
        ref = reference.lower()
        with self.lock:
            if ref in self.tenants:
                return self.tenants[ref]
            return next((t for t in self.tenants.values() if ref in t.domain_names()), None)

    # -- users -------------------------------------------------------------------------------------

    def add_user(
        self,
        tenant_id: str,
        user_principal_name: str,
        *,
        mail: str | None = None,
        display_name: str | None = None,
        proxy_addresses: Iterable[str] = (),
        shared: bool = False,
        password: str | None = None,
        user_id: str | None = None,
    ) -> User:
        """Create a user (or shared mailbox). ``SMTP:{mail}`` is always the primary proxy address."""
        upn = user_principal_name.lower()
        mail = (mail or upn).lower()
        local = upn.partition("@")[0]
        aliases = [p for p in proxy_addresses if not p.startswith("SMTP:")]
        user = User(
            id=user_id or str(uuid.uuid4()),
            tenant_id=tenant_id,
            user_principal_name=upn,
            mail=mail,
            display_name=display_name or local.replace(".", " ").title(),
            proxy_addresses=[f"SMTP:{mail}", *aliases],
            is_shared=shared,
            password=password,
        )
        with self.lock:
            tenant = self.tenants.get(tenant_id)
            if tenant is None:
                raise DirectoryError(f"unknown tenant {tenant_id}")
            if upn.partition("@")[2] not in tenant.domain_names():
                raise DirectoryError(f"{upn}: domain is not verified in tenant {tenant.display_name}")
            if any(u.user_principal_name == upn for u in self.users.values()):
                raise DirectoryError(f"user {upn} already exists")
            self.users[user.id] = user
        return user

    def get_user(self, user_id: str) -> User | None:
        with self.lock:
            return self.users.get(user_id)

    def resolve_user(self, tenant_id: str, key: str) -> User | None:
        """A user of ``tenant_id`` by id, UPN, mail or any proxy address (case-insensitive)."""
        needle = key.lower()
        if needle.startswith("smtp:"):
            needle = needle[5:]
        with self.lock:
            for user in self.users.values():
                if user.tenant_id == tenant_id and (user.id == needle or needle in user.addresses()):
                    return user
        return None

    def lookup_user(self, key: str) -> User | None:
        """A user of any tenant by id or address; for the control API, where no tenant is implied.

        A key without ``@`` may also be a short name (the ``mailNickname``, i.e. the local part of the
        mail address, or the UPN's local part, as ``adele`` in the demo tenant): it resolves only when
        exactly one user of the whole directory has it, so an ambiguous short name finds nobody. This is
        the control API's convenience (test tooling), never a Graph route's: Graph's ``/users/{id}``
        takes an id or a UPN only."""
        with self.lock:
            for tenant_id in self.tenants:
                if user := self.resolve_user(tenant_id, key):
                    return user
            if "@" in key or not key:
                return None
            short = key.lower()
            named = [u for u in self.users.values() if short in _short_names(u)]
        return named[0] if len(named) == 1 else None

    def users_of(self, tenant_id: str | None) -> list[User]:
        """Users of one tenant, or of all tenants when ``tenant_id`` is None."""
        with self.lock:
            return [u for u in self.users.values() if tenant_id is None or u.tenant_id == tenant_id]

    # -- apps and consent --------------------------------------------------------------------------

    def add_app(self, app: App) -> App:
        app.client_id = app.client_id.lower()
        with self.lock:
            if app.client_id in self.apps:
                raise DirectoryError(f"app {app.client_id} already exists")
            self.apps[app.client_id] = app
        return app

    def get_app(self, client_id: str) -> App | None:
        with self.lock:
            return self.apps.get(client_id.lower())

    def consent_delegated(self, user_id: str, client_id: str, scopes: Iterable[str]) -> set[str]:
        """Add scopes to a user's consent for a client; returns everything consented so far."""
        with self.lock:
            granted = self.delegated_consents.setdefault((user_id, client_id), set())
            granted.update(scopes)
            return set(granted)

    def delegated_consent(self, user_id: str, client_id: str) -> set[str] | None:
        """Scopes the user consented to for the client, or None when there is no consent at all."""
        with self.lock:
            granted = self.delegated_consents.get((user_id, client_id))
            return None if granted is None else set(granted)

    def set_app_roles(self, client_id: str, app_roles: Iterable[str]) -> App:
        """Change the application permissions the app registration requests (its API permissions).
        Consents already granted keep the roles they granted until an admin consents again."""
        with self.lock:
            app = self.apps.get(client_id.lower())
            if app is None:
                raise DirectoryError(f"unknown app {client_id}")
            app.app_roles = list(dict.fromkeys(app_roles))
            return app

    def consent_admin(self, tenant_id: str, client_id: str) -> set[str]:
        """Record tenant-wide admin consent: every application permission the app registration requests
        at that moment. ``/adminconsent`` with ``scope=…/.default`` "requests consent for all scopes found
        in the required permissions (both user and app)"
        (https://learn.microsoft.com/entra/identity-platform/v2-admin-consent); what it granted is what
        app-only tokens of the tenant carry in ``roles``."""
        with self.lock:
            roles = set(self.apps[client_id].app_roles)
            self.admin_consents[(tenant_id, client_id)] = roles
            return set(roles)

    def admin_consent(self, tenant_id: str, client_id: str) -> set[str] | None:
        """Consented application permissions, or None when no admin consented in this tenant."""
        with self.lock:
            roles = self.admin_consents.get((tenant_id, client_id))
            return None if roles is None else set(roles)

    # -- grants ------------------------------------------------------------------------------------

    def create_grant(self, tenant_id: str, user_id: str, client_id: str) -> Grant:
        grant = Grant(str(uuid.uuid4()), tenant_id, user_id, client_id, now_utc())
        with self.lock:
            self.grants[grant.id] = grant
        return grant

    def get_grant(self, grant_id: str) -> Grant | None:
        with self.lock:
            return self.grants.get(grant_id)

    def end_grants(self, user_id: str, client_id: str, status: GrantStatus) -> int:
        """Mark every active grant of a user for a client revoked or expired; returns how many."""
        changed = 0
        with self.lock:
            for grant in self.grants.values():
                if grant.user_id == user_id and grant.client_id == client_id and grant.status == "active":
                    grant.status, grant.status_changed_at = status, now_utc()
                    changed += 1
        return changed

    def remove_delegated_consent(self, user_id: str, client_id: str) -> None:
        with self.lock:
            self.delegated_consents.pop((user_id, client_id), None)

    # -- application access policies ---------------------------------------------------------------

    def set_access_policy(self, tenant_id: str, client_id: str, allowed_user_ids: set[str] | None) -> None:
        """Restrict an app's mailbox access in a tenant to ``allowed_user_ids``; None removes the policy."""
        with self.lock:
            if allowed_user_ids is None:
                self.access_policies.pop((tenant_id, client_id), None)
            else:
                self.access_policies[(tenant_id, client_id)] = set(allowed_user_ids)

    def mailbox_allowed(self, tenant_id: str, client_id: str, user_id: str) -> bool:
        with self.lock:
            allowed = self.access_policies.get((tenant_id, client_id))
            return allowed is None or user_id in allowed


# -- Graph representations -------------------------------------------------------------------------

USER_DEFAULT_PROPERTIES = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)


def user_properties(user: User) -> dict[str, Any]:
    """Every property the emulator knows for a user; only the defaults are returned without ``$select``."""
    given, _, surname = user.display_name.partition(" ")
    person = not user.is_shared
    return {
        "businessPhones": [],
        "displayName": user.display_name,
        "givenName": given if person else None,
        "jobTitle": None,
        "mail": user.mail,
        "mobilePhone": None,
        "officeLocation": None,
        "preferredLanguage": "en-US" if person else None,
        "surname": (surname or None) if person else None,
        "userPrincipalName": user.user_principal_name,
        "id": user.id,
        "accountEnabled": person,
        "mailNickname": user.mail.partition("@")[0],
        "otherMails": [],
        "proxyAddresses": list(user.proxy_addresses),
        "userType": "Member",
    }


def organization_properties(tenant: Tenant) -> dict[str, Any]:
    return {
        "id": tenant.id,
        "displayName": tenant.display_name,
        "tenantType": "AAD",
        "countryLetterCode": "US",
        "preferredLanguage": "en",
        "verifiedDomains": [dict(d) for d in tenant.verified_domains],
    }


def _short_names(user: User) -> set[str]:
    """The names a control-API caller may use for ``user`` without a domain: mail nickname, UPN local part."""
    return {user.mail.partition("@")[0].lower(), user.user_principal_name.partition("@")[0].lower()}
