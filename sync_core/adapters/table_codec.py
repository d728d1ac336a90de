"""Entity encoding within Table storage limits, shared by the Table adapters and their in-memory doubles.

Limits (Table storage): a string property holds at most 64 KiB (32,768 UTF-16 code units); an entity
holds at most 1 MiB, measured by the documented formula ``entity_size`` implements; DateTime values lie
in 1601-01-01..9999-12-31 UTC.

Invariants:
- Long text is stored in chunks ``<name>_0 … <name>_<n-1>`` of at most ``PROPERTY_MAX_UNITS`` code units
  plus ``<name>_parts = n``; a chunk never ends inside a surrogate pair.
- ``fit_activity`` is the activity exactly as stored (what ``get`` returns, in both implementations):
  lone surrogates become U+FFFD, single text fields are clipped to one property, to/cc/attachments lists
  are capped, and the body keeps at most ``BODY_MAX_UNITS`` code units and whatever else fits the entity
  budget (``body_truncated`` is set when it was cut). Records and mailbox ids are never cut.
- Datetimes are stored and returned as timezone-aware UTC (naive input is taken as UTC) with microseconds.
- Decoding tolerates missing properties (field defaults), so adding a field never breaks stored rows.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from sync_core.adapters import table_keys as keys
from sync_core.domain.model import Activity, AttachmentSummary, Direction, EmailAddress, Record, RecordRef
from sync_core.ports import ActivityEvent

PROPERTY_MAX_UNITS = 32_000
BODY_CHUNKS_MAX = 15
BODY_MAX_UNITS = BODY_CHUNKS_MAX * PROPERTY_MAX_UNITS
ENTITY_MAX_BYTES = 1_048_576
# What an activity may fill: the rest of the 1 MiB is margin for the service's own accounting.
ENTITY_BUDGET_BYTES = 1_000_000
RECIPIENTS_MAX_UNITS = 3 * PROPERTY_MAX_UNITS
ATTACHMENTS_MAX_UNITS = PROPERTY_MAX_UNITS

_EDM_MIN = datetime(1601, 1, 1, tzinfo=UTC)
_EDM_MAX = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Entity = dict[str, Any]
D = TypeVar("D", bound="DataclassInstance")
T = TypeVar("T")


# --- Text ---------------------------------------------------------------------------------------


def utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def clean_text(text: str) -> str:
    """Replace lone surrogates (undecodable input) with U+FFFD: Table storage needs valid Unicode."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def clip(text: str, max_units: int) -> tuple[str, bool]:
    """The longest prefix of ``text`` within ``max_units`` UTF-16 code units, and whether it was cut."""
    if len(text) * 2 <= max_units:
        return text, False
    encoded = text.encode("utf-16-le", "surrogatepass")
    if len(encoded) <= 2 * max_units:
        return text, False
    kept = encoded[: 2 * max(max_units, 0)]
    if kept and 0xD8 <= kept[-1] <= 0xDB:  # the cut would split a surrogate pair: drop its first half
        kept = kept[:-2]
    return kept.decode("utf-16-le", "surrogatepass"), True


def _chunks(text: str) -> list[str]:
    chunks: list[str] = []
    while text:
        chunk, _ = clip(text, PROPERTY_MAX_UNITS)
        chunks.append(chunk)
        text = text[len(chunk) :]
    return chunks


def put_text(entity: Entity, name: str, text: str) -> None:
    chunks = _chunks(text)
    entity[f"{name}_parts"] = len(chunks)
    for index, chunk in enumerate(chunks):
        entity[f"{name}_{index}"] = chunk


def get_text(entity: Mapping[str, Any], name: str) -> str:
    parts = int(entity.get(f"{name}_parts", 0))
    return "".join(str(entity[f"{name}_{index}"]) for index in range(parts))


def dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def put_json(entity: Entity, name: str, value: object) -> None:
    put_text(entity, name, dumps(value))


def get_json(entity: Mapping[str, Any], name: str, default: object) -> Any:
    text = get_text(entity, name)
    return json.loads(text) if text else default


# --- Sizes and dates ----------------------------------------------------------------------------


def entity_size(entity: Mapping[str, Any]) -> int:
    """Bytes an entity takes by Table storage's documented formula (keys and Timestamp included)."""
    size = 4 + 8 + 2 * len("Timestamp") + 8
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey"):
            size += 2 * utf16_units(str(value))
            continue
        size += 8 + 2 * len(name) + _value_size(value)
    return size


def _value_size(value: object) -> int:
    if isinstance(value, str):
        return 4 + 2 * utf16_units(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, bytes):
        return 4 + len(value)
    return 8


def to_utc(moment: datetime) -> datetime:
    """Aware UTC (naive means UTC), clamped to the DateTime range Table storage accepts."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return min(max(aware, _EDM_MIN), _EDM_MAX)


def from_stored_datetime(value: datetime) -> datetime:
    """A plain aware-UTC datetime from what the SDK returns (a datetime subclass)."""
    return datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond, tzinfo=UTC
    )


# --- Activities ---------------------------------------------------------------------------------


def merge_activity(stored: Activity, incoming: Activity) -> Activity:
    """The stored activity (its content wins) plus the incoming mailbox ids and record links. Direction is
    ``sent`` once any mailbox of the org saw the message as sent: the org's own user wrote it, whichever
    recipient's mailbox happened to be synced first."""
    mailbox_ids = stored.mailbox_ids + tuple(m for m in incoming.mailbox_ids if m not in stored.mailbox_ids)
    known = {ref.record_id for ref in stored.records}
    records = stored.records + tuple(ref for ref in _unique_records(incoming.records) if ref.record_id not in known)
    direction = Direction.SENT if Direction.SENT in (stored.direction, incoming.direction) else stored.direction
    return dataclasses.replace(
        stored,
        mailbox_ids=tuple(dict.fromkeys(mailbox_ids)),
        records=records,
        direction=direction,
        sent_from_crm=stored.sent_from_crm or incoming.sent_from_crm,
        send_id=stored.send_id or incoming.send_id,
    )


def new_events(activities: Sequence[Activity], announce_at: datetime | None) -> dict[str, ActivityEvent]:
    """A fresh outbox event per activity id when ``announce_at`` is given (the adapter's and the double's)."""
    if announce_at is None:
        return {}
    at = to_utc(announce_at)
    return {a.activity_id: ActivityEvent(a.org_id, a.activity_id, uuid.uuid4().hex, at) for a in activities}


def group_by_org(activities: Sequence[Activity]) -> dict[str, dict[str, Activity]]:
    """Activities by org and id, in first-seen order; a repeated id folds into its first occurrence."""
    grouped: dict[str, dict[str, Activity]] = {}
    for activity in activities:
        of_org = grouped.setdefault(activity.org_id, {})
        earlier = of_org.get(activity.activity_id)
        of_org[activity.activity_id] = merge_activity(earlier, activity) if earlier is not None else activity
    return grouped


def encode_cursor(position: str) -> str:
    """An opaque timeline cursor: the position (RowKey tail) of the last item returned."""
    return base64.urlsafe_b64encode(position.encode()).decode()


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor.encode()).decode()
    except (binascii.Error, UnicodeError) as exc:
        raise ValueError("invalid cursor") from exc


def _unique_records(records: tuple[RecordRef, ...]) -> tuple[RecordRef, ...]:
    seen: dict[str, RecordRef] = {}
    for ref in records:
        seen.setdefault(ref.record_id, ref)
    return tuple(seen.values())


def fit_activity(activity: Activity) -> Activity:
    """The activity as stored: cleaned, lists capped, body cut to what fits (see module invariants)."""
    cleaned = _cleaned(activity)
    without_body = dataclasses.replace(cleaned, body_text="")
    chunk_names = sum(8 + 2 * len(f"body_{index}") + 4 for index in range(BODY_CHUNKS_MAX))
    used = entity_size(activity_entity(without_body)) + chunk_names
    room = min(BODY_MAX_UNITS, (ENTITY_BUDGET_BYTES - used) // 2)
    if room < 0:
        raise ValueError(f"activity {activity.activity_id}: record links and mailbox ids exceed one entity")
    body, cut = clip(cleaned.body_text, room)
    return dataclasses.replace(cleaned, body_text=body, body_truncated=cleaned.body_truncated or cut)


def _cleaned(activity: Activity) -> Activity:
    def single(text: str) -> str:
        return clip(clean_text(text), PROPERTY_MAX_UNITS)[0]

    def address(party: EmailAddress) -> EmailAddress:
        return EmailAddress(single(party.address), single(party.name))

    def attachment(item: AttachmentSummary) -> AttachmentSummary:
        return AttachmentSummary(single(item.name), item.size, single(item.content_type))

    return dataclasses.replace(
        activity,
        internet_message_id=single(activity.internet_message_id),
        thread_id=single(activity.thread_id),
        subject=single(activity.subject),
        body_text=clean_text(activity.body_text),
        body_preview=single(activity.body_preview),
        sender=address(activity.sender) if activity.sender is not None else None,
        to=_capped(tuple(map(address, activity.to)), _address_json, RECIPIENTS_MAX_UNITS),
        cc=_capped(tuple(map(address, activity.cc)), _address_json, RECIPIENTS_MAX_UNITS),
        attachments=_capped(tuple(map(attachment, activity.attachments)), _attachment_json, ATTACHMENTS_MAX_UNITS),
        sent_at=to_utc(activity.sent_at) if activity.sent_at is not None else None,
        received_at=to_utc(activity.received_at),
        records=_unique_records(activity.records),
        mailbox_ids=tuple(dict.fromkeys(activity.mailbox_ids)),
        conversation_id=single(activity.conversation_id) if activity.conversation_id is not None else None,
    )


def _capped(items: tuple[T, ...], as_json: typing.Callable[[T], object], max_units: int) -> tuple[T, ...]:
    """The longest leading run of ``items`` whose JSON list stays within ``max_units``."""
    units = 2
    for index, item in enumerate(items):
        units += utf16_units(dumps(as_json(item))) + (1 if index else 0)
        if units > max_units:
            return items[:index]
    return items


def _address_json(party: EmailAddress) -> list[str]:
    return [party.address, party.name]


def _attachment_json(item: AttachmentSummary) -> list[object]:
    return [item.name, item.size, item.content_type]


def activity_entity(activity: Activity) -> Entity:
    """Encode an activity (already ``fit_activity``-ed) as its main row."""
    entity: Entity = {
        "PartitionKey": keys.activity_partition(activity.org_id),
        "RowKey": keys.activity_row(activity.activity_id),
        "org_id": activity.org_id,
        "activity_id": activity.activity_id,
        "internet_message_id": activity.internet_message_id,
        "thread_id": activity.thread_id,
        "subject": activity.subject,
        "body_preview": activity.body_preview,
        "body_truncated": activity.body_truncated,
        "received_at": activity.received_at,
        "direction": activity.direction.value,
    }
    if activity.sender is not None:
        entity["sender_address"] = activity.sender.address
        entity["sender_name"] = activity.sender.name
    if activity.sent_at is not None:
        entity["sent_at"] = activity.sent_at
    if activity.conversation_id is not None:
        entity["conversation_id"] = activity.conversation_id
    if activity.sent_from_crm:
        entity["sent_from_crm"] = True
    if activity.send_id:
        entity["send_id"] = activity.send_id
    put_text(entity, "body", activity.body_text)
    put_json(entity, "to", [_address_json(party) for party in activity.to])
    put_json(entity, "cc", [_address_json(party) for party in activity.cc])
    put_json(entity, "attachments", [_attachment_json(item) for item in activity.attachments])
    put_json(entity, "records", [[ref.record_id, ref.record_type] for ref in activity.records])
    put_json(entity, "mailbox_ids", list(activity.mailbox_ids))
    return entity


def activity_from_entity(entity: Mapping[str, Any]) -> Activity:
    sender = (
        EmailAddress(entity["sender_address"], entity.get("sender_name", "")) if "sender_address" in entity else None
    )
    sent_at = entity.get("sent_at")
    return Activity(
        org_id=entity["org_id"],
        activity_id=entity["activity_id"],
        internet_message_id=entity["internet_message_id"],
        thread_id=entity["thread_id"],
        subject=entity.get("subject", ""),
        body_text=get_text(entity, "body"),
        body_preview=entity.get("body_preview", ""),
        body_truncated=bool(entity.get("body_truncated", False)),
        sender=sender,
        to=tuple(EmailAddress(address, name) for address, name in get_json(entity, "to", [])),
        cc=tuple(EmailAddress(address, name) for address, name in get_json(entity, "cc", [])),
        sent_at=from_stored_datetime(sent_at) if sent_at is not None else None,
        received_at=from_stored_datetime(entity["received_at"]),
        direction=Direction(entity["direction"]),
        mailbox_ids=tuple(get_json(entity, "mailbox_ids", [])),
        records=tuple(RecordRef(record_id, record_type) for record_id, record_type in get_json(entity, "records", [])),
        attachments=tuple(
            AttachmentSummary(name, size, kind) for name, size, kind in get_json(entity, "attachments", [])
        ),
        conversation_id=entity.get("conversation_id"),
        sent_from_crm=bool(entity.get("sent_from_crm", False)),
        send_id=entity.get("send_id"),
    )


# --- Records ------------------------------------------------------------------------------------


def stored_record(record: Record) -> Record:
    """The record as stored (both implementations): a clean name within one property, unique keys."""
    return dataclasses.replace(
        record,
        name=clip(clean_text(record.name), PROPERTY_MAX_UNITS)[0],
        emails=tuple(dict.fromkeys(record.emails)),
        domains=tuple(dict.fromkeys(record.domains)),
    )


# --- Plain dataclasses (mailboxes, settings, run reports) ---------------------------------------


def dataclass_entity(value: DataclassInstance, partition_key: str, row_key: str) -> Entity:
    """Encode a flat dataclass: scalars and enums as properties, datetimes as UTC, None omitted;
    tuples, mappings and nested dataclasses as chunked JSON."""
    entity: Entity = {"PartitionKey": partition_key, "RowKey": row_key}
    for item in dataclasses.fields(value):
        field_value = getattr(value, item.name)
        if field_value is None:
            continue
        if isinstance(field_value, Enum):
            entity[item.name] = field_value.value
        elif isinstance(field_value, datetime):
            entity[item.name] = to_utc(field_value)
        elif isinstance(field_value, str | bool | int | float):
            entity[item.name] = field_value
        elif dataclasses.is_dataclass(field_value) and not isinstance(field_value, type):
            put_json(entity, item.name, dataclasses.asdict(field_value))
        elif isinstance(field_value, Mapping):
            put_json(entity, item.name, dict(field_value))
        else:
            put_json(entity, item.name, list(field_value))
    return entity


def dataclass_from_entity(cls: type[D], entity: Mapping[str, Any]) -> D:
    """Decode what ``dataclass_entity`` wrote; a missing property takes the field's default."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        hint = _without_none(hints[item.name])
        origin = typing.get_origin(hint)
        if f"{item.name}_parts" in entity:
            decoded = get_json(entity, item.name, None)
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                values[item.name] = hint(**decoded)
            elif origin is tuple:
                values[item.name] = tuple(decoded)
            else:
                values[item.name] = decoded
        elif item.name in entity:
            raw = entity[item.name]
            if hint is datetime:
                values[item.name] = from_stored_datetime(raw)
            elif isinstance(hint, type) and issubclass(hint, Enum):
                values[item.name] = hint(raw)
            else:
                values[item.name] = raw
    return cls(**values)


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        remaining = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(remaining) == 1:
            return remaining[0]
    return hint
