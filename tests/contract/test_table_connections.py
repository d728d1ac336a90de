"""Table writes sent on a connection the server had already closed (Azurite and Azure's load balancers
close idle kept-alive connections) are sent again, once: the SDK does not retry a POST."""

from __future__ import annotations

import re
import select
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_client import Table, TableMetrics, Write
from sync_core.errors import StorageUnavailable


class ResettingProxy:
    """A TCP proxy in front of Azurite's table port. ``reset_next(n)``: the next ``n`` requests are
    answered with a TCP reset instead of being forwarded, as a server that closed the connection does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_reset = 0
        self.resets = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset_next(self, count: int) -> None:
        with self.lock:
            self.to_reset = count

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 30)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client and self._take_reset():
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return  # closing with linger 0 sends a reset
                    (upstream if sock is client else client).sendall(data)
        finally:
            client.close()
            upstream.close()

    def _take_reset(self) -> bool:
        with self.lock:
            if self.to_reset == 0:
                return False
            self.to_reset -= 1
            self.resets += 1
            return True


@pytest.fixture
def proxy(storage_connection_string: str) -> Iterator[ResettingProxy]:
    match = re.search(r"TableEndpoint=http://127\.0\.0\.1:(\d+)/", storage_connection_string)
    assert match, "the tests run against Azurite"
    running = ResettingProxy(int(match.group(1)))
    yield running
    running.close()


@pytest.fixture
def table(proxy: ResettingProxy, storage_connection_string: str, table_prefix: str) -> Iterator[Table]:
    through_proxy = re.sub(
        r"TableEndpoint=http://127\.0\.0\.1:\d+/", f"TableEndpoint=http://127.0.0.1:{proxy.port}/",
        storage_connection_string,
    )
    service = TableServiceClient.from_connection_string(through_proxy)
    yield Table(service, f"{table_prefix}conn", TableMetrics())
    service.close()


def _row(n: int) -> dict[str, str]:
    return {"PartitionKey": "p", "RowKey": f"r{n}", "value": str(n)}


def test_a_transaction_whose_connection_was_reset_is_sent_again_and_applied_once(
    table: Table, proxy: ResettingProxy
) -> None:
    table.write(Write("upsert", _row(0)))  # opens the kept-alive connection (and the table)
    proxy.reset_next(1)

    table.transact([Write("create", _row(1)), Write("create", _row(2))])

    assert proxy.resets == 1
    assert [table.get("p", f"r{n}") is not None for n in (1, 2)] == [True, True]


def test_a_single_write_whose_connection_was_reset_is_sent_again(table: Table, proxy: ResettingProxy) -> None:
    table.write(Write("upsert", _row(0)))
    proxy.reset_next(1)

    table.write(Write("create", _row(3)))

    assert proxy.resets == 1
    stored = table.get("p", "r3")
    assert stored is not None and stored["value"] == "3"


def test_a_connection_reset_twice_in_a_row_is_reported_as_storage_unavailable(
    table: Table, proxy: ResettingProxy
) -> None:
    table.write(Write("upsert", _row(0)))
    proxy.reset_next(2)

    with pytest.raises(StorageUnavailable):
        table.transact([Write("create", _row(4))])

    assert proxy.resets == 2
    assert table.get("p", "r4") is None
