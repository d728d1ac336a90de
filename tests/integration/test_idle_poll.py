"""An idle poll on the real adapters: Graph over HTTPS (the emulator), every store on Azurite.

Table round trips are tallied per table and HTTP method through the stores' own ``TableMetrics`` hook
(the SDK's ``raw_response_hook``), on one set of stores kept for the whole test, as a worker keeps its
``Services``: each table's lazy creation happens once, in the first sync, before anything is measured.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

from sync_core.adapters.table_client import TableMetrics
from sync_core.adapters.tables import TableStores
from sync_core.testing.mail import FixedClock
from sync_core.use_cases.sync_mailbox import IDLE_REFRESH, Cursor, sync_lease_key
from tests.integration.sync_env import ADELE, CAROL, ORG, STRANGER, SyncEnv, sync_env

__all__ = ["sync_env"]  # the fixture

WRITES = {"POST", "PUT", "PATCH", "MERGE", "DELETE"}


class TalliedMetrics(TableMetrics):
    """The product's round-trip counter, also tallying each round trip by (method, table)."""

    def __init__(self) -> None:
        super().__init__()
        self.tally: Counter[tuple[str, str]] = Counter()

    def count(self, _response: object = None) -> None:
        super().count(_response)
        request = getattr(_response, "http_request", None)
        if request is not None:
            segment = unquote(urlsplit(request.url).path).rstrip("/").rsplit("/", 1)[-1]
            self.tally[(request.method, segment.partition("(")[0])] += 1


class Metered:
    def __init__(self, env: SyncEnv) -> None:
        self.metrics = TalliedMetrics()
        self.stores = TableStores.create(env.service, env.prefix, self.metrics)
        self.prefix = env.prefix

    def writes_during(self, action: object) -> Counter[str]:
        """Write round trips per table (prefix removed; ``$batch`` for entity group transactions, ``Tables``
        for table creations) made while ``action()`` ran."""
        before = Counter(self.metrics.tally)
        action()  # type: ignore[operator]
        writes: Counter[str] = Counter()
        for (method, table), n in (self.metrics.tally - before).items():
            if method in WRITES:
                writes[table.removeprefix(self.prefix)] += n
        return writes


def test_an_idle_poll_makes_one_graph_request_and_writes_nothing_to_any_table(sync_env: SyncEnv) -> None:
    env, metered = sync_env, Metered(sync_env)
    adele = env.address("adele")
    env.deliver("adele", subject="Hello", from_=CAROL, to=[adele])
    env.deliver("adele", subject="Pitch", from_=STRANGER, to=[adele])
    first = env.sync(ADELE, stores=metered.stores)
    assert first.status == "done" and first.report is not None and first.report.activities_created == 1
    cursors = metered.stores.cursors.get_all(ORG, ADELE)
    reports = metered.stores.runs.recent(ORG, ADELE, 50)
    seen = env.requests_seen("adele")["requests"]
    outcomes = []

    writes = metered.writes_during(lambda: outcomes.append(env.sync(ADELE, stores=metered.stores)))

    [idle] = outcomes
    assert idle.status == "done" and idle.report is not None
    assert writes == Counter()
    assert idle.report.graph_requests == 1  # one $batch
    assert env.requests_seen("adele")["requests"] - seen == 2  # its two delta sub-requests, nothing else
    assert (idle.report.activities_created, idle.report.activities_merged) == (0, 0)
    assert metered.stores.cursors.get_all(ORG, ADELE) == cursors
    assert metered.stores.runs.recent(ORG, ADELE, 50) == reports
    assert len(env.activities()) == 1


def test_an_idle_poll_after_idle_refresh_stores_new_delta_links_and_its_report(sync_env: SyncEnv) -> None:
    env, metered = sync_env, Metered(sync_env)
    env.clock = FixedClock(datetime.now(UTC))  # type: ignore[assignment]
    clock: FixedClock = env.clock  # type: ignore[assignment]
    assert env.sync(ADELE, stores=metered.stores).status == "done"
    written = metered.stores.cursors.get_all(ORG, ADELE)
    clock.moment += IDLE_REFRESH - timedelta(seconds=1)
    assert metered.writes_during(lambda: env.sync(ADELE, stores=metered.stores)) == Counter()
    clock.moment += timedelta(seconds=1)
    outcomes = []

    writes = metered.writes_during(lambda: outcomes.append(env.sync(ADELE, stores=metered.stores)))

    [refresh] = outcomes
    assert refresh.status == "done" and refresh.report is not None and refresh.report.graph_requests == 1
    # The lease taken (at the version read with the cursors: its row in the mailbox's partition of the
    # cursors table), then one transaction: both cursors, the report and the lease's release.
    assert writes == Counter({"cursors": 1, "$batch": 1})
    stored = {folder: Cursor.parse(value) for folder, value in metered.stores.cursors.get_all(ORG, ADELE).items()}
    assert set(stored) == {"inbox", "sentitems"}
    for folder, cursor in stored.items():
        assert cursor.caught_up and cursor.written_at == clock.moment
        assert cursor.link != Cursor.parse(written[folder]).link
    assert metered.stores.runs.recent(ORG, ADELE, 1)[0].run_id == refresh.report.run_id
    # Right after the refresh the mailbox is idle again.
    assert metered.writes_during(lambda: env.sync(ADELE, stores=metered.stores)) == Counter()


def test_a_poll_that_finds_a_new_message_takes_the_lease_and_stores_it_exactly_once(sync_env: SyncEnv) -> None:
    env, metered = sync_env, Metered(sync_env)
    adele = env.address("adele")
    assert env.sync(ADELE, stores=metered.stores).status == "done"
    new = env.deliver("adele", subject="Fresh news", from_=CAROL, to=[adele])
    outcomes = []

    writes = metered.writes_during(lambda: outcomes.append(env.sync(ADELE, stores=metered.stores)))

    [found] = outcomes
    assert found.status == "done" and found.report is not None
    assert (found.report.activities_created, found.report.graph_requests) == (1, 1)
    # The lease taken and renewed before the save (its row in the cursors table), the activity's rows, then
    # both folders' cursors, the report and the lease's release in one transaction.
    assert writes["cursors"] == 1 + 1 and "leases" not in writes and "runs" not in writes
    assert writes["$batch"] >= 1 + 1
    idle = env.sync(ADELE, stores=metered.stores)
    assert idle.report is not None and idle.report.activities_created == 0
    assert set(env.activities()) == {new["internetMessageId"]}  # env.activities() fails on a duplicate
    now = datetime.now(UTC)
    assert metered.stores.leases.acquire(sync_lease_key(ORG, ADELE), "next-run", now + timedelta(minutes=1), now)
