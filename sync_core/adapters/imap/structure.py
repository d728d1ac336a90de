"""A message's BODYSTRUCTURE (RFC 3501 §7.4.2, as IMAPClient parses it) → what the sync needs of it,
without downloading the message: the sections of its readable text and its attachment summaries.

The rules are those of ``domain.mime`` for RFC 822 uploads, so a message reads the same whichever way
it came in:
- attachments: disposition ``attachment``, a file name, an embedded message, or a non-text leaf; inline
  images (``image/*`` with a Content-ID, not ``attachment``) are left out; embedded messages are not
  descended into;
- text: text/plain as is, text/html converted to text; within ``multipart/alternative`` the plain part
  wins; other multiparts join their children's texts.

Sizes are the decoded sizes where the encoding allows knowing them from the encoded size (base64: three
bytes per four characters, line breaks excluded; otherwise the encoded size).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import unquote_to_bytes

from sync_core.domain.model import AttachmentSummary
from sync_core.domain.text import decode_encoded_words

MAX_PARTS = 500  # leaves examined per message (as domain.mime.MAX_PARTS)
MAX_DEPTH = 20


@dataclass(frozen=True)
class Leaf:
    """One non-multipart part: its section number (``BODY[<section>]``) and MIME facts."""

    section: str
    content_type: str
    params: dict[str, str] = field(default_factory=dict)
    content_id: str = ""
    encoding: str = ""
    size: int = 0
    disposition: str = ""
    disposition_params: dict[str, str] = field(default_factory=dict)

    @property
    def charset(self) -> str | None:
        return self.params.get("charset") or None

    @cached_property
    def filename(self) -> str:
        raw = self.disposition_params.get("filename") or self.params.get("name") or ""
        if not raw:
            return ""
        name = " ".join(decode_encoded_words(raw).split())
        return name.replace("\\", "/").rpartition("/")[2].strip()  # path components removed

    @cached_property
    def is_attachment(self) -> bool:
        maintype = self.content_type.partition("/")[0]
        return (
            self.disposition == "attachment"
            or bool(self.filename)
            or self.content_type in ("message/rfc822", "message/global")
            or maintype not in ("text", "multipart", "message")
        )

    @property
    def is_inline_image(self) -> bool:
        return self.content_type.startswith("image/") and bool(self.content_id) and self.disposition != "attachment"

    @property
    def decoded_size(self) -> int:
        if self.encoding == "base64":
            characters = self.size - 2 * (self.size // 78)  # 76 characters and CRLF per line
            return max(0, characters * 3 // 4)
        return self.size


@dataclass(frozen=True)
class Structure:
    """``text``: the leaves whose decoded text is the body, in order; ``attachments``: the summaries."""

    text: tuple[Leaf, ...]
    attachments: tuple[AttachmentSummary, ...]


def parse(bodystructure: Any) -> Structure:
    """Never raises: a structure it cannot read gives no text and no attachments. Each part is read once."""
    try:
        every = list(_leaves(bodystructure, "", 0))
        by_section = {leaf.section: leaf for leaf in every}
        text = tuple(_text_leaves(bodystructure, "", 0, by_section))
        leaves = every[:MAX_PARTS]
    except (TypeError, ValueError, IndexError, AttributeError):
        return Structure((), ())
    attachments = tuple(
        AttachmentSummary(leaf.filename or _unnamed(leaf), leaf.decoded_size, leaf.content_type)
        for leaf in leaves
        if leaf.is_attachment and not leaf.is_inline_image
    )
    return Structure(text, attachments)


def _unnamed(leaf: Leaf) -> str:
    return "message.eml" if leaf.content_type.startswith("message/") else "untitled"


def _is_multipart(node: Any) -> bool:
    return bool(node) and isinstance(node[0], list)


def _child_section(prefix: str, index: int) -> str:
    return f"{prefix}.{index}" if prefix else str(index)


def _children(node: Any, prefix: str) -> list[tuple[Any, str]]:
    return [(child, _child_section(prefix, index)) for index, child in enumerate(node[0], start=1)]


def _leaves(node: Any, prefix: str, depth: int) -> Iterator[Leaf]:
    if depth > MAX_DEPTH:
        return
    if _is_multipart(node):
        for child, section in _children(node, prefix):
            yield from _leaves(child, section, depth + 1)
    else:
        yield _leaf(node, prefix or "1")


def _text_leaves(node: Any, prefix: str, depth: int, known: dict[str, Leaf]) -> list[Leaf]:
    """The leaves whose text is the body (see the module docstring); ``known``: the leaves already read, by
    section."""
    if depth > MAX_DEPTH:
        return []
    if not _is_multipart(node):
        section = prefix or "1"
        leaf = known.get(section) or _leaf(node, section)
        if leaf.is_attachment or leaf.content_type not in ("text/plain", "text/html"):
            return []
        return [leaf]
    subtype = _text(node[1]).lower()
    children = _children(node, prefix)
    if subtype == "alternative":
        chosen = [_text_leaves(child, section, depth + 1, known) for child, section in children]
        plain = [found for found in chosen if found and all(x.content_type == "text/plain" for x in found)]
        if plain:
            return plain[0]
        return next((found for found in reversed(chosen) if found), [])
    return [leaf for child, section in children for leaf in _text_leaves(child, section, depth + 1, known)]


def _leaf(node: Sequence[Any], section: str) -> Leaf:
    content_type = f"{_text(node[0])}/{_text(node[1])}".lower()
    params = _params(node[2])
    disposition, disposition_params = "", {}
    extension = _disposition_index(content_type)
    if len(node) > extension and isinstance(node[extension], tuple) and node[extension]:
        disposition = _text(node[extension][0]).lower()
        if len(node[extension]) > 1:
            disposition_params = _params(node[extension][1])
    return Leaf(
        section=section,
        content_type=content_type,
        params=params,
        content_id=_text(node[3]),
        encoding=_text(node[5]).lower(),
        size=int(node[6] or 0),
        disposition=disposition,
        disposition_params=disposition_params,
    )


def _disposition_index(content_type: str) -> int:
    """Where the disposition sits among a part's fields: after the line count for text parts, after the
    envelope, body and line count for embedded messages (RFC 3501 §7.4.2)."""
    if content_type.startswith("text/"):
        return 9
    if content_type in ("message/rfc822", "message/global"):
        return 11
    return 8


def _params(value: Any) -> dict[str, str]:
    """A parameter list (name, value, name, value, ...), RFC 2231 continuations (``name*0``, ``name*1``)
    and encodings (``name*=charset'lang'percent-encoded``) undone."""
    if not isinstance(value, tuple):
        return {}
    pairs = [(_text(value[i]).lower(), _text(value[i + 1])) for i in range(0, len(value) - 1, 2)]
    plain = {name: text for name, text in pairs if "*" not in name}
    extended: dict[str, list[tuple[int, str]]] = {}
    for name, text in pairs:
        if "*" in name:
            base, _, rest = name.partition("*")
            number = rest.rstrip("*")
            extended.setdefault(base, []).append((int(number) if number.isdigit() else 0, text))
    for base, pieces in extended.items():
        joined = "".join(text for _, text in sorted(pieces))
        charset, quotes = "utf-8", joined.count("'")
        if quotes >= 2:
            charset, _language, joined = joined.split("'", 2)
        try:
            plain[base] = unquote_to_bytes(joined).decode(charset or "utf-8", errors="replace")
        except LookupError:
            plain[base] = unquote_to_bytes(joined).decode("utf-8", errors="replace")
    return plain


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
