"""``$search`` on message lists in the Graph emulator (emulator/mail_search.py), over HTTPS: the KQL subset the
app sends, sent-date order, the 1,000-result cap and the refusals."""

from __future__ import annotations

from emulator.client import EmulatorClient, EmulatorTenant
from tests.emulator.graph_get import get


def test_a_participant_search_covers_from_to_cc_and_bcc_newest_sent_first(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    emulator_client.deliver(adele, from_="dan@talent.example", to=["adele@contoso.example"], subject="from",
                            sent="2026-03-01T10:00:00Z", received="2026-03-01T10:00:01Z")  # fmt: skip
    emulator_client.deliver(adele, from_="x@other.example", to=["a@b.example"], cc=["DAN@talent.example"],
                            subject="cc", sent="2026-03-03T10:00:00Z", received="2026-03-03T10:00:01Z")  # fmt: skip
    emulator_client.deliver(adele, from_="x@other.example", to=["a@b.example"], bcc=["dan@talent.example"],
                            subject="bcc", sent="2026-03-02T10:00:00Z", received="2026-03-02T10:00:01Z")  # fmt: skip
    emulator_client.deliver(adele, from_="eve@else.example", to=["adele@contoso.example"], subject="other")

    search = {"$search": '"participants:dan@talent.example"', "$select": "subject"}
    answer = get(tenant, token, "/me/messages", **search)

    assert answer.status_code == 200, answer.text
    assert [m["subject"] for m in answer.json()["value"]] == ["cc", "bcc", "from"]


def test_terms_or_together_and_the_received_date_bounds_the_window(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    emulator_client.deliver(adele, from_="a@one.example", subject="old", received="2026-02-27T23:00:00Z")
    emulator_client.deliver(adele, from_="a@one.example", subject="new", received="2026-03-01T00:30:00Z")
    emulator_client.deliver(adele, from_="b@two.example", subject="domain", received="2026-03-02T00:30:00Z")
    query = '"(participants:a@one.example OR participants:two.example) AND received>=2026-03-01"'

    answer = get(tenant, token, "/me/mailFolders('inbox')/messages", **{"$search": query, "$select": "subject"})

    assert sorted(m["subject"] for m in answer.json()["value"]) == ["domain", "new"]


def test_search_is_refused_with_filter_or_orderby_and_for_unsupported_kql(
    tenant: EmulatorTenant, token: str
) -> None:
    since = "receivedDateTime ge 2026-01-01T00:00:00Z"
    with_filter = get(tenant, token, "/me/messages", **{"$search": '"from:a@b.example"', "$filter": since})
    with_order = get(tenant, token, "/me/messages", **{"$search": '"from:a@b.example"', "$orderby": "subject"})
    unquoted = get(tenant, token, "/me/messages", **{"$search": "from:a@b.example"})
    unknown = get(tenant, token, "/me/messages", **{"$search": '"subject:hello"'})

    assert [r.status_code for r in (with_filter, with_order, unquoted, unknown)] == [400, 400, 400, 400]
    assert with_filter.json()["error"]["code"] == "ErrorInvalidUrlQuery"
    assert unknown.json()["error"]["code"] == "BadRequest"


def test_a_search_reaches_at_most_its_first_1000_results(
    tenant: EmulatorTenant, emulator_client: EmulatorClient, token: str, adele: str
) -> None:
    emulator_client.deliver_many(adele, 1003, interval_seconds=1, from_="busy@client.example", subject="n")
    params = {"$search": '"from:busy@client.example"', "$select": "id", "$top": "600"}

    first = get(tenant, token, "/me/messages", **params).json()
    second = get(tenant, token, first["@odata.nextLink"]).json()

    assert len(first["value"]) == 600 and len(second["value"]) == 400
    assert "@odata.nextLink" not in second
