"""``python -m tests.reliability.logged_host --log-file F --port P``: the local Functions host serving
function_app (HTTP and queue triggers; timers only when a test triggers them, so nothing runs on its own
schedule against the shared emulator), with one handler on the root logger, at DEBUG, that writes every log
record of the process as a JSON line to F: logger, level, the raw ``msg``, ``repr(args)``, the formatted
message, and the formatted exception and stack, if any. The reliability tests scan that file for secrets.
Prints ``devhost ready <base url>`` once serving; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path

from devhost import LocalHost

ROOT = Path(__file__).resolve().parents[2]


class JsonLinesHandler(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self._file = path.open("a", encoding="utf-8", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # a record whose args do not fit its format: keep the raw parts
            message = f"<unformattable {type(exc).__name__}>"
        exc_text = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
        line = {
            "logger": record.name,
            "level": record.levelname,
            "msg": str(record.msg),
            "args": repr(record.args),
            "message": message,
            "exc": exc_text or (record.exc_text or ""),
            "stack": record.stack_info or "",
        }
        # Handler.handle holds the handler's lock around emit: lines never interleave.
        self._file.write(json.dumps(line, default=repr) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.logged_host")
    parser.add_argument("--log-file", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    root.addHandler(JsonLinesHandler(args.log_file))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LocalHost(ROOT, "function_app", args.port, run_timers=False) as host:
        print(f"devhost ready {host.base_url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
