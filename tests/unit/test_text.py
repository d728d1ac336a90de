"""HTML to text, previews, bounded text and encoded-word decoding."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sync_core.domain import text as text_module
from sync_core.domain.text import decode_encoded_words, fit_text, html_to_text, preview


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>Hello <b>world</b></p>", "Hello world"),
        ("<p>One</p><p>Two</p>", "One\n\nTwo"),
        ("line one<br>line two<br/>line three", "line one\nline two\nline three"),
        ("<div>Hi</div><div><br></div><div>Thanks</div>", "Hi\n\nThanks"),
        ("<div><div><div>deep</div></div></div><div>next</div>", "deep\nnext"),
        ("<ul><li>one</li><li>two</li></ul>", "- one\n- two"),
        ('See <a href="https://example.com/x">the report</a>.', "See the report."),
        ("Fish &amp; chips &lt;3 &eacute;t&#233; &#x263A;", "Fish & chips <3 été ☺"),
        ("a&nbsp;&nbsp;b", "a b"),
        ("  lots   of\n\n   spaces\t here ", "lots of spaces here"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>", "a b\nc d"),
        ("<h1>Title</h1>Body", "Title\n\nBody"),
        ("<blockquote>quoted</blockquote>reply", "quoted\n\nreply"),
        ("<pre>keep\nlines</pre>", "keep\nlines"),
        ("<p>a</p><p></p><p></p><p></p><p>b</p>", "a\n\nb"),
        ("a<br><br><br><br>b", "a\n\nb"),
        ("<span>zero\u200bwidth\ufeff</span>", "zerowidth"),
    ],
)
def test_html_becomes_readable_text(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_script_style_and_head_content_is_dropped() -> None:
    html = (
        "<html><head><title>Newsletter</title><style>p { color: red }</style>"
        "<script>alert('x')</script></head><body><p>Visible</p><script>var y = 1;</script></body></html>"
    )
    assert html_to_text(html) == "Visible"


def test_an_unclosed_head_ends_where_the_body_starts() -> None:
    assert html_to_text("<head><title>Subject<body>Hello <b>there") == "Hello there"


def test_outlook_paragraphs_are_lines_and_its_empty_paragraphs_are_blank_lines() -> None:
    html = (
        '<div class="WordSection1"><p class="MsoNormal">Hi John,<o:p></o:p></p>'
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
        '<p class="MsoNormal">Thanks for the call.<o:p></o:p></p>'
        '<p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
        '<p class="MsoNormal">Best,<o:p></o:p></p><p class="MsoNormal">Alice<o:p></o:p></p></div>'
        "<!--[if gte mso 9]><xml><o:shapedefaults v:ext='edit'/></xml><![endif]-->"
    )
    assert html_to_text(html) == "Hi John,\n\nThanks for the call.\n\nBest,\nAlice"


@pytest.mark.parametrize(
    "html",
    ["<", "<<<>>>", "<div", "</p></div></span>", "<a href='", "&#xZZZZ; &#99999999;", "<script>never closed",
     "<!-- unterminated comment", "<![CDATA[ x", "<p <p <p>", "\x00\x01<b>\ud800</b>", "</style>text"],
)  # fmt: skip
def test_broken_html_never_raises(html: str) -> None:
    assert isinstance(html_to_text(html), str)


def test_broken_html_keeps_the_text_it_can_read() -> None:
    assert html_to_text("<p>one<div>two</span></b><p>three") == "one\ntwo\n\nthree"


def test_a_tag_or_comment_never_closed_runs_to_the_end_of_the_document_and_is_dropped() -> None:
    # As in HTML5 (and every mail client): the rest of the document is inside the comment, or the tag.
    assert html_to_text("<p>Hi</p><!-- never closed <p>not shown</p>") == "Hi"
    assert html_to_text("<p>Hi</p><a href='never closed>not shown</a>") == "Hi"
    assert html_to_text("<p>Hi</p></p not shown") == "Hi"
    assert html_to_text("<p>Hi</p><script>never closed") == "Hi"
    assert html_to_text("a < b, AT&T, 1 <") == "a < b, AT&T, 1 <"


# Hostile documents, each built from a repeated unit. Those marked "stdlib" were quadratic in
# ``HTMLParser.close()``, those marked "stack" in the stack of open skipped elements; the others are controls.
HOSTILE_HTML: dict[str, Callable[[int], str]] = {
    "skipped elements left open, then stray end tags (stack)": lambda n: "<svg>" * n + "</p>" * n,
    "skipped elements nested and closed": lambda n: "<object>" * n + "</object>" * n,
    "nested blocks": lambda n: "<div>" * n + "x" + "</div>" * n,
    "comments never closed (stdlib)": lambda n: "<!--" * n,
    "comments with only a > (stdlib)": lambda n: "<!--x>" * n,
    "end tags never closed (stdlib)": lambda n: "</" * n,
    "processing instructions never closed (stdlib)": lambda n: "<?" * n,
    "declarations never closed (stdlib)": lambda n: "<!x" * n,
    "marked sections never closed (stdlib)": lambda n: "<![if x]" * n,
    "attributes with an open quote": lambda n: "<a x= '>" * n,
    "start tags never closed (stdlib)": lambda n: "<a " * n,
    "all of them": lambda n: "<svg><!--</a<?<!x<a x='</b>" * n,
}


@pytest.mark.parametrize("shape", sorted(HOSTILE_HTML))
def test_html_to_text_examines_each_character_a_bounded_number_of_times_whatever_the_document(shape: str) -> None:
    build = HOSTILE_HTML[shape]
    unit = len(build(1))
    small, large = build(72_000 // unit), build(288_000 // unit)  # 72 KB and 288 KB

    work_small = text_module.html_text(small).examined
    work_large = text_module.html_text(large).examined

    assert work_large <= 3 * len(large)  # linear: a quadratic tokenizer examines ~n²/unit characters here
    assert work_large <= 4.5 * work_small


def test_html_beyond_the_limit_is_not_read_and_the_text_says_it_was_cut() -> None:
    limit = text_module.MAX_HTML_CHARS
    inside = text_module.html_text("<p>" + "word " * 1000 + "</p>")
    cut = text_module.html_text("<div>" * (limit // 5 + 1) + "<p>beyond the limit</p>")

    assert (inside.truncated, cut.truncated) == (False, True)
    assert cut.text == "" and cut.examined <= 3 * limit


def test_a_preview_collapses_whitespace_and_is_cut_at_the_limit() -> None:
    assert preview("  Hello\n\n  world\t again  ") == "Hello world again"
    assert preview("x" * 300) == "x" * 255
    assert preview("abcdef", limit=3) == "abc"


def test_a_preview_never_separates_a_letter_from_its_accent() -> None:
    text = "e\u0301" * 10  # decomposed é: letter + combining acute
    cut = preview(text, limit=5)
    assert cut == "e\u0301e\u0301"
    assert not cut.endswith("e")


def test_a_preview_never_splits_an_emoji_sequence() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
    cut = preview("ab" + family, limit=4)
    assert cut == "ab"


def test_fit_text_reports_whether_it_cut() -> None:
    assert fit_text("short", 10) == ("short", False)
    assert fit_text("exactly10!", 10) == ("exactly10!", False)
    assert fit_text("a longer text", 8) == ("a longer", True)
    assert fit_text("e\u0301e\u0301", 3) == ("e\u0301", True)


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain subject", "plain subject"),
        ("=?utf-8?q?caf=C3=A9?=", "café"),
        ("=?UTF-8?B?SGVsbG8gd29ybGQ=?=", "Hello world"),
        ("=?iso-8859-1?q?Gr=FC=DFe?= aus =?utf-8?q?K=C3=B6ln?=", "Grüße aus Köln"),
        ("=?x-unknown?q?caf=E9?=", "caf\ufffd"),
    ],
)
def test_encoded_words_are_decoded(raw: str, decoded: str) -> None:
    assert decode_encoded_words(raw) == decoded


def test_broken_encoded_words_never_raise() -> None:
    for raw in ["=?utf-8?b?not base64!!?=", "=?utf-8?q?", "=??=", "=?utf-8?x?abc?="]:
        assert isinstance(decode_encoded_words(raw), str)
