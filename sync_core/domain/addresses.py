"""Email address and domain normalisation, free-mail domains and address-header parsing.

Invariants:
- ``normalize_address`` and ``normalize_domain`` are idempotent: feeding their output back returns it
  unchanged, so CRM records, mailbox aliases and message participants normalised by them compare with ``==``.
- Normalised addresses are lower-case, NFC, at most 320 characters, with an ASCII (punycode) domain whenever
  the stdlib IDNA codec can encode it; anything that is not a plausible mailbox address is ``None``.
- ASCII input takes a regex fast path that gives exactly what the character-by-character path
  (``_normalize_address_general``, ``_normalize_domain_general``, used for everything else) gives.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable
from email.utils import getaddresses
from urllib.parse import unquote

from sync_core.domain.model import EmailAddress
from sync_core.domain.text import decode_encoded_words

MAX_ADDRESS_LENGTH = 320
MAX_DOMAIN_LENGTH = 253
# Both normalisers are pure, so memoised: inputs of up to _CACHED_LENGTH characters, _CACHE_ENTRIES of each.
_CACHED_LENGTH = 512
_CACHE_ENTRIES = 16_384

_ASCII_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ASCII_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Characters that may not appear unquoted in a local part (RFC 5322 specials, less the dot).
_SPECIALS = frozenset('()<>[]:;@\\,"')
# A quoted local part: printable characters, with backslash escapes; no bare quote or backslash inside.
_QUOTED_LOCAL = re.compile(r'"(?:[^"\\]|\\.)+"')
# The same for ASCII, with the character checks folded in: no control characters (quoted: spaces allowed)...
_ASCII_QUOTED_LOCAL = re.compile(r'"(?:[^"\\\x00-\x1f\x7f]|\\[^\x00-\x1f\x7f])+"')
# ...and unquoted: no specials, whitespace or control characters.
_ASCII_LOCAL = re.compile(r'[^()<>\[\]:;@\\,"\x00-\x20\x7f]+')
# Exchange "addresses" that are really legacy DNs: /O=EXCHANGELABS/OU=... and IMCEAEX-_O=...@domain.
_LEGACY_DN_LOCAL_PREFIXES = ("/", "imceaex-")

FREE_MAIL_DOMAINS: frozenset[str] = frozenset(
    {
        # Google
        "gmail.com", "googlemail.com",
        # Microsoft
        "outlook.com", "outlook.fr", "outlook.de", "outlook.es", "outlook.it", "outlook.jp", "outlook.co.uk",
        "hotmail.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it", "hotmail.es", "hotmail.nl",
        "hotmail.be", "hotmail.ca", "hotmail.com.au", "hotmail.com.br", "hotmail.co.jp",
        "live.com", "live.co.uk", "live.fr", "live.de", "live.nl", "live.it", "live.be", "live.ca",
        "live.com.au", "msn.com", "passport.com",
        # Yahoo / AOL / Verizon
        "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.it", "yahoo.es", "yahoo.ca", "yahoo.co.in",
        "yahoo.co.jp", "yahoo.com.au", "yahoo.com.br", "yahoo.com.mx", "yahoo.com.ar", "ymail.com",
        "rocketmail.com", "aol.com", "aim.com", "verizon.net",
        # Apple
        "icloud.com", "me.com", "mac.com",
        # Privacy-focused and independent providers
        "proton.me", "protonmail.com", "protonmail.ch", "pm.me", "tutanota.com", "tutanota.de", "tuta.io",
        "fastmail.com", "fastmail.fm", "hushmail.com", "mailbox.org", "posteo.de", "posteo.net",
        "zoho.com", "zohomail.com", "mail.com", "email.com", "inbox.com", "hey.com",
        # German-speaking market
        "gmx.de", "gmx.net", "gmx.com", "gmx.at", "gmx.ch", "web.de", "t-online.de", "freenet.de",
        "arcor.de", "online.de", "bluewin.ch",
        # Other European consumer providers
        "orange.fr", "wanadoo.fr", "free.fr", "laposte.net", "sfr.fr", "libero.it", "virgilio.it", "tiscali.it",
        "alice.it", "seznam.cz", "centrum.cz", "wp.pl", "o2.pl", "onet.pl", "interia.pl", "btinternet.com",
        "sky.com", "virginmedia.com", "ziggo.nl", "telenet.be", "skynet.be",
        # Russia / CIS
        "yandex.ru", "yandex.com", "yandex.ua", "yandex.by", "yandex.kz", "ya.ru", "mail.ru", "bk.ru",
        "inbox.ru", "list.ru", "rambler.ru",
        # Asia-Pacific and the Americas
        "qq.com", "163.com", "126.com", "yeah.net", "sina.com", "sohu.com", "naver.com", "daum.net",
        "hanmail.net", "rediffmail.com", "bigpond.com", "optusnet.com.au", "uol.com.br", "bol.com.br",
        "terra.com.br", "comcast.net", "att.net", "sbcglobal.net", "cox.net", "charter.net", "shaw.ca",
        "rogers.com",
    }
)  # fmt: skip

# Brands whose free-mail service exists under many country domains (hotmail.*, yahoo.*, gmx.*, ...):
# "<brand>.<tld>" and "<brand>.<2-3 letters>.<tld>" count as free mail too.
_FREE_MAIL_BRANDS = frozenset({"hotmail", "yahoo", "gmx", "yandex"})
_COUNTRY_SUFFIX = re.compile(r"(?:[a-z]{2,3}\.)?[a-z]{2,3}")


def normalize_domain(raw: str) -> str | None:
    """Lower-case ASCII (punycode) form of a domain, or None if it is not a plausible mail domain.

    Accepts a leading ``@`` and a trailing dot. Domains the stdlib IDNA codec cannot encode are kept
    lower-cased in Unicode (NFC) when every label is letters, digits and hyphens. A domain needs two labels and a
    non-numeric top-level label (IP literals are not mail domains for matching purposes).
    """
    return _cached_domain(raw) if len(raw) <= _CACHED_LENGTH else _normalize_domain(raw)


def normalize_address(raw: str) -> str | None:
    """Canonical form of one bare address (``local@domain``), or None if it is not a plausible address.

    Strips surrounding whitespace, ``<...>``, ``mailto:`` (with its ``?query``, percent-decoded) and the
    ``smtp:`` prefix of Exchange proxy addresses; lower-cases everything (local parts included, as every
    mainstream provider treats them case-insensitively); encodes IDN domains as punycode. A quoted local
    part keeps its quotes and may contain spaces; anywhere else whitespace or control characters make the
    address invalid, as do Exchange legacy DNs (``/O=EXCHANGELABS/...``, ``IMCEAEX-...``).
    """
    return _cached_address(raw) if len(raw) <= _CACHED_LENGTH else _normalize_address(raw)


def _normalize_domain(raw: str) -> str | None:
    return _ascii_domain(raw) if raw.isascii() else _normalize_domain_general(raw)


def _normalize_address(raw: str) -> str | None:
    if raw.isascii():
        value = _strip_wrappers(raw.strip())  # NFC leaves ASCII unchanged
        if value.isascii():  # percent-decoding may have brought in other characters
            return _address(value, _ascii_local, _ascii_domain)
    return _normalize_address_general(raw)


_cached_domain = functools.lru_cache(maxsize=_CACHE_ENTRIES)(_normalize_domain)
_cached_address = functools.lru_cache(maxsize=_CACHE_ENTRIES)(_normalize_address)


def _normalize_domain_general(raw: str) -> str | None:
    """Any input, character by character: the reference the ASCII path must agree with."""
    value = unicodedata.normalize("NFC", raw.strip()).lower()
    value = value.removeprefix("@").removesuffix(".")
    if not value or len(value) > MAX_DOMAIN_LENGTH or any(_is_space_or_control(c) for c in value):
        return None
    if not value.isascii():
        try:
            value = value.encode("idna").decode("ascii")
        except UnicodeError:
            return _unicode_domain(value)
    labels = value.split(".")
    if len(labels) < 2 or labels[-1].isdigit() or len(value) > MAX_DOMAIN_LENGTH:
        return None
    if not all(_ASCII_LABEL.fullmatch(label) for label in labels):
        return None
    return value


def _normalize_address_general(raw: str) -> str | None:
    """Any input, character by character: the reference the ASCII path must agree with."""
    value = _strip_wrappers(unicodedata.normalize("NFC", raw.strip()))
    return _address(value, _plausible_local, _normalize_domain_general)


def _address(value: str, plausible_local: Callable[[str], bool], domain_of: Callable[[str], str | None]) -> str | None:
    if not value or len(value) > MAX_ADDRESS_LENGTH:
        return None
    local, at, domain_part = value.rpartition("@")
    local = local.lower()
    if not at or not local or local.startswith(_LEGACY_DN_LOCAL_PREFIXES) or not plausible_local(local):
        return None
    domain = domain_of(domain_part)
    if domain is None:
        return None
    address = f"{local}@{domain}"
    return address if len(address) <= MAX_ADDRESS_LENGTH else None


def _ascii_domain(raw: str) -> str | None:
    """``_normalize_domain_general`` for ASCII input: one regex instead of per-character checks."""
    value = raw.strip().lower().removeprefix("@").removesuffix(".")
    if len(value) > MAX_DOMAIN_LENGTH or _ASCII_DOMAIN.fullmatch(value) is None:
        return None
    return None if value.rpartition(".")[2].isdigit() else value


def _ascii_local(local: str) -> bool:
    """``_plausible_local`` for an ASCII local part."""
    pattern = _ASCII_QUOTED_LOCAL if local.startswith('"') else _ASCII_LOCAL
    return pattern.fullmatch(local) is not None


def is_free_mail(domain: str) -> bool:
    """True for consumer mail providers, where a domain says nothing about the company a person is with."""
    normalized = normalize_domain(domain)
    if normalized is None:
        return False
    if normalized in FREE_MAIL_DOMAINS:
        return True
    brand, _, suffix = normalized.partition(".")
    return brand in _FREE_MAIL_BRANDS and _COUNTRY_SUFFIX.fullmatch(suffix) is not None


def parse_address_list(header_value: str | Iterable[str] | None) -> tuple[EmailAddress, ...]:
    """Addresses of one or more address headers (From/To/Cc values), normalised, invalid ones dropped.

    Display names are RFC 2047-decoded; an address listed twice is kept once (first occurrence). Never raises.
    """
    if header_value is None:
        return ()
    values = [header_value] if isinstance(header_value, str) else list(header_value)
    seen: dict[str, EmailAddress] = {}
    for name, raw_address in getaddresses(values):
        address = normalize_address(raw_address)
        if address is not None and address not in seen:
            seen[address] = EmailAddress(address, _display_name(name, address))
    return tuple(seen.values())


def _strip_wrappers(value: str) -> str:
    for _ in range(2):  # "<mailto:a@b>" and "mailto:<a@b>" both unwrap
        if value.startswith("<") and value.endswith(">"):
            value = value[1:-1].strip()
        prefix = value[:7].lower()
        if prefix == "mailto:":
            value = unquote(value[7:].partition("?")[0]).strip()
        elif prefix.startswith("smtp:"):
            value = value[5:].strip()
    return value


def _plausible_local(local: str) -> bool:
    if local.startswith('"'):
        return _QUOTED_LOCAL.fullmatch(local) is not None and not any(
            _is_control(c) or (c.isspace() and c != " ") for c in local
        )
    return not any(c in _SPECIALS or _is_space_or_control(c) for c in local)


def _unicode_domain(value: str) -> str | None:
    labels = value.split(".")
    if len(labels) < 2 or not all(_plausible_unicode_label(label) for label in labels):
        return None
    return value


def _plausible_unicode_label(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)


def _display_name(raw_name: str, address: str) -> str:
    name = " ".join(decode_encoded_words(raw_name).split())
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":  # Outlook's 'John Doe'
        name = name[1:-1].strip()
    return "" if name.lower() == address else name


def _is_control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


def _is_space_or_control(char: str) -> bool:
    return char.isspace() or _is_control(char)
