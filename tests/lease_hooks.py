"""Wrappers for tests that need something to happen at one point of a run's lease taking, shared by the
unit tests (in-memory stores) and the reliability tests (Table stores): ``BeforeFirstAcquire`` around a
``LeaseStore``, ``StateBeforeFirstAcquire`` around a ``SyncStateStore`` (whose ``acquire_seen`` a run
tries first). Give both the same ``Once`` and the action runs once, before whichever comes first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from sync_core.ports import LeaseStore, RunReport, SyncState, SyncStateStore


class Once:
    """``action``, run by the first call only."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action: Callable[[], None] | None = action

    def __call__(self) -> None:
        action, self.action = self.action, None
        if action is not None:
            action()


class BeforeFirstAcquire:
    """Any ``LeaseStore``; runs ``action`` once, just before the first ``acquire`` goes through."""

    def __init__(self, inner: LeaseStore, action: Callable[[], None]) -> None:
        self.inner = inner
        self.action = action if isinstance(action, Once) else Once(action)

    def acquire(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        self.action()
        return self.inner.acquire(key, owner, until, now)

    def renew(self, key: str, owner: str, until: datetime) -> bool:
        return self.inner.renew(key, owner, until)

    def take_over(self, key: str, owner: str, until: datetime, now: datetime) -> bool:
        return self.inner.take_over(key, owner, until, now)

    def release(self, key: str, owner: str) -> None:
        self.inner.release(key, owner)


class StateBeforeFirstAcquire:
    """Any ``SyncStateStore``; runs ``action`` once, just before the first ``acquire_seen`` goes through."""

    def __init__(self, inner: SyncStateStore, action: Callable[[], None]) -> None:
        self.inner = inner
        self.action = action if isinstance(action, Once) else Once(action)

    def read(self, org_id: str, mailbox_id: str) -> SyncState:
        return self.inner.read(org_id, mailbox_id)

    def acquire_seen(
        self, org_id: str, mailbox_id: str, owner: str, *, until: datetime, now: datetime, seen: SyncState
    ) -> bool:
        self.action()
        return self.inner.acquire_seen(org_id, mailbox_id, owner, until=until, now=now, seen=seen)

    def commit(
        self,
        org_id: str,
        mailbox_id: str,
        owner: str,
        *,
        until: datetime | None,
        cursors: Mapping[str, str],
        report: RunReport | None = None,
        keep: int = 50,
    ) -> bool:
        return self.inner.commit(org_id, mailbox_id, owner, until=until, cursors=cursors, report=report, keep=keep)
