"""A ``LeaseStore`` wrapper for tests that need something to happen at one point of a run's lease taking,
shared by the unit tests (in-memory leases) and the reliability tests (Table leases)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sync_core.ports import LeaseStore


class BeforeFirstAcquire:
    """Any ``LeaseStore``; runs ``action`` once, just before the first ``acquire`` goes through."""

    def __init__(self, inner: LeaseStore, action: Callable[[], None]) -> None:
        self.inner = inner
        self.action: Callable[[], None] | None = action

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        action, self.action = self.action, None
        if action is not None:
            action()
        return self.inner.acquire(key, owner, until, now)

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        return self.inner.renew(key, owner, until)

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        return self.inner.take_over(key, owner, until, now)

    def release(self, key: str, owner: str) -> None:
        self.inner.release(key, owner)
