"""Each mailbox is synced through its own provider's adapter (sync_core/adapters/providers.py): the one
mechanism that lets Microsoft, IMAP and Google mailboxes live side by side behind the same ports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sync_core.adapters.providers import MailSourceByProvider, ProviderTable
from sync_core.domain.model import EmailAddress, Mailbox, MailboxStatus, MailMessage, Record
from sync_core.errors import UnknownProvider
from sync_core.ports import MailSource, RequestUsage
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, FixedClock
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases.sync_mailbox import sync_mailbox

ORG = "acme"
CONNECTED = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def mailbox(mailbox_id: str, provider: str) -> Mailbox:
    address = f"{mailbox_id}@acme.example"
    return Mailbox(ORG, mailbox_id, address, (address,), watermark=CONNECTED, provider=provider)


def mail_from(sender: str, to: str, mid: str) -> MailMessage:
    return MailMessage(
        source_id=mid,
        internet_message_id=mid,
        subject="hello",
        sender=EmailAddress(sender),
        to=(EmailAddress(to),),
        cc=(),
        received_at=CONNECTED + timedelta(minutes=5),
        body_text="body",
    )


class Fleet:
    """One app whose mailboxes live at two providers, each with its own scripted source."""

    def __init__(self) -> None:
        self.stores = InMemoryStores()
        self.sources = {"microsoft": FakeMailSource(), "imap": FakeMailSource()}
        self.built: list[str] = []
        factories = {name: self._factory(name) for name in self.sources}
        self.router = MailSourceByProvider(factories)
        self.app = InMemoryApp(self.stores, self.sources["microsoft"], FixedClock())
        self.stores.records.upsert(ORG, [Record("c1", "contact", emails=("bob@fabrikam.example",))])

    def _factory(self, name: str) -> object:
        def build() -> MailSource:
            self.built.append(name)
            return self.sources[name]

        return build

    def sync(self, box: Mailbox) -> None:
        sync_mailbox(self.app.sync_deps(mail=self.router), ORG, box.mailbox_id)


def test_a_mailbox_reads_only_its_own_providers_mail() -> None:
    fleet = Fleet()
    ms, imap = mailbox("ms", "microsoft"), mailbox("im", "imap")
    for box in (ms, imap):
        fleet.stores.mailboxes.add(box)
    fleet.sources["microsoft"].deliver(mail_from("bob@fabrikam.example", ms.address, "<from-ms@x>"))
    fleet.sources["imap"].deliver(mail_from("bob@fabrikam.example", imap.address, "<from-imap@x>"))

    fleet.sync(imap)

    stored = fleet.stores.activities.timeline(ORG, "c1", None, 10).items
    assert [a.internet_message_id for a in stored] == ["<from-imap@x>"]
    assert fleet.built == ["imap"]  # the Microsoft adapter was never even built


def test_an_adapter_is_built_once_and_reused_for_every_later_mailbox_of_its_provider() -> None:
    built: list[str] = []

    def factory() -> str:
        built.append("x")
        return f"adapter-{len(built)}"

    table = ProviderTable("mail source", {"imap": factory})
    first = table.for_mailbox(mailbox("a", "imap"))
    second = table.for_mailbox(mailbox("b", "imap"))
    assert first == second == "adapter-1"
    assert table.built() == ("adapter-1",)


def test_a_provider_nobody_registered_puts_the_mailbox_in_error_with_the_reason() -> None:
    fleet = Fleet()
    box = mailbox("gm", "google")
    fleet.stores.mailboxes.add(box)

    fleet.sync(box)

    stored = fleet.stores.mailboxes.get(ORG, "gm")
    assert stored is not None
    assert stored.value.status is MailboxStatus.ERROR
    assert "'google'" in stored.value.status_reason and "(known: imap, microsoft)" in stored.value.status_reason
    assert fleet.built == []


def test_an_unknown_provider_is_a_configuration_failure_never_a_fallback() -> None:
    table = ProviderTable("mail source", {"microsoft": lambda: "graph"})
    try:
        table.for_provider("imap")
    except UnknownProvider as exc:
        assert exc.code == "unknown_provider"
    else:  # pragma: no cover - the assertion below reports it
        raise AssertionError("an unregistered provider was served")


def test_the_router_reports_the_throttling_of_the_mailboxs_own_provider() -> None:
    fleet = Fleet()
    ms, imap = mailbox("ms", "microsoft"), mailbox("im", "imap")
    fleet.sources["imap"].throttle(imap, 2, 3.5)
    fleet.sources["microsoft"].throttle(ms, 7, 9.0)

    assert fleet.router.usage_for(imap) == RequestUsage(requests=0, throttled=2, waited_seconds=3.5)
    assert fleet.router.usage_for(mailbox("x", "google")) == RequestUsage()  # nobody registered it
