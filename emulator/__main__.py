"""``python -m emulator``: run the emulator in the foreground until SIGINT or SIGTERM.

With ``--persist`` the state survives restarts (``emulator.persistence``); ``--seed demo`` then adds
the demo tenant only if the restored state lacks it.

Prints exactly one line on stdout, ``emulator ready {url}``, once it accepts connections. The pid file
(if asked for) exists exactly while the emulator runs.

With ``--google-port`` the same process also runs the Google emulator (``emulator.google``) on that
port (0: a free one), sharing the state dir (its TLS material, and ``google-state.pickle`` with
``--persist``) and the seed; both serve before the first line is printed, and a second line
``google emulator ready {url}`` follows.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

from emulator.google.server import GoogleEmulatorServer
from emulator.server import EmulatorServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--state-dir", type=Path, default=Path(".local/emulator"))
    parser.add_argument("--seed", choices=["demo"], default=None)
    parser.add_argument(
        "--persist", action="store_true",
        help="keep the whole state in STATE_DIR/state.pickle: restored on start, saved on change and on stop",
    )
    parser.add_argument("--pid-file", type=Path, default=None)
    parser.add_argument("--google-port", type=int, default=None, help="also run the Google emulator on this port")
    parser.add_argument("--log-level", default="WARNING", help="access log is at INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server = EmulatorServer(args.host, args.port, state_dir=args.state_dir, seed=args.seed, persist=args.persist)
    google = (
        GoogleEmulatorServer(args.host, args.google_port, state_dir=args.state_dir, seed=args.seed,
                             persist=args.persist)
        if args.google_port is not None
        else None
    )
    try:
        server.start()
        if google is not None:
            google.start()
        if args.pid_file:
            args.pid_file.parent.mkdir(parents=True, exist_ok=True)
            args.pid_file.write_text(f"{os.getpid()}\n")
        print(f"emulator ready {server.url}", flush=True)
        if google is not None:
            print(f"google emulator ready {google.url}", flush=True)
        stop.wait()
    finally:
        server.stop()
        if google is not None:
            google.stop()
        if args.pid_file:
            args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
