"""Hostile and broken mail never crashes the pipeline.

1. Property-based (hypothesis, derandomized): Graph message JSON with missing and null fields, odd
   addresses (IDN, quoted local parts, legacy DNs, overlong, control characters), huge bodies and header
   lists, broken encodings (lone surrogates, bad encoded words, NULs, bidi overrides) and odd dates goes
   through ``graph_mail.page_from_payload`` → ``pipeline.build_activities`` (``decide`` on each message) →
   the Table codec, and every step returns: no exception, every stored form within Table storage limits.
2. The same kinds of mail, delivered through the emulator (JSON and raw MIME), synced by the real engine
   into Azurite: the run is ``done`` and what is stored is exactly the matched mail.
3. An RFC 822 upload with a header line far over RFC 5322's limit, through the hosted app: refused with a
   clear 400, nothing stored, nothing of the header in the app's logs (at DEBUG).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.client import EmulatorTenant
from sync_core.adapters.graph.mail import message_from_graph, page_from_payload
from sync_core.adapters.table_codec import (
    ENTITY_MAX_BYTES,
    PROPERTY_MAX_UNITS,
    activity_entity,
    activity_from_entity,
    entity_size,
    fit_activity,
    utf16_units,
)
from sync_core.domain.addresses import normalize_address
from sync_core.domain.mime import MAX_HEADER_LINE_BYTES
from sync_core.domain.model import Mailbox, OrgSettings, Reason, Record
from sync_core.domain.text import MAX_HTML_CHARS
from sync_core.testing.stores import InMemoryActivityStore, InMemoryRecordsIndex
from sync_core.use_cases.pipeline import build_activities
from tests.integration.sync_env import CAROL, DAN, STRANGER
from tests.reliability.hosted_app import HostedApp
from tests.reliability.rel_env import Ledger, RelEnv, assert_converged, iso, now
from tests.reliability.test_security import new_org, set_up, timeline

ORG = "org-fuzz"
OWN = "adele@contoso.example"
IDN_CONTACT = "josé@exämple.com"
QUOTED_CONTACT = '"john smith"@quoted.example'
MAILBOX = Mailbox(ORG, "mb-1", OWN, (OWN, "adele.vance@contoso.example"), datetime(2020, 1, 1, tzinfo=UTC))
SETTINGS = (
    OrgSettings(internal_domains=("contoso.example",), never_log=("counsel@legal.example",)),
    OrgSettings(internal_domains=("contoso.example",), match_by_domain=True, ambiguity="all"),
)
RECORDS = (
    Record("c-carol", "contact", "Carol", emails=(CAROL,)),
    Record("c-dan", "candidate", "Dan", emails=(DAN,), domains=("talent.example",)),
    Record("c-idn", "contact", "José", emails=(str(normalize_address(IDN_CONTACT)),)),  # as the records API does
    Record("c-quoted", "lead", "John", emails=(QUOTED_CONTACT,)),
)

NASTY_TEXT = [
    "", " ", "\x00", "\ud800", "abc\udfffdef", "\ufffd\ufffd", "Ã©tÃ©", "\u202eevil.exe", "\u200b\u200d\ufeff",
    "=?utf-8?B?####?=", "=?x-unknown?Q?=FF=FE?=", "=?utf-8?q?caf=C3=A9?=", "\r\n\r\nBcc: x@y.example",
    "<script>alert(1)</script>", "<!--", "<![CDATA[", "&#xD800;&#0;&#99999999;&bogus;", "<" * 500,
    "<div>" * 3000, "\U0001F600" * 40, "e\u0301" * 100, "\t\v\f",
]
ODD_ADDRESSES = [
    CAROL, CAROL.upper(), f"<{CAROL}>", f" mailto:{CAROL}?subject=x ", f"smtp:{DAN}", f"{DAN}.", IDN_CONTACT,
    "JOSÉ@EXÄMPLE.COM", "josé@xn--exmple-cua.com", QUOTED_CONTACT, '"john..doe"@quoted.example',
    '"a@b"@quoted.example', '"\\"q\\""@quoted.example', '""@quoted.example', "用户@例子.广告", "пример@почта.рф",
    OWN, "ADELE.VANCE@CONTOSO.EXAMPLE", "counsel@legal.example", STRANGER, "info@gmail.com",
    "", "@", "a@", "@b.example", "a@@b.example", "a@b@c.example", "no-at-sign", "a@b..example", "a@-b.example",
    "a" * 330 + "@x.example", "a@" + "b" * 300 + ".example", "x@[127.0.0.1]", "x@[IPv6:::1]", "x@y.example\x00",
    "x@y\ud800.example", "/O=EXCHANGELABS/OU=EXCHANGE ADMINISTRATIVE GROUP/CN=RECIPIENTS/CN=ADELE",
    "IMCEAEX-_O=EXCHANGELABS@contoso.example", "x@123.456", "x@localhost", "a b@c.example", "a\n@b.example",
]
DATES = [
    "2026-03-01T10:00:00Z", "2026-03-01T10:00:00.1234567Z", "2026-03-01T12:00:00+02:00", "2026-03-01T10:00:00",
    "0001-01-01T00:00:00Z", "1601-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2019-12-31T23:59:59Z",
]


def huge(char: str, size: int) -> str:
    return char * size


text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(NASTY_TEXT),
    st.builds(huge, st.sampled_from(["a", "é", "\U0001F600", "<p>x</p>", "\ud800"]), st.integers(0, 400_000)),
)
maybe_text = st.one_of(st.none(), text)
address = st.one_of(st.sampled_from(ODD_ADDRESSES), st.emails().map(str), st.text(max_size=40))
email_address = st.fixed_dictionaries({}, optional={"address": st.one_of(st.none(), address), "name": maybe_text})
recipient = st.one_of(
    st.fixed_dictionaries({"emailAddress": email_address}),
    st.fixed_dictionaries({"emailAddress": st.none()}),
    st.just({}),
)
recipients = st.one_of(
    st.none(),
    st.lists(recipient, max_size=6),
    st.builds(lambda n: [{"emailAddress": {"address": f"r{k}@bulk.example"}} for k in range(n)], st.integers(0, 5000)),
)
header = st.fixed_dictionaries({"name": st.one_of(st.none(), st.sampled_from(
    ["In-Reply-To", "References", "List-Id", "List-Unsubscribe", "Precedence", "Auto-Submitted", "X-Odd", ""]
)), "value": maybe_text})  # fmt: skip
headers = st.one_of(
    st.none(),
    st.lists(header, max_size=8),
    st.builds(lambda n: [{"name": f"X-H{k}", "value": "v" * 900} for k in range(n)], st.integers(0, 3000)),
    st.builds(lambda n: [{"name": "References", "value": " ".join(f"<m{k}@x>" for k in range(n))}],
              st.integers(0, 20000)),
)
body = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={
        "contentType": st.sampled_from(["html", "text", "HTML", "Text", "", None, "rtf"]), "content": maybe_text,
    }),
)  # fmt: skip
graph_message = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=30)},
    optional={
        "internetMessageId": st.one_of(st.none(), st.just(""), st.just("<fixed@x.example>"), text),
        "receivedDateTime": st.one_of(st.none(), st.just(""), st.sampled_from(DATES)),
        "sentDateTime": st.one_of(st.none(), st.sampled_from(DATES)),
        "subject": maybe_text,
        "body": body,
        "bodyPreview": maybe_text,
        "from": st.one_of(st.none(), recipient),
        "toRecipients": recipients,
        "ccRecipients": recipients,
        "conversationId": st.one_of(st.none(), st.text(max_size=40)),
        "isDraft": st.one_of(st.none(), st.booleans()),
        "hasAttachments": st.one_of(st.none(), st.booleans()),
        "internetMessageHeaders": headers,
        "parentFolderId": st.text(max_size=20),
        "@removed": st.just({"reason": "deleted"}),
    },
)


def check_stored_form(activity: Any) -> None:
    entity = activity_entity(fit_activity(activity))
    assert entity_size(entity) <= ENTITY_MAX_BYTES
    for value in entity.values():
        if isinstance(value, str):
            assert utf16_units(value) <= PROPERTY_MAX_UNITS + 1024
    assert activity_from_entity(entity) == fit_activity(activity)


@settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(messages=st.lists(graph_message, min_size=1, max_size=4), folder=st.sampled_from(["inbox", "sentitems"]),
       policy=st.sampled_from(SETTINGS))  # fmt: skip
def test_any_graph_message_json_goes_through_parse_decide_and_the_table_codec_without_an_exception(
    messages: list[dict[str, Any]], folder: str, policy: OrgSettings
) -> None:
    page = page_from_payload(folder, {"value": messages, "@odata.deltaLink": "https://graph.example/delta?x=1"})
    assert len(page.messages) + page.skipped == len(messages)
    records = InMemoryRecordsIndex()
    records.upsert(ORG, list(RECORDS))
    reasons: Counter[str] = Counter()

    built = build_activities(
        page.messages, MAILBOX, policy, records=records, activities=InMemoryActivityStore(), reasons=reasons
    )

    assert sum(reasons.values()) == len(page.messages)
    assert set(reasons) <= {r.value for r in Reason}
    assert len(built) == reasons[Reason.MATCHED.value]
    for activity in built:
        assert activity.records and activity.internet_message_id
        check_stored_form(activity)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(raw=st.one_of(st.sampled_from(ODD_ADDRESSES), st.text(max_size=80), st.emails().map(str)))
def test_address_normalisation_never_raises_and_is_idempotent(raw: str) -> None:
    normal = normalize_address(raw)
    if normal is not None:
        assert normalize_address(normal) == normal
        assert len(normal) <= 320 and normal == normal.lower()


def test_a_graph_html_body_over_the_html_limit_is_read_up_to_it_and_the_activity_says_it_was_cut() -> None:
    def item(html: str) -> dict[str, Any]:
        return {
            "id": "m1", "internetMessageId": "<m1@x>", "receivedDateTime": "2026-03-01T10:00:00Z",
            "from": {"emailAddress": {"address": CAROL}}, "toRecipients": [{"emailAddress": {"address": OWN}}],
            "body": {"contentType": "html", "content": html},
        }  # fmt: skip

    short = message_from_graph(item("<p>Dear Adele</p>"), "inbox")
    long = message_from_graph(item("<p>Dear Adele</p>" + " " * MAX_HTML_CHARS + "<p>never read</p>"), "inbox")
    records = InMemoryRecordsIndex()
    records.upsert(ORG, list(RECORDS))
    [activity] = build_activities([long] if long else [], MAILBOX, OrgSettings(), records=records,
                                  activities=InMemoryActivityStore(), reasons=Counter())  # fmt: skip

    assert short is not None and (short.body_text, short.body_truncated) == ("Dear Adele", False)
    assert (activity.body_text, activity.body_truncated) == ("Dear Adele", True)


def test_a_message_addressed_to_an_idn_or_quoted_contact_matches_that_contact_only() -> None:
    for contact, record_id in ((IDN_CONTACT.upper(), "c-idn"), ("JOSÉ@xn--exmple-cua.com", "c-idn"),
                               ('"John Smith"@quoted.example', "c-quoted")):  # fmt: skip
        item = {
            "id": "m1", "internetMessageId": "<m1@x>", "receivedDateTime": "2026-03-01T10:00:00Z",
            "from": {"emailAddress": {"address": contact, "name": "Contact"}},
            "toRecipients": [{"emailAddress": {"address": OWN}}],
        }  # fmt: skip
        message = message_from_graph(item, "inbox")
        assert message is not None
        records = InMemoryRecordsIndex()
        records.upsert(ORG, list(RECORDS))
        [activity] = build_activities(
            [message], MAILBOX, SETTINGS[0], records=records, activities=InMemoryActivityStore(), reasons=Counter()
        )
        assert [r.record_id for r in activity.records] == [record_id], contact


# -- the same through the emulator, the engine and Azurite ----------------------------------------------


def mime(subject: bytes, sender: str, to: str, body: bytes, *, charset: str = "utf-8") -> bytes:
    return (
        b"From: " + sender.encode() + b"\r\nTo: " + to.encode() + b"\r\nSubject: " + subject + b"\r\n"
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMessage-ID: <" + uuid.uuid4().hex.encode() + b"@mime.example>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body
    )  # fmt: skip


def test_hostile_mail_delivered_through_graph_syncs_to_done_and_stores_exactly_the_matched_messages(
    rel: RelEnv,
) -> None:
    rel.stores.records.upsert("org-1", list(RECORDS[2:]))
    adele, token = rel.address("adele"), uuid.uuid4().hex[:10]
    ledger = Ledger(rel)
    nasty_headers = [{"name": f"X-Noise-{k}", "value": "n" * 990} for k in range(120)]
    nasty_headers.append({"name": "References", "value": " ".join(f"<r{k}@x.example>" for k in range(40))})
    ledger.matched(body_type="html", headers=nasty_headers)
    huge_body = "<p>" + "Grüße \U0001F600 " * 70_000 + "</p>"  # over the 480,000 code units kept
    big = ledger.matched(sender=DAN, body=huge_body, body_type="html")

    def deliver(subject: str, sender: str, record: str, seconds: int) -> None:
        received = now() - timedelta(seconds=seconds)
        ids = rel.deliver("adele", subject=subject, from_=sender, to=[adele], received=iso(received))
        ledger.add("adele", subject, ids["internetMessageId"], received, "matched", record)

    for k, odd in enumerate(["\u202eevil", "=?utf-8?B?####?=", "<script>x</script>", "\x00nul", "Ã©", "\ud800"]):
        deliver(f"{odd} {token} w{k}", CAROL, "c-carol", 300 + k)
    deliver(f"Odd contact {token} idn", IDN_CONTACT.upper(), "c-idn", 400)
    deliver(f"Odd contact {token} quoted", QUOTED_CONTACT, "c-quoted", 401)
    raw = [
        mime(b"Latin-1 \xe9t\xe9 " + token.encode(), CAROL, adele, b"caf\xe9", charset="iso-8859-1"),
        mime(b"=?utf-8?B?broken-base64?= " + token.encode(), CAROL, adele, b"\xff\xfe\xfa invalid utf-8"),
        mime(b"Declared ascii " + token.encode(), CAROL, adele, b"\x80\x81 high bytes", charset="us-ascii"),
        mime(b"\xc3\x28 bad utf-8 in a header " + token.encode(), CAROL, adele, b"body"),
    ]
    for k, message in enumerate(raw):
        received = now() - timedelta(minutes=20, seconds=k)
        ids = rel.client.deliver_mime(rel.user_id("adele"), message, received=iso(received))
        ledger.add("adele", f"mime {k}", ids["internetMessageId"], received, "matched", "c-carol")
    for _ in range(3):
        ledger.unmatched()

    outcome = rel.run(page_size=5)

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == "", outcome
    stored = assert_converged(rel, ledger)
    giant = stored[big.internet_message_id]
    assert giant.body_truncated and utf16_units(giant.body_text) <= 15 * PROPERTY_MAX_UNITS
    assert "Grüße" in giant.body_text and "<p>" not in giant.body_text


def test_a_message_with_hundreds_of_references_costs_a_bounded_number_of_table_reads(rel: RelEnv) -> None:
    """Any outside sender controls the References header. Thread resolution must not turn it into one
    Table read per referenced id: 20 such messages on one page would be 100,000 reads, a page longer than
    the function timeout, retried forever."""
    adele = rel.address("adele")
    ledger = Ledger(rel)
    ledger.matched()
    baseline = rel.run(page_size=10)
    assert baseline.report is not None
    plain = ledger.matched()
    references = " ".join(f"<ref{k}.{ledger.token}@x.example>" for k in range(500))
    ids = rel.deliver("adele", subject=f"Long thread {ledger.token}", from_=CAROL, to=[adele],
                      references=references.split(), received=iso(now()))  # fmt: skip
    ledger.add("adele", "long", ids["internetMessageId"], now(), "matched", "c-carol")

    outcome = rel.run(page_size=10)

    assert outcome.status == "done" and outcome.report is not None
    idle = rel.run(page_size=10)
    assert idle.report is not None
    per_message = outcome.report.table_transactions - idle.report.table_transactions
    assert plain.internet_message_id in assert_converged(rel, ledger)
    assert per_message < 60, f"two new messages cost {per_message} table transactions"


# -- 3. an overlong header line through the hosted app ---------------------------------------------------


def test_an_upload_with_a_120_kb_header_line_is_refused_and_nothing_of_it_is_stored_or_logged(
    hosted: HostedApp, tenant: EmulatorTenant
) -> None:
    org, marker = new_org(), uuid.uuid4().hex
    set_up(hosted, org, tenant, {"contact-1": {"type": "contact", "name": "Carol", "emails": [CAROL]}})

    def upload(extra: str) -> requests.Response:
        raw = (
            f"From: Carol <{CAROL}>\r\nTo: bob@{tenant.domain}\r\nSubject: Offer\r\n"
            f"Date: Mon, 01 Jun 2026 10:00:00 +0000\r\nMessage-ID: <{uuid.uuid4().hex}@client.example>\r\n"
            f"{extra}Content-Type: text/plain\r\n\r\nHello.\r\n"
        ).encode()
        url = hosted.url(f"orgs/{org}/messages:ingest")
        return hosted.api.post(url, data=raw, headers={"Content-Type": "message/rfc822"}, timeout=60)

    refused = upload("X-Payload: " + marker * (120 * 1024 // len(marker)) + "\r\n")
    stored_after_refusal = timeline(hosted, org, "contact-1")
    accepted = upload("X-Payload: short\r\n")  # the same message with a short header: the org logs it

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "header_line_too_long"
    assert refused.json()["error"]["details"] == {"limit": MAX_HEADER_LINE_BYTES}
    assert marker not in refused.text
    assert stored_after_refusal == []
    assert accepted.status_code == 201, accepted.text
    assert len(timeline(hosted, org, "contact-1")) == 1
    records = hosted.log_records()
    leaks = [r["logger"] for r in records if any(marker in r[part] for part in ("msg", "args", "message", "exc"))]
    assert records and leaks == []
