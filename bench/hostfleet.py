"""Mailboxes synced the production way: the real ``function_app`` in the local Functions host (``devhost``),
its minute timer and its sync queue on Azurite, Graph and tokens from the emulator. Used by the idle-poll
and fleet benchmarks, inside their worker process (the host runs in the worker, so the worker's CPU and
RSS are the Functions worker's).

Mailboxes are application-mode mailboxes of one org whose tenant consented; the worker adds them to the
app's tables and makes them due, like an app-mode add does (``schedule_mailbox``).
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.measure import HttpProbe
from bench.stack import ROOT, Stack

TIMER = "enqueue_due_mailboxes"
ORG = "fleet-org"


@dataclass(frozen=True)
class FleetMailbox:
    mailbox_id: str
    address: str
    graph_user_id: str


class HostFleet:
    """A started ``LocalHost`` for the app, with ``mailboxes`` of one org (see the module docstring)."""

    def __init__(self, stack: Stack, params: dict[str, Any]) -> None:
        from devhost import LocalHost  # noqa: PLC0415

        self.stack = stack
        self.probe = HttpProbe(stack.emulator_url, stack.storage).install()
        self.tenant_id = str(params["tenant_id"])
        self.domain = str(params["domain"])
        self.mailboxes = [FleetMailbox(*m) for m in params["mailboxes"]]
        self.table_prefix = "f" + uuid.uuid4().hex[:10]
        settings = {
            "AzureWebJobsStorage": stack.storage,
            "TABLE_PREFIX": self.table_prefix,
            "SYNC_QUEUE_NAME": "sync-" + uuid.uuid4().hex[:10],
            "GRAPH_CLIENT_ID": params["app"]["client_id"],
            "GRAPH_CLIENT_SECRET": params["app"]["secret"],
            "GRAPH_AUTHORITY_HOST": stack.emulator_url,
            "GRAPH_BASE_URL": stack.graph_url,
            "REQUESTS_CA_BUNDLE": str(stack.ca_bundle),
            "PUBLIC_BASE_URL": "http://127.0.0.1",
            "TOKEN_ENCRYPTION_KEY": "k1:" + base64.b64encode(os.urandom(32)).decode(),
            "LOCAL_FUNCTIONS_KEY": uuid.uuid4().hex,
        }
        self.host = LocalHost(ROOT, settings=settings, run_timers=False).start()

    def stop(self) -> None:
        self.host.stop()

    def add(self, records: Sequence[Any], never_log: Sequence[str] = ()) -> None:
        """The org's settings and records, its mailboxes, each due now."""
        from sync_core import bootstrap  # noqa: PLC0415
        from sync_core.domain.model import ConnectionMode, Mailbox, OrgSettings  # noqa: PLC0415
        from sync_core.use_cases.schedule import schedule_mailbox  # noqa: PLC0415

        services = bootstrap.services()
        services.stores.settings.put(ORG, OrgSettings(internal_domains=(self.domain,), never_log=tuple(never_log)))
        for start in range(0, len(records), 1000):
            services.stores.records.upsert(ORG, list(records[start : start + 1000]))
        watermark = datetime.now(UTC) - timedelta(minutes=5)
        deps = services.schedule_deps()

        def add(box: FleetMailbox) -> None:
            services.stores.mailboxes.add(
                Mailbox(
                    ORG,
                    box.mailbox_id,
                    box.address,
                    (box.address,),
                    watermark=watermark,
                    mode=ConnectionMode.APPLICATION,
                    tenant_id=self.tenant_id,
                    graph_user_id=box.graph_user_id,
                )
            )
            schedule_mailbox(deps, ORG, box.mailbox_id)

        self._each(add)

    def catch_up(self) -> None:
        """Leave every mailbox caught up, as after earlier polls: each folder's cursor holds a delta link
        (from an initial delta request made here directly, with the product's Graph adapter)."""
        from sync_core import bootstrap  # noqa: PLC0415
        from sync_core.adapters.graph.mail import GraphMailSource  # noqa: PLC0415
        from sync_core.domain.folders import DEFAULT_FOLDERS  # noqa: PLC0415
        from sync_core.use_cases.sync_mailbox import Cursor  # noqa: PLC0415

        services = bootstrap.services()
        mail = GraphMailSource(services.graph_http)

        def catch_up(box: FleetMailbox) -> None:
            versioned = services.stores.mailboxes.get(ORG, box.mailbox_id)
            assert versioned is not None
            for folder in DEFAULT_FOLDERS:
                page = mail.delta(versioned.value, folder, None, versioned.value.watermark)
                assert page.delta_link and not page.messages, "a mailbox to catch up must be empty"
                cursor = Cursor(caught_up=True, link=page.delta_link, written_at=datetime.now(UTC)).serialize()
                services.stores.cursors.put(ORG, box.mailbox_id, folder, cursor)

        self._each(catch_up)

    def _each(self, call: Callable[[FleetMailbox], None]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(call, self.mailboxes))

    def make_due(self) -> None:
        """Every mailbox due now (as if its poll interval had passed)."""
        from sync_core import bootstrap  # noqa: PLC0415
        from sync_core.use_cases.schedule import schedule_mailbox  # noqa: PLC0415

        deps = bootstrap.services().schedule_deps()

        def make_due(box: FleetMailbox) -> None:
            schedule_mailbox(deps, ORG, box.mailbox_id)

        self._each(make_due)

    def tick(self, timeout: float = 1_200) -> None:
        """One run of the minute timer, then wait until every queued sync is done."""
        self.host.trigger_timer(TIMER)
        self.host.drain_queues(timeout=timeout)

    def run_reports(self) -> list[Any]:
        """The last run report of every mailbox."""
        from sync_core import bootstrap  # noqa: PLC0415

        runs = bootstrap.services().stores.runs
        return [report for box in self.mailboxes for report in runs.recent(ORG, box.mailbox_id, 1)]
