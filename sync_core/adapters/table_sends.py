"""The ``SendStore`` over Table storage.

Layout (PartitionKey / RowKey):
- ``<prefix>sends``: ``<org>`` / ``s|<send>``: the send (its request as JSON, inline when small);
  ``k|<sha256 of the Idempotency-Key>``: the key's send id; ``m|<mailbox>|<inverted created>|<send>``:
  the mailbox's listing, newest first; ``d|<send>``: the RowKey of the send's due row;
  ``p|<mailbox>``: the mailbox's pacing window.
- ``<prefix>sendparts``: ``<org>|<send>`` / ``a|<attachment index>|<chunk>``: attachment bytes in
  binary properties of up to 64 KiB, ``CHUNKS_PER_ROW`` to a row; ``r|<chunk>``: a request too large to
  keep inline.
- ``<prefix>senddue``: ``due`` / ``<sortable time>|<org>|<send>``: sends due, earliest first.

Invariants:
- ``create`` writes the attachment bytes first, then the send, its key row and its listing row in one
  entity group transaction: of concurrent creates with one key exactly one commits; the others read the
  key row and return its send (and remove their own parts). A crash before the transaction leaves parts
  no send points to (never read).
- A send's replace is ETag-conditional (``ConcurrencyConflict`` when stale), as is the pacing row's.
- A due row whose send's pointer names another row is stale (a crash between the two writes of
  ``set_due``): ``due`` drops it on sight.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from azure.data.tables import TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import Table, TableMetrics, Write, etag_of, key_only, table_name
from sync_core.adapters.table_codec import (
    decode_cursor,
    encode_cursor,
    from_stored_datetime,
    get_text,
    put_text,
    to_utc,
)
from sync_core.domain.model import EmailAddress
from sync_core.domain.sending import (
    AttachmentSpec,
    PacingWindow,
    Send,
    SendError,
    SendRequest,
    SendStatus,
    SendStep,
)
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports import Page, Versioned

CHUNK_BYTES = 64 * 1024
CHUNKS_PER_ROW = 10  # 640 KiB per row: under the 1 MiB entity limit also as base64 on the wire
INLINE_REQUEST_CHARS = 120_000
DUE_PARTITION = "due"


class TableSendStore:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        shared = metrics or TableMetrics()
        self._sends = Table(service, table_name(prefix, "sends"), shared)
        self._parts = Table(service, table_name(prefix, "sendparts"), shared)
        self._due = Table(service, table_name(prefix, "senddue"), shared)

    # -- sends ------------------------------------------------------------------------------------

    def create(self, send: Send, attachments: Sequence[bytes]) -> tuple[Versioned[Send], bool]:
        existing = self.by_key(send.org_id, send.idempotency_key)
        if existing is not None:
            return existing, False
        parts_pk = _parts_partition(send.org_id, send.send_id)
        request_text = json.dumps(_request_json(send.request), ensure_ascii=False, separators=(",", ":"))
        inline = len(request_text) <= INLINE_REQUEST_CHARS
        writes = [Write("upsert", row) for row in _byte_rows(parts_pk, attachments)]
        if not inline:
            writes += [Write("upsert", row) for row in _chunk_rows(parts_pk, "r", request_text.encode())]
        if writes:
            self._parts.submit(writes)
        pk = keys.org_partition(send.org_id)
        entity = _send_entity(send, request_text if inline else None)
        key_row = {"PartitionKey": pk, "RowKey": _key_row(send.idempotency_key), "send_id": send.send_id}
        listing = {
            "PartitionKey": pk,
            "RowKey": _listing_row(send.mailbox_id, send.created_at, send.send_id),
            "send_id": send.send_id,
        }
        try:
            etags = self._sends.transact([Write("create", entity), Write("create", key_row), Write("create", listing)])
        except (AlreadyExists, ConcurrencyConflict):
            winner = self.by_key(send.org_id, send.idempotency_key)
            if winner is None:
                raise
            if writes:
                self._parts.submit([Write("delete", key_only(w.entity)) for w in writes])
            return winner, False
        return Versioned(send, etags[0]), True

    def by_key(self, org_id: str, idempotency_key: str) -> Versioned[Send] | None:
        row = self._sends.get(keys.org_partition(org_id), _key_row(idempotency_key))
        return self.get(org_id, str(row["send_id"])) if row is not None else None

    def get(self, org_id: str, send_id: str) -> Versioned[Send] | None:
        entity = self._sends.get(keys.org_partition(org_id), _send_row(send_id))
        if entity is None:
            return None
        return Versioned(self._from_entity(org_id, entity), etag_of(entity))

    def replace(self, send: Send, etag: str) -> Versioned[Send]:
        text = json.dumps(_request_json(send.request), ensure_ascii=False, separators=(",", ":"))
        if len(text) > INLINE_REQUEST_CHARS:
            text = ""  # kept in the parts table since the create (a send's request never changes)
        new_etag = self._sends.write(Write("update", _send_entity(send, text), etag))
        return Versioned(send, new_etag)

    def content(self, org_id: str, send_id: str) -> tuple[bytes, ...]:
        chunks: dict[int, list[tuple[int, bytes]]] = {}
        low, high = "a|", "a}"
        for row in self._parts.rows(_parts_partition(org_id, send_id), at_least=low, below=high):
            _, index, first = str(row["RowKey"]).split("|")
            for n in range(int(row.get("chunks", 0))):
                chunks.setdefault(int(index), []).append((int(first) + n, bytes(row[f"c{n}"])))
        count = max(chunks) + 1 if chunks else 0
        return tuple(b"".join(c for _, c in sorted(chunks.get(i, []))) for i in range(count))

    def drop_content(self, org_id: str, send_id: str) -> None:
        rows = list(self._parts.rows(_parts_partition(org_id, send_id), select=["PartitionKey", "RowKey"]))
        if rows:
            self._parts.submit([Write("delete", key_only(row)) for row in rows])

    def for_mailbox(self, org_id: str, mailbox_id: str, cursor: str | None, limit: int) -> Page[Send]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        prefix = keys.compose("m", keys.key_part(mailbox_id))
        low, high = keys.prefix_bounds(prefix)
        after = prefix + keys.SEPARATOR + decode_cursor(cursor) if cursor else None
        rows = self._sends.rows(
            keys.org_partition(org_id),
            at_least=None if after else low,
            after=after,
            below=high,
            page_size=limit + 1,
        )
        found: list[tuple[str, str]] = []
        for row in rows:
            found.append((str(row["RowKey"]), str(row["send_id"])))
            if len(found) > limit:
                break
        page = found[:limit]
        sends = [self.get(org_id, send_id) for _, send_id in page]
        more = len(found) > limit
        position = page[-1][0][len(prefix) + 1 :] if page else ""
        return Page(tuple(s.value for s in sends if s is not None), encode_cursor(position) if more else None)

    # -- due times --------------------------------------------------------------------------------

    def set_due(self, org_id: str, send_id: str, at: datetime | None) -> None:
        pk = keys.org_partition(org_id)
        pointer = self._sends.get(pk, _due_pointer(send_id))
        old = str(pointer["due_row"]) if pointer is not None else None
        new = _due_row(at, org_id, send_id) if at is not None else None
        if old == new:
            return
        if new is not None:
            self._due.write(
                Write("upsert", {"PartitionKey": DUE_PARTITION, "RowKey": new, "org_id": org_id, "send_id": send_id})
            )
            self._sends.write(Write("upsert", {"PartitionKey": pk, "RowKey": _due_pointer(send_id), "due_row": new}))
        elif pointer is not None:
            self._sends.write(Write("delete", {"PartitionKey": pk, "RowKey": _due_pointer(send_id)}))
        if old is not None:
            self._due.write(Write("delete", {"PartitionKey": DUE_PARTITION, "RowKey": old}))

    def due(self, before: datetime, limit: int) -> tuple[tuple[str, str], ...]:
        found: list[tuple[str, str]] = []
        for row in self._due.rows(DUE_PARTITION, below=keys.sortable_time(to_utc(before))):
            if len(found) >= limit:
                break
            org_id, send_id = str(row["org_id"]), str(row["send_id"])
            pointer = self._sends.get(keys.org_partition(org_id), _due_pointer(send_id))
            if pointer is None or str(pointer["due_row"]) != str(row["RowKey"]):
                self._due.write(Write("delete", {"PartitionKey": DUE_PARTITION, "RowKey": row["RowKey"]}))
                continue
            found.append((org_id, send_id))
        return tuple(found)

    # -- pacing -----------------------------------------------------------------------------------

    def pacing(self, org_id: str, mailbox_id: str) -> Versioned[PacingWindow] | None:
        entity = self._sends.get(keys.org_partition(org_id), _pacing_row(mailbox_id))
        if entity is None:
            return None
        slots = json.loads(get_text(entity, "slots") or "[]")
        window = PacingWindow(tuple((datetime.fromisoformat(at), int(n)) for at, n in slots))
        return Versioned(window, etag_of(entity))

    def put_pacing(self, org_id: str, mailbox_id: str, window: PacingWindow, etag: str | None) -> str:
        entity: dict[str, Any] = {"PartitionKey": keys.org_partition(org_id), "RowKey": _pacing_row(mailbox_id)}
        put_text(entity, "slots", json.dumps([[to_utc(at).isoformat(), n] for at, n in window.slots]))
        try:
            return self._sends.write(Write("update", entity, etag) if etag else Write("create", entity))
        except AlreadyExists as exc:
            raise ConcurrencyConflict("the mailbox's pacing changed concurrently") from exc

    # -- codec ------------------------------------------------------------------------------------

    def _from_entity(self, org_id: str, entity: Mapping[str, Any]) -> Send:
        text = get_text(entity, "request")
        if not text:
            parts = self._parts.rows(_parts_partition(org_id, str(entity["send_id"])), at_least="r|", below="r}")
            text = b"".join(bytes(row[f"c{n}"]) for row in parts for n in range(int(row.get("chunks", 0)))).decode()
        error = (
            SendError(str(entity["error_code"]), str(entity.get("error_message", "")))
            if entity.get("error_code")
            else None
        )
        return Send(
            org_id=org_id,
            send_id=str(entity["send_id"]),
            mailbox_id=str(entity["mailbox_id"]),
            idempotency_key=str(entity["idempotency_key"]),
            fingerprint=str(entity["fingerprint"]),
            request=_request_from_json(json.loads(text)),
            created_at=from_stored_datetime(entity["created_at"]),
            status=SendStatus(str(entity["status"])),
            step=SendStep(str(entity.get("step", SendStep.NONE.value))),
            handle=str(entity.get("handle", "")),
            not_before=_time(entity.get("not_before")),
            sent_at=_time(entity.get("sent_at")),
            internet_message_id=str(entity.get("internet_message_id", "")),
            activity_id=str(entity.get("activity_id", "")),
            error=error,
            attempts=int(entity.get("attempts", 0)),
            announced=bool(entity.get("announced", False)),
            lease_owner=str(entity.get("lease_owner", "")),
            lease_until=_time(entity.get("lease_until")),
        )


def _time(value: Any) -> datetime | None:
    return from_stored_datetime(value) if isinstance(value, datetime) else None


def _send_entity(send: Send, request_text: str | None) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": keys.org_partition(send.org_id),
        "RowKey": _send_row(send.send_id),
        "send_id": send.send_id,
        "mailbox_id": send.mailbox_id,
        "idempotency_key": send.idempotency_key,
        "fingerprint": send.fingerprint,
        "created_at": to_utc(send.created_at),
        "status": send.status.value,
        "step": send.step.value,
        "handle": send.handle,
        "internet_message_id": send.internet_message_id,
        "activity_id": send.activity_id,
        "attempts": send.attempts,
        "announced": send.announced,
        "lease_owner": send.lease_owner,
    }
    for name in ("not_before", "sent_at", "lease_until"):
        value = getattr(send, name)
        if value is not None:
            entity[name] = to_utc(value)
    if send.error is not None:
        entity["error_code"] = send.error.code
        entity["error_message"] = send.error.message
    put_text(entity, "request", request_text or "")
    return entity


def _request_json(request: SendRequest) -> dict[str, Any]:
    def parties(items: tuple[EmailAddress, ...]) -> list[list[str]]:
        return [[p.address, p.name] for p in items]

    return {
        "to": parties(request.to),
        "cc": parties(request.cc),
        "bcc": parties(request.bcc),
        "subject": request.subject,
        "content_type": request.content_type,
        "content": request.content,
        "reply_to_activity_id": request.reply_to_activity_id,
        "record_ids": list(request.record_ids),
        "attachments": [[a.name, a.content_type, a.size, a.sha256] for a in request.attachments],
        "send_at": to_utc(request.send_at).isoformat() if request.send_at else None,
    }


def _request_from_json(data: Mapping[str, Any]) -> SendRequest:
    def parties(items: list[list[str]]) -> tuple[EmailAddress, ...]:
        return tuple(EmailAddress(address, name) for address, name in items)

    return SendRequest(
        to=parties(data["to"]),
        cc=parties(data["cc"]),
        bcc=parties(data["bcc"]),
        subject=data["subject"],
        content_type=data["content_type"],
        content=data["content"],
        reply_to_activity_id=data["reply_to_activity_id"],
        record_ids=tuple(data["record_ids"]),
        attachments=tuple(AttachmentSpec(n, t, int(s), h) for n, t, s, h in data["attachments"]),
        send_at=datetime.fromisoformat(data["send_at"]) if data.get("send_at") else None,
    )


def _byte_rows(pk: str, attachments: Sequence[bytes]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for index, content in enumerate(attachments):
        rows += _chunk_rows(pk, f"a|{index:04d}", content)
    return rows


def _chunk_rows(pk: str, prefix: str, content: bytes) -> list[dict[str, Any]]:
    chunks = [content[i : i + CHUNK_BYTES] for i in range(0, len(content), CHUNK_BYTES)] or [b""]
    rows = []
    for first in range(0, len(chunks), CHUNKS_PER_ROW):
        group = chunks[first : first + CHUNKS_PER_ROW]
        row: dict[str, Any] = {"PartitionKey": pk, "RowKey": f"{prefix}|{first:06d}", "chunks": len(group)}
        row.update({f"c{n}": chunk for n, chunk in enumerate(group)})
        rows.append(row)
    return rows


def _parts_partition(org_id: str, send_id: str) -> str:
    return keys.compose(keys.key_part(org_id), keys.key_part(send_id))


def _send_row(send_id: str) -> str:
    return keys.compose("s", keys.key_part(send_id))


def _key_row(idempotency_key: str) -> str:
    return keys.compose("k", hashlib.sha256(idempotency_key.encode()).hexdigest())


def _listing_row(mailbox_id: str, created_at: datetime, send_id: str) -> str:
    return keys.compose("m", keys.key_part(mailbox_id), keys.inverted_time(to_utc(created_at)), keys.key_part(send_id))


def _due_pointer(send_id: str) -> str:
    return keys.compose("d", keys.key_part(send_id))


def _due_row(at: datetime, org_id: str, send_id: str) -> str:
    return keys.compose(keys.sortable_time(to_utc(at)), keys.key_part(org_id), keys.key_part(send_id))


def _pacing_row(mailbox_id: str) -> str:
    return keys.compose("p", keys.key_part(mailbox_id))
