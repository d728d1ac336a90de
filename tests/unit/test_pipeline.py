"""The pipeline's records lookup: one per page, asking only for what matching can use, and never changing a
decision (compared with deciding every message on a lookup of every participant and domain)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from sync_core.domain.decide import decide
from sync_core.domain.model import (
    Activity,
    BulkFilters,
    Direction,
    DirectionSetting,
    EmailAddress,
    Mailbox,
    MailMessage,
    OrgSettings,
    Record,
    RecordRef,
)
from sync_core.ports import RecordLookup
from sync_core.testing.stores import InMemoryActivityStore, InMemoryRecordsIndex
from sync_core.use_cases.pipeline import build_activities

ORG = "org-1"
CONNECTED = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OWNER = "alice@contoso.com"
MAILBOX = Mailbox(ORG, "mbx-1", OWNER, (OWNER, "Alice.Smith@Contoso.com"), CONNECTED)
INTERNAL = OrgSettings(internal_domains=("contoso.com", "contoso-labs.com"))


@dataclass
class RecordingIndex:
    """The in-memory records index, remembering what each ``lookup`` asked for."""

    index: InMemoryRecordsIndex = field(default_factory=InMemoryRecordsIndex)
    calls: list[tuple[list[str], list[str]]] = field(default_factory=list)

    def upsert(self, org_id: str, records: Sequence[Record]) -> None:
        self.index.upsert(org_id, records)

    def delete(self, org_id: str, record_ids: Sequence[str]) -> None:
        self.index.delete(org_id, record_ids)

    def get(self, org_id: str, record_id: str) -> Record | None:
        return self.index.get(org_id, record_id)

    def lookup(self, org_id: str, addresses: Iterable[str], domains: Iterable[str]) -> RecordLookup:
        wanted = (list(addresses), list(domains))
        self.calls.append(wanted)
        return self.index.lookup(org_id, *wanted)

    @property
    def addresses(self) -> set[str]:
        return {address for addresses, _ in self.calls for address in addresses}

    @property
    def domains(self) -> set[str]:
        return {domain for _, domains in self.calls for domain in domains}


def message(n: int, sender: str, *to: str, cc: Sequence[str] = (), **fields: object) -> MailMessage:
    base = MailMessage(
        source_id=f"s{n}",
        internet_message_id=f"<{n}@example.com>",
        subject="Hello",
        sender=EmailAddress(sender),
        to=tuple(EmailAddress(a) for a in to),
        cc=tuple(EmailAddress(a) for a in cc),
        received_at=CONNECTED + timedelta(hours=1),
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def run(
    messages: Sequence[MailMessage], settings: OrgSettings = INTERNAL, index: RecordingIndex | None = None
) -> tuple[RecordingIndex, list[Activity], Counter[str]]:
    index = index or RecordingIndex()
    reasons: Counter[str] = Counter()
    built = build_activities(
        messages, MAILBOX, settings, records=index, activities=InMemoryActivityStore(), reasons=reasons
    )
    return index, built, reasons


def test_the_owner_and_colleagues_are_not_looked_up_but_external_participants_are() -> None:
    index, _, _ = run([
        message(1, "bob@fabrikam.com", OWNER, "carol@contoso.com", cc=["dave@lab.contoso-labs.com"]),
        message(2, "alice.smith@contoso.com", "bob@fabrikam.com", "erin@northwind.com"),
    ])  # fmt: skip
    assert len(index.calls) == 1
    assert index.addresses == {"bob@fabrikam.com", "erin@northwind.com"}


def test_each_address_is_looked_up_once_per_page() -> None:
    index, _, _ = run([message(n, "bob@fabrikam.com", OWNER) for n in range(5)])
    assert index.calls == [(["bob@fabrikam.com"], [])]


def test_never_logged_and_blocked_participants_and_refused_messages_are_not_looked_up() -> None:
    settings = OrgSettings(internal_domains=("contoso.com",), never_log=("ceo@fabrikam.com", "hr.example"),
                           blocked_domains=("blocked.example",))  # fmt: skip
    index, _, reasons = run(
        [
            message(1, "bob@fabrikam.com", OWNER, "ceo@fabrikam.com", "jo@hr.example", "x@mail.blocked.example"),
            message(2, "news@shop.example", OWNER, headers=(("list-unsubscribe", "<mailto:u@shop.example>"),)),
            message(3, "draft@draft.example", OWNER, is_draft=True),
            message(4, "junk@spam.example", OWNER, folder="junkemail"),
            message(5, "old@past.example", OWNER, received_at=CONNECTED - timedelta(days=1)),
        ],
        settings,
    )
    assert index.addresses == {"bob@fabrikam.com"}
    assert sum(reasons.values()) == 5


def test_a_message_refused_for_its_direction_is_not_looked_up() -> None:
    index = RecordingIndex()
    reasons = Counter[str]()
    build_activities(
        [message(1, OWNER, "bob@fabrikam.com")],
        Mailbox(ORG, "mbx-1", OWNER, (OWNER,), CONNECTED, directions=DirectionSetting.RECEIVED),
        INTERNAL,
        records=index,
        activities=InMemoryActivityStore(),
        reasons=reasons,
    )
    assert index.calls == []
    assert reasons == Counter({"direction_excluded": 1})


def test_a_page_with_nothing_to_match_makes_no_lookup() -> None:
    index, built, reasons = run([message(1, "carol@contoso.com", OWNER), message(2, OWNER, OWNER)])
    assert index.calls == []
    assert built == []
    assert reasons == Counter({"internal": 1, "no_participants": 1})


def test_with_domain_matching_only_external_domains_that_are_not_free_mail_are_looked_up() -> None:
    settings = OrgSettings(internal_domains=("contoso.com",), match_by_domain=True)
    index, _, _ = run([message(1, "bob@fabrikam.com", OWNER, "carol@contoso.com", "eve@gmail.com")], settings)
    assert index.addresses == {"bob@fabrikam.com", "eve@gmail.com"}
    assert index.domains == {"fabrikam.com"}


def test_without_domain_matching_no_domain_is_looked_up() -> None:
    index, _, _ = run([message(1, "bob@fabrikam.com", OWNER)])
    assert index.calls == [(["bob@fabrikam.com"], [])]


def test_a_matched_message_still_becomes_an_activity_on_its_records() -> None:
    index = RecordingIndex()
    index.upsert(ORG, [Record("c-bob", "contact", emails=("bob@fabrikam.com",)),
                       Record("c-carol", "contact", emails=("carol@contoso.com",))])  # fmt: skip
    _, built, reasons = run([message(1, "bob@fabrikam.com", OWNER, "carol@contoso.com")], INTERNAL, index)
    assert [(a.records, a.direction) for a in built] == [((RecordRef("c-bob", "contact"),), Direction.RECEIVED)]
    assert reasons == Counter({"matched": 1})


# --- every decision is the one a lookup of every participant gives ---------------------------------------

POOL = [
    OWNER, "alice.smith@contoso.com", "carol@contoso.com", "dave@lab.contoso-labs.com",  # owner, colleagues
    "bob@fabrikam.com", "erin@northwind.com", "frank@northwind.com", "gina@tailspin.example",  # contacts
    "shared@fabrikam.com",  # on two records: ambiguous
    "unknown@fabrikam.com", "nobody@woodgrove.example", "x@sub.fabrikam.com",  # by domain only
    "eve@gmail.com", "pat@hotmail.co.uk",  # free mail
    "ceo@fabrikam.com", "jo@hr.example", "y@mail.blocked.example",  # never logged, blocked
    "noreply@fabrikam.com", "bounces+x=y@northwind.com",  # automated senders
]  # fmt: skip
UNRECORDED = {"unknown@fabrikam.com", "nobody@woodgrove.example", "x@sub.fabrikam.com", "pat@hotmail.co.uk"}
RECORDS = [
    # colleagues, never-logged and blocked people too; not the by-domain-only ones nor pat@hotmail.co.uk
    *(Record(f"c-{a.partition('@')[0]}", "contact", emails=(a,)) for a in POOL if a not in UNRECORDED),
    Record("l-shared", "lead", emails=("shared@fabrikam.com",)),
    Record("a-fabrikam", "account", domains=("fabrikam.com",)),
    Record("a-woodgrove", "account", domains=("woodgrove.example",)),
    Record("a-contoso", "account", domains=("contoso.com", "gmail.com")),
]
POLICIES = {
    "plain": INTERNAL,
    "domains and lists": OrgSettings(
        internal_domains=("contoso.com",), never_log=("ceo@fabrikam.com", "hr.example"),
        blocked_domains=("blocked.example",), match_by_domain=True, ambiguity="prefer", type_order=("lead",),
    ),
    "all, bulk filters off": OrgSettings(
        match_by_domain=True, ambiguity="all", bulk_filters=BulkFilters(False, False, False, False)
    ),
}  # fmt: skip


def mixed_mail(seed: int, count: int) -> list[MailMessage]:
    rng = random.Random(seed)
    folders = ["inbox"] * 6 + ["sentitems"] * 3 + ["archive", "drafts", "deleteditems", "junkemail", "outbox"]
    headers = [(), (), (), (("precedence", "bulk"),), (("list-id", "<l.example>"),), (("auto-submitted", "auto"),)]
    mail = []
    for n in range(count):
        people = rng.sample(POOL, rng.choice((1, 2, 2, 3, 4, 6)))
        sender = rng.choice([OWNER, "alice.smith@contoso.com", people[0]])
        mail.append(message(
            n, sender, *people[1:] or [OWNER], cc=rng.sample(POOL, rng.choice((0, 0, 1, 2))),
            folder=rng.choice(folders), headers=rng.choice(headers), is_draft=rng.random() < 0.02,
            received_at=CONNECTED + timedelta(minutes=rng.randrange(-120, 600)),
        ))  # fmt: skip
    return mail


@pytest.mark.parametrize("policy", POLICIES)
def test_every_decision_is_the_one_a_lookup_of_every_participant_gives(policy: str) -> None:
    settings = POLICIES[policy]
    records = InMemoryRecordsIndex()
    records.upsert(ORG, RECORDS)
    mail = mixed_mail(seed=len(policy), count=400)
    everyone = {p.address for m in mail for p in m.participants}
    full = records.lookup(ORG, everyone, {a.rpartition("@")[2] for a in everyone})
    expected = [decide(m, MAILBOX, settings, full) for m in mail]

    index = RecordingIndex(records)
    built: list[Activity] = []
    reasons: Counter[str] = Counter()
    for start in range(0, len(mail), 3):  # small pages: one message's keys are not fetched for another
        _, page_built, page_reasons = run(mail[start : start + 3], settings, index)
        built += page_built
        reasons += page_reasons

    assert reasons == Counter(d.reason.value for d in expected)
    stored = [(m.internet_message_id, d.records, d.direction) for m, d in zip(mail, expected, strict=True) if d.store]
    assert [(a.internet_message_id, a.records, a.direction) for a in built] == stored
    assert len(stored) > 20 and len(set(reasons)) >= 9  # the corpus exercises matching and refusals
    assert len(index.addresses) < len(everyone)
