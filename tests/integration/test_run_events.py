"""The sync run's operational event on the real adapters: Graph (the HTTPS emulator, its throttling faults)
and Table storage (Azurite). The throttling figures come from GraphMailSource's ``usage_for``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.use_cases import telemetry
from tests.integration.sync_env import ADELE, CAROL, STRANGER, SyncEnv, sync_env

__all__ = ["sync_env"]  # the fixture


class Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def events(self) -> list[dict[str, Any]]:
        return [e for e in map(telemetry.parse, self.lines) if e is not None]


@pytest.fixture
def events() -> Iterator[Events]:
    handler = Events()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


def test_a_run_through_429s_reports_the_throttled_answers_and_the_seconds_it_waited(
    sync_env: SyncEnv, events: Events
) -> None:
    env = sync_env
    adele, user = env.address("adele"), env.user_id("adele")
    received = datetime.now(UTC) - timedelta(minutes=5)
    env.deliver_many("adele", 3, start=received, subject="Quarterly numbers", from_=CAROL, to=[adele])
    env.deliver("adele", subject="Private matter", from_=STRANGER, to=[adele])
    env.client.add_fault(status=429, retry_after=1, count=2, mailbox=user)

    outcome = env.sync(ADELE)

    assert outcome.status == "done" and outcome.report is not None
    [event] = events.events()
    assert (event["event"], event["outcome"], event["mailbox_id"]) == ("sync_run", "done", ADELE)
    assert event["throttled"] == 2 and event["throttle_wait_s"] == 2.0  # Retry-After: 1, twice
    assert event["requests"] == outcome.report.graph_requests >= 3  # the two 429s were requests too
    assert event["reasons"]["matched"] == 3 and event["reasons"]["unmatched"] == 1
    assert event["activities_created"] == 3 and event["mail_age_max_s"] >= 240
    text = "\n".join(events.lines)
    assert CAROL not in text and STRANGER not in text and adele not in text and "Quarterly" not in text
