"""Sending from the CRM through the local Functions host: the API, the push queue's state machine, the
emulator's Graph (drafts, upload sessions, send, createReply, delivery to another emulator mailbox), the
minute timer, and the sync that later sees the sent copy."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from emulator.client import EmulatorClient, EmulatorTenant
from tests import connect_flow
from tests.e2e.conftest import AppUnderTest

TIMER = "enqueue_due_mailboxes"
RETURN_URL = "https://crm.example/app/mailboxes"


@dataclass(frozen=True)
class Senders:
    org: str
    adele: str  # mailbox id
    megan: str
    adele_mail: str
    megan_mail: str
    adele_upn: str
    megan_upn: str


@pytest.fixture
def customer_tenant(emulator_client: EmulatorClient) -> Iterator[EmulatorTenant]:
    """A second tenant: the customer's, whose megan is a CRM contact (another domain than adele's)."""
    provisioned = emulator_client.provision_tenant("customer")
    yield provisioned
    provisioned.session.close()


@pytest.fixture
def senders(  # noqa: PLR0917 - pytest fixtures
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    tenant: EmulatorTenant,
    customer_tenant: EmulatorTenant,
    org: str,
) -> Senders:
    """Org with sending on; megan (the customer's tenant) a CRM contact; adele and megan both connected
    (adele with Mail.Send), so both mailboxes sync what was sent."""
    settings = {"sending_enabled": True, "return_url_allow_list": ["https://crm.example/app"]}
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=settings).status_code == 200
    adele, megan = tenant.users["adele"], customer_tenant.users["megan"]
    body = {"type": "contact", "name": "Megan", "emails": [megan.mail]}
    assert api.put(app_host.url(f"orgs/{org}/records/contact-megan"), json=body).status_code == 200
    # adele as a record too, so megan's mailbox (where adele is the outside party) logs what adele sent
    body = {"type": "account_owner", "name": "Adele", "emails": [adele.mail]}
    assert api.put(app_host.url(f"orgs/{org}/records/owner-adele"), json=body).status_code == 200
    adele_id = connect_flow.connect(api, app_host.url, emulator_client, org, adele.upn, return_url=RETURN_URL)
    megan_id = connect_flow.connect(
        api, app_host.url, emulator_client, org, megan.upn, return_url=RETURN_URL, user_id="crm-user-2"
    )
    run_scheduler(app_host)
    return Senders(org, adele_id, megan_id, adele.mail, megan.mail, adele.upn, megan.upn)


def run_scheduler(app_host: AppUnderTest) -> None:
    app_host.host.trigger_timer(TIMER)
    app_host.host.drain_queues(timeout=60)


def sync_now(app_host: AppUnderTest, api: requests.Session, s: Senders) -> None:
    """ "Sync now" of both mailboxes, then wait for the runs."""
    for mailbox_id in (s.adele, s.megan):
        response = api.post(app_host.url(f"orgs/{s.org}/mailboxes/{mailbox_id}/sync"))
        assert response.status_code == 202, response.text
    app_host.host.drain_queues(timeout=60)


def post_send(
    app_host: AppUnderTest, api: requests.Session, s: Senders, key: str, body: dict[str, Any]
) -> requests.Response:
    return api.post(
        app_host.url(f"orgs/{s.org}/mailboxes/{s.adele}/messages:send"), json=body, headers={"Idempotency-Key": key}
    )


def get_send(app_host: AppUnderTest, api: requests.Session, s: Senders, send_id: str) -> Any:
    response = api.get(app_host.url(f"orgs/{s.org}/sends/{send_id}"))
    assert response.status_code == 200, response.text
    return response.json()


def inbox_copies(emulator_client: EmulatorClient, upn: str, internet_message_id: str) -> list[dict[str, Any]]:
    return [
        m for m in emulator_client.folder_messages(upn, "inbox") if m.get("internetMessageId") == internet_message_id
    ]


def timeline(app_host: AppUnderTest, api: requests.Session, s: Senders, record_id: str) -> list[Any]:
    response = api.get(app_host.url(f"orgs/{s.org}/records/{record_id}/activities"))
    assert response.status_code == 200, response.text
    return list(response.json()["activities"])


def message(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "to": [{"address": "MEGAN_PLACEHOLDER", "name": "Megan"}],
        "subject": subject,
        "body": {"content_type": "html", "content": f"<p>{subject}</p>"},
        **extra,
    }


def to_megan(s: Senders, subject: str, **extra: Any) -> dict[str, Any]:
    body = message(subject, **extra)
    body["to"] = [{"address": s.megan_mail, "name": "Megan"}]
    return body


def test_a_crm_send_reaches_the_recipient_once_and_is_one_sent_activity_after_both_mailboxes_sync(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, senders: Senders
) -> None:
    s = senders
    response = post_send(app_host, api, s, "first-" + uuid.uuid4().hex, to_megan(s, "Our proposal"))
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert response.headers["Location"] == f"/api/orgs/{s.org}/sends/{accepted['id']}"
    app_host.host.drain_queues(timeout=60)
    sent = get_send(app_host, api, s, accepted["id"])
    assert sent["status"] == "sent", sent
    assert len(inbox_copies(emulator_client, s.megan_upn, sent["internet_message_id"])) == 1
    sent_items = [
        m for m in emulator_client.sent_items(s.adele_upn) if m.get("internetMessageId") == sent["internet_message_id"]
    ]
    assert len(sent_items) == 1
    activities = timeline(app_host, api, s, "contact-megan")
    assert [(a["id"], a["direction"], a["sent_from_crm"], a["send_id"]) for a in activities] == [
        (sent["activity_id"], "sent", True, accepted["id"])
    ]
    sync_now(app_host, api, s)  # both mailboxes sync: adele's Sent Items copy and megan's Inbox copy
    after = timeline(app_host, api, s, "contact-megan")
    assert len(after) == 1 and after[0]["id"] == sent["activity_id"]
    assert sorted(after[0]["mailbox_ids"]) == sorted([s.adele, s.megan])
    assert after[0]["sent_from_crm"] and after[0]["direction"] == "sent"
    assert [a["id"] for a in timeline(app_host, api, s, "owner-adele")] == [sent["activity_id"]]
    listed = api.get(app_host.url(f"orgs/{s.org}/mailboxes/{s.adele}/sends")).json()
    assert [x["id"] for x in listed["sends"]] == [accepted["id"]]


def test_the_same_idempotency_key_sends_once_also_concurrently_and_another_body_is_refused(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, senders: Senders
) -> None:
    s = senders
    key = "dup-" + uuid.uuid4().hex
    body = to_megan(s, "Only once")
    answers: list[requests.Response] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        with requests.Session() as session:
            session.headers.update(api.headers)
            barrier.wait()
            answers.append(post_send(app_host, session, s, key, body))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = post_send(app_host, api, s, key, body)
    assert {a.status_code for a in answers} | {again.status_code} == {202}
    assert len({a.json()["id"] for a in [*answers, again]}) == 1
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = post_send(app_host, api, s, key, to_megan(s, "Something else"))
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    app_host.host.drain_queues(timeout=60)
    sent = get_send(app_host, api, s, again.json()["id"])
    assert sent["status"] == "sent", sent
    assert len(inbox_copies(emulator_client, s.megan_upn, sent["internet_message_id"])) == 1
    subjects = [m for m in emulator_client.folder_messages(s.megan_upn, "inbox") if m.get("subject") == "Only once"]
    assert len(subjects) == 1


def test_a_reply_to_a_synced_activity_is_threaded_on_both_sides(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, senders: Senders
) -> None:
    s = senders
    original = emulator_client.send(s.megan_upn, to=[s.adele_mail], subject="A question", body="Can we talk?")
    sync_now(app_host, api, s)
    [activity] = timeline(app_host, api, s, "contact-megan")
    response = post_send(
        app_host,
        api,
        s,
        "reply-" + uuid.uuid4().hex,
        to_megan(s, "RE: A question", reply_to_activity_id=activity["id"]),
    )
    assert response.status_code == 202, response.text
    app_host.host.drain_queues(timeout=60)
    sent = get_send(app_host, api, s, response.json()["id"])
    assert sent["status"] == "sent", sent
    [received] = inbox_copies(emulator_client, s.megan_upn, sent["internet_message_id"])
    [mine] = [
        m for m in emulator_client.sent_items(s.adele_upn) if m["internetMessageId"] == sent["internet_message_id"]
    ]
    original_id = activity["internet_message_id"]
    [adeles_original] = inbox_copies(emulator_client, s.adele_upn, original_id)
    [megans_original] = [m for m in emulator_client.sent_items(s.megan_upn) if m["internetMessageId"] == original_id]
    for copy, original_copy in ((received, megans_original), (mine, adeles_original)):
        headers = {h["name"].lower(): h["value"] for h in copy.get("internetMessageHeaders") or []}
        assert headers.get("in-reply-to") == original_id
        assert original_id in headers.get("references", "")
        assert copy["conversationId"] == original_copy["conversationId"]  # each mailbox's own conversation
    sync_now(app_host, api, s)
    threads = api.get(app_host.url(f"orgs/{s.org}/records/contact-megan/activities"), params={"view": "threads"}).json()
    assert [t["message_count"] for t in threads["threads"]] == [2]
    assert original  # the emulator's own send of the original


def test_a_five_megabyte_attachment_goes_through_an_upload_session(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, senders: Senders
) -> None:
    s = senders
    content = bytes(range(256)) * (5 * 1024 * 1024 // 256)
    attachment = {
        "name": "deck.pdf",
        "content_type": "application/pdf",
        "content_base64": base64.b64encode(content).decode(),
    }
    response = post_send(app_host, api, s, "big-" + uuid.uuid4().hex, to_megan(s, "The deck", attachments=[attachment]))
    assert response.status_code == 202, response.text
    app_host.host.drain_queues(timeout=120)
    sent = get_send(app_host, api, s, response.json()["id"])
    assert sent["status"] == "sent", sent
    [received] = inbox_copies(emulator_client, s.megan_upn, sent["internet_message_id"])
    assert received["hasAttachments"]
    activity = api.get(app_host.url(f"orgs/{s.org}/activities/{sent['activity_id']}")).json()
    assert activity["attachments"] == [{"name": "deck.pdf", "size": len(content), "content_type": "application/pdf"}]
    # Graph (and the emulator) refuse any mail write over 4 MB, so 5 MB arrived through the upload session.


def test_thirty_five_sends_in_a_minute_send_thirty_and_the_last_five_when_the_minute_has_passed(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, senders: Senders
) -> None:
    s = senders
    run = uuid.uuid4().hex[:8]
    ids = []
    for n in range(35):
        response = post_send(app_host, api, s, f"burst-{run}-{n}", to_megan(s, f"Burst {run} {n}"))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    app_host.host.drain_queues(timeout=120)
    first = [get_send(app_host, api, s, i) for i in ids]
    assert sum(x["status"] == "sent" for x in first) == 30
    waiting = [x for x in first if x["status"] == "queued"]
    assert len(waiting) == 5 and all(x["not_before"] for x in waiting)
    for _ in range(5):  # each waits for the minute of the slots it follows; later ones may wait a little more
        pending = [x for i in ids if (x := get_send(app_host, api, s, i))["status"] != "sent"]
        if not pending:
            break
        assert all(x["status"] == "queued" and x["not_before"] for x in pending)
        latest = max(x["not_before"] for x in pending)
        while time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) <= latest:
            time.sleep(1)
        run_scheduler(app_host)
    statuses = [get_send(app_host, api, s, i)["status"] for i in ids]
    assert statuses == ["sent"] * 35
    delivered = [
        m for m in emulator_client.folder_messages(s.megan_upn, "inbox") if f"Burst {run} " in m.get("subject", "")
    ]
    assert len(delivered) == 35


def test_sending_off_or_bad_input_is_refused_with_the_field_or_the_reason(
    app_host: AppUnderTest, api: requests.Session, senders: Senders
) -> None:
    s = senders
    missing_key = api.post(app_host.url(f"orgs/{s.org}/mailboxes/{s.adele}/messages:send"), json=to_megan(s, "x"))
    assert missing_key.status_code == 400 and missing_key.json()["error"]["details"]["field"] == "Idempotency-Key"
    nobody = post_send(app_host, api, s, "k-none", {"subject": "x"})
    assert nobody.status_code == 400 and nobody.json()["error"]["details"]["field"] == "to"
    crowd = post_send(app_host, api, s, "k-crowd", {"to": [f"p{n}@customer.example" for n in range(501)]})
    assert crowd.status_code == 400 and crowd.json()["error"]["details"]["field"] == "to"
    bad = post_send(app_host, api, s, "k-bad", {"to": ["not an address"]})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "to"
    later = post_send(app_host, api, s, "k-late", {**to_megan(s, "x"), "send_at": "2099-01-01T00:00:00Z"})
    assert later.status_code == 400 and later.json()["error"]["details"]["field"] == "send_at"
    assert api.put(app_host.url(f"orgs/{s.org}/settings"), json={"sending_enabled": False}).status_code == 200
    off = post_send(app_host, api, s, "k-off", to_megan(s, "x"))
    assert off.status_code == 409 and off.json()["error"]["code"] == "sending_disabled"
    assert api.get(app_host.url(f"orgs/{s.org}/sends/nope")).status_code == 404


def test_a_scheduled_send_can_be_canceled_until_it_goes_and_not_after(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, senders: Senders
) -> None:
    s = senders
    scheduled = post_send(
        app_host, api, s, "sched-" + uuid.uuid4().hex, {**to_megan(s, "Tomorrow"), "send_at": "2030-01-01T00:00:00Z"}
    )
    assert scheduled.status_code == 400  # more than 30 days ahead
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    scheduled = post_send(app_host, api, s, "sched-" + uuid.uuid4().hex, {**to_megan(s, "In an hour"), "send_at": soon})
    assert scheduled.status_code == 202 and scheduled.json()["status"] == "scheduled"
    canceled = api.delete(app_host.url(f"orgs/{s.org}/sends/{scheduled.json()['id']}"))
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    now = post_send(app_host, api, s, "now-" + uuid.uuid4().hex, to_megan(s, "Now"))
    app_host.host.drain_queues(timeout=60)
    too_late = api.delete(app_host.url(f"orgs/{s.org}/sends/{now.json()['id']}"))
    assert too_late.status_code == 409 and too_late.json()["error"]["code"] == "send_not_cancelable"
    run_scheduler(app_host)
    assert [m for m in emulator_client.folder_messages(s.megan_upn, "inbox") if m.get("subject") == "In an hour"] == []


def test_a_mailbox_connected_before_sending_was_on_is_refused_until_reconnected_which_adds_mail_send(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    settings = {"return_url_allow_list": ["https://crm.example/app"]}
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=settings).status_code == 200
    adele = tenant.users["adele"]
    mailbox_id = connect_flow.connect(api, app_host.url, emulator_client, org, adele.upn, return_url=RETURN_URL)
    assert api.put(app_host.url(f"orgs/{org}/settings"), json={**settings, "sending_enabled": True}).status_code == 200
    body = {"to": ["pat@customer.example"], "subject": "Hello", "body": {"content": "Hi"}}
    url = app_host.url(f"orgs/{org}/mailboxes/{mailbox_id}/messages:send")
    refused = api.post(url, json=body, headers={"Idempotency-Key": "before"})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "send_permission_missing"
    assert "connect it again" in refused.json()["error"]["message"]
    # Reconnecting asks for the sending permissions too (incremental consent): the same mailbox may send.
    again = connect_flow.connect(api, app_host.url, emulator_client, org, adele.upn, return_url=RETURN_URL)
    assert again == mailbox_id
    accepted = api.post(url, json=body, headers={"Idempotency-Key": "after"})
    assert accepted.status_code == 202, accepted.text
    app_host.host.drain_queues(timeout=60)
    sent = api.get(app_host.url(f"orgs/{org}/sends/{accepted.json()['id']}")).json()
    assert sent["status"] == "sent", sent
    assert len(emulator_client.outbox(sent["internet_message_id"])) == 1
