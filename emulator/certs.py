"""TLS material for the HTTPS-only emulator (MSAL refuses plain-http authorities).

Invariants:

* ``state_dir`` holds ``ca.pem`` (the emulator's CA), ``server.pem``/``server.key`` (a leaf for
  ``localhost`` and ``127.0.0.1`` signed by that CA) and ``ca-bundle.pem``.
* Existing CA and leaf files are reused, so a restarted emulator stays trusted by clients that pinned
  ``ca.pem``. The CA's private key is never written: nothing else can be signed with it later.
* ``ca-bundle.pem`` is certifi's bundle *plus* the emulator CA, because ``REQUESTS_CA_BUNDLE`` replaces
  the trust list rather than extending it; it is rebuilt on every start so certifi updates flow in.
* Files appear atomically and creation is serialised with a lock file, so concurrent starts sharing a
  state dir never see a key that does not match its certificate.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

import certifi
import trustme

SERVER_IDENTITIES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class TlsMaterial:
    ca_pem: Path
    ca_bundle: Path
    server_cert: Path
    server_key: Path


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    temporary.chmod(mode)
    os.replace(temporary, path)


def ensure_tls_material(state_dir: Path) -> TlsMaterial:
    """Create (or reuse) the CA, server certificate and combined CA bundle under ``state_dir``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    material = TlsMaterial(
        ca_pem=state_dir / "ca.pem",
        ca_bundle=state_dir / "ca-bundle.pem",
        server_cert=state_dir / "server.pem",
        server_key=state_dir / "server.key",
    )
    with (state_dir / ".certs.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(p.exists() for p in (material.ca_pem, material.server_cert, material.server_key)):
            ca = trustme.CA(organization_name="Local Graph Emulator")
            leaf = ca.issue_cert(*SERVER_IDENTITIES, common_name="localhost")
            _write_atomically(material.server_key, leaf.private_key_pem.bytes(), 0o600)
            _write_atomically(material.server_cert, b"".join(p.bytes() for p in leaf.cert_chain_pems))
            _write_atomically(material.ca_pem, ca.cert_pem.bytes())
        system = Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n"
        _write_atomically(material.ca_bundle, system + b"# Local Graph emulator CA\n" + material.ca_pem.read_bytes())
    return material
