"""Failures that used to park a mailbox for good, on the real engine (Graph over HTTPS to the emulator,
every store on Azurite) and, where the queue matters, the product's own ``schedule.process_message`` with
in-memory doubles of the due index and the queue: a Graph 500/502 outage across every queue delivery, a
message deleted before its attachments are listed, a stored delta link the provider forgot (404
ErrorItemNotFound), an expired client secret, and a run that dies. Each ends with ``assert_converged``
(see test_faults_during_sync): the mailbox recovers by itself or by "Sync now", nothing is lost or
duplicated, and every failed run is visible in the mailbox's run history."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from sync_core.api.mailboxes import run_to_json
from sync_core.domain.model import Activity, MailboxStatus
from sync_core.ports import ActivityStore, ActivityWrite
from sync_core.testing.scheduling import InMemoryDueIndex, InMemoryWorkQueue
from sync_core.use_cases import schedule
from sync_core.use_cases.schedule import ScheduleDeps
from tests.integration.sync_env import ADELE, CAROL, ORG, STRANGER
from tests.reliability.rel_env import GraphOptions, Ledger, RelEnv, assert_converged, at_page, iso, now

MAX_DEQUEUE = 5  # host.json maxDequeueCount


def schedule_deps(rel: RelEnv, **run: Any) -> ScheduleDeps:
    s = rel.stores
    return ScheduleDeps(
        due=InMemoryDueIndex(),
        queue=InMemoryWorkQueue(),
        mailboxes=s.mailboxes,
        settings=s.settings,
        cursors=s.cursors,
        leases=s.leases,
        clock=rel.clock,
        sync=lambda _org, mailbox_id, run_id="": rel.run(mailbox_id, **run),
    )


def body(reason: str = "timer", mailbox_id: str = ADELE) -> bytes:
    return json.dumps({"org_id": ORG, "mailbox_id": mailbox_id, "reason": reason}).encode()


def drain(deps: ScheduleDeps) -> list[str]:
    queue = deps.queue
    assert isinstance(queue, InMemoryWorkQueue)
    outcomes: list[str] = []
    for _ in range(10):
        batch = queue.take()
        if not batch:
            return outcomes
        outcomes += [schedule.process_message(deps, json.dumps(m.body), 1, MAX_DEQUEUE) for m in batch]
    raise AssertionError("the queue did not drain")


def runs(rel: RelEnv, mailbox_id: str = ADELE) -> list[dict[str, Any]]:
    """The mailbox's run history as ``GET …/runs`` shows it, newest first."""
    return [run_to_json(r) for r in rel.stores.runs.recent(ORG, mailbox_id, 50)]


# -- item 5: a short 500/502 outage ---------------------------------------------------------------------


def test_a_500_and_502_outage_over_every_queue_delivery_never_parks_the_mailbox_and_it_converges_after(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard(matched=6, unmatched=2, sent=2, old=1)
    user = rel.user_id("adele")
    deps = schedule_deps(rel, graph=GraphOptions(max_attempts=3))

    for status in (500, 502):
        rel.client.add_fault(status=status, count=-1, mailbox=user)
        for delivery in range(1, MAX_DEQUEUE + 1):  # the last delivery included: nothing raises
            assert schedule.process_message(deps, body(), delivery, MAX_DEQUEUE) == "more"
        view = rel.crm_view()
        assert (view["status"], view["status_reason"]) == ("active", "")
        assert view["last_error"]["class"] == "transient" and str(status) in view["last_error"]["message"]
        rel.client.clear_faults()

    assert [r["error_class"] for r in runs(rel)] == ["transient"] * 2 * MAX_DEQUEUE
    assert isinstance(deps.queue, InMemoryWorkQueue)
    continuations = deps.queue.take()  # each run queued its continuation, backed off: no tight loop
    assert len(continuations) == 2 * MAX_DEQUEUE
    assert {m.delay_seconds for m in continuations} == {60}
    outcomes = [schedule.process_message(deps, json.dumps(m.body), 1, MAX_DEQUEUE) for m in continuations]
    assert outcomes[0] == "done" and set(outcomes) == {"done"}
    assert_converged(rel, ledger)
    assert rel.crm_view()["last_error"] is None  # the newest run succeeded


def test_a_message_deleted_before_its_attachments_are_listed_is_stored_without_them_and_the_run_goes_on(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel)
    pdf = {"name": "terms.pdf", "content_type": "application/pdf", "size": 2048}
    user, received = rel.user_id("adele"), now()
    ids = rel.deliver("adele", subject=f"Doomed {ledger.token}", received=iso(received), from_=CAROL,
                      to=[rel.address("adele")], attachments=[pdf])
    doomed = ledger.add("adele", f"Doomed {ledger.token}", ids["internetMessageId"], received, "matched", "c-carol")
    kept = ledger.matched(attachments=[pdf])

    def delete_doomed() -> None:  # the user deletes it after the delta page listed it
        rel.client.delete(user, ids["immutableId"])

    outcome = rel.run(after_page=at_page(1, delete_doomed))

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    assert outcome.report.reasons["attachments_unavailable"] == 1
    stored = assert_converged(rel, ledger)
    assert stored[doomed.internet_message_id].attachments == ()
    assert [a.name for a in stored[kept.internet_message_id].attachments] == ["terms.pdf"]


# -- item 11: a stored delta link the provider forgot -----------------------------------------------------


def redeliver(rel: RelEnv, ledger: Ledger, items: Sequence[Any]) -> None:
    """The same messages again (same internetMessageId, received time and sender): the mailbox as Graph
    shows it after the provider rebuilt its state."""
    senders = {"c-carol": CAROL}
    for d in items:
        sender = senders.get(d.record, STRANGER) if d.expect != "old" else CAROL
        rel.deliver(d.user, subject=d.subject, received=iso(d.received), from_=sender, to=[rel.address(d.user)],
                    internet_message_id=d.internet_message_id, body=f"Body of {d.subject}")


def test_a_stored_delta_link_the_provider_forgot_resyncs_from_the_watermark_without_duplicates(rel: RelEnv) -> None:
    ledger = Ledger(rel)
    for _ in range(5):
        ledger.matched()
        ledger.unmatched()
    ledger.old()
    first = rel.run()
    assert first.status == "done" and first.report is not None and first.report.activities_created == 5

    # The emulator restarts while storage keeps the app's cursors: the stored links name folder ids it
    # no longer has (404 ErrorItemNotFound). Its mail is delivered again, with new mail after it.
    rel.client.forget_mailbox(rel.user_id("adele"))
    redeliver(rel, ledger, list(ledger.items))
    ledger.matched()
    ledger.sent()
    ledger.unmatched()

    outcome = rel.run()

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == "", outcome
    assert outcome.report.reasons["folders_resynced"] == 2  # Inbox and Sent Items, from the watermark
    assert outcome.report.activities_created == 2  # the new ones; the old ones were not stored again
    assert_converged(rel, ledger)
    idle = rel.run()  # the new links hold: no loop
    assert idle.status == "done" and idle.report is not None and idle.report.activities_created == 0


# -- configuration failures: an expired client secret ----------------------------------------------------


def test_an_expired_client_secret_shows_error_with_the_reason_and_the_first_run_after_the_renewal_clears_it(
    rel: RelEnv,
) -> None:
    connected = rel.connect("adele")
    mailbox_id = connected.mailbox_id
    watermark = rel.mailbox(mailbox_id).watermark
    ledger = Ledger(rel, earliest=watermark).standard(matched=4, unmatched=2, sent=1, old=1, watermark=watermark)
    deps = schedule_deps(rel, delegated=True)
    client_id = rel.tenant.app.client_id
    rel.client.expire_client_secret(client_id)
    rel.client.expire_access_tokens(rel.user_id("adele"))
    try:
        for delivery in range(1, MAX_DEQUEUE + 1):
            assert schedule.process_message(deps, body(mailbox_id=mailbox_id), delivery, MAX_DEQUEUE) == "failed"
        view = rel.crm_view(mailbox_id)
        assert view["status"] == "error" and "AADSTS7000222" in view["status_reason"]
        assert "client secret has expired" in view["status_reason"]
        assert view["last_error"] == {"at": view["last_sync_at"], "class": "configuration",
                                      "message": view["status_reason"]}
        assert [r["error_class"] for r in runs(rel, mailbox_id)] == ["configuration"] * MAX_DEQUEUE
        assert deps.due.get(ORG, mailbox_id) is not None  # still scheduled, with a back-off
        assert schedule.request_sync(deps, ORG, mailbox_id).status == "queued"  # never 409 for error
    finally:
        rel.client.expire_client_secret(client_id, expired=False)

    assert drain(deps) == ["done"]  # the Sync now accepted above, after the secret was renewed
    assert_converged(rel, ledger, mailbox_id)
    assert rel.crm_view(mailbox_id)["last_error"] is None


# -- item 12: a run that dies ---------------------------------------------------------------------------------


class FailingSaves:
    """The real ``ActivityStore``; its next ``failures`` saves raise a failure nobody classified."""

    def __init__(self, inner: ActivityStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the store choked on carol@client.example")  # text that must not be shown
        return self.inner.save(activities, announce_at=announce_at)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_run_that_dies_is_listed_with_its_class_and_reason_and_the_last_delivery_leaves_a_recoverable_error(
    rel: RelEnv,
) -> None:
    ledger = Ledger(rel).standard(matched=4, unmatched=2, sent=1, old=1)
    store = FailingSaves(rel.stores.activities, failures=MAX_DEQUEUE)
    deps = schedule_deps(rel, activities=store)

    for delivery in range(1, MAX_DEQUEUE + 1):
        with pytest.raises(RuntimeError):
            schedule.process_message(deps, body(), delivery, MAX_DEQUEUE)
        view = rel.crm_view()
        assert view["last_error"]["class"] == "unexpected" and view["last_error"]["message"].startswith("RuntimeError")
        assert "carol" not in json.dumps(view)

    history = runs(rel)
    assert len(history) == MAX_DEQUEUE and {r["error_class"] for r in history} == {"unexpected"}
    mailbox = rel.mailbox()
    assert (mailbox.status, mailbox.status_reason) == (MailboxStatus.ERROR, "sync failed 5 times: RuntimeError")
    assert schedule.request_sync(deps, ORG, ADELE).status == "queued"  # Sync now recovers it

    assert drain(deps) == ["done"]
    assert_converged(rel, ledger)
    assert runs(rel)[0]["error"] is None and rel.crm_view()["last_error"] is None
