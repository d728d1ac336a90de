"""Contract of the push stores — Graph subscriptions, the webhook delivery log and the webhook secret — on
the in-memory doubles and on Table storage (Azurite); plus what only the Table adapters have (the stored
forms: no clientState, no plaintext secret)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_subscriptions import TableSubscriptionStore
from sync_core.adapters.table_webhook_log import TableWebhookLog, TableWebhookSecretStore
from sync_core.auth.crypto import TokenCipher, TokenDecryptionError
from sync_core.errors import AlreadyExists, ConcurrencyConflict, WebhookSecretUnreadable
from sync_core.ports.push import PushSubscription, WebhookDelivery, WebhookSecret
from sync_core.testing.push import InMemorySubscriptionStore, InMemoryWebhookLog, InMemoryWebhookSecretStore
from tests.contract.conftest import T0


@dataclass
class Push:
    kind: str
    subscriptions: Any
    deliveries: Any
    secrets: Any
    rekeyed: Any = None  # (key setting) -> the secret store of a worker with that TOKEN_ENCRYPTION_KEY


@pytest.fixture(params=["memory", "azurite"])
def push(request: pytest.FixtureRequest) -> Iterator[Push]:
    if request.param == "memory":
        memory_secrets = InMemoryWebhookSecretStore()
        yield Push(
            "memory",
            InMemorySubscriptionStore(),
            InMemoryWebhookLog(),
            memory_secrets,
            lambda setting: memory_secrets.with_cipher(TokenCipher.from_setting(setting)),
        )
        return
    service: TableServiceClient = request.getfixturevalue("table_service")
    prefix: str = request.getfixturevalue("table_prefix")
    cipher = TokenCipher.from_setting(TokenCipher.generate_setting())
    yield Push(
        "azurite",
        TableSubscriptionStore(service, prefix),
        TableWebhookLog(service, prefix),
        TableWebhookSecretStore(service, cipher, prefix),
        lambda setting: TableWebhookSecretStore(service, TokenCipher.from_setting(setting), prefix),
    )


def sub(
    subscription_id: str = "s-1", folder: str = "inbox", mailbox_id: str = "mbx-1", **changes: Any
) -> PushSubscription:
    base = PushSubscription(
        org_id="org-1",
        mailbox_id=mailbox_id,
        folder=folder,
        subscription_id=subscription_id,
        resource=f"users/u1/mailFolders('{folder}')/messages",
        client_state_hash="ab" * 32,
        expires_at=T0 + timedelta(days=7),
        created_at=T0,
    )
    return dataclasses.replace(base, **changes)


# --- subscriptions ---


def test_a_stored_subscription_is_found_by_its_id_and_by_its_mailbox_with_every_field(push: Push) -> None:
    full = sub(renewed_at=T0 + timedelta(hours=1), notifications=4, rejected=2, last_notification_at=T0,
               last_lifecycle_event="missed")  # fmt: skip
    push.subscriptions.put(full)

    assert push.subscriptions.get("s-1") == full
    assert push.subscriptions.for_mailbox("org-1", "mbx-1") == (full,)
    assert push.subscriptions.for_org("org-1") == (full,)
    assert push.subscriptions.for_org("org-2") == ()
    assert push.subscriptions.get("s-2") is None


def test_an_org_lists_its_subscriptions_by_mailbox_then_folder_and_all_lists_every_org(push: Push) -> None:
    stored = [sub("s-3", "sentitems", "mbx-b"), sub("s-1", "inbox", "mbx-b"), sub("s-2", "*", "mbx-a")]
    for item in stored:
        push.subscriptions.put(item)
    push.subscriptions.put(sub("s-9", org_id="org-2"))

    listed = push.subscriptions.for_org("org-1")

    assert [(s.mailbox_id, s.folder) for s in listed] == [("mbx-a", "*"), ("mbx-b", "inbox"), ("mbx-b", "sentitems")]
    assert [s.subscription_id for s in push.subscriptions.for_mailbox("org-1", "mbx-b")] == ["s-1", "s-3"]
    assert sorted(s.subscription_id for s in push.subscriptions.all()) == ["s-1", "s-2", "s-3", "s-9"]


def test_putting_a_new_subscription_for_a_folder_replaces_the_old_one(push: Push) -> None:
    push.subscriptions.put(sub("s-old"))
    push.subscriptions.remove(sub("s-old"))
    push.subscriptions.put(sub("s-new"))
    push.subscriptions.put(sub("s-newer"))

    assert [s.subscription_id for s in push.subscriptions.for_mailbox("org-1", "mbx-1")] == ["s-newer"]
    assert push.subscriptions.get("s-new") is None  # its folder now holds another subscription
    assert push.subscriptions.get("s-newer") is not None


def test_removing_a_subscription_leaves_a_newer_one_of_the_same_folder_alone(push: Push) -> None:
    push.subscriptions.put(sub("s-1"))
    push.subscriptions.put(sub("s-2"))

    push.subscriptions.remove(sub("s-1"))
    push.subscriptions.remove(sub("s-404"))

    assert push.subscriptions.get("s-1") is None
    assert push.subscriptions.get("s-2") is not None
    push.subscriptions.remove(sub("s-2"))
    assert push.subscriptions.for_org("org-1") == () and list(push.subscriptions.all()) == []


def test_counters_add_up_and_note_the_last_notification_and_lifecycle_event(push: Push) -> None:
    push.subscriptions.put(sub())

    push.subscriptions.count("s-1", accepted=2, rejected=0, at=T0)
    push.subscriptions.count("s-1", accepted=0, rejected=3, at=T0 + timedelta(hours=1), lifecycle="missed")
    push.subscriptions.count("s-unknown", accepted=1, rejected=1, at=T0)

    got = push.subscriptions.get("s-1")
    assert (got.notifications, got.rejected, got.last_notification_at) == (2, 3, T0)
    assert got.last_lifecycle_event == "missed"


def test_concurrent_counts_are_not_lost(push: Push) -> None:
    push.subscriptions.put(sub())

    def count() -> None:
        for _ in range(5):
            push.subscriptions.count("s-1", accepted=1, rejected=0, at=T0)

    threads = [threading.Thread(target=count) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert push.subscriptions.get("s-1").notifications == 15


def test_unknown_notifications_are_counted_globally(push: Push) -> None:
    assert push.subscriptions.unknown_count() == 0
    push.subscriptions.count_unknown(2)
    push.subscriptions.count_unknown(1)
    assert push.subscriptions.unknown_count() == 3


def concurrent_unknown_counts(push: Push, threads: int = 8, each: int = 5) -> None:
    barrier = threading.Barrier(threads)

    def count() -> None:
        barrier.wait()
        for _ in range(each):
            push.subscriptions.count_unknown(1)

    workers = [threading.Thread(target=count) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_unknown_counts_from_concurrent_requests_add_up(push: Push) -> None:
    concurrent_unknown_counts(push)

    assert push.subscriptions.unknown_count() == 40


@pytest.mark.parametrize("push", ["azurite"], indirect=True)  # where the counter lives is the Table adapter's
def test_unknown_counts_are_spread_over_shards_so_concurrent_requests_share_no_hot_entity(push: Push) -> None:
    concurrent_unknown_counts(push)

    counters = {row["RowKey"]: row["count"] for row in push.subscriptions._client.query_entities(
        "PartitionKey eq '%counters'")}  # fmt: skip
    assert len(counters) > 1 and max(counters.values()) < 40
    assert sum(counters.values()) == 40


class ConflictingTable:
    """The adapter's own ``Table`` whose next ``conflicts`` writes fail as if another writer came first."""

    def __init__(self, inner: Any, conflicts: int) -> None:
        self.inner, self.conflicts, self.writes = inner, conflicts, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, operation: Any) -> str:
        self.writes += 1
        if self.conflicts:
            self.conflicts -= 1
            raise ConcurrencyConflict("another writer")
        return str(self.inner.write(operation))


@pytest.mark.parametrize("push", ["azurite"], indirect=True)  # contention is the Table adapter's
def test_a_forged_rejection_count_never_waits_on_a_busy_subscription_but_genuine_counts_retry(push: Push) -> None:
    push.subscriptions.put(sub())
    table = ConflictingTable(push.subscriptions._table, conflicts=1)
    push.subscriptions._table = table

    push.subscriptions.count("s-1", accepted=0, rejected=1, at=T0)  # one attempt, lost to the other writer
    rejected_writes = table.writes
    table.conflicts = 2
    push.subscriptions.count("s-1", accepted=1, rejected=0, at=T0)  # retried until it lands

    assert rejected_writes == 1 and table.writes == 1 + 3
    got = push.subscriptions.get("s-1")
    assert (got.rejected, got.notifications) == (0, 1)


@pytest.mark.parametrize("push", ["azurite"], indirect=True)
def test_the_unknown_count_kept_in_one_row_by_older_versions_is_still_added(push: Push) -> None:
    push.subscriptions.count_unknown(2)
    push.subscriptions._client.upsert_entity({"PartitionKey": "%counters", "RowKey": "unknown", "count": 7})

    assert push.subscriptions.unknown_count() == 9


@pytest.mark.parametrize("push", ["azurite"], indirect=True)  # the stored form is the Table adapter's
def test_the_table_never_holds_a_client_state_only_its_hash(push: Push) -> None:
    push.subscriptions.put(sub(client_state_hash="cd" * 32))
    rows = list(push.subscriptions._client.list_entities())
    assert {row["client_state_hash"] for row in rows if "client_state_hash" in row} == {"cd" * 32}
    assert not any("client_state" in name and name != "client_state_hash" for row in rows for name in row)


# --- webhook delivery log ---


def delivery(delivery_id: str, seconds: int = 0, **changes: Any) -> WebhookDelivery:
    base = WebhookDelivery(
        org_id="org-1",
        delivery_id=delivery_id,
        event="activity.created",
        activity_id=f"act-{delivery_id}",
        created_at=T0 + timedelta(seconds=seconds),
    )
    return dataclasses.replace(base, **changes)


def test_a_delivery_reads_back_with_every_field_and_is_replaced_by_its_next_state(push: Push) -> None:
    push.deliveries.record(delivery("d1"))
    full = delivery("d1", status="retrying", attempts=2, last_attempt_at=T0, next_attempt_at=T0 + timedelta(minutes=2),
                    response_status=503, error="HTTP 503", url="https://crm.example/hook")  # fmt: skip
    push.deliveries.record(full)

    page = push.deliveries.recent("org-1", None, 10)

    assert page.items == (full,) and page.cursor is None
    assert push.deliveries.recent("org-2", None, 10).items == ()


def test_deliveries_are_listed_newest_first_in_pages_and_trimmed_to_the_newest(push: Push) -> None:
    for n in range(7):
        push.deliveries.record(delivery(f"d{n}", seconds=n))

    first = push.deliveries.recent("org-1", None, 3)
    second = push.deliveries.recent("org-1", first.cursor, 3)
    third = push.deliveries.recent("org-1", second.cursor, 3)

    assert [d.delivery_id for d in first.items + second.items + third.items] == [f"d{n}" for n in range(6, -1, -1)]
    assert third.cursor is None
    assert push.deliveries.trim("org-1", 2) == 5
    assert [d.delivery_id for d in push.deliveries.recent("org-1", None, 10).items] == ["d6", "d5"]


def test_a_cursor_that_was_not_given_out_is_refused(push: Push) -> None:
    with pytest.raises(ValueError):
        push.deliveries.recent("org-1", "not a cursor!", 10)


# --- webhook secret ---


def test_a_secret_is_created_once_and_replaced_only_at_its_etag(push: Push) -> None:
    assert push.secrets.get("org-1") is None
    etag = push.secrets.put("org-1", WebhookSecret("whsec_one", T0), None)
    with pytest.raises(AlreadyExists):
        push.secrets.put("org-1", WebhookSecret("whsec_two", T0), None)

    new_etag = push.secrets.put("org-1", WebhookSecret("whsec_one", T0, revealed=True), etag)
    with pytest.raises(ConcurrencyConflict):
        push.secrets.put("org-1", WebhookSecret("whsec_three", T0), etag)

    got = push.secrets.get("org-1")
    assert got.value == WebhookSecret("whsec_one", T0, revealed=True) and got.etag == new_etag
    assert push.secrets.get("org-2") is None


@pytest.mark.parametrize("push", ["azurite"], indirect=True)  # the stored form is the Table adapter's
def test_the_table_holds_the_secret_encrypted_and_bound_to_its_org(push: Push) -> None:
    push.secrets.put("org-1", WebhookSecret("whsec_plaintext", T0), None)
    table = push.secrets._table
    row = table.get("org-1", "secret")
    assert "whsec_plaintext" not in str(dict(row))
    moved = {**dict(row), "PartitionKey": "org-2"}
    from sync_core.adapters.table_client import Write  # noqa: PLC0415 - only this test writes raw rows

    table.write(Write("upsert", moved))
    with pytest.raises(TokenDecryptionError):
        push.secrets.get("org-2")


KEY_A = "a:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 x "A"
KEY_B = "b:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="  # 32 x "B"
KEY_A_REUSED = "a:" + "Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M="  # the id "a" reused for 32 x "C"


def test_a_secret_carries_its_key_id_and_is_rewrapped_under_the_new_key_during_a_rotation(push: Push) -> None:
    old = push.rekeyed(KEY_A)
    old.put("org-1", WebhookSecret("whsec_one", T0, revealed=True), None)
    assert old.stored_key_id("org-1") == "a"
    assert old.rewrap_if_needed("org-1") is False  # already under the current key

    rotating = push.rekeyed(f"{KEY_B},{KEY_A}")
    assert rotating.rewrap_if_needed("org-1") is True
    assert rotating.stored_key_id("org-1") == "b"
    assert rotating.rewrap_if_needed("org-1") is False
    assert rotating.rewrap_if_needed("org-2") is False  # none stored

    only_new = push.rekeyed(KEY_B)  # the old key dropped: nothing breaks
    got = only_new.get("org-1")
    assert got is not None and got.value == WebhookSecret("whsec_one", T0, revealed=True)


def test_a_secret_no_configured_key_opens_is_unreadable_yet_can_be_replaced_at_its_version(push: Push) -> None:
    push.rekeyed(KEY_A).put("org-1", WebhookSecret("whsec_one", T0), None)
    changed = push.rekeyed(KEY_A_REUSED)  # operator error: the same key id for a new key

    with pytest.raises(WebhookSecretUnreadable):
        changed.get("org-1")
    assert changed.rewrap_if_needed("org-1") is False  # under the current key id: nothing to re-wrap
    with pytest.raises(WebhookSecretUnreadable):
        push.rekeyed(KEY_B).rewrap_if_needed("org-1")  # under a key id no longer listed
    version = changed.version("org-1")
    assert version is not None and changed.version("org-2") is None
    changed.put("org-1", WebhookSecret("whsec_two", T0), version)
    got = changed.get("org-1")
    assert got is not None and got.value.value == "whsec_two"
    with pytest.raises(ConcurrencyConflict):
        changed.put("org-1", WebhookSecret("whsec_three", T0), version)  # that version is gone
