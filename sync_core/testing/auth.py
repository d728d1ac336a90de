"""In-memory doubles of the auth stores (token caches, pending OAuth flows, consented tenants).

They stand in for the Table adapters of ``sync_core.auth.token_cache_store`` and hold the same thing: the
token caches and flows as ciphertext of the same ``TokenCipher`` under the same associated data, with the
same size limit, so tests/contract/test_token_cache_store.py checks the same invariants on both. Each is
thread-safe; ``MemoryAuthFlowStore.take`` is single-use like the adapter's.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync_core.adapters.table_codec import to_utc
from sync_core.auth.crypto import TokenCipher
from sync_core.auth.token_cache_store import _checked, _flow_payload, _open_flow, cache_aad, flow_aad
from sync_core.errors import AlreadyExists, ConcurrencyConflict, IdentityError, InvalidRequest, ReauthRequired
from sync_core.ports import Versioned
from sync_core.ports.identity import FLOW_LIFETIME, OrgTenant, PendingAuthFlow


@dataclass
class _Row:
    ciphertext: str
    etag: str


class MemoryTokenCacheStore:
    """In-memory ``TokenCacheStore`` double; stores ciphertext exactly like the table adapter."""

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher
        self._rows: dict[tuple[str, str], _Row] = {}
        self._lock = threading.Lock()
        self._etags = itertools.count(1)

    def _next_etag(self) -> str:
        return f'W/"{next(self._etags)}"'

    def get(self, org_id: str, owner_key: str) -> Versioned[str] | None:
        with self._lock:
            row = self._rows.get((org_id, owner_key))
        if row is None:
            return None
        plaintext = self._cipher.decrypt(row.ciphertext, cache_aad(org_id, owner_key))
        return Versioned(plaintext.decode("utf-8"), row.etag)

    def put(self, org_id: str, owner_key: str, serialized: str, etag: str | None) -> str:
        ciphertext = self._cipher.encrypt(serialized.encode("utf-8"), cache_aad(org_id, owner_key))
        _checked(ciphertext)  # same size limit as the table adapter
        with self._lock:
            current = self._rows.get((org_id, owner_key))
            if etag is not None and (current is None or current.etag != etag):
                raise ConcurrencyConflict(f"token cache {owner_key} changed concurrently")
            row = _Row(ciphertext, self._next_etag())
            self._rows[(org_id, owner_key)] = row
            return row.etag

    def delete(self, org_id: str, owner_key: str) -> None:
        with self._lock:
            self._rows.pop((org_id, owner_key), None)

    def delete_org(self, org_id: str) -> int:
        with self._lock:
            keys = [key for key in self._rows if key[0] == org_id]
            for key in keys:
                del self._rows[key]
            return len(keys)

    def rewrap_if_needed(self, org_id: str, owner_key: str) -> bool:
        with self._lock:
            row = self._rows.get((org_id, owner_key))
        if row is None or not self._cipher.needs_rotation(row.ciphertext):
            return False
        plaintext = self._cipher.decrypt(row.ciphertext, cache_aad(org_id, owner_key)).decode("utf-8")
        try:
            self.put(org_id, owner_key, plaintext, row.etag)
        except ConcurrencyConflict:
            return False
        return True

    def stored_key_id(self, org_id: str, owner_key: str) -> str | None:
        with self._lock:
            row = self._rows.get((org_id, owner_key))
        return None if row is None else self._cipher.key_id(row.ciphertext)

    def raw_values(self) -> Iterator[str]:
        """Every stored ciphertext (tests scan them for plaintext tokens)."""
        with self._lock:
            return iter([row.ciphertext for row in self._rows.values()])

class MemoryAuthFlowStore:
    """In-memory ``AuthFlowStore`` double (ciphertext too, same single-use semantics)."""

    def __init__(self, cipher: TokenCipher) -> None:
        self._cipher = cipher
        self._rows: dict[str, tuple[datetime, str]] = {}
        self._lock = threading.Lock()

    def save(self, pending: PendingAuthFlow) -> None:
        ciphertext = self._cipher.encrypt(_flow_payload(pending), flow_aad(pending.state))
        with self._lock:
            if pending.state in self._rows:
                raise AlreadyExists("auth flow state already in use")
            self._rows[pending.state] = (to_utc(pending.created_at), ciphertext)

    def take(self, state: str, now: datetime) -> PendingAuthFlow | None:
        with self._lock:
            row = self._rows.pop(state, None)
        return None if row is None else _open_flow(self._cipher, state, row[1], now)

    def purge_expired(self, now: datetime) -> int:
        cutoff = to_utc(now) - FLOW_LIFETIME
        with self._lock:
            expired = [state for state, (created, _) in self._rows.items() if created < cutoff]
            for state in expired:
                del self._rows[state]
            return len(expired)

    def raw_values(self) -> Iterator[str]:
        with self._lock:
            return iter([ciphertext for _, ciphertext in self._rows.values()])

class MemoryOrgTenantStore:
    """In-memory ``OrgTenantStore`` double."""

    def __init__(self) -> None:
        self._consents: dict[str, OrgTenant] = {}
        self._claims: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, org_id: str) -> OrgTenant | None:
        with self._lock:
            return self._consents.get(org_id)

    def org_for_tenant(self, tenant_id: str) -> str | None:
        with self._lock:
            return self._claims.get(tenant_id.lower())

    def claim(self, consent: OrgTenant) -> bool:
        tenant_id = consent.tenant_id.lower()
        with self._lock:
            holder = self._claims.setdefault(tenant_id, consent.org_id)
            if holder != consent.org_id:
                return False
            previous = self._consents.get(consent.org_id)
            self._consents[consent.org_id] = OrgTenant(consent.org_id, tenant_id, to_utc(consent.consented_at))
            if previous is not None and previous.tenant_id != tenant_id:
                self._claims.pop(previous.tenant_id, None)
            return True

    def release(self, org_id: str) -> None:
        with self._lock:
            previous = self._consents.pop(org_id, None)
            if previous is not None and self._claims.get(previous.tenant_id) == org_id:
                del self._claims[previous.tenant_id]


class FakeOrgAccess:
    """In-memory ``OrgAccess``: a credential is ``{"type": "service_account", "client_email", "secret"}``;
    ``users`` are the addresses it may read (others: ``ReauthRequired``, as Google's unknown ``sub``);
    ``delegated`` False is an admin who did not delegate the scopes (``IdentityError``). The stored form
    holds the secret (as the real one holds the key); ``describe`` drops it."""

    def __init__(self, users: tuple[str, ...] = (), delegated: bool = True) -> None:
        self.users = {u.lower() for u in users}
        self.delegated = delegated
        self.reads: list[tuple[str, bool]] = []

    def validate(self, credential: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if credential.get("type") != "service_account" or not credential.get("client_email"):
            raise InvalidRequest("invalid_service_account_key", "the key file is not a service account key")
        if credential.get("secret") == "revoked":
            raise ReauthRequired("Google refused the service account (invalid_grant: Invalid JWT Signature.)")
        stored = {"client_email": str(credential["client_email"]), "secret": str(credential.get("secret") or "")}
        return json.dumps(stored), self.describe(json.dumps(stored))

    def describe(self, stored: str) -> dict[str, Any]:
        return {"client_email": json.loads(stored)["client_email"]}

    def mailbox_profile(self, stored: str, address: str, send: bool) -> Mapping[str, Any]:
        json.loads(stored)
        if not self.delegated:
            raise IdentityError("the Workspace admin has not delegated the scopes (unauthorized_client)")
        if address.lower() not in self.users:
            raise ReauthRequired("Google refused the service account's access (invalid_grant: Invalid email)")
        self.reads.append((address.lower(), send))
        return {"id": address.lower(), "mail": address.lower()}
