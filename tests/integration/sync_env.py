"""The sync run wired as in production, against the real things: Graph over HTTPS (the emulator, app-only
tokens after an admin consent), every Table store on Azurite, and the system clock.

Test modules import the ``sync_env`` fixture explicitly (no ``pytest_plugins`` outside the root conftest):

    from tests.integration.sync_env import SyncEnv, sync_env  # noqa: F401

What the fixture gives (see :class:`SyncEnv`):
- two mailboxes of org ``ORG`` in application mode, ``mb-adele`` and ``mb-megan`` (the tenant's users),
  with a watermark six hours ago;
- CRM records (``RECORDS``) in the ``TableRecordsIndex`` and org settings (internal domain = the tenant's
  domain, ``NEVER_LOG``);
- ``sync(...)``: one run of ``sync_mailbox`` on fresh per-run deps, like ``bootstrap.Services.sync``;
- helpers to deliver mail through the emulator's control API, to list what a mailbox holds (through Graph,
  as a test oracle independent of the sync code), and to read back every stored activity or every stored
  property value of the test's tables.

The same fixture serves the IMAP provider: parametrize it indirectly
(``@pytest.mark.parametrize("sync_env", PROVIDERS, indirect=True)``) and with ``"imap"`` the two mailboxes
are users of the real Dovecot (``imap_world.ImapWorld``), synced by ``ImapMailSource``; ``deliver``,
``deliver_many``, ``send``, ``listing``, ``requests_seen`` and ``expire_delta_state`` work for both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.server import EmulatorServer
from sync_core.adapters.clock import SystemClock
from sync_core.adapters.graph.http import GraphHttp
from sync_core.adapters.graph.mail import MAX_PAGE_SIZE, GraphMailSource
from sync_core.adapters.graph.session import make_session
from sync_core.adapters.imap.mail import ImapMailSource
from sync_core.adapters.table_codec import activity_from_entity
from sync_core.adapters.tables import TableStores
from sync_core.domain.model import Activity, ConnectionMode, Mailbox, OrgSettings, Record
from sync_core.ports import ActivityStore, MailSource
from sync_core.use_cases.sync_mailbox import SyncDeps, SyncOutcome, sync_mailbox
from tests.integration.imap_world import ImapWorld

ORG = "org-1"
ADELE, MEGAN = "mb-adele", "mb-megan"

# External people and the CRM records they are on (addresses are normalised: lower case).
CAROL = "carol@client.example"  # contact
DAN = "dan@talent.example"  # candidate
ERIN = "erin@prospect.example"  # lead
FRANK = "frank@client.example"  # contact
LAWYER = "counsel@legal.example"  # a contact, but on the org's never-log list
SHARED = "info@dup.example"  # on two records: ambiguous
STRANGER = "stranger@nowhere.example"  # on no record

RECORDS = (
    Record("c-carol", "contact", "Carol", emails=(CAROL,)),
    Record("c-dan", "candidate", "Dan", emails=(DAN,)),
    Record("c-erin", "lead", "Erin", emails=(ERIN,)),
    Record("c-frank", "contact", "Frank", emails=(FRANK,)),
    Record("c-lawyer", "contact", "Counsel", emails=(LAWYER,)),
    Record("c-dup-1", "contact", "Dup One", emails=(SHARED,)),
    Record("c-dup-2", "lead", "Dup Two", emails=(SHARED,)),
)
NEVER_LOG = (LAWYER,)
PROVIDERS = ("microsoft", "imap")


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


@dataclass
class SyncEnv:
    tenant: EmulatorTenant | None
    client: EmulatorClient | None
    service: TableServiceClient
    prefix: str
    ca_bundle: str
    watermark: datetime
    clock: SystemClock = field(default_factory=SystemClock)
    _token: str | None = None
    imap: ImapWorld | None = None

    def __post_init__(self) -> None:
        self.session = make_session(self.ca_bundle)
        self.stores = TableStores.create(self.service, self.prefix)
        if self.tenant is not None:
            self.tenant.consent_as_admin()
        self.stores.settings.put(ORG, OrgSettings(internal_domains=(self.domain,), never_log=NEVER_LOG))
        self.stores.records.upsert(ORG, list(RECORDS))
        self.mailboxes = {ADELE: self._mailbox(ADELE, "adele"), MEGAN: self._mailbox(MEGAN, "megan")}
        for box in self.mailboxes.values():
            self.stores.mailboxes.add(box)

    @property
    def provider(self) -> str:
        return "imap" if self.imap is not None else "microsoft"

    @property
    def domain(self) -> str:
        """The org's own domain (its internal domain): the tenant's, or the IMAP users'."""
        if self.imap is not None:
            return self.imap.domain
        assert self.tenant is not None
        return self.tenant.domain

    # -- wiring -----------------------------------------------------------------------------------

    def _mailbox(self, mailbox_id: str, user: str) -> Mailbox:
        if self.imap is not None:
            address = self.imap.address(user)
            aliases = (address, f"adele.vance@{self.domain}") if user == "adele" else (address,)
            return Mailbox(ORG, mailbox_id, address, aliases, watermark=self.watermark, provider="imap")
        assert self.tenant is not None
        found = self.tenant.users[user]
        address = found.mail.lower()
        aliases = (address, f"adele.vance@{self.tenant.domain}") if user == "adele" else (address,)
        return Mailbox(
            ORG,
            mailbox_id,
            address,
            aliases,
            watermark=self.watermark,
            mode=ConnectionMode.APPLICATION,
            tenant_id=self.tenant.id,
            graph_user_id=found.id,
        )

    def token_source(self, refresh: bool = False) -> str:
        """Client-credentials token of the tenant's app (cached; a forced refresh gets a new one)."""
        assert self.tenant is not None
        if self._token is None or refresh:
            self._token = self.tenant.app_token()
        return self._token

    def graph_for(self, _mailbox: Mailbox) -> GraphHttp:
        assert self.tenant is not None
        return GraphHttp(self.session, self.tenant.graph_url, self.token_source)

    def deps(
        self,
        *,
        page_size: int = MAX_PAGE_SIZE,
        activities: ActivityStore | None = None,
        stores: TableStores | None = None,
    ) -> SyncDeps:
        """Fresh per run, like ``bootstrap.Services.sync_deps`` (the mail source counts per-run requests)."""
        s = stores or self.stores
        return SyncDeps(
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=activities or s.activities,
            cursors=s.cursors,
            leases=s.leases,
            reports=s.runs,
            mail=self.mail_source(page_size),
            clock=self.clock,
            table_transactions=lambda: s.metrics.transactions,
            state=s.sync_state,
        )

    def mail_source(self, page_size: int = MAX_PAGE_SIZE) -> MailSource:
        """The provider's mail source, built as per run in production."""
        if self.imap is not None:
            return ImapMailSource(self.imap.account_for, self.imap.limits(), page_size=page_size)
        return GraphMailSource(self.graph_for, page_size=page_size)

    def sync(
        self,
        mailbox_id: str = ADELE,
        *,
        page_size: int = MAX_PAGE_SIZE,
        activities: ActivityStore | None = None,
        stores: TableStores | None = None,
        budget: timedelta = timedelta(minutes=4),
    ) -> SyncOutcome:
        deps = self.deps(page_size=page_size, activities=activities, stores=stores)
        return sync_mailbox(deps, ORG, mailbox_id, budget)

    def other_stores(self, suffix: str) -> TableStores:
        """A second, empty set of the product's tables (still under this test's prefix), with the same
        org settings, records and mailboxes: for comparing against a clean run."""
        stores = TableStores.create(self.service, self.prefix + suffix)
        stores.settings.put(ORG, self.stores.settings.get(ORG))
        stores.records.upsert(ORG, list(RECORDS))
        for box in self.mailboxes.values():
            stores.mailboxes.add(box)
        return stores

    # -- people and mail --------------------------------------------------------------------------

    def user_id(self, user: str) -> str:
        assert self.tenant is not None
        return self.tenant.users[user].id

    def address(self, user: str) -> str:
        if self.imap is not None:
            return self.imap.address(user)
        assert self.tenant is not None
        return self.tenant.users[user].mail.lower()

    def deliver(self, user: str, **fields: Any) -> dict[str, Any]:
        """One message into ``user``'s mailbox (``folder`` default inbox); returns its ids."""
        if self.imap is not None:
            return self.imap.deliver(user, **fields)
        assert self.client is not None
        return self.client.deliver(self.user_id(user), **fields)

    def deliver_many(
        self, user: str, count: int, *, start: datetime, interval_seconds: float = 1, **fields: Any
    ) -> None:
        """``count`` messages from one template (subjects get `` #n``), received going back from ``start``."""
        if self.imap is not None:
            self.imap.deliver_many(user, count, start=start, interval_seconds=interval_seconds, **fields)
            return
        assert self.client is not None
        self.client.deliver_many(
            self.user_id(user), count, interval_seconds=interval_seconds, start=iso(start), **fields
        )

    def send(self, user: str, **fields: Any) -> dict[str, Any]:
        """Sent by ``user``: a copy in their Sent folder and one in each recipient mailbox of the org's
        provider; ``["sent"]["internetMessageId"]`` is its Message-ID."""
        if self.imap is not None:
            return self.imap.send(user, **fields)
        assert self.client is not None
        return self.client.send(self.user_id(user), **fields)

    def listing(self, user: str, folder: str) -> list[dict[str, Any]]:
        """``subject`` and ``internetMessageId`` of what the folder holds, read directly from the provider."""
        if self.imap is not None:
            return self.imap.listing(user, folder)
        return self.graph_messages(user, folder)

    def expire_delta_state(self, user: str) -> None:
        """The provider forgets the mailbox's sync state: Graph's delta tokens answer 410; an IMAP
        server gives the folders a new UIDVALIDITY."""
        if self.imap is not None:
            self.imap.expire_delta_state(user)
            return
        assert self.client is not None
        self.client.expire_delta_tokens(self.user_id(user))

    def graph_messages(self, user: str, folder: str) -> list[dict[str, Any]]:
        """What the folder holds, read through Graph directly (the test's oracle, not the sync code)."""
        select = "id,internetMessageId,subject,receivedDateTime"
        assert self.tenant is not None
        url: str | None = (
            f"{self.tenant.graph_url}/users/{quote(self.user_id(user))}/mailFolders('{folder}')/messages"
            f"?$select={select}&$top=1000"
        )
        found: list[dict[str, Any]] = []
        while url:
            response = self.session.get(
                url,
                headers={"Authorization": f"Bearer {self.token_source()}", "Prefer": 'IdType="ImmutableId"'},
                timeout=30,
            )
            response.raise_for_status()
            payload = response.json()
            found += payload["value"]
            url = payload.get("@odata.nextLink")
        return found

    def requests_seen(self, user: str) -> dict[str, Any]:
        """The emulator's count of Graph calls that targeted the mailbox (``$batch`` sub-requests each);
        for IMAP, the commands Dovecot's trace of the user saw."""
        if self.imap is not None:
            return self.imap.requests(user)
        assert self.client is not None
        return self.client.mailbox_stats(self.user_id(user))

    # -- what was stored --------------------------------------------------------------------------

    def activities(self, suffix: str = "") -> dict[str, Activity]:
        """Every stored activity by internet message id, read straight from the activities table (of
        ``other_stores(suffix)`` when a suffix is given)."""
        table = self.service.get_table_client(f"{self.prefix}{suffix}activities")
        found: dict[str, Activity] = {}
        try:
            for entity in table.list_entities():
                if str(entity["RowKey"]).startswith("a|"):
                    activity = activity_from_entity(entity)
                    assert activity.internet_message_id not in found, "two activities of one message"
                    found[activity.internet_message_id] = activity
        except ResourceNotFoundError:
            return {}
        return found

    def table_names(self) -> list[str]:
        return [t.name for t in self.service.list_tables() if t.name.startswith(self.prefix)]

    def stored_values(self) -> Iterator[tuple[str, str]]:
        """(table, text) for every key and property value of every entity of every table of this test."""
        for name in self.table_names():
            for entity in self.service.get_table_client(name).list_entities():
                for key, value in entity.items():
                    yield name, f"{key}={value}"
                yield name, str(entity.metadata)


def record_ids(activity: Activity) -> frozenset[str]:
    return frozenset(ref.record_id for ref in activity.records)


def unique(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


@pytest.fixture
def sync_env(
    request: pytest.FixtureRequest,
    storage_connection_string: str,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SyncEnv]:
    """Graph (the emulator) by default; ``imap`` (indirect parametrization) for Dovecot mailboxes."""
    provider = getattr(request, "param", "microsoft")
    yield from _environment(provider, request, storage_connection_string, table_prefix, monkeypatch)


@pytest.fixture
def imap_env(
    request: pytest.FixtureRequest,
    storage_connection_string: str,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SyncEnv]:
    """The same env with IMAP mailboxes on the real Dovecot (``imap_world.ImapWorld``)."""
    yield from _environment("imap", request, storage_connection_string, table_prefix, monkeypatch)


def _environment(
    provider: str,
    request: pytest.FixtureRequest,
    storage_connection_string: str,
    table_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SyncEnv]:
    service = TableServiceClient.from_connection_string(storage_connection_string)
    watermark = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    if provider == "imap":
        world = ImapWorld(request.getfixturevalue("mail_server"))
        built = SyncEnv(None, None, service, table_prefix, str(world.server.ca_pem), watermark, imap=world)
    else:
        tenant: EmulatorTenant = request.getfixturevalue("tenant")
        emulator: EmulatorServer = request.getfixturevalue("emulator")
        ca_bundle = str(emulator.ca_bundle_path)
        # Production trusts the emulator exactly this way (spec §6): requests reads it at request time and it
        # takes precedence over Session.verify.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_bundle)
        built = SyncEnv(tenant, tenant.client, service, table_prefix, ca_bundle, watermark)
    try:
        yield built
    finally:
        if built.imap is not None:
            built.imap.close()
        built.session.close()
        for name in built.table_names():
            service.delete_table(name)


__all__ = [
    "ADELE",
    "CAROL",
    "DAN",
    "ERIN",
    "FRANK",
    "LAWYER",
    "MEGAN",
    "NEVER_LOG",
    "ORG",
    "PROVIDERS",
    "RECORDS",
    "SHARED",
    "STRANGER",
    "SyncEnv",
    "imap_env",
    "iso",
    "record_ids",
    "sync_env",
    "unique",
]
