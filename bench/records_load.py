"""Benchmark: loading an org's records through the product's own ``records:batch`` API on Azurite, then
matching end to end against them (issue 20, goal 2).

One worker process (``records-load``):

* loads ``RECORDS`` records (one address each, as ``bench.matching.make_records``) in batches of 1,000
  (the API's limit) by calling the API's handler, ``sync_core.api.records.batch_records``, in process,
  with ``Services`` wired by ``bootstrap`` to Azurite exactly as the Functions app is (the real
  ``TableRecordsIndex``, the org's settings read (record backfill off, the default, so no ``get_many``),
  the JSON body parsed and validated): what the HTTP route runs, without the Functions host's HTTP hop.
  Wall time, batches/s and Table transactions per batch, and the rate as the table grows;
* then decides ``PAGES`` pages of 1,000 messages (``bench.matching.make_pages``: participants drawn from
  the loaded records, unknown addresses and colleagues) through ``pipeline.build_activities`` against a
  fresh ``TableRecordsIndex`` of another "worker" (its caches empty), so the org is beyond the snapshot
  bound and every key is looked up in the packed buckets: the first page reads them (one query of the
  org's buckets), the later ones only the records version. Also reported: the first page's wall, the
  later pages' rate, the addresses kept by the worker and its memory growth while deciding.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from bench import matching
from bench.context import Context
from bench.measure import Clock, current_rss_mb

RECORDS = 100_000
QUICK_RECORDS = 10_000
BATCH = 1_000
PAGES = 5
QUICK_PAGES = 2


def run(ctx: Context) -> dict[str, Any]:
    records = ctx.runs(RECORDS, QUICK_RECORDS)
    pages = ctx.runs(PAGES, QUICK_PAGES)
    return ctx.worker("records-load", {"records": records, "pages": pages})


def load_worker(params: dict[str, Any]) -> dict[str, Any]:
    from bench.stack import Stack  # noqa: PLC0415
    from sync_core import bootstrap  # noqa: PLC0415
    from sync_core.adapters.tables import TableMetrics, TableRecordsIndex  # noqa: PLC0415
    from sync_core.api import records as records_api  # noqa: PLC0415
    from sync_core.api.http import ApiRequest  # noqa: PLC0415
    from sync_core.settings import Settings  # noqa: PLC0415

    stack = Stack.from_env()
    prefix = "l" + format(random.getrandbits(40), "x")
    services = bootstrap.Services(Settings.from_env({"AzureWebJobsStorage": stack.storage, "TABLE_PREFIX": prefix}))
    total = int(params["records"])
    metrics = services.stores.metrics
    curve: list[dict[str, float]] = []
    clock = Clock()
    before = metrics.transactions
    with clock.timing():
        for start in range(0, total, BATCH):
            began = time.perf_counter()
            items = [
                {"id": r.record_id, "type": r.record_type, "name": r.name, "emails": list(r.emails)}
                for r in matching.make_records(min(BATCH, total - start), start)
            ]
            request = ApiRequest(
                method="POST",
                route={"org": matching.ORG},
                headers={"content-type": "application/json"},
                body=json.dumps({"upsert": items}).encode(),
            )
            response = records_api.batch_records(services, request)
            if response.status != 200 or response.body["failed"]:
                raise RuntimeError(f"records:batch answered {response.status}")
            curve.append({"records": start + len(items), "seconds": time.perf_counter() - began})
    transactions = metrics.transactions - before

    lookups = TableMetrics()
    index = TableRecordsIndex(services.tables, prefix, lookups)
    index.lookup(matching.ORG, ["warm-up@example.com"], [])
    pages = matching.make_pages(int(params["pages"]), 7, total)
    mailbox, settings = matching._context()
    before_lookups = lookups.transactions
    rss_before = current_rss_mb()
    decided = matching.decide_pages(pages, index, mailbox, settings)
    later = decided["page_seconds"][1:]
    return {
        "records": total,
        "batch": BATCH,
        "load_seconds": clock.wall,
        "load_cpu_seconds": clock.cpu,
        "records_per_second": total / clock.wall,
        "transactions_per_batch": transactions / len(curve),
        "load_curve": curve[:: max(1, len(curve) // 20)] + curve[-1:],
        "matching": {
            **decided,
            "table_transactions_per_message": (lookups.transactions - before_lookups) / decided["messages"],
            # The first page reads the org's buckets (once per records version); the others read the version.
            "first_page_seconds": decided["page_seconds"][0],
            "later_messages_per_second": matching.PAGE * len(later) / sum(later) if later else None,
            "kept_entries": index._buckets.entries,
            "rss_growth_mb": current_rss_mb() - rss_before,
        },
    }
