"""A ``CursorStore`` wrapper for tests that need something to happen at a page's checkpoint, shared by the
unit tests (in-memory cursors) and the reliability tests (Table cursors).

A run writes a page's activities, then its checkpoint, on its writer thread while it fetches and decides
the next page (``sync_mailbox._PageWrites``). Right after the n-th checkpoint returned, page n's
activities and cursor are durable and nothing of page n+1 is written yet: the next page's writes start
only once this one's have ended. Holding the run there is the deterministic "between page n and page n+1"
(a hold after a page *fetch* would leave the previous page's writes in flight)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from sync_core.ports import CursorStore


class AfterCheckpoint:
    """Any ``CursorStore``; runs ``action`` once, right after the ``at``-th ``put_many`` (a page's
    checkpoint; 1-based) wrote, on the thread that wrote it."""

    def __init__(self, inner: CursorStore, at: int, action: Callable[[], None]) -> None:
        self.inner = inner
        self.at = at
        self.action = action
        self.checkpoints = 0

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]:
        return self.inner.get_all(org_id, mailbox_id)

    def put(self, org_id: str, mailbox_id: str, folder: str, link: str) -> None:
        self.inner.put(org_id, mailbox_id, folder, link)

    def put_many(self, org_id: str, mailbox_id: str, links: Mapping[str, str]) -> None:
        self.inner.put_many(org_id, mailbox_id, links)
        self.checkpoints += 1 if links else 0
        if self.checkpoints == self.at:
            self.action()

    def clear(self, org_id: str, mailbox_id: str) -> None:
        self.inner.clear(org_id, mailbox_id)


class HoldAfterCheckpoint(AfterCheckpoint):
    """``AfterCheckpoint`` whose action holds the run: ``holding`` is set once checkpoint ``at`` wrote,
    and the run waits there until ``resume`` is set."""

    def __init__(self, inner: CursorStore, at: int) -> None:
        self.holding, self.resume = threading.Event(), threading.Event()
        super().__init__(inner, at, self._hold)

    def _hold(self) -> None:
        self.holding.set()
        assert self.resume.wait(60)
