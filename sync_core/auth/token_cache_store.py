"""Encrypted storage of MSAL token caches, pending OAuth flows and consented tenants.

Azure Table Storage adapters (``Table*``, on the shared ``sync_core.adapters.table_client.Table``) of the
ports in ``sync_core.ports.identity``. Their in-memory doubles (``sync_core.testing.auth``) encrypt with the same
``TokenCipher`` and hold the same ciphertext, so the contract tests check the same invariants on both.

Tables (names prefixed with the deployment's table prefix); keys go through
``sync_core.adapters.table_keys.key_part`` (reversible escaping, digest when long):
- ``tokencaches``: PartitionKey = org, RowKey = owner key (``mailbox:{id}`` / ``tenant:{tid}``);
  ``Kid`` (key id, for rotation reports) and ``Cache_parts``/``Cache_0..n`` (the ciphertext, chunked
  below the 64 KiB property limit).
- ``authflows``: PartitionKey = ``flows``, RowKey = state; ``OrgId``, ``Kind``, ``CreatedAt`` in clear
  for operations (purging abandoned flows), everything else, the MSAL flow with its PKCE verifier
  included, only inside the ciphertext. Connect flows are rare, so one partition is plenty.
- ``orgtenants``: PartitionKey = org, RowKey = ``consent``: ``TenantId``, ``ConsentedAt`` (not secret);
  PartitionKey = ``tenant|{tid}``, RowKey = ``claim``: ``OrgId`` (one org per tenant).

Invariants:
- Only ciphertext of a cache or flow reaches a table; the associated data binds it to (org, owner) or to
  its state, so a row copied elsewhere fails to decrypt.
- A cache read under an old key is re-encrypted under the current key by the next ``put`` (every put
  encrypts with the current key); ``rewrap_if_needed`` does it without a token change.
- ``AuthFlowStore.take`` is single-use under concurrency: the winner is whoever's etag-conditional
  replace (which also drops the ciphertext) succeeds; the SDK ignores 404s on deletes, so a conditional
  delete alone could let two callers both believe they took the flow.
"""

from __future__ import annotations

import contextlib
import json
import logging
from datetime import datetime
from typing import Any, cast

from azure.data.tables import TableServiceClient

from sync_core.adapters.table_client import Table, TableMetrics, Write, table_name
from sync_core.adapters.table_codec import from_stored_datetime, get_text, put_text, to_utc
from sync_core.adapters.table_keys import compose, key_part
from sync_core.auth.crypto import TokenCipher
from sync_core.errors import AlreadyExists, ConcurrencyConflict, TokenDecryptionError
from sync_core.ports import Versioned
from sync_core.ports.identity import FLOW_LIFETIME, FlowKind, OrgTenant, PendingAuthFlow

log = logging.getLogger(__name__)

MAX_CIPHERTEXT_CHARS = 15 * 32_000  # keeps an entity well below the 1 MiB entity limit
_CACHE = "Cache"
_FLOW_PARTITION = "flows"


# -- helpers -----------------------------------------------------------------------------------------


def cache_aad(org_id: str, owner_key: str) -> bytes:
    return json.dumps(["tokencache", org_id, owner_key]).encode()


def flow_aad(state: str) -> bytes:
    return json.dumps(["authflow", state]).encode()


def _checked(ciphertext: str) -> str:
    if len(ciphertext) > MAX_CIPHERTEXT_CHARS:
        raise ValueError(f"encrypted value of {len(ciphertext)} characters exceeds the storage limit")
    return ciphertext


def _flow_payload(pending: PendingAuthFlow) -> bytes:
    return json.dumps(
        {
            "state": pending.state,
            "org_id": pending.org_id,
            "kind": pending.kind,
            "created_at": to_utc(pending.created_at).isoformat(),
            "user_id": pending.user_id,
            "return_url": pending.return_url,
            "flow": dict(pending.flow),
            "login_hint": pending.login_hint,
        }
    ).encode()


def _flow_from_payload(raw: bytes) -> PendingAuthFlow:
    data = json.loads(raw)
    return PendingAuthFlow(
        state=str(data["state"]),
        org_id=str(data["org_id"]),
        kind=cast(FlowKind, data["kind"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        user_id=str(data.get("user_id", "")),
        return_url=str(data.get("return_url", "")),
        flow=dict(data.get("flow") or {}),
        login_hint=str(data.get("login_hint", "")),
    )


def _open_flow(cipher: TokenCipher, state: str, ciphertext: str, now: datetime) -> PendingAuthFlow | None:
    try:
        pending = _flow_from_payload(cipher.decrypt(ciphertext, flow_aad(state)))
    except (TokenDecryptionError, ValueError, KeyError):
        log.warning("discarding an auth flow that cannot be decrypted")
        return None
    if pending.state != state or pending.expired(to_utc(now)):
        return None
    return pending


def _etag(entity: Any) -> str:
    return str(entity.metadata.get("etag", ""))


# -- token caches ------------------------------------------------------------------------------------


class TableTokenCacheStore:
    """``TokenCacheStore`` on Azure Table Storage."""

    def __init__(
        self,
        service: TableServiceClient,
        cipher: TokenCipher,
        table_prefix: str = "",
        metrics: TableMetrics | None = None,
    ) -> None:
        self.table_name = table_name(table_prefix, "tokencaches")
        self._table = Table(service, self.table_name, metrics or TableMetrics())
        self._cipher = cipher

    def get(self, org_id: str, owner_key: str) -> Versioned[str] | None:
        entity = self._table.get(key_part(org_id), key_part(owner_key))
        if entity is None:
            return None
        plaintext = self._cipher.decrypt(get_text(entity, _CACHE), cache_aad(org_id, owner_key))
        return Versioned(plaintext.decode("utf-8"), _etag(entity))

    def put(self, org_id: str, owner_key: str, serialized: str, etag: str | None) -> str:
        ciphertext = _checked(self._cipher.encrypt(serialized.encode("utf-8"), cache_aad(org_id, owner_key)))
        entity: dict[str, Any] = {
            "PartitionKey": key_part(org_id),
            "RowKey": key_part(owner_key),
            "Kid": self._cipher.current_kid,
        }
        put_text(entity, _CACHE, ciphertext)
        if etag is None:
            return self._table.write(Write("upsert", entity))
        return self._table.write(Write("update", entity, etag))  # ConcurrencyConflict when stale or gone

    def delete(self, org_id: str, owner_key: str) -> None:
        self._table.write(Write("delete", {"PartitionKey": key_part(org_id), "RowKey": key_part(owner_key)}))

    def delete_org(self, org_id: str) -> int:
        pk = key_part(org_id)
        rows = [str(e["RowKey"]) for e in self._table.rows(pk, select=["PartitionKey", "RowKey"])]
        self._table.submit([Write("delete", {"PartitionKey": pk, "RowKey": rk}) for rk in rows])
        return len(rows)

    def rewrap_if_needed(self, org_id: str, owner_key: str) -> bool:
        entity = self._table.get(key_part(org_id), key_part(owner_key))
        if entity is None:
            return False
        ciphertext = get_text(entity, _CACHE)
        if not self._cipher.needs_rotation(ciphertext):
            return False
        plaintext = self._cipher.decrypt(ciphertext, cache_aad(org_id, owner_key)).decode("utf-8")
        try:
            self.put(org_id, owner_key, plaintext, _etag(entity))
        except ConcurrencyConflict:
            return False  # someone wrote it meanwhile, and every write uses the current key
        return True

    def stored_key_id(self, org_id: str, owner_key: str) -> str | None:
        """Key id of the stored ciphertext (diagnostics and rotation tests); None when absent."""
        entity = self._table.get(key_part(org_id), key_part(owner_key))
        return None if entity is None else self._cipher.key_id(get_text(entity, _CACHE))


# -- pending auth flows --------------------------------------------------------------------------------

_FLOW_ROW = "flow"


class TableAuthFlowStore:
    """``AuthFlowStore`` on Azure Table Storage."""

    def __init__(
        self,
        service: TableServiceClient,
        cipher: TokenCipher,
        table_prefix: str = "",
        metrics: TableMetrics | None = None,
    ) -> None:
        self._table = Table(service, table_name(table_prefix, "authflows"), metrics or TableMetrics())
        self._cipher = cipher

    def save(self, pending: PendingAuthFlow) -> None:
        entity: dict[str, Any] = {
            "PartitionKey": _FLOW_PARTITION,
            "RowKey": key_part(pending.state),
            "OrgId": pending.org_id,
            "Kind": pending.kind,
            "CreatedAt": to_utc(pending.created_at),
            "Taken": False,
        }
        put_text(entity, _CACHE, _checked(self._cipher.encrypt(_flow_payload(pending), flow_aad(pending.state))))
        self._table.write(Write("create", entity))  # AlreadyExists when the state is taken

    def take(self, state: str, now: datetime) -> PendingAuthFlow | None:
        if not state:
            return None
        rk = key_part(state)
        entity = self._table.get(_FLOW_PARTITION, rk)
        if entity is None or entity.get("Taken"):
            return None
        claimed = {
            "PartitionKey": _FLOW_PARTITION,
            "RowKey": rk,
            "CreatedAt": entity.get("CreatedAt"),
            "Taken": True,
        }
        try:
            self._table.write(Write("update", claimed, _etag(entity)))
        except ConcurrencyConflict:
            return None  # another callback took it first
        self._table.write(Write("delete", {"PartitionKey": _FLOW_PARTITION, "RowKey": rk}))
        return _open_flow(self._cipher, state, get_text(entity, _CACHE), now)

    def purge_expired(self, now: datetime) -> int:
        cutoff = to_utc(now) - FLOW_LIFETIME
        expired = [
            str(e["RowKey"])
            for e in self._table.rows(_FLOW_PARTITION, select=["RowKey", "CreatedAt", "Taken"])
            if e.get("Taken") or from_stored_datetime(e["CreatedAt"]) < cutoff
        ]
        self._table.submit([Write("delete", {"PartitionKey": _FLOW_PARTITION, "RowKey": rk}) for rk in expired])
        return len(expired)


# -- consented tenants ---------------------------------------------------------------------------------

_CONSENT_ROW = "consent"
_CLAIM_ROW = "claim"


def _claim_partition(tenant_id: str) -> str:
    # "|" never occurs in an escaped org id, so a claim partition can never equal an org's partition.
    return compose("tenant", key_part(tenant_id.lower()))


class TableOrgTenantStore:
    """``OrgTenantStore`` on Azure Table Storage: a consent row per org and a claim row per tenant
    (created with insert-only semantics, so two orgs racing for one tenant cannot both win)."""

    def __init__(
        self, service: TableServiceClient, table_prefix: str = "", metrics: TableMetrics | None = None
    ) -> None:
        self._table = Table(service, table_name(table_prefix, "orgtenants"), metrics or TableMetrics())

    def get(self, org_id: str) -> OrgTenant | None:
        entity = self._table.get(key_part(org_id), _CONSENT_ROW)
        if entity is None:
            return None
        return OrgTenant(org_id, str(entity["TenantId"]), from_stored_datetime(entity["ConsentedAt"]))

    def org_for_tenant(self, tenant_id: str) -> str | None:
        entity = self._table.get(_claim_partition(tenant_id), _CLAIM_ROW)
        return None if entity is None else str(entity["OrgId"])

    def claim(self, consent: OrgTenant) -> bool:
        tenant_id = consent.tenant_id.lower()
        holder = self.org_for_tenant(tenant_id)
        if holder is None:
            row = {"PartitionKey": _claim_partition(tenant_id), "RowKey": _CLAIM_ROW, "OrgId": consent.org_id}
            try:
                self._table.write(Write("create", row))
                holder = consent.org_id
            except AlreadyExists:
                holder = self.org_for_tenant(tenant_id)
        if holder != consent.org_id:
            return False
        previous = self.get(consent.org_id)
        entity = {
            "PartitionKey": key_part(consent.org_id),
            "RowKey": _CONSENT_ROW,
            "TenantId": tenant_id,
            "ConsentedAt": to_utc(consent.consented_at),
        }
        self._table.write(Write("upsert", entity))
        if previous is not None and previous.tenant_id != tenant_id:
            self._release_claim(previous.tenant_id, consent.org_id)
        return True

    def release(self, org_id: str) -> None:
        previous = self.get(org_id)
        self._table.write(Write("delete", {"PartitionKey": key_part(org_id), "RowKey": _CONSENT_ROW}))
        if previous is not None:
            self._release_claim(previous.tenant_id, org_id)

    def _release_claim(self, tenant_id: str, org_id: str) -> None:
        pk = _claim_partition(tenant_id)
        entity = self._table.get(pk, _CLAIM_ROW)
        if entity is not None and entity.get("OrgId") == org_id:
            # On a conflict it was re-claimed meanwhile: leave it to its new holder.
            with contextlib.suppress(ConcurrencyConflict):
                self._table.write(Write("delete", {"PartitionKey": pk, "RowKey": _CLAIM_ROW}, _etag(entity)))
