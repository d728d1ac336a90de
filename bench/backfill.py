"""Benchmark 1, backfill throughput: one mailbox of 10,000 messages (``bench.mail_mix``), synced from scratch
by the product's ``sync_mailbox`` with every adapter real (Graph over HTTPS, Table storage on Azurite).

Per run (a fresh worker process and fresh tables): wall and CPU time, peak RSS, Graph requests (HTTP, and
the sub-requests the emulator served), Table transactions, and where the wall time went (``Phases``).
The physical bound is the minimum number of Graph round trips times the injected latency:

* delta pages: every folder's messages at the largest page size the emulator serves (1,000), one page
  after the other (each page's nextLink comes with it);
* attachment listings of the matched messages with attachments: one Graph request each, and Graph runs
  at most 4 requests of a mailbox at a time (``$batch`` or not), so at least ceil(k / 4) round trips.

The floor, measured in the same run (the "raw" worker, interleaved with the product's runs): a bare client
(plain ``requests``, no processing, no storage) making exactly the requests a backfill needs, against the
same emulator with the same latency: every delta page of both folders at the largest page size, one after
the other, and the attachment listing of each matched message with attachments, started as soon as its
page arrived (so they overlap the next page, as the product's do); at most four requests in flight in all,
Graph's concurrency limit per app and mailbox (the emulator answers a fifth with 429). Goal 1 is the product's
wall over this floor: it counts what the emulator (rendering 1,000 messages a page), TLS and JSON decoding
cost any client, which the bound above does not.
"""

from __future__ import annotations

import cProfile
import io
import math
import pstats
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.context import Context
from bench.mail_mix import MailMix, Person, backfill_mix, delivery_fields
from bench.measure import Clock, HttpProbe, Phases, current_rss_mb, median, peak_rss_mb
from bench.stack import ROOT, Stack, consented_tenant, deliver_all
from bench.sync_setup import (
    ORG,
    BenchMailbox,
    BenchTables,
    DictRecordsIndex,
    memory_deps,
    records_from_json,
    records_to_json,
)

MAX_PAGE_SIZE = 1000
GRAPH_MAILBOX_CONCURRENCY = 4
RECORDS_PREFIX = "benchrecords"


# -- the shared set-up ---------------------------------------------------------------------------------


def seeded_mailbox(ctx: Context) -> dict[str, Any]:
    """One tenant, Adele's mailbox filled with the mix, the CRM records loaded; built once per bench run."""
    return ctx.shared("backfill-mailbox", lambda: _seed(ctx.stack))


def _seed(stack: Stack) -> dict[str, Any]:
    from azure.data.tables import TableServiceClient  # noqa: PLC0415

    from sync_core.adapters.tables import TableRecordsIndex  # noqa: PLC0415

    client = stack.client()
    tenant = consented_tenant(client, "backfill")
    user = tenant.users["adele"]
    address = user.mail.lower()
    now = datetime.now(UTC).replace(microsecond=0)
    mix = backfill_mix(Person(address, "Adele Vance"), tenant.domain, now)
    clock = Clock()
    with clock.timing():
        deliver_all(stack, [(user.id, delivery_fields(m)) for m in mix.messages])
    delivered = clock.wall
    records = TableRecordsIndex(TableServiceClient.from_connection_string(stack.storage), RECORDS_PREFIX)
    clock = Clock()
    with clock.timing():
        for start in range(0, len(mix.records), 1000):
            records.upsert(ORG, list(mix.records[start : start + 1000]))
    box = BenchMailbox(
        mailbox_id="mb-adele",
        address=address,
        aliases=(address, f"adele.vance@{tenant.domain}"),
        graph_user_id=user.id,
        tenant_id=tenant.id,
        domain=tenant.domain,
        watermark=(now - timedelta(days=30)).isoformat(),
        records_prefix=RECORDS_PREFIX,
        never_log=mix.never_log,
    )
    return {
        "mailbox": box.to_json(),
        "token": tenant.app_token(),
        "app": {"client_id": tenant.app.client_id, "secret": tenant.app.client_secret},
        "mix": mix.summary(),
        "seed_seconds": {"deliver": round(delivered, 1), "records": round(clock.wall, 1)},
        "pages": _pages(mix),
        "records": records_to_json(mix.records),
        # What the floor client needs to know to make exactly the backfill's requests (not in results).
        "matched_with_files": sorted(
            m["internet_message_id"] for m in mix.messages if m["_category"] == "matched" and m.get("attachments")
        ),
    }


def _pages(mix: MailMix) -> int:
    return sum(math.ceil(n / MAX_PAGE_SIZE) for n in mix.per_folder.values())


def bound_seconds(seeded: dict[str, Any], latency_ms: int) -> dict[str, float]:
    pages = seeded["pages"]
    listings = math.ceil(seeded["mix"]["matched_with_attachments"] / GRAPH_MAILBOX_CONCURRENCY)
    return {
        "delta_pages": pages,
        "attachment_round_trips": listings,
        "delta_only": pages * latency_ms / 1000,
        "with_attachments": (pages + listings) * latency_ms / 1000,
    }


# -- the benchmark -------------------------------------------------------------------------------------


def run(ctx: Context) -> dict[str, Any]:
    seeded = seeded_mailbox(ctx)
    ctx.set_latency(ctx.latency_ms)
    ours, raw, memory = [], [], []
    for _ in range(ctx.runs(3, 1)):  # interleaved, so the floor and the product see the same machine
        raw.append(ctx.worker("backfill-raw", seeded))
        memory.append(ctx.worker("backfill-ours", {**seeded, "storage": "memory"}))
        ours.append(ctx.worker("backfill-ours", {**seeded, "prefix": _prefix()}))
    profile = ctx.worker("backfill-ours", {**seeded, "storage": "memory", "profile": True})
    return {
        "latency_ms": ctx.latency_ms,
        "mix": seeded["mix"],
        "seed_seconds": seeded["seed_seconds"],
        "ours": ours,
        "raw": raw,
        "memory": memory,
        **_summary(seeded, ctx.latency_ms, ours, raw),
        "floor": _floor(ours, memory, raw),
        "profile": {"top": profile["profile"], "phases": profile["phases"], "wall": profile["wall"]},
    }


def _summary(
    seeded: dict[str, Any], latency: int, ours: list[dict[str, Any]], raw: list[dict[str, Any]]
) -> dict[str, Any]:
    bound = bound_seconds(seeded, latency)
    wall = median([r["wall"] for r in ours])
    expected = seeded["mix"]["expected_reasons"]
    messages = seeded["mix"]["messages"]
    return {
        "bound": bound,
        "correct": all(
            r["status"] == "done"
            and {k: v for k, v in r["reasons"].items() if v} == expected
            and r["created"] == expected["matched"]
            for r in ours
        ),
        "median": {
            "wall": wall,
            "cpu": median([r["cpu"] for r in ours]),
            "messages_per_second": messages / wall,
            "peak_rss_mb": median([r["peak_rss_mb"] for r in ours]),
            "rss_growth_mb": median([r["peak_rss_mb"] - r["rss_before_mb"] for r in ours]),
            "graph_http_requests": median([r["graph_http_requests"] for r in ours]),
            "graph_requests_served": median([r["graph_served"] for r in ours]),
            "table_transactions": median([r["table_transactions"] for r in ours]),
            "raw_fetch_wall": median([r["wall"] for r in raw]),
            "wall_over_bound": wall / bound["delta_only"] if bound["delta_only"] else None,
            "wall_over_bound_with_attachments": wall / bound["with_attachments"] if bound["with_attachments"] else None,
            "wall_over_raw_fetch": wall / median([r["wall"] for r in raw]),
            "phases": _median_phases(ours),
            "writer_phases": _median_phases(ours, "writer_phases"),
        },
    }


def _floor(ours: list[dict[str, Any]], memory: list[dict[str, Any]], raw: list[dict[str, Any]]) -> dict[str, Any]:
    """Goal 1: the product's wall over the floor's, pair by pair (runs of one round are next to each other
    in time), then the median of those ratios."""
    return {
        "wall": median([r["wall"] for r in raw]),
        "listings": median([r.get("attachment_listings", 0) for r in raw]),
        "memory_wall": median([r["wall"] for r in memory]),
        "azurite_wall": median([r["wall"] for r in ours]),
        "memory_over_floor": median([m["wall"] / r["wall"] for m, r in zip(memory, raw, strict=True)]),
        "azurite_over_floor": median([o["wall"] / r["wall"] for o, r in zip(ours, raw, strict=True)]),
        "memory_table_transactions": median([m["table_transactions"] for m in memory]),
    }


def _median_phases(runs: list[dict[str, Any]], key: str = "phases") -> dict[str, float]:
    names = {name for run in runs for name in run.get(key, {})}
    values = {name: median([run.get(key, {}).get(name, {}).get("seconds", 0.0) for run in runs]) for name in names}
    return dict(sorted(values.items(), key=lambda item: -item[1]))


def _prefix() -> str:
    return "b" + uuid.uuid4().hex[:12]


# -- workers -------------------------------------------------------------------------------------------


def ours_worker(params: dict[str, Any]) -> dict[str, Any]:
    """One backfill with the product's Graph adapter, on Azurite (``storage``: ``azurite``) or on in-memory
    stores (``memory``); ``profile`` adds a cProfile listing."""
    from sync_core.adapters.graph.http import GraphHttp  # noqa: PLC0415
    from sync_core.adapters.graph.mail import GraphMailSource  # noqa: PLC0415
    from sync_core.adapters.graph.session import make_session  # noqa: PLC0415

    stack = Stack.from_env()
    probe = HttpProbe(stack.emulator_url, stack.storage).install()
    session = make_session(str(stack.ca_bundle))
    token = params["token"]
    mail = GraphMailSource(lambda _mailbox: GraphHttp(session, stack.graph_url, lambda _refresh: token))
    result = measure_sync(stack, probe, sync_deps_for(stack, params, mail), params, profile=bool(params.get("profile")))
    result["graph_http_requests"] = result["http"].get("graph", 0)
    return result


def sync_deps_for(stack: Stack, params: dict[str, Any], mail: Any) -> Any:
    box = BenchMailbox.from_json(params["mailbox"])
    if params.get("storage", "azurite") == "memory":
        records = DictRecordsIndex()
        records.upsert(ORG, records_from_json(params["records"]))
        return memory_deps(box, records, mail)
    from azure.data.tables import TableServiceClient  # noqa: PLC0415

    service = TableServiceClient.from_connection_string(stack.storage)
    return BenchTables.fresh(service, params["prefix"], box).sync_deps(mail)


def measure_sync(
    stack: Stack, probe: HttpProbe, deps: Any, params: dict[str, Any], *, profile: bool = False
) -> dict[str, Any]:
    """Run ``sync_mailbox`` once, timed, with phases; shared by our worker and the SDK peer's."""
    from sync_core.use_cases.sync_mailbox import sync_mailbox  # noqa: PLC0415

    box = BenchMailbox.from_json(params["mailbox"])
    phases = instrument(deps, probe)
    served_before = _served(stack, box)
    http_before = probe.snapshot()
    rss_before = current_rss_mb()
    clock = Clock()
    profiler = cProfile.Profile() if profile else None
    with clock.timing():
        if profiler is not None:
            profiler.enable()
        outcome = sync_mailbox(deps, ORG, box.mailbox_id, budget=timedelta(hours=1))
        if profiler is not None:
            profiler.disable()
    report = outcome.report
    assert report is not None, outcome
    http = probe.since(http_before)
    result = {
        "storage": params.get("storage", "azurite"),
        "wall": clock.wall,
        "cpu": clock.cpu,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "status": outcome.status,
        "error": report.error,
        "reasons": report.reasons,
        "created": report.activities_created,
        "pages": report.pages,
        "graph_requests": report.graph_requests,
        "graph_served": _served(stack, box) - served_before,
        "table_transactions": report.table_transactions,
        "http": http,
        "phases": phases.report(),
        "writer_phases": phases.background_report(),
    }
    if profiler is not None:
        result["profile"] = _top(profiler)
    return result


def _served(stack: Stack, box: BenchMailbox) -> int:
    client = stack.client()
    try:
        return int(client.mailbox_stats(box.graph_user_id)["requests"])
    finally:
        client.session.close()


def instrument(deps: Any, probe: HttpProbe) -> Phases:
    """Time the run's steps: each port call, the decision, and inside Graph calls the HTTP exchange,
    the JSON decoding and the conversion to ``MailMessage`` (each phase excludes the ones nested in it)."""
    import requests  # noqa: PLC0415

    from sync_core.adapters.graph import mail as graph_mail  # noqa: PLC0415
    from sync_core.domain import decide  # noqa: PLC0415
    from sync_core.use_cases import sync_mailbox  # noqa: PLC0415

    phases = Phases(background=getattr(sync_mailbox, "WRITER_THREAD_NAME", ""))
    for owner, methods in (
        (deps.mail, ("delta", "delta_many", "attachments")),
        (deps.records, ("lookup",)),
        (deps.activities, ("save", "thread_ids_for_messages")),
        (deps.cursors, ("get_all", "put", "put_many")),
        (deps.leases, ("acquire", "renew", "release")),
        (deps.reports, ("add",)),
        (deps.mailboxes, ("get",)),
        (deps.settings, ("get",)),
    ):
        for method in methods:
            if hasattr(owner, method):
                phases.wrap(owner, method, f"{type(owner).__name__}.{method}")
    for owner, method in (
        (decide.DecisionContext, "of"),
        (decide.DecisionContext, "screen"),
        (decide.Screening, "finish"),
    ):
        phases.wrap(owner, method, "decide")
    phases.wrap(graph_mail, "page_from_payload", "Graph JSON -> MailMessage")
    # The main thread waiting for the previous page's writes (listings, thread reads, save, checkpoint),
    # which run on the sync's writer thread while it fetches and decides the next page.
    if hasattr(sync_mailbox, "_PageWrites"):  # (absent before the overlap: the bench compares both)
        phases.wrap(sync_mailbox._PageWrites, "settle", "waiting for the page writer")
    phases.wrap(requests.models.Response, "json", "JSON decode")
    request = requests.Session.request

    def timed_request(session: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        target = probe.target(str(url))
        if target == "control":  # the benchmark's own bookkeeping, outside the measured run
            return request(session, method, url, *args, **kwargs)
        return phases.run(f"HTTP wait ({target})", request, session, method, url, *args, **kwargs)

    requests.Session.request = timed_request  # type: ignore[method-assign]
    return phases


def _top(profiler: cProfile.Profile, limit: int = 25) -> list[dict[str, Any]]:
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    for (filename, line, function), (_calls, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({function})",
                "calls": ncalls,
                "tottime": round(tottime, 4),
                "cumtime": round(cumtime, 4),
            }
        )
    return sorted(rows, key=lambda row: -row["tottime"])[:limit]


def _short(filename: str) -> str:
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def raw_worker(params: dict[str, Any]) -> dict[str, Any]:
    """The floor: GET and decode every delta page of both folders with plain ``requests``, and list the
    attachments of the matched messages with attachments, four in flight; nothing else."""
    import threading  # noqa: PLC0415
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
    from urllib.parse import quote  # noqa: PLC0415

    import requests  # noqa: PLC0415

    from sync_core.adapters.graph.mail import ATTACHMENT_SELECT, MESSAGE_FIELDS, graph_time  # noqa: PLC0415
    from sync_core.domain.folders import DEFAULT_FOLDERS  # noqa: PLC0415

    stack = Stack.from_env()
    box = BenchMailbox.from_json(params["mailbox"])
    wanted = set(params.get("matched_with_files", ()))
    session = requests.Session()
    session.verify = str(stack.ca_bundle)
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=GRAPH_MAILBOX_CONCURRENCY + 1)
    session.mount("https://", adapter)
    headers = {
        "Authorization": f"Bearer {params['token']}",
        "Prefer": f'odata.maxpagesize={MAX_PAGE_SIZE}, IdType="ImmutableId", outlook.body-content-type="text"',
    }
    listing_headers = {"Authorization": headers["Authorization"], "Prefer": 'IdType="ImmutableId"'}
    user = f"{stack.graph_url}/users/{box.graph_user_id}"
    since = graph_time(datetime.fromisoformat(box.watermark))

    in_flight = threading.BoundedSemaphore(GRAPH_MAILBOX_CONCURRENCY)  # Graph's limit per app and mailbox

    def get(url: str, **options: Any) -> Any:
        with in_flight:
            return session.get(url, timeout=60, **options)

    def listing(message_id: str) -> int:
        url = f"{user}/messages/{quote(message_id, safe='')}/attachments"
        response = get(url, params=ATTACHMENT_SELECT, headers=listing_headers)
        response.raise_for_status()
        return len(response.json()["value"])

    clock = Clock()
    pages = items = size = 0
    with clock.timing(), ThreadPoolExecutor(GRAPH_MAILBOX_CONCURRENCY) as listers:
        listings = []
        for folder in DEFAULT_FOLDERS:
            url: str | None = f"{user}/mailFolders('{folder}')/messages/delta"
            query: dict[str, str] | None = {"$select": MESSAGE_FIELDS, "$filter": f"receivedDateTime ge {since}"}
            while url:
                response = get(url, params=query, headers=headers)
                response.raise_for_status()
                payload = response.json()
                pages, items, size = pages + 1, items + len(payload["value"]), size + len(response.content)
                listings += [
                    listers.submit(listing, item["id"])
                    for item in payload["value"]
                    if item.get("hasAttachments") and item.get("internetMessageId") in wanted
                ]
                url, query = payload.get("@odata.nextLink"), None
        files = sum(future.result() for future in listings)
    return {
        "wall": clock.wall,
        "cpu": clock.cpu,
        "pages": pages,
        "items": items,
        "megabytes": size / 1e6,
        "attachment_listings": len(listings),
        "attachments_listed": files,
    }
