"""``Table.transact`` writes the ``$batch`` body itself: it must be exactly what the SDK's
``submit_transaction`` does. Each case runs the same operations both ways on Azurite (two tables) and
compares what was stored, what came back and what was raised."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.data.tables import (
    AccountSasPermissions,
    EdmType,
    EntityProperty,
    ResourceTypes,
    TableClient,
    TableServiceClient,
    generate_account_sas,
)
from azure.data.tables._error import TableTransactionError

from sync_core.adapters.table_client import Table, TableMetrics, Write, etag_of
from sync_core.errors import AlreadyExists, ConcurrencyConflict

PK = "p-é ✓"


@pytest.fixture
def service(storage_connection_string: str) -> Iterator[TableServiceClient]:
    client = TableServiceClient.from_connection_string(storage_connection_string)
    yield client
    client.close()


@pytest.fixture
def metrics() -> TableMetrics:
    return TableMetrics()


@pytest.fixture
def ours(service: TableServiceClient, table_prefix: str, metrics: TableMetrics) -> Table:
    return Table(service, f"{table_prefix}ours", metrics)


@pytest.fixture
def sdk(service: TableServiceClient, table_prefix: str) -> TableClient:
    client = service.get_table_client(f"{table_prefix}sdk")
    client.create_table()
    return client


def every_edm_type(row_key: str) -> dict[str, Any]:
    return {
        "PartitionKey": PK,
        "RowKey": row_key,
        "text": "Grüße, 你好, emoji 📨 and a 'quote'",
        "empty": "",
        "small": 42,
        "negative": -7,
        "big": EntityProperty(2**53 + 1, EdmType.INT64),
        "int64_small": EntityProperty(5, EdmType.INT64),
        "ratio": 0.1,
        "whole_double": 2.0,
        "not_a_number": float("nan"),
        "infinite": float("inf"),
        "minus_infinite": float("-inf"),
        "yes": True,
        "no": False,
        "when": datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC),
        "when_seconds": datetime(2026, 3, 2, 9, 30, 15, tzinfo=UTC),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "blob": bytes(range(256)),
        "empty_blob": b"",
        "nothing": None,
    }


def stored(entity: Any) -> dict[str, Any]:
    """An entity as read back, comparable across tables (NaN made equal to itself)."""
    return {
        name: ("NaN" if isinstance(value, float) and math.isnan(value) else value)
        for name, value in dict(entity).items()
        if name != "RowKey"
    }


def as_sdk(operations: Sequence[Write]) -> list[Any]:
    return [operation.as_batch_operation() for operation in operations]


def refusal(call: Callable[[], object]) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as raised:
        call()
    return raised.value


def test_every_edm_type_round_trips_as_the_sdk_writes_it(ours: Table, sdk: TableClient) -> None:
    ours.transact([Write("create", every_edm_type("created")), Write("upsert", every_edm_type("upserted"))])
    sdk.submit_transaction(
        as_sdk([Write("create", every_edm_type("created")), Write("upsert", every_edm_type("upserted"))])
    )

    for row_key in ("created", "upserted"):
        mine, theirs = ours.get(PK, row_key), sdk.get_entity(PK, row_key)
        assert mine is not None
        assert stored(mine) == stored(theirs)
        assert {name: type(value) for name, value in mine.items()} == {
            name: type(value) for name, value in theirs.items()
        }
        assert mine["big"] == EntityProperty(2**53 + 1, EdmType.INT64)
        assert mine["when"] == datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
        assert mine["blob"] == bytes(range(256))
        assert math.isnan(mine["not_a_number"]) and mine["minus_infinite"] == float("-inf")
        assert mine["text"] == "Grüße, 你好, emoji 📨 and a 'quote'"
        assert "nothing" not in mine


def test_every_operation_kind_applies_and_returns_the_stored_etags(ours: Table, metrics: TableMetrics) -> None:
    ours.transact([Write("create", {"PartitionKey": PK, "RowKey": k, "v": 0}) for k in ("a", "b", "c", "d", "e'")])
    etag_a = etag_of(ours.get(PK, "a"))  # type: ignore[arg-type]
    etag_c = etag_of(ours.get(PK, "c"))  # type: ignore[arg-type]
    before = metrics.transactions

    etags = ours.transact(
        [
            Write("create", {"PartitionKey": PK, "RowKey": "new", "v": 1}),
            Write("update", {"PartitionKey": PK, "RowKey": "a", "v": 2}, etag_a),
            Write("update", {"PartitionKey": PK, "RowKey": "b", "w": 3}),
            Write("upsert", {"PartitionKey": PK, "RowKey": "inserted", "v": 4}),
            Write("upsert", {"PartitionKey": PK, "RowKey": "e'", "v": 5}),
            Write("delete", {"PartitionKey": PK, "RowKey": "c"}, etag_c),
            Write("delete", {"PartitionKey": PK, "RowKey": "d"}),
        ]
    )

    assert metrics.transactions == before + 1
    rows = {row["RowKey"]: row for row in ours.rows(PK)}
    assert sorted(rows) == ["a", "b", "e'", "inserted", "new"]
    assert etags == [etag_of(rows[k]) for k in ("new", "a", "b", "inserted", "e'")] + ["", ""]
    assert {k: dict(rows[k]) for k in ("a", "b")} == {
        "a": {"PartitionKey": PK, "RowKey": "a", "v": 2},
        "b": {"PartitionKey": PK, "RowKey": "b", "w": 3},  # replaced, not merged
    }


REFUSED: dict[str, Callable[[dict[str, str]], list[Write]]] = {
    "create of an existing row": lambda etags: [
        Write("create", {"PartitionKey": PK, "RowKey": "fresh"}),
        Write("create", {"PartitionKey": PK, "RowKey": "kept"}),
    ],
    "update at a stale etag": lambda etags: [Write("update", {"PartitionKey": PK, "RowKey": "kept"}, etags["stale"])],
    "delete at a stale etag": lambda etags: [
        Write("upsert", {"PartitionKey": PK, "RowKey": "fresh"}),
        Write("delete", {"PartitionKey": PK, "RowKey": "kept"}, etags["stale"]),
    ],
    "delete of a missing row": lambda etags: [Write("delete", {"PartitionKey": PK, "RowKey": "missing"})],
    "update of a missing row": lambda etags: [Write("update", {"PartitionKey": PK, "RowKey": "missing"})],
    "update at an etag of a vanished row": lambda etags: [
        Write("update", {"PartitionKey": PK, "RowKey": "missing"}, etags["stale"])
    ],
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_transaction_raises_what_the_sdk_raises_and_applies_nothing(
    case: str, ours: Table, sdk: TableClient
) -> None:
    kept = {"PartitionKey": PK, "RowKey": "kept", "v": 1}
    ours.write(Write("create", kept))
    sdk.create_entity(kept)
    stale = {"stale": etag_of(ours.get(PK, "kept"))}  # type: ignore[arg-type]
    ours.write(Write("upsert", kept))
    sdk.upsert_entity(kept)
    operations = REFUSED[case](stale)

    expected = refusal(lambda: sdk.submit_transaction(as_sdk(operations)))
    with pytest.raises((AlreadyExists, ConcurrencyConflict)) as raised:
        ours.transact(operations)
    got = raised.value.__cause__

    assert isinstance(got, HttpResponseError)
    assert type(got) is type(expected) and isinstance(got, TableTransactionError)
    assert (got.status_code, got.error_code, got.index) == (
        expected.status_code,
        expected.error_code,
        expected.index,  # type: ignore[attr-defined]
    )
    assert [row["RowKey"] for row in ours.rows(PK)] == ["kept"]
    assert type(raised.value) is (AlreadyExists if expected.status_code == 409 else ConcurrencyConflict)


def test_a_full_transaction_of_non_ascii_entities_near_the_size_limit_is_applied(ours: Table) -> None:
    # 100 operations, each ~33 kB of JSON once its non-ASCII text is escaped: a ~3.3 MB body.
    text = "Grüße ✓ 你好 " * 500
    operations = [Write("upsert", {"PartitionKey": PK, "RowKey": f"r{n:03}", "text": text, "n": n}) for n in range(100)]

    etags = ours.transact(operations)

    rows = list(ours.rows(PK))
    assert [row["n"] for row in rows] == list(range(100))
    assert all(row["text"] == text for row in rows)
    assert etags == [etag_of(row) for row in rows]


def test_a_transaction_is_authenticated_by_the_clients_own_credential_a_shared_access_signature(
    storage_connection_string: str, table_prefix: str
) -> None:
    settings = dict(part.split("=", 1) for part in storage_connection_string.split(";") if part)
    signature = generate_account_sas(
        AzureNamedKeyCredential(settings["AccountName"], settings["AccountKey"]),
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, update=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    with TableServiceClient.from_connection_string(
        f"TableEndpoint={settings['TableEndpoint']};SharedAccessSignature={signature}"
    ) as service:
        metrics = TableMetrics()
        table = Table(service, f"{table_prefix}sas", metrics)

        etags = table.transact([Write("create", {"PartitionKey": PK, "RowKey": k}) for k in ("a", "b")])
        with pytest.raises(AlreadyExists):
            table.transact([Write("create", {"PartitionKey": PK, "RowKey": "b"})])

        assert etags == [etag_of(row) for row in table.rows(PK)]
        assert metrics.transactions == 4  # the table's creation, two transactions, the query
