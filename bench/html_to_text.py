"""HTML to text on hostile nested documents, before and after the linear tokenizer driver (run by hand).

    python -m bench.html_to_text [--before COMMIT] [--sizes 72K,288K,1M,25M] [--limit SECONDS]

Shapes (each repeated up to the size):
* ``skipped-open``: ``<svg>`` x n then ``</p>`` x n: every end tag of an element that is not open searched
  the stack of open skipped elements (quadratic in nested open elements).
* ``comment-open``: ``<!--`` x n, never closed: the stdlib parser's ``close()`` rescanned the rest of the
  document for every ``<`` (quadratic).
* ``div-nested``: ``<div>`` x n then ``</div>`` x n: plain deep nesting (linear before and after).

"after" is the working tree's ``sync_core.domain.text`` (which reads at most ``MAX_HTML_CHARS`` characters,
so its 25 MiB rows measure the cap); "before" is ``sync_core/domain/text.py`` at ``--before`` (default: the
commit before the fix), loaded from git. A "before" run predicted to take longer than ``--limit`` seconds
(extrapolated from the previous two sizes, quadratically after only one) is skipped and its prediction printed
instead. Timings are
wall-clock on whatever else the machine is doing: compare rows, not machines.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from sync_core.domain import text as after

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "3944623"
GIT = shutil.which("git") or "git"
SHAPES: dict[str, Callable[[int], str]] = {
    "skipped-open": lambda size: "<svg>" * (size // 9) + "</p>" * (size // 9),
    "comment-open": lambda size: "<!--" * (size // 4),
    "div-nested": lambda size: "<div>" * (size // 11) + "</div>" * (size // 11),
}
UNITS = {"K": 1000, "M": 1024 * 1024}


def load_before(commit: str) -> types.ModuleType:
    source = subprocess.run(
        [GIT, "show", f"{commit}:sync_core/domain/text.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("text_before")
    exec(compile(source, f"{commit}:sync_core/domain/text.py", "exec"), module.__dict__)  # noqa: S102
    return module


def parse_size(value: str) -> int:
    unit = value[-1].upper()
    return int(float(value[:-1]) * UNITS[unit]) if unit in UNITS else int(value)


def timed(convert: Callable[[str], str], document: str) -> float:
    start = time.perf_counter()
    convert(document)
    return time.perf_counter() - start


def extrapolate(measured: list[tuple[int, float]], length: int) -> float:
    """Seconds for ``length`` characters: the growth exponent of the last two measurements (2 after one)."""
    if not measured:
        return 0.0
    (last_length, last_seconds), exponent = measured[-1], 2.0
    if len(measured) > 1 and measured[-2][1] > 0 and last_seconds > 0:
        exponent = math.log(last_seconds / measured[-2][1]) / math.log(last_length / measured[-2][0])
    return last_seconds * (length / last_length) ** max(1.0, exponent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--sizes", default="72K,288K,1M,25M")
    parser.add_argument("--limit", type=float, default=120.0, help="skip a 'before' run predicted to be longer")
    args = parser.parse_args()
    before = load_before(args.before)
    sizes = [parse_size(size) for size in args.sizes.split(",")]
    print(f"MAX_HTML_CHARS (after) = {after.MAX_HTML_CHARS:,}")
    print(f"{'shape':14} {'chars':>11} {'before s':>14} {'after s':>9} {'after examined/char':>20}")
    for shape, build in SHAPES.items():
        measured: list[tuple[int, float]] = []
        for size in sizes:
            document = build(size)
            predicted = extrapolate(measured, len(document))
            if predicted > args.limit:
                before_cell = f"~{predicted:,.0f} (skip)"
            else:
                seconds = timed(before.html_to_text, document)
                measured.append((len(document), seconds))
                before_cell = f"{seconds:.3f}"
            after_seconds = timed(after.html_to_text, document)
            examined = after.html_text(document).examined / len(document)
            print(f"{shape:14} {len(document):>11,} {before_cell:>14} {after_seconds:>9.3f} {examined:>20.2f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
