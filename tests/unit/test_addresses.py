"""Address and domain normalisation, free-mail detection and address-header parsing."""

from __future__ import annotations

import pytest

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
