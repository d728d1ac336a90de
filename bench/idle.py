"""Benchmark 2, idle poll cost: what polling a mailbox with no new mail costs, in Graph requests and Table
writes (goals: 1 Graph request, both folders in one ``$batch``; 0 Table writes).

One worker runs the real app in the local Functions host with ``MAILBOXES`` app-mode mailboxes that hold
no new mail. After a first tick (their initial sync), it measures:

* the production path: the minute timer enqueues every (again due) mailbox, the queue-triggered function
  syncs it -- everything one idle poll costs, scheduler included;
* the sync use case alone (``Services.sync``, as the queue function calls it), ``ROUNDS`` times per mailbox.

Requests are counted at the HTTP layer (``HttpProbe``): Graph (``$batch`` counts once; the emulator's count
of sub-requests is reported too), identity platform, Table reads/writes and Queue operations.
"""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.hostfleet import ORG, HostFleet
from bench.stack import Stack, tenant_with_users

MAILBOXES = 20
ROUNDS = 5
KEYS = ("graph", "identity", "table:read", "table:write", "queue")


def run(ctx: Context) -> dict[str, Any]:
    client = ctx.stack.client()
    tenant, users = tenant_with_users(client, "idle", MAILBOXES)
    ctx.set_latency(ctx.latency_ms)
    params = {
        "tenant_id": tenant.id,
        "domain": tenant.domain,
        "app": {"client_id": tenant.app.client_id, "secret": tenant.app.client_secret},
        "mailboxes": users,
        "rounds": ctx.runs(ROUNDS, 2),
    }
    result = ctx.worker("idle", params)
    served = sum(int(client.mailbox_stats(user_id)["requests"]) for _, _, user_id in users)
    result["graph_served_total"] = served
    client.session.close()
    return {"latency_ms": ctx.latency_ms, "mailboxes": MAILBOXES, "rounds": params["rounds"], **result}


def idle_worker(params: dict[str, Any]) -> dict[str, Any]:
    from sync_core import bootstrap  # noqa: PLC0415

    fleet = HostFleet(Stack.from_env(), params)
    try:
        fleet.add([])
        fleet.tick()  # the initial sync of every mailbox: from now on they are caught up
        probe, count = fleet.probe, len(fleet.mailboxes)
        fleet.make_due()
        before = probe.snapshot()
        fleet.tick()
        host_counts = probe.since(before)
        host_path = _per_poll(host_counts, count)
        services = bootstrap.services()
        rounds = int(params["rounds"])
        before = probe.snapshot()
        outcomes = [services.sync(ORG, box.mailbox_id).status for _ in range(rounds) for box in fleet.mailboxes]
        use_case_counts = probe.since(before)
        use_case = _per_poll(use_case_counts, count * rounds)
        reports = fleet.run_reports()
    finally:
        fleet.stop()
    return {
        "per_poll_host_path": host_path,
        "per_poll_use_case": use_case,
        "table_writes_host_path": _writes(host_counts, count, fleet.table_prefix),
        "table_writes_use_case": _writes(use_case_counts, count * rounds, fleet.table_prefix),
        "use_case_outcomes": sorted(set(outcomes)),
        "report_graph_requests": sorted({r.graph_requests for r in reports}),
        "report_table_transactions": sorted({r.table_transactions for r in reports}),
    }


def _per_poll(counts: dict[str, int], polls: int) -> dict[str, float]:
    return {key: round(counts.get(key, 0) / polls, 2) for key in KEYS}


def _writes(counts: dict[str, int], polls: int, prefix: str) -> dict[str, float]:
    """Table writes per poll by table (the app's prefix removed)."""
    writes = {
        key.removeprefix("table:write:").removeprefix(prefix): round(value / polls, 2)
        for key, value in counts.items()
        if key.startswith("table:write:") and value
    }
    return dict(sorted(writes.items(), key=lambda item: -item[1]))
