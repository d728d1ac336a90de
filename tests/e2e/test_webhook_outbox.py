"""The webhook outbox through the local Functions host: an ``activity.created`` event that a worker saved with
its activity but never announced (it died in between) is posted by the app's ``maintain_storage`` timer,
once, under the event id it was saved with. The host's push-queue listener makes the delivery."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import requests

from sync_core import bootstrap
from sync_core.domain.model import Activity, Direction, EmailAddress, Mailbox, RecordRef, activity_id_for
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_push import Receiver, receiver, wait_for

__all__ = ["receiver"]  # the fixture

MAINTENANCE_TIMER = "maintain_storage"


def left_behind(org: str, moment: datetime) -> Activity:
    message_id = f"<left-behind-{org}@talent.example>"
    return Activity(
        org_id=org,
        activity_id=activity_id_for(org, message_id),
        internet_message_id=message_id,
        thread_id="t-left-behind",
        subject="Saved, never announced",
        body_text="Hello",
        body_preview="Hello",
        body_truncated=False,
        sender=EmailAddress("dan@talent.example"),
        to=(EmailAddress("adele@acme.example"),),
        cc=(),
        sent_at=moment,
        received_at=moment,
        direction=Direction.RECEIVED,
        mailbox_ids=("mb-adele",),
        records=(RecordRef("cand-dan", "candidate"),),
    )


def test_an_event_a_dead_worker_left_in_the_outbox_is_posted_once_by_the_maintenance_timer_with_its_event_id(
    app_host: AppUnderTest, api: requests.Session, org: str, *, receiver: Receiver
) -> None:
    settings = api.get(app_host.url(f"orgs/{org}/settings")).json()
    settings["webhook_url"] = receiver.url
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=settings).status_code == 200
    stores = bootstrap.services().stores
    saved_at = datetime.now(UTC) - timedelta(minutes=10)
    stores.mailboxes.add(Mailbox(org, "mb-adele", "adele@acme.example", ("adele@acme.example",), saved_at))
    # What a sync run writes when the org has a webhook; its worker then died before announcing it.
    written = stores.activities.save([left_behind(org, saved_at)], announce_at=saved_at)
    [event] = written.events

    app_host.host.trigger_timer(MAINTENANCE_TIMER)
    wait_for(lambda: receiver.hits, timeout=30)
    app_host.host.trigger_timer(MAINTENANCE_TIMER)  # the outbox was cleared: nothing more to post

    deliveries = wait_for(
        lambda: [
            d
            for d in api.get(app_host.url(f"orgs/{org}/webhooks/deliveries")).json()["deliveries"]
            if d["status"] == "delivered"
        ]
    )
    [(headers, body)] = receiver.hits
    posted = json.loads(body)
    assert headers["x-delivery-id"] == posted["id"] == event.event_id
    assert posted["type"] == "activity.created" and posted["data"]["id"] == event.activity_id
    assert [d["id"] for d in deliveries] == [event.event_id]
    assert stores.activities.pending_events(org, datetime.now(UTC) + timedelta(days=1), 10) == ()
