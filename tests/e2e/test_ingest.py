"""RFC 822 ingest through the local Functions host: ``POST /api/orgs/{org}/messages:ingest`` runs the same
decision, dedupe and threading path as synced mail; real-world and hostile messages never get a 5xx, and a
refused message changes nothing."""

from __future__ import annotations

import sysconfig
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from emulator.client import EmulatorClient, EmulatorTenant
from sync_core.domain.mime import parse_rfc822
from sync_core.errors import InvalidMessage
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_sync_flow import DAN, STRANGER, connect, iso, run_scheduler, set_up_org, timeline

CPYTHON_EMAIL_DATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
MIME = {"Content-Type": "message/rfc822"}


def message(
    *,
    sender: str = f"Dan Candidate <{DAN}>",
    to: str = "",
    subject: str = "Our call",
    when: datetime | None = None,
    message_id: str | None = None,
    extra: str = "",
    content_type: str = "text/plain; charset=utf-8",
    body: str = "Thanks for the call today.\r\n",
) -> bytes:
    """A message; lone surrogates in ``subject``/``body`` stand for raw (undecodable) bytes."""
    moment = when or datetime.now(UTC)
    mid = message_id or f"<{uuid.uuid4().hex}@talent.example>"
    headers = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {format_datetime(moment)}\r\n"
        f"Message-ID: {mid}\r\nMIME-Version: 1.0\r\n{extra}Content-Type: {content_type}\r\n\r\n"
    )
    return (headers + body).encode("utf-8", "surrogateescape")


def ingest(app_host: AppUnderTest, api: requests.Session, org: str, raw: bytes, **params: str) -> requests.Response:
    return api.post(app_host.url(f"orgs/{org}/messages:ingest"), data=raw, headers=MIME, params=params, timeout=60)


@pytest.fixture
def crm(app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, org: str) -> str:
    set_up_org(app_host, api, org, tenant)
    return org


def test_a_matched_message_uploaded_at_org_level_becomes_an_activity_once(
    app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, crm: str
) -> None:
    raw = message(to=f"Bob <bob@{tenant.domain}>", when=datetime.now(UTC) - timedelta(days=400))

    first = ingest(app_host, api, crm, raw)
    again = ingest(app_host, api, crm, raw)

    assert first.status_code == 201, first.text
    assert first.json()["outcome"] == "created" and first.json()["direction"] == "received"
    assert first.json()["mailbox_id"] is None  # no mailbox of the org took part
    assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
    [activity] = timeline(app_host, api, crm, "cand-dan")["activities"]
    assert activity["id"] == first.json()["activity_id"] and activity["subject"] == "Our call"
    assert activity["mailbox_ids"] == []


def test_a_message_sent_by_a_colleague_on_the_org_domain_is_logged_as_sent(
    app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, crm: str
) -> None:
    response = ingest(app_host, api, crm, message(sender=f"bob@{tenant.domain}", to=DAN, subject="Offer"))

    assert response.status_code == 201 and response.json()["direction"] == "sent"


def test_an_unmatched_message_is_not_logged_and_says_why(
    app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, crm: str
) -> None:
    response = ingest(app_host, api, crm, message(sender=STRANGER, to=f"bob@{tenant.domain}"))

    assert response.status_code == 200
    assert response.json()["outcome"] == "not_logged" and response.json()["reason"] == "unmatched"
    assert response.json()["activity_id"] is None


@pytest.mark.parametrize("order", ["ingest_then_sync", "sync_then_ingest"])
def test_the_same_message_ingested_as_mime_and_synced_from_graph_is_one_activity(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    *,
    crm: str,
    order: str,
) -> None:
    user = tenant.users["adele"]
    mailbox_id = connect(app_host, api, emulator_client, crm, user.upn)
    run_scheduler(app_host)
    received = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    raw = message(to=f"Adele <{user.mail}>", subject="One message, two paths", when=received)
    emulator_client.deliver_mime(user.upn, raw, received=iso(received))

    if order == "sync_then_ingest":
        run_scheduler(app_host)
    uploaded = ingest(app_host, api, crm, raw)
    if order == "ingest_then_sync":
        run_scheduler(app_host)

    assert uploaded.status_code in (200, 201), uploaded.text
    assert uploaded.json()["mailbox_id"] == mailbox_id  # Adele is a recipient: seen in her mailbox
    [activity] = timeline(app_host, api, crm, "cand-dan")["activities"]
    assert activity["id"] == uploaded.json()["activity_id"]
    assert activity["mailbox_ids"] == [mailbox_id]
    assert activity["direction"] == "received"


def test_a_named_mailbox_decides_the_direction_and_an_unknown_one_is_404(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, crm: str
) -> None:
    user = tenant.users["adele"]
    mailbox_id = connect(app_host, api, emulator_client, crm, user.upn)

    sent = ingest(app_host, api, crm, message(sender=user.mail, to=DAN), mailbox_id=mailbox_id)
    unknown = ingest(app_host, api, crm, message(), mailbox_id="mbx_nobody")
    invalid = ingest(app_host, api, crm, message(), mailbox_id="../x")

    assert sent.status_code == 201 and sent.json()["direction"] == "sent"
    assert sent.json()["mailbox_id"] == mailbox_id
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert invalid.status_code == 400 and invalid.json()["error"]["code"] == "invalid_query"


def test_the_route_needs_the_function_key_and_the_message_rfc822_content_type(
    app_host: AppUnderTest, api: requests.Session, crm: str
) -> None:
    url = app_host.url(f"orgs/{crm}/messages:ingest")

    anonymous = requests.post(url, data=message(), headers=MIME, timeout=10)
    as_text = api.post(url, data=message(), headers={"Content-Type": "text/plain"})

    assert anonymous.status_code == 401
    assert as_text.status_code == 415 and as_text.json()["error"]["code"] == "unsupported_media_type"


# -- real-world and hostile messages ---------------------------------------------------------------------


def test_the_cpython_email_corpus_goes_through_ingest_without_a_5xx_and_dedupes_on_the_second_pass(
    app_host: AppUnderTest, api: requests.Session, crm: str
) -> None:
    samples = sorted(CPYTHON_EMAIL_DATA.glob("msg_*.txt"))
    assert len(samples) > 40
    # Make every participant of the corpus a CRM contact, so the messages go all the way to storage.
    addresses: set[str] = set()
    for sample in samples:
        try:
            addresses.update(p.address for p in parse_rfc822(sample.read_bytes()).participants)
        except InvalidMessage:
            continue
    upserts = [
        {"id": f"c{n}", "type": "contact", "emails": [address]}
        for n, address in enumerate(sorted(addresses))
        if "@" in address
    ]
    assert api.post(app_host.url(f"orgs/{crm}/records:batch"), json={"upsert": upserts}).status_code == 200

    first: Counter[str] = Counter()
    for sample in samples:
        response = ingest(app_host, api, crm, sample.read_bytes())
        assert response.status_code < 500, (sample.name, response.status_code, response.text)
        first[_outcome(response)] += 1
    second: Counter[str] = Counter()
    for sample in samples:
        second[_outcome(ingest(app_host, api, crm, sample.read_bytes()))] += 1

    print(f"\nCPython email corpus ({len(samples)} messages) through ingest: {dict(first)}; again: {dict(second)}")
    assert first["created"] > 10
    logged = first["created"] + first["merged"] + first["unchanged"]  # some corpus messages share a Message-ID
    assert second["created"] == 0 and second["unchanged"] + second["merged"] == logged


def _outcome(response: requests.Response) -> str:
    if response.status_code >= 400:
        return f"{response.status_code} {response.json()['error']['code']}"
    return str(response.json()["outcome"])


def _nested(levels: int) -> str:
    body = "Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for level in range(levels):
        body = f'Content-Type: multipart/mixed; boundary="b{level}"\r\n\r\n--b{level}\r\n{body}\r\n--b{level}--\r\n'
    return body


def _hostile(kind: str) -> bytes:
    base = message().decode("utf-8")
    head = base.split("Content-Type: text/plain", 1)[0]
    if kind == "bare_cr_header_injection":
        return message(extra="X-Note: a\rBcc: everyone@talent.example\r\n")
    if kind == "encoded_newline_header_injection":
        return message(subject="=?utf-8?q?hello=0D=0ABcc:_everyone@talent.example?=")
    if kind == "mixed_line_endings_header_injection":
        return message(extra="X-One: 1\nX-Two: 2\r\n")
    if kind == "overlong_header_line":
        return message(extra="X-Long: " + "x" * (120 * 1024) + "\r\n")
    if kind == "overlong_header_section":
        return message(extra="".join(f"X-Pad-{n}: {'p' * 990}\r\n" for n in range(300)))
    if kind == "deep_nesting":
        return (head + _nested(40)).encode()
    if kind == "pathological_nesting":
        return (head + _nested(5000)).encode()
    if kind == "too_many_parts":
        parts = "".join(f"--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(600))
        return (head + 'Content-Type: multipart/mixed; boundary="p"\r\n\r\n' + parts + "--p--\r\n").encode()
    if kind == "not_a_message":
        return bytes(range(256)) * 64
    if kind == "huge":
        return message(body="x" * (25 * 1024 * 1024))
    raise AssertionError(kind)


HOSTILE = {
    "bare_cr_header_injection": (400, "malformed_message"),
    "encoded_newline_header_injection": (400, "malformed_message"),
    "mixed_line_endings_header_injection": (400, "malformed_message"),
    "overlong_header_line": (400, "header_line_too_long"),
    "overlong_header_section": (400, "header_section_too_large"),
    "deep_nesting": (400, "message_too_complex"),
    "pathological_nesting": (400, "message_too_complex"),
    "too_many_parts": (400, "message_too_complex"),
    "not_a_message": (400, "malformed_message"),
    "huge": (413, "message_too_large"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_messages_get_a_clear_4xx_and_change_nothing(
    app_host: AppUnderTest, api: requests.Session, crm: str, kind: str
) -> None:
    response = ingest(app_host, api, crm, _hostile(kind))

    assert (response.status_code, response.json()["error"]["code"]) == HOSTILE[kind]
    assert timeline(app_host, api, crm, "cand-dan")["activities"] == []


BAD_ENCODINGS: dict[str, dict[str, Any]] = {
    "undeclared_8bit_header": {"subject": "Caf\udce9"},
    "unknown_charset_encoded_word": {"subject": "=?x-no-such-charset?q?caf=E9?="},
    "broken_base64_encoded_word": {"subject": "=?utf-8?b?###notbase64?="},
    "unknown_body_charset": {"content_type": "text/plain; charset=x-no-such", "body": "caf\udce9 \udcff\udcfe"},
    "invalid_utf8_body": {"body": "caf\udce9 \udcc3("},
    "broken_base64_body": {"extra": "Content-Transfer-Encoding: base64\r\n", "body": "%%%not base64!!\r\n"},
}


@pytest.mark.parametrize("kind", sorted(BAD_ENCODINGS))
def test_bad_encodings_are_decoded_with_replacement_characters_never_a_5xx(
    app_host: AppUnderTest, api: requests.Session, crm: str, kind: str
) -> None:
    response = ingest(app_host, api, crm, message(**BAD_ENCODINGS[kind]))

    assert response.status_code == 201, response.text
    [activity] = timeline(app_host, api, crm, "cand-dan")["activities"]
    assert activity["subject"] and activity["body"] is not None
