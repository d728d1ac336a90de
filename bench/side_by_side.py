"""Benchmark 6, side by side: the same 10,000-message delta sync through the product's Graph adapter
(``requests`` + ``GraphHttp`` + ``GraphMailSource``) and through the official ``msgraph-sdk`` written as its
docs show (``bench/peers/msgraph_sdk_delta.py``), against the same emulator at the same latency.

Both run the product's ``sync_mailbox`` (same decisions, same activities) on the in-memory store doubles,
so the only difference is the Graph client stack; storage would add the same cost to both (see the
backfill benchmark for it). Every run is a fresh process; the ratios are SDK / ours
over the medians of the same ``bench.run``. The SDK side runs once per ``bench.run`` (about 4 minutes on the
reference machine, nearly all of it CPU in the SDK's model parsing), ours three times (once with
``--quick``); the SDK runs in ``.local/bench/venv-msgraph`` (requirements.txt + msgraph-sdk).
"""

from __future__ import annotations

from typing import Any

from bench import venvs
from bench.backfill import measure_sync, seeded_mailbox, sync_deps_for
from bench.context import Context
from bench.measure import HttpProbe, median
from bench.stack import Stack
from bench.sync_setup import BenchMailbox

METRICS = ("wall", "cpu", "peak_rss_mb")


def run(ctx: Context) -> dict[str, Any]:
    seeded = seeded_mailbox(ctx)
    ctx.set_latency(ctx.latency_ms)
    params = {**seeded, "storage": "memory"}
    ours: list[dict[str, Any]] = []
    sdk: list[dict[str, Any]] = []
    peer_python = str(venvs.msgraph_python())
    ours.append(ctx.worker("backfill-ours", params))
    sdk.append(ctx.worker("backfill-peer", params, python=peer_python))
    for _ in range(ctx.runs(2, 0)):
        ours.append(ctx.worker("backfill-ours", params))
    medians = {
        "ours": {m: median([r[m] for r in ours]) for m in (*METRICS, "graph_http_requests")},
        "sdk": {m: median([r[m] for r in sdk]) for m in (*METRICS, "graph_http_requests")},
    }
    return {
        "latency_ms": ctx.latency_ms,
        "messages": seeded["mix"]["messages"],
        "ours": ours,
        "sdk": sdk,
        "median": medians,
        "ratio_sdk_over_ours": {m: medians["sdk"][m] / medians["ours"][m] for m in METRICS},
        "same_outcome": all(
            (r["reasons"], r["created"]) == (ours[0]["reasons"], ours[0]["created"]) for r in (*ours, *sdk)
        ),
    }


def peer_worker(params: dict[str, Any]) -> dict[str, Any]:
    """One sync with ``MsgraphSdkMailSource`` in place of ``GraphMailSource``."""
    from bench.peers.msgraph_sdk_delta import EmulatorClientCredential, MsgraphSdkMailSource  # noqa: PLC0415

    stack = Stack.from_env()
    probe = HttpProbe(stack.emulator_url, stack.storage).install()
    box = BenchMailbox.from_json(params["mailbox"])
    app = params["app"]
    ca_bundle = str(stack.ca_bundle)
    credential = EmulatorClientCredential(stack.emulator_url, box.tenant_id, app["client_id"], app["secret"], ca_bundle)
    mail = MsgraphSdkMailSource(stack.graph_url, credential, ca_bundle)
    mail.warm_up()
    try:
        result = measure_sync(stack, probe, sync_deps_for(stack, params, mail), params)
    finally:
        mail.close()
    result["graph_http_requests"] = mail.requests_made
    return result
