"""What every benchmark gets from ``bench.run``: the running stack, the run settings, worker launching and
set-ups shared between benchmarks (built once per ``bench.run``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench.measure import run_worker
from bench.stack import Stack

T = TypeVar("T")


@dataclass
class Context:
    quick: bool
    latency_ms: int
    started: Stack | None = None  # set by bench.run before the first benchmark that needs the stack
    _shared: dict[str, Any] = field(default_factory=dict)

    @property
    def stack(self) -> Stack:
        if self.started is None:
            raise RuntimeError("this benchmark needs the stack (Azurite and the emulator)")
        return self.started

    def runs(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def worker(self, task: str, params: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        return run_worker(task, params, self.stack.worker_env(), **options)

    def shared(self, key: str, build: Callable[[], T]) -> T:
        if key not in self._shared:
            self._shared[key] = build()
        value: T = self._shared[key]
        return value

    def set_latency(self, latency_ms: int) -> None:
        client = self.stack.client()
        try:
            client.configure(latency_ms=latency_ms)
        finally:
            client.session.close()
