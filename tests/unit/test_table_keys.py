"""Table keys: the escaping is reversible and never yields a character Table storage forbids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from sync_core.adapters.table_keys import (
    MAX_PART_UNITS,
    SEPARATOR,
    compose,
    escape_key,
    inverted_time,
    key_part,
    prefix_bounds,
    sortable_time,
    timeline_row,
    unescape_key,
)

FORBIDDEN = "/\\#?" + "".join(map(chr, range(0x20))) + "".join(map(chr, range(0x7F, 0xA0)))
SAMPLES = [
    "",
    "plain-id_123",
    "ann.o'neil+crm@client.example",
    "<CAF=abc/def#1?x@mail.gmail.com>",
    "100%|50%",
    "%41 is not an escape",
    "tab\there\nnewline\r\x00\x7f\x9f",
    "Zoë Ødegård 中文 العربية",
    "astral 😀𝄞 pair",
    "lone \ud800 and \udfff surrogates",
    FORBIDDEN,
]


def assert_valid_key(key: str) -> None:
    assert not set(key) & set(FORBIDDEN)
    assert len(key.encode("utf-16-le", "surrogatepass")) <= 1024
    assert not any(0xD800 <= ord(char) <= 0xDFFF for char in key)


@pytest.mark.parametrize("value", SAMPLES)
def test_escaping_round_trips(value: str) -> None:
    assert unescape_key(escape_key(value)) == value


@pytest.mark.parametrize("value", SAMPLES)
def test_escaped_values_hold_no_forbidden_character_no_separator_and_no_lone_surrogate(value: str) -> None:
    escaped = escape_key(value)
    assert_valid_key(escaped)
    assert SEPARATOR not in escaped


def test_every_forbidden_character_is_escaped_to_percent_hex() -> None:
    for char in FORBIDDEN:
        assert escape_key(char) == f"%{ord(char):02X}"


def test_percent_and_the_separator_are_escaped_so_distinct_parts_never_collide() -> None:
    assert escape_key("%") == "%25"
    assert escape_key("|") == "%7C"
    assert compose(key_part("a|b"), key_part("c")) != compose(key_part("a"), key_part("b|c"))


def test_unicode_outside_the_forbidden_ranges_is_kept_as_is() -> None:
    assert escape_key("Zoë 中文 😀") == "Zoë 中文 😀"


@pytest.mark.parametrize("text", ["%", "%4", "%zz", "%2f", "%u0041", "a|b", "a/b"])
def test_unescaping_rejects_text_the_escaping_cannot_produce(text: str) -> None:
    with pytest.raises(ValueError, match="not an escaped key"):
        unescape_key(text)


def test_an_empty_value_gets_a_non_empty_key_part_distinct_from_any_escaped_value() -> None:
    assert key_part("") not in {escape_key(value) for value in SAMPLES}
    assert key_part("")


def test_overlong_values_become_a_fixed_length_digest_that_stays_distinct() -> None:
    long_a, long_b = "a" * 10_000, "a" * 9_999 + "b"
    assert key_part(long_a) != key_part(long_b)
    assert key_part(long_a) == key_part(long_a)
    assert len(key_part(long_a)) <= MAX_PART_UNITS
    assert_valid_key(key_part(long_a))
    assert key_part("😀" * 80).startswith("%=")  # 160 UTF-16 code units
    assert key_part("😀" * 75) == "😀" * 75


def test_a_composite_key_of_three_overlong_parts_fits_the_key_limit() -> None:
    key = timeline_row("r" * 5000, datetime(2026, 1, 1, tzinfo=UTC), "\x00" * 5000)
    assert_valid_key(key)


def test_prefix_bounds_enclose_exactly_the_keys_under_a_prefix() -> None:
    low, high = prefix_bounds(compose("t", key_part("rec-1")))
    inside = compose("t", key_part("rec-1"), "anything")
    outside = compose("t", key_part("rec-10"), "x")
    assert low <= inside < high
    assert not low <= outside < high


def test_time_parts_sort_like_the_times_and_inverted_ones_sort_newest_first() -> None:
    times = [
        datetime(1601, 1, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 0, 2, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    assert sorted(times, key=sortable_time) == times
    assert sorted(times, key=inverted_time) == times[::-1]
    assert len({len(sortable_time(t)) for t in times} | {len(inverted_time(t)) for t in times}) == 1


def test_time_parts_are_independent_of_the_time_zone() -> None:
    moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    same_moment_in_paris = moment.astimezone(timezone(timedelta(hours=1)))
    assert sortable_time(same_moment_in_paris) == sortable_time(moment)
    assert inverted_time(same_moment_in_paris) == inverted_time(moment)
