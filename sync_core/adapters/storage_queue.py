"""The WorkQueue port on Azure Queue Storage.

Messages are compact JSON, base64-encoded on the wire: what host.json's ``messageEncoding: base64`` makes
the queue trigger decode. A delay keeps the message invisible that long (continuations after a
Retry-After). The queue is created on first use (one extra round trip, only when it is missing).

Built from the same storage setting as the tables (``AzureWebJobsStorage``): a connection string, or
``AzureWebJobsStorage__accountName`` with ``DefaultAzureCredential`` (identity-based).
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from sync_core.errors import StorageUnavailable
from sync_core.settings import Settings

MAX_DELAY_SECONDS = 7 * 24 * 3600 - 1  # a message may stay invisible for less than its 7-day lifetime
MAX_MESSAGE_BYTES = 48 * 1024  # 64 KiB on the wire after base64 (4/3)


def encode_message(message: Mapping[str, Any]) -> str:
    body = json.dumps(dict(message), separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ValueError(f"a queue message holds at most {MAX_MESSAGE_BYTES} bytes of JSON")
    return base64.b64encode(body).decode("ascii")


class StorageWorkQueue:
    def __init__(self, client: QueueClient) -> None:
        self._client = client
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageWorkQueue:
        if settings.storage_connection_string:
            return cls(QueueClient.from_connection_string(settings.storage_connection_string, settings.sync_queue))
        if settings.storage_account_name:
            from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - only for identity-based storage

            url = f"https://{settings.storage_account_name}.queue.core.windows.net"
            return cls(QueueClient(url, settings.sync_queue, credential=DefaultAzureCredential()))
        raise ValueError("AzureWebJobsStorage is not set")

    @property
    def name(self) -> str:
        return str(self._client.queue_name)

    def enqueue(self, message: Mapping[str, Any], delay_seconds: int = 0) -> None:
        content = encode_message(message)
        delay = min(max(int(delay_seconds), 0), MAX_DELAY_SECONDS)
        try:
            try:
                self._send(content, delay)
            except ResourceNotFoundError:  # first message ever: create the queue, then send
                with self._lock, suppress(ResourceExistsError):
                    self._client.create_queue()
                self._send(content, delay)
        except AzureError as exc:
            raise StorageUnavailable(f"Queue storage unavailable (enqueue): {type(exc).__name__}") from exc

    def _send(self, content: str, delay: int) -> None:
        self._client.send_message(content, visibility_timeout=delay or None)
