"""Wiring for the reliability tests: the real sync engine over the HTTPS emulator and Azurite, with hooks
to inject faults at exact points, a mail ledger that knows what must end up stored, and one convergence
check every fault test ends with.

Nothing here replaces a product part. What the tests may change is limited to:
- ``GraphHttp`` options the product exposes (timeouts, wait budget, the injectable ``sleep``);
- thin wrappers around our own ports (``MailSource``, ``CursorStore``, ``ActivityStore``, ``LeaseStore``)
  that call the real adapter and run a test action at a chosen point (after page n, before a checkpoint);
- the clock of a re-run (to stand for "after the lease of a dead worker expired").
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sync_core.adapters.clock import SystemClock
from sync_core.adapters.graph.directory import GraphDirectory
from sync_core.adapters.graph.http import GraphHttp
from sync_core.adapters.graph.identity import MsalIdentity
from sync_core.adapters.graph.mail import GraphMailSource
from sync_core.adapters.graph.session import MsalHttpClient, make_session
from sync_core.adapters.tables import TableStores
from sync_core.api.mailboxes import mailbox_to_json
from sync_core.auth.crypto import TokenCipher
from sync_core.auth.token_cache_store import TableAuthFlowStore, TableOrgTenantStore, TableTokenCacheStore
from sync_core.domain.model import Activity, AttachmentSummary, Mailbox, MailboxStatus, MailMessage
from sync_core.ports import ActivityStore, Clock, CursorStore, DeltaPage, LeaseStore, MailSource, SyncStateStore
from sync_core.settings import Settings
from sync_core.use_cases.connect import ConnectDeps, ConnectResult, complete_connect, confirm_connect, start_connect
from sync_core.use_cases.sync_mailbox import SyncDeps, SyncOutcome, sync_mailbox
from tests.integration.sync_env import ADELE, CAROL, DAN, ERIN, ORG, STRANGER, SyncEnv

# The redirect URI every emulator tenant's app registration allows (see emulator.client.REDIRECT_URI).
PUBLIC_BASE_URL = "http://127.0.0.1:7071"
RETURN_URL = "https://crm.example.com/settings/mailboxes"
RECORD_OF = {CAROL: "c-carol", DAN: "c-dan", ERIN: "c-erin"}


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# -- waiting --------------------------------------------------------------------------------------------


class Waits:
    """``GraphHttp``'s injectable sleep: records every wait; sleeps for real only when ``real``."""

    def __init__(self, real: bool = False) -> None:
        self.real = real
        self.seconds: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.seconds.append(seconds)
        if self.real:
            time.sleep(seconds)


@dataclass
class GraphOptions:
    """How the run's ``GraphHttp`` is built (the product's defaults unless a test says otherwise)."""

    timeout: tuple[float, float] = (5.0, 30.0)
    max_total_wait: float = 120.0
    max_attempts: int = 8
    waits: Waits = field(default_factory=Waits)


# -- wrappers around our own ports ----------------------------------------------------------------------


class HookedMail:
    """The real ``MailSource``; ``after_page(n, page)`` runs after the n-th delta page (1-based, across
    folders) came back from Graph and before the engine stores it."""

    def __init__(self, inner: MailSource, after_page: Callable[[int, DeltaPage], None]) -> None:
        self.inner = inner
        self.after_page = after_page
        self.pages = 0

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        page = self.inner.delta(mailbox, folder, link, since)
        self.pages += 1
        self.after_page(self.pages, page)
        return page

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        return self.inner.delta_many(mailbox, links)

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        return self.inner.attachments(mailbox, source_ids)

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> Sequence[MailMessage]:
        return self.inner.complete(mailbox, messages)

    def find_message(self, mailbox: Mailbox, internet_message_id: str) -> MailMessage | None:
        return self.inner.find_message(mailbox, internet_message_id)

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        return self.inner.folders(mailbox)

    @property
    def requests_made(self) -> int:
        return self.inner.requests_made

    def requests_for(self, mailbox: Mailbox) -> int:
        return self.inner.requests_for(mailbox)


def at_page(n: int, action: Callable[[], None]) -> Callable[[int, DeltaPage], None]:
    """An ``after_page`` hook running ``action`` once, after page ``n``."""

    def hook(page_number: int, _page: DeltaPage) -> None:
        if page_number == n:
            action()

    return hook


class OffsetClock:
    """The system clock moved by ``offset``: a re-run "later", once a dead worker's lease expired."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


# -- the mail a test delivered ------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    user: str
    subject: str
    internet_message_id: str
    received: datetime
    expect: str  # "matched", "unmatched" or "old"
    record: str = ""


class Ledger:
    """Every message a test delivered and what must become of it. Subjects carry a per-test token so a
    scan of the tables can tell this test's unmatched mail apart."""

    def __init__(self, env: RelEnv, *, earliest: datetime | None = None) -> None:
        self.env = env
        self.token = uuid.uuid4().hex[:10]
        self.items: list[Delivered] = []
        self.earliest = earliest
        self._n = 0

    def _received(self) -> datetime:
        """Distinct receive times: going back from now (app mode), or forward from ``earliest``."""
        self._n += 1
        if self.earliest is not None:
            return self.earliest + timedelta(seconds=self._n)
        return now() - timedelta(seconds=5 * self._n)

    def _deliver(
        self, user: str, subject: str, expect: str, record: str, received: datetime, **fields: Any
    ) -> Delivered:
        fields.setdefault("body", f"Body of {subject}")
        ids = self.env.deliver(user, subject=subject, received=iso(received), **fields)
        return self.add(user, subject, ids["internetMessageId"], received, expect, record)

    def add(  # noqa: PLR0917 - one argument per field of Delivered
        self, user: str, subject: str, internet_message_id: str, received: datetime, expect: str, record: str = ""
    ) -> Delivered:
        """Record a message the test delivered by other means (raw MIME, odd fields)."""
        item = Delivered(user, subject, internet_message_id, received, expect, record)
        self.items.append(item)
        return item

    def matched(self, user: str = "adele", sender: str = CAROL, **fields: Any) -> Delivered:
        subject = f"Matched {self.token} {len(self.items)}"
        return self._deliver(user, subject, "matched", RECORD_OF[sender], self._received(), from_=sender,
                             to=[self.env.address(user)], **fields)

    def sent(self, user: str = "adele", to: str = DAN) -> Delivered:
        subject = f"Sent {self.token} {len(self.items)}"
        return self._deliver(user, subject, "matched", RECORD_OF[to], self._received(), from_=self.env.address(user),
                             to=[to], folder="sentitems")

    def unmatched(self, user: str = "adele") -> Delivered:
        subject = f"Unmatched {self.token} {len(self.items)}"
        return self._deliver(user, subject, "unmatched", "", self._received(), from_=STRANGER,
                             to=[self.env.address(user)])

    def old(self, user: str = "adele", watermark: datetime | None = None) -> Delivered:
        """Matched by its sender, but received before the mailbox's watermark: must never be stored."""
        subject = f"Old {self.token} {len(self.items)}"
        before = (watermark or self.env.watermark) - timedelta(hours=1, seconds=len(self.items))
        return self._deliver(user, subject, "old", "c-carol", before, from_=CAROL, to=[self.env.address(user)])

    def standard(self, user: str = "adele", *, matched: int = 12, unmatched: int = 5, sent: int = 4,
                 old: int = 2, watermark: datetime | None = None) -> Ledger:
        """A mix that spreads over several pages of each folder at small page sizes."""
        senders = (CAROL, DAN, ERIN)
        for k in range(max(matched, unmatched)):
            if k < matched:
                self.matched(user, senders[k % 3])
            if k < unmatched:
                self.unmatched(user)
        for _ in range(sent):
            self.sent(user)
        for _ in range(old):
            self.old(user, watermark)
        return self

    def expected(self, expect: str) -> set[str]:
        return {d.internet_message_id for d in self.items if d.expect == expect}

    def by_record(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for d in self.items:
            if d.expect == "matched":
                found.setdefault(d.record, set()).add(d.internet_message_id)
        return found


# -- the environment ----------------------------------------------------------------------------------


@dataclass
class RelEnv(SyncEnv):
    """``SyncEnv`` (application-mode mailboxes ``mb-adele``/``mb-megan`` of org ``org-1``, CRM records,
    org settings) plus fault hooks, delegated connect through the product's connect use case, and the
    convergence check."""

    key_setting: str = field(default_factory=lambda: "r1:" + base64.b64encode(os.urandom(32)).decode())

    # -- running the engine -----------------------------------------------------------------------------

    def graph(self, options: GraphOptions, token_source: Callable[[Mailbox], Callable[[bool], str]] | None = None
              ) -> Callable[[Mailbox], GraphHttp]:
        def build(mailbox: Mailbox) -> GraphHttp:
            source = token_source(mailbox) if token_source else self.token_source
            return GraphHttp(
                self.session, self.tenant.graph_url, source, timeout=options.timeout,
                max_total_wait=options.max_total_wait, max_attempts=options.max_attempts, sleep=options.waits,
            )

        return build

    def run(
        self,
        mailbox_id: str = ADELE,
        *,
        page_size: int = 4,
        graph: GraphOptions | None = None,
        after_page: Callable[[int, DeltaPage], None] | None = None,
        activities: ActivityStore | None = None,
        cursors: CursorStore | None = None,
        leases: LeaseStore | None = None,
        state: SyncStateStore | None = None,
        clock: Clock | None = None,
        stores: TableStores | None = None,
        budget: timedelta = timedelta(minutes=4),
        delegated: bool = False,
    ) -> SyncOutcome:
        """One ``sync_mailbox`` run on fresh per-run deps, as ``bootstrap.Services.sync`` builds them. A run
        given its own ``cursors`` or ``leases`` (a wrapper watching them) has no ``SyncStateStore`` (every write
        then goes through them), unless ``state`` is given too."""
        s = stores or self.stores
        options = graph or GraphOptions()
        tokens = self.identity.token_source if delegated else None
        mail: MailSource = GraphMailSource(self.graph(options, tokens), page_size=page_size)
        if after_page is not None:
            mail = HookedMail(mail, after_page)
        deps = SyncDeps(
            mailboxes=s.mailboxes,
            settings=s.settings,
            records=s.records,
            activities=activities or s.activities,
            cursors=cursors or s.cursors,
            leases=leases or s.leases,
            reports=s.runs,
            mail=mail,
            clock=clock or self.clock,
            table_transactions=lambda: s.metrics.transactions,
            state=state if state is not None else (None if cursors or leases else s.sync_state),
        )
        return sync_mailbox(deps, ORG, mailbox_id, budget)

    # -- delegated mailboxes ------------------------------------------------------------------------------

    @property
    def identity(self) -> MsalIdentity:
        if not hasattr(self, "_identity"):
            cipher = TokenCipher.from_setting(self.key_setting)
            metrics = self.stores.metrics
            settings = Settings(
                graph_client_id=self.tenant.app.client_id,
                graph_client_secret=self.tenant.app.client_secret,
                authority_host=self.tenant.base_url,
                graph_base_url=self.tenant.graph_url,
                public_base_url=PUBLIC_BASE_URL,
                token_encryption_key=self.key_setting,
                ca_bundle=self.ca_bundle,
                table_prefix=self.prefix,
            )
            self.tokens = TableTokenCacheStore(self.service, cipher, self.prefix, metrics)
            self._msal_http = MsalHttpClient(make_session(self.ca_bundle))
            self._identity = MsalIdentity(settings, self.tokens, self._msal_http)
            self.connect_deps = ConnectDeps(
                identity=self._identity,
                flows=TableAuthFlowStore(self.service, cipher, self.prefix, metrics),
                tokens=self.tokens,
                tenants=TableOrgTenantStore(self.service, self.prefix, metrics),
                mailboxes=self.stores.mailboxes,
                settings=self.stores.settings,
                cursors=self.stores.cursors,
                activities=self.stores.activities,
                leases=self.stores.leases,
                clock=SystemClock(),
                directory_for=lambda source: GraphDirectory(GraphHttp(self.session, self.tenant.graph_url, source)),
                public_base_url=PUBLIC_BASE_URL,
            )
        return self._identity

    def allow_return_url(self) -> str:
        """Put ``RETURN_URL`` on the org's allow-list (a delegated connect needs one); returns it."""
        settings = self.stores.settings.get(ORG)
        if RETURN_URL not in settings.return_url_allow_list:
            allowed = (*settings.return_url_allow_list, RETURN_URL)
            self.stores.settings.put(ORG, replace(settings, return_url_allow_list=allowed))
        return RETURN_URL

    def connect(self, user: str = "adele") -> ConnectResult:
        """The delegated sign-in through the product's connect use case, the emulator standing in for
        the browser and the sign-in page, then the CRM's confirmation of its connect code."""
        _ = self.identity
        upn = self.tenant.users[user].upn
        url = start_connect(self.connect_deps, ORG, f"crm-{user}", upn, self.allow_return_url())
        redirect = self.client.authorize(url, upn)
        result = complete_connect(self.connect_deps, dict(parse_qsl(urlsplit(redirect).query)))
        assert result.ok, result
        confirm_connect(self.connect_deps, ORG, f"crm-{user}", result.connect_code)
        return result

    def close(self) -> None:
        if hasattr(self, "_msal_http"):
            self._msal_http.close()
        self.session.close()

    # -- reading back --------------------------------------------------------------------------------------

    def mailbox(self, mailbox_id: str = ADELE) -> Mailbox:
        found = self.stores.mailboxes.get(ORG, mailbox_id)
        assert found is not None
        return found.value

    def crm_view(self, mailbox_id: str = ADELE) -> dict[str, Any]:
        """The mailbox as the CRM reads it (``GET /mailboxes/{id}``'s JSON, from the same function)."""
        reports = self.stores.runs.recent(ORG, mailbox_id, 50)
        return mailbox_to_json(self.mailbox(mailbox_id), reports, self.stores.settings.get(ORG))

    def timeline_ids(self, record_id: str) -> list[str]:
        ids: list[str] = []
        cursor: str | None = None
        while True:
            page = self.stores.activities.timeline(ORG, record_id, cursor, 50)
            ids += [a.internet_message_id for a in page.items]
            cursor = page.cursor
            if cursor is None:
                return ids

    def texts(self) -> Iterator[str]:
        for _table, text in self.stored_values():
            yield text


def assert_converged(env: RelEnv, ledger: Ledger, mailbox_id: str = ADELE) -> dict[str, Activity]:
    """The end state every fault test must reach: every matched message exactly once (one activity, once in
    each of its record's timeline), nothing of unmatched mail anywhere, nothing older than the watermark,
    and a mailbox whose status says it is healthy, with a last run that succeeded."""
    stored = env.activities()  # raises on two activities of one message
    matched, unmatched, old = ledger.expected("matched"), ledger.expected("unmatched"), ledger.expected("old")
    assert set(stored) == matched, {"missing": matched - set(stored), "extra": set(stored) - matched}
    for record_id, ids in ledger.by_record().items():
        listed = env.timeline_ids(record_id)
        assert sorted(listed) == sorted(ids), (record_id, listed)
    mailbox = env.mailbox(mailbox_id)
    assert all(a.received_at >= mailbox.watermark for a in stored.values())
    assert not (unmatched | old) & set(stored)
    hidden = [d.subject for d in ledger.items if d.expect != "matched"]
    leaks = [(text[:120], s) for text in env.texts() for s in hidden if s in text]
    assert leaks == [], leaks
    assert (mailbox.status, mailbox.status_reason) == (MailboxStatus.ACTIVE, "")
    view = env.crm_view(mailbox_id)
    assert view["status"] == "active" and view["status_reason"] == ""
    assert view["last_success_at"] is not None and view["last_success_at"] == view["last_sync_at"]
    return stored
