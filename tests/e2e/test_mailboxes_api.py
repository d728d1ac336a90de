"""Managing mailboxes through the running function_app: status, PATCH, disconnect, run reports,
explain, sign out all, and org isolation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from azure.data.tables import TableServiceClient

from emulator.client import EmulatorClient, EmulatorTenant
from sync_core.adapters.tables import TableStores
from sync_core.domain.model import activity_id_for
from sync_core.ports import RunReport
from sync_core.settings import Settings
from tests import connect_flow
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_connect_api import RETURN_URL, allow_return_url

CAROL = "carol@client.example"


def app_stores() -> TableStores:
    """The app's own tables: the running host applies its settings (storage, TABLE_PREFIX) to os.environ."""
    settings = Settings.from_env()
    service = TableServiceClient.from_connection_string(settings.storage_connection_string)
    return TableStores.create(service, settings.table_prefix)


@pytest.fixture
def mailbox_id(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> str:
    """Adele's mailbox, connected to ``org`` through the browser-style sign-in and the CRM's confirmation."""
    allow_return_url(app_host, api, org)
    upn = tenant.users["adele"].upn
    return connect_flow.connect(api, app_host.url, emulator_client, org, upn, return_url=RETURN_URL)


def after_watermark(app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str) -> str:
    """A receive time Graph (whole seconds) reports as not before the mailbox's watermark."""
    mailbox = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")).json()
    watermark = datetime.fromisoformat(mailbox["watermark"].replace("Z", "+00:00"))
    return (watermark.replace(microsecond=0) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(
    org: str, mailbox_id: str, minutes_ago: int, *, error: str = "", created: int = 0, error_class: str = ""
) -> RunReport:
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return RunReport(
        org_id=org,
        mailbox_id=mailbox_id,
        run_id=uuid.uuid4().hex,
        started_at=started,
        finished_at=started + timedelta(seconds=2),
        reasons={"matched": created, "unmatched": 3},
        pages=2,
        graph_requests=3,
        activities_created=created,
        error=error,
        error_class=error_class,
    )


def test_an_unknown_mailbox_is_404_on_every_route(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    base = app_host.url(f"orgs/{org}/mailboxes/mbx_unknown")

    answers = [
        api.get(base),
        api.patch(base, json={"enabled": False}),
        api.delete(base),
        api.get(base + "/runs"),
        api.post(base + "/explain", json={"internet_message_id": "<x@example.com>"}),
    ]

    assert [a.status_code for a in answers] == [404] * 5
    assert answers[0].json()["error"]["code"] == "not_found"


def test_patch_disables_a_mailbox_and_sets_its_directions_then_enables_it_again(
    app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str
) -> None:
    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")

    paused = api.patch(url, json={"enabled": False, "directions": "sent"})
    resumed = api.patch(url, json={"enabled": True})

    assert paused.status_code == 200
    fields = ("enabled", "directions", "status")
    assert [paused.json()[f] for f in fields] == [False, "sent", "paused"]
    assert [resumed.json()[f] for f in fields] == [True, "sent", "active"]
    assert api.get(url).json()["directions"] == "sent"


def test_patch_refuses_an_invalid_direction_unknown_fields_bad_json_and_a_wrong_content_type(
    app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str
) -> None:
    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")

    direction = api.patch(url, json={"directions": "sideways"})
    unknown = api.patch(url, json={"status": "active"})
    broken = api.patch(url, data="{", headers={"Content-Type": "application/json"})
    text = api.patch(url, data="enabled=false", headers={"Content-Type": "text/plain"})

    assert (direction.status_code, direction.json()["error"]["details"]) == (400, {"field": "directions"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "unknown_field")
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    assert text.status_code == 415
    assert api.get(url).json()["directions"] == "both"


def test_disconnect_answers_204_and_the_mailbox_is_then_disconnected(
    app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str
) -> None:
    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")
    assert api.delete(url, params={"purge": "maybe"}).status_code == 400

    assert api.delete(url, params={"purge": "false"}).status_code == 204
    assert api.delete(url).status_code == 204  # idempotent

    assert api.get(url).json()["status"] == "disconnected"
    explain = api.post(url + "/explain", json={"internet_message_id": "<x@example.com>"})
    assert explain.status_code == 409


def test_runs_are_listed_newest_first_and_summarised_on_the_mailbox(
    app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str
) -> None:
    stores = app_stores()
    oldest, failed, newest = (
        report(org, mailbox_id, 30, created=2),
        report(org, mailbox_id, 20, error="Graph answered 503 8 times", error_class="transient"),
        report(org, mailbox_id, 10, created=1),
    )
    for run in (oldest, failed, newest):
        stores.runs.add(run, keep=50)

    runs = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/runs"), params={"limit": 2}).json()["runs"]
    mailbox = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")).json()

    assert [r["run_id"] for r in runs] == [newest.run_id, failed.run_id]
    assert set(runs[0]) == {
        "run_id", "started_at", "finished_at", "duration_ms", "reasons", "pages", "graph_requests",
        "table_transactions", "activities_created", "activities_merged", "more", "error", "error_class",
    }  # fmt: skip
    assert (runs[0]["duration_ms"], runs[0]["error"], runs[1]["error"]) == (2000, None, failed.error)
    assert (runs[0]["error_class"], runs[1]["error_class"]) == (None, "transient")
    assert runs[0]["reasons"] == {"matched": 1, "unmatched": 3}
    assert mailbox["last_sync_at"] == mailbox["last_success_at"] == runs[0]["finished_at"]
    assert mailbox["last_error"] is None  # the newest run succeeded: the failure before it is history
    counters = mailbox["counters"]
    assert (counters["runs"], counters["failed_runs"], counters["activities_created"]) == (3, 1, 3)
    assert counters["reasons"] == {"matched": 3, "unmatched": 9}
    bad_limit = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/runs"), params={"limit": 0})
    assert (bad_limit.status_code, bad_limit.json()["error"]["details"]) == (400, {"field": "limit"})


def test_explain_returns_the_decision_reason_by_reason_and_stores_nothing(
    app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, org: str, mailbox_id: str
) -> None:
    emulator_client, stores = tenant.client, app_stores()
    api.put(app_host.url(f"orgs/{org}/records/c-1"), json={"type": "contact", "name": "Carol", "emails": [CAROL]})
    adele = tenant.users["adele"]
    received = after_watermark(app_host, api, org, mailbox_id)
    matched = emulator_client.deliver(
        adele.upn, subject="Offer", to=[adele.mail], received=received, **{"from": f"Carol <{CAROL}>"}
    )
    stranger = emulator_client.deliver(
        adele.upn, subject="Hi", to=[adele.mail], received=received, **{"from": "dan@elsewhere.example"}
    )
    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/explain")

    answer = api.post(url, json={"internet_message_id": matched["internetMessageId"]})
    unmatched = api.post(url, json={"internet_message_id": stranger["internetMessageId"]}).json()["decision"]
    missing = api.post(url, json={"internet_message_id": "<nobody@nowhere.example>"})

    assert answer.status_code == 200, answer.text
    decision = answer.json()["decision"]
    assert (decision["store"], decision["reason"], decision["direction"]) == (True, "matched", "received")
    assert decision["matches"] == [{"record_id": "c-1", "record_type": "contact", "address": CAROL, "by": "address"}]
    assert [s["check"] for s in decision["steps"]] == [
        "folder", "watermark", "direction", "participants", "bulk", "internal", "never_log", "blocked_domain", "match",
    ]  # fmt: skip
    assert all(step["passed"] for step in decision["steps"])
    assert answer.json()["message"] == {
        "internet_message_id": matched["internetMessageId"], "folder": "inbox", "received_at": received,
        "activity_id": None,
    }  # fmt: skip
    assert (unmatched["store"], unmatched["reason"]) == (False, "unmatched")
    assert unmatched["steps"][-1] == {"check": "match", "passed": False, "detail": "dan@elsewhere.example: no record"}
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "message_not_found")
    # Nothing was stored: no activity, no timeline entry, no run report, no delta cursor.
    assert stores.activities.get(org, activity_id_for(org, matched["internetMessageId"])) is None
    assert stores.activities.timeline(org, "c-1", None, 10).items == ()
    assert stores.runs.recent(org, mailbox_id, 10) == ()
    assert stores.cursors.get_all(org, mailbox_id) == {}


def test_explain_says_why_mail_that_arrived_before_its_record_is_not_stored_and_the_backfill_it_names_logs_it(
    app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, org: str, mailbox_id: str
) -> None:
    emulator_client, adele = tenant.client, tenant.users["adele"]
    base = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")
    assert api.post(base + "/backfill", json={"days": 1}).status_code == 202  # the watermark a day back
    app_host.host.drain_queues(timeout=30)
    received = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sent = emulator_client.deliver(
        adele.upn, subject="Before the record", to=[adele.mail], received=received, **{"from": f"Carol <{CAROL}>"}
    )
    explain = {"internet_message_id": sent["internetMessageId"]}
    pending = api.post(base + "/explain", json=explain).json()
    assert pending["storage"]["state"] == "not_logged"  # no record for Carol yet: unmatched
    assert api.post(base + "/sync").status_code == 202
    app_host.host.drain_queues(timeout=30)  # the run reads the message and finds it unmatched
    api.put(app_host.url(f"orgs/{org}/records/c-1"), json={"type": "contact", "name": "Carol", "emails": [CAROL]})

    answer = api.post(base + "/explain", json=explain).json()

    assert (answer["decision"]["store"], answer["decision"]["reason"]) == (True, "matched")  # as before
    assert answer["message"]["activity_id"] is None
    storage = answer["storage"]
    assert storage["state"] == "passed" and "read past it" in storage["detail"]
    assert storage["remedy"] == {
        "action": "backfill", "method": "POST", "path": f"/api/orgs/{org}/mailboxes/{mailbox_id}/backfill",
        "body": {"days": 1},
    }  # fmt: skip
    assert api.post(base + "/sync").status_code == 202  # Sync now does not log it: the cursor moved past it
    app_host.host.drain_queues(timeout=30)
    assert api.post(base + "/explain", json=explain).json()["storage"]["state"] == "passed"

    assert api.post(app_host.url(storage["remedy"]["path"].removeprefix("/api/")), json=storage["remedy"]["body"])
    app_host.host.drain_queues(timeout=30)

    logged = api.post(base + "/explain", json=explain).json()
    assert logged["storage"] == {"state": "stored", "detail": "The message is logged.", "remedy": None}
    assert logged["message"]["activity_id"] is not None
    timeline = api.get(app_host.url(f"orgs/{org}/records/c-1/activities")).json()["activities"]
    assert [a["subject"] for a in timeline] == ["Before the record"]


def test_explain_of_matched_mail_no_run_read_yet_says_sync_now_logs_it(
    app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, org: str, mailbox_id: str
) -> None:
    emulator_client, adele = tenant.client, tenant.users["adele"]
    api.put(app_host.url(f"orgs/{org}/records/c-1"), json={"type": "contact", "name": "Carol", "emails": [CAROL]})
    received = after_watermark(app_host, api, org, mailbox_id)
    sent = emulator_client.deliver(
        adele.upn, subject="Fresh", to=[adele.mail], received=received, **{"from": f"Carol <{CAROL}>"}
    )

    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/explain")
    answer = api.post(url, json={"internet_message_id": sent["internetMessageId"]}).json()

    assert answer["storage"]["state"] == "pending"
    assert answer["storage"]["remedy"] == {
        "action": "sync_now", "method": "POST", "path": f"/api/orgs/{org}/mailboxes/{mailbox_id}/sync", "body": {},
    }  # fmt: skip


def test_explain_refuses_a_body_without_an_internet_message_id(
    app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str
) -> None:
    response = api.post(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/explain"), json={})

    assert (response.status_code, response.json()["error"]["details"]) == (400, {"field": "internet_message_id"})


def test_sign_out_all_puts_every_mailbox_of_the_org_in_needs_reauth(
    app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str
) -> None:
    response = api.post(app_host.url(f"orgs/{org}/mailboxes:sign-out-all"))

    assert (response.status_code, response.json()) == (200, {"signed_out": 1})
    mailbox = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")).json()
    assert (mailbox["status"], mailbox["status_reason"]) == ("needs_reauth", "signed out by admin")


def test_another_org_can_neither_read_nor_change_nor_explain_a_mailbox(
    app_host: AppUnderTest, api: requests.Session, org: str, mailbox_id: str
) -> None:
    other = app_host.url(f"orgs/{org}-b/mailboxes/{mailbox_id}")

    answers = [
        api.get(other),
        api.patch(other, json={"enabled": False}),
        api.delete(other),
        api.get(other + "/runs"),
        api.post(other + "/explain", json={"internet_message_id": "<x@example.com>"}),
    ]

    assert [a.status_code for a in answers] == [404] * 5
    assert api.get(app_host.url(f"orgs/{org}-b/mailboxes")).json() == {"mailboxes": []}
    assert api.post(app_host.url(f"orgs/{org}-b/mailboxes:sign-out-all")).json() == {"signed_out": 0}
    mine = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}")).json()
    assert (mine["status"], mine["enabled"]) == ("active", True)
