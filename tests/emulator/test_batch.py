"""JSON batching (``POST /v1.0/$batch``): limits, ids, dependsOn, 424, per-request throttling, headers."""

from __future__ import annotations

from typing import Any

import requests

from emulator.client import EmulatorTenant


def batch(tenant: EmulatorTenant, token: str | None, requests_: list[dict[str, Any]]) -> requests.Response:
    return tenant.graph("POST", "/$batch", token, json={"requests": requests_})


def by_id(answer: requests.Response) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in answer.json()["responses"]}


def get(request_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": request_id, "method": "GET", "url": url, **extra}


def test_a_batch_answers_each_request_by_id(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")

    answer = batch(tenant, token, [get("me", "/me"), get("org", "organization"), get("mail", "/me/messages?$top=1")])

    assert answer.status_code == 200
    responses = by_id(answer)
    assert set(responses) == {"me", "org", "mail"}
    assert all(r["status"] == 200 for r in responses.values())
    assert responses["me"]["body"]["id"] == tenant.users["adele"].id
    assert responses["org"]["body"]["value"][0]["id"] == tenant.id


def test_a_batch_of_more_than_twenty_requests_is_refused_whole(tenant: EmulatorTenant) -> None:
    answer = batch(tenant, tenant.delegated_token("adele"), [get(str(i), "/me") for i in range(21)])

    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "BadRequest"
    assert "Too many requests in batch" in answer.json()["error"]["message"]


def test_ids_must_be_unique_ignoring_case(tenant: EmulatorTenant) -> None:
    answer = batch(tenant, tenant.delegated_token("adele"), [get("A", "/me"), get("a", "/organization")])

    assert answer.status_code == 400


def test_urls_must_be_relative(tenant: EmulatorTenant) -> None:
    answer = batch(tenant, tenant.delegated_token("adele"), [get("1", f"{tenant.graph_url}/me")])

    assert answer.status_code == 400


def test_a_body_needs_a_content_type_header(tenant: EmulatorTenant) -> None:
    answer = batch(
        tenant, tenant.delegated_token("adele"), [{"id": "1", "method": "POST", "url": "/subscriptions", "body": {}}]
    )

    assert answer.status_code == 400


def test_a_batch_without_a_token_is_401(tenant: EmulatorTenant) -> None:
    assert batch(tenant, None, [get("1", "/me")]).status_code == 401


def test_dependents_of_a_failed_request_fail_with_424(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()

    answer = batch(
        tenant,
        token,
        [
            get("1", f"/users/nobody@{tenant.domain}"),
            get("2", f"/users/{tenant.users['adele'].upn}", dependsOn=["1"]),
            get("3", f"/users/{tenant.users['megan'].upn}", dependsOn=["2"]),
            get("4", f"/users/{tenant.users['megan'].upn}"),
        ],
    )

    statuses = {key: r["status"] for key, r in by_id(answer).items()}
    assert statuses == {"1": 404, "2": 424, "3": 424, "4": 200}


def test_depends_on_makes_requests_sequential_while_parallel_ones_are_throttled_individually(
    tenant: EmulatorTenant,
) -> None:
    token = tenant.app_token()
    adele = tenant.users["adele"].upn
    tenant.client.configure(mailbox_concurrency=1)
    tenant.client.add_fault(mailbox=adele, delay_ms=200, count=-1)
    messages = f"/users/{adele}/messages"

    parallel = by_id(batch(tenant, token, [get(str(i), messages) for i in range(3)]))
    chained = by_id(
        batch(
            tenant,
            token,
            [get("1", messages), get("2", messages, dependsOn=["1"]), get("3", messages, dependsOn=["2"])],
        )
    )

    assert sorted(r["status"] for r in parallel.values()) == [200, 429, 429]
    throttled = next(r for r in parallel.values() if r["status"] == 429)
    assert throttled["headers"]["Retry-After"] == "1"
    assert throttled["body"]["error"]["message"] == "Application is over its MailboxConcurrency limit."
    assert [chained[k]["status"] for k in ("1", "2", "3")] == [200, 200, 200]
    assert tenant.client.mailbox_stats(adele)["by_status"] == {"200": 4, "429": 2}


def test_each_sub_request_spends_the_mailbox_budget(tenant: EmulatorTenant) -> None:
    tenant.client.configure(mailbox_request_budget=2, budget_window_s=60)
    token = tenant.app_token()
    messages = f"/users/{tenant.users['adele'].upn}/messages"

    responses = by_id(batch(tenant, token, [get(str(i), messages) for i in range(4)]))

    assert sorted(r["status"] for r in responses.values()) == [200, 200, 429, 429]
    assert all(int(r["headers"]["Retry-After"]) > 0 for r in responses.values() if r["status"] == 429)


def test_sub_request_headers_reach_the_handler(tenant: EmulatorTenant) -> None:
    tenant.client.deliver(tenant.users["adele"].upn, subject="Hello", body="<p>Hi <b>there</b></p>", body_type="html")
    prefer = 'outlook.body-content-type="text"'

    answer = batch(tenant, tenant.delegated_token("adele"), [get("1", "/me/messages", headers={"Prefer": prefer})])

    [response] = answer.json()["responses"]
    assert response["status"] == 200
    assert prefer in response["headers"]["Preference-Applied"]
    assert response["body"]["value"][0]["body"]["contentType"] == "text"


def test_a_sub_request_whose_connection_drops_answers_504(tenant: EmulatorTenant) -> None:
    tenant.client.add_fault(drop_connection=True, path_contains="/me/messages")

    answer = batch(tenant, tenant.delegated_token("adele"), [get("1", "/me/messages"), get("2", "/me")])

    assert answer.status_code == 200
    assert {k: r["status"] for k, r in by_id(answer).items()} == {"1": 504, "2": 200}


def test_a_batch_inside_a_batch_is_refused(tenant: EmulatorTenant) -> None:
    nested = {"id": "1", "method": "POST", "url": "/$batch", "headers": {"Content-Type": "application/json"}}

    [response] = batch(tenant, tenant.delegated_token("adele"), [{**nested, "body": {"requests": []}}]).json()[
        "responses"
    ]

    assert response["status"] == 400
