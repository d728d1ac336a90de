"""Plain-text helpers: HTML to text, previews, length-bounded text and RFC 2047 header decoding.

Invariants: every function here is total (never raises on any ``str`` input) and deterministic. HTML to text
is linear in the length of its input (the tokenizer searches the rest of the document at most once, whatever
the markup) and reads at most ``MAX_HTML_CHARS`` characters of it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from email.header import decode_header
from email.policy import default as default_policy
from html import unescape
from html.parser import HTMLParser

PREVIEW_LENGTH = 255
# HTML characters read per body: far above real mail bodies (a long newsletter is a few hundred KB; what is stored
# of a body is at most 480,000 characters), and a bound on the work one message can ask for.
MAX_HTML_CHARS = 4 * 1024 * 1024

# Elements whose content is never text the reader sees.
_SKIPPED = frozenset({"script", "style", "head", "title", "noscript", "template", "xml", "svg", "object"})
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "center", "dd", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
        "section", "table", "tbody", "tfoot", "thead", "tr", "ul", "h1", "h2", "h3", "h4", "h5", "h6",
    }
)  # fmt: skip
_PARAGRAPHS = frozenset({"p", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "pre"})
_CELLS = frozenset({"td", "th"})
# Zero-width characters mail templates use to pad previews (joiners and direction marks carry meaning: kept).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff\u034f\u00ad"), None)
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_TAG = re.compile(r"<[^<>]*>")  # never rescans: a '<' ends the attempt that started at the previous one
_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class HtmlText:
    """``text``: the readable text (see ``html_to_text``); ``truncated``: the HTML was longer than
    ``MAX_HTML_CHARS`` and ``text`` is that of its first ``MAX_HTML_CHARS`` characters; ``examined``: characters
    the tokenizer consumed or searched, at most a small multiple of the input length (a seam for tests)."""

    text: str
    truncated: bool
    examined: int


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML body.

    Drops script/style/head content; block elements and ``<br>`` become line breaks (paragraphs, headings,
    lists and tables a blank line, except Outlook's one-paragraph-per-line ``MsoNormal`` paragraphs), list
    items start with ``- ``, table cells are separated by spaces; link text is kept (URLs are not); entities
    are unescaped; ``<pre>`` keeps its line breaks; spaces are collapsed, every line is stripped, at most one
    blank line separates paragraphs, and the result is stripped. Broken HTML is parsed as far as it goes: a
    tag, comment, declaration or processing instruction that is never closed runs to the end of the document
    and is dropped (as in HTML5); if the parser itself fails, tags are removed with a regular expression. Only
    the first ``MAX_HTML_CHARS`` characters are read (``html_text`` says whether that cut anything).
    """
    return html_text(html).text


def html_text(html: str) -> HtmlText:
    """``html_to_text`` with whether the input was cut and how much work it took.

    Linear: the stdlib tokenizer is fed the document once and never closed. ``feed`` consumes every construct
    it scans and stops at the first one that is never terminated; ``close`` would instead rescan the rest of
    the document once for every later ``<`` (quadratic: ``"<!--" * n``), so the rest is handled here.
    """
    truncated = len(html) > MAX_HTML_CHARS
    html = html[:MAX_HTML_CHARS]
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.finish()
        text = parser.text()
    except Exception:  # the stdlib parser is lenient, but this function must never raise
        text = _TAG.sub(" ", html)
        parser.examined += len(html)
    return HtmlText(_tidy(text), truncated, parser.examined)


def preview(text: str, limit: int = PREVIEW_LENGTH) -> str:
    """The first ``limit`` characters of ``text`` with all whitespace collapsed to single spaces.

    Never cuts between a character and the combining marks or joiners that belong to it.
    """
    collapsed = " ".join(text.translate(_INVISIBLE).split())
    return _cut(collapsed, limit).rstrip()


def fit_text(text: str, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to at most ``max_chars`` code points (on a character boundary) and whether it was cut."""
    if len(text) <= max_chars:
        return text, False
    return _cut(text, max_chars), True


def decode_encoded_words(value: str) -> str:
    """Decode RFC 2047 encoded words (``=?utf-8?q?...?=``); unknown charsets and bad bytes become U+FFFD."""
    if "=?" not in value:
        return value
    try:
        return str(default_policy.header_factory("x-decoded", value))
    except Exception:  # the modern parser gave up: try the compat32 decoder, which is stricter but simpler
        return _decode_words_compat32(value)


def _decode_words_compat32(value: str) -> str:
    try:
        chunks = decode_header(value)
    except Exception:  # the header is beyond repair: show it as written
        return value
    decoded = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            decoded.append(chunk)
            continue
        try:
            decoded.append(chunk.decode(charset or "ascii", errors="replace"))
        except LookupError:
            decoded.append(chunk.decode("utf-8", errors="replace"))
    return "".join(decoded)


def _cut(text: str, limit: int) -> str:
    end = max(0, min(limit, len(text)))
    while 0 < end < len(text) and (_joins_previous(text[end]) or text[end - 1] == "\u200d"):
        end -= 1
    return text[:end]


def _joins_previous(char: str) -> bool:
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")  # combining marks
        or char in "\u200d\ufe0e\ufe0f"  # zero-width joiner, variation selectors
        or 0x1F3FB <= ord(char) <= 0x1F3FF  # emoji skin-tone modifiers
    )


def _tidy(text: str) -> str:
    text = text.translate(_INVISIBLE).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


class _TextExtractor(HTMLParser):
    """Collects visible text. Block boundaries ask for at least one (or two, for paragraphs) line breaks
    since the last visible text, so nested or empty blocks never pile up blank lines; ``<br>`` always adds one.

    Every tag costs O(1) amortised: open skipped elements are a stack plus a count per name, so an end tag of
    an element that is not open never searches the stack. ``examined`` counts the characters each tokenizer
    step consumed or searched (a failed search counts up to the end of the buffer).
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skipping: list[str] = []  # open elements whose content is dropped, innermost last
        self._open_skipped: Counter[str] = Counter()  # how many of each name are on ``_skipping``
        self._pre = 0
        self._newlines = 0  # line breaks since the last visible text
        self._outlook_paragraph = False
        self.examined = 0

    def text(self) -> str:
        return "".join(self._parts)

    def finish(self) -> None:
        """End of document, instead of ``close()``: what ``feed`` left unconsumed starts at a construct that is
        never terminated (dropped with the rest, as in HTML5: EOF inside a tag or comment), is the content of an
        unclosed script or style (dropped), a lone ``<`` or ``</`` (text), or text held back because it ends
        in what could be a cut character reference (text)."""
        rest, self.rawdata = self.rawdata, ""
        self.examined += len(rest)
        if self.cdata_elem is not None or not rest:
            return
        if rest in ("<", "</") or not rest.startswith("<"):
            self.handle_data(unescape(rest))

    # -- tokenizer steps, counted -------------------------------------------------------------------------

    def parse_starttag(self, i: int) -> int:
        return self._count(i, super().parse_starttag(i))

    def parse_endtag(self, i: int) -> int:
        return self._count(i, super().parse_endtag(i))

    def parse_comment(self, i: int, report: bool = True) -> int:
        return self._count(i, super().parse_comment(i, report))

    def parse_pi(self, i: int) -> int:
        return self._count(i, super().parse_pi(i))

    def parse_html_declaration(self, i: int) -> int:
        return self._count(i, super().parse_html_declaration(i))

    def _count(self, start: int, end: int) -> int:
        self.examined += (end if end >= 0 else len(self.rawdata)) - start
        return end

    # -- handlers -----------------------------------------------------------------------------------------

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skipping.clear()  # an unclosed <head> or <title> ends where the body starts
            self._open_skipped.clear()
        if tag in _SKIPPED:
            self._skipping.append(tag)
            self._open_skipped[tag] += 1
            return
        if self._skipping:
            return
        if tag == "br":
            self._parts.append("\n")
            self._newlines += 1
        elif tag == "li":
            self._break(1)
            self._emit("- ")
        elif tag in _CELLS:
            self._parts.append(" ")
        elif tag == "p" and _is_outlook_paragraph(attrs):
            self._outlook_paragraph = True
            self._break(1)
        elif tag in _BLOCKS:
            self._break(2 if tag in _PARAGRAPHS else 1)
        if tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED and self._open_skipped[tag]:  # close it and every skipped element opened inside it
            while (closed := self._skipping.pop()) != tag:
                self._open_skipped[closed] -= 1
            self._open_skipped[tag] -= 1
            return
        if self._skipping:
            return
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        if tag == "p" and self._outlook_paragraph:
            self._outlook_paragraph = False
            self._parts.append("\n")  # even an empty one: that is how Outlook writes a blank line
            self._newlines += 1
        elif tag in _BLOCKS:
            self._break(2 if tag in _PARAGRAPHS else 1)

    def handle_data(self, data: str) -> None:
        self.examined += len(data)
        if self._skipping:
            return
        data = data.replace("\xa0", " ")
        if self._pre:
            self._parts.append(data)
            self._newlines = 0 if data.strip() else self._newlines + data.count("\n")
        elif data.strip():
            self._emit(_WHITESPACE.sub(" ", data))
        else:
            self._parts.append(" ")

    def _emit(self, text: str) -> None:
        self._parts.append(text)
        self._newlines = 0

    def _break(self, lines: int) -> None:
        if self._parts and self._newlines < lines:
            self._parts.append("\n" * (lines - self._newlines))
            self._newlines = lines


def _is_outlook_paragraph(attrs: list[tuple[str, str | None]]) -> bool:
    """Outlook writes every line as ``<p class=MsoNormal>`` and a blank line as an empty one."""
    css_class = next((value or "" for name, value in attrs if name == "class"), "")
    return css_class.lower().startswith("mso")
