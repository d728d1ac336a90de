"""Table storage keys: one reversible escaping for user data, and the key layout of every table.

Table storage forbids ``/ \\ # ?`` and the control characters U+0000-U+001F and U+007F-U+009F in
PartitionKey and RowKey, and bounds each key to 1 KiB (512 UTF-16 code units).

Invariants:
- ``escape_key`` is reversible (``unescape_key``). Its output never contains a forbidden character,
  the separator ``|`` or a lone surrogate: those characters and ``%`` itself become ``%XX`` (or
  ``%uXXXX`` for lone surrogates). So parts joined with ``|`` never collide: distinct inputs, distinct keys.
- ``key_part`` is what every key built from user data (org ids, record ids, addresses, message ids…)
  goes through: the escaped value, or, beyond ``MAX_PART_UNITS``, a digest form ``%=<sha256>`` that no
  escaped value can equal. Keys are never parsed back: entities keep the original values as properties.
- Every key of an org's data starts with ``key_part(org_id) + "|"``, so nothing of one org is reachable
  through another org's id.
- Time parts are fixed-width decimal microseconds since 0001-01-01 UTC, so RowKey order is time order;
  ``inverted_time`` sorts newest first.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

SEPARATOR = "|"
# Longest escaped part kept verbatim, in UTF-16 code units: three parts plus fixed text stay far below
# the 512 code units a key may hold.
MAX_PART_UNITS = 150

_ESCAPED_CHARACTERS = (
    "/\\#?%" + SEPARATOR + "".join(map(chr, range(0x20))) + "".join(map(chr, range(0x7F, 0xA0)))
)
_ESCAPE_TABLE: dict[int, str] = {ord(char): f"%{ord(char):02X}" for char in _ESCAPED_CHARACTERS}
_ESCAPE_TABLE.update({code: f"%u{code:04X}" for code in range(0xD800, 0xE000)})
_ESCAPE_SEQUENCE = re.compile(r"%(?:u([0-9A-F]{4})|([0-9A-F]{2}))")
_EMPTY_PART = "%-"
_DIGEST_MARK = "%="

_EPOCH = datetime(1, 1, 1, tzinfo=UTC)
_TIME_DIGITS = 18
_TIME_MAX = 10**_TIME_DIGITS - 1


def escape_key(value: str) -> str:
    """Escape ``value`` so it is a valid, unambiguous key part (see the module invariants)."""
    return value.translate(_ESCAPE_TABLE)


def unescape_key(key: str) -> str:
    """Invert ``escape_key``; raises ValueError on text ``escape_key`` cannot produce."""
    pieces: list[str] = []
    position = 0
    for match in _ESCAPE_SEQUENCE.finditer(key):
        pieces.append(key[position : match.start()])
        pieces.append(chr(int(match.group(1) or match.group(2), 16)))
        position = match.end()
    pieces.append(key[position:])
    text = "".join(pieces)
    if escape_key(text) != key:
        raise ValueError(f"not an escaped key: {key!r}")
    return text


def key_part(value: str) -> str:
    """The key form of one piece of user data: escaped, or a fixed-length digest when too long."""
    if not value:
        return _EMPTY_PART
    escaped = escape_key(value)
    if _utf16_units(escaped) <= MAX_PART_UNITS:
        return escaped
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return _DIGEST_MARK + digest


def compose(*parts: str) -> str:
    return SEPARATOR.join(parts)


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """RowKey bounds ``[low, high)`` of every key starting with ``prefix + SEPARATOR``."""
    return prefix + SEPARATOR, prefix + chr(ord(SEPARATOR) + 1)


def sortable_time(moment: datetime) -> str:
    return f"{_ticks(moment):0{_TIME_DIGITS}d}"


def inverted_time(moment: datetime) -> str:
    return f"{_TIME_MAX - _ticks(moment):0{_TIME_DIGITS}d}"


def _ticks(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2  # escaped text holds no lone surrogate


# --- Layout -------------------------------------------------------------------------------------
# records table: a record's row in its org's records partition; one partition per address and per
# domain holding a row per record that has it (a lookup is one partition query, never a scan).


def record_partition(org_id: str) -> str:
    return compose(key_part(org_id), "r")


def address_partition(org_id: str, address: str) -> str:
    return compose(key_part(org_id), "e", key_part(address))


def domain_partition(org_id: str, domain: str) -> str:
    return compose(key_part(org_id), "d", key_part(domain))


# activities table: one partition per org holds an activity and all its index rows, so one entity
# group transaction writes an activity with its index rows atomically.
#   a|<activity>                          the activity
#   t|<record>|<inverted received>|<act>  a record's timeline, newest first
#   h|<thread>|<received>|<act>           a thread, oldest first
#   m|<mailbox>|<act>                     the activities a mailbox saw (for purge)
#   o|<act>|<event>                       the outbox: the activity's creation, not yet announced


def activity_partition(org_id: str) -> str:
    return key_part(org_id)


def activity_row(activity_id: str) -> str:
    return compose("a", key_part(activity_id))


def timeline_prefix(record_id: str) -> str:
    return compose("t", key_part(record_id))


def timeline_position(received_at: datetime, activity_id: str) -> str:
    """Where an activity sits in any record's timeline: newest first, then by activity key."""
    return compose(inverted_time(received_at), key_part(activity_id))


def timeline_row(record_id: str, received_at: datetime, activity_id: str) -> str:
    return compose(timeline_prefix(record_id), timeline_position(received_at, activity_id))


def thread_prefix(thread_id: str) -> str:
    return compose("h", key_part(thread_id))


def thread_position(received_at: datetime, activity_id: str) -> str:
    """Where an activity sits in its thread: oldest first, then by activity key."""
    return compose(sortable_time(received_at), key_part(activity_id))


def thread_row(thread_id: str, received_at: datetime, activity_id: str) -> str:
    return compose(thread_prefix(thread_id), thread_position(received_at, activity_id))


OUTBOX_PREFIX = "o"


def outbox_row(activity_id: str, event_id: str) -> str:
    return compose(OUTBOX_PREFIX, key_part(activity_id), key_part(event_id))


def mailbox_prefix(mailbox_id: str) -> str:
    return compose("m", key_part(mailbox_id))


def mailbox_row(mailbox_id: str, activity_id: str) -> str:
    return compose(mailbox_prefix(mailbox_id), key_part(activity_id))


# state tables: mailboxes, cursors, leases, runs, settings.


def org_partition(org_id: str) -> str:
    return key_part(org_id)


def mailbox_partition(org_id: str, mailbox_id: str) -> str:
    return compose(key_part(org_id), key_part(mailbox_id))


def run_row(started_at: datetime, run_id: str) -> str:
    return compose(inverted_time(started_at), key_part(run_id))
