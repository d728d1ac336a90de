"""CRM webhook deliveries and the org's webhook secret over Table storage.

Layout of ``<prefix>webhooks`` (PartitionKey / RowKey), one partition per org:
- ``<org>`` / ``d|<inverted created time>|<delivery id>``: one delivery (every ``WebhookDelivery`` field),
  newest first; a delivery keeps its row through its attempts (the queue message carries its key).
- ``<org>`` / ``secret``: the webhook secret, AES-GCM encrypted with ``TOKEN_ENCRYPTION_KEY`` and bound
  to the org (associated data), with ``revealed``, ``created_at`` and ``Kid`` (the key id it is
  encrypted under, in clear, for rotation; the ciphertext names it too).

Invariants:
- The secret never reaches the table in plaintext; a ciphertext copied to another org fails to decrypt
  (``WebhookSecretUnreadable``, as does one under a key no longer configured).
- Cursors are opaque positions in the org's delivery rows; a cursor stays valid while deliveries arrive.
"""

from __future__ import annotations

import itertools
from datetime import datetime

from azure.data.tables import TableServiceClient

from sync_core.adapters import table_keys as keys
from sync_core.adapters.table_client import Table, TableMetrics, Write, etag_of, key_only, table_name
from sync_core.adapters.table_codec import (
    dataclass_entity,
    dataclass_from_entity,
    decode_cursor,
    encode_cursor,
    from_stored_datetime,
    to_utc,
)
from sync_core.auth.crypto import TokenCipher
from sync_core.errors import ConcurrencyConflict, TokenDecryptionError, WebhookSecretUnreadable
from sync_core.ports import Page, Versioned
from sync_core.ports.push import WebhookDelivery, WebhookSecret

_SECRET_ROW = "secret"  # noqa: S105 - a row key, not a password
_DELIVERY = "d"


def delivery_position(created_at: datetime, delivery_id: str) -> str:
    """Where a delivery sits in its org's log: newest first, then by id (shared with the memory double)."""
    return keys.compose(keys.inverted_time(to_utc(created_at)), keys.key_part(delivery_id))


def secret_aad(org_id: str) -> bytes:
    return f"webhook-secret\n{org_id}".encode()


class TableWebhookLog:
    def __init__(self, service: TableServiceClient, prefix: str = "", metrics: TableMetrics | None = None) -> None:
        self._table = Table(service, table_name(prefix, "webhooks"), metrics or TableMetrics())

    def record(self, delivery: WebhookDelivery) -> None:
        row = keys.compose(_DELIVERY, delivery_position(delivery.created_at, delivery.delivery_id))
        self._table.write(Write("upsert", dataclass_entity(delivery, keys.org_partition(delivery.org_id), row)))

    def recent(self, org_id: str, cursor: str | None, limit: int) -> Page[WebhookDelivery]:
        low, high = keys.prefix_bounds(_DELIVERY)
        after = keys.compose(_DELIVERY, decode_cursor(cursor)) if cursor else None
        if after is not None and not low <= after < high:
            raise ValueError("invalid cursor")
        size = max(limit, 1)
        rows = self._table.rows(
            keys.org_partition(org_id), at_least=None if after else low, after=after, below=high, page_size=size + 1
        )
        entities = list(itertools.islice(rows, size + 1))
        items = tuple(dataclass_from_entity(WebhookDelivery, entity) for entity in entities[:size])
        more = len(entities) > size
        last = str(entities[size - 1]["RowKey"]).partition(keys.SEPARATOR)[2] if more else None
        return Page(items, encode_cursor(last) if last else None)

    def trim(self, org_id: str, keep: int) -> int:
        low, high = keys.prefix_bounds(_DELIVERY)
        rows = self._table.rows(
            keys.org_partition(org_id), at_least=low, below=high, select=["PartitionKey", "RowKey"], page_size=1000
        )
        stale = [Write("delete", key_only(entity)) for entity in itertools.islice(rows, max(keep, 0), None)]
        self._table.submit(stale)
        return len(stale)


class TableWebhookSecretStore:
    def __init__(
        self, service: TableServiceClient, cipher: TokenCipher, prefix: str = "", metrics: TableMetrics | None = None
    ) -> None:
        self._table = Table(service, table_name(prefix, "webhooks"), metrics or TableMetrics())
        self._cipher = cipher

    def get(self, org_id: str) -> Versioned[WebhookSecret] | None:
        entity = self._table.get(keys.org_partition(org_id), _SECRET_ROW)
        if entity is None:
            return None
        secret = WebhookSecret(
            value=open_secret(self._cipher, org_id, str(entity["ciphertext"])),
            created_at=from_stored_datetime(entity["created_at"]),
            revealed=bool(entity.get("revealed", False)),
        )
        return Versioned(secret, etag_of(entity))

    def put(self, org_id: str, secret: WebhookSecret, etag: str | None) -> str:
        entity = {
            "PartitionKey": keys.org_partition(org_id),
            "RowKey": _SECRET_ROW,
            "ciphertext": self._cipher.encrypt(secret.value.encode("utf-8"), secret_aad(org_id)),
            "Kid": self._cipher.current_kid,
            "created_at": to_utc(secret.created_at),
            "revealed": secret.revealed,
        }
        return self._table.write(Write("create", entity) if etag is None else Write("update", entity, etag))

    def version(self, org_id: str) -> str | None:
        entity = self._table.get(keys.org_partition(org_id), _SECRET_ROW, select=["PartitionKey", "RowKey"])
        return None if entity is None else etag_of(entity)

    def rewrap_if_needed(self, org_id: str) -> bool:
        entity = self._table.get(keys.org_partition(org_id), _SECRET_ROW)
        if entity is None or not needs_rewrap(self._cipher, str(entity["ciphertext"])):
            return False
        secret = WebhookSecret(
            value=open_secret(self._cipher, org_id, str(entity["ciphertext"])),
            created_at=from_stored_datetime(entity["created_at"]),
            revealed=bool(entity.get("revealed", False)),
        )
        try:
            self.put(org_id, secret, etag_of(entity))
        except ConcurrencyConflict:
            return False  # rewritten meanwhile, and every write uses the current key
        return True

    def stored_key_id(self, org_id: str) -> str | None:
        entity = self._table.get(keys.org_partition(org_id), _SECRET_ROW, select=["ciphertext"])
        return None if entity is None else stored_key_id(str(entity["ciphertext"]))


def open_secret(cipher: TokenCipher, org_id: str, ciphertext: str) -> str:
    """Decrypt a stored secret (shared with the memory double); ``WebhookSecretUnreadable`` if no key opens it."""
    try:
        return cipher.decrypt(ciphertext, secret_aad(org_id)).decode("utf-8")
    except TokenDecryptionError as exc:
        raise WebhookSecretUnreadable(
            f"the stored webhook secret cannot be decrypted with the configured keys ({exc})"
        ) from None


def needs_rewrap(cipher: TokenCipher, ciphertext: str) -> bool:
    try:
        return cipher.needs_rotation(ciphertext)
    except TokenDecryptionError:
        return True  # malformed: reading it will say so


def stored_key_id(ciphertext: str) -> str:
    """The key id a ``TokenCipher`` ciphertext names (``v1.<kid>.<...>``)."""
    return ciphertext.split(".")[1] if ciphertext.count(".") >= 2 else ""
