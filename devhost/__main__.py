"""Command line: ``python -m devhost [--app-dir .] [--module function_app] [--port 7071] [--pid-file F]``.

Prints the loaded functions, then exactly one line ``devhost ready <base url>`` once serving.
SIGINT/SIGTERM stop it cleanly (threads stopped, server closed, pid file removed); exit code 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from devhost.functions import HTTP, QUEUE, TIMER, FunctionSpec
from devhost.host import LocalHost
from devhost.settings import read_local_settings

log = logging.getLogger("devhost")

DEFAULT_PORT = 7071


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m devhost", description=__doc__)
    parser.add_argument("--app-dir", default=".", help="folder with function_app.py, host.json")
    parser.add_argument("--module", default="function_app", help="module whose `app` to serve")
    parser.add_argument(
        "--port", type=int, default=None,
        help="HTTP port (0: any free port; default: local.settings.json Host.LocalHttpPort or 7071)",
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--pid-file", type=Path, default=None, help="write this process id here")
    parser.add_argument("--log-level", default="INFO", help="logging level of the host log (stderr)")
    return parser.parse_args(argv)


def describe(spec: FunctionSpec, base_url: str) -> str:
    """One human-readable line per function, like Core Tools' start-up listing."""
    trigger = spec.trigger
    if spec.trigger_type == HTTP:
        methods = ",".join(trigger.get("methods") or ["*"])
        return f"  {spec.name}: [{methods}] {base_url}/{str(trigger.get('route') or spec.name).strip('/')}"
    if spec.trigger_type == TIMER:
        return f"  {spec.name}: timerTrigger schedule={trigger['schedule']}"
    if spec.trigger_type == QUEUE:
        return f"  {spec.name}: queueTrigger queue={trigger['queueName']}"
    return f"  {spec.name}: {spec.trigger_type} (not supported by devhost)"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app_dir = Path(args.app_dir).resolve()
    port = args.port
    if port is None:
        port = int(read_local_settings(app_dir)[1].get("LocalHttpPort") or DEFAULT_PORT)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    host = LocalHost(app_dir, args.module, port, bind=args.bind)
    try:
        host.start()
        if args.pid_file:
            args.pid_file.write_text(str(os.getpid()))
        print(f"Functions ({len(host.functions)}):")
        for spec in host.functions.values():
            print(describe(spec, host.base_url))
        print(f"devhost ready {host.base_url}", flush=True)
        stop.wait()
        log.info("devhost stopping")
    except Exception:
        log.exception("devhost failed")
        return 1
    finally:
        host.stop()
        if args.pid_file:
            args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
