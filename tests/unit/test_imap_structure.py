"""BODYSTRUCTURE → text sections and attachment summaries (sync_core/adapters/imap/structure.py), on
structures shaped as IMAPClient parses them (RFC 3501 §7.4.2)."""

from __future__ import annotations

from sync_core.adapters.imap import structure
from sync_core.domain.model import AttachmentSummary


def text(subtype: bytes, size: int = 10, disposition: object = None, charset: bytes = b"utf-8") -> tuple[object, ...]:
    return (b"text", subtype, (b"charset", charset), None, None, b"7bit", size, 1, None, disposition, None, None)


def leaf(maintype: bytes, subtype: bytes, size: int, *, params: tuple[bytes, ...] = (), cid: bytes | None = None,
         disposition: object = None, encoding: bytes = b"base64") -> tuple[object, ...]:  # fmt: skip
    return (maintype, subtype, params or None, cid, None, encoding, size, None, disposition, None, None)


def multipart(subtype: bytes, *parts: tuple[object, ...]) -> tuple[object, ...]:
    return ([*parts], subtype, (b"boundary", b"b"), None, None, None)


def test_a_single_part_message_reads_section_1_and_has_no_attachments() -> None:
    parsed = structure.parse(text(b"plain"))
    assert [x.section for x in parsed.text] == ["1"] and parsed.attachments == ()


def test_alternative_prefers_plain_text_and_mixed_joins_texts_but_not_attachments() -> None:
    body = multipart(
        b"mixed",
        multipart(b"alternative", text(b"plain"), text(b"html")),
        leaf(b"application", b"pdf", 780, params=(b"name", b"offer.pdf"),
             disposition=(b"attachment", (b"filename", b"offer.pdf"))),
        text(b"plain", disposition=(b"attachment", (b"filename", b"notes.txt"))),
    )  # fmt: skip

    parsed = structure.parse(body)

    assert [x.section for x in parsed.text] == ["1.1"]
    assert parsed.attachments == (
        AttachmentSummary("offer.pdf", 570, "application/pdf"),
        AttachmentSummary("notes.txt", 10, "text/plain"),
    )


def test_an_html_only_alternative_reads_the_html_and_inline_images_are_not_attachments() -> None:
    body = multipart(
        b"related",
        multipart(b"alternative", text(b"html")),
        leaf(b"image", b"png", 400, cid=b"<logo@x>", disposition=(b"inline", (b"filename", b"logo.png"))),
    )

    parsed = structure.parse(body)

    assert [(x.section, x.content_type) for x in parsed.text] == [("1.1", "text/html")]
    assert parsed.attachments == ()


def test_rfc2231_file_names_are_decoded_and_nameless_parts_still_count() -> None:
    body = multipart(
        b"mixed",
        text(b"plain"),
        leaf(b"application", b"pdf", 100,
             disposition=(b"attachment", (b"filename*", b"utf-8''Angebot%20M%C3%BCller.pdf"))),
        leaf(b"application", b"octet-stream", 100),
    )  # fmt: skip

    names = [a.name for a in structure.parse(body).attachments]

    assert names == ["Angebot Müller.pdf", "untitled"]


def test_a_structure_it_cannot_read_gives_no_text_and_no_attachments() -> None:
    assert structure.parse(None) == structure.Structure((), ())
    assert structure.parse((b"text",)) == structure.Structure((), ())


def test_file_names_lose_their_path_components_and_encoded_words_are_decoded() -> None:
    body = multipart(
        b"mixed",
        text(b"plain"),
        leaf(b"application", b"pdf", 100, disposition=(b"attachment", (b"filename", b"C:\\Users\\ann\\report.pdf"))),
        leaf(b"text", b"csv", 100, params=(b"name", b"../../etc/passwd")),
        leaf(b"application", b"pdf", 100, params=(b"name", b"=?utf-8?q?Pr=C3=BCfung?= 2026.pdf")),
        leaf(b"application", b"zip", 100, disposition=(b"attachment", (b"filename", b"  a /\\ b.zip "))),
    )

    names = [a.name for a in structure.parse(body).attachments]

    assert names == ["report.pdf", "passwd", "Prüfung 2026.pdf", "b.zip"]
