"""Where a run a CRM was given an id for stands (``GET …/mailboxes/{id}/runs/{run_id}``).

A run id is issued by "Sync now" and backfill (``schedule.request_sync`` / ``request_backfill``), carried by
the queued message, its busy retries and continuations, and stored in the run's report. Invariants:

- A report under the id answers, the newest when a continuation reported under the same id: ``done``,
  ``more`` (stopped at its budget or on a transient failure: a continuation is queued under the same
  id), ``failed`` (a configuration, grant or unexpected failure: the report says which).
- Without a report, the mailbox's due entry knows the last id it issued: ``queued`` while that run has
  not reported (it is queued or running), or how it ended without a report (``skipped``: the mailbox
  could not sync when the run came).
- Anything else is unknown (None): an id never issued for this mailbox, a report older than the
  ``REPORTS_KEPT`` newest, or an id superseded by a later request before it reported anything.
- A requested run never stays ``queued`` for ever: it stores its report even when idle, runs again after
  a busy meeting with another run, and records ``skipped``; only a disconnect (which removes the entry)
  or a lost queue message leaves the id unknown or queued until the entry's next request.
"""

from __future__ import annotations

from dataclasses import dataclass

from sync_core.ports import RunReport, RunReportStore
from sync_core.ports.scheduling import DueIndex
from sync_core.use_cases.sync_mailbox import REPORTS_KEPT


@dataclass(frozen=True)
class RunState:
    """``status``: ``queued``, ``done``, ``more``, ``failed`` or ``skipped``; ``report`` when one was stored."""

    run_id: str
    status: str
    report: RunReport | None = None


def run_state(due: DueIndex, reports: RunReportStore, org_id: str, mailbox_id: str, run_id: str) -> RunState | None:
    """The run's state; None when this mailbox never issued the id (or forgot it, see above)."""
    report = next((r for r in reports.recent(org_id, mailbox_id, REPORTS_KEPT) if r.run_id == run_id), None)
    if report is not None:
        return RunState(run_id, status_of(report), report)
    entry = due.get(org_id, mailbox_id)
    if entry is None or not run_id or entry.value.run_id != run_id:
        return None
    return RunState(run_id, entry.value.run_outcome or "queued")


def status_of(report: RunReport) -> str:
    if report.more:
        return "more"
    return "failed" if report.error else "done"
