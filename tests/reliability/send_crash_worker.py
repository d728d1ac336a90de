"""``python -m tests.reliability.send_crash_worker CONFIG.json``: drive one send through the state machine in
a worker process that kills itself with SIGKILL just before its ``kill_at``-th checkpoint (counting from 1),
that is right after the provider call the checkpoint would record.

The run is the product's ``use_cases.send.deliver`` on the product's adapters (the Table sends store on
Azurite, the Graph sender and mail source over HTTPS). One thin wrapper around our own ``SendStore`` places
the crash: its ``replace`` appends the step it is about to write to ``progress`` (JSON lines), then kills the
process instead of writing when it is the ``kill_at``-th. Exit code 3: the send ended without the crash.

CONFIG: ``connection_string``, ``prefix``, ``graph_url``, ``token`` (an app-only access token), ``ca_bundle``,
``org_id``, ``send_id``, ``kill_at``, ``progress``. With ``"provider": "google"`` the worker sends through
Gmail instead (``gmail_url``, ``token`` a Gmail access token with ``gmail.send``), and ``kill_on_submit``
kills it when it is about to hand the message to the provider (its checkpoint before that written).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from azure.data.tables import TableServiceClient

from sync_core.adapters.clock import SystemClock
from sync_core.adapters.google.http import GmailHttp
from sync_core.adapters.google.mail import GmailMailSource
from sync_core.adapters.google.send import GmailMailSender
from sync_core.adapters.graph.http import GraphHttp
from sync_core.adapters.graph.mail import GraphMailSource
from sync_core.adapters.graph.send import GraphMailSender
from sync_core.adapters.graph.session import make_session
from sync_core.adapters.table_sends import TableSendStore
from sync_core.adapters.tables import TableStores
from sync_core.domain.model import Mailbox
from sync_core.domain.sending import Send
from sync_core.ports import MailSource, Versioned
from sync_core.ports.send import MailSender
from sync_core.use_cases.send import SendDeps, deliver


class Progress:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8", buffering=1)

    def write(self, **event: Any) -> None:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


class KillingSends(TableSendStore):
    """The Table sends store, killing the process instead of writing its ``kill_at``-th replace."""

    def __init__(self, service: TableServiceClient, prefix: str, kill_at: int, progress: Progress) -> None:
        super().__init__(service, prefix)
        self.kill_at = kill_at
        self.progress = progress
        self.replaces = 0

    def replace(self, send: Send, etag: str) -> Versioned[Send]:
        self.replaces += 1
        event = {"n": self.replaces, "step": send.step.value, "status": send.status.value}
        if self.replaces == self.kill_at:
            self.progress.write(event="killed", **event)
            os.kill(os.getpid(), signal.SIGKILL)
        written = super().replace(send, etag)
        self.progress.write(event="checkpoint", **event)
        return written


class KilledOnSubmit(GmailMailSender):
    """The Gmail sender, killing the process when it is about to send."""

    def __init__(self, http_for: Any, progress: Progress) -> None:
        super().__init__(http_for)
        self.progress = progress

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        self.progress.write(event="killed", step="submit", status="sending")
        os.kill(os.getpid(), signal.SIGKILL)


class NoQueue:
    def enqueue(self, message: Mapping[str, Any], delay_seconds: int = 0) -> None:
        return None


def main(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    progress = Progress(Path(config["progress"]))
    service = TableServiceClient.from_connection_string(config["connection_string"])
    stores = TableStores.create(service, config["prefix"])
    session = make_session(config["ca_bundle"])
    token = str(config["token"])
    mail: MailSource
    sender: MailSender
    if config.get("provider") == "google":

        def gmail(_mailbox: object) -> GmailHttp:
            return GmailHttp(session, config["gmail_url"], lambda _refresh: token)

        mail = GmailMailSource(gmail)
        sender = KilledOnSubmit(gmail, progress) if config.get("kill_on_submit") else GmailMailSender(gmail)
    else:

        def graph(_mailbox: object) -> GraphHttp:
            return GraphHttp(session, config["graph_url"], lambda _refresh: token)

        mail, sender = GraphMailSource(graph), GraphMailSender(graph)

    deps = SendDeps(
        sends=KillingSends(service, config["prefix"], int(config.get("kill_at", 0)), progress),
        mailboxes=stores.mailboxes,
        settings=stores.settings,
        records=stores.records,
        activities=stores.activities,
        mail=mail,
        sender=sender,
        queue=NoQueue(),
        clock=SystemClock(),
    )
    outcome = deliver(deps, config["org_id"], config["send_id"])
    progress.write(event="finished", status=outcome)
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
