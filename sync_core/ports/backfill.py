"""The record backfill's jobs (``use_cases.record_backfill``): one coalesced job per mailbox, and which
job each record's new addresses went to.

Invariants of a ``BackfillJobStore`` (tests/contract runs the same cases on both implementations):
- ``put`` is compare-and-set on the version read (None: the job must not exist yet); a stale version
  changes nothing and returns None. So terms merged into a queued job and the runner claiming it
  (``queued`` → ``running``) can never both win: a merge that lost re-reads and finds it running.
- ``open_job`` is a per-mailbox pointer to the job still taking new terms, changed only by
  ``set_open_job``'s compare-and-set; a pointer to a job that has started is stale (merges check state).
- ``link_records`` is an idempotent upsert: a record's latest job per mailbox.
- Jobs come back as stored (datetimes aware UTC); every method is scoped by org and mailbox.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sync_core.ports.storage import Versioned


class BackfillState(StrEnum):
    """``queued`` (taking new terms until it starts), ``running`` (started; continuations resume it),
    ``done``, ``skipped`` (the mailbox could not sync, or the setting was switched off) or ``failed``
    (a configuration or grant failure, a provider unavailable for a day, or processing that kept
    failing: ``error_code`` says which, ``error`` what to do)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class BackfillJob:
    """The search of one mailbox for the new addresses and domains of some records.

    ``since``: the window's start, fixed when the job starts (continuations keep it). ``progress``:
    where a continuation resumes (opaque to all but the use case). ``reasons``: messages found, counted
    by the pipeline's reason (plus ``search_capped``, ``folders_gone``); ``per_record``: activities
    logged (created or linked) per record id of the job. ``attempts``: invocations in a row that began
    work on the job and did not move it forward (raised, or died); a checkpoint resets it, and the job
    fails at the use case's bound. ``error_code``: the stable code of a failed or skipped job."""

    org_id: str
    mailbox_id: str
    job_id: str
    created_at: datetime
    state: BackfillState = BackfillState.QUEUED
    addresses: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    record_ids: tuple[str, ...] = ()
    since: datetime | None = None
    progress: str = ""
    reasons: Mapping[str, int] = field(default_factory=dict)
    per_record: Mapping[str, int] = field(default_factory=dict)
    activities_created: int = 0
    activities_merged: int = 0
    searches: int = 0
    finished_at: datetime | None = None
    error: str = ""
    attempts: int = 0
    error_code: str = ""


class BackfillJobStore(Protocol):
    def get(self, org_id: str, mailbox_id: str, job_id: str) -> Versioned[BackfillJob] | None: ...

    def put(self, job: BackfillJob, expected: Versioned[BackfillJob] | None) -> Versioned[BackfillJob] | None:
        """Store ``job`` if the stored one is still ``expected`` (None: there must be none); None when
        another writer changed it first."""

    def open_job(self, org_id: str, mailbox_id: str) -> Versioned[str] | None:
        """The id of the mailbox's job taking new terms (it may have started since: check its state)."""

    def set_open_job(
        self, org_id: str, mailbox_id: str, job_id: str | None, expected: Versioned[str] | None
    ) -> bool:
        """Point at ``job_id`` (None: clear) if the pointer is still ``expected``; False otherwise."""

    def link_records(self, org_id: str, mailbox_id: str, job_id: str, record_ids: Sequence[str]) -> None:
        """Remember ``job_id`` as each record's latest job in this mailbox."""

    def jobs_of_record(self, org_id: str, record_id: str) -> Mapping[str, str]:
        """Mailbox id → the record's latest job id there (empty when none)."""
