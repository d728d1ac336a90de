"""A worker process killed (SIGKILL) after each step of the send state machine, then recovery: exactly one
message in the sender's Sent Items, in the recipient mailbox's Inbox and in the outbox for the outside
recipient; the send ``sent``; one activity. Also: the send answered by a dropped connection after the
emulator sent it (Graph's "202 lost"), and a submission quota refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sync_core.adapters.graph.mail import GraphMailSource
from sync_core.adapters.graph.send import GraphMailSender
from sync_core.adapters.table_sends import TableSendStore
from sync_core.domain.model import EmailAddress
from sync_core.domain.sending import SendRequest, SendStatus
from sync_core.ports import Clock
from sync_core.testing.scheduling import InMemoryWorkQueue
from sync_core.use_cases.send import SendDeps, deliver, request_send
from tests.integration.sync_env import ADELE, DAN, ORG
from tests.reliability.rel_env import OffsetClock, RelEnv

ROOT = Path(__file__).resolve().parents[2]
SENDING_ROLES = ["Mail.Read", "Mail.ReadWrite", "Mail.Send", "User.Read.All"]
AFTER_THE_LEASE = OffsetClock(timedelta(minutes=6))


def sending_env(rel: RelEnv) -> RelEnv:
    rel.client.set_app_roles(rel.tenant.app.client_id, SENDING_ROLES)
    rel.token_source(refresh=True)  # a new admin consent grants the sending roles
    rel.stores.settings.put(ORG, replace(rel.stores.settings.get(ORG), sending_enabled=True))
    return rel


def send_deps(rel: RelEnv, clock: Clock | None = None) -> SendDeps:
    return SendDeps(
        sends=TableSendStore(rel.service, rel.prefix),
        mailboxes=rel.stores.mailboxes,
        settings=rel.stores.settings,
        records=rel.stores.records,
        activities=rel.stores.activities,
        mail=GraphMailSource(rel.graph_for),
        sender=GraphMailSender(rel.graph_for),
        queue=InMemoryWorkQueue(),
        clock=clock or rel.clock,
    )


def new_send(rel: RelEnv, subject: str) -> str:
    megan = rel.tenant.users["megan"].mail
    request = SendRequest(
        to=(EmailAddress(megan, "Megan"), EmailAddress(DAN, "Dan")),
        subject=subject,
        content_type="html",
        content=f"<p>{subject}</p>",
    )
    created = request_send(send_deps(rel), ORG, ADELE, idempotency_key=subject, request=request, contents=())
    return created.send.send_id


def run_killed_worker(rel: RelEnv, connection_string: str, tmp_path: Path, send_id: str, kill_at: int) -> list[Any]:
    progress = tmp_path / "progress.jsonl"
    config = {
        "connection_string": connection_string,
        "prefix": rel.prefix,
        "graph_url": rel.tenant.graph_url,
        "token": rel.token_source(),
        "ca_bundle": rel.ca_bundle,
        "org_id": ORG,
        "send_id": send_id,
        "kill_at": kill_at,
        "progress": str(progress),
    }
    config_file = tmp_path / "worker.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "REQUESTS_CA_BUNDLE": rel.ca_bundle}
    worker = subprocess.run(
        [sys.executable, "-m", "tests.reliability.send_crash_worker", str(config_file)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert worker.returncode == -signal.SIGKILL, (worker.returncode, worker.stderr[-3000:])
    return [json.loads(line) for line in progress.read_text(encoding="utf-8").splitlines()]


def assert_sent_once(rel: RelEnv, send_id: str, subject: str) -> None:
    stored = TableSendStore(rel.service, rel.prefix).get(ORG, send_id)
    assert stored is not None
    send = stored.value
    assert send.status is SendStatus.SENT, send.error
    adele, megan = rel.tenant.users["adele"].upn, rel.tenant.users["megan"].upn
    assert [m["internetMessageId"] for m in rel.client.sent_items(adele) if m["subject"] == subject] == [
        send.internet_message_id
    ]
    assert [m["internetMessageId"] for m in rel.client.folder_messages(megan, "inbox") if m["subject"] == subject] == [
        send.internet_message_id
    ]
    assert len(rel.client.outbox(send.internet_message_id)) == 1  # dan, outside the emulator
    assert [d for d in rel.client.folder_messages(adele, "drafts") if d["subject"] == subject] == []
    activity = rel.stores.activities.get(ORG, send.activity_id)
    assert activity is not None and activity.sent_from_crm and activity.send_id == send_id
    assert rel.timeline_ids("c-dan") == [send.internet_message_id]  # one activity, under the sent Message-ID


@pytest.mark.parametrize(
    ("kill_at", "step"),
    [
        (1, "preparing"),  # pacing slot taken, nothing at the provider yet
        (2, "prepared"),  # the draft exists, its handle not checkpointed
        (3, "submitting"),  # the draft checkpointed, not submitted
        (4, "submitted"),  # submitted, not checkpointed
        (5, "confirmed"),  # the activity saved, the send not yet marked sent
        (6, "confirmed"),  # marked sent, not yet marked announced
    ],
)
def test_a_worker_killed_after_any_step_recovers_into_exactly_one_message_and_one_activity(
    rel: RelEnv, storage_connection_string: str, tmp_path: Path, kill_at: int, step: str
) -> None:
    sending_env(rel)
    subject = f"Crash {kill_at} {uuid.uuid4().hex[:6]}"
    send_id = new_send(rel, subject)
    events = run_killed_worker(rel, storage_connection_string, tmp_path, send_id, kill_at)
    assert events[-1]["event"] == "killed" and events[-1]["step"] == step
    # Within the dead worker's lease another worker leaves the send alone...
    if kill_at > 1:
        assert deliver(send_deps(rel), ORG, send_id) in ("busy", "sent")
    # ...and once it ran out, the next one resumes from the provider's state of the draft.
    assert deliver(send_deps(rel, AFTER_THE_LEASE), ORG, send_id) == "sent"
    assert deliver(send_deps(rel, AFTER_THE_LEASE), ORG, send_id) == "sent"  # a redelivery changes nothing
    assert_sent_once(rel, send_id, subject)


def test_a_send_whose_answer_was_lost_after_graph_sent_it_is_not_sent_again(rel: RelEnv) -> None:
    sending_env(rel)
    subject = f"Lost answer {uuid.uuid4().hex[:6]}"
    send_id = new_send(rel, subject)
    rel.client.fail_sends(1, lost=True, mailbox=rel.tenant.users["adele"].upn)
    outcome = deliver(send_deps(rel), ORG, send_id)
    if outcome != "sent":
        outcome = deliver(send_deps(rel, AFTER_THE_LEASE), ORG, send_id)
    assert outcome == "sent"
    assert_sent_once(rel, send_id, subject)


def test_a_refused_submission_quota_keeps_the_send_waiting_and_it_goes_later_once(rel: RelEnv) -> None:
    sending_env(rel)
    subject = f"Quota {uuid.uuid4().hex[:6]}"
    send_id = new_send(rel, subject)
    rel.client.fail_sends(1, status=429, mailbox=rel.tenant.users["adele"].upn, retry_after=1)
    deps = send_deps(rel)
    first = deliver(deps, ORG, send_id)
    assert first in ("waiting", "sent")
    if first == "waiting":
        assert deliver(send_deps(rel, AFTER_THE_LEASE), ORG, send_id) == "sent"
    assert_sent_once(rel, send_id, subject)
