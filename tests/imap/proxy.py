"""A TCP proxy in front of the real Dovecot that can drop the connection: the network failing mid-
conversation (a server restart, a NAT timeout), reproduced at the transport and not inside the client.

``cut_after``: once that many bytes went from the server to the client on one connection, both sides
are closed abruptly. TLS passes through untouched (the proxy never sees the plaintext).
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class DroppingProxy:
    def __init__(self, target: tuple[str, int], cut_after: int | None = None) -> None:
        self.target = target
        self.cut_after = cut_after
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, self.cut_after), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if budget is not None and sent + len(data) >= budget:
                    sink.sendall(data[: max(0, budget - sent)])
                    self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
