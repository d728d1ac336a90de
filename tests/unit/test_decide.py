"""The decision pipeline: every reason code, the order of the checks, and what *explain* shows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sync_core.domain.decide import EXCLUDED_FOLDERS, DecisionContext, decide, is_automated_sender
from sync_core.domain.model import (
    BulkFilters,
    Decision,
    Direction,
    DirectionSetting,
    EmailAddress,
    Mailbox,
    MailMessage,
    OrgSettings,
    Reason,
    RecordMatch,
    RecordRef,
)

CONNECTED = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
OWNER = "alice@contoso.com"


class DictRecordLookup:
    """A ``RecordLookup`` over two dicts: normalised address → records and domain → records."""

    def __init__(
        self,
        by_address: Mapping[str, Sequence[RecordRef]] | None = None,
        by_domain: Mapping[str, Sequence[RecordRef]] | None = None,
    ) -> None:
        self.by_address = dict(by_address or {})
        self.by_domain = dict(by_domain or {})
        self.domain_lookups: list[str] = []

    def records_for_address(self, address: str) -> Sequence[RecordRef]:
        return self.by_address.get(address, ())

    def records_for_domain(self, domain: str) -> Sequence[RecordRef]:
        self.domain_lookups.append(domain)
        return self.by_domain.get(domain, ())


BOB = RecordRef("c-bob", "candidate")
CAROL = RecordRef("c-carol", "contact")
ACME = RecordRef("a-acme", "account")
RECORDS = DictRecordLookup({"bob@fabrikam.com": [BOB], "carol@northwind.com": [CAROL]})


def party(address: str, name: str = "") -> EmailAddress:
    return EmailAddress(address, name)


def message(
    sender: str | None = "bob@fabrikam.com",
    to: Sequence[str] = (OWNER,),
    cc: Sequence[str] = (),
    **changes: object,
) -> MailMessage:
    base = MailMessage(
        source_id="AAMk-1",
        internet_message_id="<1@fabrikam.com>",
        subject="Interview on Tuesday",
        sender=party(sender) if sender else None,
        to=tuple(party(address) for address in to),
        cc=tuple(party(address) for address in cc),
        received_at=CONNECTED + timedelta(hours=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def mailbox(**changes: object) -> Mailbox:
    base = Mailbox(
        org_id="org-1",
        mailbox_id="mbx-1",
        address=OWNER,
        aliases=(OWNER, "alice.smith@contoso.com", "alice@contoso.onmicrosoft.com"),
        watermark=CONNECTED,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def run(
    msg: MailMessage | None = None,
    box: Mailbox | None = None,
    settings: OrgSettings | None = None,
    records: DictRecordLookup = RECORDS,
) -> Decision:
    return decide(msg or message(), box or mailbox(), settings or OrgSettings(), records)


def checks(decision: Decision) -> list[tuple[str, bool]]:
    return [(step.check, step.passed) for step in decision.steps]


def step(decision: Decision, check: str) -> str:
    return next(s.detail for s in decision.steps if s.check == check)


# --- the happy path and explain -----------------------------------------------------------------------


def test_a_received_message_from_a_crm_candidate_is_stored_on_that_candidate() -> None:
    decision = run()
    assert decision.store
    assert decision.reason is Reason.MATCHED
    assert decision.direction is Direction.RECEIVED
    assert decision.matches == (RecordMatch("c-bob", "candidate", "bob@fabrikam.com", "address"),)
    assert decision.records == (BOB,)


def test_a_stored_decision_explains_every_check_in_order() -> None:
    decision = run()
    assert checks(decision) == [
        ("folder", True),
        ("watermark", True),
        ("direction", True),
        ("participants", True),
        ("bulk", True),
        ("internal", True),
        ("never_log", True),
        ("blocked_domain", True),
        ("match", True),
    ]
    assert "bob@fabrikam.com" in step(decision, "direction")
    assert "candidate c-bob" in step(decision, "match")


def test_a_refused_decision_stops_at_the_first_failing_check_and_says_why() -> None:
    decision = run(message(folder="junkemail"))
    assert not decision.store
    assert checks(decision) == [("folder", False)]
    assert "junkemail" in decision.steps[0].detail
    assert decision.matches == ()


# --- folder -------------------------------------------------------------------------------------------


def test_a_draft_is_not_stored_even_outside_the_drafts_folder() -> None:
    assert run(message(is_draft=True)).reason is Reason.DRAFT
    assert run(message(folder="drafts")).reason is Reason.DRAFT
    assert run(message(folder="Drafts")).reason is Reason.DRAFT


@pytest.mark.parametrize("folder", ["deleteditems", "recoverableitemsdeletions"])
def test_a_deleted_message_is_not_stored(folder: str) -> None:
    assert run(message(folder=folder)).reason is Reason.DELETED


def test_junk_is_not_stored() -> None:
    assert run(message(folder="junkemail")).reason is Reason.JUNK


@pytest.mark.parametrize(
    "folder", ["outbox", "conversationhistory", "syncissues", "conflicts", "localfailures", "serverfailures",
               "scheduled", "searchfolders"]
)  # fmt: skip
def test_a_message_in_a_system_folder_is_not_stored(folder: str) -> None:
    assert run(message(folder=folder)).reason is Reason.EXCLUDED_FOLDER


@pytest.mark.parametrize("folder", ["inbox", "sentitems", "archive", "clutter", "AAMkAGI2TG93AAA="])
def test_inbox_sent_items_archive_and_user_folders_are_synced(folder: str) -> None:
    assert run(message(folder=folder)).store


def test_the_excluded_folder_set_names_every_folder_the_pipeline_refuses() -> None:
    for folder in EXCLUDED_FOLDERS:
        assert not run(message(folder=folder)).store, folder
    assert {"inbox", "sentitems", "archive"}.isdisjoint(EXCLUDED_FOLDERS)


# --- watermark ----------------------------------------------------------------------------------------


def test_a_message_received_before_the_watermark_is_not_stored() -> None:
    decision = run(message(received_at=CONNECTED - timedelta(seconds=1)))
    assert decision.reason is Reason.BEFORE_WATERMARK
    assert CONNECTED.isoformat() in step(decision, "watermark")


def test_a_message_received_at_the_watermark_is_stored() -> None:
    assert run(message(received_at=CONNECTED)).store


def test_naive_and_aware_times_compare_as_utc_instead_of_failing() -> None:
    naive_before = (CONNECTED - timedelta(minutes=1)).replace(tzinfo=None)
    assert run(message(received_at=naive_before)).reason is Reason.BEFORE_WATERMARK
    other_zone = CONNECTED.astimezone(timezone(timedelta(hours=2))) + timedelta(minutes=1)
    assert run(message(received_at=other_zone)).store


# --- direction ----------------------------------------------------------------------------------------


def test_mail_from_the_owner_is_sent_and_mail_to_the_owner_is_received() -> None:
    sent = run(message(sender=OWNER, to=["bob@fabrikam.com"]))
    assert sent.direction is Direction.SENT
    assert sent.store
    assert run().direction is Direction.RECEIVED


def test_mail_from_an_owner_alias_is_sent() -> None:
    for alias in ("alice.smith@contoso.com", "alice@contoso.onmicrosoft.com"):
        decision = run(message(sender=alias, to=["bob@fabrikam.com"]))
        assert decision.direction is Direction.SENT, alias
        assert decision.store


def test_aliases_stored_unnormalised_still_identify_the_owner() -> None:
    box = mailbox(address="Alice@Contoso.com", aliases=("SMTP:Alice@Contoso.com", "smtp:Alice.Smith@Contoso.com"))
    decision = run(message(sender="alice.smith@contoso.com", to=["bob@fabrikam.com"]), box)
    assert decision.direction is Direction.SENT
    assert decision.store


def test_a_message_from_the_owner_to_themselves_is_sent() -> None:
    decision = run(message(sender=OWNER, to=[OWNER, "alice.smith@contoso.com"]))
    assert decision.direction is Direction.SENT
    assert decision.reason is Reason.NO_PARTICIPANTS


def test_a_message_without_a_sender_counts_as_received() -> None:
    decision = run(message(sender=None, to=[OWNER], cc=["bob@fabrikam.com"]))
    assert decision.direction is Direction.RECEIVED
    assert decision.store


@pytest.mark.parametrize(
    ("setting", "sent_stored", "received_stored"),
    [
        (DirectionSetting.BOTH, True, True),
        (DirectionSetting.SENT, True, False),
        (DirectionSetting.RECEIVED, False, True),
    ],
)
def test_the_mailbox_direction_setting_decides_which_directions_are_logged(
    setting: DirectionSetting, sent_stored: bool, received_stored: bool
) -> None:
    box = mailbox(directions=setting)
    sent = run(message(sender=OWNER, to=["bob@fabrikam.com"]), box)
    received = run(message(), box)
    assert sent.store is sent_stored
    assert received.store is received_stored
    for decision in (sent, received):
        if not decision.store:
            assert decision.reason is Reason.DIRECTION_EXCLUDED
            assert decision.direction is not None
            assert f"logs {setting.value} only" in step(decision, "direction")


# --- participants -------------------------------------------------------------------------------------


def test_a_message_with_only_the_owner_as_participant_is_not_stored() -> None:
    decision = run(message(sender=OWNER, to=["alice.smith@contoso.com"], cc=[OWNER]))
    assert decision.reason is Reason.NO_PARTICIPANTS


def test_a_message_with_no_participants_at_all_is_not_stored() -> None:
    assert run(message(sender=None, to=[])).reason is Reason.NO_PARTICIPANTS


def test_cc_recipients_are_participants() -> None:
    decision = run(message(sender=OWNER, to=["nobody@elsewhere.org"], cc=["carol@northwind.com"]))
    assert decision.store
    assert decision.records == (CAROL,)


# --- bulk ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        (("list-unsubscribe", "<mailto:unsubscribe@fabrikam.com>"),),
        (("list-id", "Fabrikam news <news.fabrikam.com>"),),
        (("precedence", "bulk"),),
        (("precedence", " List "),),
        (("precedence", "junk"),),
        (("auto-submitted", "auto-generated"),),
        (("auto-submitted", "auto-replied; owner-email=bob@fabrikam.com"),),
    ],
)
def test_mailing_list_and_automatic_mail_is_bulk(headers: tuple[tuple[str, str], ...]) -> None:
    decision = run(message(headers=headers))
    assert decision.reason is Reason.BULK
    assert not decision.store


@pytest.mark.parametrize(
    "headers",
    [(("auto-submitted", "no"),), (("precedence", "first-class"),), (("list-id", "  "),), (("x-mailer", "Outlook"),)],
)
def test_ordinary_header_values_are_not_bulk(headers: tuple[tuple[str, str], ...]) -> None:
    assert run(message(headers=headers)).store


@pytest.mark.parametrize(
    "sender",
    ["noreply@fabrikam.com", "no-reply@fabrikam.com", "no_reply@fabrikam.com", "donotreply@fabrikam.com",
     "do-not-reply@fabrikam.com", "DoNotReply@fabrikam.com", "accounts-noreply@fabrikam.com",
     "noreply-dmarc-support@fabrikam.com", "mailer-daemon@fabrikam.com", "postmaster@fabrikam.com",
     "bounce@fabrikam.com", "bounces+12345-abc=contoso.com@fabrikam.com", "notifications@fabrikam.com",
     "notification@fabrikam.com", "calendar-notification@fabrikam.com", "newsletter@fabrikam.com"],
)  # fmt: skip
def test_no_reply_style_senders_are_bulk(sender: str) -> None:
    assert is_automated_sender(sender)
    records = DictRecordLookup({sender: [BOB]})
    decision = run(message(sender=sender), records=records)
    assert decision.reason is Reason.BULK
    assert sender in step(decision, "bulk")


@pytest.mark.parametrize(
    "sender",
    ["info@fabrikam.com", "support@fabrikam.com", "sales@fabrikam.com", "hello@fabrikam.com",
     "bruno.reply@fabrikam.com", "nora.eply@fabrikam.com", "newsom@fabrikam.com", "bob@bounce-rate.com"],
)  # fmt: skip
def test_role_addresses_and_lookalike_names_are_not_bulk(sender: str) -> None:
    assert not is_automated_sender(sender)
    assert run(message(sender=sender), records=DictRecordLookup({sender: [BOB]})).store


def test_only_the_sender_is_judged_not_the_recipients() -> None:
    decision = run(message(sender=OWNER, to=["bob@fabrikam.com"], cc=["noreply@fabrikam.com"]))
    assert decision.store


@pytest.mark.parametrize(
    ("switched_off", "msg"),
    [
        ("list_headers", message(headers=(("list-unsubscribe", "<https://x>"), ("list-id", "x")))),
        ("precedence", message(headers=(("precedence", "bulk"),))),
        ("auto_submitted", message(headers=(("auto-submitted", "auto-generated"),))),
        ("noreply_senders", message(sender="noreply@fabrikam.com")),
    ],
)
def test_each_bulk_filter_can_be_switched_off(switched_off: str, msg: MailMessage) -> None:
    records = DictRecordLookup({"bob@fabrikam.com": [BOB], "noreply@fabrikam.com": [BOB]})
    assert run(msg, records=records).reason is Reason.BULK
    settings = OrgSettings(bulk_filters=replace(BulkFilters(), **{switched_off: False}))
    assert run(msg, settings=settings, records=records).store


# --- internal -----------------------------------------------------------------------------------------


def test_a_message_among_colleagues_on_the_owner_domain_is_internal() -> None:
    decision = run(message(sender="dave@contoso.com", to=[OWNER], cc=["erin@contoso.com"]))
    assert decision.reason is Reason.INTERNAL
    assert "contoso.com" in step(decision, "internal")


def test_configured_internal_domains_and_their_subdomains_are_internal() -> None:
    settings = OrgSettings(internal_domains=("Contoso-Group.com",))
    msg = message(sender="dave@contoso-group.com", to=[OWNER], cc=["erin@eu.contoso-group.com"])
    assert run(msg, settings=settings).reason is Reason.INTERNAL


def test_colleagues_are_never_matched_but_external_participants_still_are() -> None:
    records = DictRecordLookup({"dave@contoso.com": [CAROL], "bob@fabrikam.com": [BOB]})
    decision = run(message(sender="dave@contoso.com", to=[OWNER, "bob@fabrikam.com"]), records=records)
    assert decision.store
    assert decision.records == (BOB,)


def test_a_free_mail_owner_does_not_make_every_free_mail_user_internal() -> None:
    box = mailbox(address="alice@gmail.com", aliases=("alice@gmail.com",))
    records = DictRecordLookup({"bob@gmail.com": [BOB]})
    decision = run(message(sender="bob@gmail.com", to=["alice@gmail.com"]), box, records=records)
    assert decision.store


# --- never-log ----------------------------------------------------------------------------------------


def test_a_message_whose_only_external_participant_is_never_logged_is_not_stored() -> None:
    settings = OrgSettings(never_log=("Bob@Fabrikam.com",))
    decision = run(settings=settings)
    assert decision.reason is Reason.NEVER_LOG
    assert "bob@fabrikam.com" in step(decision, "never_log")


def test_a_never_logged_participant_does_not_stop_logging_for_the_others() -> None:
    settings = OrgSettings(never_log=("bob@fabrikam.com",))
    decision = run(message(cc=["carol@northwind.com"]), settings=settings)
    assert decision.store
    assert decision.records == (CAROL,)
    assert all(match.address != "bob@fabrikam.com" for match in decision.matches)


def test_a_never_log_domain_covers_its_subdomains() -> None:
    settings = OrgSettings(never_log=("fabrikam.com",))
    assert run(settings=settings).reason is Reason.NEVER_LOG
    records = DictRecordLookup({"bob@mail.fabrikam.com": [BOB]})
    assert run(message(sender="bob@mail.fabrikam.com"), settings=settings, records=records).reason is Reason.NEVER_LOG


def test_a_never_log_domain_does_not_cover_lookalike_domains() -> None:
    settings = OrgSettings(never_log=("fabrikam.com",))
    records = DictRecordLookup({"bob@notfabrikam.com": [BOB]})
    assert run(message(sender="bob@notfabrikam.com"), settings=settings, records=records).store


def test_the_mailbox_never_log_list_applies_alongside_the_org_list() -> None:
    box = mailbox(never_log=("@fabrikam.com",))
    assert run(box=box).reason is Reason.NEVER_LOG


# --- blocked domains ----------------------------------------------------------------------------------


def test_a_message_whose_only_participants_are_on_blocked_domains_is_not_stored() -> None:
    settings = OrgSettings(blocked_domains=("fabrikam.com",))
    decision = run(settings=settings)
    assert decision.reason is Reason.BLOCKED_DOMAIN
    assert "bob@fabrikam.com" in step(decision, "blocked_domain")


def test_participants_on_blocked_domains_are_ignored_but_others_still_match() -> None:
    settings = OrgSettings(blocked_domains=("FABRIKAM.com",))
    decision = run(message(cc=["carol@northwind.com", "x@eu.fabrikam.com"]), settings=settings)
    assert decision.store
    assert decision.records == (CAROL,)


# --- matching -----------------------------------------------------------------------------------------


def test_a_message_with_no_participant_in_the_crm_is_unmatched() -> None:
    decision = run(message(sender="stranger@elsewhere.org"))
    assert decision.reason is Reason.UNMATCHED
    assert not decision.store
    assert "stranger@elsewhere.org: no record" in step(decision, "match")


def test_every_matching_participant_contributes_its_records() -> None:
    decision = run(message(sender="bob@fabrikam.com", to=[OWNER], cc=["carol@northwind.com", "x@elsewhere.org"]))
    assert decision.records == (BOB, CAROL)
    assert {match.address for match in decision.matches} == {"bob@fabrikam.com", "carol@northwind.com"}


def test_domain_matching_finds_the_account_of_an_unknown_colleague_of_a_customer() -> None:
    records = DictRecordLookup(by_domain={"fabrikam.com": [ACME]})
    decision = run(
        message(sender="newperson@fabrikam.com"), settings=OrgSettings(match_by_domain=True), records=records
    )
    assert decision.store
    assert decision.matches == (RecordMatch("a-acme", "account", "newperson@fabrikam.com", "domain"),)


def test_domain_matching_is_off_unless_enabled() -> None:
    records = DictRecordLookup(by_domain={"fabrikam.com": [ACME]})
    assert run(message(sender="newperson@fabrikam.com"), records=records).reason is Reason.UNMATCHED
    assert records.domain_lookups == []


def test_an_exact_address_match_wins_over_the_domain() -> None:
    records = DictRecordLookup({"bob@fabrikam.com": [BOB]}, {"fabrikam.com": [ACME]})
    decision = run(settings=OrgSettings(match_by_domain=True), records=records)
    assert decision.records == (BOB,)
    assert records.domain_lookups == []


@pytest.mark.parametrize("domain", ["gmail.com", "outlook.com", "yahoo.co.uk", "gmx.de"])
def test_domain_matching_never_uses_free_mail_domains(domain: str) -> None:
    records = DictRecordLookup(by_domain={domain: [ACME]})
    decision = run(message(sender=f"someone@{domain}"), settings=OrgSettings(match_by_domain=True), records=records)
    assert decision.reason is Reason.UNMATCHED
    assert records.domain_lookups == []


TWO_RECORDS = DictRecordLookup({"bob@fabrikam.com": [BOB, CAROL, BOB]})


def test_an_address_on_several_records_matches_nothing_by_default() -> None:
    decision = run(records=TWO_RECORDS)
    assert decision.reason is Reason.AMBIGUOUS
    assert not decision.store
    assert "ambiguous: 2 records" in step(decision, "match")


def test_an_ambiguous_address_does_not_stop_other_participants_from_matching() -> None:
    records = DictRecordLookup({"bob@fabrikam.com": [BOB, CAROL], "dan@northwind.com": [ACME]})
    decision = run(message(cc=["dan@northwind.com"]), records=records)
    assert decision.store
    assert decision.records == (ACME,)


def test_the_all_policy_logs_on_every_record_of_an_ambiguous_address() -> None:
    decision = run(settings=OrgSettings(ambiguity="all"), records=TWO_RECORDS)
    assert decision.store
    assert decision.records == (BOB, CAROL)


def test_the_prefer_policy_keeps_the_record_of_the_first_preferred_type_present() -> None:
    settings = OrgSettings(ambiguity="prefer", type_order=("lead", "contact", "candidate"))
    decision = run(settings=settings, records=TWO_RECORDS)
    assert decision.store
    assert decision.records == (CAROL,)
    assert "preferred contact c-carol" in step(decision, "match")


def test_the_prefer_policy_is_still_ambiguous_with_two_records_of_the_preferred_type() -> None:
    records = DictRecordLookup({"bob@fabrikam.com": [BOB, RecordRef("c-bob-2", "candidate"), CAROL]})
    settings = OrgSettings(ambiguity="prefer", type_order=("candidate", "contact"))
    assert run(settings=settings, records=records).reason is Reason.AMBIGUOUS


def test_the_prefer_policy_is_ambiguous_when_no_preferred_type_is_present() -> None:
    settings = OrgSettings(ambiguity="prefer", type_order=("lead",))
    assert run(settings=settings, records=TWO_RECORDS).reason is Reason.AMBIGUOUS


def test_an_unknown_ambiguity_policy_behaves_like_skip() -> None:
    assert run(settings=OrgSettings(ambiguity="random"), records=TWO_RECORDS).reason is Reason.AMBIGUOUS


def test_domain_matches_follow_the_ambiguity_policy_too() -> None:
    records = DictRecordLookup(by_domain={"fabrikam.com": [ACME, RecordRef("a-acme-2", "account")]})
    settings = OrgSettings(match_by_domain=True)
    assert run(message(sender="x@fabrikam.com"), settings=settings, records=records).reason is Reason.AMBIGUOUS


# --- order of the checks ------------------------------------------------------------------------------


def test_checks_run_in_order_so_the_first_failure_is_the_reason() -> None:
    everything_wrong = message(
        folder="junkemail", received_at=CONNECTED - timedelta(days=1), headers=(("precedence", "bulk"),)
    )
    assert run(everything_wrong).reason is Reason.JUNK
    assert run(replace(everything_wrong, folder="inbox")).reason is Reason.BEFORE_WATERMARK
    assert run(replace(everything_wrong, folder="inbox", received_at=CONNECTED)).reason is Reason.BULK


def test_bulk_is_judged_before_internal_and_never_log() -> None:
    msg = message(sender="noreply@contoso.com", to=[OWNER])
    assert run(msg, settings=OrgSettings(never_log=("contoso.com",))).reason is Reason.BULK


def test_long_participant_lists_are_summarised_in_the_explanation() -> None:
    many = [f"person{i}@elsewhere.org" for i in range(30)]
    decision = run(message(sender="bob@fabrikam.com", to=[OWNER, *many]))
    assert decision.store
    assert "and 21 more" in step(decision, "participants")
    assert "and 21 more" in step(decision, "match")


def test_mail_received_in_the_same_second_as_the_connect_is_not_before_the_watermark() -> None:
    """Graph's receivedDateTime has whole seconds; the watermark is taken with microseconds."""
    connected = datetime(2026, 11, 1, 9, 0, 33, 614_000, tzinfo=UTC)
    box = Mailbox("org", "mb", "adele@acme.example", ("adele@acme.example",), watermark=connected)
    same_second = MailMessage(
        source_id="s",
        internet_message_id="<x@client.example>",
        subject="hi",
        sender=EmailAddress("carol@client.example"),
        to=(EmailAddress("adele@acme.example"),),
        cc=(),
        received_at=connected.replace(microsecond=0),
    )
    lookup = DictRecordLookup({"carol@client.example": [RecordRef("c-1", "contact")]})

    assert decide(same_second, box, OrgSettings(), lookup).reason is Reason.MATCHED


# --- one context per page: screening, then matching -----------------------------------------------------


def test_one_decision_context_decides_every_message_as_decide_does() -> None:
    box = mailbox(never_log=("hr.example",), aliases=(OWNER, "Alice.Smith@CONTOSO.com"),
                  directions=DirectionSetting.RECEIVED)  # fmt: skip
    settings = OrgSettings(internal_domains=("contoso-labs.com",), never_log=("ceo@fabrikam.com",),
                           blocked_domains=("blocked.example",), match_by_domain=True, ambiguity="prefer",
                           type_order=("contact",))  # fmt: skip
    two_contacts = [CAROL, RecordRef("c-2", "contact")]
    records = DictRecordLookup({**RECORDS.by_address, "ann@two.example": two_contacts}, {"fabrikam.com": [ACME]})
    mail = [
        message(), message(folder="drafts"), message(folder="deleteditems"), message(folder="junkemail"),
        message(folder="outbox"), message(received_at=CONNECTED - timedelta(seconds=1)),
        message(sender="alice.smith@contoso.com", to=["carol@northwind.com"]), message(sender=None, to=[OWNER]),
        message(headers=(("list-id", "<x>"),)), message(sender="dave@lab.contoso-labs.com"),
        message(sender="ceo@fabrikam.com"), message(sender="jo@hr.example"), message(sender="x@blocked.example"),
        message(sender="new@fabrikam.com"), message(sender="ann@two.example"), message(sender="who@gmail.com"),
    ]  # fmt: skip
    context = DecisionContext.of(box, settings)

    decided = [context.decide(m, records) for m in mail]

    assert decided == [decide(m, box, settings, records) for m in mail]
    assert {d.reason for d in decided} == set(Reason)


def test_a_message_refused_before_matching_names_no_record_lookups() -> None:
    context = DecisionContext.of(mailbox(), OrgSettings(match_by_domain=True))
    for msg in (message(folder="junkemail"), message(headers=(("precedence", "bulk"),)), message(sender=OWNER)):
        screening = context.screen(msg)
        assert (screening.addresses, screening.domains) == ((), ())
        assert screening.finish(RECORDS) == decide(msg, mailbox(), OrgSettings(match_by_domain=True), RECORDS)


def test_a_screening_names_only_external_participants_and_with_domain_matching_their_company_domains() -> None:
    msg = message(sender="bob@fabrikam.com", to=[OWNER, "dave@contoso.com"], cc=["eve@gmail.com", "x@blocked.example"])
    settings = OrgSettings(blocked_domains=("blocked.example",))
    assert DecisionContext.of(mailbox(), settings).screen(msg).addresses == ("bob@fabrikam.com", "eve@gmail.com")
    assert DecisionContext.of(mailbox(), settings).screen(msg).domains == ()
    by_domain = DecisionContext.of(mailbox(), replace(settings, match_by_domain=True)).screen(msg)
    assert by_domain.domains == ("fabrikam.com",)


def test_a_screening_finished_with_a_lookup_of_just_its_keys_matches_as_a_full_lookup() -> None:
    settings = OrgSettings(match_by_domain=True)
    msg = message(sender="new@fabrikam.com", to=[OWNER], cc=["carol@northwind.com"])
    screening = DecisionContext.of(mailbox(), settings).screen(msg)
    full = DictRecordLookup(RECORDS.by_address, {"fabrikam.com": [ACME], "contoso.com": [BOB]})
    only_keys = DictRecordLookup(
        {a: full.by_address[a] for a in screening.addresses if a in full.by_address},
        {d: full.by_domain[d] for d in screening.domains if d in full.by_domain},
    )
    assert screening.finish(only_keys) == decide(msg, mailbox(), settings, full)
    assert screening.finish(only_keys).records == (ACME, CAROL)
