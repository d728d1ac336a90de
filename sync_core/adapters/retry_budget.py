"""What a provider's HTTP client may spend on retries during one run, and what it counts for the run's
report: shared by the Graph and Gmail clients, so both back off and give up alike.

Invariants:
- Backoff is full-jitter exponential (uniform in [0, min(cap, base * 2**attempt)]); a Retry-After the
  provider sent is honoured instead.
- The seconds slept for one client never exceed ``max_total_wait``: the wait that would cross it raises
  the client's transient error (with that wait as its Retry-After) instead of sleeping, so a run never
  outstays its budget because a provider throttles it.
- ``metrics`` only grows (requests sent, throttled answers, seconds waited): a run's share is the
  difference of two readings.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass
class RequestMetrics:
    requests: int = 0
    throttled: int = 0
    waited_seconds: float = 0.0


class RetryBudget:
    def __init__(
        self,
        exhausted: Callable[[float], Exception],
        *,
        max_total_wait: float = 120.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``exhausted(seconds)`` builds the error raised when a wait would cross ``max_total_wait``."""
        self._exhausted = exhausted
        self._max_total_wait = max_total_wait
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._sleep = sleep
        self._lock = threading.Lock()
        self.metrics = RequestMetrics()

    def count_request(self) -> None:
        with self._lock:
            self.metrics.requests += 1

    def count_throttled(self) -> None:
        with self._lock:
            self.metrics.throttled += 1

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff."""
        return random.uniform(0, min(self._backoff_cap, self._backoff_base * (2**attempt)))

    def wait(self, seconds: float) -> None:
        with self._lock:
            if self.metrics.waited_seconds + seconds > self._max_total_wait:
                raise self._exhausted(seconds)
            self.metrics.waited_seconds += seconds
        self._sleep(seconds)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The Retry-After seconds of an answer (any header case: batch sub-responses are plain dicts)."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
