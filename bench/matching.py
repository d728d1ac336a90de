"""Benchmark 4, matching: decision throughput for an org with 1,000,000 CRM records, and record-index lookups
per message with the page-level lookup (one ``RecordsIndex.lookup`` per delta page, each key its
screenings name asked once), through the product's ``pipeline.build_activities``.

Two workers, because 1,000,000 records cannot be loaded into Azurite on the reference machine in the
bench's time (``bench/records_load.py`` loads 100,000 through ``records:batch``):

* ``matching-memory``: 1,000,000 records in a ``DictRecordsIndex`` (address -> records), pages of
  1,000 messages through ``build_activities``: messages/s on one core, lookup keys per message, RSS.
* ``matching-azurite``: as many records as ``LOAD_SECONDS`` allow, loaded into the product's records table
  on Azurite through ``TableRecordsIndex.upsert`` in batches of 1,000, then the same pages decided end to
  end through ``TableRecordsIndex.lookup`` of another instance (its caches empty): messages/s and Table
  transactions per message, and the load rate, from which the time to load 1,000,000 is extrapolated (a
  lower bound: the rate falls as the org's buckets grow).

Messages: each has the mailbox owner and 1-3 other participants drawn (Zipf-like) from active CRM contacts
(60 %), unknown external addresses (25 %) and colleagues (15 %), so a page repeats its frequent
correspondents as real mail does.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.context import Context
from bench.measure import Clock, current_rss_mb, peak_rss_mb

RECORDS = 1_000_000
PAGE = 1_000
PAGES = 10
QUICK_PAGES = 4
ACTIVE_CONTACTS = 3_000
UNKNOWN_POOL = 20_000
COLLEAGUES = 50
LOAD_SECONDS = 35
QUICK_LOAD_SECONDS = 20
DOMAIN = "owner.example"
ORG = "match-org"


def run(ctx: Context) -> dict[str, Any]:
    pages = ctx.runs(PAGES, QUICK_PAGES)
    memory = [ctx.worker("matching-memory", {"pages": pages, "seed": n}) for n in range(ctx.runs(2, 1))]
    load_seconds = ctx.runs(LOAD_SECONDS, QUICK_LOAD_SECONDS)
    azurite = ctx.worker("matching-azurite", {"pages": min(pages, 3), "load_seconds": load_seconds})
    per_second = sorted(r["messages_per_second"] for r in memory)
    return {
        "records": RECORDS,
        "page": PAGE,
        "memory": memory,
        "azurite": azurite,
        "median_messages_per_second": per_second[len(per_second) // 2],
    }


# -- synthetic org and mail ----------------------------------------------------------------------------


def record_address(n: int) -> str:
    return f"person{n}@company{n % 50_000}.example"


def make_records(count: int, start: int = 0) -> list[Any]:
    from sync_core.domain.model import Record  # noqa: PLC0415

    kinds = ("contact", "candidate", "lead", "account")
    return [
        Record(f"r{n}", kinds[n % 4], f"Person {n}", emails=(record_address(n),)) for n in range(start, start + count)
    ]


def make_pages(pages: int, seed: int, records: int) -> list[list[Any]]:
    from sync_core.domain.model import EmailAddress, MailMessage  # noqa: PLC0415

    rng = random.Random(seed)
    owner = EmailAddress(f"owner@{DOMAIN}", "Owner")
    active = [record_address(rng.randrange(records)) for _ in range(ACTIVE_CONTACTS)]
    unknown = [f"someone{n}@elsewhere{n % 3_000}.example" for n in range(UNKNOWN_POOL)]
    colleagues = [f"colleague{n}@{DOMAIN}" for n in range(COLLEAGUES)]
    weights = [1 / (rank + 1) for rank in range(ACTIVE_CONTACTS)]
    now = datetime.now(UTC)

    def someone() -> EmailAddress:
        roll = rng.random()
        if roll < 0.60:
            return EmailAddress(rng.choices(active, weights)[0])
        if roll < 0.85:
            return EmailAddress(rng.choice(unknown))
        return EmailAddress(rng.choice(colleagues))

    out = []
    for p in range(pages):
        page = []
        for n in range(PAGE):
            others = tuple(someone() for _ in range(rng.choice((1, 1, 2, 3))))
            sent = rng.random() < 0.4
            page.append(
                MailMessage(
                    source_id=f"m{p}-{n}",
                    internet_message_id=f"<m{seed}.{p}.{n}@bench.example>",
                    subject="Hello",
                    sender=owner if sent else others[0],
                    to=others if sent else (owner, *others[1:]),
                    cc=(),
                    received_at=now - timedelta(minutes=n),
                    folder="sentitems" if sent else "inbox",
                )
            )
        out.append(page)
    return out


def _context() -> tuple[Any, Any]:
    from sync_core.domain.model import Mailbox, OrgSettings  # noqa: PLC0415

    mailbox = Mailbox(ORG, "mb", f"owner@{DOMAIN}", (f"owner@{DOMAIN}",), datetime.now(UTC) - timedelta(days=30))
    return mailbox, OrgSettings(internal_domains=(DOMAIN,))


class _KeyCounter:
    """Wraps a ``RecordsIndex``: counts the keys (addresses + domains) the pipeline asks for, and how many
    of them are new to the run (what a run-level cache in front of the index would still ask for)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.keys = 0
        self.new_keys = 0
        self._seen: set[str] = set()

    def lookup(self, org_id: str, addresses: Any, domains: Any) -> Any:
        addresses, domains = list(addresses), list(domains)
        asked = {*addresses, *("@" + d for d in domains)}
        self.keys += len(asked)
        self.new_keys += len(asked - self._seen)
        self._seen |= asked
        return self.inner.lookup(org_id, addresses, domains)


def decide_pages(pages: list[list[Any]], records: Any, mailbox: Any, settings: Any) -> dict[str, Any]:
    """The product's own path, ``pipeline.build_activities``, per page: one ``RecordsIndex.lookup`` of
    the keys the page's screenings name, then the decisions (and the matched messages' activities, on
    an in-memory activity store). Returns timings and counts."""
    from collections import Counter  # noqa: PLC0415

    from sync_core.testing.stores import InMemoryActivityStore  # noqa: PLC0415
    from sync_core.use_cases.pipeline import build_activities  # noqa: PLC0415

    counter = _KeyCounter(records)
    activities = InMemoryActivityStore()
    reasons: Counter[str] = Counter()
    clock = Clock()
    page_seconds: list[float] = []
    for page in pages:
        began = clock.wall
        with clock.timing():
            build_activities(page, mailbox, settings, records=counter, activities=activities, reasons=reasons)
        page_seconds.append(clock.wall - began)
    messages = sum(len(page) for page in pages)
    participants = sum(len({p.address for p in m.participants}) for page in pages for m in page)
    return {
        "messages": messages,
        "wall": clock.wall,
        "cpu": clock.cpu,
        "messages_per_second": messages / clock.wall,
        "page_seconds": page_seconds,
        "matched": reasons["matched"],
        "lookups_per_message": counter.keys / messages,
        "lookups_per_message_run_cache": counter.new_keys / messages,
        "participants_per_message": participants / messages,
    }


# -- workers -------------------------------------------------------------------------------------------


def memory_worker(params: dict[str, Any]) -> dict[str, Any]:
    from bench.sync_setup import DictRecordsIndex  # noqa: PLC0415

    rss_start = current_rss_mb()
    clock = Clock()
    with clock.timing():
        index = DictRecordsIndex()
        index.upsert(ORG, make_records(RECORDS))
    rss_loaded = current_rss_mb()
    pages = make_pages(int(params["pages"]), int(params["seed"]), RECORDS)
    mailbox, settings = _context()
    decide_pages(pages[:1], index, mailbox, settings)  # warm up
    plain = decide_pages(pages, index, mailbox, settings)
    return {
        **plain,
        "index_build_seconds": clock.wall,
        "index_rss_mb": rss_loaded - rss_start,
        "peak_rss_mb": peak_rss_mb(),
    }


def azurite_worker(params: dict[str, Any]) -> dict[str, Any]:
    from azure.data.tables import TableServiceClient  # noqa: PLC0415

    from bench.measure import HttpProbe  # noqa: PLC0415
    from bench.stack import Stack  # noqa: PLC0415
    from sync_core.adapters.tables import TableMetrics, TableRecordsIndex  # noqa: PLC0415

    stack = Stack.from_env()
    HttpProbe(stack.emulator_url, stack.storage).install()
    service = TableServiceClient.from_connection_string(stack.storage)
    prefix = "m" + format(random.getrandbits(40), "x")
    loaded, load_curve = load_records(service, prefix, float(params["load_seconds"]))
    metrics = TableMetrics()
    index = TableRecordsIndex(service, prefix, metrics)
    index.lookup(ORG, ["warm-up@example.com"], [])
    pages = make_pages(int(params["pages"]), 7, loaded)
    mailbox, settings = _context()
    before = metrics.transactions
    result = decide_pages(pages, index, mailbox, settings)
    rate = load_curve[-1]["records_per_second"] if load_curve else 0.0
    return {
        **result,
        "records_loaded": loaded,
        "load_curve": load_curve,
        "table_transactions_per_message": (metrics.transactions - before) / result["messages"],
        "extrapolated_hours_for_1m": (RECORDS / rate / 3600) if rate else None,
    }


def load_records(service: Any, prefix: str, seconds: float) -> tuple[int, list[dict[str, float]]]:
    """Load records for about ``seconds`` through the product's ``TableRecordsIndex.upsert`` in batches
    of 1,000 (what ``records:batch`` runs, without its HTTP parsing: ``bench/records_load.py`` measures
    that). Returns how many were loaded and the load rate (records/s) as the table grew."""
    from sync_core.adapters.tables import TableRecordsIndex  # noqa: PLC0415

    index = TableRecordsIndex(service, prefix)
    curve: list[dict[str, float]] = []
    loaded = 0
    deadline = time.perf_counter() + seconds
    chunk = 1_000
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        index.upsert(ORG, make_records(chunk, loaded))
        loaded += chunk
        curve.append({"records": loaded, "records_per_second": chunk / (time.perf_counter() - started)})
    return loaded, curve
