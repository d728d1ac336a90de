"""Benchmark 5, Gmail backfill: one mailbox of 10,000 messages (``bench.mail_mix``, the Graph backfill's mix)
in the Google emulator (``emulator.google``, its own process), synced from scratch by the product's
``sync_mailbox`` through ``GmailMailSource`` (token from a stored grant, as connect stores it) on the
in-memory store doubles: Gmail and the engine, not storage.

The floor, measured in the same run (interleaved, fresh worker processes): a bare ``requests`` client making
the requests a Gmail backfill needs and nothing else, per label (INBOX, SENT): ``getProfile`` (the
historyId the listing starts from), every ``messages.list`` page (500, ``q=after:``), for each page the
``format=metadata`` gets in batches of 50 (the adapter's batch size), the ``format=full`` gets of that page's
matched messages (recognised by Message-ID) in one batch, and the one ``history.list`` that ends the
listing. No conversion, no decisions, no storage.

Two settings of the emulator differ from its defaults, both for both sides, and the report says so:

* ``latency_ms`` is ``LATENCY_MS`` (5 ms), not the 50 ms of the Graph runs: the emulator sleeps the latency
  before every call, batched sub-requests included, one after the other; at 50 ms the 10,000 metadata gets
  alone would sleep 500 s per run on both sides.
* ``user_quota_units`` is lifted: Gmail's 15,000 units per user per minute (``messages.get`` costs 5) bound
  any client's backfill of 10,000 messages to minutes; that bound is computed and reported
  (``quota_bound_seconds``), and the ratio measures what the client adds.

Idle (goal 7): after the backfill the product worker polls the caught-up mailbox ``IDLE_ROUNDS`` times and
reports Gmail HTTP requests per poll (a batch counts once) and store writes per poll.
"""

from __future__ import annotations

import base64
import os
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from bench.context import Context
from bench.imap_backfill import IDLE_ROUNDS, _count_writes
from bench.mail_mix import Person, backfill_mix
from bench.measure import Clock, current_rss_mb, median, peak_rss_mb, run_worker
from bench.stack import WORK
from bench.sync_setup import ORG, BenchMailbox, DictRecordsIndex, records_from_json, records_to_json

LATENCY_MS = 5
QUOTA_UNITS_PER_MINUTE = 15_000  # Gmail's per-user limit (the emulator's default)
UNITS = {"messages.get": 5, "messages.list": 5, "history.list": 2, "getProfile": 1}
ATTACHMENT_BYTES = 2048
BATCH = 50
REDIRECT_URI = "https://sync.example.net/api/auth/callback"


@contextmanager
def google_emulator() -> Iterator[tuple[str, str]]:
    """The emulator process with its Google half on a free port; (Google URL, CA bundle)."""
    from tools.azurite import free_port  # noqa: PLC0415
    from tools.stack import child  # noqa: PLC0415

    port, google_port = free_port(), free_port()
    state_dir = WORK / "emulator-google"
    args = [sys.executable, "-m", "emulator", "--port", str(port), "--state-dir", str(state_dir),
            "--google-port", str(google_port)]  # fmt: skip
    with child("bench-google-emulator", args, dict(os.environ), ready="google emulator ready"):
        yield f"https://localhost:{google_port}", str(state_dir / "ca-bundle.pem")


def run(ctx: Context) -> dict[str, Any]:
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    with google_emulator() as (url, ca):
        # requests lets REQUESTS_CA_BUNDLE override a session's own ``verify``: trust the emulator's CA,
        # as a worker of the Graph benchmarks does (``Stack.worker_env``).
        os.environ["REQUESTS_CA_BUNDLE"] = ca
        try:
            seeded = _seed(url, ca)
            params = {**seeded, "google_url": url, "ca": ca}
            ours, raw = [], []
            for _ in range(ctx.runs(3, 1)):
                raw.append(run_worker("gmail-backfill-raw", params, {"REQUESTS_CA_BUNDLE": ca}))
                ours.append(run_worker("gmail-backfill-ours", params, {"REQUESTS_CA_BUNDLE": ca}))
        finally:
            if previous is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = previous
    expected = seeded["mix"]["expected_reasons"]
    floor_units = median([r["quota_units"] for r in raw])
    return {
        "latency_ms": LATENCY_MS,
        "mix": seeded["mix"],
        "seed_seconds": seeded["seed_seconds"],
        "ours": ours,
        "raw": raw,
        "correct": all(
            r["status"] == "done"
            and {k: v for k, v in r["reasons"].items() if v} == expected
            and r["created"] == expected["matched"]
            for r in ours
        ),
        "median": {
            "wall": median([r["wall"] for r in ours]),
            "cpu": median([r["cpu"] for r in ours]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in ours]),
            "gmail_http_requests": median([r["gmail_http_requests"] for r in ours]),
            "floor_wall": median([r["wall"] for r in raw]),
            "floor_cpu": median([r["cpu"] for r in raw]),
            "floor_http_requests": median([r["http_requests"] for r in raw]),
            "floor_quota_units": floor_units,
            "quota_bound_seconds": floor_units / QUOTA_UNITS_PER_MINUTE * 60,
            "wall_over_floor": median([o["wall"] / r["wall"] for o, r in zip(ours, raw, strict=True)]),
            "phases": {
                name: median([r["phases"].get(name, 0.0) for r in ours])
                for name in sorted({n for r in ours for n in r["phases"]})
            },
            "idle_requests_per_poll": median([r["idle"]["requests_per_poll"] for r in ours]),
            "idle_writes_per_poll": median([r["idle"]["writes_per_poll"] for r in ours]),
        },
    }


def _seed(url: str, ca: str) -> dict[str, Any]:
    import requests  # noqa: PLC0415

    from sync_core.adapters.google.identity import GoogleIdentity  # noqa: PLC0415
    from sync_core.adapters.graph.session import make_session  # noqa: PLC0415

    control = requests.Session()
    control.verify, control.trust_env = ca, False

    def call(method: str, path: str, body: Any = None, session: Any = control) -> dict[str, Any]:
        response = session.request(method, f"{url}/_emulator/{path}", json=body, timeout=60)
        assert response.status_code < 300, response.text
        answer: dict[str, Any] = response.json()
        return answer

    domain = f"g{uuid.uuid4().hex[:8]}.example"
    address = f"adele@{domain}"
    call("POST", "domains", {"domain": domain})
    call("POST", "users", {"email": address, "name": "Adele Vance"})
    call("PUT", "config", {"latency_ms": 0, "user_quota_units": 10**9})
    client = call("POST", "clients", {"redirect_uris": [REDIRECT_URI]})
    client_id, secret = str(client["client_id"]), str(client["client_secret"])
    session = make_session(ca)
    identity = GoogleIdentity(session, client_id, secret, f"{url}/o/oauth2/v2/auth", f"{url}/token",
                              lambda _m: (lambda _r: ""))  # fmt: skip
    flow = identity.initiate_connect(REDIRECT_URI, address)
    answer = call("POST", "authorize", {"auth_uri": flow["auth_uri"], "user": address})
    grant = identity.redeem_connect(flow, dict(parse_qsl(urlsplit(answer["redirect_url"]).query)))
    now = datetime.now(UTC).replace(microsecond=0)
    mix = backfill_mix(Person(address, "Adele Vance"), domain, now)
    clock = Clock()
    sessions = [requests.Session() for _ in range(4)]
    for s in sessions:
        s.verify, s.trust_env = ca, False
    with clock.timing(), ThreadPoolExecutor(4) as pool:
        chunks = [mix.messages[n::4] for n in range(4)]
        list(pool.map(lambda n: [call("POST", f"users/{address}/messages", _fields(m), sessions[n])
                                 for m in chunks[n]], range(4)))  # fmt: skip
    call("PUT", "config", {"latency_ms": LATENCY_MS})
    box = BenchMailbox(
        mailbox_id="mb-adele-gmail", address=address, aliases=(address, f"adele.vance@{domain}"),
        graph_user_id=grant.object_id, tenant_id="", domain=domain,
        watermark=(now - timedelta(days=30)).isoformat(), records_prefix="", never_log=mix.never_log,
    )  # fmt: skip
    return {
        "mailbox": box.to_json(),
        "client": {"id": client_id, "secret": secret},
        "grant": grant.serialized_cache,
        "mix": mix.summary(),
        "seed_seconds": {"deliver": round(clock.wall, 1)},
        "records": records_to_json(mix.records),
        "matched": sorted(m["internet_message_id"] for m in mix.messages if m["_category"] == "matched"),
    }


def _fields(m: dict[str, Any]) -> dict[str, Any]:
    """The mix's message as the Google emulator's delivery fields (attachments ``ATTACHMENT_BYTES`` each)."""
    body: dict[str, Any] = {"subject": m.get("subject", ""), "message_id": m["internet_message_id"], "from": m["from"]}
    for key in ("to", "cc", "in_reply_to"):
        if m.get(key):
            body[key] = m[key]
    if m.get("references"):
        body["references"] = " ".join(m["references"])
    if m.get("body_type") == "html":
        body["body"], body["html"] = "", m.get("body", "")
    else:
        body["body"] = m.get("body", "")
    if m.get("headers"):
        body["headers"] = {str(h["name"]): str(h["value"]) for h in m["headers"]}
    if m.get("attachments"):
        data = base64.b64encode(b"x" * ATTACHMENT_BYTES).decode()
        body["attachments"] = [
            {"filename": a["name"], "content_type": a.get("content_type", "application/octet-stream"), "data": data}
            for a in m["attachments"]
        ]
    if m["folder"] == "sentitems":
        body["labels"] = ["SENT"]
    body["received_at"] = m["received"]
    body["date"] = m.get("sent") or m["received"]
    return body


# -- workers -------------------------------------------------------------------------------------------


def _token_source(params: dict[str, Any], mailbox: Any) -> Any:
    from sync_core.adapters.google.tokens import GoogleTokenSource  # noqa: PLC0415
    from sync_core.adapters.graph.session import make_session  # noqa: PLC0415
    from sync_core.auth.crypto import TokenCipher  # noqa: PLC0415
    from sync_core.ports.identity import mailbox_owner  # noqa: PLC0415
    from sync_core.testing.auth import MemoryTokenCacheStore  # noqa: PLC0415

    tokens = MemoryTokenCacheStore(TokenCipher.from_setting(TokenCipher.generate_setting()))
    tokens.put(ORG, mailbox_owner(mailbox.mailbox_id), params["grant"], None)
    session = make_session(params["ca"])
    url = params["google_url"]
    return session, GoogleTokenSource(session, f"{url}/token", params["client"]["id"], params["client"]["secret"],
                                      tokens, mailbox)  # fmt: skip


def _mailbox(params: dict[str, Any]) -> Any:
    import dataclasses  # noqa: PLC0415

    from sync_core.domain.model import ConnectionMode  # noqa: PLC0415

    box = BenchMailbox.from_json(params["mailbox"])
    return box, dataclasses.replace(box.mailbox(), provider="google", mode=ConnectionMode.DELEGATED, tenant_id="")


def ours_worker(params: dict[str, Any]) -> dict[str, Any]:
    """The product: ``sync_mailbox`` with ``GmailMailSource`` on in-memory stores; then idle polls."""
    from sync_core.adapters.clock import SystemClock  # noqa: PLC0415
    from sync_core.adapters.google.http import GmailHttp  # noqa: PLC0415
    from sync_core.adapters.google.mail import GmailMailSource  # noqa: PLC0415
    from sync_core.testing.app import InMemoryApp  # noqa: PLC0415
    from sync_core.use_cases.sync_mailbox import sync_mailbox  # noqa: PLC0415

    box, mailbox = _mailbox(params)
    session, tokens = _token_source(params, mailbox)
    mail = GmailMailSource(lambda _m: GmailHttp(session, params["google_url"], tokens))
    app = InMemoryApp(mail=mail, clock=SystemClock())
    app.stores.settings.put(ORG, box.settings())
    app.stores.mailboxes.add(mailbox)
    records = DictRecordsIndex()
    records.upsert(ORG, records_from_json(params["records"]))
    deps = app.sync_deps(records=records)
    phases = _time_phases(mail)
    tokens(False)  # the grant's access token, as a worker that synced before holds it
    rss_before = current_rss_mb()
    clock = Clock()
    with clock.timing():
        outcome = sync_mailbox(deps, ORG, box.mailbox_id, budget=timedelta(hours=1))
    report = outcome.report
    assert report is not None, outcome
    requests_made = mail.requests_for(mailbox)
    result = {
        "wall": clock.wall, "cpu": clock.cpu, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss_before,
        "status": outcome.status, "error": report.error, "reasons": report.reasons,
        "created": report.activities_created, "pages": report.pages, "gmail_http_requests": requests_made,
        "phases": {name: round(seconds, 3) for name, seconds in phases.items()},
    }  # fmt: skip
    writes = _count_writes(deps)
    statuses = [sync_mailbox(deps, ORG, box.mailbox_id, budget=timedelta(minutes=5)).status for _ in range(IDLE_ROUNDS)]
    result["idle"] = {
        "statuses": sorted(set(statuses)),
        "requests_per_poll": (mail.requests_for(mailbox) - requests_made) / IDLE_ROUNDS,
        "writes_per_poll": sum(v for k, v in writes.items() if not k.startswith("leases.")) / IDLE_ROUNDS,
        "calls": writes,
    }
    return result


def _time_phases(mail: Any) -> dict[str, float]:
    import time  # noqa: PLC0415

    from sync_core.adapters.google import mail as gmail  # noqa: PLC0415

    spent: dict[str, float] = {}

    def wrap(owner: Any, method: str, name: str) -> None:
        original = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - began

        setattr(owner, method, timed)

    wrap(mail, "delta", "Gmail pages: list + metadata batches (delta)")
    wrap(mail, "complete", "Gmail bodies: format=full batches (complete)")
    wrap(gmail, "message_from_gmail", "Gmail JSON -> MailMessage")
    return spent


def raw_worker(params: dict[str, Any]) -> dict[str, Any]:
    """The floor: profile, list pages, metadata batches, matched bodies' batch, the closing history.list."""
    from sync_core.adapters.google.http import parse_batch_response  # noqa: PLC0415

    box, mailbox = _mailbox(params)
    session, tokens = _token_source(params, mailbox)
    token = tokens(False)
    base = f"{params['google_url']}/gmail/v1/users/me"
    auth = {"Authorization": f"Bearer {token}"}
    matched = set(params["matched"])
    after = int(datetime.fromisoformat(box.watermark).timestamp()) - 1
    counts = {"http": 0, "units": 0}

    def get(path: str, query: dict[str, str] | None = None, units: int = 5) -> Any:
        response = session.get(f"{base}/{path}", params=query, headers=auth, timeout=60)
        response.raise_for_status()
        counts["http"], counts["units"] = counts["http"] + 1, counts["units"] + units
        return response.json()

    def batch(paths: list[str]) -> list[Any]:
        answers = []
        for start in range(0, len(paths), BATCH):
            boundary = f"batch_{uuid.uuid4().hex}"
            body = "".join(
                f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item-{i}>\r\n\r\n"
                f"GET /gmail/v1/users/me/{p}\r\n\r\n"
                for i, p in enumerate(paths[start : start + BATCH])
            )
            response = session.post(
                f"{params['google_url']}/batch/gmail/v1",
                data=(body + f"--{boundary}--\r\n").encode(),
                headers={**auth, "Content-Type": f"multipart/mixed; boundary={boundary}"},
                timeout=120,
            )
            response.raise_for_status()
            counts["http"] += 1
            counts["units"] += 5 * len(paths[start : start + BATCH])
            answers += [
                item.body for item in parse_batch_response(response.headers["Content-Type"], response.content).values()
            ]
        return answers

    clock = Clock()
    listed = bodies = 0
    with clock.timing():
        for label in ("INBOX", "SENT"):
            history_id = str(get("profile", units=1)["historyId"])
            query = {"labelIds": label, "q": f"after:{after}", "maxResults": "500"}
            while True:
                page = get("messages", query)
                ids = [m["id"] for m in page.get("messages") or ()]
                listed += len(ids)
                wanted = []
                for item in batch([f"messages/{i}?format=metadata" for i in ids]):
                    headers = {
                        h["name"].lower(): h["value"] for h in (item or {}).get("payload", {}).get("headers", [])
                    }
                    if headers.get("message-id") in matched:
                        wanted.append(item["id"])
                bodies += len(batch([f"messages/{i}?format=full" for i in wanted])) if wanted else 0
                if not page.get("nextPageToken"):
                    break
                query["pageToken"] = page["nextPageToken"]
            get("history", {"startHistoryId": history_id, "historyTypes": "messageAdded", "labelId": label,
                            "maxResults": "500"}, units=2)  # fmt: skip
    return {"wall": clock.wall, "cpu": clock.cpu, "http_requests": counts["http"], "quota_units": counts["units"],
            "listed": listed, "bodies": bodies}  # fmt: skip
