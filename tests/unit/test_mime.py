"""RFC 822 / MIME parsing: bodies, attachments, addresses, ids, dates and the messages that are refused."""

from __future__ import annotations

import contextlib
import random
import sysconfig
from datetime import UTC, datetime
from pathlib import Path
from textwrap import dedent

import pytest

from sync_core.domain.mime import MAX_DEPTH, MAX_HEADER_LINE_BYTES, MAX_HEADER_SECTION_BYTES, MAX_PARTS, parse_rfc822
from sync_core.domain.model import AttachmentSummary, EmailAddress
from sync_core.domain.text import MAX_HTML_CHARS
from sync_core.errors import InvalidMessage, SyncError


def eml(*pieces: str) -> bytes:
    """A message from indented pieces (each dedented, leading newlines dropped), with CRLF line breaks."""
    text = "".join(dedent(piece).lstrip("\n") for piece in pieces)
    return text.replace("\n", "\r\n").encode()


HEADERS = """
    From: "Bob Jones" <Bob@Fabrikam.com>
    To: Alice <alice@contoso.com>, carol@northwind.com
    Cc: =?utf-8?q?Ren=C3=A9?= <rene@example.fr>
    Subject: Interview
    Date: Tue, 07 May 2024 10:15:00 +0200
    Message-ID: <CA+abc123@mail.fabrikam.com>
"""


def simple(body: str = "Hello Alice", headers: str = HEADERS) -> bytes:
    return eml(headers, "Content-Type: text/plain; charset=utf-8\n\n") + body.encode()


def test_a_plain_message_is_parsed_into_a_mail_message() -> None:
    message = parse_rfc822(simple(), folder="Inbox")
    assert message.sender == EmailAddress("bob@fabrikam.com", "Bob Jones")
    assert message.to == (EmailAddress("alice@contoso.com", "Alice"), EmailAddress("carol@northwind.com"))
    assert message.cc == (EmailAddress("rene@example.fr", "René"),)
    assert message.subject == "Interview"
    assert message.internet_message_id == "<CA+abc123@mail.fabrikam.com>"
    assert message.sent_at == datetime(2024, 5, 7, 8, 15, tzinfo=UTC)
    assert message.received_at == message.sent_at
    assert message.body_text == "Hello Alice"
    assert message.body_preview == "Hello Alice"
    assert message.folder == "inbox"
    assert message.source_id.startswith("rfc822:")
    assert not message.is_draft
    assert message.attachments == ()
    assert not message.has_attachments
    assert message.header("Subject") == "Interview"


def test_parsing_is_deterministic() -> None:
    assert parse_rfc822(simple()) == parse_rfc822(simple())


def test_multipart_alternative_prefers_the_plain_text_part() -> None:
    raw = eml(
        HEADERS,
        """
        MIME-Version: 1.0
        Content-Type: multipart/alternative; boundary="alt"

        --alt
        Content-Type: text/plain; charset=utf-8

        Plain version
        --alt
        Content-Type: text/html; charset=utf-8

        <p>HTML <b>version</b></p>
        --alt--
        """,
    )
    assert parse_rfc822(raw).body_text == "Plain version"


def test_an_html_only_message_becomes_plain_text() -> None:
    raw = eml(
        HEADERS,
        """
        Content-Type: text/html; charset=utf-8
        Content-Transfer-Encoding: quoted-printable

        <html><head><style>p {}</style></head><body><p>Hi&nbsp;Alice,</p><p>See you =
        Tuesday.</p></body></html>
        """,
    )
    message = parse_rfc822(raw)
    assert message.body_text == "Hi Alice,\n\nSee you Tuesday."
    assert message.body_preview == "Hi Alice, See you Tuesday."


def test_an_html_body_is_read_up_to_the_html_limit_and_says_when_it_was_cut() -> None:
    def html_message(html: str) -> bytes:
        return eml(HEADERS, "Content-Type: text/html; charset=utf-8\n\n") + html.encode()

    short = parse_rfc822(html_message("<p>Hi Alice</p>"))
    long = parse_rfc822(html_message("<p>Hi Alice</p>" + " " * MAX_HTML_CHARS + "never read"))

    assert (short.body_text, short.body_truncated) == ("Hi Alice", False)
    assert (long.body_text, long.body_truncated) == ("Hi Alice", True)
    assert not parse_rfc822(simple("x" * (MAX_HTML_CHARS + 1))).body_truncated  # plain text is not converted


def test_an_empty_plain_alternative_falls_back_to_the_html_part() -> None:
    raw = eml(
        HEADERS,
        """
        Content-Type: multipart/alternative; boundary="alt"

        --alt
        Content-Type: text/plain

        --alt
        Content-Type: text/html

        <div>Only in HTML</div>
        --alt--
        """,
    )
    assert parse_rfc822(raw).body_text == "Only in HTML"


ATTACHMENTS = (
    HEADERS,
    """
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="mixed"

    --mixed
    Content-Type: multipart/related; boundary="rel"

    --rel
    Content-Type: text/html; charset=utf-8

    <p>Logo: <img src="cid:logo@x"></p>
    --rel
    Content-Type: image/png
    Content-ID: <logo@x>
    Content-Disposition: inline; filename="logo.png"
    Content-Transfer-Encoding: base64

    iVBORw0KGgo=
    --rel--
    --mixed
    Content-Type: application/pdf
    Content-Disposition: attachment; filename*=utf-8''na%C3%AFve%20report.pdf
    Content-Transfer-Encoding: base64

    JVBERi0xLjQK
    --mixed
    Content-Type: application/octet-stream
    Content-Disposition: attachment;
     filename*0*=utf-8''%E2%82%AC%20long%20;
     filename*1*=name.txt
    Content-Transfer-Encoding: base64

    AAECAwQ=
    --mixed
    Content-Type: text/plain; name="=?utf-8?q?r=C3=A9sum=C3=A9.txt?="
    Content-Disposition: attachment

    CV
    --mixed
    Content-Type: image/jpeg
    Content-ID: <photo@x>
    Content-Disposition: attachment; filename="photo.jpg"
    Content-Transfer-Encoding: base64

    /9j/4AAQ
    --mixed
    Content-Type: application/zip
    Content-Transfer-Encoding: base64

    UEsDBAo=
    --mixed--
    """,
)


def test_attachments_are_summarised_with_decoded_names_and_sizes() -> None:
    message = parse_rfc822(eml(*ATTACHMENTS))
    assert message.attachments == (
        AttachmentSummary("naïve report.pdf", 9, "application/pdf"),
        AttachmentSummary("€ long name.txt", 5, "application/octet-stream"),
        AttachmentSummary("résumé.txt", 2, "text/plain"),
        AttachmentSummary("photo.jpg", 6, "image/jpeg"),
        AttachmentSummary("untitled", 5, "application/zip"),
    )
    assert message.has_attachments
    assert message.body_text == "Logo:"


def test_an_inline_image_is_not_an_attachment() -> None:
    names = [attachment.name for attachment in parse_rfc822(eml(*ATTACHMENTS)).attachments]
    assert "logo.png" not in names
    assert "photo.jpg" in names  # an image with a Content-ID that is an attachment is still one


def test_a_forwarded_message_is_one_attachment_named_after_its_subject() -> None:
    raw = eml(
        HEADERS,
        """
        Content-Type: multipart/mixed; boundary="m"

        --m
        Content-Type: text/plain

        See below.
        --m
        Content-Type: message/rfc822

        From: someone@example.org
        Subject: Original offer
        Content-Type: multipart/mixed; boundary="inner"

        --inner
        Content-Type: text/plain

        Inner body
        --inner
        Content-Type: application/pdf; name="inner.pdf"

        x
        --inner--
        --m--
        """,
    )
    message = parse_rfc822(raw)
    assert message.body_text == "See below."
    assert [(a.name, a.content_type) for a in message.attachments] == [("Original offer.eml", "message/rfc822")]
    assert message.attachments[0].size > 0


def test_encoded_word_subjects_and_utf8_headers_are_decoded() -> None:
    headers = HEADERS.replace(
        "Subject: Interview", "Subject: =?utf-8?B?Q2Fmw6kgbWVldGluZw==?=\n     =?utf-8?q?_=E2=98=95?="
    )
    assert parse_rfc822(simple(headers=headers)).subject == "Café meeting ☕"
    raw_utf8 = simple(headers=HEADERS.replace("Subject: Interview", "Subject: Grüße aus Köln"))
    assert parse_rfc822(raw_utf8).subject == "Grüße aus Köln"


def test_folded_headers_are_unfolded() -> None:
    headers = HEADERS.replace("Subject: Interview", "Subject: A very long\n     subject line")
    assert parse_rfc822(simple(headers=headers)).subject == "A very long subject line"


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/plain; charset=x-no-such-charset", b"caf\xc3\xa9", "café"),
        ("text/plain; charset=utf-8", b"caf\xe9 ok", "caf\ufffd ok"),
        ("text/plain", b"caf\xe9", "café"),  # undeclared 8-bit text: Windows-1252
        ("text/plain", b"caf\xc3\xa9", "café"),  # undeclared 8-bit text: UTF-8 first
        ("text/plain; charset=iso-8859-1", b"caf\xe9", "café"),
        ('text/plain; charset="base64"', b"abc", "abc"),  # a codec that is not a text encoding
    ],
)
def test_broken_or_missing_charsets_are_replaced_never_raised(content_type: str, body: bytes, expected: str) -> None:
    raw = eml(HEADERS + f"    Content-Type: {content_type}\n    Content-Transfer-Encoding: 8bit\n")
    assert parse_rfc822(raw + b"\r\n" + body).body_text == expected


def test_a_bcc_header_is_ignored_entirely() -> None:
    headers = (
        HEADERS + "    Bcc: secret@hidden.example, Boss <boss@contoso.com>\n    Resent-Bcc: other@hidden.example\n"
    )
    message = parse_rfc822(simple(headers=headers))
    assert all("hidden.example" not in party.address for party in message.participants)
    assert "boss@contoso.com" not in [party.address for party in message.participants]
    assert message.header("bcc") is None
    assert message.header("resent-bcc") is None
    assert all("hidden" not in value for _, value in message.headers)


def test_reply_ids_are_parsed_from_in_reply_to_and_references() -> None:
    headers = HEADERS + (
        "    In-Reply-To: <parent@fabrikam.com> (Bob's message)\n"
        "    References: <root@fabrikam.com>\n     <middle@contoso.com> <parent@fabrikam.com>\n"
    )
    message = parse_rfc822(simple(headers=headers))
    assert message.in_reply_to == "<parent@fabrikam.com>"
    assert message.references == ("<root@fabrikam.com>", "<middle@contoso.com>", "<parent@fabrikam.com>")


def test_a_huge_references_header_keeps_the_thread_root_and_the_latest_ids() -> None:
    ids = " ".join(f"<m{i}@x>" for i in range(300))
    message = parse_rfc822(simple(headers=HEADERS + f"    References: {ids}\n"))
    assert len(message.references) == 100
    assert message.references[0] == "<m0@x>"
    assert message.references[-1] == "<m299@x>"


@pytest.mark.parametrize(
    ("value", "expected"), [("  <abc@x.com>  ", "<abc@x.com>"), ("abc@x.com", "<abc@x.com>"), ("<a@x> <b@y>", "<a@x>")]
)
def test_the_message_id_is_normalised(value: str, expected: str) -> None:
    headers = HEADERS.replace("Message-ID: <CA+abc123@mail.fabrikam.com>", f"Message-ID: {value}")
    assert parse_rfc822(simple(headers=headers)).internet_message_id == expected


NO_ID = HEADERS.replace("    Message-ID: <CA+abc123@mail.fabrikam.com>\n", "")


def test_a_missing_message_id_is_synthesised_from_the_content() -> None:
    message_id = parse_rfc822(simple(headers=NO_ID)).internet_message_id
    assert message_id.startswith("<")
    assert message_id.endswith("@ingest.invalid>")
    assert len(message_id) == len("<@ingest.invalid>") + 64


def test_a_synthesised_message_id_is_the_same_whatever_the_line_endings_or_transport_headers() -> None:
    crlf = parse_rfc822(simple(headers=NO_ID)).internet_message_id
    lf = parse_rfc822(simple(headers=NO_ID).replace(b"\r\n", b"\n")).internet_message_id
    relayed = parse_rfc822(
        b"Received: from relay.example by mx.contoso.com; Tue, 7 May 2024 08:16:00 +0000\r\n" + simple(headers=NO_ID)
    )
    assert crlf == lf == relayed.internet_message_id


def test_different_messages_without_ids_get_different_ids() -> None:
    one = parse_rfc822(simple("Body one", headers=NO_ID)).internet_message_id
    two = parse_rfc822(simple("Body two", headers=NO_ID)).internet_message_id
    assert one != two


def test_without_a_date_the_topmost_received_header_gives_the_times() -> None:
    no_date = HEADERS.replace("    Date: Tue, 07 May 2024 10:15:00 +0200\n", "")
    raw = (
        b"Received: from a by b; Tue, 7 May 2024 08:20:00 +0000\r\n"
        b"Received: from c by a; Tue, 7 May 2024 08:16:00 +0000\r\n" + simple(headers=no_date)
    )
    message = parse_rfc822(raw)
    assert message.sent_at is None
    assert message.received_at == datetime(2024, 5, 7, 8, 20, tzinfo=UTC)


def test_without_any_date_the_callers_fallback_is_used_or_the_message_refused() -> None:
    no_date = HEADERS.replace("    Date: Tue, 07 May 2024 10:15:00 +0200\n", "    Date: not a date\n")
    uploaded = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_rfc822(simple(headers=no_date), received_fallback=uploaded).received_at == uploaded
    with pytest.raises(InvalidMessage) as refused:
        parse_rfc822(simple(headers=no_date))
    assert refused.value.code == "malformed"


def test_an_outlook_unsent_message_is_a_draft() -> None:
    assert parse_rfc822(simple(headers=HEADERS + "    X-Unsent: 1\n")).is_draft


def test_bulk_headers_are_kept_for_the_pipeline_even_after_hundreds_of_others() -> None:
    noise = "".join(f"    X-Noise-{i}: {i}\n" for i in range(400))
    message = parse_rfc822(simple(headers=HEADERS + noise + "    List-Unsubscribe: <mailto:u@x.com>\n"))
    assert message.header("list-unsubscribe") == "<mailto:u@x.com>"
    assert len(message.headers) == 300
    assert all(len(value) <= 4000 for _, value in message.headers)


def test_header_values_are_capped_in_length() -> None:
    folded = "y" * 5_000 + "\n" + "      " + "y" * 5_000  # two physical lines, each within the line limit
    message = parse_rfc822(simple(headers=HEADERS + "    X-Long: " + folded + "\n"))
    assert len(message.header("x-long") or "") == 4000


# --- refused messages ---------------------------------------------------------------------------------


def refused(raw: bytes, **kwargs: int) -> str:
    with pytest.raises(InvalidMessage) as error:
        parse_rfc822(raw, **kwargs)  # type: ignore[arg-type]
    assert isinstance(error.value, SyncError)
    return error.value.code


def test_an_oversize_message_is_refused() -> None:
    raw = simple("x" * 2000)
    assert refused(raw, max_bytes=1000) == "too_large"
    assert parse_rfc822(raw, max_bytes=len(raw)).body_text.startswith("xxx")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\r\n\r\n", b"just some text\r\n", b"\x00\xff\xfe garbage", b"Subject: hi\r\nTo: a@example.com\r\n\r\nx"],
)
def test_something_that_is_not_a_message_is_refused_as_malformed(raw: bytes) -> None:
    with pytest.raises(InvalidMessage) as error:
        parse_rfc822(raw, received_fallback=datetime(2024, 6, 1, tzinfo=UTC))
    assert error.value.code == "malformed"
    assert "not a message" in str(error.value)


def test_an_encoded_line_break_in_a_header_is_refused_as_header_injection() -> None:
    headers = HEADERS.replace("Subject: Interview", "Subject: =?utf-8?q?hello=0D=0ABcc:_victim@example.com?=")
    assert refused(simple(headers=headers)) == "malformed"


def test_a_bare_carriage_return_in_the_headers_is_refused_as_header_injection() -> None:
    raw = simple().replace(b"Subject: Interview\r\n", b"Subject: Interview\rBcc: victim@example.com\r\n")
    assert refused(raw) == "malformed"


def test_mixed_line_endings_in_the_headers_are_refused_as_header_injection() -> None:
    raw = simple().replace(b"Subject: Interview\r\n", b"Subject: Interview\nCc: victim@example.com\r\n")
    assert refused(raw) == "malformed"


def with_header(line: str, raw: bytes | None = None) -> bytes:
    """``simple()`` (or ``raw``) with ``line`` (CRLF added) inserted before its Subject header."""
    return (raw or simple()).replace(b"Subject: Interview\r\n", line.encode() + b"\r\nSubject: Interview\r\n")


def test_a_120_kb_header_line_is_refused_naming_the_limit_never_the_header() -> None:
    with pytest.raises(InvalidMessage) as error:
        parse_rfc822(with_header("X-Payload: " + "secret-" * (120 * 1024 // 7)))

    assert (error.value.code, error.value.limit) == ("header_line_too_long", MAX_HEADER_LINE_BYTES)
    assert str(MAX_HEADER_LINE_BYTES) in str(error.value) and "secret" not in str(error.value)


def test_header_lines_count_one_physical_line_at_a_time_up_to_the_limit() -> None:
    name = "X-Long: "
    at_limit = name + "y" * (MAX_HEADER_LINE_BYTES - len(name))
    folded = "\r\n ".join([at_limit] + [" " + "z" * (MAX_HEADER_LINE_BYTES - 2)] * 3)  # 4 lines of the limit

    assert (parse_rfc822(with_header(at_limit)).header("x-long") or "").startswith("yyy")
    assert parse_rfc822(with_header(folded)).subject == "Interview"
    assert refused(with_header(at_limit + "y")) == "header_line_too_long"
    assert refused(with_header(folded + "z")) == "header_line_too_long"


def test_a_long_body_line_after_headers_without_a_blank_line_is_body_not_a_header() -> None:
    # No blank line: the parser ends the headers at the first line that is not a header field.
    raw = simple().replace(b"\r\n\r\nHello Alice", b"\r\n<p>" + b"w" * MAX_HEADER_LINE_BYTES + b"</p>")
    assert parse_rfc822(raw).subject == "Interview"


def test_a_long_header_line_in_a_mime_part_is_refused_too() -> None:
    def multipart(part_header: str) -> bytes:
        return eml(HEADERS, 'Content-Type: multipart/mixed; boundary="b"\n\n--b\n', part_header + "\n\nhello\n--b--\n")

    assert parse_rfc822(multipart('Content-Type: text/plain; x-note="short"')).body_text == "hello"
    assert refused(multipart('Content-Type: text/plain; x-note="' + "n" * MAX_HEADER_LINE_BYTES + '"')) == (
        "header_line_too_long"
    )


def test_a_header_section_over_the_limit_is_refused_even_when_each_line_is_short() -> None:
    lines = MAX_HEADER_SECTION_BYTES // 1000 + 1
    raw = with_header("\r\n".join(f"X-Pad-{n:04}: " + "p" * 990 for n in range(lines)))

    with pytest.raises(InvalidMessage) as error:
        parse_rfc822(raw)
    assert (error.value.code, error.value.limit) == ("header_section_too_large", MAX_HEADER_SECTION_BYTES)
    assert parse_rfc822(with_header("\r\n".join(f"X-Pad-{n:04}: " + "p" * 990 for n in range(200)))).subject


def test_lf_only_messages_and_mixed_endings_in_the_body_are_fine() -> None:
    assert parse_rfc822(simple().replace(b"\r\n", b"\n")).subject == "Interview"
    assert parse_rfc822(simple("line one\nline two\r\nline three")).body_text == "line one\nline two\nline three"


def nested(levels: int) -> bytes:
    body = "Content-Type: text/plain\n\ninnermost\n"
    for level in range(levels):
        body = f'Content-Type: multipart/mixed; boundary="b{level}"\n\n--b{level}\n{body}\n--b{level}--\n'
    return eml(HEADERS, body)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert parse_rfc822(nested(MAX_DEPTH)).body_text == "innermost"


def test_nesting_deeper_than_the_limit_is_refused_as_too_complex() -> None:
    assert refused(nested(MAX_DEPTH + 1)) == "too_complex"


def test_pathological_nesting_is_refused_before_parsing() -> None:
    assert refused(nested(3000)) == "too_complex"


def test_more_parts_than_the_limit_are_refused_as_too_complex() -> None:
    parts = "".join(f"--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(MAX_PARTS))
    raw = eml(HEADERS + '    Content-Type: multipart/mixed; boundary="p"\n') + b"\r\n" + parts.encode() + b"--p--\r\n"
    assert refused(raw) == "too_complex"


HOSTILE_TOKENS = [
    *(b"=?utf-8?q?", b"?=", b"\r", b"\n", b"--", b"boundary=", b"filename*0*=", b"''", b"%", b";", b'"'),
    *(b"charset=", b"\xff", b"\x00", b"message/rfc822", b"Content-Transfer-Encoding: base64\r\n"),
]


def test_damaged_messages_never_raise_anything_but_invalid_message() -> None:
    rng = random.Random(822)
    base = eml(*ATTACHMENTS)
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 20)):
            position = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[position] = rng.randrange(256)
            else:
                data[position:position] = rng.choice(HOSTILE_TOKENS)
        for raw in (bytes(data), bytes(data[: rng.randrange(len(data))])):
            with contextlib.suppress(InvalidMessage):
                parse_rfc822(raw)


# The email test corpus CPython installs with its own test suite (present in this project's Python build).
CPYTHON_EMAIL_DATA = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"


def test_every_message_of_the_cpython_email_test_corpus_parses_or_is_refused_cleanly() -> None:
    samples = sorted(CPYTHON_EMAIL_DATA.glob("msg_*.txt"))
    assert len(samples) > 40
    parsed = 0
    for sample in samples:
        try:
            message = parse_rfc822(sample.read_bytes())
        except InvalidMessage as error:
            assert error.code in ("malformed", "too_complex", "too_large"), sample.name
            continue
        parsed += 1
        assert message.internet_message_id.startswith("<"), sample.name
        assert all("\n" not in value and "\r" not in value for _, value in message.headers), sample.name
    assert parsed > len(samples) // 2
