"""Queue triggers and queue output bindings against Azure Storage (Azurite locally).

Invariants (mirroring the Storage Queues extension 5.x):

* A listener fetches up to ``batchSize`` messages when at most ``newBatchThreshold`` are in
  flight, runs them concurrently, and backs off exponentially from :data:`MIN_POLL` up to
  ``maxPollingInterval`` while the queue is empty.
* A received message stays invisible for :data:`LEASE` while its function runs. Success deletes
  it. Failure makes it visible again after ``visibilityTimeout``, unless this was attempt
  ``maxDequeueCount``: then it is copied unchanged to ``<queue>-poison`` and deleted.
* With ``messageEncoding`` ``base64`` bodies are base64 on the wire (a body that is not valid
  base64 counts as a failed attempt); with ``none`` they are the raw text.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.functions.queue import QueueMessage
from azure.storage.queue import ExponentialRetry, QueueClient
from azure.storage.queue import QueueMessage as StorageMessage

from devhost.settings import QueueOptions

log = logging.getLogger("devhost")

MIN_POLL = 0.1  # seconds; first back-off step of an empty queue
LEASE = timedelta(minutes=10)  # the host's lease; renewals are not implemented


def encode_body(body: bytes, encoding: str) -> str:
    """Wire text for a message body under ``messageEncoding``."""
    return base64.b64encode(body).decode("ascii") if encoding == "base64" else body.decode("utf-8")


def decode_body(text: str, encoding: str) -> bytes:
    """Message body bytes from wire text; raises ValueError for invalid base64."""
    if encoding == "none":
        return text.encode("utf-8")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("message is not valid base64 (messageEncoding is base64)") from exc


def open_queue(connection_string: str, name: str) -> QueueClient:
    """A client for ``name``, creating the queue if it does not exist.

    Retries are short (about 1 s in all) so a missing Azurite fails start-up quickly.
    """
    retry = ExponentialRetry(initial_backoff=0, increment_base=1, retry_total=2, random_jitter_range=0)
    client = QueueClient.from_connection_string(connection_string, name, retry_policy=retry)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


class QueueListener:
    """Polls one queue for one queue-trigger function.

    ``invoke(message)`` returns True on success and False on failure (it logs the error).
    """

    def __init__(
        self,
        function_name: str,
        *,
        connection_string: str,
        queue_name: str,
        options: QueueOptions,
        invoke: Callable[[QueueMessage], bool],
        stop: threading.Event,
    ) -> None:
        self.function_name = function_name
        self.queue_name = queue_name
        self._connection_string = connection_string
        self._options = options
        self._invoke = invoke
        self._stop = stop
        self._wake = threading.Event()
        self._lock = threading.Condition()
        self._in_flight = 0
        self.activity = 0  # bumps whenever a batch arrives or a message finishes
        self._client = open_queue(connection_string, queue_name)
        self._poison: QueueClient | None = None
        workers = options.batch_size + max(options.new_batch_threshold, 0)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"devhost-queue-{queue_name}")
        self._thread = threading.Thread(target=self._run, name=f"devhost-poll-{queue_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Poll now instead of finishing the current back-off sleep."""
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._wake.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=False)

    def is_idle(self) -> bool:
        """No message of this queue is being processed."""
        with self._lock:
            return self._in_flight == 0

    def approximate_count(self) -> int:
        """Messages in the queue, visible or not (so failed-but-retrying ones count)."""
        count: int = self._client.get_queue_properties().approximate_message_count or 0
        return count

    def _run(self) -> None:
        backoff = MIN_POLL
        while not self._stop.is_set():
            with self._lock:
                while self._in_flight > self._options.new_batch_threshold and not self._stop.is_set():
                    self._lock.wait(0.5)
            if self._stop.is_set():
                return
            batch = self._receive()
            if batch:
                backoff = MIN_POLL
                with self._lock:
                    self._in_flight += len(batch)
                    self.activity += 1
                for message in batch:
                    self._pool.submit(self._process, message)
                continue
            woken = self._wake.wait(backoff)
            self._wake.clear()
            ceiling = max(self._options.max_polling_interval.total_seconds(), MIN_POLL)
            backoff = MIN_POLL if woken else min(backoff * 2, ceiling)

    def _receive(self) -> list[StorageMessage]:
        try:
            pages = self._client.receive_messages(
                messages_per_page=self._options.batch_size,
                visibility_timeout=int(LEASE.total_seconds()),
            ).by_page()
            return list(next(pages, []))
        except Exception as exc:  # any failure: the poller must outlive it, or the queue stops for good
            log.warning("polling queue %r failed: %s", self.queue_name, type(exc).__name__)
            return []

    def _process(self, message: StorageMessage) -> None:
        try:
            self._settle(message)
        except Exception:
            log.exception("settling a message of queue %r failed", self.queue_name)
        finally:
            with self._lock:
                self._in_flight -= 1
                self.activity += 1
                self._lock.notify_all()

    def _settle(self, message: StorageMessage) -> None:
        attempts = int(message.dequeue_count or 1)
        if attempts > self._options.max_dequeue_count:
            self._move_to_poison(message)
            return
        if self._invoke_safely(message, attempts):
            self._client.delete_message(message.id, message.pop_receipt)
        elif attempts >= self._options.max_dequeue_count:
            self._move_to_poison(message)
        else:
            delay = int(self._options.visibility_timeout.total_seconds())
            self._client.update_message(message.id, message.pop_receipt, visibility_timeout=delay)

    def _invoke_safely(self, message: StorageMessage, attempts: int) -> bool:
        try:
            body = decode_body(str(message.content), self._options.message_encoding)
        except ValueError as exc:
            log.warning("queue %r message %s: %s", self.queue_name, message.id, exc)
            return False
        return self._invoke(
            QueueMessage(  # type: ignore[no-untyped-call]
                id=message.id,
                body=body,
                dequeue_count=attempts,
                expiration_time=message.expires_on,
                insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt,
            )
        )

    def _move_to_poison(self, message: StorageMessage) -> None:
        if self._poison is None:
            self._poison = open_queue(self._connection_string, f"{self.queue_name}-poison")
        self._poison.send_message(message.content)
        self._client.delete_message(message.id, message.pop_receipt)
        log.warning(
            "message %s of queue %r moved to %r after %s attempts",
            message.id,
            self.queue_name,
            f"{self.queue_name}-poison",
            message.dequeue_count,
        )


class QueueOutputs:
    """Writes queue output binding values (str, bytes, QueueMessage or a list of them)."""

    def __init__(self, resolve_connection: Callable[[str], str], encoding: str) -> None:
        self._resolve = resolve_connection
        self._encoding = encoding
        self._clients: dict[tuple[str, str], QueueClient] = {}
        self._lock = threading.Lock()

    def send(self, queue_name: str, connection: str, value: Any) -> None:
        items = value if isinstance(value, list | tuple) else [value]
        client = self._client(queue_name, connection)
        for item in items:
            client.send_message(encode_body(_as_bytes(item), self._encoding))

    def _client(self, queue_name: str, connection: str) -> QueueClient:
        key = (queue_name, connection)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = open_queue(self._resolve(connection), queue_name)
            return self._clients[key]


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    if hasattr(item, "get_body"):
        body: bytes = item.get_body()
        return body
    raise TypeError(f"queue output must be str, bytes or QueueMessage, not {type(item).__name__}")
