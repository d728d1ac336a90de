"""Start and stop Azurite (the Azure Storage emulator, pinned in package.json) for local runs and tests.

Azurite always runs with ``--disableTelemetry``. Ports default to the well-known 10000-10002; tests pass
free ports so several runs can share a machine.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"
# The well-known development account of every Azure Storage emulator (public, not a secret).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection_string(blob_port: int, queue_port: int, table_port: int) -> str:
    host = "http://127.0.0.1"
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"BlobEndpoint={host}:{blob_port}/{DEV_ACCOUNT};"
        f"QueueEndpoint={host}:{queue_port}/{DEV_ACCOUNT};"
        f"TableEndpoint={host}:{table_port}/{DEV_ACCOUNT};"
    )


@dataclass
class Azurite:
    process: subprocess.Popen[bytes]
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_port, self.queue_port, self.table_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_azurite(location: Path, ports: tuple[int, int, int] | None = None, in_memory: bool = False) -> Azurite:
    """Start Azurite and wait until its three services accept connections."""
    if not AZURITE_BIN.exists():
        raise RuntimeError("Azurite is not installed: run `npm ci` (make does this for you)")
    blob, queue, table = ports or (free_port(), free_port(), free_port())
    args = [
        str(AZURITE_BIN), "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
        "--blobPort", str(blob), "--queuePort", str(queue), "--tablePort", str(table),
    ]
    if in_memory:
        args.append("--inMemoryPersistence")  # Azurite refuses --location together with this
    else:
        location.mkdir(parents=True, exist_ok=True)
        args += ["--location", str(location)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    azurite = Azurite(process, blob, queue, table)
    deadline = time.monotonic() + 30
    for port in (blob, queue, table):
        while not _accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                azurite.stop()
                raise RuntimeError(f"Azurite did not start on port {port}")
            time.sleep(0.1)
    return azurite


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
