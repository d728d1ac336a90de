"""Faults while a mailbox syncs, on the real engine (Graph over HTTPS to the emulator, every store on
Azurite). Each test ends with the same check (``assert_converged``): every matched message stored exactly
once, nothing of unmatched mail anywhere, nothing older than the watermark, and a mailbox whose status and
run history tell the truth.

Faults come from the emulator's control API (``add_fault``, ``expire_delta_tokens``, request budgets) at a
chosen point of a run (a hook after page n of our own ``MailSource`` port). ``GraphHttp`` gets a recording
``sleep`` (its injectable wait), so waits are asserted instead of slept, except where a test says so.
"""

from __future__ import annotations

import random
import time

import pytest

from sync_core.adapters.graph.http import GraphHttp
from sync_core.errors import TransientGraphError
from tests.reliability.rel_env import GraphOptions, Ledger, RelEnv, Waits, assert_converged, at_page


def statuses(env: RelEnv, user: str = "adele") -> dict[str, int]:
    return {k: int(v) for k, v in env.requests_seen(user)["by_status"].items()}


def grew(before: dict[str, int], after: dict[str, int], status: str) -> int:
    return after.get(status, 0) - before.get(status, 0)


# -- throttling ---------------------------------------------------------------------------------------


def test_a_429_storm_with_retry_after_is_waited_out_exactly_as_told_and_every_matched_message_lands_once(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard()
    user = rel.user_id("adele")
    before = statuses(rel)
    rel.client.add_fault(status=429, retry_after=7, count=6, mailbox=user)
    waits = Waits()

    outcome = rel.run(graph=GraphOptions(waits=waits))

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert grew(before, statuses(rel), "429") == 6
    assert waits.seconds == [7.0] * 6  # Retry-After, never less and never a guess
    assert_converged(rel, ledger)


def test_a_429_storm_without_retry_after_backs_off_with_bounded_jitter_and_converges(rel: RelEnv) -> None:
    ledger = Ledger(rel).standard()
    before = statuses(rel)
    rel.client.add_fault(status=429, count=6, mailbox=rel.user_id("adele"))
    waits = Waits()

    outcome = rel.run(graph=GraphOptions(waits=waits))

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert grew(before, statuses(rel), "429") == 6
    assert len(waits.seconds) == 6 and all(0 <= s <= 30.0 for s in waits.seconds)
    assert_converged(rel, ledger)


def test_the_mailboxs_own_request_budget_throttles_for_real_and_the_sync_waits_it_out_in_real_time(
    rel: RelEnv,
) -> None:
    """Not an injected fault: the emulator's per-mailbox budget (4 requests per 2 s) answers 429 with the
    real Retry-After, and the run really sleeps it."""
    ledger = Ledger(rel).standard(matched=9, unmatched=3, sent=3, old=1)
    before = statuses(rel)
    rel.client.configure(mailbox_request_budget=4, budget_window_s=2)
    waits = Waits(real=True)
    started = time.monotonic()

    outcome = rel.run(page_size=3, graph=GraphOptions(waits=waits))

    rel.client.configure(mailbox_request_budget=10_000, budget_window_s=600)
    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    throttled = grew(before, statuses(rel), "429")
    assert throttled >= 1 and len(waits.seconds) == throttled
    assert time.monotonic() - started >= sum(waits.seconds)
    assert_converged(rel, ledger)


def test_a_storm_longer_than_the_wait_budget_ends_the_run_as_more_keeps_its_progress_and_the_next_run_converges(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard()
    user = rel.user_id("adele")
    storm = lambda: rel.client.add_fault(status=503, retry_after=45, count=-1, mailbox=user)  # noqa: E731

    first = rel.run(graph=GraphOptions(max_total_wait=100.0), after_page=at_page(2, storm))

    assert first.status == "more" and first.retry_after == 45.0
    assert first.report is not None and first.report.more and first.report.error_class == "transient"
    assert first.report.activities_created > 0  # the pages before the storm are kept
    view = rel.crm_view()
    assert view["status"] == "active" and view["status_reason"] == ""  # throttled is not broken
    assert view["last_error"]["class"] == "transient" and view["last_error"]["message"]
    kept = set(rel.activities())

    rel.client.clear_faults()
    second = rel.run()

    assert second.status == "done" and second.report is not None and second.report.error == ""
    assert second.report.activities_created == len(ledger.expected("matched")) - len(kept)
    assert second.report.activities_merged == 0
    assert_converged(rel, ledger)


# -- server errors, slowness, broken connections ----------------------------------------------------------


def test_503_and_504_answers_on_delta_batch_and_attachment_calls_are_retried_and_the_sync_converges(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel)
    pdf = {"name": "terms.pdf", "content_type": "application/pdf", "size": 2048}
    for _ in range(4):
        ledger.matched(attachments=[pdf])
    ledger.standard(matched=6, unmatched=3, sent=2, old=1)
    user = rel.user_id("adele")
    before = statuses(rel)
    rel.client.add_fault(status=503, count=2, mailbox=user, path_contains="/delta")
    rel.client.add_fault(status=504, count=2, mailbox=user, path_contains="/attachments")
    rel.client.add_fault(status=504, count=1, mailbox=user)

    outcome = rel.run(graph=GraphOptions())

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    after = statuses(rel)
    assert (grew(before, after, "503"), grew(before, after, "504")) == (2, 3)
    stored = assert_converged(rel, ledger)
    with_files = [a for a in stored.values() if a.attachments]
    assert len(with_files) == 4 and all(a.attachments[0].name == "terms.pdf" for a in with_files)

    # An idle poll is one $batch: its sub-requests answered 503 are retried as a smaller batch.
    late = ledger.matched()
    rel.client.add_fault(status=503, retry_after=2, count=2, mailbox=user)
    waits = Waits()
    again = rel.run(graph=GraphOptions(waits=waits))
    assert again.status == "done" and again.report is not None and again.report.activities_created == 1
    assert waits.seconds == [2.0]
    assert late.internet_message_id in assert_converged(rel, ledger)


def test_responses_slower_than_the_client_read_timeout_are_abandoned_retried_and_the_sync_converges(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard()
    rel.client.add_fault(delay_ms=1500, count=3, mailbox=rel.user_id("adele"))
    waits = Waits()
    started = time.monotonic()

    outcome = rel.run(graph=GraphOptions(timeout=(3.0, 0.5), waits=waits))

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert len(waits.seconds) >= 3  # a backoff per timed-out request (the emulator may add a 429 of its own)
    assert time.monotonic() - started < 15  # each slow answer cost the read timeout, not its 1.5 s
    assert_converged(rel, ledger)


def test_connections_dropped_without_an_answer_are_retried_and_the_sync_converges(rel: RelEnv) -> None:
    ledger = Ledger(rel).standard()
    before = statuses(rel)
    rel.client.add_fault(drop_connection=True, count=4, mailbox=rel.user_id("adele"))
    waits = Waits()

    outcome = rel.run(graph=GraphOptions(waits=waits))

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert grew(before, statuses(rel), "dropped") == 4 and len(waits.seconds) == 4
    assert_converged(rel, ledger)


def test_a_graph_that_stays_unreachable_ends_the_run_as_more_and_never_marks_the_mailbox_broken(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard(matched=4, unmatched=2, sent=1, old=1)
    rel.client.add_fault(drop_connection=True, count=-1, mailbox=rel.user_id("adele"))

    down = rel.run(graph=GraphOptions(max_attempts=3))

    assert down.status == "more" and down.report is not None and down.report.error_class == "transient"
    assert rel.mailbox().status.value == "active"
    rel.client.clear_faults()
    assert rel.run().status == "done"
    assert_converged(rel, ledger)


@pytest.mark.parametrize("seed", [11, 29])
def test_a_seeded_mix_of_every_graph_fault_across_pages_still_converges(rel: RelEnv, seed: int) -> None:
    """One or two faults of a random kind before each page's requests (more in a row than ``max_attempts``
    would rightly end the run as ``more``)."""
    ledger = Ledger(rel).standard(matched=15, unmatched=6, sent=5, old=2)
    user, chooser = rel.user_id("adele"), random.Random(seed)
    kinds = [
        {"status": 429, "retry_after": 1},
        {"status": 429},
        {"status": 503},
        {"status": 504, "retry_after": 1},
        {"drop_connection": True},
        {"delay_ms": 800},
    ]
    injected: list[dict[str, object]] = []

    def inject(_page: int, _delta: object) -> None:
        for _ in range(chooser.choice((1, 2))):
            kind = chooser.choice(kinds)
            injected.append(kind)
            rel.client.add_fault(count=1, mailbox=user, **kind)

    inject(0, None)
    waits = Waits()

    outcome = rel.run(page_size=3, graph=GraphOptions(timeout=(3.0, 0.4), waits=waits), after_page=inject)

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert len(injected) >= 10
    assert len({str(sorted(k.items())) for k in injected}) >= 4
    rel.client.clear_faults()  # those added after the last page found no request left
    assert_converged(rel, ledger)


# -- lost delta state ---------------------------------------------------------------------------------


def test_sync_state_lost_in_the_middle_of_a_run_restarts_the_folder_from_the_watermark_without_duplicates(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard(matched=12, unmatched=4, sent=4, old=3)
    expired: list[dict[str, object]] = []
    lose_state = lambda: expired.append(rel.client.expire_delta_tokens(rel.user_id("adele")))  # noqa: E731
    before = statuses(rel)

    outcome = rel.run(after_page=at_page(2, lose_state))

    assert expired and outcome.status == "done" and outcome.report is not None, outcome
    assert outcome.report.error == ""
    assert grew(before, statuses(rel), "410") == 1  # the next page's link answered 410 once
    assert outcome.report.activities_created == len(ledger.expected("matched"))  # re-read pages merge nothing
    assert_converged(rel, ledger)
    # The folder was re-read from the watermark: the next poll is idle and one request.
    idle = rel.run()
    assert idle.report is not None and idle.report.graph_requests == 1 and idle.report.activities_created == 0


def test_a_graph_http_client_never_waits_longer_than_its_budget_even_when_told_to(rel: RelEnv) -> None:
    """The wait budget holds per client: a Retry-After beyond it is handed back to the caller at once."""
    user = rel.user_id("adele")
    rel.client.add_fault(status=429, retry_after=3600, count=1, mailbox=user)
    waits = Waits()
    http = GraphHttp(rel.session, rel.tenant.graph_url, rel.token_source, max_total_wait=60.0, sleep=waits)

    with pytest.raises(TransientGraphError, match="wait budget") as raised:
        http.get(f"users/{user}/mailFolders('inbox')")

    assert raised.value.retry_after == 3600.0 and waits.seconds == []
