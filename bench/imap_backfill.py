"""Benchmark 4, IMAP backfill: one mailbox of 10,000 messages (``bench.mail_mix``, the Graph backfill's mix) on
the real Dovecot of ``tools/mailserver.py``, synced from scratch by the product's ``sync_mailbox`` through
``ImapMailSource`` on the in-memory store doubles (so what is measured is IMAP and the engine, not storage).

The floor, measured in the same run (interleaved, each in a fresh worker process): a bare ``imapclient``
session making the requests a backfill needs and nothing else: LOGIN over implicit TLS, per folder one
EXAMINE and one ``UID SEARCH SINCE``, the same phase-one items the adapter fetches (``UID FLAGS
INTERNALDATE RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER]``) in FETCHes of the adapter's batch size, and after
each batch the first body part (``BODY.PEEK[1]<0.limit>``) of the matched messages of that batch (known to
the floor by Message-ID, which it finds in the header bytes with one regular expression). No parsing
beyond that, no decisions, no storage. Goal 4 is the product's wall over this floor, pair by pair.

Seeding: every message is APPENDed (MULTIAPPEND, 500 a command) with its received time as INTERNALDATE,
Inbox and Sent as the mix says. Attachments keep their names and types but carry 2 KB of bytes each
instead of the mix's megabytes: the adapter reads attachments from BODYSTRUCTURE and never downloads
them, so their size only costs Dovecot disk, not the measured conversation (both sides fetch the same
headers and structures).

Idle (goal 7): after the backfill the product worker syncs the caught-up mailbox ``IDLE_ROUNDS`` more times
and reports IMAP commands per poll (``requests_for``) and store writes per poll (the in-memory stores'
write counters).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from bench.context import Context
from bench.mail_mix import Person, backfill_mix
from bench.measure import Clock, current_rss_mb, median, peak_rss_mb, run_worker
from bench.sync_setup import ORG, BenchMailbox, DictRecordsIndex, records_from_json, records_to_json

PASSWORD = "bench-imap-password"
FOLDERS = {"inbox": "INBOX", "sentitems": "Sent"}
ATTACHMENT_BYTES = 2048
IDLE_ROUNDS = 5
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


def run(ctx: Context) -> dict[str, Any]:
    from tools import mailserver  # noqa: PLC0415

    root = mailserver.ROOT / ".local" / f"mailserver-bench-{uuid.uuid4().hex[:8]}"
    with mailserver.running(root) as server:
        seeded = _seed(server)
        params = {**seeded, "server": server.describe()}
        ours, raw = [], []
        try:
            for _ in range(ctx.runs(3, 1)):  # interleaved, so the floor and the product see the same machine
                raw.append(run_worker("imap-backfill-raw", params, {}))
                ours.append(run_worker("imap-backfill-ours", params, {}))
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
    expected = seeded["mix"]["expected_reasons"]
    return {
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
            "imap_commands": median([r["imap_commands"] for r in ours]),
            "floor_wall": median([r["wall"] for r in raw]),
            "floor_cpu": median([r["cpu"] for r in raw]),
            "floor_commands": median([r["commands"] for r in raw]),
            "floor_peak_rss_mb": median([r["peak_rss_mb"] for r in raw]),
            "wall_over_floor": median([o["wall"] / r["wall"] for o, r in zip(ours, raw, strict=True)]),
            "phases": {
                name: median([r["phases"].get(name, 0.0) for r in ours])
                for name in sorted({n for r in ours for n in r["phases"]})
            },
            "floor_phases": {
                name: median([r["phases"].get(name, 0.0) for r in raw])
                for name in sorted({n for r in raw for n in r["phases"]})
            },
            "idle_commands_per_poll": median([r["idle"]["commands_per_poll"] for r in ours]),
            "idle_writes_per_poll": median([r["idle"]["writes_per_poll"] for r in ours]),
        },
    }


def _seed(server: Any) -> dict[str, Any]:
    from imapclient import IMAPClient  # noqa: PLC0415

    domain = f"b{uuid.uuid4().hex[:8]}.imap.example"
    address = f"adele@{domain}"
    server.add_user(address, PASSWORD)
    now = datetime.now(UTC).replace(microsecond=0)
    mix = backfill_mix(Person(address, "Adele Vance"), domain, now)
    clock = Clock()
    with clock.timing():
        client = IMAPClient(server.host, server.ports.imaps, ssl_context=server.ssl_context())
        client.login(address, PASSWORD)
        for key, folder in FOLDERS.items():
            batch = [_append_entry(m) for m in mix.messages if m["folder"] == key]
            for start in range(0, len(batch), 500):
                client.multiappend(folder, batch[start : start + 500])
        client.logout()
    box = BenchMailbox(
        mailbox_id="mb-adele-imap",
        address=address,
        aliases=(address,),
        graph_user_id="",
        tenant_id="",
        domain=domain,
        watermark=(now - timedelta(days=30)).isoformat(),
        records_prefix="",
        never_log=mix.never_log,
    )
    return {
        "mailbox": box.to_json(),
        "mix": mix.summary(),
        "seed_seconds": {"append": round(clock.wall, 1)},
        "records": records_to_json(mix.records),
        "matched": sorted(m["internet_message_id"] for m in mix.messages if m["_category"] == "matched"),
    }


def _append_entry(fields: dict[str, Any]) -> dict[str, Any]:
    message = EmailMessage()
    message["From"] = fields["from"]
    if fields.get("to"):
        message["To"] = ", ".join(fields["to"])
    if fields.get("cc"):
        message["Cc"] = ", ".join(fields["cc"])
    message["Subject"] = fields.get("subject", "")
    message["Date"] = format_datetime(datetime.fromisoformat(fields["sent"]))
    message["Message-ID"] = fields["internet_message_id"]
    if fields.get("in_reply_to"):
        message["In-Reply-To"] = fields["in_reply_to"]
    if fields.get("references"):
        message["References"] = " ".join(fields["references"])
    for header in fields.get("headers", []):
        message[header["name"]] = header["value"]
    message.set_content(fields.get("body", ""), subtype="html" if fields.get("body_type") == "html" else "plain")
    for attachment in fields.get("attachments", []):
        maintype, _, subtype = attachment.get("content_type", "application/octet-stream").partition("/")
        data = (b"%PDF-1.4 bench " * (ATTACHMENT_BYTES // 15 + 1))[:ATTACHMENT_BYTES]
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=attachment["name"])
    return {"msg": message.as_bytes(), "time": datetime.fromisoformat(fields["received"])}


# -- workers -------------------------------------------------------------------------------------------


def _account(params: dict[str, Any]) -> tuple[Any, Any]:
    from sync_core.adapters.imap.account import ImapAccount, ImapLimits, Security  # noqa: PLC0415
    from tools.mailserver import MailServer  # noqa: PLC0415

    server = MailServer.attach(json.dumps(params["server"]))
    limits = ImapLimits(ca_file=str(server.ca_pem))
    address = params["mailbox"]["address"]
    return ImapAccount(server.host, server.ports.imaps, Security.TLS, address, PASSWORD), limits


def ours_worker(params: dict[str, Any]) -> dict[str, Any]:
    """The product: ``sync_mailbox`` with ``ImapMailSource`` on in-memory stores; then idle polls."""
    import dataclasses  # noqa: PLC0415

    from sync_core.adapters.clock import SystemClock  # noqa: PLC0415
    from sync_core.adapters.imap.mail import ImapMailSource  # noqa: PLC0415
    from sync_core.testing.app import InMemoryApp  # noqa: PLC0415
    from sync_core.use_cases.sync_mailbox import sync_mailbox  # noqa: PLC0415

    account, limits = _account(params)
    box = BenchMailbox.from_json(params["mailbox"])
    mail = ImapMailSource(lambda _mailbox: account, limits)
    app = InMemoryApp(mail=mail, clock=SystemClock())
    app.stores.settings.put(ORG, box.settings())
    mailbox = dataclasses.replace(box.mailbox(), provider="imap", tenant_id="", graph_user_id="")
    app.stores.mailboxes.add(mailbox)
    records = DictRecordsIndex()
    records.upsert(ORG, records_from_json(params["records"]))
    deps = app.sync_deps(records=records)
    phases = _time_phases(mail)
    rss_before = current_rss_mb()
    clock = Clock()
    with clock.timing():
        outcome = sync_mailbox(deps, ORG, box.mailbox_id, budget=timedelta(hours=1))
    report = outcome.report
    assert report is not None, outcome
    commands = mail.requests_for(mailbox)
    result = {
        "wall": clock.wall,
        "cpu": clock.cpu,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss_before,
        "status": outcome.status,
        "error": report.error,
        "reasons": report.reasons,
        "created": report.activities_created,
        "pages": report.pages,
        "imap_commands": commands,
        "phases": {name: round(seconds, 3) for name, seconds in phases.items()},
    }
    writes = _count_writes(deps)
    statuses = []
    for _ in range(IDLE_ROUNDS):
        idle = sync_mailbox(deps, ORG, box.mailbox_id, budget=timedelta(minutes=5))
        statuses.append(idle.status)
    store_writes = sum(v for k, v in writes.items() if not k.startswith("leases."))
    result["idle"] = {
        "statuses": sorted(set(statuses)),
        "commands_per_poll": (mail.requests_for(mailbox) - commands) / IDLE_ROUNDS,
        "writes_per_poll": store_writes / IDLE_ROUNDS,
        "calls": writes,
    }
    mail.close()
    return result


WRITE_METHODS = {
    "activities": ("save",),
    "cursors": ("put", "put_many", "delete", "reset"),
    "reports": ("add",),
    "mailboxes": ("update", "put", "set_status", "record_sync"),
    "leases": ("acquire", "renew", "release"),
}


def _count_writes(deps: Any) -> dict[str, int]:
    """Calls of the stores' write methods (each is at least one Table transaction on Azurite; a lease
    call is counted apart: on Azurite the lease is a conditional write too)."""
    counts: dict[str, int] = {}
    for store, methods in WRITE_METHODS.items():
        owner = getattr(deps, store)
        for method in methods:
            original = getattr(owner, method, None)
            if original is None:
                continue

            def counted(*args: Any, _original: Any = original, _key: str = f"{store}.{method}", **kw: Any) -> Any:
                counts[_key] = counts.get(_key, 0) + 1
                return _original(*args, **kw)

            setattr(owner, method, counted)
    return counts


def _time_phases(mail: Any) -> dict[str, float]:
    """Wall seconds inside the adapter's ``delta``/``delta_many`` (headers) and ``complete`` (bodies), and,
    nested in them, inside ``IMAPClient.search`` and ``IMAPClient.fetch`` (command, server, parsing; the
    round's next FETCH, which runs in the background while the pipeline decides, included), the header
    section and BODYSTRUCTURE parsers, and the waits for that background FETCH."""
    spent: dict[str, float] = {}
    for method, name in (("delta", "IMAP headers (delta)"), ("delta_many", "IMAP headers (delta)"),
                         ("complete", "IMAP bodies (complete)"), ("attachments", "IMAP attachments")):  # fmt: skip
        if hasattr(mail, method):
            _wrap(mail, method, name, spent)
    from sync_core.adapters.imap import mail as imap_mail  # noqa: PLC0415

    _wrap(imap_mail, "header_section_fields", "header sections (domain.mime)", spent)
    _wrap(imap_mail.structure, "parse", "BODYSTRUCTURE parse", spent)
    _wrap(imap_mail, "_settle", "waiting for the background FETCH", spent)
    _imapclient_timers(spent)
    return spent


def _imapclient_timers(spent: dict[str, float]) -> None:
    from imapclient import IMAPClient  # noqa: PLC0415

    _wrap(IMAPClient, "search", "IMAPClient.search", spent)
    _wrap(IMAPClient, "fetch", "IMAPClient.fetch", spent)
    _wrap(IMAPClient, "select_folder", "IMAPClient.select_folder", spent)


def _wrap(owner: Any, method: str, name: str, spent: dict[str, float]) -> None:
    import time  # noqa: PLC0415

    original = getattr(owner, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - began

    setattr(owner, method, timed)


def raw_worker(params: dict[str, Any]) -> dict[str, Any]:
    """The floor: a bare ``imapclient`` session fetching the backfill's headers and matched bodies."""
    from imapclient import IMAPClient  # noqa: PLC0415

    from sync_core.adapters.imap.mail import PHASE_ONE  # noqa: PLC0415
    from tools.mailserver import MailServer  # noqa: PLC0415

    account, limits = _account(params)
    server = MailServer.attach(json.dumps(params["server"]))
    matched = {m.encode() for m in params["matched"]}
    since = datetime.fromisoformat(params["mailbox"]["watermark"]).date() - timedelta(days=1)
    body_item = f"BODY.PEEK[1]<0.{limits.body_bytes}>"
    spent: dict[str, float] = {}
    _imapclient_timers(spent)
    clock = Clock()
    commands = headers = bodies = size = 0
    with clock.timing():
        client = IMAPClient(account.host, account.port, ssl_context=server.ssl_context(), timeout=60)
        client.login(account.username, account.password)
        commands += 1
        for folder in FOLDERS.values():
            client.select_folder(folder, readonly=True)
            uids = client.search(["SINCE", since])
            commands += 2
            for start in range(0, len(uids), limits.fetch_batch):
                fetched = client.fetch(uids[start : start + limits.fetch_batch], PHASE_ONE)
                commands += 1
                wanted = []
                for uid, item in fetched.items():
                    header = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"")
                    headers, size = headers + 1, size + len(header)
                    found = _MESSAGE_ID.search(header)
                    if found is not None and found.group(1) in matched:
                        wanted.append(uid)
                if wanted:
                    for item in client.fetch(wanted, [body_item]).values():
                        bodies += 1
                        size += sum(len(v) for k, v in item.items() if k.startswith(b"BODY[1]"))
                    commands += 1
        client.logout()
    return {
        "wall": clock.wall,
        "cpu": clock.cpu,
        "commands": commands,
        "headers": headers,
        "bodies": bodies,
        "megabytes": size / 1e6,
        "phases": {name: round(seconds, 3) for name, seconds in spent.items()},
    }
