"""Operational events (``use_cases.telemetry``): one per sync run, webhook delivery attempt and send,
with the right counts and nothing of the mail in them; captured through a logging handler on the root
logger, the way the Functions worker's handler receives them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sync_core.domain.model import EmailAddress, Mailbox, MailMessage, OrgSettings, Record
from sync_core.errors import ReauthRequired, WebhookSendFailed
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, FixedClock, throttled
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases import telemetry, webhooks
from sync_core.use_cases.schedule import process_message
from sync_core.use_cases.sync_mailbox import sync_lease_key, sync_mailbox
from sync_core.use_cases.telemetry import (
    MESSAGE_PREFIX,
    RecordBackfillEvent,
    SendEvent,
    SyncRunEvent,
    WebhookDeliveryEvent,
    emit,
    emit_send,
    event_fields,
    parse,
    render,
)
from sync_core.use_cases.webhooks import WebhookEvents

ORG = "acme"
NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
CONNECTED = NOW - timedelta(hours=1)
ADELE = "adele@acme.example"
CAROL = "carol@client.example"
STRANGER = "stranger@else.example"
HOOK = "https://crm.example/hooks/mail?token=hook-secret-123"


class Captured(logging.Handler):
    """Every record that reaches the root logger while installed (any logger, any level)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = [parse(r.getMessage()) for r in self.records if r.name == telemetry.EVENT_LOGGER]
        return [e for e in found if e is not None and (kind is None or e["event"] == kind)]

    def text(self) -> str:
        """Everything the records hold: messages, arguments and every attribute (``extra`` included)."""
        return "\n".join(f"{r.getMessage()} {r.__dict__!r}" for r in self.records)


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def message(sender: str, n: int, received: datetime, folder: str = "inbox") -> MailMessage:
    return MailMessage(
        source_id=f"src-{n}",
        internet_message_id=f"<m{n}@mail.example>",
        subject=f"Confidential offer number {n}",
        sender=EmailAddress(sender, "Sender Name"),
        to=(EmailAddress(ADELE),),
        cc=(),
        received_at=received,
        body_text=f"The salary we discussed is {n}00000",
        folder=folder,
    )


class World:
    def __init__(self) -> None:
        self.stores = InMemoryStores()
        self.mail = FakeMailSource(page_size=10)
        self.clock = FixedClock(NOW)
        self.app = InMemoryApp(self.stores, self.mail, self.clock)
        self.stores.records.upsert(ORG, [Record("c-1", "contact", "Carol", emails=(CAROL,))])
        self.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",)))
        self.mailbox = Mailbox(ORG, "mb-adele", ADELE, (ADELE,), watermark=CONNECTED)
        self.stores.mailboxes.add(self.mailbox)

    def sync(self, run_id: str = "") -> str:
        return sync_mailbox(self.app.sync_deps(), ORG, "mb-adele", run_id=run_id).status.value


def test_a_run_with_matched_and_unmatched_mail_logs_one_event_with_its_counts_and_mail_ages(
    captured: Captured,
) -> None:
    world = World()
    world.mail.deliver(message(CAROL, 1, NOW - timedelta(minutes=10)))
    world.mail.deliver(message(STRANGER, 2, NOW - timedelta(minutes=2)))

    assert world.sync() == "done"

    [event] = captured.events()
    report = world.stores.runs.recent(ORG, "mb-adele", 1)[0]
    assert event["event"] == "sync_run" and event["schema"] == 1
    assert (event["org_id"], event["mailbox_id"], event["run_id"]) == (ORG, "mb-adele", report.run_id)
    assert (event["outcome"], event["idle"], event["requested"]) == ("done", False, False)
    assert (event["mailbox_status"], event["failure_class"]) == ("active", "")
    assert (event["provider"], event["mode"]) == ("microsoft", "delegated")
    assert event["reasons"] == {"matched": 1, "unmatched": 1, "skipped_items": 0}
    assert (event["messages"], event["activities_created"], event["activities_merged"]) == (2, 1, 0)
    assert event["pages"] == report.pages and event["requests"] == report.graph_requests > 0
    assert event["mail_age_max_s"] == 600.0 and event["mail_age_avg_s"] == 360.0  # 10 and 2 minutes old
    assert (event["throttled"], event["throttle_wait_s"], event["retry_after_s"]) == (0, 0.0, None)
    assert event["duration_ms"] >= 0
    assert set(event) == set(event_fields("sync_run"))


def test_no_address_subject_or_body_of_matched_or_unmatched_mail_appears_in_any_log_record_of_a_run(
    captured: Captured,
) -> None:
    world = World()
    world.mail.deliver(message(CAROL, 1, NOW - timedelta(minutes=10)))
    world.mail.deliver(message(STRANGER, 2, NOW - timedelta(minutes=2)))
    world.mail.deliver(message(ADELE, 3, NOW - timedelta(minutes=1), folder="sentitems"))

    world.sync()
    world.mail.fail_next.append(throttled())
    world.mail.deliver(message(STRANGER, 4, NOW))
    world.sync()  # a second run that ends on a transient failure

    assert len(captured.events("sync_run")) == 2
    text = captured.text()
    for secret in (ADELE, CAROL, STRANGER, "acme.example", "client.example", "Sender Name", "Confidential",
                   "salary", "<m1@mail.example>", "src-1"):  # fmt: skip
        assert secret not in text


def test_an_idle_poll_logs_one_event_that_says_idle(captured: Captured) -> None:
    world = World()
    world.mail.deliver(message(CAROL, 1, NOW - timedelta(minutes=10)))
    world.sync()
    captured.records.clear()

    assert world.sync() == "done"

    [event] = captured.events("sync_run")
    assert event["idle"] is True and event["outcome"] == "done" and event["messages"] == 0
    assert event["mail_age_max_s"] is None and event["reasons"] == {}


def test_a_requested_run_and_a_run_that_finds_the_lease_taken_each_log_one_event(captured: Captured) -> None:
    world = World()
    world.sync(run_id="run-42")
    world.stores.leases.acquire(sync_lease_key(ORG, "mb-adele"), "someone else", NOW + timedelta(hours=1), NOW)
    world.mail.deliver(message(CAROL, 1, NOW))

    assert world.sync() == "busy"

    first, second = captured.events("sync_run")
    assert (first["run_id"], first["requested"], first["outcome"]) == ("run-42", True, "done")
    assert second["outcome"] == "busy" and second["requested"] is False


def test_a_paused_mailbox_logs_a_skipped_run_with_its_status(captured: Captured) -> None:
    world = World()
    world.stores.mailboxes.add(replace(world.mailbox, mailbox_id="mb-off", enabled=False))

    assert sync_mailbox(world.app.sync_deps(), ORG, "mb-off").status.value == "skipped"

    [event] = captured.events("sync_run")
    assert (event["outcome"], event["mailbox_status"], event["run_id"]) == ("skipped", "paused", "")


def test_a_revoked_grant_logs_a_failed_run_with_its_class_and_the_status_it_left(captured: Captured) -> None:
    world = World()
    world.mail.fail_next.append(ReauthRequired("AADSTS50173: the grant was revoked for adele@acme.example"))

    assert world.sync() == "failed"

    [event] = captured.events("sync_run")
    assert (event["outcome"], event["failure_class"], event["mailbox_status"]) == ("failed", "grant", "needs_reauth")
    assert ADELE not in captured.text()


def test_throttling_shows_as_answers_waited_seconds_and_the_retry_after_the_run_asked_for(
    captured: Captured,
) -> None:
    world = World()
    world.mail.throttle(world.mailbox, 2, 4.5)  # before the run: not the run's
    world.mail.fail_next.append(throttled())  # the provider kept throttling: retry after 30 s

    class ThrottledSource(FakeMailSource):
        def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> Any:
            self.throttle(mailbox, 3, 12.25)  # as GraphHttp counts its retried 429s
            return super().delta(mailbox, folder, link, since)

    source = ThrottledSource(page_size=10)
    source.throttling = dict(world.mail.throttling)
    source.fail_next = list(world.mail.fail_next)
    outcome = sync_mailbox(world.app.sync_deps(mail=source), ORG, "mb-adele")

    assert outcome.status.value == "more"
    [event] = captured.events("sync_run")
    assert (event["throttled"], event["throttle_wait_s"], event["retry_after_s"]) == (3, 12.25, 30)
    assert (event["outcome"], event["failure_class"], event["mailbox_status"]) == ("more", "transient", "active")


def test_a_run_that_raises_still_logs_one_event(captured: Captured) -> None:
    world = World()
    world.mail.fail_next.append(RuntimeError(f"parser choked on {CAROL}"))

    with pytest.raises(RuntimeError):
        world.sync()

    [event] = captured.events("sync_run")
    assert (event["outcome"], event["failure_class"]) == ("raised", "unexpected")
    assert CAROL not in captured.text()  # the exception's text stays in the exception


def test_each_queue_message_logs_one_run_event(captured: Captured) -> None:
    world = World()
    world.mail.deliver(message(CAROL, 1, NOW))
    body = json.dumps({"org_id": ORG, "mailbox_id": "mb-adele", "reason": "timer"})

    assert process_message(world.app.schedule_deps(), body, 1, 5).value == "done"

    assert [(e["outcome"], e["trigger"]) for e in captured.events()] == [("done", "timer")]
    odd = json.dumps({"org_id": ORG, "mailbox_id": "mb-adele", "reason": "Timer for adele@acme.example"})
    process_message(world.app.schedule_deps(), odd, 1, 5)
    world.sync()
    assert [e["trigger"] for e in captured.events()[1:]] == ["other", ""]  # odd text; not from the queue


# -- webhooks ----------------------------------------------------------------------------------------


class Hooks:
    def __init__(self) -> None:
        self.world = World()
        self.world.stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",), webhook_url=HOOK))
        self.deps = self.world.app.webhook_deps()
        self.world.app.events = WebhookEvents(self.deps)

    def run_queue(self) -> list[webhooks.WebhookDelivery]:
        return [webhooks.deliver(self.deps, m.body) for m in self.world.app.push_queue.take()]


def test_each_webhook_attempt_logs_one_event_with_its_outcome_and_never_the_url(captured: Captured) -> None:
    hooks = Hooks()
    hooks.world.mail.deliver(message(CAROL, 1, NOW))
    hooks.world.sync()
    hooks.world.app.webhook_sender.answers = [503, WebhookSendFailed("ConnectTimeout")]  # type: ignore[attr-defined]
    captured.records.clear()

    results = hooks.run_queue() + hooks.run_queue() + hooks.run_queue()

    assert [r.status for r in results] == ["retrying", "retrying", "delivered"]
    events = captured.events("webhook_delivery")
    assert [(e["attempt"], e["outcome"], e["failure"], e["response_status"], e["final"]) for e in events] == [
        (1, "retrying", "http_status", 503, False),
        (2, "retrying", "no_answer", 0, False),
        (3, "delivered", "", 200, True),
    ]
    assert [e["next_retry_s"] for e in events] == [30.0, 120.0, None]
    assert {e["delivery_id"] for e in events} == {results[0].delivery_id}
    assert all(e["event_type"] == "activity.created" and set(e) == set(event_fields("webhook_delivery"))
               for e in events)  # fmt: skip
    assert "crm.example" not in captured.text() and "hook-secret-123" not in captured.text()


def test_a_skipped_delivery_logs_why_in_one_word(captured: Captured) -> None:
    hooks = Hooks()
    hooks.world.mail.deliver(message(CAROL, 1, NOW))
    hooks.world.sync()
    hooks.world.stores.settings.put(ORG, OrgSettings())

    [result] = hooks.run_queue()

    [event] = captured.events("webhook_delivery")
    assert result.status == "skipped" and (event["outcome"], event["failure"], event["final"]) == (
        "skipped", "no_webhook", True
    )


# -- sends, and the event format ---------------------------------------------------------------------


def test_a_send_event_carries_counts_and_states_only(captured: Captured) -> None:
    sent = emit_send(ORG, "mb-adele", "snd-1", outcome="sent", state="confirmed", attempt=2, recipients=3,
                     attachments=1, requests=5, throttled=1, throttle_wait_s=2.0)  # fmt: skip

    [event] = captured.events("send")
    assert event == telemetry.to_payload(sent)
    assert set(event) == set(event_fields("send"))
    assert (event["outcome"], event["state"], event["recipients"], event["attachments"]) == ("sent", "confirmed", 3, 1)
    assert event["retry_after_s"] is None and event["failure_class"] == ""


def test_an_event_is_one_line_with_a_fixed_prefix_and_round_trips() -> None:
    event = SyncRunEvent(ORG, "mb-adele", run_id="r1", outcome="done", reasons={"matched": 2})

    line = render(event)

    assert line.startswith(MESSAGE_PREFIX) and "\n" not in line
    assert parse(line) == telemetry.to_payload(event)
    assert parse("sync of mailbox mb-adele raised") is None


def test_every_event_kind_lists_its_fields_and_no_two_kinds_share_a_name() -> None:
    kinds = [SyncRunEvent.kind, WebhookDeliveryEvent.kind, SendEvent.kind, RecordBackfillEvent.kind]

    assert kinds == ["sync_run", "webhook_delivery", "send", "record_backfill"]
    for kind in kinds:
        assert event_fields(kind)[:2] == ("event", "schema")
    with pytest.raises(KeyError):
        event_fields("nope")


def test_an_event_that_cannot_be_logged_never_fails_its_caller(captured: Captured) -> None:
    broken = SyncRunEvent(ORG, "mb-adele", reasons={"matched": object()})  # type: ignore[dict-item]

    emit(broken)

    assert captured.events() == []
    assert any("could not log a sync_run event" in r.getMessage() for r in captured.records)


def test_events_are_created_even_when_the_root_logger_only_passes_warnings() -> None:
    handler = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        emit(SyncRunEvent(ORG, "mb-adele", outcome="done"))
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    assert [e["outcome"] for e in handler.events()] == ["done"]


def test_host_json_keeps_every_trace_unsampled_and_passes_information_logs_of_function_code() -> None:
    """The events are traces at INFO in the category ``Function.<name>.User`` (docs/operations.md): host
    sampling must exclude ``Trace`` and the ``Function`` category must pass ``Information``."""
    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text())
    logging_ = host["logging"]

    sampling = logging_["applicationInsights"]["samplingSettings"]
    assert "Trace" in sampling["excludedTypes"].split(";") or sampling["isEnabled"] is False
    levels = logging_["logLevel"]
    assert levels.get("Function", levels.get("default")) in ("Trace", "Debug", "Information")
    assert not any(k.startswith("Function.") and v not in ("Trace", "Debug", "Information") for k, v in levels.items())
