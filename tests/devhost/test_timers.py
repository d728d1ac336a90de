"""Timer triggers: NCRONTAB conversion, schedules, runOnStartup and manual triggers."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from devhost import LocalHost
from devhost.settings import SettingsError
from devhost.timers import CronSchedule, IntervalSchedule, ncrontab_to_croniter, parse_schedule

StartHost = Callable[..., LocalHost]
Events = Callable[[LocalHost, str], list[dict[str, Any]]]

START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday


def test_ncrontab_seconds_field_moves_to_the_end_for_croniter() -> None:
    assert ncrontab_to_croniter("30 5 9 * * 1-5") == "5 9 * * 1-5 30"
    schedule = parse_schedule("30 5 9 * * 1-5")
    assert schedule.next_after(START) == datetime(2024, 1, 1, 9, 5, 30, tzinfo=UTC)
    assert schedule.next_after(datetime(2024, 1, 5, 10, tzinfo=UTC)) == datetime(2024, 1, 8, 9, 5, 30, tzinfo=UTC)


def test_every_five_minutes_and_every_second_schedules() -> None:
    five = parse_schedule("0 */5 * * * *")
    assert five.next_after(START + timedelta(seconds=1)) == START + timedelta(minutes=5)
    every = parse_schedule("* * * * * *")
    assert every.next_after(START) == START + timedelta(seconds=1)


def test_day_of_month_and_day_of_week_must_both_match_like_ncrontab() -> None:
    friday_13th = parse_schedule("0 0 0 13 * 5")
    assert friday_13th.next_after(START) == datetime(2024, 9, 13, tzinfo=UTC)


def test_a_timespan_schedule_is_an_interval() -> None:
    assert parse_schedule("00:00:05") == IntervalSchedule(timedelta(seconds=5))


@pytest.mark.parametrize("bad", ["* * * * *", "61 * * * * *", "0 0 0 32 * *", "00:00:00"])
def test_invalid_schedules_are_rejected(bad: str) -> None:
    with pytest.raises(SettingsError):
        parse_schedule(bad)


def test_a_cron_schedule_keeps_the_converted_expression() -> None:
    assert parse_schedule("0 0 * * * *") == CronSchedule("0 * * * * 0")


def test_a_timer_fires_on_its_every_second_schedule(devhost_start: StartHost, devhost_events: Events) -> None:
    host = devhost_start({"TICK_SCHEDULE": "* * * * * *"})
    deadline = time.monotonic() + 5
    while len(devhost_events(host, "tick")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ticks = devhost_events(host, "tick")
    assert len(ticks) >= 2
    assert not any(t["past_due"] for t in ticks)


def test_run_on_startup_fires_once_when_the_host_starts(devhost_start: StartHost, devhost_events: Events) -> None:
    host = devhost_start()
    deadline = time.monotonic() + 5
    while not devhost_events(host, "startup_tick") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert devhost_events(host, "startup_tick") == [{"kind": "startup_tick", "past_due": False}]
    assert devhost_events(host, "tick") == []  # yearly schedule, no runOnStartup


def test_trigger_timer_runs_the_function_once_synchronously(devhost_start: StartHost, devhost_events: Events) -> None:
    host = devhost_start(run_timers=False)
    host.trigger_timer("tick")
    assert devhost_events(host, "tick") == [{"kind": "tick", "past_due": False}]
    assert devhost_events(host, "startup_tick") == []  # run_timers=False: nothing scheduled ran


def test_the_admin_endpoint_fires_a_timer_and_needs_the_key_when_keys_are_enforced(
    devhost_start: StartHost, devhost_events: Events
) -> None:
    host = devhost_start({"LOCAL_FUNCTIONS_KEY": "k3y"}, run_timers=False)
    url = f"{host.origin}/admin/functions/tick"
    denied = requests.post(url, json={"input": ""}, timeout=5)
    assert denied.status_code == 401
    assert devhost_events(host, "tick") == []
    fired = requests.post(url, json={"input": ""}, headers={"x-functions-key": "k3y"}, timeout=5)
    assert fired.status_code == 202
    assert len(devhost_events(host, "tick")) == 1


def test_the_admin_endpoint_rejects_unknown_and_http_functions(devhost_start: StartHost) -> None:
    host = devhost_start(run_timers=False)
    unknown = requests.post(f"{host.origin}/admin/functions/nope", json={"input": ""}, timeout=5)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    http = requests.post(f"{host.origin}/admin/functions/item", json={"input": ""}, timeout=5)
    assert (http.status_code, http.json()["error"]["code"]) == (400, "bad_request")
    bad = requests.post(f"{host.origin}/admin/functions/tick", data=b"not json", timeout=5)
    assert bad.status_code == 400
