"""``python -m tests.reliability.crash_worker CONFIG.json``: one sync run of a mailbox in a worker process
that kills itself with SIGKILL after writing a page's activities and before that page's checkpoint.

The run is the product's ``sync_mailbox`` on the product's adapters (Table stores on Azurite, Graph over
HTTPS). Two thin wrappers around our own ports place the crash: the activity store counts its saves, and
the cursor store, asked to checkpoint once ``kill_after_saves`` saves were written, kills the process
instead. Every save and every checkpoint is appended to ``progress`` (JSON lines) first, so the test knows
exactly what was durable when the process died. Exit code 3: the run ended without reaching the crash.
With ``fenced`` the run keeps its sync state in one partition (``SyncStateStore``, as deployed), and the
state store's ``commit`` carrying a checkpoint is where the process dies instead.

CONFIG: ``connection_string``, ``prefix``, ``graph_url``, ``token`` (an app-only access token),
``ca_bundle``, ``org_id``, ``mailbox_id``, ``page_size``, ``budget_seconds``, ``kill_after_saves``,
``progress``, ``fenced``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from azure.data.tables import TableServiceClient

from sync_core.adapters.clock import SystemClock
from sync_core.adapters.graph.http import GraphHttp
from sync_core.adapters.graph.mail import GraphMailSource
from sync_core.adapters.graph.session import make_session
from sync_core.adapters.tables import TableStores
from sync_core.domain.model import Activity
from sync_core.ports import ActivityStore, ActivityWrite, CursorStore, RunReport, SyncStateStore
from sync_core.use_cases.sync_mailbox import SyncDeps, sync_mailbox
from tests.checkpoint_hooks import StateCommitHook


class Progress:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8", buffering=1)

    def write(self, **event: Any) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


class CountingActivities:
    def __init__(self, inner: ActivityStore, progress: Progress) -> None:
        self.inner = inner
        self.progress = progress
        self.saves = 0

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        written = self.inner.save(activities, announce_at)
        self.saves += 1
        self.progress.write(event="saved", n=self.saves, ids=[a.internet_message_id for a in activities])
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class KillingCursors:
    def __init__(self, inner: CursorStore, saves: CountingActivities, kill_after: int, progress: Progress) -> None:
        self.inner = inner
        self.saves = saves
        self.kill_after = kill_after
        self.progress = progress

    def get_all(self, org_id: str, mailbox_id: str) -> Mapping[str, str]:
        return self.inner.get_all(org_id, mailbox_id)

    def put(self, org_id: str, mailbox_id: str, folder: str, link: str) -> None:
        if self.saves.saves >= self.kill_after:
            self.progress.write(event="killed", folder=folder, link=link)
            os.kill(os.getpid(), signal.SIGKILL)
        self.inner.put(org_id, mailbox_id, folder, link)
        self.progress.write(event="checkpoint", folder=folder, link=link)

    def put_many(self, org_id: str, mailbox_id: str, links: Mapping[str, str]) -> None:
        if self.saves.saves >= self.kill_after:
            self.progress.write(event="killed", folder=",".join(links), link=";".join(links.values()))
            os.kill(os.getpid(), signal.SIGKILL)
        self.inner.put_many(org_id, mailbox_id, links)
        for folder, link in links.items():
            self.progress.write(event="checkpoint", folder=folder, link=link)

    def clear(self, org_id: str, mailbox_id: str) -> None:
        self.inner.clear(org_id, mailbox_id)


class KillingState(StateCommitHook):
    """The sync state store; a ``commit`` carrying checkpoints once ``kill_after`` saves were written kills
    the process instead."""

    def __init__(self, inner: SyncStateStore, saves: CountingActivities, kill_after: int, progress: Progress) -> None:
        super().__init__(inner)
        self.saves = saves
        self.kill_after = kill_after
        self.progress = progress

    def before_commit(self, cursors: Mapping[str, str], report: RunReport | None) -> None:
        if cursors and self.saves.saves >= self.kill_after:
            self.progress.write(event="killed", folder=",".join(cursors), link=";".join(cursors.values()))
            os.kill(os.getpid(), signal.SIGKILL)

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
        stored = super().commit(org_id, mailbox_id, owner, until=until, cursors=cursors, report=report, keep=keep)
        for folder, link in cursors.items() if stored else ():
            self.progress.write(event="checkpoint", folder=folder, link=link)
        return stored


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    progress = Progress(Path(config["progress"]))
    service = TableServiceClient.from_connection_string(config["connection_string"])
    stores = TableStores.create(service, config["prefix"])
    session = make_session(config["ca_bundle"])
    token = str(config["token"])
    mail = GraphMailSource(
        lambda _mailbox: GraphHttp(session, config["graph_url"], lambda _refresh: token), page_size=config["page_size"]
    )
    activities = CountingActivities(stores.activities, progress)
    kill_after = int(config["kill_after_saves"])
    fenced = bool(config.get("fenced"))
    deps = SyncDeps(
        mailboxes=stores.mailboxes,
        settings=stores.settings,
        records=stores.records,
        activities=activities,  # type: ignore[arg-type]
        cursors=stores.cursors if fenced else KillingCursors(stores.cursors, activities, kill_after, progress),
        leases=stores.leases,
        reports=stores.runs,
        mail=mail,
        clock=SystemClock(),
        state=KillingState(stores.sync_state, activities, kill_after, progress) if fenced else None,
    )
    outcome = sync_mailbox(deps, config["org_id"], config["mailbox_id"], timedelta(seconds=config["budget_seconds"]))
    progress.write(event="finished", status=outcome.status)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
