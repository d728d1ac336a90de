"""Contract of the auth stores (token caches, pending OAuth flows, consented tenants): the same cases on
the in-memory doubles and on Azure Table Storage (Azurite)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.auth.crypto import TokenCipher, TokenDecryptionError
from sync_core.auth.token_cache_store import TableAuthFlowStore, TableOrgTenantStore, TableTokenCacheStore
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports.identity import OrgTenant, PendingAuthFlow
from sync_core.testing.auth import MemoryAuthFlowStore, MemoryOrgTenantStore, MemoryTokenCacheStore

KEY_A = "a:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 x "A"
KEY_B = "b:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="  # 32 x "B"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET_CACHE = '{"RefreshToken": {"k": {"secret": "rt-PLAINTEXT-refresh-token-0123456789"}}}'


@dataclass
class AuthStores:
    kind: str
    make_caches: Any  # (cipher) -> TokenCacheStore
    flows: Any
    tenants: Any
    raw_values: Any  # () -> list[str]: every stored property value, as text

    def caches(self, setting: str = KEY_A) -> Any:
        return self.make_caches(TokenCipher.from_setting(setting))


@pytest.fixture(params=["memory", "azurite"])
def auth_stores(request: pytest.FixtureRequest) -> Iterator[AuthStores]:
    cipher = TokenCipher.from_setting(KEY_A)
    if request.param == "memory":
        memory_caches: list[MemoryTokenCacheStore] = []
        shared: dict[str, Any] = {}

        def make_memory(c: TokenCipher) -> MemoryTokenCacheStore:
            # A store "restarted" with another key setting sees the same rows.
            store = MemoryTokenCacheStore(c)
            if "rows" in shared:
                store._rows = shared["rows"]
            else:
                shared["rows"] = store._rows
            memory_caches.append(store)
            return store

        flows = MemoryAuthFlowStore(cipher)

        def memory_raw() -> list[str]:
            return [v for s in memory_caches for v in s.raw_values()] + list(flows.raw_values())

        yield AuthStores("memory", make_memory, flows, MemoryOrgTenantStore(), memory_raw)
        return
    connection = request.getfixturevalue("storage_connection_string")
    prefix = request.getfixturevalue("table_prefix")
    service = TableServiceClient.from_connection_string(connection)

    def table_raw() -> list[str]:
        values: list[str] = []
        for table in service.list_tables():
            if table.name.startswith(prefix):
                for entity in service.get_table_client(table.name).list_entities():
                    values.extend(str(v) for v in entity.values())
        return values

    try:
        yield AuthStores(
            "azurite",
            lambda c: TableTokenCacheStore(service, c, prefix),
            TableAuthFlowStore(service, cipher, prefix),
            TableOrgTenantStore(service, prefix),
            table_raw,
        )
    finally:
        for table in service.list_tables():
            if table.name.startswith(prefix):
                service.delete_table(table.name)


# -- token caches ------------------------------------------------------------------------------------


def test_an_unknown_cache_is_none(auth_stores: AuthStores) -> None:
    assert auth_stores.caches().get("org1", "mailbox:m1") is None


def test_a_stored_cache_reads_back_decrypted_and_only_ciphertext_is_stored(auth_stores: AuthStores) -> None:
    caches = auth_stores.caches()
    etag = caches.put("org1", "mailbox:m1", SECRET_CACHE, None)
    got = caches.get("org1", "mailbox:m1")
    assert got is not None and got.value == SECRET_CACHE and got.etag == etag
    raw = auth_stores.raw_values()
    assert raw and not any("PLAINTEXT" in value for value in raw)
    assert any(value.startswith("v1.a.") for value in raw)


def test_a_conditional_put_with_a_stale_etag_is_a_conflict(auth_stores: AuthStores) -> None:
    caches = auth_stores.caches()
    first = caches.put("org1", "mailbox:m1", "one", None)
    second = caches.put("org1", "mailbox:m1", "two", first)
    assert second != first
    with pytest.raises(ConcurrencyConflict):
        caches.put("org1", "mailbox:m1", "three", first)
    got = caches.get("org1", "mailbox:m1")
    assert got is not None and got.value == "two"


def test_a_conditional_put_on_a_deleted_cache_is_a_conflict(auth_stores: AuthStores) -> None:
    caches = auth_stores.caches()
    etag = caches.put("org1", "mailbox:m1", "one", None)
    caches.delete("org1", "mailbox:m1")
    with pytest.raises(ConcurrencyConflict):
        caches.put("org1", "mailbox:m1", "two", etag)
    assert caches.get("org1", "mailbox:m1") is None


def test_an_unconditional_put_overwrites(auth_stores: AuthStores) -> None:
    caches = auth_stores.caches()
    caches.put("org1", "tenant:t1", "one", None)
    caches.put("org1", "tenant:t1", "two", None)
    got = caches.get("org1", "tenant:t1")
    assert got is not None and got.value == "two"


def test_deleting_a_missing_cache_is_fine(auth_stores: AuthStores) -> None:
    auth_stores.caches().delete("org1", "mailbox:nothing")


def test_delete_org_removes_every_cache_of_that_org_only(auth_stores: AuthStores) -> None:
    caches = auth_stores.caches()
    for owner in ("mailbox:m1", "mailbox:m2", "tenant:t1"):
        caches.put("org/1#?", owner, "x", None)
    caches.put("org2", "mailbox:m9", "keep", None)
    assert caches.delete_org("org/1#?") == 3
    assert caches.get("org/1#?", "mailbox:m1") is None
    assert caches.get("org/1#?", "tenant:t1") is None
    kept = caches.get("org2", "mailbox:m9")
    assert kept is not None and kept.value == "keep"
    assert caches.delete_org("org/1#?") == 0


def test_orgs_with_look_alike_ids_never_see_each_others_caches(auth_stores: AuthStores) -> None:
    caches = auth_stores.caches()
    caches.put("a/b", "mailbox:m1", "slash", None)
    caches.put("a%2Fb", "mailbox:m1", "percent", None)
    assert caches.get("a/b", "mailbox:m1").value == "slash"  # type: ignore[union-attr]
    assert caches.get("a%2Fb", "mailbox:m1").value == "percent"  # type: ignore[union-attr]


def test_a_large_cache_round_trips(auth_stores: AuthStores) -> None:
    caches = auth_stores.caches()
    big = "x" * 150_000
    caches.put("org1", "mailbox:big", big, None)
    assert caches.get("org1", "mailbox:big").value == big  # type: ignore[union-attr]


def test_after_rotation_old_caches_read_and_are_rewrapped_under_the_new_key(auth_stores: AuthStores) -> None:
    old = auth_stores.caches(KEY_A)
    old.put("org1", "mailbox:m1", SECRET_CACHE, None)
    old.put("org1", "mailbox:m2", "second", None)
    rotated = auth_stores.caches(f"{KEY_B},{KEY_A}")
    got = rotated.get("org1", "mailbox:m1")
    assert got is not None and got.value == SECRET_CACHE
    assert rotated.stored_key_id("org1", "mailbox:m1") == "a"
    assert rotated.rewrap_if_needed("org1", "mailbox:m1") is True
    assert rotated.stored_key_id("org1", "mailbox:m1") == "b"
    assert rotated.rewrap_if_needed("org1", "mailbox:m1") is False
    assert rotated.get("org1", "mailbox:m1").value == SECRET_CACHE  # type: ignore[union-attr]
    # An ordinary write re-encrypts under the current key too.
    current = rotated.get("org1", "mailbox:m2")
    assert current is not None
    rotated.put("org1", "mailbox:m2", "second, refreshed", current.etag)
    assert rotated.stored_key_id("org1", "mailbox:m2") == "b"
    # Once everything is rewrapped the old key can go.
    only_b = auth_stores.caches(KEY_B)
    assert only_b.get("org1", "mailbox:m1").value == SECRET_CACHE  # type: ignore[union-attr]
    with pytest.raises(TokenDecryptionError):
        auth_stores.caches(KEY_A).get("org1", "mailbox:m1")


def test_rewrap_of_a_missing_cache_does_nothing(auth_stores: AuthStores) -> None:
    assert auth_stores.caches().rewrap_if_needed("org1", "mailbox:none") is False


def test_a_cache_row_copied_to_another_mailbox_fails_to_decrypt(
    storage_connection_string: str, table_prefix: str
) -> None:
    service = TableServiceClient.from_connection_string(storage_connection_string)
    caches = TableTokenCacheStore(service, TokenCipher.from_setting(KEY_A), table_prefix)
    try:
        caches.put("org1", "mailbox:victim", SECRET_CACHE, None)
        table = service.get_table_client(caches.table_name)
        row = dict(table.get_entity("org1", "mailbox:victim"))
        row["RowKey"] = "mailbox:attacker"
        table.create_entity(row)
        with pytest.raises(TokenDecryptionError):
            caches.get("org1", "mailbox:attacker")
    finally:
        service.delete_table(caches.table_name)


# -- pending auth flows ------------------------------------------------------------------------------


def flow(state: str = "state-1", created_at: datetime = T0, org: str = "org1") -> PendingAuthFlow:
    return PendingAuthFlow(
        state=state,
        org_id=org,
        kind="connect",
        created_at=created_at,
        user_id="crm-user-7",
        return_url="https://crm.example.com/done",
        flow={"state": state, "code_verifier": "PKCE-VERIFIER-SECRET-abcdefghijklmn", "scope": ["Mail.Read"]},
    )


def test_a_saved_flow_is_taken_once(auth_stores: AuthStores) -> None:
    auth_stores.flows.save(flow())
    taken = auth_stores.flows.take("state-1", T0 + timedelta(minutes=1))
    assert taken == flow()
    assert auth_stores.flows.take("state-1", T0 + timedelta(minutes=1)) is None


def test_a_parked_sign_in_with_its_login_hint_and_token_cache_round_trips_encrypted(auth_stores: AuthStores) -> None:
    started = replace(flow("state-2"), login_hint="adele@contoso.example")
    parked = PendingAuthFlow(
        state="cc_" + "ab" * 32,
        org_id="org1",
        kind="connect_confirm",
        created_at=T0,
        user_id="crm-user-7",
        flow={"address": "adele@contoso.example", "cache": '{"RefreshToken": "REFRESH-SECRET-xyz"}'},
    )
    auth_stores.flows.save(started)
    auth_stores.flows.save(parked)

    raw = auth_stores.raw_values()
    assert not any("REFRESH-SECRET" in value or "adele@contoso" in value for value in raw)
    assert auth_stores.flows.take("state-2", T0) == started
    assert auth_stores.flows.take(parked.state, T0) == parked


def test_a_flow_is_stored_encrypted(auth_stores: AuthStores) -> None:
    auth_stores.flows.save(flow())
    raw = auth_stores.raw_values()
    assert raw and not any("PKCE-VERIFIER-SECRET" in value or "crm-user-7" in value for value in raw)


def test_an_unknown_or_empty_state_takes_nothing(auth_stores: AuthStores) -> None:
    assert auth_stores.flows.take("nope", T0) is None
    assert auth_stores.flows.take("", T0) is None


def test_a_flow_older_than_ten_minutes_is_refused_and_gone(auth_stores: AuthStores) -> None:
    auth_stores.flows.save(flow())
    assert auth_stores.flows.take("state-1", T0 + timedelta(minutes=10, seconds=1)) is None
    assert auth_stores.flows.take("state-1", T0 + timedelta(minutes=1)) is None


def test_a_flow_at_exactly_ten_minutes_is_still_valid(auth_stores: AuthStores) -> None:
    auth_stores.flows.save(flow())
    assert auth_stores.flows.take("state-1", T0 + timedelta(minutes=10)) is not None


def test_a_state_cannot_be_saved_twice(auth_stores: AuthStores) -> None:
    auth_stores.flows.save(flow())
    with pytest.raises(AlreadyExists):
        auth_stores.flows.save(flow(org="org2"))
    taken = auth_stores.flows.take("state-1", T0)
    assert taken is not None and taken.org_id == "org1"


def test_concurrent_callbacks_with_one_state_take_it_exactly_once(auth_stores: AuthStores) -> None:
    auth_stores.flows.save(flow())
    results: list[PendingAuthFlow | None] = []
    barrier = threading.Barrier(6)

    def take() -> None:
        barrier.wait()
        results.append(auth_stores.flows.take("state-1", T0 + timedelta(seconds=30)))

    threads = [threading.Thread(target=take) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for r in results if r is not None) == 1


def test_expired_flows_are_purged(auth_stores: AuthStores) -> None:
    auth_stores.flows.save(flow("old", T0))
    auth_stores.flows.save(flow("new", T0 + timedelta(minutes=9)))
    assert auth_stores.flows.purge_expired(T0 + timedelta(minutes=11)) == 1
    assert auth_stores.flows.take("new", T0 + timedelta(minutes=11)) is not None


def test_states_with_unusual_characters_work(auth_stores: AuthStores) -> None:
    odd = "a/b#c?d%e\\f"
    auth_stores.flows.save(flow(odd))
    taken = auth_stores.flows.take(odd, T0)
    assert taken is not None and taken.state == odd


# -- consented tenants ----------------------------------------------------------------------------------


def test_a_claimed_tenant_is_recorded_for_its_org(auth_stores: AuthStores) -> None:
    assert auth_stores.tenants.get("org1") is None
    assert auth_stores.tenants.claim(OrgTenant("org1", "AAAAAAAA-0000-0000-0000-000000000001", T0)) is True
    got = auth_stores.tenants.get("org1")
    assert got == OrgTenant("org1", "aaaaaaaa-0000-0000-0000-000000000001", T0)
    assert auth_stores.tenants.org_for_tenant("aaaaaaaa-0000-0000-0000-000000000001") == "org1"
    assert auth_stores.tenants.claim(OrgTenant("org1", "aaaaaaaa-0000-0000-0000-000000000001", T0)) is True


def test_a_tenant_held_by_another_org_cannot_be_claimed(auth_stores: AuthStores) -> None:
    tenant = "aaaaaaaa-0000-0000-0000-000000000001"
    assert auth_stores.tenants.claim(OrgTenant("org1", tenant, T0)) is True
    assert auth_stores.tenants.claim(OrgTenant("org2", tenant, T0)) is False
    assert auth_stores.tenants.get("org2") is None
    assert auth_stores.tenants.org_for_tenant(tenant) == "org1"


def test_an_org_moving_to_another_tenant_releases_the_old_one(auth_stores: AuthStores) -> None:
    first, second = "aaaaaaaa-0000-0000-0000-000000000001", "aaaaaaaa-0000-0000-0000-000000000002"
    auth_stores.tenants.claim(OrgTenant("org1", first, T0))
    auth_stores.tenants.claim(OrgTenant("org1", second, T0))
    assert auth_stores.tenants.get("org1").tenant_id == second  # type: ignore[union-attr]
    assert auth_stores.tenants.org_for_tenant(first) is None
    assert auth_stores.tenants.claim(OrgTenant("org2", first, T0)) is True


def test_a_released_org_frees_its_tenant(auth_stores: AuthStores) -> None:
    tenant = "aaaaaaaa-0000-0000-0000-000000000001"
    auth_stores.tenants.claim(OrgTenant("org1", tenant, T0))
    auth_stores.tenants.release("org1")
    auth_stores.tenants.release("org1")
    assert auth_stores.tenants.get("org1") is None
    assert auth_stores.tenants.org_for_tenant(tenant) is None
