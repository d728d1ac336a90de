"""Address and domain normalisation, free-mail detection and address-header parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_core.domain import addresses
from sync_core.domain.addresses import (
    FREE_MAIL_DOMAINS,
    is_free_mail,
    normalize_address,
    normalize_domain,
    parse_address_list,
)
from sync_core.domain.model import EmailAddress

ADDRESSES = [
    # (raw, normalised or None)
    ("alice@example.com", "alice@example.com"),
    ("Alice@Example.COM", "alice@example.com"),
    ("  bob@example.com\t", "bob@example.com"),
    ("<bob@example.com>", "bob@example.com"),
    ("mailto:Carol@Example.com", "carol@example.com"),
    ("mailto:carol@example.com?subject=Hello%20there", "carol@example.com"),
    ("<mailto:carol@example.com>", "carol@example.com"),
    ("SMTP:eve@Contoso.com", "eve@contoso.com"),
    ("smtp:eve.alias@contoso.com", "eve.alias@contoso.com"),
    ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ("o'brien@example.ie", "o'brien@example.ie"),
    ("user@example.com.", "user@example.com"),
    ('"john doe"@example.com', '"john doe"@example.com'),
    ('"John.Doe"@Example.com', '"john.doe"@example.com'),
    ('"a@b"@example.com', '"a@b"@example.com'),
    ('"quote\\"inside"@example.com', '"quote\\"inside"@example.com'),
    ("josé@bücher.de", "josé@xn--bcher-kva.de"),
    ("JOSÉ@BÜCHER.DE", "josé@xn--bcher-kva.de"),
    ("jose\u0301@example.com", "josé@example.com"),  # decomposed accent composes (NFC)
    ("user@xn--bcher-kva.de", "user@xn--bcher-kva.de"),
    ("user@例え.jp", "user@xn--r8jz45g.jp"),
    ("taro..yamada.@docomo.ne.jp", "taro..yamada.@docomo.ne.jp"),  # real carrier addresses look like this
    ("", None),
    ("   ", None),
    ("alice", None),
    ("alice@", None),
    ("@example.com", None),
    ("alice@example", None),
    ("alice@@example.com", None),
    ("a@b@example.com", None),
    ("alice smith@example.com", None),
    ("alice@exa mple.com", None),
    ("alice\x00@example.com", None),
    ("alice@example.com\n", "alice@example.com"),  # surrounding whitespace is stripped...
    ("ali\nce@example.com", None),  # ...inner line breaks are not
    ("alice@exam\u200bple.com", None),
    ("alice@1.2.3.4", None),
    ("alice@[192.168.0.1]", None),
    ("alice@-example.com", None),
    ("alice@example-.com", None),
    ("alice@under_score.com", None),
    ("alice@example..com", None),
    ("Alice <alice@example.com>", None),  # a bare address is expected; parse_address_list handles names
    ('"unterminated@example.com', None),
    ("/O=EXCHANGELABS/OU=EXCHANGE ADMINISTRATIVE GROUP (FYDIBOHF23SPDLT)/CN=RECIPIENTS/CN=ABC123-ALICE", None),
    ("/o=ExchangeLabs/ou=Exchange Administrative Group/cn=Recipients/cn=bob@contoso.com", None),
    ("IMCEAEX-_O=EXCHANGELABS_OU=EXCHANGE+20ADMINISTRATIVE_CN=RECIPIENTS@namprd01.prod.outlook.com", None),
    ("x" * 310 + "@example.com", None),  # over 320 characters
    ("alice@" + ("a" * 64) + ".com", None),  # a DNS label is at most 63 characters
]


@pytest.mark.parametrize(("raw", "expected"), ADDRESSES)
def test_addresses_are_normalised_or_refused_as_implausible(raw: str, expected: str | None) -> None:
    assert normalize_address(raw) == expected


@pytest.mark.parametrize("raw", [raw for raw, expected in ADDRESSES if expected is not None])
def test_normalising_a_normalised_address_changes_nothing(raw: str) -> None:
    once = normalize_address(raw)
    assert once is not None
    assert normalize_address(once) == once


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("@example.com", "example.com"),
        ("example.com.", "example.com"),
        (" bücher.de ", "xn--bcher-kva.de"),
        ("sub.Example.co.uk", "sub.example.co.uk"),
        ("localhost", None),
        ("", None),
        ("exa mple.com", None),
        ("1.2.3.4", None),
        ("a..b.com", None),
    ],
)
def test_domains_are_normalised_like_the_domain_part_of_addresses(raw: str, expected: str | None) -> None:
    assert normalize_domain(raw) == expected


@pytest.mark.parametrize(
    "domain",
    ["gmail.com", "GoogleMail.com", "outlook.com", "hotmail.co.uk", "hotmail.com.br", "live.com", "msn.com",
     "yahoo.fr", "yahoo.com.mx", "icloud.com", "me.com", "aol.com", "proton.me", "protonmail.com", "gmx.de",
     "gmx.ch", "web.de", "yandex.ru", "yandex.kz", "mail.ru", "zoho.com"],
)  # fmt: skip
def test_consumer_mail_domains_are_free_mail(domain: str) -> None:
    assert is_free_mail(domain)


@pytest.mark.parametrize(
    "domain", ["contoso.com", "outlook.contoso.com", "hotmail.mycompany.com", "yahoo-partners.com", "gmail.co"]
)
def test_company_domains_are_not_free_mail_even_when_they_contain_a_brand(domain: str) -> None:
    assert not is_free_mail(domain)


def test_every_listed_free_mail_domain_is_already_normalised() -> None:
    assert all(normalize_domain(domain) == domain for domain in FREE_MAIL_DOMAINS)


def test_an_address_list_is_parsed_with_decoded_names_and_normalised_addresses() -> None:
    parsed = parse_address_list(
        "\"Doe, John\" <John.Doe@Example.com>, =?utf-8?q?Ren=C3=A9_Dupont?= <rene@EXAMPLE.fr>, 'Bob' <bob@x.org>"
    )
    assert parsed == (
        EmailAddress("john.doe@example.com", "Doe, John"),
        EmailAddress("rene@example.fr", "René Dupont"),
        EmailAddress("bob@x.org", "Bob"),
    )


def test_an_address_list_drops_invalid_entries_groups_and_repeats() -> None:
    parsed = parse_address_list(
        ["undisclosed-recipients:;", "junk, alice@example.com", "Alice Again <ALICE@example.com>, a@b"]
    )
    assert parsed == (EmailAddress("alice@example.com"),)


def test_an_encoded_comma_in_a_display_name_does_not_split_the_address() -> None:
    parsed = parse_address_list("=?utf-8?q?Doe=2C_John?= <john@example.com>")
    assert parsed == (EmailAddress("john@example.com", "Doe, John"),)


def test_a_display_name_that_only_repeats_the_address_is_dropped() -> None:
    assert parse_address_list("alice@example.com <Alice@Example.com>") == (EmailAddress("alice@example.com"),)


def test_an_absent_or_empty_header_has_no_addresses() -> None:
    assert parse_address_list(None) == ()
    assert parse_address_list("") == ()
    assert parse_address_list([]) == ()


# --- the ASCII fast path and the cache give exactly what the character-by-character path gives -----------

# Pieces that exercise every branch: wrappers, specials, quotes and escapes, whitespace and control
# characters, percent-encoding (which can bring non-ASCII in), punycode, label lengths, legacy DNs, and a
# few non-ASCII characters (which take the general path).
_PIECES = [
    "a", "Z", "0", "9", ".", "-", "_", "+", "'", "=", "/", "?", "%", "(", ")", "<", ">", "[", "]", ",", ";",
    ":", "\\", '"', "@", " ", "\t", "\n", "\r", "\x0b", "\x00", "\x1f", "\x7f", "mailto:", "MAILTO:", "smtp:",
    "SMTP:", "%41", "%20", "%C3%A9", "%0A", "xn--bcher-kva", "IMCEAEX-", "/O=X", "example", "COM", "co.uk",
    "x" * 63, "y" * 64, "é", "\u0301", "\u212a", "\u0130", "\u200b", "\u3000", "例え",
]  # fmt: skip
_LOCALS = st.one_of(
    st.text(alphabet="abcXYZ019.-+_'=/&", min_size=1, max_size=12),
    st.text(alphabet='ab .@\\"\t\x7f', max_size=8).map(lambda inner: f'"{inner}"'),
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6).map("".join),
)
_LABELS = st.one_of(
    st.text(alphabet="abz09-", min_size=1, max_size=8),
    st.sampled_from(["xn--bcher-kva", "x" * 63, "y" * 64, "COM", "123", "例え", "bücher", "_x", "", "a b", "\x00"]),
)
_DOMAINS = st.one_of(
    st.lists(st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True), min_size=2, max_size=4),
    st.lists(_LABELS, min_size=1, max_size=4),
).map(".".join)
_SHAPED = st.tuples(
    st.sampled_from(["", "", "<", "mailto:", "<mailto:", " smtp:", '"']),
    _LOCALS,
    st.just("@"),
    _DOMAINS,
    st.sampled_from(["", "", ">", ".", "?subject=x", " ", '"']),
).map("".join)
_WRAPPERS = [("", ""), ("<", ">"), ("mailto:", "?subject=Hi"), ("<mailto:", ">"), (" smtp:", " "), ("", ".")]
_PLAUSIBLE = st.builds(
    lambda wrapper, local, domain: f"{wrapper[0]}{local}@{domain}{wrapper[1]}",
    st.sampled_from(_WRAPPERS),
    st.one_of(
        st.builds(  # a plain local part, with at most one odd character in it
            lambda head, odd, tail: head + odd + tail,
            st.text(alphabet="abcXYZ019.-+_'", min_size=1, max_size=8),
            st.sampled_from(["", *'\t\x7f\x00\x1f ()<>[]:;@\\,"é']),
            st.text(alphabet="abcXYZ019.-+_'", max_size=4),
        ),
        st.lists(  # a quoted one
            st.sampled_from(["a", "B", " ", ".", "@", ",", '\\"', "\\\\", "\\a", "\\\x7f", "\\\t", "\t", "\x7f"]),
            min_size=1,
            max_size=6,
        ).map(lambda inner: '"' + "".join(inner) + '"'),
    ),
    st.lists(
        st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True), min_size=2, max_size=4
    ).map(".".join),
)
_RAW = st.one_of(
    _PLAUSIBLE,
    _SHAPED,
    st.lists(st.sampled_from(_PIECES), max_size=16).map("".join),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40),
    st.text(max_size=40),
)


@settings(max_examples=1000, derandomize=True, database=None, deadline=None)
@given(raw=_RAW)
def test_addresses_are_normalised_exactly_as_by_the_character_by_character_path(raw: str) -> None:
    assert normalize_address(raw) == addresses._normalize_address_general(raw)


@settings(max_examples=1000, derandomize=True, database=None, deadline=None)
@given(raw=st.one_of(_DOMAINS, _RAW, _DOMAINS.map(lambda d: f" @{d}. ")))
def test_domains_are_normalised_exactly_as_by_the_character_by_character_path(raw: str) -> None:
    assert normalize_domain(raw) == addresses._normalize_domain_general(raw)


@pytest.mark.parametrize(("raw", "expected"), ADDRESSES)
def test_the_character_by_character_path_keeps_the_documented_results(raw: str, expected: str | None) -> None:
    assert addresses._normalize_address_general(raw) == expected


def test_an_address_normalised_again_is_answered_from_the_cache() -> None:
    raw = "Cache.Check@Example.COM"
    normalize_address(raw)
    hits = addresses._cached_address.cache_info().hits
    assert normalize_address(raw) == "cache.check@example.com"
    assert addresses._cached_address.cache_info().hits == hits + 1


def test_very_long_inputs_are_normalised_without_being_kept_in_the_cache() -> None:
    raw = "mailto:long@example.com?" + "x" * 2_000
    entries = addresses._cached_address.cache_info().currsize
    assert normalize_address(raw) == "long@example.com"
    assert addresses._cached_address.cache_info().currsize == entries


@pytest.mark.parametrize("char", [chr(code) for code in range(128)])
def test_every_ascii_character_in_every_part_is_judged_as_by_the_character_by_character_path(char: str) -> None:
    for raw in (f"a{char}b@example.com", f'"a{char}b"@example.com', f'"a\\{char}"@example.com', f"{char}@x.org",
                f"a@ex{char}ample.com", f"a@example.c{char}", f"<a{char}@b.com>", f"mailto:a@b.com{char}"):  # fmt: skip
        assert normalize_address(raw) == addresses._normalize_address_general(raw), repr(raw)
        assert normalize_domain(raw.rpartition("@")[2]) == addresses._normalize_domain_general(raw.rpartition("@")[2])
