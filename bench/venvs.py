"""Virtual environments the benchmarks measure or run in, built on demand under ``.local/bench`` and reused
while their requirement files are unchanged:

* ``venv-app``: exactly ``requirements.txt``, what Azure installs for the Function App (cold start and
  installed size are measured here, not in the development venv, whose extra packages change what the
  Azure SDKs import);
* ``venv-msgraph``: ``requirements.txt`` plus ``bench/peers/requirements.txt`` (the official msgraph-sdk):
  the equivalent app built on the SDK, for the size comparison, and where the SDK peer runs.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from bench.stack import ROOT, WORK

APP = ("requirements.txt",)
MSGRAPH = ("requirements.txt", "bench/peers/requirements.txt")
SKIPPED = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth", "__pycache__")


def app_python() -> Path:
    return _ensure("venv-app", APP)


def msgraph_python() -> Path:
    return _ensure("venv-msgraph", MSGRAPH)


def _ensure(name: str, requirement_files: tuple[str, ...]) -> Path:
    home = WORK / name
    python = home / "bin" / "python"
    digest = hashlib.sha256(sys.version.encode())
    for file in requirement_files:
        digest.update((ROOT / file).read_bytes())
    stamp = home / ".requirements-sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == digest.hexdigest():
        return python
    shutil.rmtree(home, ignore_errors=True)
    print(f"building {home} ({' + '.join(requirement_files)})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
    args = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for file in requirement_files:
        args += ["-r", str(ROOT / file)]
    installed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if installed.returncode != 0:
        raise RuntimeError(f"pip could not build {home}:\n{installed.stdout}\n{installed.stderr}")
    stamp.write_text(digest.hexdigest())
    return python


def site_packages(python: Path) -> Path:
    found = sorted((python.parent.parent / "lib").glob("python*/site-packages"))
    return found[0]


def installed_bytes(python: Path) -> dict[str, int]:
    """Bytes on disk (compiled ``.pyc`` included) of each top-level entry of site-packages, without the
    packaging tools every venv has."""
    sizes: dict[str, int] = {}
    for entry in site_packages(python).iterdir():
        if entry.name.startswith(SKIPPED) or entry.name.endswith((".dist-info", ".pth")):
            continue
        files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
        sizes[entry.name] = sum(p.stat().st_size for p in files)
    return dict(sorted(sizes.items(), key=lambda item: -item[1]))
