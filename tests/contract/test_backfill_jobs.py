"""``BackfillJobStore``: the in-memory double and the Table adapter (Azurite) keep the same contract."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.adapters.table_backfill import TableBackfillJobStore
from sync_core.ports import BackfillJob, BackfillState
from sync_core.testing.backfill import InMemoryBackfillJobStore

T0 = datetime(2026, 11, 20, 9, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture(params=["memory", "azurite"])
def jobs(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return InMemoryBackfillJobStore()
    service: TableServiceClient = request.getfixturevalue("table_service")
    return TableBackfillJobStore(service, request.getfixturevalue("table_prefix"))


def a_job(job_id: str = "a" * 32, **fields: Any) -> BackfillJob:
    return BackfillJob("org-1", "mb-1", job_id, T0, addresses=("dan@talent.example",), record_ids=("c-dan",), **fields)


def test_a_job_comes_back_as_stored_and_a_stale_version_changes_nothing(jobs: Any) -> None:
    first = jobs.put(a_job(reasons={"matched": 2}, per_record={"c-dan": 2}, since=T0), None)
    assert first is not None and jobs.get("org-1", "mb-1", "a" * 32).value == first.value
    assert first.value.reasons == {"matched": 2} and first.value.since == T0
    assert jobs.put(a_job(), None) is None  # it exists already
    running = jobs.put(replace(first.value, state=BackfillState.RUNNING), first)
    assert running is not None
    assert jobs.put(replace(first.value, addresses=("late@x.example",)), first) is None  # stale: lost to the claim
    assert jobs.get("org-1", "mb-1", "a" * 32).value.state is BackfillState.RUNNING
    assert jobs.get("org-1", "mb-2", "a" * 32) is None


def test_the_open_job_pointer_is_compare_and_set(jobs: Any) -> None:
    assert jobs.open_job("org-1", "mb-1") is None
    assert jobs.set_open_job("org-1", "mb-1", "a" * 32, None)
    assert not jobs.set_open_job("org-1", "mb-1", "b" * 32, None)  # someone points at a job already
    pointer = jobs.open_job("org-1", "mb-1")
    assert pointer is not None and pointer.value == "a" * 32
    assert jobs.set_open_job("org-1", "mb-1", "b" * 32, pointer)
    assert not jobs.set_open_job("org-1", "mb-1", None, pointer)  # stale
    current = jobs.open_job("org-1", "mb-1")
    assert jobs.set_open_job("org-1", "mb-1", None, current)
    assert jobs.open_job("org-1", "mb-1") is None
    assert jobs.set_open_job("org-1", "mb-1", "c" * 32, None)


def test_a_record_remembers_its_latest_job_per_mailbox(jobs: Any) -> None:
    jobs.link_records("org-1", "mb-1", "a" * 32, ["c-dan", "c-erin"])
    jobs.link_records("org-1", "mb-2", "b" * 32, ["c-dan"])
    jobs.link_records("org-1", "mb-1", "c" * 32, ["c-dan"])
    assert jobs.jobs_of_record("org-1", "c-dan") == {"mb-1": "c" * 32, "mb-2": "b" * 32}
    assert jobs.jobs_of_record("org-1", "c-erin") == {"mb-1": "a" * 32}
    assert jobs.jobs_of_record("org-2", "c-dan") == {}


def test_a_failed_job_comes_back_with_its_attempts_and_error_code(jobs: Any) -> None:
    first = jobs.put(a_job(), None)
    assert first is not None and (first.value.attempts, first.value.error_code) == (0, "")
    failed = replace(first.value, state=BackfillState.FAILED, attempts=3, error_code="attempts_exhausted",
                     error="the search failed 3 times in a row", finished_at=T0)  # fmt: skip
    assert jobs.put(failed, first) is not None
    assert jobs.get("org-1", "mb-1", "a" * 32).value == failed
