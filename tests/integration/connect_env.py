"""The connect use cases wired as in production (MSAL over HTTPS to the emulator, auth stores on Azurite),
the product's Table adapters for mailboxes, settings, cursors and activities, and an injectable clock.

Used by tests/integration/test_connect_*.py through the ``env`` fixture defined here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msal
import pytest
from azure.data.tables import TableServiceClient

from emulator.client import ADMIN_CONSENT_REDIRECT_URI, EmulatorClient, EmulatorTenant
from emulator.server import EmulatorServer
from sync_core.adapters.graph.directory import GraphDirectory
from sync_core.adapters.graph.http import GraphHttp
from sync_core.adapters.graph.identity import MsalIdentity
from sync_core.adapters.graph.session import MsalHttpClient, make_session
from sync_core.adapters.tables import TableStores
from sync_core.auth.crypto import TokenCipher
from sync_core.auth.token_cache_store import TableAuthFlowStore, TableOrgTenantStore, TableTokenCacheStore
from sync_core.domain.model import Mailbox, OrgSettings
from sync_core.ports.identity import TokenSource
from sync_core.settings import Settings
from sync_core.use_cases.connect import (
    ConnectDeps,
    ConnectResult,
    complete_admin_consent,
    complete_connect,
    confirm_connect,
    start_admin_consent,
    start_connect,
)

KEY_A = "a:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="
KEY_B = "b:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
PUBLIC_BASE_URL = ADMIN_CONSENT_REDIRECT_URI.split("/api/")[0]  # what the emulator's app registration allows
RETURN_URL = "https://crm.example.com/settings/mailboxes"
ORG = "org-1"
RETURN_URL_2 = "https://other.example.org/crm"
ORG_RETURN_URLS = {ORG: RETURN_URL, "org-2": RETURN_URL_2}


class MutableClock:
    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    def advance(self, delta: timedelta) -> None:
        self.current += delta


@dataclass
class ConnectEnv:
    tenant: EmulatorTenant
    client: EmulatorClient
    emulator: EmulatorServer
    service: TableServiceClient
    prefix: str
    clock: MutableClock
    settings: Settings
    http: MsalHttpClient
    key_setting: str = KEY_A
    deps: ConnectDeps = field(init=False)

    def __post_init__(self) -> None:
        self.stores = TableStores.create(self.service, self.prefix)
        self.mailboxes = self.stores.mailboxes
        self.org_settings = self.stores.settings
        self.cursors = self.stores.cursors
        self.org_settings.put(ORG, OrgSettings(return_url_allow_list=("https://crm.example.com/settings",)))
        self.org_settings.put("org-2", OrgSettings(return_url_allow_list=("https://other.example.org/",)))
        self.rotate(self.key_setting)

    def rotate(self, key_setting: str) -> None:
        """Rebuild the stores and identity with another TOKEN_ENCRYPTION_KEY (as after a restart)."""
        self.key_setting = key_setting
        cipher = TokenCipher.from_setting(key_setting)
        self.settings = replace(self.settings, token_encryption_key=key_setting)
        metrics = self.stores.metrics
        self.tokens = TableTokenCacheStore(self.service, cipher, self.prefix, metrics)
        self.identity = MsalIdentity(self.settings, self.tokens, self.http)
        self.deps = ConnectDeps(
            identity=self.identity,
            flows=TableAuthFlowStore(self.service, cipher, self.prefix, metrics),
            tokens=self.tokens,
            tenants=TableOrgTenantStore(self.service, self.prefix, metrics),
            mailboxes=self.mailboxes,
            settings=self.org_settings,
            cursors=self.cursors,
            activities=self.stores.activities,
            leases=self.stores.leases,
            clock=self.clock,
            directory_for=lambda source: GraphDirectory(self.graph_for(source)),
            public_base_url=self.settings.public_base_url,
        )

    def graph_for(self, token_source: TokenSource) -> GraphHttp:
        return GraphHttp(make_session(self.settings.ca_bundle), self.settings.graph_base_url, token_source)

    def upn(self, user: str) -> str:
        return self.tenant.users[user].upn

    def authorize(self, authorize_url: str, user: str = "adele", consent: bool = True) -> dict[str, str]:
        """The browser part: sign in on the emulator's page; returns the callback's query parameters."""
        redirect = self.client.authorize(authorize_url, self.upn(user), consent=consent)
        assert redirect.startswith(self.deps.redirect_uri), redirect
        return query_of(redirect)

    def connect(self, user: str = "adele", org: str = ORG) -> ConnectResult:
        """The whole delegated connect as the CRM runs it: start for CRM user ``crm-{user}``, sign in,
        callback, then confirm the connect code for the same CRM user. Returns the callback's result
        (its ``mailbox_id`` is active once the result is ok)."""
        user_id = f"crm-{user}"
        url = start_connect(self.deps, org, user_id, self.upn(user), ORG_RETURN_URLS[org])
        result = complete_connect(self.deps, self.authorize(url, user))
        if result.ok and result.connect_code:
            confirm_connect(self.deps, org, user_id, result.connect_code)
        return result

    def consent(
        self, org: str = ORG, admin: str = "megan", accept: bool = True, tenant: str | None = None
    ) -> ConnectResult:
        """The whole admin consent as a browser runs it: the admin's sign-in, the callback that sends
        the admin on to the tenant's adminconsent page, the consent, and the final callback."""
        url = start_admin_consent(self.deps, org, tenant, ORG_RETURN_URLS[org])
        signed_in = self.finish_admin_step(self.client.authorize(url, self.upn(admin)))
        if not signed_in.continues:
            return signed_in
        assert signed_in.redirect_url is not None
        return self.finish_admin_step(self.client.admin_consent(signed_in.redirect_url, self.upn(admin), accept))

    def finish_admin_step(self, redirect: str) -> ConnectResult:
        assert redirect.startswith(self.deps.admin_consent_redirect_uri), redirect
        return complete_admin_consent(self.deps, query_of(redirect))

    def mailbox(self, mailbox_id: str, org: str = ORG) -> Mailbox:
        found = self.mailboxes.get(org, mailbox_id)
        assert found is not None
        return found.value

    def raw_cache(self, mailbox_id: str, org: str = ORG) -> dict[str, Any]:
        """The decrypted MSAL cache of a mailbox, as MSAL serialized it (to learn the issued tokens)."""
        stored = self.tokens.get(org, f"mailbox:{mailbox_id}")
        assert stored is not None
        cache = msal.SerializableTokenCache()
        cache.deserialize(stored.value)
        return {
            "access": [t["secret"] for t in cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)],
            "refresh": [t["secret"] for t in cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)],
            "id": [t["secret"] for t in cache.search(msal.TokenCache.CredentialType.ID_TOKEN)],
        }

    def stored_values(self) -> Iterator[str]:
        """Every property value of every entity of every table of this test's prefix."""
        for table in self.service.list_tables():
            if table.name.startswith(self.prefix):
                for entity in self.service.get_table_client(table.name).list_entities():
                    for value in entity.values():
                        yield str(value)


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


@pytest.fixture
def env(
    tenant: EmulatorTenant,
    emulator: EmulatorServer,
    storage_connection_string: str,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[ConnectEnv]:
    ca_bundle = str(emulator.ca_bundle_path)
    # Production trusts the emulator exactly this way (spec §6): requests reads it at request time.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_bundle)
    settings = Settings(
        graph_client_id=tenant.app.client_id,
        graph_client_secret=tenant.app.client_secret,
        authority_host=tenant.base_url,
        graph_base_url=tenant.graph_url,
        public_base_url=PUBLIC_BASE_URL,
        ca_bundle=ca_bundle,
        table_prefix=table_prefix,
    )
    service = TableServiceClient.from_connection_string(storage_connection_string)
    http = MsalHttpClient(make_session(ca_bundle))
    built = ConnectEnv(
        tenant=tenant,
        client=tenant.client,
        emulator=emulator,
        service=service,
        prefix=table_prefix,
        clock=MutableClock(datetime.now(UTC).replace(microsecond=0)),
        settings=settings,
        http=http,
    )
    try:
        yield built
    finally:
        http.close()
        for table in service.list_tables():
            if table.name.startswith(table_prefix):
                service.delete_table(table.name)

