"""``parse_header_section`` (IMAP's ``BODY[HEADER]``) against ``parse_rfc822`` of the same section followed by
an empty body: the same message, field for field, or the same refusal, on every input; and the common sections
(CRLF lines, all of them header fields) parsed without the stdlib's line machinery."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime

import pytest

from sync_core.domain import mime
from sync_core.domain.mime import MAX_HEADER_LINE_BYTES, MAX_PARTS, parse_header_section, parse_rfc822
from sync_core.domain.model import EmailAddress, MailMessage
from sync_core.errors import InvalidMessage

FALLBACK = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)  # the INTERNALDATE the adapter passes


def section(*lines: str | bytes) -> bytes:
    """A header section as an IMAP server sends it: CRLF lines and the blank line."""
    return b"".join((line.encode() if isinstance(line, str) else line) + b"\r\n" for line in lines) + b"\r\n"


def through_rfc822(raw: bytes) -> MailMessage | str:
    """What the adapter got before: the full parser on the section and an empty body, parts cleared."""
    try:
        message = parse_rfc822(raw.rstrip(b"\r\n") + b"\r\n\r\n", folder="Inbox", received_fallback=FALLBACK)
    except InvalidMessage as exc:
        return f"refused: {exc.code}"
    return dataclasses.replace(
        message, body_text="", body_preview="", body_truncated=False, has_attachments=False, attachments=()
    )


def through_header_section(raw: bytes) -> MailMessage | str:
    try:
        return parse_header_section(raw, folder="Inbox", received_fallback=FALLBACK)
    except InvalidMessage as exc:
        return f"refused: {exc.code}"


def takes_the_fast_path(raw: bytes) -> bool:
    return mime._header_fields(raw.rstrip(b"\r\n") + b"\r\n\r\n") is not None


BASE = (
    "From: Carol Smith <carol@client.example>",
    "To: Adele Vance <adele@contoso.example>",
    "Subject: Contract",
    "Date: Tue, 10 Nov 2026 15:13:07 +0000",
    "Message-ID: <a1@client.example>",
)

# (name, section, whether it is parsed without the stdlib parser)
# fmt: off
TRICKY: list[tuple[str, bytes, bool]] = [
    ("plain", section(*BASE), True),
    ("utf-8 encoded words, B and Q", section(
        "From: =?UTF-8?B?SsO8cmdlbiBNw7xsbGVy?= <jurgen@client.example>",
        "To: =?utf-8?q?Ren=C3=A9_Dupont?= <rene@client.example>",
        "Subject: =?utf-8?Q?R=C3=A9union_=E2=80=93_pr=C3=A9paration?=", *BASE[3:],
    ), True),
    ("iso-8859-1, windows-1252, koi8-r, shift_jis, iso-2022-jp and gb2312 words", section(
        "From: =?iso-8859-1?q?Fran=E7ois?= <francois@client.example>",
        "To: =?windows-1252?Q?=93Quoted=94?= <q@client.example>, =?koi8-r?B?8NLJ18XU?= <p@client.example>",
        "Cc: =?shift_jis?B?k/qWe4zq?= <jp@client.example>, =?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?= <jis@client.example>",
        "Subject: =?gb2312?B?1tDOxA==?= and =?iso-8859-15?q?=A4uro?=", *BASE[3:],
    ), True),
    ("an unknown charset, a broken word and a word split across a fold", section(
        "From: =?x-unknown?q?Who=3F?= <who@client.example>",
        "Subject: =?utf-8?q?broken_=ZZ?= =?utf-8?B?not base64!?=",
        "Comments: =?utf-8?q?first_half_?=",
        " =?utf-8?q?second_half?=", *BASE[3:],
    ), True),
    ("folded address lists and subject, space and tab continuations", section(
        "From: Carol Smith",
        "  <carol@client.example>",
        "To: Adele Vance <adele@contoso.example>,",
        "\tDan <dan@client.example>,",
        "   erin@client.example",
        "Subject: A subject that was",
        "\tfolded twice", " by its mailer", *BASE[3:],
    ), True),
    ("groups and an empty group", section(
        "From: Carol <carol@client.example>",
        "To: Project team: adele@contoso.example, Dan <dan@client.example>;, undisclosed-recipients:;",
        "Cc: Empty:;", *BASE[2:],
    ), True),
    ("quoted display names with commas, escapes and Outlook's single quotes", section(
        'From: "Smith, Carol (Sales)" <carol@client.example>',
        'To: "Vance \\"Adele\\"" <adele@contoso.example>, \'Dan Jones\' <dan@client.example>',
        'Cc: "erin@client.example" <erin@client.example>, <mailto:frank@client.example>', *BASE[2:],
    ), True),
    ("a bad date falls back to the topmost Received", section(
        "Received: from mx by mx2; Mon, 9 Nov 2026 08:00:00 +0100",
        "Received: from a by b; Sun, 8 Nov 2026 08:00:00 +0100",
        *BASE[:3], "Date: the thirty-second of Frimaire", BASE[4],
    ), True),
    ("no date and no Received: the INTERNALDATE", section(*BASE[:3], BASE[4]), True),
    ("an impossible date", section(*BASE[:3], "Date: Tue, 32 Nov 2026 25:61:00 +9999", BASE[4]), True),
    ("no Message-ID: a synthetic one", section(*BASE[:4]), True),
    ("a Message-ID without brackets, several In-Reply-To and References headers", section(
        *BASE[:4], "Message-ID: a2@client.example", "In-Reply-To: <a1@client.example> <a0@client.example>",
        "References: <a0@client.example>", "References: <a1@client.example> <a0@client.example>",
    ), True),
    ("References beyond the limit keep the root and the latest", section(
        *BASE, "References: " + " ".join(f"<r{k}@client.example>" for k in range(150)),
    ), True),
    ("only a Sender", section("Sender: Bot <bot@client.example>", "Subject: s", "Message-ID: <s@x.example>"), True),
    ("From without an address uses Sender", section(
        "From: Somebody", "Sender: Real <real@client.example>", *BASE[1:],
    ), True),
    ("Bcc and Resent-Bcc never kept", section(*BASE, "Bcc: secret@client.example", "Resent-Bcc: x@client.example"),
     True),
    ("a draft and duplicate headers", section(*BASE, "X-Unsent: 1", "Subject: second subject", "X-A: 1", "x-a: 2"),
     True),
    ("raw UTF-8 and Latin-1 bytes, a NUL and control characters", section(
        "From: J\xc3\xbcrgen M\xc3\xbcller <jurgen@client.example>".encode("latin-1"),
        b"To: Fran\xe7ois <francois@client.example>",
        b"Subject: caf\xc3\xa9 \xff\xfe junk \x00 \x07 end", *BASE[3:],
    ), True),
    ("empty and whitespace-only values", section(*BASE, "Subject:", "X-Empty:   \t", "Cc: "), True),
    ("a value starting on the continuation line", section(*BASE[:2], "Subject:", " on the next line", *BASE[3:]), True),
    ("an encoded line break is header injection", section(*BASE[:2], "Subject: =?utf-8?q?a=0D=0ABcc:_x@y?=",
                                                         *BASE[3:]), True),
    ("nothing that makes a message", section("Subject: only a subject", "X-Mailer: something"), True),
    ("multipart and single-part content types", section(
        *BASE, "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="==b=="',
    ), True),
    ("an attachment-like top-level type", section(*BASE, 'Content-Type: application/pdf; name="x.pdf"'), True),
    ("an envelope From line first", section("From carol@client.example Tue Nov 10 15:13:07 2026", *BASE), True),
    # What the fast path leaves to the full parser.
    ("a line that is no header field ends the headers there", section(*BASE[:2], "this line is no field",
                                                                       *BASE[2:]), False),
    ("a From line in the middle", section(*BASE[:2], "From somebody else", *BASE[2:]), False),
    ("a whitespace-only continuation line", section(*BASE[:2], "Subject: x", "   ", *BASE[3:]), False),
    ("a first line that is a continuation", section(" stray", *BASE), False),
    ("a field without a name", section(*BASE, ": nameless"), False),
    ("LF line breaks", "\n".join(BASE).encode() + b"\n\n", False),
    ("a bare CR", section(*BASE[:2], "Subject: a\rBcc: x@y.example", *BASE[3:]), False),
    ("a line over the limit", section(*BASE, "X-Long: " + "x" * MAX_HEADER_LINE_BYTES), False),
    ("an embedded message type", section(*BASE, "Content-Type: message/rfc822"), False),
    ("an RFC 2231 boundary", section(*BASE, "Content-Type: multipart/mixed; boundary*=utf-8''%41%42"), False),
    ("a hostile RFC 2231 boundary", section(*BASE, "Content-Type: multipart/mixed; boundary*=utf\x00''%41"), False),
    ("too many container headers", section(*BASE, *["Content-Type: multipart/mixed"] * (MAX_PARTS + 1)), False),
    ("an empty section", b"\r\n", False),
]
# fmt: on


@pytest.mark.parametrize(("raw", "fast"), [(raw, fast) for _, raw, fast in TRICKY], ids=[n for n, _, _ in TRICKY])
def test_a_header_section_gives_what_the_full_parser_gives_for_it_with_an_empty_body(raw: bytes, fast: bool) -> None:
    assert through_header_section(raw) == through_rfc822(raw)
    assert takes_the_fast_path(raw) is fast


def test_the_tricky_sections_read_as_a_person_would_read_them() -> None:
    messages = {name: through_header_section(raw) for name, raw, _ in TRICKY}

    def message(name: str) -> MailMessage:
        found = messages[name]
        assert isinstance(found, MailMessage), found
        return found

    assert message("utf-8 encoded words, B and Q").sender == EmailAddress("jurgen@client.example", "Jürgen Müller")
    assert message("utf-8 encoded words, B and Q").subject == "Réunion \u2013 préparation"
    charsets = message("iso-8859-1, windows-1252, koi8-r, shift_jis, iso-2022-jp and gb2312 words")
    assert charsets.sender == EmailAddress("francois@client.example", "François")
    assert [p.name for p in charsets.to] == ["“Quoted”", "Привет"]
    assert [p.name for p in charsets.cc] == ["日本語", "日本語"]
    assert charsets.subject == "中文 and €uro"
    folded = message("folded address lists and subject, space and tab continuations")
    assert [p.address for p in folded.to] == ["adele@contoso.example", "dan@client.example", "erin@client.example"]
    assert folded.subject == "A subject that was folded twice by its mailer"
    groups = message("groups and an empty group")
    assert [p.address for p in groups.to] == ["adele@contoso.example", "dan@client.example"] and groups.cc == ()
    quoted = message("quoted display names with commas, escapes and Outlook's single quotes")
    assert quoted.sender == EmailAddress("carol@client.example", "Smith, Carol (Sales)")
    assert [p.name for p in quoted.to] == ['Vance "Adele"', "Dan Jones"]
    assert message("a bad date falls back to the topmost Received").received_at == datetime(2026, 11, 9, 7, tzinfo=UTC)
    assert message("no date and no Received: the INTERNALDATE").received_at == FALLBACK
    assert message("no Message-ID: a synthetic one").internet_message_id.endswith("@ingest.invalid>")
    assert message("References beyond the limit keep the root and the latest").references[:2] == (
        "<r0@client.example>",
        "<r51@client.example>",
    )
    assert message("only a Sender").sender == EmailAddress("bot@client.example", "Bot")
    assert message("From without an address uses Sender").sender == EmailAddress("real@client.example", "Real")
    assert all(name not in ("bcc", "resent-bcc") for name, _ in message("Bcc and Resent-Bcc never kept").headers)
    assert message("a draft and duplicate headers").is_draft
    junk = message("raw UTF-8 and Latin-1 bytes, a NUL and control characters")
    assert junk.sender == EmailAddress("jurgen@client.example", "Jürgen Müller")
    assert junk.to == (EmailAddress("francois@client.example", "Fran\ufffdois"),)
    assert messages["an encoded line break is header injection"] == "refused: malformed"
    assert messages["nothing that makes a message"] == "refused: malformed"
    assert messages["a line over the limit"] == "refused: header_line_too_long"
    assert messages["LF line breaks"] == "refused: malformed"  # the blank line the adapter adds is CRLF


def test_sections_built_at_random_from_awkward_lines_give_what_the_full_parser_gives() -> None:
    pieces: list[bytes] = [
        *(line.encode() for line in BASE),
        b"From: =?utf-8?q?Ren=C3=A9?= <rene@client.example>, bad address, <>",
        b"To: a@x.example, Group: b@x.example;, =?iso-8859-1?q?=E9t=E9?= <c@x.example>",
        b'Cc: "q, r" <qr@x.example>',
        b" continued@x.example",
        b"\tmore text",
        b"Subject: =?utf-8?B?w6k=?= =?utf-8?B?w6k=?= plain",
        b"Date: garbage",
        b"Date: Mon, 9 Nov 2026 08:00:00 -0500",
        b"Received: from a by b; Sun, 8 Nov 2026 08:00:00 +0100",
        b"Message-ID:",
        b"In-Reply-To: <x@y> junk <z@w>",
        b"References: <a@b> <a@b> <c@d>",
        b"Bcc: hidden@x.example",
        b"X-Unsent: 1",
        b"Content-Type: multipart/alternative; boundary=abc",
        b'Content-Type: text/html; charset="koi8-r"',
        b"Subject: caf\xc3\xa9 \xe9\xff",
        b"From something",
        b"not a field",
        b"   ",
        b": nameless",
        b"X-Long: " + b"y" * 300,
        b"Subject: =?utf-8?q?a=0Ab?=",
    ]
    generator = random.Random(20)
    for _ in range(400):
        lines = generator.choices(pieces, k=generator.randint(0, 9))
        raw = b"".join(line + b"\r\n" for line in lines) + b"\r\n"
        assert through_header_section(raw) == through_rfc822(raw), raw


def test_a_section_with_or_without_its_blank_line_is_the_same_message() -> None:
    raw = section(*BASE)

    assert parse_header_section(raw) == parse_header_section(raw.rstrip(b"\r\n")) == parse_header_section(raw + b"\r\n")
