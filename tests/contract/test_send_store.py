"""The SendStore contract, run on the in-memory double and on the Table adapter (Azurite)."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_sends import TableSendStore
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
from sync_core.errors import ConcurrencyConflict
from sync_core.testing.send import InMemorySendStore

T0 = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(params=["memory", "azurite"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return InMemorySendStore()
    service: TableServiceClient = request.getfixturevalue("table_service")
    return TableSendStore(service, request.getfixturevalue("table_prefix"))


def a_send(send_id: str = "s-1", key: str = "key-1", **changes: Any) -> Send:
    request = SendRequest(
        to=(EmailAddress("pat@customer.example", "Pat"),),
        cc=(EmailAddress("lee@customer.example"),),
        bcc=(EmailAddress("boss@contoso.example"),),
        subject="Proposal ✓",
        content_type="html",
        content="<p>Hello</p>",
        reply_to_activity_id="a-1",
        record_ids=("c-1",),
        attachments=(AttachmentSpec("a.pdf", "application/pdf", 3, "ab" * 32),),
        send_at=T0 + timedelta(days=2),
    )
    base = Send("org-1", send_id, "mbx-1", key, "fp", request, T0)
    return dataclasses.replace(base, **changes)


def test_a_created_send_reads_back_with_every_field_and_its_attachment_bytes(store: Any) -> None:
    big = bytes(range(256)) * 5000  # over one chunk and one row
    stored, created = store.create(a_send(), [big, b"tiny"])
    assert created
    read = store.get("org-1", "s-1")
    assert read is not None and read.value == a_send() and read.etag == stored.etag
    assert store.content("org-1", "s-1") == (big, b"tiny")
    assert store.get("org-2", "s-1") is None


def test_dropping_a_sends_content_leaves_the_send_without_its_bytes(store: Any) -> None:
    store.create(a_send(), [bytes(range(256)) * 5000, b"tiny"])
    store.drop_content("org-1", "s-1")
    store.drop_content("org-1", "s-1")  # again: fine
    assert store.content("org-1", "s-1") == ()
    assert store.get("org-1", "s-1").value == a_send()


def test_a_second_create_with_the_same_key_returns_the_first_send(store: Any) -> None:
    store.create(a_send(), [b"x"])
    again, created = store.create(a_send("s-2"), [b"y"])
    assert not created and again.value.send_id == "s-1"
    assert store.by_key("org-1", "key-1").value.send_id == "s-1"
    assert store.by_key("org-1", "other") is None
    assert store.get("org-1", "s-2") is None


def test_concurrent_creates_with_one_key_leave_exactly_one_send(store: Any) -> None:
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(6)

    def create(n: int) -> None:
        barrier.wait()
        stored, created = store.create(a_send(f"s-{n}"), [])
        results.append((stored.value.send_id, created))

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({send_id for send_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_replace_is_compare_and_set_and_keeps_every_changed_field(store: Any) -> None:
    stored, _ = store.create(a_send(), [])
    changed = dataclasses.replace(
        stored.value,
        status=SendStatus.FAILED,
        step=SendStep.SUBMITTED,
        handle="AAMk=/+",
        not_before=T0 + timedelta(minutes=1),
        sent_at=T0 + timedelta(minutes=2),
        internet_message_id="<m@x>",
        activity_id="act",
        error=SendError("outcome_unknown", "why"),
        attempts=3,
        announced=True,
        lease_owner="worker-1",
        lease_until=T0 + timedelta(minutes=5),
    )
    new = store.replace(changed, stored.etag)
    assert store.get("org-1", "s-1").value == changed
    with pytest.raises(ConcurrencyConflict):
        store.replace(changed, stored.etag)
    assert new.etag != stored.etag


def test_a_mailboxs_sends_are_listed_newest_first_in_pages(store: Any) -> None:
    for n in range(5):
        store.create(a_send(f"s-{n}", f"k-{n}", created_at=T0 + timedelta(minutes=n)), [])
    store.create(a_send("other", "k-x", mailbox_id="mbx-2"), [])
    first = store.for_mailbox("org-1", "mbx-1", None, 3)
    assert [s.send_id for s in first.items] == ["s-4", "s-3", "s-2"] and first.cursor
    second = store.for_mailbox("org-1", "mbx-1", first.cursor, 3)
    assert [s.send_id for s in second.items] == ["s-1", "s-0"] and second.cursor is None


def test_due_sends_come_earliest_first_and_moving_or_clearing_a_due_time_replaces_it(store: Any) -> None:
    store.set_due("org-1", "a", T0 + timedelta(minutes=5))
    store.set_due("org-2", "b", T0 + timedelta(minutes=1))
    store.set_due("org-1", "c", T0 + timedelta(hours=1))
    assert store.due(T0 + timedelta(minutes=10), 10) == (("org-2", "b"), ("org-1", "a"))
    store.set_due("org-1", "a", T0 + timedelta(hours=2))
    store.set_due("org-2", "b", None)
    assert store.due(T0 + timedelta(minutes=10), 10) == ()
    assert store.due(T0 + timedelta(days=1), 1) == (("org-1", "c"),)


def test_the_pacing_window_is_compare_and_set(store: Any) -> None:
    assert store.pacing("org-1", "mbx-1") is None
    window = PacingWindow(((T0, 3),))
    etag = store.put_pacing("org-1", "mbx-1", window, None)
    with pytest.raises(ConcurrencyConflict):
        store.put_pacing("org-1", "mbx-1", window, None)
    stored = store.pacing("org-1", "mbx-1")
    assert stored.value == window and stored.etag == etag
    store.put_pacing("org-1", "mbx-1", window.granted(T0, 2), etag)
    with pytest.raises(ConcurrencyConflict):
        store.put_pacing("org-1", "mbx-1", window, etag)
