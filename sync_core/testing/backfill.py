"""The in-memory double of ``BackfillJobStore`` (contract-tested against ``TableBackfillJobStore``)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence

from sync_core.adapters.table_codec import dataclass_entity, dataclass_from_entity
from sync_core.ports import BackfillJob, Versioned


class InMemoryBackfillJobStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self._jobs: dict[tuple[str, str, str], Versioned[BackfillJob]] = {}
        self._open: dict[tuple[str, str], Versioned[str]] = {}
        self._links: dict[tuple[str, str], dict[str, str]] = {}

    def get(self, org_id: str, mailbox_id: str, job_id: str) -> Versioned[BackfillJob] | None:
        return self._jobs.get((org_id, mailbox_id, job_id))

    def put(self, job: BackfillJob, expected: Versioned[BackfillJob] | None) -> Versioned[BackfillJob] | None:
        key = (job.org_id, job.mailbox_id, job.job_id)
        with self._lock:
            current = self._jobs.get(key)
            if (current is None) != (expected is None) or (current and expected and current.etag != expected.etag):
                return None
            stored = Versioned(dataclass_from_entity(BackfillJob, dataclass_entity(job, "", "")), self._etag())
            self._jobs[key] = stored
            return stored

    def open_job(self, org_id: str, mailbox_id: str) -> Versioned[str] | None:
        return self._open.get((org_id, mailbox_id))

    def set_open_job(
        self, org_id: str, mailbox_id: str, job_id: str | None, expected: Versioned[str] | None
    ) -> bool:
        key = (org_id, mailbox_id)
        with self._lock:
            current = self._open.get(key)
            if (current is None) != (expected is None) or (current and expected and current.etag != expected.etag):
                return False
            if job_id is None:
                self._open.pop(key, None)
            else:
                self._open[key] = Versioned(job_id, self._etag())
            return True

    def link_records(self, org_id: str, mailbox_id: str, job_id: str, record_ids: Sequence[str]) -> None:
        with self._lock:
            for record_id in record_ids:
                self._links.setdefault((org_id, record_id), {})[mailbox_id] = job_id

    def jobs_of_record(self, org_id: str, record_id: str) -> Mapping[str, str]:
        return dict(self._links.get((org_id, record_id), {}))

    def jobs(self) -> list[BackfillJob]:
        """Every job (tests)."""
        return [versioned.value for versioned in self._jobs.values()]

    def _etag(self) -> str:
        return f"W/{next(self._etags)}"
