"""RFC 822 / MIME messages (``.eml`` uploads) to ``MailMessage``, with the stdlib ``email`` package.

The structure is parsed with a ``compat32`` policy, whose header access never raises, returning raw header
values; each value is then decoded here: raw 8-bit bytes as UTF-8, RFC 2047 encoded words with the modern
(``email.policy.default``) decoder, falling back to the compat32 decoder when that one gives up (see
``text.decode_encoded_words``). Nothing is ever decompressed or executed.

Invariants of the result:
- Bcc and Resent-Bcc headers are ignored entirely: not parsed, not kept, never participants.
- No kept header value contains CR or LF (a message whose headers would is refused as header injection).
- ``internet_message_id`` is ``<...>``; a message without one gets ``<sha256@ingest.invalid>``, a hash of
  its From/To/Cc/Date/Subject and plain-text body, so the same message (whatever its line endings or
  transport headers) always gets the same id and so the same activity.
- Every header section (the message's, its MIME parts' and embedded messages') has physical lines of at most
  ``MAX_HEADER_LINE_BYTES`` and at most ``MAX_HEADER_SECTION_BYTES`` in all; a message with a longer one is
  refused (``header_line_too_long``, ``header_section_too_large``). RFC 5322 §2.1.1 caps lines at 998
  characters; folded (continued) lines count one physical line each.
- ``received_at`` is deterministic: the Date header, else the topmost Received header's date, else the
  caller's ``received_fallback``; with none of these the message is refused.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import Compat32
from email.utils import collapse_rfc2231_value, parsedate_to_datetime
from typing import Any

from sync_core.domain.addresses import parse_address_list
from sync_core.domain.model import AttachmentSummary, EmailAddress, MailMessage
from sync_core.domain.text import decode_encoded_words, html_text, preview
from sync_core.errors import InvalidMessage

MAX_MESSAGE_BYTES = 25 * 1024 * 1024
MAX_DEPTH = 20  # multipart / message nesting levels below the top-level message
MAX_PARTS = 500  # MIME parts in the whole tree, embedded messages included
MAX_HEADERS = 300  # headers kept on the MailMessage (the ones the pipeline reads are always kept)
MAX_HEADER_CHARS = 4000  # characters kept of one header value
MAX_REFERENCES = 100  # message ids kept from References: the first (thread root) and the latest ones
# One physical header line, its line break not counted: 8 times RFC 5322's 998 characters, room for mailers
# that do not fold (long To lists, DKIM signatures).
MAX_HEADER_LINE_BYTES = 8 * 1024
# One header section, line breaks counted: Exchange Online's "message header size limit" (256 KB; Exchange
# Online limits, learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/
# exchange-online-limits, message limits).
MAX_HEADER_SECTION_BYTES = 256 * 1024

_IGNORED_HEADERS = frozenset({"bcc", "resent-bcc"})
_PIPELINE_HEADERS = frozenset(
    {"list-unsubscribe", "list-id", "precedence", "auto-submitted", "x-auto-response-suppress", "message-id",
     "in-reply-to", "references", "from", "to", "cc", "sender", "subject", "date"}
)  # fmt: skip
# What the stdlib MIME parameter helpers (RFC 2231 decoding included) raise on hostile values.
_PARAMETER_ERRORS = (LookupError, ValueError, TypeError)
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# Container headers, counted before parsing so that a pathological nesting never reaches the parser.
# What the stdlib parser takes for a header line (``email.feedparser.headerRE``); any other line ends the headers.
_HEADER_OR_CONTINUATION = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
_CONTAINER_HEADER = re.compile(rb"(?:^|[\r\n])content-type:\s*(?:multipart|message)/", re.IGNORECASE)
# A field as the stdlib parser reads it from CRLF lines: a non-empty name (``headerRE``) ending at the first colon,
# the blanks after it dropped, then continuation lines (a space or tab, then something that is not blank); a
# section is such fields and the blank line. Anything else (a blank continuation line, which the limits of
# ``_refuse_unsafe_header_lines`` would not count; a line that would end the headers) is the full parser's.
_FIELD = re.compile(rb"([\041-\071\073-\176]+):[ \t]*([^\r\n]*(?:\r\n[ \t]+[^ \t\r\n][^\r\n]*)*)\r\n")
_FIELDS = re.compile(rb"(?:[\041-\071\073-\176]+:[^\r\n]*\r\n(?:[ \t]+[^ \t\r\n][^\r\n]*\r\n)*)*\r\n")
_ADDRESS_HEADERS = frozenset({"from", "sender", "to", "cc"})
# Pure functions of a header value, memoised for ``parse_header_section`` (correspondents and subjects repeat
# from message to message): values of up to _CACHED_VALUE_CHARS characters, _CACHE_ENTRIES of each.
_CACHED_VALUE_CHARS = 2048
_CACHE_ENTRIES = 8192


class _RawHeaderPolicy(Compat32):
    """compat32, except that header values are returned exactly as received (8-bit bytes kept as surrogate
    escapes) instead of as ``Header`` objects that turn raw UTF-8 into U+FFFD; decoding happens in ``_unfold``."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


_POLICY = _RawHeaderPolicy()


def parse_rfc822(
    raw: bytes,
    *,
    folder: str = "inbox",
    max_bytes: int = MAX_MESSAGE_BYTES,
    received_fallback: datetime | None = None,
) -> MailMessage:
    """Parse one RFC 822 message. Raises ``InvalidMessage`` (and nothing else) when it cannot be accepted.

    The body is the text/plain part, else the text of the text/html part (within ``multipart/alternative``
    plain text wins unless it is empty); undecodable bytes and unknown charsets become U+FFFD. Attachments
    are summarised by name, decoded size and content type; inline images (image parts with a Content-ID
    that are not ``attachment``) are left out. ``received_fallback`` is used only for a message with
    neither a Date nor a parseable Received header (e.g. the upload time).
    """
    if len(raw) > max_bytes:
        raise InvalidMessage("too_large", f"message is {len(raw)} bytes, the limit is {max_bytes}", limit=max_bytes)
    _refuse_unsafe_header_lines(raw)
    if len(_CONTAINER_HEADER.findall(raw)) > MAX_PARTS:
        raise InvalidMessage("too_complex", f"more than {MAX_PARTS} multipart/message parts")
    try:
        message = BytesParser(policy=_POLICY).parsebytes(raw)
    except Exception as exc:  # the stdlib parser can fail in many ways on hostile input (e.g. a bad boundary)
        raise InvalidMessage("malformed", f"unparseable MIME structure: {exc}") from exc
    _check_structure(message)

    headers = _decoded_headers(message)
    first = _first_values(headers)
    if not ({"from", "sender", "message-id", "date"} & first.keys()):
        raise InvalidMessage("malformed", "not a message: no From, Message-ID or Date header")

    sender = _sender(message)
    to, cc = _addresses(message, "to"), _addresses(message, "cc")
    subject = " ".join(first.get("subject", "").split())
    sent_at = _parse_date(first.get("date"))
    body, body_truncated = _body_text(message) or ("", False)
    message_id = _normalize_message_id(first.get("message-id", "")) or _synthetic_message_id(
        _address_of(sender), _addresses_of(to), _addresses_of(cc), first.get("date", ""), subject, body
    )
    references = _message_ids(" ".join(value for name, value in headers if name == "references"))
    attachments = tuple(_attachments(message))
    return MailMessage(
        source_id="rfc822:" + hashlib.sha256(raw).hexdigest()[:32],
        internet_message_id=message_id,
        subject=subject,
        sender=sender,
        to=to,
        cc=cc,
        received_at=_received_at(sent_at, headers, received_fallback),
        sent_at=sent_at,
        body_text=body,
        body_preview=preview(body),
        body_truncated=body_truncated,
        folder=folder.strip().lower(),
        is_draft=first.get("x-unsent", "").strip() == "1",
        has_attachments=bool(attachments),
        headers=_kept_headers(headers),
        in_reply_to=next(iter(_message_ids(first.get("in-reply-to", ""))), None),
        references=_bounded_references(references),
        attachments=attachments,
    )


def parse_header_section(
    section: bytes, *, folder: str = "inbox", received_fallback: datetime | None = None
) -> MailMessage:
    """The message a header section alone describes (IMAP's ``BODY[HEADER]``): every field as ``parse_rfc822``
    gives it for the section followed by an empty body (``section`` with its trailing line breaks replaced by one
    blank line: the same bytes, the same ``InvalidMessage``), except that the body and attachment fields are
    always empty (a header section has no parts); raises ``InvalidMessage`` and nothing else.

    The same rules at a fraction of the cost: a section of CRLF lines that are all header fields (what IMAP
    servers send) is split here by the stdlib parser's own rules (``email.feedparser``: a field starts with a
    name and a colon, continues on lines starting with a space or a tab, a first ``From `` line is the envelope)
    instead of through ``email``'s line machinery, and nothing looks for parts; address lists and encoded words
    are decoded by the same functions, memoised per value. Any other section (a line the parser would take for
    the start of the body, bare CR or LF line breaks, a misplaced ``From `` line, a line or section over the
    limits, more container headers than ``MAX_PARTS``, RFC 2231 parameters on a container type) goes through
    ``parse_rfc822`` itself.
    """
    return MailMessage(**header_section_fields(section, folder=folder, received_fallback=received_fallback))


def header_section_fields(
    section: bytes, *, folder: str = "inbox", received_fallback: datetime | None = None
) -> dict[str, Any]:
    """``parse_header_section``'s message as ``MailMessage`` keyword arguments (the body and attachment fields
    left to their empty defaults), for a caller that sets some fields of its own: the message is then built
    once. Raises ``InvalidMessage`` and nothing else."""
    raw = section.rstrip(b"\r\n") + b"\r\n\r\n"
    fields = _header_fields(raw)
    if fields is None:
        message = parse_rfc822(raw, folder=folder, received_fallback=received_fallback)
        skipped = ("body_text", "body_preview", "body_truncated", "has_attachments", "attachments")
        return {name: value for name, value in vars(message).items() if name not in skipped}
    headers = []
    addresses: dict[str, list[str]] = {}
    for name, value in fields:
        if name in _IGNORED_HEADERS:
            continue
        text = value.replace(b"\r\n", b"").decode("utf-8", "replace")  # what ``_unfold`` gives
        if name in _ADDRESS_HEADERS:
            addresses.setdefault(name, []).append(text)
        if "=?" in text:
            text = _cached_words(text) if len(text) <= _CACHED_VALUE_CHARS else decode_encoded_words(text)
        text = text.strip()
        if "\r" in text or "\n" in text:
            raise InvalidMessage("malformed", f"line break inside the {name} header (header injection)")
        headers.append((name, text))
    first = _first_values(headers)
    if not ({"from", "sender", "message-id", "date"} & first.keys()):
        raise InvalidMessage("malformed", "not a message: no From, Message-ID or Date header")
    sender = next(iter(_address_list(addresses.get("from")) or _address_list(addresses.get("sender"))), None)
    to, cc = _address_list(addresses.get("to")), _address_list(addresses.get("cc"))
    subject = " ".join(first.get("subject", "").split())
    sent_at = _parse_date(first.get("date"))
    message_id = _normalize_message_id(first.get("message-id", "")) or _synthetic_message_id(
        _address_of(sender), _addresses_of(to), _addresses_of(cc), first.get("date", ""), subject, ""
    )
    references = _message_ids(" ".join(value for name, value in headers if name == "references"))
    return {
        "source_id": "rfc822:" + hashlib.sha256(raw).hexdigest()[:32],
        "internet_message_id": message_id,
        "subject": subject,
        "sender": sender,
        "to": to,
        "cc": cc,
        "received_at": _received_at(sent_at, headers, received_fallback),
        "sent_at": sent_at,
        "folder": folder.strip().lower(),
        "is_draft": first.get("x-unsent", "").strip() == "1",
        "headers": _kept_headers(headers)
        if len(headers) > MAX_HEADERS
        else tuple((name, value[:MAX_HEADER_CHARS]) for name, value in headers),  # what _kept_headers keeps then
        "in_reply_to": next(iter(_message_ids(first.get("in-reply-to", ""))), None),
        "references": _bounded_references(references),
    }


def _header_fields(raw: bytes) -> list[tuple[str, bytes]] | None:
    """(lower-case name, raw value) of every field of ``raw`` (a header section and its blank line) as the stdlib
    parser with ``_RawHeaderPolicy`` gives them (the value without the blanks after the colon, folding CRLFs kept,
    as bytes), or None when the section is not one ``parse_header_section`` takes by itself (see there).

    What this accepts, ``parse_rfc822`` accepts too: CRLF line breaks only (so no bare CR and no mixed line
    endings), every line at most ``MAX_HEADER_LINE_BYTES`` and the section within ``MAX_HEADER_SECTION_BYTES``;
    the per-part header limits of ``_check_structure`` then hold as well (a field's lines are the raw lines, the
    blanks after its colon removed), and nothing of the section is read as a body, so the body is empty."""
    if len(raw) > MAX_HEADER_SECTION_BYTES:
        return None
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        return None  # a bare CR or LF
    if len(raw) > MAX_HEADER_LINE_BYTES and max(map(len, raw.split(b"\r\n"))) > MAX_HEADER_LINE_BYTES:
        return None
    body = raw[raw.index(b"\r\n") + 2 :] if raw.startswith(b"From ") else raw  # the mbox envelope line
    if _FIELDS.fullmatch(body) is None:
        return None  # the parser would end the headers early, or drop a line
    if raw.count(b":") > MAX_PARTS and len(_CONTAINER_HEADER.findall(raw)) > MAX_PARTS:
        return None
    fields = [(name.lower().decode("ascii"), value) for name, value in _FIELD.findall(body)]
    content_type = next((value.lower() for name, value in fields if name == "content-type"), b"")
    if b"message/" in content_type or (b"multipart/" in content_type and b"*" in content_type):
        return None  # the parser would parse an embedded message, or decode an RFC 2231 boundary
    return fields


def _address_list(values: list[str] | None) -> tuple[EmailAddress, ...]:
    """``parse_address_list`` of unfolded values, memoised."""
    if not values:
        return ()
    if sum(map(len, values)) <= _CACHED_VALUE_CHARS:
        return _cached_address_list(tuple(values))
    return parse_address_list(values)


_cached_words = functools.lru_cache(maxsize=_CACHE_ENTRIES)(decode_encoded_words)
_cached_address_list = functools.lru_cache(maxsize=_CACHE_ENTRIES)(parse_address_list)


def _refuse_unsafe_header_lines(raw: bytes) -> None:
    """The top-level header block, byte by byte, before it reaches the parser: header injection (a bare CR, or
    LF-only lines mixed with CRLF lines, would let one header value smuggle in another header, as the parser
    splits lines on either), physical lines over ``MAX_HEADER_LINE_BYTES`` and a block over
    ``MAX_HEADER_SECTION_BYTES``. The sizes are measured up to where the parser ends the headers: the blank line,
    or (in a message without one) the first line that is neither a header field nor a continuation."""
    endings: set[bytes] = set()
    section = 0
    in_headers = True
    for line in io.BytesIO(raw):  # splits on LF only, so a bare CR stays inside its line
        content = line.removesuffix(b"\n")
        if line.endswith(b"\n"):
            endings.add(b"\r\n" if content.endswith(b"\r") else b"\n")
            content = content.removesuffix(b"\r")
        in_headers = in_headers and _HEADER_OR_CONTINUATION.match(content) is not None
        if in_headers:
            _check_header_line(len(content))
            section += len(line)
            _check_header_section(section)
        if b"\r" in content:
            raise InvalidMessage("malformed", "bare CR in the header block (header injection)")
        if len(endings) > 1:
            raise InvalidMessage("malformed", "mixed CRLF and LF line endings in the header block (header injection)")
        if not content.strip(b" \t"):
            return  # the blank line that ends the headers


def _check_header_line(length: int) -> None:
    if length > MAX_HEADER_LINE_BYTES:
        raise InvalidMessage(
            "header_line_too_long",
            f"a header line is longer than {MAX_HEADER_LINE_BYTES} bytes (RFC 5322 allows 998 characters)",
            limit=MAX_HEADER_LINE_BYTES,
        )


def _check_header_section(size: int) -> None:
    if size > MAX_HEADER_SECTION_BYTES:
        raise InvalidMessage(
            "header_section_too_large",
            f"a header section is larger than {MAX_HEADER_SECTION_BYTES} bytes",
            limit=MAX_HEADER_SECTION_BYTES,
        )


def _check_part_headers(part: Message) -> None:
    """The header limits on a parsed part (MIME parts and embedded messages have header sections of their own).
    A raw value keeps its folding line breaks, so each physical line is measured; the first one with its
    ``Name:`` (the space after the colon, which the parser strips, not counted)."""
    section = 0
    for name, value in part.items():
        lines = _LINE_BREAK.split(str(value))
        _check_header_line(max([len(name) + 1 + len(lines[0]), *map(len, lines[1:])]))
        section += len(name) + 1 + len(str(value)) + 2
        _check_header_section(section)


def _check_structure(message: Message) -> None:
    """Refuse trees deeper than MAX_DEPTH or with more than MAX_PARTS parts (embedded messages included), and
    header sections over the header limits."""
    stack: list[tuple[Message, int]] = [(message, 0)]
    parts = 0
    while stack:
        part, depth = stack.pop()
        parts += 1
        _check_part_headers(part)
        if depth > MAX_DEPTH:
            raise InvalidMessage("too_complex", f"MIME structure nested deeper than {MAX_DEPTH} levels")
        if parts > MAX_PARTS:
            raise InvalidMessage("too_complex", f"more than {MAX_PARTS} MIME parts")
        stack.extend((child, depth + 1) for child in _children(part))


def _children(part: Message) -> list[Message]:
    if not part.is_multipart():  # asking a leaf for its payload would try to decode it
        return []
    return [child for child in part.get_payload() if isinstance(child, Message)]


def _decoded_headers(message: Message) -> list[tuple[str, str]]:
    """(lower-case name, unfolded and decoded value) of every header but Bcc, in order.

    Raises ``InvalidMessage`` when a decoded value contains CR or LF (an encoded-word header injection).
    """
    decoded = []
    for name, raw_value in message.items():
        lower = name.strip().lower()
        if lower in _IGNORED_HEADERS:
            continue
        value = decode_encoded_words(_unfold(raw_value)).strip()
        if "\r" in value or "\n" in value:
            raise InvalidMessage("malformed", f"line break inside the {lower} header (header injection)")
        decoded.append((lower, value))
    return decoded


def _unfold(raw_value: str) -> str:
    """Remove folding line breaks and restore raw 8-bit (UTF-8) header bytes the parser kept as escapes."""
    text = _LINE_BREAK.sub("", str(raw_value))
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _first_values(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name, value)
    return first


def _kept_headers(headers: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """At most MAX_HEADERS headers in message order, the ones the pipeline reads first; values capped."""
    ranked = sorted(range(len(headers)), key=lambda index: headers[index][0] not in _PIPELINE_HEADERS)
    kept = sorted(ranked[:MAX_HEADERS])
    return tuple((headers[index][0], headers[index][1][:MAX_HEADER_CHARS]) for index in kept)


def _addresses(message: Message, name: str) -> tuple[EmailAddress, ...]:
    return parse_address_list([_unfold(value) for value in message.get_all(name, [])])


def _sender(message: Message) -> EmailAddress | None:
    """First From address; the Sender header only when there is no usable From."""
    return next(iter(_addresses(message, "from") or _addresses(message, "sender")), None)


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _received_at(sent_at: datetime | None, headers: Sequence[tuple[str, str]], fallback: datetime | None) -> datetime:
    if sent_at is not None:
        return sent_at
    topmost = next((value for name, value in headers if name == "received"), "")
    received = _parse_date(topmost.rpartition(";")[2]) if ";" in topmost else None
    if received is not None:
        return received
    if fallback is not None:
        return fallback.replace(tzinfo=UTC) if fallback.tzinfo is None else fallback.astimezone(UTC)
    raise InvalidMessage("malformed", "message has no parseable Date or Received header")


def _message_ids(value: str) -> tuple[str, ...]:
    """The ``<...>`` tokens of a Message-ID/In-Reply-To/References value, without repeats, in order."""
    return tuple(dict.fromkeys(_MESSAGE_ID.findall(value)))


def _normalize_message_id(value: str) -> str | None:
    """``<id>`` from a Message-ID value: its first ``<...>`` token, else the whole value (spaces removed)."""
    ids = _message_ids(value)
    if ids:
        return ids[0]
    token = "".join(value.split()).strip("<>")
    return f"<{token}>" if token else None


def _address_of(party: EmailAddress | None) -> str:
    return party.address if party else ""


def _addresses_of(parties: Sequence[EmailAddress]) -> str:
    return ",".join(party.address for party in parties)


def _synthetic_message_id(*fields: str) -> str:
    """``<sha256@ingest.invalid>`` of the given fields, each with its whitespace normalised (trailing spaces
    and CRLF versus LF never change the id)."""
    canonical = ("\n".join(" ".join(line.split()) for line in value.splitlines()) for value in fields)
    return f"<{hashlib.sha256(chr(0).join(canonical).encode()).hexdigest()}@ingest.invalid>"


def _bounded_references(references: tuple[str, ...]) -> tuple[str, ...]:
    if len(references) <= MAX_REFERENCES:
        return references
    return references[:1] + references[-(MAX_REFERENCES - 1) :]


def _body_text(part: Message) -> tuple[str, bool] | None:
    """Plain text of a part and whether it was cut: text/plain as is, text/html converted (``html_text``, which
    reads at most ``MAX_HTML_CHARS`` characters); alternatives prefer non-empty plain text; other multiparts
    join their children's texts. None when the part holds no body text (attachments, embedded messages,
    non-text parts)."""
    content_type = part.get_content_type()
    if _is_attachment(part) or content_type.startswith("message/"):
        return None
    if content_type == "text/plain":
        return _decoded_text(part), False
    if content_type == "text/html":
        html = html_text(_decoded_text(part))
        return html.text, html.truncated
    children = _children(part)
    if content_type == "multipart/alternative":
        plain = [body for child in children if child.get_content_type() == "text/plain" if (body := _body_text(child))]
        if plain and plain[0][0].strip():
            return plain[0]
        return next((body for child in reversed(children) if (body := _body_text(child)) and body[0].strip()), None)
    if content_type.startswith("multipart/"):
        bodies = [body for child in children if (body := _body_text(child)) is not None and body[0].strip()]
        return ("\n\n".join(text for text, _ in bodies), any(cut for _, cut in bodies)) if bodies else None
    return None


def _decoded_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    return _decode_bytes(data, _charset(part)).replace("\r\n", "\n").replace("\r", "\n").strip()


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except _PARAMETER_ERRORS:
        return None


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset (U+FFFD for bad bytes). Undeclared or ASCII text is tried as UTF-8,
    then Windows-1252, as mailers often send 8-bit text without saying so; an unknown charset means UTF-8."""
    if charset in (None, "us-ascii", "ascii"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", errors="replace")
    try:
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError):  # unknown or non-text codec, or a name with a NUL in it
        return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Leaf:
    part: Message
    content_type: str


def _leaves(message: Message) -> Iterator[_Leaf]:
    """Non-multipart parts of the message in order; an embedded message is one leaf (not descended)."""
    stack = [message]
    while stack:
        part = stack.pop()
        content_type = part.get_content_type()
        if content_type.startswith("multipart/"):
            stack.extend(reversed(_children(part)))
        else:
            yield _Leaf(part, content_type)


def _attachments(message: Message) -> Iterator[AttachmentSummary]:
    for leaf in _leaves(message):
        if _is_attachment(leaf.part) and not _is_inline_image(leaf):
            yield AttachmentSummary(_attachment_name(leaf), _attachment_size(leaf), leaf.content_type)


def _is_attachment(part: Message) -> bool:
    """Disposition ``attachment``, a file name, an embedded message, or a non-text leaf (a nameless PDF)."""
    content_type = part.get_content_type()
    maintype = content_type.partition("/")[0]
    return (
        part.get_content_disposition() == "attachment"
        or bool(_filename(part))
        or content_type in ("message/rfc822", "message/global")
        or maintype not in ("text", "multipart", "message")
    )


def _is_inline_image(leaf: _Leaf) -> bool:
    return (
        leaf.content_type.startswith("image/")
        and bool(leaf.part.get("content-id"))
        and leaf.part.get_content_disposition() != "attachment"
    )


def _filename(part: Message) -> str:
    """Content-Disposition ``filename`` or Content-Type ``name``: RFC 2231 and (non-standard but common)
    RFC 2047 encodings decoded, path components removed."""
    try:
        raw = part.get_param("filename", None, "content-disposition") or part.get_param("name", None)
        value = collapse_rfc2231_value(raw, errors="replace") if raw else ""
    except _PARAMETER_ERRORS:
        return ""
    name = " ".join(decode_encoded_words(_unfold(value)).split())
    return re.split(r"[\\/]", name)[-1].strip()


def _attachment_name(leaf: _Leaf) -> str:
    name = _filename(leaf.part)
    if name:
        return name
    if leaf.content_type.startswith("message/"):
        embedded = _children(leaf.part)
        subject = " ".join(decode_encoded_words(_unfold(embedded[0].get("subject", ""))).split()) if embedded else ""
        return f"{subject or 'message'}.eml"
    return "untitled"


def _attachment_size(leaf: _Leaf) -> int:
    """Decoded size in bytes (base64/quoted-printable undone; archives are never opened); an embedded
    message counts as its re-serialised (LF line endings) size."""
    if leaf.content_type.startswith("message/"):
        try:
            return sum(len(child.as_bytes()) for child in _children(leaf.part))
        except Exception:  # a damaged embedded message may not re-serialise: its size is unknown
            return 0
    payload = leaf.part.get_payload(decode=True)
    return len(payload) if isinstance(payload, bytes) else 0
