"""LocalHost: runs a Function App's HTTP, timer and queue functions in this process.

Invariants:

* :meth:`LocalHost.start` applies settings to ``os.environ`` *before* importing the app, then
  starts queue listeners, timers and finally the HTTP server; :meth:`LocalHost.stop` undoes all
  of it (threads stopped, server closed, environment and ``sys.modules[module]`` restored) and
  is idempotent. A failed start cleans up what it had started.
* One LocalHost per process at a time: settings live in ``os.environ``, the app folder is on
  ``sys.path`` while running, and the app module in ``sys.modules`` (only ``module`` itself is
  dropped on stop; packages it imported stay cached).
* Every invocation logs "Executing"/"Executed" lines; a failure logs its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError
from azure.functions.queue import QueueMessage

from devhost import functions
from devhost.functions import HTTP, QUEUE, SUPPORTED_TRIGGERS, TIMER, FunctionSpec
from devhost.http_server import FunctionsServer, HttpApp, build_routes
from devhost.queues import QueueListener, QueueOutputs
from devhost.settings import (
    KEY_SETTING,
    EnvOverlay,
    HostConfig,
    max_body_bytes,
    merge_settings,
    read_local_settings,
    resolve_setting_refs,
    storage_connection_string,
)
from devhost.timers import TimerRunner, parse_schedule, timer_request

log = logging.getLogger("devhost")

JOIN_TIMEOUT = 30.0  # seconds to wait for running invocations on stop


class LocalHost:
    """A local Functions host for ``module.app`` in ``app_dir``.

    ``settings`` override both local.settings.json and the environment. ``run_timers=False``
    keeps timers from firing on their schedule (``trigger_timer`` still works).
    """

    def __init__(
        self,
        app_dir: Path | str,
        module: str = "function_app",
        port: int = 0,
        settings: dict[str, str] | None = None,
        *,
        bind: str = "127.0.0.1",
        run_timers: bool = True,
    ) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.module_name = module
        self._port = port
        self._settings = dict(settings or {})
        self._bind = bind
        self._run_timers = run_timers
        self.config = HostConfig()
        self.functions: dict[str, FunctionSpec] = {}
        self.module: ModuleType | None = None
        self._overlay: EnvOverlay | None = None
        self._stop = threading.Event()
        self._server: FunctionsServer | None = None
        self._server_thread: threading.Thread | None = None
        self._timers: list[TimerRunner] = []
        self._listeners: list[QueueListener] = []
        self._outputs: QueueOutputs | None = None
        self._on_path = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalHost:
        """Load settings and the app, start listeners, timers and the HTTP server."""
        if self._server is not None:
            raise RuntimeError("LocalHost already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        values, _ = read_local_settings(self.app_dir)
        self._overlay = EnvOverlay(merge_settings(values, os.environ, self._settings))
        self._overlay.apply()
        self.config = HostConfig.load(self.app_dir)
        sys.path.insert(0, str(self.app_dir))  # like the worker: the app folder stays importable
        self._on_path = True
        self.module, app = functions.import_app(self.module_name)
        self.functions = {s.name: s for s in functions.load_specs(app, self.app_dir)}
        self._check_bindings()
        settings = dict(os.environ)
        self._outputs = QueueOutputs(
            lambda conn: storage_connection_string(conn, settings), self.config.queues.message_encoding
        )
        self._stop.clear()
        for spec in self._of_type(QUEUE):
            self._listeners.append(self._make_listener(spec, settings))
        for listener in self._listeners:
            listener.start()
        timers = [self._make_timer(spec, settings) for spec in self._of_type(TIMER)]  # validates schedules
        if self._run_timers:
            self._timers = timers
            for runner in timers:
                runner.start()
        app_http = HttpApp(
            build_routes(self._of_type(HTTP), self.config.route_prefix),
            settings.get(KEY_SETTING) or None,
            self._invoke,
            self._admin_invoke,
        )
        self._server = FunctionsServer((self._bind, self._port), app_http, max_body_bytes(settings))
        self._server_thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="devhost-http", daemon=True
        )
        self._server_thread.start()
        log.info("devhost started %d functions at %s", len(self.functions), self.base_url)

    def stop(self) -> None:
        """Stop everything started and restore the environment; safe to call twice."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._server_thread is not None:
            self._server_thread.join(JOIN_TIMEOUT)
        for runner in self._timers:
            runner.join(JOIN_TIMEOUT)
        for listener in self._listeners:
            listener.join(JOIN_TIMEOUT)
        self._server, self._server_thread = None, None
        self._timers, self._listeners = [], []
        if self.module is not None:
            sys.modules.pop(self.module_name, None)
            self.module = None
        if self._on_path:
            sys.path.remove(str(self.app_dir))
            self._on_path = False
        if self._overlay is not None:
            self._overlay.restore()
            self._overlay = None

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- public helpers --------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalHost is not started")
        return int(self._server.server_port)

    @property
    def origin(self) -> str:
        """``http://host:port`` (admin endpoints live here)."""
        return f"http://{self._bind}:{self.port}"

    @property
    def base_url(self) -> str:
        """Origin plus route prefix, e.g. ``http://127.0.0.1:7071/api``."""
        prefix = self.config.route_prefix
        return f"{self.origin}/{prefix}" if prefix else self.origin

    def trigger_timer(self, name: str) -> None:
        """Run timer function ``name`` once on the calling thread; its exception propagates."""
        spec = self._spec(name, TIMER)
        schedule = parse_schedule(resolve_setting_refs(str(spec.trigger["schedule"]), os.environ))
        due = schedule.next_after(datetime.now(UTC))
        self._execute(spec, timer_request(False, None, due), "manual")

    def drain_queues(self, timeout: float = 10.0) -> None:
        """Wait until every trigger queue is empty and idle; TimeoutError after ``timeout`` s.

        "Empty" counts invisible messages too, so failing messages are retried (or poisoned)
        before this returns.
        """
        deadline = time.monotonic() + timeout
        while True:
            before = sum(listener.activity for listener in self._listeners)
            pending = [q.queue_name for q in self._listeners if q.approximate_count() > 0]
            busy = [q.queue_name for q in self._listeners if not q.is_idle()]
            after = sum(listener.activity for listener in self._listeners)
            if not pending and not busy and before == after:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues not drained after {timeout}s: {sorted(set(pending + busy))}")
            for listener in self._listeners:
                listener.wake()
            time.sleep(0.05)

    # -- wiring ----------------------------------------------------------------------------

    def _of_type(self, trigger_type: str) -> list[FunctionSpec]:
        return [s for s in self.functions.values() if s.trigger_type == trigger_type]

    def _spec(self, name: str, trigger_type: str | None = None) -> FunctionSpec:
        spec = self.functions.get(name) or next(
            (s for s in self.functions.values() if s.name.lower() == name.lower()), None
        )
        if spec is None or (trigger_type and spec.trigger_type != trigger_type):
            raise LookupError(f"no {trigger_type or ''} function named {name!r}")
        return spec

    def _check_bindings(self) -> None:
        for spec in self.functions.values():
            if spec.trigger_type not in SUPPORTED_TRIGGERS:
                log.warning("%s: trigger %s is not supported; it will not run", spec.name, spec.trigger_type)
            for binding in spec.unsupported_bindings():
                log.warning("%s: binding %s is not supported; invocations will fail", spec.name, binding)

    def _make_listener(self, spec: FunctionSpec, settings: dict[str, str]) -> QueueListener:
        queue_name = resolve_setting_refs(str(spec.trigger["queueName"]), settings)
        connection = storage_connection_string(str(spec.trigger.get("connection") or ""), settings)
        try:
            return QueueListener(
                spec.name,
                connection_string=connection,
                queue_name=queue_name,
                options=self.config.queues,
                invoke=lambda message: self._execute_quietly(spec, message, f"New queue message on '{queue_name}'"),
                stop=self._stop,
            )
        except AzureError as exc:
            raise RuntimeError(f"{spec.name}: cannot open queue {queue_name!r} (is Azurite running?)") from exc

    def _make_timer(self, spec: FunctionSpec, settings: dict[str, str]) -> TimerRunner:
        schedule = parse_schedule(resolve_setting_refs(str(spec.trigger["schedule"]), settings))
        return TimerRunner(
            spec.name,
            schedule,
            bool(spec.trigger.get("runOnStartup", False)),
            lambda request: self._execute_quietly(spec, request, "Timer fired"),
            self._stop,
        )

    # -- invocation ------------------------------------------------------------------------

    def _execute(self, spec: FunctionSpec, value: Any, reason: str) -> Any:
        """Invoke, write output bindings, log; exceptions propagate after being logged."""
        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='%s')", spec.name, reason)
        try:
            result = functions.call(spec, value)
            for binding, output in result.outputs:
                assert self._outputs is not None
                queue_name = resolve_setting_refs(str(binding["queueName"]), os.environ)
                self._outputs.send(queue_name, str(binding.get("connection") or ""), output)
        except Exception:
            log.exception("Executed 'Functions.%s' (Failed, Duration=%dms)", spec.name, _ms(started))
            raise
        log.info("Executed 'Functions.%s' (Succeeded, Duration=%dms)", spec.name, _ms(started))
        return result.value

    def _execute_quietly(self, spec: FunctionSpec, value: Any, reason: str) -> bool:
        try:
            self._execute(spec, value, reason)
        except Exception:
            return False
        return True

    def _invoke(self, spec: FunctionSpec, request: func.HttpRequest) -> Any:
        return self._execute(spec, request, f"HTTP {request.method}")

    def _admin_invoke(self, name: str, text: str) -> None:
        spec = self._spec(name)
        if spec.trigger_type == TIMER:
            self.trigger_timer(spec.name)
        elif spec.trigger_type == QUEUE:
            message = QueueMessage(  # type: ignore[no-untyped-call]
                id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1
            )
            self._execute(spec, message, "admin")
        else:
            raise ValueError(f"{spec.name} is a {spec.trigger_type} function")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
