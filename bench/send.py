"""Benchmark 6, sending: what one send costs in Graph requests, and how 1,000 sends drain under Exchange's
pacing limit.

* **Graph requests per send** (``send-graph`` worker, the stack's Graph emulator, 50 ms latency): the
  product's send state machine (``use_cases.send``, request → queue → ``deliver`` → confirm) with the real
  ``GraphMailSender`` over HTTPS on in-memory stores, ``GRAPH_SENDS`` sends of one mailbox, half of them with
  one 100 KB attachment. Every Graph request is counted by kind (draft, attachment upload, send, the
  look-ups of ``locate``/``inspect``), per send; wall and CPU per send.
* **Drain at the pacing limit** (``send-drain`` worker, no network): 1,000 sends across 50 mailboxes (20
  each), requested at once, taken through the same state machine and the same pacing
  (``use_cases.send.pacing``, Exchange's 30 messages a minute per mailbox) on in-memory stores with the
  test double of the provider (``FakeMailSender``) and a **simulated clock**: the minute timer's
  ``release_due`` and the queue are run minute by minute of simulated time until every send is sent. What
  is measured: the simulated minutes the drain takes, the most sends any mailbox submitted in one simulated
  minute (must be ≤ 30), and the product's CPU per send (the whole state machine with in-memory stores;
  the provider double's own work included, no network, no Table storage).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.context import Context
from bench.measure import Clock, median, run_worker

GRAPH_SENDS = 20
ATTACHMENT_BYTES = 100_000
DRAIN_MAILBOXES = 50
DRAIN_SENDS = 1_000
ORG = "bench-send-org"


def run(ctx: Context) -> dict[str, Any]:
    client = ctx.stack.client()
    tenant = client.provision_tenant("send")
    # Sending needs Mail.ReadWrite (drafts, attachments) and Mail.Send, granted with admin consent.
    client.set_app_roles(tenant.app.client_id, ["Mail.Read", "Mail.ReadWrite", "Mail.Send", "User.Read.All"])
    tenant.consent_as_admin()
    user = tenant.users["adele"]
    ctx.set_latency(ctx.latency_ms)
    params = {"tenant_id": tenant.id, "user_id": user.id, "address": user.mail.lower(), "token": tenant.app_token()}
    graph = [ctx.worker("send-graph", params) for _ in range(ctx.runs(3, 1))]
    drain = [run_worker("send-drain", {"mailboxes": DRAIN_MAILBOXES}, {}) for _ in range(ctx.runs(3, 1))]
    # 20 sends a mailbox stay under 30 a minute: the same 1,000 over 10 mailboxes show the pacing binding.
    paced = run_worker("send-drain", {"mailboxes": 10}, {})
    client.session.close()
    return {
        "latency_ms": ctx.latency_ms,
        "graph": graph,
        "drain": drain,
        "paced_10_mailboxes": paced,
        "median": {
            "graph_requests_per_send": median([g["requests_per_send"] for g in graph]),
            "graph_requests_per_send_with_attachment": median([g["per_send_with_attachment"] for g in graph]),
            "graph_requests_per_send_without_attachment": median([g["per_send_without_attachment"] for g in graph]),
            "graph_wall_per_send": median([g["wall_per_send"] for g in graph]),
            "graph_cpu_ms_per_send": median([g["cpu_ms_per_send"] for g in graph]),
            "drain_simulated_minutes": median([d["simulated_minutes"] for d in drain]),
            "drain_last_submit_seconds": median([d["simulated_seconds_to_last_submit"] for d in drain]),
            "drain_max_per_mailbox_minute": max(d["max_per_mailbox_minute"] for d in drain),
            "drain_cpu_ms_per_send": median([d["cpu_ms_per_send"] for d in drain]),
            "drain_all_sent": all(d["sent"] == DRAIN_SENDS for d in drain),
        },
    }


def _request(n: int, to: str, attachment: bool) -> tuple[Any, tuple[bytes, ...]]:
    from sync_core.domain.model import EmailAddress  # noqa: PLC0415
    from sync_core.domain.sending import AttachmentSpec, SendRequest  # noqa: PLC0415

    contents: tuple[bytes, ...] = ()
    attachments: tuple[AttachmentSpec, ...] = ()
    if attachment:
        data = (b"bench attachment %d " % n) * (ATTACHMENT_BYTES // 20)
        contents = (data,)
        spec = AttachmentSpec("terms.pdf", "application/pdf", len(data), hashlib.sha256(data).hexdigest())
        attachments = (spec,)
    request = SendRequest(
        to=(EmailAddress(to, "Pat"),),
        subject=f"Proposal {n}",
        content=f"Hello Pat, here is proposal {n}.",
        attachments=attachments,
    )
    return request, contents


def _run_queue(app: Any) -> None:
    from sync_core.use_cases import commands  # noqa: PLC0415

    for _ in range(10_000):
        taken = [m for m in app.push_queue.take() if m.body.get("kind") == "send"]
        if not taken:
            return
        for message in taken:
            commands.dispatch(app, "push", json.dumps(message.body))


def graph_worker(params: dict[str, Any]) -> dict[str, Any]:
    """``GRAPH_SENDS`` sends through the real Graph sender; Graph requests counted by kind."""
    import requests  # noqa: PLC0415

    from bench.stack import Stack  # noqa: PLC0415
    from sync_core.adapters.clock import SystemClock  # noqa: PLC0415
    from sync_core.adapters.graph.http import GraphHttp  # noqa: PLC0415
    from sync_core.adapters.graph.send import GraphMailSender  # noqa: PLC0415
    from sync_core.adapters.graph.session import make_session  # noqa: PLC0415
    from sync_core.domain.model import ConnectionMode, Mailbox, OrgSettings  # noqa: PLC0415
    from sync_core.domain.sending import SendStatus  # noqa: PLC0415
    from sync_core.testing.app import InMemoryApp  # noqa: PLC0415
    from sync_core.testing.mail import FakeMailSource  # noqa: PLC0415
    from sync_core.use_cases import send  # noqa: PLC0415

    stack = Stack.from_env()
    session = make_session(str(stack.ca_bundle))
    token = params["token"]
    sender = GraphMailSender(lambda _m: GraphHttp(session, stack.graph_url, lambda _refresh: token))
    app = InMemoryApp(clock=SystemClock(), sender=sender, mail=FakeMailSource())
    app.stores.settings.put(ORG, OrgSettings(sending_enabled=True))
    mailbox = Mailbox(
        ORG, "mb-send", params["address"], (params["address"],), datetime.now(UTC) - timedelta(days=1),
        mode=ConnectionMode.APPLICATION, tenant_id=params["tenant_id"], graph_user_id=params["user_id"],
    )  # fmt: skip
    app.stores.mailboxes.add(mailbox)
    kinds: Counter[str] = Counter()
    original = requests.Session.request

    def counted(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        kinds[_kind(method, str(url))] += 1
        return original(self, method, url, *args, **kwargs)

    requests.Session.request = counted  # type: ignore[method-assign]
    per_send: list[tuple[bool, int]] = []
    clock = Clock()
    statuses = []
    errors: Counter[str] = Counter()
    with clock.timing():
        for n in range(GRAPH_SENDS):
            before = sum(kinds.values())
            request, contents = _request(n, f"pat{n}@customer.example", attachment=n % 2 == 1)
            created = send.request_send(
                app.send_deps(), ORG, mailbox.mailbox_id, idempotency_key=f"k-{n}", request=request, contents=contents
            )
            for _ in range(60):  # confirm looks come back after CONFIRM_DELAYS: release what is due
                _run_queue(app)
                stored = app.sends.get(ORG, created.send.send_id)
                if stored is not None and stored.value.status in (SendStatus.SENT, SendStatus.FAILED):
                    break
                time.sleep(1)
                send.release_due(app.send_deps())
            statuses.append(stored.value.status.value if stored is not None else "missing")
            if stored is not None and stored.value.error is not None:
                errors[str(stored.value.error)[:200]] += 1
            per_send.append((n % 2 == 1, sum(kinds.values()) - before))
    requests.Session.request = original  # type: ignore[method-assign]
    with_files = [c for a, c in per_send if a]
    without = [c for a, c in per_send if not a]
    return {
        "statuses": dict(Counter(statuses)),
        "errors": dict(errors),
        "requests_by_kind": dict(kinds),
        "requests_per_send": sum(c for _, c in per_send) / len(per_send),
        "per_send_with_attachment": sum(with_files) / len(with_files),
        "per_send_without_attachment": sum(without) / len(without),
        "wall_per_send": clock.wall / GRAPH_SENDS,
        "cpu_ms_per_send": 1000 * clock.cpu / GRAPH_SENDS,
    }


def _kind(method: str, url: str) -> str:
    path = url.split("?", 1)[0]
    if "/token" in path or "login" in path:
        return "identity"
    if path.endswith("/send"):
        return "send (POST …/send)"
    if "/attachments" in path or "createUploadSession" in path or "upload" in path.lower():
        return f"attachment ({method})"
    if method == "POST" and path.endswith("/messages"):
        return "draft (POST …/messages)"
    if method == "DELETE":
        return "discard draft (DELETE)"
    return f"look-up ({method})"


def drain_worker(params: dict[str, Any]) -> dict[str, Any]:
    """1,000 sends across 50 mailboxes through the state machine and pacing, on a simulated clock."""
    from sync_core.domain.model import Mailbox, OrgSettings  # noqa: PLC0415
    from sync_core.domain.sending import SendStatus  # noqa: PLC0415
    from sync_core.testing.app import InMemoryApp  # noqa: PLC0415
    from sync_core.testing.mail import FakeMailSource, FixedClock  # noqa: PLC0415
    from sync_core.testing.send import FakeMailSender  # noqa: PLC0415
    from sync_core.use_cases import send  # noqa: PLC0415

    clock = FixedClock(datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    sender = FakeMailSender(clock=clock)
    app = InMemoryApp(clock=clock, sender=sender, mail=FakeMailSource())
    app.stores.settings.put(ORG, OrgSettings(sending_enabled=True))
    count = int(params.get("mailboxes", DRAIN_MAILBOXES))
    boxes = [f"mb-{n:02d}" for n in range(count)]
    for box in boxes:
        address = f"{box}@contoso.example"
        app.stores.mailboxes.add(Mailbox(ORG, box, address, (address,), clock.moment - timedelta(days=1)))
    ids = []
    timer = Clock()
    submitted_by_minute: Counter[tuple[str, int]] = Counter()
    original_submit = sender.submit
    start = clock.moment

    def submit(mailbox: Any, *args: Any, **kwargs: Any) -> Any:
        minute = int((clock.moment - start).total_seconds() // 60)
        submitted_by_minute[(mailbox.mailbox_id, minute)] += 1
        return original_submit(mailbox, *args, **kwargs)

    sender.submit = submit  # type: ignore[method-assign]
    minutes = 0
    with timer.timing():
        for n in range(DRAIN_SENDS):
            request, contents = _request(n, f"pat{n}@customer.example", attachment=False)
            created = send.request_send(
                app.send_deps(), ORG, boxes[n % count], idempotency_key=f"k-{n}", request=request,
                contents=contents,
            )  # fmt: skip
            ids.append(created.send.send_id)
        _run_queue(app)
        while minutes < 600:
            done = [app.sends.get(ORG, i) for i in ids]
            if all(d is not None and d.value.status in (SendStatus.SENT, SendStatus.FAILED) for d in done):
                break
            for _ in range(12):  # within the minute: the looks of confirm come back after 5 s, 15 s, ...
                clock.moment += timedelta(seconds=5)
                send.release_due(app.send_deps())
                _run_queue(app)
            minutes += 1
    finals = Counter(s.value.status.value for s in (app.sends.get(ORG, i) for i in ids) if s is not None)
    return {
        "sends": DRAIN_SENDS,
        "mailboxes": count,
        "sent": finals.get(SendStatus.SENT.value, 0),
        "statuses": dict(finals),
        "simulated_minutes": minutes,
        "simulated_seconds_to_last_submit": max(m for _, m in submitted_by_minute) * 60 if submitted_by_minute else 0,
        "max_per_mailbox_minute": max(submitted_by_minute.values()) if submitted_by_minute else 0,
        "cpu_ms_per_send": 1000 * timer.cpu / DRAIN_SENDS,
        "wall_seconds": timer.wall,
    }
