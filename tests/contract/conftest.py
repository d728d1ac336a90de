"""Contract-test fixtures: every storage port built twice, in memory and over Table storage (Azurite).

``stores`` is parametrized, so each contract test proves the in-memory double behaves like the adapter
it stands in for. ``table_stores`` gives the Table adapters alone, for what only they have (transaction
counts, interrupted writes, raw entities).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.tables import TableStores
from sync_core.domain.model import Activity, AttachmentSummary, Direction, EmailAddress, RecordRef, activity_id_for
from sync_core.testing.stores import InMemoryStores

T0 = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)


@dataclass(frozen=True)
class Stores:
    kind: str
    records: Any
    activities: Any
    mailboxes: Any
    cursors: Any
    leases: Any
    runs: Any
    settings: Any


@pytest.fixture
def table_service(storage_connection_string: str) -> Iterator[TableServiceClient]:
    service = TableServiceClient.from_connection_string(storage_connection_string)
    yield service
    service.close()


@pytest.fixture
def table_stores(table_service: TableServiceClient, table_prefix: str) -> TableStores:
    return TableStores.create(table_service, table_prefix)


@pytest.fixture(params=["memory", "azurite"])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "memory":
        built: Any = InMemoryStores()
    else:
        built = request.getfixturevalue("table_stores")
    return Stores(
        kind=request.param,
        records=built.records,
        activities=built.activities,
        mailboxes=built.mailboxes,
        cursors=built.cursors,
        leases=built.leases,
        runs=built.runs,
        settings=built.settings,
    )


def make_activity(
    message_id: str,
    *,
    org_id: str = "org-1",
    records: tuple[str, ...] = ("cand-1",),
    mailbox_ids: tuple[str, ...] = ("mbx-1",),
    received_at: datetime = T0,
    thread_id: str = "thread-1",
    body: str = "Hello, shall we meet on Tuesday?",
    subject: str = "Interview",
) -> Activity:
    """A matched activity as the sync use case would build it."""
    return Activity(
        org_id=org_id,
        activity_id=activity_id_for(org_id, message_id),
        internet_message_id=message_id,
        thread_id=thread_id,
        subject=subject,
        body_text=body,
        body_preview=body[:255],
        body_truncated=False,
        sender=EmailAddress("ann@client.example", "Ann Client"),
        to=(EmailAddress("bob@agency.example", "Bob Recruiter"),),
        cc=(EmailAddress("cat@client.example", ""),),
        sent_at=received_at - timedelta(seconds=3),
        received_at=received_at,
        direction=Direction.RECEIVED,
        mailbox_ids=mailbox_ids,
        records=tuple(RecordRef(record_id, "candidate") for record_id in records),
        attachments=(AttachmentSummary("cv.pdf", 48_213, "application/pdf"),),
        conversation_id="conv-1",
    )


class SimulatedCrash(Exception):
    """What ``crash_after`` raises: the process "died" between two writes."""


def crash_after(writes: int) -> Callable[[], None]:
    """An ``after_write`` hook: the process "dies" right after its ``writes``-th write round trip."""
    counter = itertools.count(1)

    def hook() -> None:
        if next(counter) == writes:
            raise SimulatedCrash

    return hook
