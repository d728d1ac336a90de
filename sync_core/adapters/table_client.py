"""One table as the Table adapters use it: created lazily, SDK errors translated, round trips counted.

Invariants:
- Every HTTP round trip to Table storage (each retry too) counts once in the shared ``TableMetrics`` and in
  every ``TableMetrics.measure()`` block open in the calling context, including the requests
  ``in_parallel`` makes on its behalf (independent point reads and writes to distinct partitions run
  ``PARALLEL_REQUESTS`` at a time).
- No SDK exception escapes: a taken key → AlreadyExists; a stale ETag, or a conditional write whose entity
  vanished → ConcurrencyConflict; everything else (connection, throttling, server) → StorageUnavailable.
  A read of a missing entity is None; an unconditional delete of a missing entity is a no-op.
- A write or transaction sent on a kept-alive connection the server had already closed (reset, broken
  pipe, disconnected without an answer) is sent once more on a new connection: the SDK retries only
  idempotent methods, and an entity group transaction is a POST. Sending twice is safe: unconditional
  operations are idempotent, and a conditional one that did apply the first time fails the second time
  as AlreadyExists / ConcurrencyConflict, which every caller already handles as "someone wrote first".
- An entity group transaction holds at most 100 operations on one partition and stays below the 4 MiB
  request limit. ``after_write`` runs after every write round trip that succeeded (tests use it to stop
  a multi-step write between two steps).
- An entity group transaction goes out as the batch request the SDK's ``submit_transaction`` would
  send (one changeset of sub-requests, entities serialised by the SDK's own EDM serialiser) through the
  SDK client's pipeline (authentication, retries, hooks, connection pool); a refused one raises the SDK's
  own ``TableTransactionError`` / ``RequestTooLargeError`` / ``HttpResponseError``, decoded by the SDK.
- ``commit`` writes plans whose final operation is conditional (create, or update/delete at an ETag) and
  whose other operations are idempotent; a plan is committed exactly when its final operation is, and
  the plan's final group (``Plan.final`` writes) always goes in that operation's transaction.
"""

from __future__ import annotations

import contextvars
import functools
import http.client
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl import RestHttpClientTransportResponse
from azure.core.utils._pipeline_transport_rest_shared import BytesIOSocket
from azure.data.tables import TableClient, TableEntity, TableServiceClient, UpdateMode
from azure.data.tables._error import (
    RequestTooLargeError,
    TableTransactionError,
    _decode_error,
    _validate_tablename_error,
)
from azure.data.tables._serialize import _add_entity_properties

from sync_core.errors import AlreadyExists, ConcurrencyConflict, StorageUnavailable

MAX_BATCH_OPERATIONS = 100
MAX_BATCH_BYTES = 3_500_000
# Concurrent requests of one call (independent point reads, writes to distinct partitions); stays
# within the HTTP connection pool (10 per host by default).
PARALLEL_REQUESTS = 8
# How often a write that met a concurrent change is re-read and re-planned before giving up.
CONFLICT_ATTEMPTS = 5
# Key ranges OR-ed into one query: 1 + 2 * 7 comparisons, within the service's 15 per filter.
RANGES_PER_QUERY = 7
T = TypeVar("T")
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")


def table_name(prefix: str, base: str) -> str:
    name = prefix + base
    if not _TABLE_NAME.match(name):
        raise ValueError(f"invalid table name {name!r}: letters and digits, starting with a letter, 3-63 long")
    return name


@dataclass
class Measurement:
    transactions: int = 0


_OPEN_MEASUREMENTS: ContextVar[tuple[tuple[TableMetrics, Measurement], ...]] = ContextVar(
    "open_table_measurements", default=()
)


class TableMetrics:
    """Counts Table storage transactions (HTTP round trips) of the adapters sharing it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._transactions = 0

    @property
    def transactions(self) -> int:
        return self._transactions

    def count(self, _response: object = None) -> None:
        """Record one round trip (the SDK's ``raw_response_hook``)."""
        with self._lock:
            self._transactions += 1
            for metrics, measurement in _OPEN_MEASUREMENTS.get():
                if metrics is self:
                    measurement.transactions += 1

    @contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Count the round trips made in this context (this thread and the parallel requests it starts)
        while the block runs."""
        measurement = Measurement()
        token = _OPEN_MEASUREMENTS.set((*_OPEN_MEASUREMENTS.get(), (self, measurement)))
        try:
            yield measurement
        finally:
            _OPEN_MEASUREMENTS.reset(token)


@dataclass(frozen=True)
class Write:
    """One entity operation. ``create`` fails when the key is taken; ``update`` replaces an existing
    entity (only while it still has ``etag``, when given); ``upsert`` inserts or replaces; ``delete``
    removes (only at ``etag``, when given)."""

    action: Literal["create", "update", "upsert", "delete"]
    entity: Mapping[str, Any]
    etag: str | None = None

    @property
    def partition_key(self) -> str:
        return str(self.entity["PartitionKey"])

    @property
    def key(self) -> tuple[str, str]:
        return self.partition_key, str(self.entity["RowKey"])

    @property
    def unconditional(self) -> bool:
        return self.action in ("upsert", "delete") and self.etag is None

    @functools.cached_property
    def payload_bytes(self) -> int:
        body = json.dumps(self.entity, default=str) if self.action != "delete" else ""
        return len(body) + 1_024

    def as_batch_operation(self) -> tuple[Any, ...]:
        """The operation as the SDK's ``submit_transaction`` takes it (tests compare the two)."""
        options: dict[str, Any] = _conditions(self.etag)
        if self.action in ("update", "upsert"):
            options["mode"] = UpdateMode.REPLACE
        return (self.action, dict(self.entity), options)


@dataclass(frozen=True)
class Plan:
    """Writes that take one item to its new state: idempotent operations, then one conditional
    operation last. The item is in its new state exactly when that last operation succeeded.

    ``final``: how many writes at the end (the conditional one last) are committed together, in one
    transaction, however the plan is packed, so what rides with the conditional write (an outbox row)
    exists exactly when it succeeded. The final group must fit one transaction."""

    key: str
    writes: tuple[Write, ...]
    final: int = 1

    @property
    def preparation(self) -> tuple[Write, ...]:
        return self.writes[: -self.final]

    @property
    def final_writes(self) -> tuple[Write, ...]:
        return self.writes[-self.final :]

    @property
    def groups(self) -> list[tuple[Write, ...]]:
        """The plan as ``pack`` groups: whole when it fits one transaction, else its preparation (spread as
        needed) and then its final group, which is never split."""
        if len(pack([self.writes])) == 1 or self.final == 1:
            return [self.writes]
        return [self.preparation, self.final_writes]


@dataclass
class Committed:
    """What ``Table.commit`` did: the new ETag of each committed plan's last write, and the keys of the
    plans that met a concurrent change (to re-read and re-plan)."""

    etags: dict[str, str] = field(default_factory=dict)
    conflicted: list[str] = field(default_factory=list)


class Table:
    def __init__(
        self,
        service: TableServiceClient,
        name: str,
        metrics: TableMetrics,
        after_write: Callable[[], None] | None = None,
    ) -> None:
        self._client = service.get_table_client(name)
        self._name = name
        self.metrics = metrics
        self._after_write = after_write
        self._ready = False
        self._lock = threading.Lock()

    # --- reads ---

    def get(self, partition_key: str, row_key: str, select: Sequence[str] | None = None) -> TableEntity | None:
        self._ensure_exists()
        with _storage_errors(f"read {self._name}"):
            try:
                return self._client.get_entity(
                    partition_key,
                    row_key,
                    select=list(select) if select else None,
                    raw_response_hook=self.metrics.count,
                )
            except HttpResponseError as exc:
                if exc.status_code == 404:
                    return None
                raise

    def rows(
        self,
        partition_key: str,
        *,
        at_least: str | None = None,
        after: str | None = None,
        below: str | None = None,
        select: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[TableEntity]:
        """Entities of one partition in RowKey order, within the given RowKey bounds (lazily, page by page)."""
        self._ensure_exists()
        conditions = ["PartitionKey eq @pk"]
        parameters = {"pk": partition_key}
        for operator, bound in (("ge", at_least), ("gt", after), ("lt", below)):
            if bound is not None:
                conditions.append(f"RowKey {operator} @{operator}")
                parameters[operator] = bound
        with _storage_errors(f"query {self._name}"):
            entities = iter(
                self._client.query_entities(
                    " and ".join(conditions),
                    parameters=parameters,
                    select=list(select) if select else None,
                    results_per_page=page_size,
                    raw_response_hook=self.metrics.count,
                )
            )
        while True:
            with _storage_errors(f"query {self._name}"):
                entity = next(entities, None)
            if entity is None:
                return
            yield entity

    def rows_in_ranges(
        self, partition_key: str, ranges: Sequence[tuple[str, str]], select: Sequence[str] | None = None
    ) -> list[TableEntity]:
        """Entities of one partition whose RowKey is in any of the ``[low, high)`` ranges: one query (paged)
        per ``RANGES_PER_QUERY`` ranges, as a filter holds at most 15 comparisons
        (https://learn.microsoft.com/rest/api/storageservices/querying-tables-and-entities)."""
        clauses = [
            (f"( RowKey ge @l{n} and RowKey lt @h{n} )", {f"l{n}": low, f"h{n}": high})
            for n, (low, high) in enumerate(ranges)
        ]
        return self._any_of(partition_key, clauses, RANGES_PER_QUERY, select)

    def _any_of(
        self,
        partition_key: str,
        clauses: Sequence[tuple[str, dict[str, str]]],
        per_query: int,
        select: Sequence[str] | None,
    ) -> list[TableEntity]:
        self._ensure_exists()

        def query(chunk: Sequence[tuple[str, dict[str, str]]]) -> list[TableEntity]:
            parameters = {"pk": partition_key}
            for _, values in chunk:
                parameters.update(values)
            # The SDK substitutes a parameter only as a word of its own: spaces around the parentheses.
            alternatives = " or ".join(text for text, _ in chunk)
            with _storage_errors(f"query {self._name}"):
                return list(
                    self._client.query_entities(
                        f"PartitionKey eq @pk and ( {alternatives} )",
                        parameters=parameters,
                        select=list(select) if select else None,
                        raw_response_hook=self.metrics.count,
                    )
                )

        chunks = [clauses[start : start + per_query] for start in range(0, len(clauses), per_query)]
        return [entity for found in self.in_parallel([functools.partial(query, c) for c in chunks]) for entity in found]

    def get_many(
        self, keys: Sequence[tuple[str, str]], select: Sequence[str] | None = None
    ) -> list[TableEntity | None]:
        """Point reads of many entities, ``PARALLEL_REQUESTS`` at a time; None for each missing one."""
        return self.in_parallel([functools.partial(self.get, pk, rk, select) for pk, rk in keys])

    def in_parallel(self, calls: Sequence[Callable[[], T]]) -> list[T]:
        """Run independent calls ``PARALLEL_REQUESTS`` at a time (each in the caller's context, so
        measurements count them); results in call order; the first failure is raised."""
        if len(calls) <= 1:
            return [call() for call in calls]
        with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(calls))) as pool:
            futures = [pool.submit(contextvars.copy_context().run, call) for call in calls]
            return [future.result() for future in futures]

    # --- writes ---

    def write(self, operation: Write) -> str:
        """One operation in one round trip; returns the new ETag ("" after a delete)."""
        self._ensure_exists()
        hook = self.metrics.count
        entity = dict(operation.entity)

        def send() -> Mapping[str, Any]:
            if operation.action == "create":
                return self._client.create_entity(entity, raw_response_hook=hook)
            if operation.action == "upsert":
                return self._client.upsert_entity(entity, mode=UpdateMode.REPLACE, raw_response_hook=hook)
            if operation.action == "update":
                return self._client.update_entity(
                    entity, mode=UpdateMode.REPLACE, raw_response_hook=hook, **_conditions(operation.etag)
                )
            pk, rk = operation.key
            self._client.delete_entity(pk, rk, raw_response_hook=hook, **_conditions(operation.etag))
            return {}

        with _storage_errors(f"{operation.action} in {self._name}"):
            metadata = _resent_once_if_the_connection_was_closed(send)
        self._wrote()
        return str(metadata.get("etag", ""))

    def transact(self, operations: Sequence[Write]) -> list[str]:
        """One entity group transaction (all or nothing); returns each operation's new ETag."""
        if len({operation.partition_key for operation in operations}) != 1:
            raise ValueError("a transaction holds operations on exactly one partition")
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(f"a transaction holds at most {MAX_BATCH_OPERATIONS} operations")
        self._ensure_exists()
        batch = _EntityGroupTransaction(self._client, operations)
        with _storage_errors(f"transaction in {self._name}"):
            etags = _resent_once_if_the_connection_was_closed(lambda: batch.send(self.metrics.count))
        self._wrote()
        return etags

    def submit(self, operations: Sequence[Write]) -> None:
        """Apply idempotent operations (upserts, plain deletes) in as few transactions as possible;
        their relative order is not kept. A delete of a missing entity is a no-op."""
        if not all(operation.unconditional for operation in operations):
            raise ValueError("submit takes upserts and plain deletes only")
        latest = {operation.key: operation for operation in operations}
        by_partition: dict[str, list[Write]] = {}
        for operation in latest.values():
            by_partition.setdefault(operation.partition_key, []).append(operation)
        self.in_parallel([functools.partial(self._submit_partition, writes) for writes in by_partition.values()])

    def _submit_partition(self, operations: list[Write]) -> None:
        for batch in pack([[operation] for operation in operations]):
            if len(batch) == 1:
                self.write(batch[0])
                continue
            try:
                self.transact(batch)
            except ConcurrencyConflict:  # a delete met a missing entity: apply one by one
                for operation in batch:
                    self.write(operation)

    def commit(self, plans: Sequence[Plan]) -> Committed:
        """Write plans (of one partition) in packed transactions. After a failed transaction, the
        remaining plans go one by one, so one conflict costs only its own plan."""
        result = Committed()
        final_writes = {id(plan.writes[-1]): plan for plan in plans}
        remaining = {plan.key: plan for plan in plans}
        for batch in pack([group for plan in plans for group in plan.groups]):
            try:
                etags = self.transact(batch)
            except (ConcurrencyConflict, AlreadyExists):
                break
            for operation, etag in zip(batch, etags, strict=True):
                plan = final_writes.get(id(operation))
                if plan is not None:
                    result.etags[plan.key] = etag
                    del remaining[plan.key]
        for plan in remaining.values():
            self.submit(plan.preparation)
            try:
                if plan.final == 1:
                    result.etags[plan.key] = self.write(plan.writes[-1])
                else:
                    result.etags[plan.key] = self.transact(plan.final_writes)[-1]
            except (ConcurrencyConflict, AlreadyExists):
                result.conflicted.append(plan.key)
        return result

    def _wrote(self) -> None:
        if self._after_write is not None:
            self._after_write()

    def _ensure_exists(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            with _storage_errors(f"create table {self._name}"), suppress(ResourceExistsError):
                self._client.create_table(raw_response_hook=self.metrics.count)
            self._ready = True


class _EntityGroupTransaction:
    """One entity group transaction as the batch request of
    https://learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions: a
    multipart/mixed batch holding one multipart/mixed changeset of HTTP sub-requests, one per operation
    (``Content-ID`` its index). The answer mirrors it: 202 with one sub-response per operation (each
    operation's ETag), or, when the changeset was refused, a single sub-response whose error message starts
    with the failing operation's index.

    The wire form is what the SDK's ``submit_transaction`` sends (same URLs, headers, entity JSON from the
    SDK's ``_add_entity_properties``, so EDM types and their errors are the SDK's), minus the SDK's generic
    multipart machinery (the ``email`` package, a thread pool per response), which cost about half a
    millisecond per operation. Inserts add ``Prefer: return-no-content``: the ETag still comes back, the
    entity does not. Errors are decoded by the SDK's own ``_decode_error``, so callers see the exact
    exception types, codes and messages ``submit_transaction`` raises."""

    def __init__(self, client: TableClient, operations: Sequence[Write]) -> None:
        self._client = client
        base = f"{client.scheme}://{client._primary_hostname}"
        self._url = f"{base}/{_BATCH_PATH}"
        table_url = f"{base}/{quote(client.table_name, safe='')}"
        version: str = client._client._config.version
        changeset = f"changeset_{uuid.uuid4()}"
        self._boundary = f"batch_{uuid.uuid4()}"
        parts = [f"--{self._boundary}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode()]
        for index, operation in enumerate(operations):
            parts.append(_sub_request(changeset, index, operation, table_url, version))
        parts.append(f"--{changeset}--\r\n\r\n--{self._boundary}--\r\n".encode())
        self._body = b"".join(parts)
        self._version = version
        self._count = len(operations)

    def send(self, hook: Callable[[Any], None]) -> list[str]:
        """Send the transaction; each operation's new ETag ("" after a delete)."""
        request = HttpRequest(
            "POST",
            self._url,
            headers={
                "x-ms-version": self._version,
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
                "Content-Type": f"multipart/mixed; boundary={self._boundary}",
                "Accept": "application/json",
            },
            content=self._body,
        )
        # Streamed, as the SDK does: the pipeline's content decoding knows no multipart bodies.
        response = self._client._client.send_request(request, stream=True, raw_response_hook=hook)
        content = response.read()
        if response.status_code == 413:
            raise _sdk_error(response, "", RequestTooLargeError, "The transaction request was too large")
        if response.status_code != 202:
            raise _sdk_error(response, self._client.table_name)
        answers = _sub_responses(content, response.headers.get("Content-Type", ""))
        for status, raw, _ in answers:
            if status == 413:
                raise _sdk_error(response, "", RequestTooLargeError, "The transaction request was too large")
            if not 200 <= status < 300:
                raise _sdk_error(_part_response(request, raw), self._client.table_name, TableTransactionError)
        if len(answers) != self._count:
            raise StorageUnavailable(
                f"Table storage answered {len(answers)} sub-responses to a transaction of {self._count}"
            )
        return [etag for _, _, etag in answers]


def _sdk_error(
    response: Any, table_name: str, kind: type[HttpResponseError] | None = None, message: str | None = None
) -> HttpResponseError:
    """The exception the SDK's ``_batch_send`` raises for this error response (decoded by the SDK)."""
    decoded: HttpResponseError = _decode_error(  # type: ignore[no-untyped-call]
        response, error_message=message, error_type=kind
    )
    if table_name:
        _validate_tablename_error(decoded, table_name)  # type: ignore[no-untyped-call]
    return decoded


def _sub_request(changeset: str, index: int, operation: Write, table_url: str, version: str) -> bytes:
    """One operation as a changeset part: the request ``submit_transaction`` would build for it."""
    head = (
        f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        f"Content-ID: {index}\r\n\r\n"
    )
    if operation.action == "create":
        line = f"POST {table_url} HTTP/1.1"
        headers = f"x-ms-version: {version}\r\nDataServiceVersion: 3.0\r\nPrefer: return-no-content\r\n"
        headers += "Accept: application/json;odata=minimalmetadata\r\n"
    else:
        pk, rk = operation.key
        address = f"{table_url}(PartitionKey='{_quoted_key(pk)}',RowKey='{_quoted_key(rk)}')"
        if operation.action == "delete":
            line = f"DELETE {address} HTTP/1.1"
            accept = "application/json;odata=minimalmetadata"
        else:
            line = f"PUT {address} HTTP/1.1"
            accept = "application/json"
        headers = f"x-ms-version: {version}\r\nDataServiceVersion: 3.0\r\nAccept: {accept}\r\n"
        # An update or delete without an ETag matches any entity (If-Match: *); an upsert sends none.
        if operation.etag is not None:
            headers += f"If-Match: {operation.etag}\r\n"
        elif operation.action != "upsert":
            headers += "If-Match: *\r\n"
    if operation.action == "delete":
        return f"{head}{line}\r\n{headers}\r\n\r\n".encode()
    body = json.dumps(_add_entity_properties(operation.entity)).encode()
    headers = f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}"
    return f"{head}{line}\r\n{headers}\r\n".encode() + body + b"\r\n"


def _quoted_key(key: str) -> str:
    """A key inside ``(PartitionKey='...',RowKey='...')``: quotes doubled (OData), then percent-encoded."""
    if not isinstance(key, str):
        raise TypeError("PartitionKey or RowKey must be of type string.")
    return quote(key.replace("'", "''"), safe="")


# Table storage's entity group transaction endpoint.
_BATCH_PATH = "$batch"
_BOUNDARY = re.compile(rb'boundary="?([^";\r\n]+)"?', re.IGNORECASE)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_ETAG = re.compile(rb"^etag:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def _sub_responses(body: bytes, content_type: str) -> list[tuple[int, bytes, str]]:
    """The HTTP sub-responses of a batch answer, in order: (status, the raw HTTP response, its ETag
    or ""). Parts nested in a changeset are flattened, as the SDK does."""
    found = _BOUNDARY.search(content_type.encode())
    if found is None:
        raise StorageUnavailable("Table storage answered a transaction without a multipart body")
    answers: list[tuple[int, bytes, str]] = []
    for part in _parts(body, found.group(1)):
        split = _BLANK_LINE.search(part)
        if split is None:
            continue
        headers, payload = part[: split.start()], part[split.end() :]
        nested = _BOUNDARY.search(headers)
        if nested is not None and b"multipart/mixed" in headers.lower():
            answers.extend(_sub_responses(payload, "; boundary=" + nested.group(1).decode()))
            continue
        status = int(payload[9:12])
        head = _BLANK_LINE.search(payload)
        etag = _ETAG.search(payload, 0, head.start() if head else len(payload))
        answers.append((status, payload, etag.group(1).decode() if etag else ""))
    return answers


def _parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts of a multipart body (RFC 2046: each delimiter is CRLF "--" boundary; the CRLF before
    a delimiter belongs to it, not to the part)."""
    delimiter = b"--" + boundary
    chunks = body.split(delimiter)
    parts: list[bytes] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        part = chunk.split(b"\n", 1)[1] if b"\n" in chunk else b""
        if part.endswith(b"\r\n"):
            part = part[:-2]
        elif part.endswith(b"\n"):
            part = part[:-1]
        parts.append(part)
    return parts


def _part_response(request: HttpRequest, raw: bytes) -> RestHttpClientTransportResponse:
    """A sub-response as the HTTP response object the SDK decodes errors from (as ``response.parts()``
    would build it)."""
    socket: Any = BytesIOSocket(raw)  # type: ignore[no-untyped-call]
    internal = http.client.HTTPResponse(socket, method=request.method)
    internal.begin()
    return RestHttpClientTransportResponse(request=request, internal_response=internal)  # type: ignore[no-untyped-call]


def etag_of(entity: TableEntity) -> str:
    return str(entity.metadata["etag"])


def key_only(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of an entity: enough to delete it."""
    return {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}


def pack(groups: Sequence[Sequence[Write]]) -> list[list[Write]]:
    """Pack operation groups, in order, into transaction-sized batches of one partition each. A group
    that fits a batch is never split; a larger one is spread over consecutive batches, order kept."""
    batches: list[list[Write]] = []
    current: list[Write] = []
    current_bytes = 0

    def fits(operations: Sequence[Write]) -> bool:
        same_partition = not current or all(op.partition_key == current[0].partition_key for op in operations)
        return (
            same_partition
            and len(current) + len(operations) <= MAX_BATCH_OPERATIONS
            and current_bytes + sum(operation.payload_bytes for operation in operations) <= MAX_BATCH_BYTES
        )

    for group in groups:
        if not fits(group) and current:
            batches.append(current)
            current, current_bytes = [], 0
        for operation in group:
            if not fits([operation]) and current:
                batches.append(current)
                current, current_bytes = [], 0
            current.append(operation)
            current_bytes += operation.payload_bytes
    if current:
        batches.append(current)
    return batches


def _conditions(etag: str | None) -> dict[str, Any]:
    if etag is None:
        return {}
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


@contextmanager
def scan_errors(action: str) -> Iterator[None]:
    """For reads that scan a table: a missing table stays ResourceNotFoundError (the caller treats it as
    empty), every other failure becomes StorageUnavailable."""
    try:
        yield
    except ResourceNotFoundError:
        raise
    except HttpResponseError as exc:
        raise StorageUnavailable(f"Table storage failed ({action}): {exc.status_code}") from exc
    except AzureError as exc:
        raise StorageUnavailable(f"Table storage unavailable ({action}): {type(exc).__name__}") from exc


CLOSED_CONNECTION = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


def _resent_once_if_the_connection_was_closed(send: Callable[[], T]) -> T:
    """``send()``, and once more if the connection it went out on had been closed by the server."""
    try:
        return send()
    except (ServiceRequestError, ServiceResponseError) as exc:
        if not _caused_by(exc, CLOSED_CONNECTION):
            raise
    return send()


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...], depth: int = 6) -> bool:
    """Whether ``exc`` wraps one of ``kinds``: through causes, contexts, the SDK's ``inner_exception``
    and the exception arguments urllib3 and requests wrap errors in."""
    if isinstance(exc, kinds):
        return True
    if depth == 0:
        return False
    wrapped = [exc.__cause__, exc.__context__, getattr(exc, "inner_exception", None), *exc.args]
    return any(isinstance(w, BaseException) and _caused_by(w, kinds, depth - 1) for w in wrapped)


@contextmanager
def _storage_errors(action: str) -> Iterator[None]:
    try:
        yield
    except HttpResponseError as exc:
        raise _translated(exc, action) from exc
    except AzureError as exc:
        raise StorageUnavailable(f"Table storage unavailable ({action}): {exc}") from exc


def _translated(exc: HttpResponseError, action: str) -> Exception:
    code = str(getattr(exc, "error_code", "") or "")
    if exc.status_code == 409 and "TableBeingDeleted" not in code:
        return AlreadyExists(f"{action}: the key is taken")
    if exc.status_code == 412 or (exc.status_code == 404 and "TableNotFound" not in code):
        return ConcurrencyConflict(f"{action}: the entity changed or vanished")
    return StorageUnavailable(f"Table storage failed ({action}): {exc.status_code} {code}".strip())
