"""Record-driven backfill and dry-run previews through the local Functions host, Azurite and the HTTPS emulator:
records and settings through the API, the participant search through Graph's ``$search`` (the emulator),
the job on the sync queue, the timeline, a record's backfill jobs and the run reports read back through
the API; every table of the run scanned for what must not be stored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableServiceClient

from emulator.client import EmulatorClient, EmulatorTenant
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_sync_flow import RETURN_URL, connect, iso, run_scheduler, timeline

LIST_UNSUBSCRIBE = [{"name": "List-Unsubscribe", "value": "<mailto:unsubscribe@news.example>"}]


def put_settings(app_host: AppUnderTest, api: requests.Session, org: str, tenant: EmulatorTenant, **more: Any) -> None:
    body = {"internal_domains": [tenant.domain], "return_url_allow_list": [RETURN_URL], **more}
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=body).status_code == 200


def backfilled_mailbox(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> str:
    """Adele's mailbox connected, its history backfilled 90 days (so the watermark is 90 days back)."""
    mailbox_id = connect(app_host, api, emulator_client, org, tenant.users["adele"].upn)
    run_scheduler(app_host)
    assert api.post(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/backfill"), json={"days": 90}).status_code == 202
    app_host.host.drain_queues(timeout=60)
    return mailbox_id


def record_backfill(app_host: AppUnderTest, api: requests.Session, org: str, record_id: str) -> Any:
    response = api.get(app_host.url(f"orgs/{org}/records/{record_id}/backfill"))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def tables(storage_connection_string: str) -> Iterator[TableServiceClient]:
    service = TableServiceClient.from_connection_string(storage_connection_string)
    yield service
    service.close()


def stored_text(service: TableServiceClient) -> Iterator[str]:
    """Every key and property value of every entity of every table (the sync tests' storage scan); a table
    another test deletes meanwhile is skipped (the app's tables are never deleted)."""
    for table in service.list_tables():
        try:
            entities = list(service.get_table_client(table.name).list_entities())
        except ResourceNotFoundError:
            continue
        for entity in entities:
            for key, value in entity.items():
                yield f"{key}={value}"


def test_a_record_created_after_its_mail_arrived_gets_that_mail_in_the_window_once_with_its_thread(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    put_settings(app_host, api, org, tenant, record_backfill_days=30)
    mailbox_id = backfilled_mailbox(app_host, api, emulator_client, tenant, org)
    adele = tenant.users["adele"]
    pat = f"pat-{uuid.uuid4().hex[:8]}@newclient.example"
    now = datetime.now(UTC).replace(microsecond=0)

    def days_ago(days: int) -> dict[str, str]:
        return {"received": iso(now - timedelta(days=days)), "sent": iso(now - timedelta(days=days))}

    first = emulator_client.deliver(adele.upn, from_=pat, to=[adele.mail], subject="Proposal", **days_ago(5))
    mid = first["internetMessageId"]
    emulator_client.deliver(adele.upn, folder="sentitems", from_=adele.mail, to=[pat], subject="Re: Proposal",
                            in_reply_to=mid, references=[mid], **days_ago(4))  # fmt: skip
    emulator_client.deliver(adele.upn, from_=pat, to=[adele.mail], subject="Last year's offer", **days_ago(40))
    run_scheduler(app_host)  # the sync sees them first: nobody matches Pat yet, so nothing is logged
    assert timeline(app_host, api, org, "contact-pat")["activities"] == []

    body = {"type": "contact", "name": "Pat", "emails": [pat]}
    assert api.put(app_host.url(f"orgs/{org}/records/contact-pat"), json=body).status_code == 200
    app_host.host.drain_queues(timeout=60)

    activities = timeline(app_host, api, org, "contact-pat")["activities"]
    assert [a["subject"] for a in activities] == ["Re: Proposal", "Proposal"]  # the 40-day-old one is outside
    assert activities[0]["thread_id"] == activities[1]["thread_id"]
    assert [a["direction"] for a in activities] == ["sent", "received"]
    [job] = record_backfill(app_host, api, org, "contact-pat")["jobs"]
    assert job["state"] == "done" and job["mailbox_id"] == mailbox_id and job["logged"] == 2
    assert job["reasons"]["matched"] == 2 and job["activities_created"] == 2
    run = api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/runs/{job['job_id']}")).json()
    assert run["status"] == "done" and run["report"]["reasons"]["matched"] == 2

    # An update that adds nothing searches nothing; the mail stays logged once.
    requests_before = emulator_client.mailbox_stats(adele.upn)["requests"]
    body = {"type": "contact", "name": "Pat Doe", "emails": [pat.upper()]}
    assert api.put(app_host.url(f"orgs/{org}/records/contact-pat"), json=body).status_code == 200
    app_host.host.drain_queues(timeout=60)
    assert emulator_client.mailbox_stats(adele.upn)["requests"] == requests_before
    assert record_backfill(app_host, api, org, "contact-pat")["jobs"] == [job]
    assert len(timeline(app_host, api, org, "contact-pat")["activities"]) == 2


def test_a_thousand_record_batch_is_one_job_per_mailbox(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    put_settings(app_host, api, org, tenant, record_backfill_days=7)
    adele = connect(app_host, api, emulator_client, org, tenant.users["adele"].upn)
    megan = connect(app_host, api, emulator_client, org, tenant.users["megan"].upn)
    run_scheduler(app_host)
    upserts = [{"id": f"c-{i}", "type": "contact", "emails": [f"person{i}@client.example"]} for i in range(1000)]

    response = api.post(app_host.url(f"orgs/{org}/records:batch"), json={"upsert": upserts}, timeout=120)
    assert response.status_code == 200 and response.json()["succeeded"] == 1000
    app_host.host.drain_queues(timeout=120)

    first = record_backfill(app_host, api, org, "c-0")["jobs"]
    last = record_backfill(app_host, api, org, "c-999")["jobs"]
    assert [j["mailbox_id"] for j in first] == sorted([adele, megan])
    assert [j["job_id"] for j in first] == [j["job_id"] for j in last]
    assert all(j["state"] == "done" and j["records"] == 1000 for j in first)
    assert [j["searches"] for j in first] == [100, 100]  # 1,000 addresses, 20 a search, Inbox and Sent Items


def test_unmatched_mail_a_search_found_leaves_no_trace(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    *,
    org: str,
    tables: TableServiceClient,
) -> None:
    put_settings(app_host, api, org, tenant, record_backfill_days=30)
    mailbox_id = backfilled_mailbox(app_host, api, emulator_client, tenant, org)
    adele = tenant.users["adele"]
    token = uuid.uuid4().hex
    sam = f"sam-{token[:8]}@newclient.example"
    hidden = f"hidden-{token[:8]}@elsewhere.example"
    when = iso(datetime.now(UTC) - timedelta(days=2))
    emulator_client.deliver(adele.upn, from_=sam, to=[adele.mail], subject=f"Newsletter {token}",
                            body=f"bulk body {token}", headers=LIST_UNSUBSCRIBE, received=when, sent=when)  # fmt: skip
    emulator_client.deliver(adele.upn, folder="sentitems", from_=adele.mail, to=[hidden], bcc=[sam],
                            subject=f"Blind copy {token}", body=f"bcc {token}", received=when, sent=when)  # fmt: skip
    run_scheduler(app_host)

    body = {"type": "contact", "emails": [sam]}
    assert api.put(app_host.url(f"orgs/{org}/records/contact-sam"), json=body).status_code == 200
    app_host.host.drain_queues(timeout=60)

    [job] = record_backfill(app_host, api, org, "contact-sam")["jobs"]
    assert job["state"] == "done" and job["logged"] == 0 and job["reasons"].get("bulk") == 1
    assert timeline(app_host, api, org, "contact-sam")["activities"] == []
    leaks = [text[:160] for text in stored_text(tables) if token in text or hidden in text]
    assert leaks == []
    assert mailbox_id


def test_a_dry_run_stores_nothing_and_counts_what_the_backfill_then_logs(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    *,
    org: str,
    tables: TableServiceClient,
) -> None:
    put_settings(app_host, api, org, tenant)
    adele = tenant.users["adele"]
    dan = f"dan-{uuid.uuid4().hex[:8]}@talent.example"
    assert api.put(app_host.url(f"orgs/{org}/records/cand-dan"), json={"type": "candidate", "emails": [dan]}).ok
    mailbox_id = connect(app_host, api, emulator_client, org, adele.upn)
    run_scheduler(app_host)
    now = datetime.now(UTC)
    token = uuid.uuid4().hex
    for days, sender, subject in ((3, dan, "Interview"), (6, dan, "Follow-up"), (4, f"x-{token[:6]}@else.example",
                                                                                   f"Stranger {token}")):  # fmt: skip
        when = iso(now - timedelta(days=days))
        emulator_client.deliver(adele.upn, from_=sender, to=[adele.mail], subject=subject, received=when, sent=when)
    when = iso(now - timedelta(days=2))
    emulator_client.deliver(adele.upn, from_=dan, to=[adele.mail], subject="Deals", headers=LIST_UNSUBSCRIBE,
                            received=when, sent=when)  # fmt: skip
    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/backfill")

    dry = api.post(url, json={"days": 10, "dry_run": True})

    assert dry.status_code == 200, dry.text
    preview = dry.json()
    assert preview["dry_run"] is True and preview["complete"] is True
    assert preview["logged"] == 2 and preview["records"] == [{"id": "cand-dan", "messages": 2}]
    assert sorted(preview["sample_subjects"]) == ["Follow-up", "Interview"]
    assert preview["reasons"]["bulk"] == 1 and preview["reasons"]["unmatched"] == 1
    assert timeline(app_host, api, org, "cand-dan")["activities"] == []
    assert [t for t in stored_text(tables) if token in t] == []
    never_logged = api.post(url, json={"days": 10, "dry_run": True, "settings": {"never_log": [dan]}}).json()
    assert never_logged["logged"] == 0 and never_logged["reasons"]["never_log"] == 2

    queued = api.post(url, json={"days": 10})
    assert queued.status_code == 202
    app_host.host.drain_queues(timeout=60)
    run = api.get(app_host.url(queued.json()["run_url"].removeprefix("/api/"))).json()

    assert run["status"] == "done"
    assert run["report"]["reasons"] == preview["reasons"]
    assert run["report"]["activities_created"] == preview["logged"]
    assert len(timeline(app_host, api, org, "cand-dan")["activities"]) == preview["logged"]


def test_a_settings_preview_says_how_many_fewer_would_be_logged_and_why(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    put_settings(app_host, api, org, tenant)
    adele = tenant.users["adele"]
    dan = f"dan-{uuid.uuid4().hex[:8]}@talent.example"
    assert api.put(app_host.url(f"orgs/{org}/records/cand-dan"), json={"type": "candidate", "emails": [dan]}).ok
    mailbox_id = connect(app_host, api, emulator_client, org, adele.upn)
    when = iso(datetime.now(UTC) - timedelta(days=1))
    emulator_client.deliver(adele.upn, from_=dan, to=[adele.mail], subject="Interview", received=when, sent=when)

    body = {"settings": {"never_log": ["talent.example"]}, "mailbox_id": mailbox_id, "days": 3}
    response = api.post(app_host.url(f"orgs/{org}/settings:preview"), json=body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["delta"] == {"logged": -1, "reasons": {"matched": -1, "never_log": 1}}
    assert answer["changes"] == [{"from": "matched", "to": "never_log", "messages": 1}]
    assert api.get(app_host.url(f"orgs/{org}/settings")).json()["never_log"] == []  # nothing changed
