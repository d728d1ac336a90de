"""The operations workbook (infra/workbook.json, deployed by infra/modules/monitoring.bicep): every query
reads only fields the events have (derived from ``use_cases.telemetry``, so an event and a query cannot
drift apart unnoticed), and each chart's query, run by the KQL-subset interpreter in tests/infra/kql.py on
events the use cases really logged (sync runs, webhook attempts, sends), answers what the chart promises.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sync_core.domain.model import EmailAddress, Mailbox, MailMessage, OrgSettings, Reason, Record
from sync_core.errors import ReauthRequired, WebhookUrlRefused
from sync_core.testing.app import InMemoryApp
from sync_core.testing.mail import FakeMailSource, FixedClock, throttled
from sync_core.testing.push import FakeWebhookSender
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases import telemetry, webhooks
from sync_core.use_cases.sync_mailbox import sync_mailbox
from sync_core.use_cases.telemetry import emit_send, event_fields
from sync_core.use_cases.webhooks import WebhookEvents
from tests.infra.bicep_checks import WORKBOOK_PLACEHOLDER, Template, workbook_file
from tests.infra.kql import KqlError, member_paths, run

ROOT = Path(__file__).resolve().parents[2]
WORKBOOK = ROOT / "infra" / "workbook.json"
GRAIN = {"TimeRange:grain": "1h"}
H0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # the hours the chart bins fall in
H1 = H0 + timedelta(hours=1)
T0 = H0 + timedelta(minutes=40)
T1 = T0 + timedelta(minutes=40)  # less than IDLE_REFRESH later: mailbox a's second hour is an idle poll
ORG = "acme"
CAROL = "carol@client.example"
FIRST_LOOK = {
    "runs-by-outcome", "mailboxes-by-status", "throttling", "run-duration", "mail-age", "send-outcomes",
    "webhook-failures",
}  # fmt: skip


def queries() -> dict[str, str]:
    document = json.loads(WORKBOOK.read_text())
    return {item["name"]: item["content"]["query"] for item in document["items"] if item["type"] == 3}


QUERY_KIND = re.compile(r'tostring\(e\.event\) == "(\w+)"')


def field_problems(query: str) -> list[str]:
    """What in the query is not a field of the event kind it selects (empty when it reads only those)."""
    kinds = QUERY_KIND.findall(query)
    if len(kinds) != 1:
        return [f"selects {len(kinds)} event kinds; expected one"]
    try:
        fields = set(event_fields(kinds[0]))
    except KeyError:
        return [f"no event kind {kinds[0]!r}"]
    problems = []
    for path in sorted(member_paths(query, GRAIN)):
        if path[0] != "e":
            problems.append(f"member access on {path[0]!r}, not on the parsed event e")
        elif path[1] not in fields:
            problems.append(f"{kinds[0]} has no field {path[1]!r}")
        elif path[1] == "reasons" and (len(path) != 3 or path[2] not in {r.value for r in Reason}):
            problems.append(f"reasons.{'.'.join(path[2:])} is not a decision reason")
        elif path[1] != "reasons" and len(path) > 2:
            problems.append(f"{'.'.join(path[1:])}: {path[1]} has no members")
    return problems


# -- the workbook's structure ------------------------------------------------------------------------


def test_the_workbook_has_the_charts_an_operator_looks_at_first_each_on_the_time_range() -> None:
    document = json.loads(WORKBOOK.read_text())
    items = {item["name"]: item for item in document["items"]}

    assert document["version"] == "Notebook/1.0" and document["fallbackResourceIds"] == [WORKBOOK_PLACEHOLDER]
    assert set(queries()) >= FIRST_LOOK
    [parameter] = items["parameters"]["content"]["parameters"]
    assert parameter["name"] == "TimeRange" and parameter["type"] == 4  # a time range picker
    for name in queries():
        content = items[name]["content"]
        assert content["version"] == "KqlItem/1.0" and content["queryType"] == 0  # logs
        assert content["resourceType"] == "microsoft.insights/components"
        assert content["timeContextFromParameter"] == "TimeRange" and content["title"]
        assert content["visualization"] in ("timechart", "piechart", "table", "barchart")


def test_the_template_deploys_exactly_this_file_as_the_workbook() -> None:
    workbook, path = workbook_file(Template(ROOT / "infra"))

    assert workbook is not None and path is not None and path.resolve() == WORKBOOK.resolve()


@pytest.mark.parametrize("name", sorted(queries()))
def test_every_query_reads_only_fields_its_event_has(name: str) -> None:
    query = queries()[name]

    assert field_problems(query) == []
    assert member_paths(query, GRAIN)  # it does read the event


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("e.throttled", "e.throttles", "sync_run has no field 'throttles'"),
        ("e.reasons.matched", "e.reasons.matches", "reasons.matches is not a decision reason"),
        ('"sync_run"', '"sync"', "no event kind 'sync'"),
    ],
)
def test_a_query_that_drifts_from_the_event_fails_the_field_check(old: str, new: str, problem: str) -> None:
    [query] = [q for q in queries().values() if old in q][:1]

    assert problem in field_problems(query.replace(old, new))


def test_a_field_removed_from_the_event_would_fail_the_queries_that_read_it() -> None:
    readers = [q for q in queries().values() if "e.mail_age_max_s" in q]
    fields = set(event_fields("sync_run")) - {"mail_age_max_s"}

    assert readers
    for query in readers:
        assert {p[1] for p in member_paths(query, GRAIN)} - fields == {"mail_age_max_s"}


# -- the queries on sample events --------------------------------------------------------------------


class Traces(logging.Handler):
    """Turns the event lines logged while installed into ``traces`` rows (timestamp, message), stamped
    with ``at``: the columns Application Insights gives a trace, nothing more."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at = T0
        self.rows: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == telemetry.EVENT_LOGGER:
            self.rows.append({"timestamp": self.at, "message": record.getMessage()})


def message(n: int, sender: str, received: datetime) -> MailMessage:
    return MailMessage(
        source_id=f"src-{n}",
        internet_message_id=f"<m{n}@mail.example>",
        subject=f"subject {n}",
        sender=EmailAddress(sender),
        to=(EmailAddress("adele@acme.example"),),
        cc=(),
        received_at=received,
        body_text="body",
        folder="inbox",
    )


class ThrottledSource(FakeMailSource):
    """Counts 3 throttled answers and 12.25 s of waiting before a request it fails (``fail_next``), as
    GraphHttp does before it gives up."""

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> Any:
        if self.fail_next:
            self.throttle(mailbox, 3, 12.25)
        return super().delta(mailbox, folder, link, since)


def with_durations(rows: list[dict[str, Any]], durations: Mapping[int, int]) -> None:
    """Fix ``duration_ms`` of the rows at these indexes (measured with a real clock, so not stable)."""
    for index, duration in durations.items():
        event = telemetry.parse(rows[index]["message"])
        assert event is not None
        event["duration_ms"] = duration
        rows[index]["message"] = telemetry.MESSAGE_PREFIX + json.dumps(event)


@pytest.fixture(scope="module")
def traces() -> Iterator[list[dict[str, Any]]]:
    """Hour T0: mailbox a syncs a matched and an unmatched mail, then polls idle; b's grant is revoked;
    c is throttled (Retry-After 30 s). Hour T1: c syncs a new mail, a polls idle; three webhook attempts
    (503 then refused for one delivery, one delivered) and three sends (two sent, one failed)."""
    stores = InMemoryStores()
    clock = FixedClock(T0)
    sender = FakeWebhookSender(answers=[503, 200, WebhookUrlRefused("private address")])
    app = InMemoryApp(stores, clock=clock, webhook_sender=sender)
    app.events = WebhookEvents(app.webhook_deps())
    stores.records.upsert(ORG, [Record("c-1", "contact", "Carol", emails=(CAROL,))])
    stores.settings.put(ORG, OrgSettings(internal_domains=("acme.example",), webhook_url="https://crm.example/h"))
    sources = {"a": FakeMailSource(page_size=10), "b": FakeMailSource(), "c": ThrottledSource(page_size=10)}
    for name in sources:
        stores.mailboxes.add(Mailbox(ORG, f"mb-{name}", f"{name}@acme.example", (f"{name}@acme.example",),
                                     watermark=T0 - timedelta(days=1)))  # fmt: skip

    def sync(name: str) -> str:
        return sync_mailbox(app.sync_deps(mail=sources[name]), ORG, f"mb-{name}").status.value

    def deliver_queued() -> list[str]:
        return [webhooks.deliver(app.webhook_deps(), m.body).status for m in app.push_queue.take()]

    handler = Traces()
    logging.getLogger().addHandler(handler)
    try:
        sources["a"].deliver(message(1, CAROL, T0 - timedelta(minutes=10)))
        sources["a"].deliver(message(2, "stranger@else.example", T0 - timedelta(minutes=2)))
        sources["b"].fail_next.append(ReauthRequired("the grant was revoked"))
        sources["c"].fail_next.append(throttled())
        assert [sync("a"), sync("a"), sync("b"), sync("c")] == ["done", "done", "failed", "more"]
        handler.at = clock.moment = T1
        sources["c"].deliver(message(3, CAROL, T1 - timedelta(seconds=30)))
        assert [sync("c"), sync("a")] == ["done", "done"]
        assert deliver_queued() == ["retrying", "delivered"] and deliver_queued() == ["failed"]
        for outcome in ("sent", "sent", "failed"):
            emit_send(ORG, "mb-a", f"snd-{outcome}", outcome=outcome, state=outcome, attempt=1, recipients=2)
    finally:
        logging.getLogger().removeHandler(handler)
    rows = handler.rows
    assert len(rows) == 6 + 3 + 3
    with_durations(rows, {0: 100, 1: 5, 2: 300, 3: 200, 4: 50, 5: 4})
    yield rows


def chart(name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return run(queries()[name], {"traces": rows}, GRAIN)


def by_time(result: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {(row["timestamp"], *(row[k] for k in keys)): row for row in result}


def test_runs_by_outcome_counts_each_run_once_per_hour_idle_polls_apart(traces: list[dict[str, Any]]) -> None:
    result = chart("runs-by-outcome", traces)

    assert {(r["timestamp"], r["outcome"]): r["runs"] for r in result} == {
        (H0, "done"): 1, (H0, "idle"): 1, (H0, "failed"): 1, (H0, "more"): 1,
        (H1, "done"): 1, (H1, "idle"): 1,
    }  # fmt: skip


def test_mailboxes_by_status_counts_each_mailbox_once_at_its_latest_run(traces: list[dict[str, Any]]) -> None:
    assert chart("mailboxes-by-status", traces) == [
        {"status": "active", "mailboxes": 2},
        {"status": "needs_reauth", "mailboxes": 1},
    ]


def test_mailboxes_needing_attention_lists_the_revoked_one_with_its_failure_class(
    traces: list[dict[str, Any]],
) -> None:
    assert chart("mailboxes-needing-attention", traces) == [
        {"org_id": ORG, "mailbox_id": "mb-b", "status": "needs_reauth", "failure_class": "grant", "last_run": T0}
    ]


def test_throttling_sums_answers_waits_and_retry_after_per_hour(traces: list[dict[str, Any]]) -> None:
    rows = by_time(chart("throttling", traces))

    assert (rows[(H0,)]["throttled"], rows[(H0,)]["waited_s"], rows[(H0,)]["retry_after_s"]) == (3, 12.25, 30)
    assert (rows[(H1,)]["throttled"], rows[(H1,)]["waited_s"]) == (0, 0.0)


def test_the_most_throttled_mailboxes_table_names_the_throttled_mailbox_only(traces: list[dict[str, Any]]) -> None:
    assert chart("throttled-mailboxes", traces) == [
        {"org_id": ORG, "mailbox_id": "mb-c", "throttled": 3, "waited_s": 12.25, "runs_more": 1}
    ]


def test_run_duration_takes_percentiles_over_runs_that_were_not_idle(traces: list[dict[str, Any]]) -> None:
    rows = by_time(chart("run-duration", traces))

    assert (rows[(H0,)]["p50"], rows[(H0,)]["p95"], rows[(H0,)]["longest"]) == (200, 300, 300)  # 100, 300, 200
    assert (rows[(H1,)]["p50"], rows[(H1,)]["longest"]) == (50, 50)  # the idle polls (5, 4 ms) are left out


def test_mail_age_is_taken_from_runs_that_saw_mail(traces: list[dict[str, Any]]) -> None:
    rows = by_time(chart("mail-age", traces))

    assert rows[(H0,)] == {"timestamp": H0, "oldest_p95": 600.0, "mean": 360.0, "messages": 2}
    assert rows[(H1,)] == {"timestamp": H1, "oldest_p95": 30.0, "mean": 30.0, "messages": 1}


def test_messages_by_reason_sums_the_runs_counts(traces: list[dict[str, Any]]) -> None:
    rows = by_time(chart("messages-by-reason", traces))

    assert (rows[(H0,)]["matched"], rows[(H0,)]["unmatched"], rows[(H0,)]["activities_created"]) == (1, 1, 1)
    assert (rows[(H1,)]["matched"], rows[(H1,)]["activities_created"]) == (1, 1)


def test_send_outcomes_count_sends_by_outcome(traces: list[dict[str, Any]]) -> None:
    result = chart("send-outcomes", traces)

    assert {(r["timestamp"], r["outcome"]): r["sends"] for r in result} == {(H1, "sent"): 2, (H1, "failed"): 1}


def test_webhook_failures_count_attempts_that_did_not_deliver_by_cause(traces: list[dict[str, Any]]) -> None:
    result = chart("webhook-failures", traces)

    assert {(r["timestamp"], r["cause"]): r["attempts"] for r in result} == {
        (H1, "http_status"): 1,
        (H1, "url_refused"): 1,
    }


def test_webhook_deliveries_by_org_separate_delivered_retried_and_given_up(traces: list[dict[str, Any]]) -> None:
    assert chart("webhook-orgs", traces) == [
        {"org_id": ORG, "delivered": 1, "retried": 1, "failed": 1, "deliveries": 2}
    ]


def test_no_query_finds_anything_in_traces_that_are_not_events(traces: list[dict[str, Any]]) -> None:
    noise = [{"timestamp": T0, "message": "sync of mailbox mb-a (org acme) raised KeyError on delivery 1 of 5"}]

    for name in queries():
        assert run(queries()[name], {"traces": noise}, GRAIN) == [], name


# -- the interpreter's strictness --------------------------------------------------------------------


def test_the_interpreter_refuses_unknown_columns_unconverted_dynamics_and_operators_outside_the_subset() -> None:
    rows = [{"timestamp": T0, "message": 'crm_sync_event {"event":"sync_run","throttled":2}'}]
    base = 'traces | extend e = parse_json(substring(message, 15)) '

    assert run(base + "| summarize n = sum(toint(e.throttled))", {"traces": rows}) == [{"n": 2}]
    with pytest.raises(KqlError, match="unknown column"):
        run(base + "| where outcome == 'done'", {"traces": rows})
    with pytest.raises(KqlError, match="dynamic"):
        run(base + "| summarize n = sum(e.throttled)", {"traces": rows})
    with pytest.raises(KqlError, match="outside the subset"):
        run(base + "| mv-expand e", {"traces": rows})
    with pytest.raises(KqlError, match="parameter"):
        run(base + "| summarize n = count() by bin(timestamp, {TimeRange:grain})", {"traces": rows})
