"""Benchmark 5, cold start: the time to import ``function_app`` (``python -X importtime``, goal <= 250 ms) in
a venv holding exactly requirements.txt, and the installed size of that venv against the equivalent app
built on msgraph-sdk (requirements.txt + msgraph-sdk).

The Azure Functions Python worker has ``azure.functions`` imported before it loads the app, so the
app's own share (``function_app`` minus ``azure.functions``) is reported too.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import venvs
from bench.context import Context
from bench.measure import median
from bench.stack import ROOT

_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)$")


def run(ctx: Context) -> dict[str, Any]:
    app, msgraph = venvs.app_python(), venvs.msgraph_python()
    runs = ctx.runs(7, 3)
    imports = [importtime(app, "import function_app") for _ in range(runs)]
    with_sdk = [importtime(msgraph, "import function_app; from msgraph import GraphServiceClient") for _ in range(runs)]
    app_sizes, sdk_sizes = venvs.installed_bytes(app), venvs.installed_bytes(msgraph)
    app_total, sdk_total = sum(app_sizes.values()), sum(sdk_sizes.values())
    return {
        "runs": runs,
        "import_ms": median([r["function_app"] for r in imports]),
        "azure_functions_ms": median([r["azure.functions"] for r in imports]),
        "app_share_ms": median([r["function_app"] - r["azure.functions"] for r in imports]),
        "process_ms": median([r["process_ms"] for r in imports]),
        "interpreter_ms": median([process_ms(app, "pass") for _ in range(runs)]),
        "heaviest_imports": heaviest(imports[len(imports) // 2]["tree"]),
        "with_msgraph_import_ms": median([r["function_app"] + r.get("msgraph", 0.0) for r in with_sdk]),
        "msgraph_import_ms": median([r.get("msgraph", 0.0) for r in with_sdk]),
        "installed_mb": app_total / 1e6,
        "msgraph_installed_mb": sdk_total / 1e6,
        "size_ratio": sdk_total / app_total,
        "largest_packages_mb": {name: round(size / 1e6, 1) for name, size in list(app_sizes.items())[:8]},
        "largest_msgraph_only_mb": {
            name: round(size / 1e6, 1) for name, size in sdk_sizes.items() if name not in app_sizes
        },
    }


def _env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}


def importtime(python: Path, code: str) -> dict[str, Any]:
    """Cumulative import time (ms) of every module ``code`` imports (where it was first imported), the
    process's wall time, and the whole tree as (depth, module, ms)."""
    started = time.perf_counter()
    completed = subprocess.run(
        [str(python), "-X", "importtime", "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - started
    tree = []
    for line in completed.stderr.splitlines():
        match = _LINE.match(line)
        if match:
            tree.append((len(match[3]) // 2, match[4], int(match[2]) / 1000))
    first: dict[str, float] = {}
    for _depth, name, ms in tree:
        first.setdefault(name, ms)
    return {**first, "process_ms": elapsed * 1000, "tree": tree}


def process_ms(python: Path, code: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(python), "-c", code], cwd=ROOT, env=_env(), check=True)
    return (time.perf_counter() - started) * 1000


def heaviest(tree: list[tuple[int, str, float]], limit: int = 10) -> dict[str, list[tuple[str, float]]]:
    """What costs most: the app modules ``function_app`` imports directly, and the packages (``azure.*`` by
    subpackage) by the cumulative time of their first import."""
    direct = [(name, ms) for depth, name, ms in tree if depth == 1]
    packages: dict[str, float] = {}
    for _depth, name, ms in tree:
        parts = name.split(".")
        if parts[0] in ("function_app", "sync_core", "triggers", "encodings", "site"):
            continue
        key = ".".join(parts[:2]) if parts[0] == "azure" and len(parts) > 1 else parts[0]
        packages[key] = max(packages.get(key, 0.0), ms)
    return {
        "function_app_imports": sorted(direct, key=lambda item: -item[1])[:limit],
        "packages": sorted(packages.items(), key=lambda item: -item[1])[:limit],
    }
