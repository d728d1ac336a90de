"""A Gmail send's worker process killed (SIGKILL) at every point of the send state machine, above all
between preparing the message (the MIME lives only in the worker's memory: nothing is created at Google
before the send) and handing it to ``messages.send``; then another process resumes it. Exactly one
message leaves the Google emulator, carrying the Message-ID derived from the send id and the Date of
the request (the resumed worker built the very message the dead one prepared); the send is ``sent``
with one activity. The sends, mailboxes and activities are on Azurite, as in production."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from emulator.google.server import GoogleEmulatorServer
from sync_core.adapters.google.mail import GmailMailSource
from sync_core.adapters.google.send import GmailMailSender
from sync_core.adapters.table_sends import TableSendStore
from sync_core.adapters.tables import TableStores
from sync_core.domain.model import EmailAddress, Mailbox, OrgSettings, Record
from sync_core.domain.sending import SendRequest, SendStatus
from sync_core.ports import Clock
from sync_core.testing.scheduling import InMemoryWorkQueue
from sync_core.use_cases.send import SendDeps, deliver, request_send
from tests.integration.test_gmail_send import Gmail
from tests.reliability.conftest import drop_tables
from tests.reliability.rel_env import OffsetClock

ROOT = Path(__file__).resolve().parents[2]
ORG, MBX = "org-gmail-crash", "mbx-gmail-crash"
CUSTOMER = "pat@customer.example"
AFTER_THE_LEASE = OffsetClock(timedelta(minutes=6))


class Now:
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class GmailSendEnv:
    gmail: Gmail
    google: GoogleEmulatorServer
    service: TableServiceClient
    connection_string: str
    prefix: str
    stores: TableStores

    def deps(self, clock: Clock | None = None) -> SendDeps:
        """A fresh worker: a new Gmail sender (nothing of another worker's memory)."""
        return SendDeps(
            sends=TableSendStore(self.service, self.prefix), mailboxes=self.stores.mailboxes,
            settings=self.stores.settings, records=self.stores.records, activities=self.stores.activities,
            mail=GmailMailSource(self.gmail.http), sender=GmailMailSender(self.gmail.http),
            queue=InMemoryWorkQueue(), clock=clock or Now(),
        )  # fmt: skip

    def worker(self, tmp_path: Path, send_id: str, **kill: Any) -> list[dict[str, Any]]:
        progress = tmp_path / "progress.jsonl"
        ca_bundle = str(self.google.ca_bundle_path)  # requests prefers REQUESTS_CA_BUNDLE to a session's own
        config = {
            "provider": "google", "connection_string": self.connection_string, "prefix": self.prefix,
            "gmail_url": self.google.url, "token": self.gmail.token, "ca_bundle": ca_bundle,
            "org_id": ORG, "send_id": send_id, "progress": str(progress), **kill,
        }  # fmt: skip
        config_file = tmp_path / "worker.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "REQUESTS_CA_BUNDLE": ca_bundle}
        worker = subprocess.run(
            [sys.executable, "-m", "tests.reliability.send_crash_worker", str(config_file)],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        events = [json.loads(line) for line in progress.read_text(encoding="utf-8").splitlines()]
        assert worker.returncode == -signal.SIGKILL, (worker.returncode, worker.stderr[-3000:], events)
        return events


@pytest.fixture
def env(
    google_emulator: GoogleEmulatorServer, storage_connection_string: str, table_prefix: str
) -> Iterator[GmailSendEnv]:
    gmail = Gmail(google_emulator)
    service = TableServiceClient.from_connection_string(storage_connection_string)
    stores = TableStores.create(service, table_prefix)
    stores.settings.put(ORG, OrgSettings(sending_enabled=True))
    since = datetime.now(UTC) - timedelta(hours=1)
    stores.mailboxes.add(Mailbox(ORG, MBX, gmail.address, (gmail.address,), since, provider="google"))
    stores.records.upsert(ORG, [Record("c-pat", "contact", "Pat", (CUSTOMER,))])
    try:
        yield GmailSendEnv(gmail, google_emulator, service, storage_connection_string, table_prefix, stores)
    finally:
        gmail.session.close()
        drop_tables(service, table_prefix)


@pytest.mark.parametrize(
    ("kill", "step"),
    [
        ({"kill_at": 1}, "preparing"),  # the pacing slot taken, nothing built yet
        ({"kill_at": 2}, "prepared"),  # the message built, its handle not checkpointed
        ({"kill_at": 3}, "submitting"),  # PREPARED written: the message only in the dead worker's memory
        ({"kill_on_submit": True}, "submit"),  # SUBMITTING written, about to call messages.send
        ({"kill_at": 4}, "submitted"),  # Gmail sent it, SUBMITTED not written
        ({"kill_at": 5}, "confirmed"),  # the activity saved, the send not yet marked sent
    ],
    ids=["before_preparing", "after_prepare", "before_submitting", "before_send", "after_send", "after_activity"],
)
def test_a_gmail_send_whose_worker_was_killed_at_any_point_delivers_exactly_one_message(
    env: GmailSendEnv, tmp_path: Path, kill: dict[str, Any], step: str
) -> None:
    subject = f"Gmail crash {step} {uuid.uuid4().hex[:6]}"
    request = SendRequest(
        to=(EmailAddress(CUSTOMER, "Pat"),), subject=subject, content_type="html", content=f"<p>{subject}</p>"
    )
    send_id = request_send(env.deps(), ORG, MBX, idempotency_key=subject, request=request, contents=()).send.send_id

    events = env.worker(tmp_path, send_id, **kill)
    assert events[-1]["event"] == "killed" and events[-1]["step"] == step

    assert deliver(env.deps(AFTER_THE_LEASE), ORG, send_id) == "sent"
    assert deliver(env.deps(AFTER_THE_LEASE), ORG, send_id) == "sent"  # a redelivery changes nothing
    stored = TableSendStore(env.service, env.prefix).get(ORG, send_id)
    assert stored is not None
    send = stored.value
    assert send.status is SendStatus.SENT, send.error
    [sent] = [m for m in env.gmail.outbox() if m["Subject"] == subject]
    domain = env.gmail.address.split("@")[1]
    assert sent["Message-ID"] == send.internet_message_id == f"<crm.{send_id}@{domain}>"
    assert sent["Date"].datetime == send.created_at.replace(microsecond=0)
    activity = env.stores.activities.get(ORG, send.activity_id)
    assert activity is not None and activity.sent_from_crm and activity.send_id == send_id
    assert [a.internet_message_id for a in env.stores.activities.timeline(ORG, "c-pat", None, 10).items] == [
        send.internet_message_id
    ]
