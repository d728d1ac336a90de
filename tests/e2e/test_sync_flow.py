"""The whole product through the local Functions host over HTTP: settings and records through the API, a
delegated mailbox connected through the emulator's sign-in, mail delivered in the emulator, the minute
timer, the sync queue, and the activities read back through the API; plus "Sync now", backfill, duplicate
queue messages and poison messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from emulator.client import EmulatorClient, EmulatorTenant
from sync_core import bootstrap
from tests import connect_flow
from tests.e2e.conftest import AppUnderTest

TIMER = "enqueue_due_mailboxes"
QUEUE_FUNCTION = "sync_mailbox_from_queue"
RETURN_URL = "https://crm.example/app/mailboxes"
DAN = "dan@talent.example"
ERIN = "erin@prospect.example"
STRANGER = "someone@nowhere.example"


# -- helpers (also used by test_activities_api) ------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def set_up_org(app_host: AppUnderTest, api: requests.Session, org: str, tenant: EmulatorTenant) -> None:
    """Org settings and CRM records, through the API."""
    settings = {"internal_domains": [tenant.domain], "return_url_allow_list": ["https://crm.example/app"]}
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=settings).status_code == 200
    for record_id, body in (
        ("cand-dan", {"type": "candidate", "name": "Dan", "emails": [DAN.upper()]}),
        ("lead-erin", {"type": "lead", "name": "Erin", "emails": [ERIN]}),
    ):
        assert api.put(app_host.url(f"orgs/{org}/records/{record_id}"), json=body).status_code == 200


def connect(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, org: str, upn: str
) -> str:
    """The CRM's "Connect mailbox": POST connect, sign in on the emulator's page, come back to the CRM
    with a connect code and confirm it; returns the new mailbox's id."""
    return connect_flow.connect(api, app_host.url, emulator_client, org, upn, return_url=RETURN_URL)


def run_scheduler(app_host: AppUnderTest) -> None:
    """One tick of the minute timer, then wait until the queue-triggered syncs are done."""
    app_host.host.trigger_timer(TIMER)
    app_host.host.drain_queues(timeout=30)


def timeline(app_host: AppUnderTest, api: requests.Session, org: str, record_id: str, **params: Any) -> Any:
    response = api.get(app_host.url(f"orgs/{org}/records/{record_id}/activities"), params=params)
    assert response.status_code == 200, response.text
    return response.json()


def mailbox_json(app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str) -> Any:
    response = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}"))
    assert response.status_code == 200, response.text
    return response.json()


@dataclass(frozen=True)
class Connected:
    org: str
    mailbox_id: str
    upn: str
    mail: str


@pytest.fixture
def adele(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> Connected:
    """Adele's mailbox in a set-up org, connected and synced once (nothing to log yet)."""
    set_up_org(app_host, api, org, tenant)
    user = tenant.users["adele"]
    mailbox_id = connect(app_host, api, emulator_client, org, user.upn)
    run_scheduler(app_host)
    return Connected(org, mailbox_id, user.upn, user.mail)


# -- the end-to-end flow -----------------------------------------------------------------------------


def test_settings_records_connect_mail_timer_and_queue_make_activities_and_threads_visible_through_the_api(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    set_up_org(app_host, api, org, tenant)
    user = tenant.users["adele"]
    mailbox_id = connect(app_host, api, emulator_client, org, user.upn)
    now = datetime.now(UTC).replace(microsecond=0)
    original = emulator_client.deliver(
        user.upn,
        from_=f"Dan Candidate <{DAN}>",
        to=[user.mail],
        cc=[STRANGER],
        subject="Interview on Tuesday",
        body="<p>Hello Adele,<br>does <b>Tuesday</b> work?</p>",
        received=iso(now + timedelta(seconds=1)),
        attachments=[{"name": "cv.pdf", "content_type": "application/pdf", "size": 48213}],
    )
    emulator_client.deliver(
        user.upn,
        folder="sentitems",
        from_=user.mail,
        to=[DAN],
        subject="Re: Interview on Tuesday",
        body="Tuesday is fine.",
        received=iso(now + timedelta(seconds=5)),
        in_reply_to=original["internetMessageId"],
        references=[original["internetMessageId"]],
    )
    emulator_client.deliver(user.upn, from_=STRANGER, to=[user.mail], subject="Unrelated", received=iso(now))

    run_scheduler(app_host)

    listed = timeline(app_host, api, org, "cand-dan")
    assert listed["next_cursor"] is None
    reply, first = listed["activities"]
    assert (reply["subject"], reply["direction"]) == ("Re: Interview on Tuesday", "sent")
    assert (first["subject"], first["direction"]) == ("Interview on Tuesday", "received")
    assert first["internet_message_id"] == original["internetMessageId"]
    assert first["from"] == {"address": DAN, "name": "Dan Candidate"}
    assert [p["address"] for p in first["to"]] == [user.mail]
    assert [p["address"] for p in first["cc"]] == [STRANGER]
    assert "Tuesday" in first["body"] and "<b>" not in first["body"]
    assert first["body_truncated"] is False and first["body_preview"]
    assert first["received_at"] == iso(now + timedelta(seconds=1))
    assert first["mailbox_ids"] == [mailbox_id]
    assert first["records"] == [{"id": "cand-dan", "type": "candidate"}]
    assert first["attachments"] == [{"name": "cv.pdf", "size": 48213, "content_type": "application/pdf"}]
    assert reply["thread_id"] == first["thread_id"]
    assert timeline(app_host, api, org, "lead-erin")["activities"] == []

    [thread] = timeline(app_host, api, org, "cand-dan", view="threads")["threads"]
    assert [a["subject"] for a in thread["activities"]] == ["Interview on Tuesday", "Re: Interview on Tuesday"]
    assert thread["message_count"] == 2 and thread["thread_id"] == first["thread_id"]

    detail = api.get(app_host.url(f"orgs/{org}/activities/{first['id']}"))
    assert detail.status_code == 200 and detail.json() == first
    status = mailbox_json(app_host, api, org, mailbox_id)
    assert status["status"] == "active" and status["last_success_at"] is not None
    assert status["counters"]["activities_created"] == 2
    assert status["counters"]["reasons"]["unmatched"] == 1


def test_sync_now_answers_202_and_new_mail_appears_after_the_queue_ran(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, adele: Connected
) -> None:
    emulator_client.deliver(adele.upn, from_=ERIN, to=[adele.mail], subject="Pricing question")
    sync_url = app_host.url(f"orgs/{adele.org}/mailboxes/{adele.mailbox_id}/sync")

    response = api.post(sync_url)

    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    run_path = f"/api/orgs/{adele.org}/mailboxes/{adele.mailbox_id}/runs/{run_id}"
    expected = {"mailbox_id": adele.mailbox_id, "status": "queued", "run_id": run_id, "run_url": run_path}
    assert response.json() == expected
    assert response.headers["Location"] == run_path
    again = api.post(sync_url)
    assert again.status_code == 202 and again.json()["status"] == "coalesced"
    assert again.json()["run_id"] == run_id and again.headers["Location"] == run_path
    app_host.host.drain_queues(timeout=30)
    subjects = [a["subject"] for a in timeline(app_host, api, adele.org, "lead-erin")["activities"]]
    assert subjects == ["Pricing question"]
    polled = api.get(app_host.url(run_path.removeprefix("/api/")))
    assert polled.status_code == 200, polled.text
    assert polled.json()["status"] == "done" and polled.json()["run_id"] == run_id
    assert polled.json()["report"]["activities_created"] == 1 and polled.json()["report"]["run_id"] == run_id
    next_one = api.post(sync_url)
    assert next_one.json()["status"] == "queued"  # the run finished: a new request queues again
    assert next_one.json()["run_id"] != run_id
    app_host.host.drain_queues(timeout=30)


def test_a_sync_now_with_nothing_new_is_queued_then_done_with_its_report(
    app_host: AppUnderTest, api: requests.Session, adele: Connected
) -> None:
    response = api.post(app_host.url(f"orgs/{adele.org}/mailboxes/{adele.mailbox_id}/sync"))
    run_url = app_host.url(response.json()["run_url"].removeprefix("/api/"))

    queued = api.get(run_url)
    assert queued.status_code == 200 and queued.json()["status"] == "queued" and queued.json()["report"] is None
    app_host.host.drain_queues(timeout=30)

    done = api.get(run_url).json()
    assert done["status"] == "done" and done["report"]["activities_created"] == 0
    assert done["report"]["graph_requests"] >= 1


def test_an_unknown_run_id_gets_a_404_json_error(
    app_host: AppUnderTest, api: requests.Session, adele: Connected
) -> None:
    for run_id in ("0" * 32, "not-a-run"):
        response = api.get(app_host.url(f"orgs/{adele.org}/mailboxes/{adele.mailbox_id}/runs/{run_id}"))
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert api.get(app_host.url(f"orgs/{adele.org}/mailboxes/mbx_nobody/runs/{'0' * 32}")).status_code == 404


def test_sync_now_and_backfill_of_an_unknown_mailbox_get_404(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    assert api.post(app_host.url(f"orgs/{org}/mailboxes/mbx_nobody/sync")).status_code == 404
    response = api.post(app_host.url(f"orgs/{org}/mailboxes/mbx_nobody/backfill"), json={"days": 7})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_backfill_answers_202_and_brings_in_older_mail_within_the_window_only(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, adele: Connected
) -> None:
    now = datetime.now(UTC)
    for days, subject in ((3, "Three days ago"), (30, "A month ago")):
        received = iso(now - timedelta(days=days))
        emulator_client.deliver(adele.upn, from_=DAN, to=[adele.mail], subject=subject, received=received)
    api.post(app_host.url(f"orgs/{adele.org}/mailboxes/{adele.mailbox_id}/sync"))
    app_host.host.drain_queues(timeout=30)
    assert timeline(app_host, api, adele.org, "cand-dan")["activities"] == []  # older than the watermark

    response = api.post(app_host.url(f"orgs/{adele.org}/mailboxes/{adele.mailbox_id}/backfill"), json={"days": 7})

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued" and response.json()["days"] == 7
    assert response.headers["Location"] == response.json()["run_url"]
    app_host.host.drain_queues(timeout=30)
    subjects = [a["subject"] for a in timeline(app_host, api, adele.org, "cand-dan")["activities"]]
    assert subjects == ["Three days ago"]
    polled = api.get(app_host.url(response.json()["run_url"].removeprefix("/api/"))).json()
    assert polled["status"] == "done" and polled["report"]["activities_created"] == 1
    watermark = mailbox_json(app_host, api, adele.org, adele.mailbox_id)["watermark"]
    assert abs(datetime.fromisoformat(watermark.replace("Z", "+00:00")) - (now - timedelta(days=7))) < timedelta(
        minutes=1
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"days": 0}, "invalid_field"),
        ({"days": 366}, "invalid_field"),
        ({"days": "7"}, "invalid_field"),
        ({"days": True}, "invalid_field"),
        ({}, "invalid_field"),
        ({"days": 7, "weeks": 1}, "unknown_field"),
    ],
)
def test_backfill_refuses_days_outside_1_to_365_with_400(
    app_host: AppUnderTest, api: requests.Session, org: str, body: dict[str, Any], code: str
) -> None:
    response = api.post(app_host.url(f"orgs/{org}/mailboxes/mbx_any/backfill"), json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_backfill_needs_a_json_body(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    response = api.post(app_host.url(f"orgs/{org}/mailboxes/mbx_any/backfill"), data="days=7")

    assert response.status_code == 415


def test_duplicate_queue_messages_do_not_duplicate_activities(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, adele: Connected
) -> None:
    emulator_client.deliver(adele.upn, from_=DAN, to=[adele.mail], subject="Only once")
    queue = bootstrap.services().queue

    for _ in range(4):
        queue.enqueue({"org_id": adele.org, "mailbox_id": adele.mailbox_id, "reason": "sync_now"})
    app_host.host.drain_queues(timeout=30)

    [activity] = timeline(app_host, api, adele.org, "cand-dan")["activities"]
    assert activity["subject"] == "Only once" and activity["mailbox_ids"] == [adele.mailbox_id]


def test_a_mailbox_in_error_shows_the_reason_is_accepted_by_sync_now_and_recovers_once_the_cause_is_fixed(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant,
    adele: Connected,
) -> None:
    org, mailbox_id = adele.org, adele.mailbox_id
    sync_url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/sync")
    emulator_client.deliver(adele.upn, from_=DAN, to=[adele.mail], subject="While the secret was expired")
    # The app's client secret passes its end date: every token refresh answers AADSTS7000222.
    emulator_client.expire_client_secret(app_host.client_id)
    try:
        emulator_client.expire_access_tokens(tenant.users["adele"].id)
        assert api.post(sync_url).status_code == 202
        app_host.host.drain_queues(timeout=30)

        status = mailbox_json(app_host, api, org, mailbox_id)
        assert status["status"] == "error"
        assert "client secret has expired" in status["status_reason"] and "AADSTS7000222" in status["status_reason"]
        assert status["last_error"]["class"] == "configuration"
        [latest, *_] = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/runs")).json()["runs"]
        assert (latest["error_class"], latest["error"]) == ("configuration", status["status_reason"])
    finally:
        emulator_client.expire_client_secret(app_host.client_id, expired=False)

    # A mailbox in error is never refused: Sync now runs it, and the run that succeeds clears the error.
    assert api.post(sync_url).status_code == 202
    app_host.host.drain_queues(timeout=30)

    status = mailbox_json(app_host, api, org, mailbox_id)
    assert (status["status"], status["status_reason"], status["last_error"]) == ("active", "", None)
    [activity] = timeline(app_host, api, org, "cand-dan")["activities"]
    assert activity["subject"] == "While the secret was expired"
    backfill = api.post(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/backfill"), json={"days": 7})
    assert backfill.status_code == 202
