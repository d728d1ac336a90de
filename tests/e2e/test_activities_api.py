"""The activities API through the local host: timeline paging, the threads view, one activity, delete,
the error statuses, and org isolation. Activities are stored through the app's own activity store (the
sync path that creates them is exercised end to end in test_sync_flow)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from sync_core import bootstrap
from sync_core.domain.model import Activity, Direction, EmailAddress, RecordRef, activity_id_for
from tests.e2e.conftest import AppUnderTest
from tests.e2e.test_sync_flow import timeline

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def store(org: str, *activities: tuple[str, str, int, tuple[str, ...]]) -> dict[str, str]:
    """Save activities ``(message id, thread, minutes after T0, record ids)``; returns their ids by message id."""
    built = [
        Activity(
            org_id=org,
            activity_id=activity_id_for(org, mid),
            internet_message_id=mid,
            thread_id=thread,
            subject=f"subject of {mid}",
            body_text=f"body of {mid}",
            body_preview=f"body of {mid}",
            body_truncated=False,
            sender=EmailAddress("dan@talent.example", "Dan"),
            to=(EmailAddress("adele@agency.example"),),
            cc=(),
            sent_at=T0 + timedelta(minutes=minutes, seconds=-5),
            received_at=T0 + timedelta(minutes=minutes),
            direction=Direction.RECEIVED,
            mailbox_ids=("mbx-1",),
            records=tuple(RecordRef(record_id, "candidate") for record_id in records),
        )
        for mid, thread, minutes, records in activities
    ]
    bootstrap.services().stores.activities.save(built)
    return {a.internet_message_id: a.activity_id for a in built}


def all_pages(app_host: AppUnderTest, api: requests.Session, org: str, key: str, **params: Any) -> list[list[Any]]:
    pages, cursor = [], None
    while True:
        page = timeline(app_host, api, org, "cand-1", **params, **({"cursor": cursor} if cursor else {}))
        pages.append(page[key])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 20


def test_a_timeline_pages_newest_first_with_an_opaque_cursor(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    store(org, *((f"<m{n}@x>", f"t{n}", n, ("cand-1",)) for n in range(5)), ("<other@x>", "t9", 9, ("cand-2",)))

    pages = all_pages(app_host, api, org, "activities", limit=2)

    assert [[a["internet_message_id"] for a in page] for page in pages] == [
        ["<m4@x>", "<m3@x>"],
        ["<m2@x>", "<m1@x>"],
        ["<m0@x>"],
    ]
    assert len(timeline(app_host, api, org, "cand-1")["activities"]) == 5  # default limit 25


def test_the_threads_view_lists_each_thread_once_newest_first_with_its_messages_oldest_first(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    store(
        org,
        ("<a1@x>", "thread-a", 1, ("cand-1",)),
        ("<b1@x>", "thread-b", 2, ("cand-1",)),
        ("<a2@x>", "thread-a", 3, ("cand-1",)),
        ("<c1@x>", "thread-c", 4, ("cand-1",)),
        ("<b2@x>", "thread-b", 5, ("cand-1",)),
        ("<b3@x>", "thread-b", 6, ("cand-2",)),  # same thread, logged on another record only
    )

    pages = all_pages(app_host, api, org, "threads", view="threads", limit=1)

    threads = [thread for page in pages for thread in page]
    assert [t["thread_id"] for t in threads] == ["thread-b", "thread-c", "thread-a"]
    assert [[a["internet_message_id"] for a in t["activities"]] for t in threads] == [
        ["<b1@x>", "<b2@x>"],
        ["<c1@x>"],
        ["<a1@x>", "<a2@x>"],
    ]
    assert threads[0]["message_count"] == 2
    assert threads[0]["first_received_at"] == "2026-05-04T12:02:00Z"
    assert threads[0]["last_received_at"] == "2026-05-04T12:05:00Z"
    assert all(len(page) <= 1 for page in pages)


def test_one_activity_reads_back_in_full_and_an_unknown_one_is_404(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    ids = store(org, ("<m1@x>", "t1", 1, ("cand-1",)))

    response = api.get(app_host.url(f"orgs/{org}/activities/{ids['<m1@x>']}"))

    assert response.status_code == 200
    assert response.json() == {
        "id": ids["<m1@x>"],
        "internet_message_id": "<m1@x>",
        "thread_id": "t1",
        "conversation_id": None,
        "subject": "subject of <m1@x>",
        "body": "body of <m1@x>",
        "body_preview": "body of <m1@x>",
        "body_truncated": False,
        "from": {"address": "dan@talent.example", "name": "Dan"},
        "to": [{"address": "adele@agency.example", "name": ""}],
        "cc": [],
        "sent_at": "2026-05-04T12:00:55Z",
        "received_at": "2026-05-04T12:01:00Z",
        "direction": "received",
        "mailbox_ids": ["mbx-1"],
        "records": [{"id": "cand-1", "type": "candidate"}],
        "attachments": [],
        "sent_from_crm": False,
        "send_id": None,
    }
    missing = api.get(app_host.url(f"orgs/{org}/activities/{'0' * 32}"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_delete_removes_the_activity_from_every_view_and_repeating_it_is_a_json_404(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    ids = store(org, ("<m1@x>", "t1", 1, ("cand-1",)), ("<m2@x>", "t1", 2, ("cand-1",)))
    url = app_host.url(f"orgs/{org}/activities/{ids['<m2@x>']}")

    assert api.delete(url).status_code == 204

    assert api.get(url).status_code == 404
    assert [a["internet_message_id"] for a in timeline(app_host, api, org, "cand-1")["activities"]] == ["<m1@x>"]
    [thread] = timeline(app_host, api, org, "cand-1", view="threads")["threads"]
    assert [a["internet_message_id"] for a in thread["activities"]] == ["<m1@x>"]
    again = api.delete(url)
    assert (again.status_code, again.json()["error"]["code"]) == (404, "not_found")


def test_deleting_an_activity_that_never_existed_is_a_json_404_and_deletes_nothing(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    ids = store(org, ("<m1@x>", "t1", 1, ("cand-1",)))
    unknown = app_host.url(f"orgs/{org}/activities/act-never-stored")

    answer = api.delete(unknown)

    assert answer.status_code == 404
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json() == {"error": {"code": "not_found", "message": "activity not found", "details": None}}
    assert api.get(app_host.url(f"orgs/{org}/activities/{ids['<m1@x>']}")).status_code == 200


def test_every_route_naming_an_unknown_id_answers_the_same_json_404(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    records, activities = app_host.url(f"orgs/{org}/records"), app_host.url(f"orgs/{org}/activities")
    mailbox = app_host.url(f"orgs/{org}/mailboxes/mbx_nobody")
    answers = {
        "GET record": api.get(f"{records}/nobody"),
        "DELETE record": api.delete(f"{records}/nobody"),
        "GET activity": api.get(f"{activities}/act-nobody"),
        "DELETE activity": api.delete(f"{activities}/act-nobody"),
        "GET mailbox": api.get(mailbox),
        "PATCH mailbox": api.patch(mailbox, json={"enabled": False}),
        "DELETE mailbox": api.delete(mailbox),
        "GET runs": api.get(f"{mailbox}/runs"),
        "POST explain": api.post(f"{mailbox}/explain", json={"internet_message_id": "<x@example.com>"}),
        "POST sync": api.post(f"{mailbox}/sync"),
        "POST backfill": api.post(f"{mailbox}/backfill", json={"days": 7}),
    }

    def shape(answer: requests.Response) -> tuple[int, str, set[str], str]:
        error = answer.json()["error"]
        return answer.status_code, answer.headers["Content-Type"].split(";")[0], set(error), error["code"]

    shapes = {route: shape(answer) for route, answer in answers.items()}
    assert shapes == dict.fromkeys(answers, (404, "application/json", {"code", "message", "details"}, "not_found"))


def test_nothing_of_one_org_is_readable_or_deletable_through_another(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    ids = store(org, ("<m1@x>", "t1", 1, ("cand-1",)))
    other = org + "-b"

    assert api.get(app_host.url(f"orgs/{other}/activities/{ids['<m1@x>']}")).status_code == 404
    assert timeline(app_host, api, other, "cand-1")["activities"] == []
    assert timeline(app_host, api, other, "cand-1", view="threads")["threads"] == []
    assert api.delete(app_host.url(f"orgs/{other}/activities/{ids['<m1@x>']}")).status_code == 404
    assert api.get(app_host.url(f"orgs/{org}/activities/{ids['<m1@x>']}")).status_code == 200


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"limit": "0"}, ("invalid_field", "limit")),
        ({"limit": "101"}, ("invalid_field", "limit")),
        ({"limit": "ten"}, ("invalid_field", "limit")),
        ({"view": "calendar"}, ("invalid_query", "view")),
        ({"cursor": "%%%not-base64"}, ("invalid_cursor", "cursor")),
        ({"cursor": "th.AAAA"}, ("invalid_cursor", "cursor")),
        ({"cursor": "AAAA", "view": "threads"}, ("invalid_cursor", "cursor")),
    ],
)
def test_bad_listing_parameters_get_400_naming_the_parameter(
    app_host: AppUnderTest, api: requests.Session, org: str, params: dict[str, str], expected: tuple[str, str]
) -> None:
    response = api.get(app_host.url(f"orgs/{org}/records/cand-1/activities"), params=params)

    assert response.status_code == 400
    code, field = expected
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["details"] == {"field": field}


def test_activity_routes_need_the_function_key(app_host: AppUnderTest, org: str) -> None:
    for method, path in (
        ("GET", f"orgs/{org}/records/cand-1/activities"),
        ("GET", f"orgs/{org}/activities/{'0' * 32}"),
        ("DELETE", f"orgs/{org}/activities/{'0' * 32}"),
    ):
        assert requests.request(method, app_host.url(path), timeout=10).status_code == 401
