"""Timer triggers: NCRONTAB / TimeSpan schedules and one runner thread per timer function.

NCRONTAB (Azure Functions) has six fields, seconds FIRST: ``sec min hour day month dow``.
croniter reads a sixth field as seconds LAST (``min hour day month dow sec``), so
:func:`ncrontab_to_croniter` rotates the seconds field to the end. NCRONTAB requires day-of-month
AND day-of-week to match when both are restricted (vixie cron ORs them), hence ``day_or=False``.

Invariants:

* Times are UTC (``WEBSITE_TIME_ZONE`` is not honoured).
* A runner never overlaps invocations of its own function: occurrences missed while the
  function ran are skipped; ``past_due`` is true when an invocation starts more than
  :data:`PAST_DUE_AFTER` after its scheduled time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from azure.functions.timer import TimerRequest
from croniter import croniter

from devhost.settings import SettingsError, parse_timespan

log = logging.getLogger("devhost")

PAST_DUE_AFTER = timedelta(seconds=1)


def ncrontab_to_croniter(expression: str) -> str:
    """Rotate NCRONTAB's leading seconds field to croniter's trailing seconds field."""
    fields = expression.split()
    if len(fields) != 6:
        raise SettingsError(
            f"NCRONTAB schedule needs 6 fields (sec min hour day month dow): {expression!r}"
        )
    converted = " ".join(fields[1:] + fields[:1])
    if not croniter.is_valid(converted):
        raise SettingsError(f"invalid NCRONTAB schedule: {expression!r}")
    return converted


class Schedule(Protocol):
    def next_after(self, moment: datetime) -> datetime:
        """First occurrence strictly after ``moment`` (aware UTC datetimes)."""
        ...


@dataclass(frozen=True)
class CronSchedule:
    expression: str  # croniter form

    def next_after(self, moment: datetime) -> datetime:
        result: datetime = croniter(self.expression, moment, day_or=False).get_next(datetime)
        return result


@dataclass(frozen=True)
class IntervalSchedule:
    """TimeSpan schedules (``hh:mm:ss``), allowed by the Functions host on dedicated plans."""

    interval: timedelta

    def next_after(self, moment: datetime) -> datetime:
        return moment + self.interval


def parse_schedule(text: str) -> Schedule:
    """NCRONTAB (6 fields) or TimeSpan schedule; ``%SETTING%`` must already be resolved."""
    if ":" in text and len(text.split()) == 1:
        interval = parse_timespan(text)
        if interval <= timedelta(0):
            raise SettingsError(f"TimeSpan schedule must be positive: {text!r}")
        return IntervalSchedule(interval)
    return CronSchedule(ncrontab_to_croniter(text))


def timer_request(past_due: bool, last: datetime | None, next_: datetime) -> TimerRequest:
    """A ``func.TimerRequest`` shaped like the host's (ScheduleStatus Last/Next/LastUpdated)."""
    now = datetime.now(UTC)
    status = {
        "Last": (last or now).isoformat(),
        "Next": next_.isoformat(),
        "LastUpdated": now.isoformat(),
    }
    return TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})


class TimerRunner:
    """Fires one timer function on its schedule until ``stop`` is set."""

    def __init__(
        self,
        name: str,
        schedule: Schedule,
        run_on_startup: bool,
        fire: Callable[[TimerRequest], object],
        stop: threading.Event,
    ) -> None:
        self.name = name
        self._schedule = schedule
        self._run_on_startup = run_on_startup
        self._fire = fire
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=f"devhost-timer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        now = datetime.now(UTC)
        due = self._schedule.next_after(now)
        if self._run_on_startup:
            self._fire(timer_request(False, None, due))
        last: datetime | None = None
        while not self._stop.wait(max(0.0, (due - datetime.now(UTC)).total_seconds())):
            started = datetime.now(UTC)
            following = self._schedule.next_after(max(started, due))
            self._fire(timer_request(started - due > PAST_DUE_AFTER, last, following))
            last, due = due, self._schedule.next_after(max(datetime.now(UTC), due))
