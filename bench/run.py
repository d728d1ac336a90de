"""``python -m bench.run [--quick] [--only NAME[,NAME...]] [--latency-ms 50] [--report-only]``

Runs the benchmarks (all, or ``--only`` some), writes ``bench/results/<name>.json`` and regenerates
``docs/performance.md`` (with its plots under ``docs/img/``) from every result file present, so a partial
run keeps the other sections of the last full one. ``--quick`` runs fewer repetitions and a smaller fleet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import backfill, cold_start, fleet, idle, matching, report, side_by_side
from bench.context import Context
from bench.stack import ROOT, running_stack

RESULTS = ROOT / "bench" / "results"
# In run order: the side-by-side comparison reuses the backfill's seeded mailbox.
BENCHMARKS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "cold_start": cold_start.run,
    "backfill": backfill.run,
    "side_by_side": side_by_side.run,
    "idle": idle.run,
    "fleet": fleet.run,
    "matching": matching.run,
}
NEEDS_STACK = frozenset(BENCHMARKS) - {"cold_start"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, a smaller fleet")
    parser.add_argument("--only", default="", help=f"comma-separated, of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--latency-ms", type=int, default=50, help="latency the emulator adds to every request")
    parser.add_argument("--report-only", action="store_true", help="only regenerate docs/performance.md")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if not args.report_only:
        run(chosen, quick=args.quick, latency_ms=args.latency_ms)
    path = report.render(RESULTS, ROOT / "docs")
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


def run(chosen: list[str], *, quick: bool, latency_ms: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    started = time.perf_counter()
    with ExitStack() as stack:
        context = Context(quick, latency_ms)
        for name in [n for n in BENCHMARKS if n in chosen]:
            if name in NEEDS_STACK and context.started is None:
                context.started = stack.enter_context(running_stack())
            print(f"[bench] {name} ...", flush=True)
            began = time.perf_counter()
            load_before = os.getloadavg()[0]
            result = BENCHMARKS[name](context)
            seconds = time.perf_counter() - began
            print(f"[bench] {name} done in {seconds:.0f} s", flush=True)
            record = {
                "benchmark": name,
                "generated": datetime.now(UTC).isoformat(timespec="seconds"),
                "quick": quick,
                "latency_ms": latency_ms,
                "duration_seconds": round(seconds, 1),
                # Runnable processes on the machine (1-minute load average) before and after: it is shared.
                "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                "machine": machine,
                "result": result,
            }
            temporary = RESULTS / f"{name}.json.tmp"
            temporary.write_text(json.dumps(record, indent=1, default=str) + "\n")
            temporary.replace(RESULTS / f"{name}.json")
    print(f"[bench] all done in {time.perf_counter() - started:.0f} s", flush=True)


def describe_machine() -> dict[str, Any]:
    """What the numbers depend on, and a speed reference: a pure-Python loop of 10 million additions."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "")  # fmt: skip
    started = time.perf_counter()
    total = 0
    for n in range(10_000_000):
        total += n
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loop_10m_seconds": round(time.perf_counter() - started, 2),
    }


if __name__ == "__main__":
    raise SystemExit(main())
