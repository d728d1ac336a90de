"""Wrappers for tests that need something to happen at a page's checkpoint, shared by the unit tests
(in-memory stores) and the reliability tests (Table stores), on both ways a run writes its checkpoints.

A run writes a page's activities, then its checkpoint, on its writer thread while it fetches and decides
the next page (``sync_mailbox._PageWrites``); the next page's writes start only once this one's ended.
The deterministic "between page n and page n+1" (a hold after a page *fetch* would leave the previous
page's writes in flight) is where the run's checkpoint n reaches storage:
- classic (``CursorStore``, no ``SyncStateStore``): right after the n-th non-empty ``put_many`` wrote.
  Page n's activities and cursor are durable; the run's next write is the renewal before page n+1's save.
- fenced in the transaction (``SyncStateStore``): right before the n-th ``commit`` carrying checkpoints is
  sent. That commit is the renewal before the run's next write (page n+1's save) or its final commit, and
  carries checkpoint n in the same transaction, conditional on the lease row. Page n's activities are
  durable, its cursor is not yet (it is written by this commit, or not at all if the lease was lost), and
  nothing of page n+1 is written.
Either way the run's next storage call is a renewal that fails as a whole when the lease was lost.
``AtCheckpoint(at, action).wrap(fenced, cursors, state)`` gives the deps to hand a run for either path."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from sync_core.ports import CursorStore, RunReport, SyncState, SyncStateStore


class AtCheckpoint:
    """Runs ``action`` once, at the run's ``at``-th checkpoint (1-based; see the module docstring for where
    that is on each path), on the thread writing it."""

    def __init__(self, at: int, action: Callable[[], None]) -> None:
        self.at = at
        self.action = action
        self.checkpoints = 0
        self._lock = threading.Lock()

    def reached(self) -> None:
        with self._lock:
            self.checkpoints += 1
            due = self.checkpoints == self.at
        if due:
            self.action()

    def cursors(self, inner: CursorStore) -> CursorStore:
        """``inner``, acting right after the ``at``-th checkpoint wrote (classic)."""
        return _AfterPutMany(inner, self)

    def state(self, inner: SyncStateStore) -> SyncStateStore:
        """``inner``, acting right before the ``at``-th commit carrying checkpoints (fenced)."""
        return _BeforeCheckpointCommit(inner, self)

    def wrap(self, fenced: bool, cursors: CursorStore, state: SyncStateStore) -> dict[str, Any]:
        """The deps (``cursors=`` or ``state=``) a run takes to act at its checkpoint on the chosen path."""
        return {"state": self.state(state)} if fenced else {"cursors": self.cursors(cursors)}


class HoldAtCheckpoint(AtCheckpoint):
    """``AtCheckpoint`` whose action holds the run: ``holding`` is set once checkpoint ``at`` is reached,
    and the run waits there until ``resume`` is set."""

    def __init__(self, at: int) -> None:
        self.holding, self.resume = threading.Event(), threading.Event()
        super().__init__(at, self._hold)

    def _hold(self) -> None:
        self.holding.set()
        assert self.resume.wait(60)


class _AfterPutMany:
    def __init__(self, inner: CursorStore, hook: AtCheckpoint) -> None:
        self.inner = inner
        self.hook = hook

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]:
        return self.inner.get_all(org_id, mailbox_id)

    def put(self, org_id: str, mailbox_id: str, folder: str, link: str) -> None:
        self.inner.put(org_id, mailbox_id, folder, link)

    def put_many(self, org_id: str, mailbox_id: str, links: Mapping[str, str]) -> None:
        self.inner.put_many(org_id, mailbox_id, links)
        if links:
            self.hook.reached()

    def clear(self, org_id: str, mailbox_id: str) -> None:
        self.inner.clear(org_id, mailbox_id)


class StateCommitHook:
    """A sync state store passing everything through to ``inner``; ``before_commit`` runs before each
    ``commit`` is sent, with the checkpoints and the report it carries (subclasses act there)."""

    def __init__(self, inner: SyncStateStore) -> None:
        self.inner = inner

    def before_commit(self, cursors: Mapping[str, str], report: RunReport | None) -> None:
        """Nothing here."""

    def read(self, org_id: str, mailbox_id: str) -> SyncState:
        return self.inner.read(org_id, mailbox_id)

    def acquire_seen(
        self, org_id: str, mailbox_id: str, owner: str, *, until: datetime, now: datetime, seen: SyncState
    ) -> bool:
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
        self.before_commit(cursors, report)
        return self.inner.commit(org_id, mailbox_id, owner, until=until, cursors=cursors, report=report, keep=keep)


class _BeforeCheckpointCommit(StateCommitHook):
    def __init__(self, inner: SyncStateStore, hook: AtCheckpoint) -> None:
        super().__init__(inner)
        self.hook = hook

    def before_commit(self, cursors: Mapping[str, str], report: RunReport | None) -> None:
        if cursors:
            self.hook.reached()
