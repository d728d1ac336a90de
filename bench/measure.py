"""Measuring inside a worker process, and running workers from the orchestrator.

A worker is ``python -m bench.worker TASK`` with its parameters as JSON on stdin; it prints its result as
JSON on the last line of stdout. Each measurement runs in a fresh process, so its peak RSS and CPU time
are its own (the emulator and Azurite run in other processes).

``HttpProbe`` counts every HTTP request the process makes through ``requests`` -- the Graph
client, MSAL and the Azure SDK (its transport is a ``requests`` Session) all do -- by target: Graph
(``/v1.0``), identity (the emulator's other paths but ``/_emulator``, which is the benchmark's own
``control``), Table storage and Queue storage (Azurite's ports).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


# -- inside a worker ---------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far: ``VmHWM``. (Not ``getrusage``'s ``ru_maxrss``, which
    Linux copies from the parent on fork and keeps across exec, so a worker would report at least its
    parent's peak.)"""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    times = os.times()
    return times.user + times.system


class Clock:
    """Wall and CPU time of a block: ``with clock.timing(): ...`` then ``clock.wall``, ``clock.cpu``."""

    wall = 0.0
    cpu = 0.0

    @contextmanager
    def timing(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += cpu_seconds() - cpu


class HttpProbe:
    """Counts HTTP requests by target (see the module docstring) and by kind (reads are GET and HEAD:
    Table queries and point reads; everything else writes); install once per process."""

    def __init__(self, emulator_url: str, storage: str) -> None:
        self._emulator = urlsplit(emulator_url).netloc
        parts = dict(part.split("=", 1) for part in storage.split(";") if "=" in part)
        self._tables = urlsplit(parts.get("TableEndpoint", "")).netloc
        self._queues = urlsplit(parts.get("QueueEndpoint", "")).netloc
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def target(self, url: str) -> str:
        parts = urlsplit(url)
        if parts.netloc == self._emulator:
            if parts.path.startswith("/_emulator"):
                return "control"  # the benchmark's own calls to the emulator's control API
            return "graph" if parts.path.startswith("/v1.0") else "identity"
        if parts.netloc == self._tables:
            return "table"
        if parts.netloc == self._queues:
            return "queue"
        return "other"

    def install(self) -> HttpProbe:
        import requests  # noqa: PLC0415 - only workers that measure HTTP import it through here

        original = requests.Session.request
        probe = self

        def request(session: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            probe.record(str(url), str(method))
            return original(session, method, url, *args, **kwargs)

        requests.Session.request = request  # type: ignore[method-assign]
        return self

    def record(self, url: str, method: str) -> None:
        """One request; also counted as ``<target>:read`` (GET/HEAD) or ``<target>:write``, and Table
        requests as ``table:<kind>:<table name>`` too (``$batch`` for entity group transactions)."""
        target = self.target(url)
        kind = "read" if method.upper() in ("GET", "HEAD") else "write"
        with self._lock:
            self.counts[target] += 1
            self.counts[f"{target}:{kind}"] += 1
            if target == "table":
                segments = urlsplit(url).path.split("/")
                self.counts[f"table:{kind}:{segments[2].partition('(')[0] if len(segments) > 2 else ''}"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def since(self, before: Mapping[str, int]) -> dict[str, int]:
        """Requests made since ``before`` (a ``snapshot``)."""
        return {key: count - before.get(key, 0) for key, count in self.snapshot().items()}


class Phases:
    """Wall time spent in named calls on the main thread (nested phases are excluded from their parent),
    by wrapping methods: ``phases.wrap(obj, "method", "name")``. With ``background``, the same for threads
    whose name starts with it (e.g. the sync's page writer), kept apart (``background_report``)."""

    def __init__(self, background: str = "") -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.background_seconds: Counter[str] = Counter()
        self.background_calls: Counter[str] = Counter()
        self._background = background
        self._stacks = threading.local()
        self._lock = threading.Lock()

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            return self.run(name, original, *args, **kwargs)

        setattr(owner, attribute, timed)

    def run(self, name: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        main = thread is threading.main_thread()
        if not main and not (self._background and thread.name.startswith(self._background)):
            return call(*args, **kwargs)
        stack: list[list[float]] = self._stacks.__dict__.setdefault("stack", [])
        frame = [time.perf_counter(), 0.0]  # start, time spent in nested phases
        stack.append(frame)
        try:
            return call(*args, **kwargs)
        finally:
            stack.pop()
            elapsed = time.perf_counter() - frame[0]
            seconds, calls = (self.seconds, self.calls) if main else (self.background_seconds, self.background_calls)
            with self._lock:
                seconds[name] += elapsed - frame[1]
                calls[name] += 1
            if stack:
                stack[-1][1] += elapsed

    def report(self) -> dict[str, dict[str, float]]:
        return {name: {"seconds": round(s, 4), "calls": self.calls[name]} for name, s in self.seconds.most_common()}

    def background_report(self) -> dict[str, dict[str, float]]:
        return {
            name: {"seconds": round(s, 4), "calls": self.background_calls[name]}
            for name, s in self.background_seconds.most_common()
        }


# -- from the orchestrator ----------------------------------------------------------------------------


class WorkerFailed(RuntimeError):
    pass


def run_worker(
    task: str,
    params: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    python: str = sys.executable,
    timeout: float = 1_800,
) -> dict[str, Any]:
    """Run one worker task in a fresh process; its JSON result."""
    completed = subprocess.run(
        [python, "-m", "bench.worker", task],
        input=json.dumps(dict(params)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        timeout=timeout,
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise WorkerFailed(f"worker {task} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")

