"""``python -m bench.worker TASK``: run one measurement in this fresh process (parameters: JSON on stdin;
result: JSON on the last line of stdout, with the process's peak RSS added)."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import Any

from bench.measure import peak_rss_mb

TASKS = {
    "backfill-ours": "bench.backfill:ours_worker",
    "backfill-raw": "bench.backfill:raw_worker",
    "backfill-peer": "bench.side_by_side:peer_worker",
    "idle": "bench.idle:idle_worker",
    "gmail-backfill-ours": "bench.gmail_backfill:ours_worker",
    "gmail-backfill-raw": "bench.gmail_backfill:raw_worker",
    "imap-backfill-ours": "bench.imap_backfill:ours_worker",
    "imap-backfill-raw": "bench.imap_backfill:raw_worker",
    "fleet": "bench.fleet:fleet_worker",
    "send-graph": "bench.send:graph_worker",
    "send-drain": "bench.send:drain_worker",
    "matching-memory": "bench.matching:memory_worker",
    "matching-azurite": "bench.matching:azurite_worker",
    "records-load": "bench.records_load:load_worker",
}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    module_name, _, function = TASKS[argv[0]].partition(":")
    task = getattr(importlib.import_module(module_name), function)
    params: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
    result = task(params)
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
