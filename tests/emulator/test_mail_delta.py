"""Message delta queries of the Graph emulator, over HTTPS with real tokens (facts §1 and §2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from emulator.client import EmulatorClient, EmulatorTenant
from tests.emulator.graph_get import get

INBOX_DELTA = "/me/mailFolders('inbox')/messages/delta"


@dataclass
class Round:
    """Every page of one delta round, in order."""

    pages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def items(self) -> list[dict[str, Any]]:
        return [item for page in self.pages for item in page["value"]]

    @property
    def delta_link(self) -> str:
        return str(self.pages[-1]["@odata.deltaLink"])


def sync(tenant: EmulatorTenant, token: str, url: str, prefer: str | None = None, **params: Any) -> Round:
    """Follow nextLinks from ``url`` until a page carries the deltaLink."""
    result = Round()
    answer = get(tenant, token, url, prefer, **params)
    while True:
        assert answer.status_code == 200, answer.text
        page = answer.json()
        result.pages.append(page)
        if "@odata.deltaLink" in page:
            return result
        answer = get(tenant, token, page["@odata.nextLink"], prefer)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def deliver(client: EmulatorClient, user: str, count: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        client.deliver(user, subject=f"Message {n}", **{"from": "bob@fabrikam.example"}, **fields) for n in range(count)
    ]


# -- initial round, paging and links ---------------------------------------------------------------


def test_initial_round_pages_ten_messages_at_a_time_then_gives_a_delta_link(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    delivered = deliver(emulator_client, adele, 23)

    result = sync(tenant, token, INBOX_DELTA, **{"$select": "subject,receivedDateTime"})

    assert [len(page["value"]) for page in result.pages] == [10, 10, 3]
    assert {item["id"] for item in result.items} == {d["id"] for d in delivered}
    for page in result.pages[:-1]:
        assert "@odata.deltaLink" not in page
        assert "$skiptoken=" in page["@odata.nextLink"]
    assert "@odata.nextLink" not in result.pages[-1]
    assert all(page["@odata.context"] == f"{tenant.graph_url}/$metadata#Collection(message)" for page in result.pages)
    inbox_id = delivered[0]["parentFolderId"]
    assert result.delta_link.startswith(f"{tenant.graph_url}/me/mailFolders('{inbox_id}')/messages/delta?$deltatoken=")
    item = result.items[0]
    assert set(item) == {"@odata.type", "@odata.etag", "id", "subject", "receivedDateTime"}
    assert item["@odata.type"] == "#microsoft.graph.message"


def test_prefer_maxpagesize_sets_the_page_size_and_is_acknowledged(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    deliver(emulator_client, adele, 8)

    answer = get(tenant, token, INBOX_DELTA, prefer="odata.maxpagesize=3")

    assert answer.headers["Preference-Applied"] == "odata.maxpagesize=3"
    assert len(answer.json()["value"]) == 3
    assert "Preference-Applied" not in get(tenant, token, INBOX_DELTA).headers


def test_maxpagesize_above_the_cap_is_served_as_1000(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    emulator_client.deliver_many(adele, 1001, **{"from": "bulk@fabrikam.example"})

    answer = get(tenant, token, INBOX_DELTA, prefer="odata.maxpagesize=5000", **{"$select": "subject"})

    assert answer.headers["Preference-Applied"] == "odata.maxpagesize=1000"
    assert len(answer.json()["value"]) == 1000
    assert "@odata.nextLink" in answer.json()


def test_top_is_ignored_like_the_real_service(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    deliver(emulator_client, adele, 12)

    page = get(tenant, token, INBOX_DELTA, **{"$top": "2"}).json()

    assert len(page["value"]) == 10


def test_links_must_be_replayed_verbatim(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    deliver(emulator_client, adele, 12)
    next_link = get(tenant, token, INBOX_DELTA, **{"$select": "subject"}).json()["@odata.nextLink"]
    delta_link = sync(tenant, token, INBOX_DELTA).delta_link

    with_select = get(tenant, token, next_link + "&$select=subject,isRead")
    with_top = get(tenant, token, delta_link + "&$top=5")

    for answer in (with_select, with_top):
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "ErrorInvalidUrlQuery"
    assert get(tenant, token, next_link).status_code == 200


def test_a_garbled_token_is_a_bad_request(tenant: EmulatorTenant, token: str) -> None:
    answer = get(tenant, token, INBOX_DELTA, **{"$deltatoken": "not-a-token"})

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "ErrorInvalidSyncStateData"


def test_a_token_of_another_folder_is_refused(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    deliver(emulator_client, adele, 1)
    delta_link = sync(tenant, token, INBOX_DELTA).delta_link
    token_value = dict(parse_qsl(urlsplit(delta_link).query))["$deltatoken"]

    answer = get(tenant, token, "/me/mailFolders('sentitems')/messages/delta", **{"$deltatoken": token_value})

    assert answer.status_code == 400


def test_every_way_of_naming_a_folder_reaches_the_same_delta(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    inbox_id = deliver(emulator_client, adele, 1)[0]["parentFolderId"]
    user = tenant.users["adele"].upn

    paths = [
        "/me/mailFolders('inbox')/messages/delta",
        "/me/mailfolders/inbox/messages/delta",
        "/me/mailFolders('Inbox')/messages/delta",
        f"/me/mailFolders/{inbox_id}/messages/delta",
        f"/users/{user}/mailFolders('INBOX')/messages/delta",
    ]

    for path in paths:
        page = get(tenant, token, path).json()
        assert len(page["value"]) == 1, path
        assert f"mailFolders('{inbox_id}')/messages/delta?$deltatoken=" in page["@odata.deltaLink"]
    assert "/users/" in get(tenant, token, paths[-1]).json()["@odata.deltaLink"]


# -- initial query options -------------------------------------------------------------------------


def test_filter_on_received_date_time_supports_ge_and_gt(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    noon = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    for hours in (-2, -1, 0):
        emulator_client.deliver(adele, subject=f"at {hours}", received=iso(noon + timedelta(hours=hours)))

    since = iso(noon - timedelta(hours=1))
    ge = sync(tenant, token, INBOX_DELTA, **{"$filter": f"receivedDateTime ge {since}"}).items
    gt = sync(tenant, token, INBOX_DELTA, **{"$filter": f"receivedDateTime gt {since}"}).items

    assert sorted(item["subject"] for item in ge) == ["at -1", "at 0"]
    assert [item["subject"] for item in gt] == ["at 0"]


@pytest.mark.parametrize(
    ("option", "value", "code"),
    [
        ("$filter", "subject eq 'hello'", "ErrorInvalidUrlQueryFilter"),
        ("$filter", "receivedDateTime lt 2026-01-01T00:00:00Z", "ErrorInvalidUrlQueryFilter"),
        ("$filter", "receivedDateTime ge yesterday", "ErrorInvalidUrlQueryFilter"),
        ("$orderby", "subject", "ErrorInvalidUrlQuery"),
        ("$orderby", "receivedDateTime asc", "ErrorInvalidUrlQuery"),
        ("$search", '"hello"', "ErrorInvalidUrlQuery"),
        ("$select", "subject,nonsense", "RequestBroker--ParseUri"),
        ("changeType", "moved", "ErrorInvalidUrlQuery"),
    ],
)
def test_unsupported_query_options_are_rejected(
    tenant: EmulatorTenant, token: str, option: str, value: str, code: str
) -> None:
    answer = get(tenant, token, INBOX_DELTA, **{option: value})

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code


def test_orderby_received_date_time_desc_returns_newest_first(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    start = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    for day in (3, 1, 2):
        emulator_client.deliver(adele, subject=f"day {day}", received=iso(start + timedelta(days=day)))

    items = sync(tenant, token, INBOX_DELTA, **{"$orderby": "receivedDateTime desc"}).items

    assert [item["subject"] for item in items] == ["day 3", "day 2", "day 1"]


def test_a_filtered_initial_round_stops_at_5000_messages_keeping_the_newest(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    start = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    bulk = emulator_client.deliver_many(adele, 5001, start=iso(start), interval_seconds=1, subject="Bulk")
    oldest = bulk["last"]["id"]

    result = sync(
        tenant,
        token,
        INBOX_DELTA,
        prefer="odata.maxpagesize=1000",
        **{"$filter": "receivedDateTime ge 2026-01-01T00:00:00Z", "$select": "subject"},
    )
    unfiltered = sync(tenant, token, INBOX_DELTA, prefer="odata.maxpagesize=1000", **{"$select": "subject"})

    assert len(result.items) == 5000
    assert oldest not in {item["id"] for item in result.items}
    assert len(unfiltered.items) == 5001


# -- later rounds ----------------------------------------------------------------------------------


def test_a_later_round_has_new_messages_in_full_updates_as_partial_items_and_removals(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    kept, read, deleted = deliver(emulator_client, adele, 3)
    select = "subject,isRead,from,receivedDateTime,body,parentFolderId,internetMessageHeaders"
    first = sync(tenant, token, INBOX_DELTA, **{"$select": select})
    assert len(first.items) == 3

    arrived = emulator_client.deliver(adele, subject="Arrived later", body="<p>Hi</p>")
    emulator_client.update(adele, read["id"], is_read=True)
    emulator_client.delete(adele, deleted["id"])
    second = sync(tenant, token, first.delta_link)

    by_id = {item["id"]: item for item in second.items}
    assert set(by_id) == {arrived["id"], read["id"], deleted["id"]}
    created = by_id[arrived["id"]]
    assert created["subject"] == "Arrived later"
    assert set(created) == {"@odata.type", "@odata.etag", "id", *select.split(",")}
    assert by_id[read["id"]] == {
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": by_id[read["id"]]["@odata.etag"],
        "id": read["id"],
        "isRead": True,
        "parentFolderId": read["parentFolderId"],
    }
    assert by_id[deleted["id"]] == {
        "@odata.type": "#microsoft.graph.message",
        "id": deleted["id"],
        "@removed": {"reason": "deleted"},
    }
    assert kept["id"] not in by_id
    assert sync(tenant, token, second.delta_link).items == []


def test_moving_a_message_is_a_removal_in_the_source_and_a_creation_in_the_target(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    message = deliver(emulator_client, adele, 1)[0]
    archive_delta = "/me/mailFolders('archive')/messages/delta"
    inbox_link = sync(tenant, token, INBOX_DELTA).delta_link
    archive_link = sync(tenant, token, archive_delta).delta_link

    moved = emulator_client.move(adele, message["id"], "archive")
    from_inbox = sync(tenant, token, inbox_link).items
    into_archive = sync(tenant, token, archive_link).items

    assert moved["immutableId"] == message["immutableId"]
    assert moved["id"] != message["id"]
    assert from_inbox == [
        {"@odata.type": "#microsoft.graph.message", "id": message["id"], "@removed": {"reason": "deleted"}}
    ]
    assert [item["id"] for item in into_archive] == [moved["id"]]
    assert into_archive[0]["parentFolderId"] == moved["parentFolderId"]


def test_ids_follow_each_request_prefer_header_not_the_token(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    message = deliver(emulator_client, adele, 1)[0]
    immutable = 'IdType="ImmutableId"'
    first = sync(tenant, token, INBOX_DELTA, prefer=immutable)
    emulator_client.move(adele, message["id"], "archive")

    as_rest_ids = get(tenant, token, first.delta_link).json()
    as_immutable = get(tenant, token, first.delta_link, prefer=immutable)

    assert first.items[0]["id"] == message["immutableId"]
    assert as_rest_ids["value"][0]["id"] == message["id"]
    assert as_immutable.json()["value"][0]["id"] == message["immutableId"]
    assert as_immutable.headers["Preference-Applied"] == 'IdType="ImmutableId"'


def test_change_type_keeps_only_one_kind_of_change(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    old = deliver(emulator_client, adele, 2)
    links = {
        kind: sync(tenant, token, INBOX_DELTA, changeType=kind).delta_link for kind in ("created", "updated", "deleted")
    }
    new = emulator_client.deliver(adele, subject="new")
    emulator_client.update(adele, old[0]["id"], is_read=True)
    emulator_client.delete(adele, old[1]["id"])

    seen = {kind: [item["id"] for item in sync(tenant, token, link).items] for kind, link in links.items()}

    assert seen == {"created": [new["id"]], "updated": [old[0]["id"]], "deleted": [old[1]["id"]]}


# -- realism switches ------------------------------------------------------------------------------


def test_a_round_can_start_with_an_empty_page_that_has_a_next_link(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    deliver(emulator_client, adele, 2)
    emulator_client.set_delta_behaviour(adele, empty_page_first=True)

    first = sync(tenant, token, INBOX_DELTA)
    emulator_client.deliver(adele, subject="one more")
    second = sync(tenant, token, first.delta_link)

    for result, count in ((first, 2), (second, 1)):
        assert result.pages[0]["value"] == []
        assert "@odata.nextLink" in result.pages[0]
        assert len(result.items) == count


def test_replays_send_an_item_again(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    delivered = deliver(emulator_client, adele, 4)
    emulator_client.set_delta_behaviour(adele, replay_every=2)

    ids = [item["id"] for item in sync(tenant, token, INBOX_DELTA, prefer="odata.maxpagesize=2").items]

    assert len(ids) == 6
    assert set(ids) == {d["id"] for d in delivered}
    assert len(set(ids)) == 4


# -- expired sync state ----------------------------------------------------------------------------


def test_expired_tokens_are_gone_with_the_initial_query_in_location(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    deliver(emulator_client, adele, 12)
    params = {"$select": "subject,from", "$filter": "receivedDateTime ge 2026-01-01T00:00:00Z"}
    first_page = get(tenant, token, INBOX_DELTA, **params).json()
    delta_link = sync(tenant, token, INBOX_DELTA, **params).delta_link

    emulator_client.expire_delta_tokens(adele)
    answers = [get(tenant, token, first_page["@odata.nextLink"]), get(tenant, token, delta_link)]

    for answer in answers:
        assert answer.status_code == 410
        error = answer.json()["error"]
        assert error["code"] == "SyncStateNotFound"
        assert error["message"].startswith("The sync state generation is not found; generation=")
        location = answer.headers["Location"]
        assert location.endswith("$deltatoken=")
        assert "$select=subject,from" in location
        assert "$filter=receivedDateTime%20ge%202026-01-01T00:00:00Z" in location
    restarted = sync(tenant, token, answers[0].headers["Location"])
    assert len(restarted.items) == 12
    assert set(restarted.items[0]) == {"@odata.type", "@odata.etag", "id", "subject", "from"}
