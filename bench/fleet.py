"""Benchmark 3, fleet: ``MAILBOXES`` connected app-mode mailboxes of one org, 5 new messages each, synced
through the production path of one Functions worker process: the minute timer (``enqueue_due_mailboxes``)
claims every due mailbox and enqueues it, the queue-triggered ``sync_mailbox_from_queue`` syncs it (the
local host runs up to batchSize + newBatchThreshold = 24 messages at once, as the Functions host does).

The worker adds the mailboxes and leaves them caught up (each folder's cursor holds a delta link, as after
earlier polls; set up directly, with the emulator's latency off, so the set-up stays short), then delivers
the new mail through the emulator's control API and fires the timer. One worker process cannot sync 1,000
mailboxes within a bench run on the reference machine, so the queue is watched for a fixed window: the
timer enqueues every mailbox (a backlog, as after a scale event), the queue function works it off, and
throughput and per-run costs are taken over the window once the timer has returned.

Each mailbox's 5 messages: from a CRM contact (matched), a newsletter (bulk), from an unknown company
(unmatched), to a CRM contact (matched, in Sent Items), to a colleague (internal); every fifth mailbox's
first message carries an attachment.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import threading
import time
from typing import Any

from bench.context import Context
from bench.hostfleet import TIMER, HostFleet
from bench.measure import Clock, cpu_seconds, current_rss_mb, peak_rss_mb
from bench.stack import Stack, deliver_all, tenant_with_users
from bench.sync_setup import records_from_json, records_to_json

MAILBOXES = 1_000
QUICK_MAILBOXES = 250
WINDOW_SECONDS = 120  # the queue is watched this long (all 1,000 take longer on the reference machine)
QUICK_WINDOW_SECONDS = 60
CONTACTS = 200
EXPECTED_REASONS = {"matched": 2, "bulk": 1, "unmatched": 1, "internal": 1}


def run(ctx: Context) -> dict[str, Any]:
    from sync_core.domain.model import Record  # noqa: PLC0415

    count = QUICK_MAILBOXES if ctx.quick else MAILBOXES
    client = ctx.stack.client()
    tenant, users = tenant_with_users(client, "fleet", count)
    client.session.close()
    contacts = [Record(f"c-{n}", "contact", f"Contact {n}", emails=(_contact(n),)) for n in range(CONTACTS)]
    ctx.set_latency(ctx.latency_ms)
    params = {
        "tenant_id": tenant.id,
        "domain": tenant.domain,
        "app": {"client_id": tenant.app.client_id, "secret": tenant.app.client_secret},
        "mailboxes": users,
        "records": records_to_json(contacts),
        "latency_ms": ctx.latency_ms,
        "window_seconds": ctx.runs(WINDOW_SECONDS, QUICK_WINDOW_SECONDS),
        # BENCH_FLEET_PROFILE=1: each sync run under cProfile (its thread's CPU time) in its thread,
        # merged (the rates then include the profiler's overhead: for where the CPU goes, not for rates).
        "profile": os.environ.get("BENCH_FLEET_PROFILE") == "1",
    }
    result = ctx.worker("fleet", params, timeout=3_600)
    per_run = result["steady_per_run"]
    per_message = sum(EXPECTED_REASONS.values())
    return {
        "latency_ms": ctx.latency_ms,
        "mailboxes": count,
        "messages_per_mailbox": per_message,
        **result,
        "table_transactions_per_message": per_run.get("table", 0) / per_message,
        "table_transactions_per_mailbox": per_run.get("table", 0),
        "graph_requests_per_mailbox": per_run.get("graph", 0),
        "queue_operations_per_mailbox": per_run.get("queue", 0),
    }


def _contact(n: int) -> str:
    return f"contact{n}@client{n % 50}.example"


def fleet_messages(users: list[list[str]]) -> list[tuple[str, dict[str, Any]]]:
    """(user id, delivery fields) of every mailbox's 5 new messages."""
    out = []
    body = "Hello, following up on our call. " * 40
    for n, (_mailbox_id, address, user_id) in enumerate(users):
        colleague = users[(n + 1) % len(users)][1]
        first: dict[str, Any] = {"from": _contact(n % CONTACTS), "to": [address], "subject": f"Offer {n}", "body": body}
        if n % 5 == 0:
            first["attachments"] = [{"name": "offer.pdf", "content_type": "application/pdf", "size": 120_000}]
        news_headers = [{"name": "List-Unsubscribe", "value": "<mailto:u@list.example>"}]
        out += [
            (user_id, first),
            (user_id, {"from": "news@list.example", "to": [address], "subject": "Weekly", "body": body * 3,
                       "headers": news_headers}),
            (user_id, {"from": f"someone{n}@biz{n % 90}.example", "to": [address], "subject": "Intro", "body": body}),
            (user_id, {"from": address, "to": [_contact((n + 7) % CONTACTS)], "subject": f"RE: Offer {n}",
                       "body": body, "folder": "sentitems"}),
            (user_id, {"from": address, "to": [colleague], "subject": "Lunch?", "body": "12:30?",
                       "folder": "sentitems"}),
        ]  # fmt: skip
    return out


def fleet_worker(params: dict[str, Any]) -> dict[str, Any]:
    from sync_core import bootstrap  # noqa: PLC0415
    from sync_core.use_cases import schedule  # noqa: PLC0415

    stack = Stack.from_env()
    fleet = HostFleet(stack, params)
    control = stack.client()
    window = float(params["window_seconds"])
    reports: list[tuple[float, Any]] = []  # (when, run report) of every finished run
    lock = threading.Lock()
    sync = bootstrap.Services.sync
    enqueue_due = schedule.enqueue_due
    ticks: list[Any] = []

    def recorded_tick(deps: Any) -> Any:
        report = enqueue_due(deps)
        ticks.append(report)
        return report

    profiles: list[cProfile.Profile] = []
    recorded = _recording(sync, reports, lock, profiles if params.get("profile") else None)

    try:
        control.configure(latency_ms=0)
        setup = Clock()
        with setup.timing():
            fleet.add(records_from_json(params["records"]))
            fleet.catch_up()
            deliver_all(stack, fleet_messages(params["mailboxes"]))
        control.configure(latency_ms=int(params["latency_ms"]))
        bootstrap.Services.sync = recorded  # type: ignore[method-assign]
        schedule.enqueue_due = recorded_tick
        measured = _measure(fleet, reports, lock, window)
        measured["timer_enqueued"] = sum(tick.enqueued for tick in ticks)
        measured["steady_table_per_run"] = {
            key.replace(fleet.table_prefix, ""): value for key, value in measured["steady_table_per_run"].items()
        }
    finally:
        bootstrap.Services.sync = sync  # type: ignore[method-assign]
        schedule.enqueue_due = enqueue_due
        fleet.stop()
        control.session.close()
    finished = [report for _, report in reports if report is not None]
    reasons: dict[str, int] = {}
    for report in finished:
        for reason, value in report.reasons.items():
            reasons[reason] = reasons.get(reason, 0) + value
    return {
        "setup_seconds": setup.wall,
        **measured,
        "reasons": {k: v for k, v in reasons.items() if v},
        "created": sum(r.activities_created for r in finished),
        "runs_with_error": sum(1 for r in finished if r.error),
        "graph_requests_per_run": sum(r.graph_requests for r in finished) / max(len(finished), 1),
        "peak_rss_mb": peak_rss_mb(),
        **({"profile": _merged(profiles)} if profiles else {}),
    }


def _recording(
    sync: Any, reports: list[tuple[float, Any]], lock: threading.Lock, profiles: list[cProfile.Profile] | None
) -> Any:
    """``Services.sync`` that records each run's end and report (and, given ``profiles``, its profile)."""

    def recorded(services: Any, org_id: str, mailbox_id: str, *args: Any, **kwargs: Any) -> Any:
        profiler = cProfile.Profile(time.thread_time) if profiles is not None else None
        if profiler is not None:
            profiler.enable()
        try:
            outcome = sync(services, org_id, mailbox_id, *args, **kwargs)
        finally:
            if profiler is not None:
                profiler.disable()
        with lock:
            reports.append((time.perf_counter(), outcome.report))
            if profiles is not None and profiler is not None:
                profiles.append(profiler)
        return outcome

    return recorded


def _merged(profiles: list[cProfile.Profile], top: int = 45) -> str:
    """The runs' profiles merged, the functions with the most own time first."""
    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for profile in profiles[1:]:
        stats.add(profile)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    stats.print_callers("submit|get_netrc_auth|getproxies|__init__.py.*ThreadPool")
    return out.getvalue()


def _measure(fleet: HostFleet, reports: list[tuple[float, Any]], lock: threading.Lock, window: float) -> dict[str, Any]:
    """Fire the timer (on a thread: it enqueues every due mailbox while the queue function already
    consumes), then watch the queue being worked off for ``window`` seconds or until every run finished.
    Rates and per-run costs are taken after the timer returned, when only queue-triggered runs work."""
    probe, total = fleet.probe, len(fleet.mailboxes)
    start, cpu_start, before = time.perf_counter(), cpu_seconds(), probe.snapshot()
    timer = threading.Thread(target=fleet.host.trigger_timer, args=(TIMER,))
    timer.start()
    timer.join()
    enqueued, cpu_enqueued, at_enqueued = time.perf_counter(), cpu_seconds(), probe.snapshot()
    with lock:
        done_enqueued = len(reports)
    while time.perf_counter() < start + window and len(reports) < total:
        time.sleep(0.2)
    end, cpu_end, after = time.perf_counter(), cpu_seconds(), probe.snapshot()
    with lock:
        done = len(reports)
    steady = {key: after.get(key, 0) - at_enqueued.get(key, 0) for key in after}
    runs = max(done - done_enqueued, 1)
    return {
        "window_seconds": end - start,
        "timer_seconds": enqueued - start,
        "finished": done,
        "finished_during_timer": done_enqueued,
        "mailboxes_per_minute": 60 * done / (end - start),
        "steady_mailboxes_per_minute": 60 * (done - done_enqueued) / max(end - enqueued, 1e-9),
        "cpu_seconds": cpu_end - cpu_start,
        "steady_cpu_ms_per_run": 1000 * (cpu_end - cpu_enqueued) / runs,
        "steady_per_run": {key: round(value / runs, 2) for key, value in steady.items() if ":" not in key},
        "steady_table_per_run": {
            key.removeprefix("table:"): round(value / runs, 2)
            for key, value in steady.items()
            if key.startswith("table:") and key.count(":") == 2 and value
        },
        "whole_window": {key: value - before.get(key, 0) for key, value in after.items() if ":" not in key},
        "rss_mb": current_rss_mb(),
    }
