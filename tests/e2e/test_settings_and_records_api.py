"""Settings and the records index through the HTTP API of the running function_app."""

from __future__ import annotations

import requests

from tests.e2e.conftest import AppUnderTest


def test_health_answers_200_without_a_key_and_reports_storage(app_host: AppUnderTest) -> None:
    response = requests.get(app_host.url("health"), timeout=10)

    assert response.status_code == 200
    assert response.json()["storage"] == "ok"


def test_crm_routes_refuse_calls_without_the_function_key(app_host: AppUnderTest, org: str) -> None:
    response = requests.get(app_host.url(f"orgs/{org}/settings"), timeout=10)

    assert response.status_code == 401


def test_settings_start_from_defaults_and_a_put_is_read_back_normalised(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    assert api.get(app_host.url(f"orgs/{org}/settings")).json()["ambiguity"] == "skip"

    body = {
        "internal_domains": ["Acme.Example"],
        "never_log": ["CEO@Acme.Example", "@payroll.example"],
        "ambiguity": "prefer",
        "type_order": ["candidate", "contact"],
        "poll_interval_minutes": 15,
        "return_url_allow_list": ["https://crm.example/app"],
    }
    assert api.put(app_host.url(f"orgs/{org}/settings"), json=body).status_code == 200

    stored = api.get(app_host.url(f"orgs/{org}/settings")).json()
    assert stored["internal_domains"] == ["acme.example"]
    assert stored["never_log"] == ["ceo@acme.example", "payroll.example"]
    assert stored["type_order"] == ["candidate", "contact"]
    assert stored["poll_interval_minutes"] == 15


def test_invalid_settings_get_400_naming_the_field(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    response = api.put(app_host.url(f"orgs/{org}/settings"), json={"poll_interval_minutes": 0})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "poll_interval_minutes"}


def test_a_non_json_body_gets_415_and_broken_json_gets_400(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    url = app_host.url(f"orgs/{org}/settings")

    assert api.put(url, data="x", headers={"Content-Type": "text/plain"}).status_code == 415
    broken = api.put(url, data="{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_json"


def test_a_record_put_is_idempotent_and_stores_normalised_addresses(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    url = app_host.url(f"orgs/{org}/records/c-1")
    body = {"type": "contact", "name": "Carol", "emails": ["Carol@Client.Example"]}

    first = api.put(url, json=body)
    second = api.put(url, json=body)

    assert first.status_code == second.status_code == 200
    assert api.get(url).json()["emails"] == ["carol@client.example"]


def test_a_deleted_record_is_gone(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    url = app_host.url(f"orgs/{org}/records/c-1")
    api.put(url, json={"type": "contact", "emails": ["carol@client.example"]})

    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404


def test_deleting_a_record_that_is_not_indexed_is_a_json_404(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    url = app_host.url(f"orgs/{org}/records/c-1")
    api.put(url, json={"type": "contact", "emails": ["carol@client.example"]})
    assert api.delete(url).status_code == 204

    again = api.delete(url)
    never = api.delete(app_host.url(f"orgs/{org}/records/never-pushed"))

    assert [again.status_code, never.status_code] == [404, 404]
    assert never.json() == {"error": {"code": "not_found", "message": "record not found", "details": None}}


def test_a_batch_reports_each_bad_item_and_still_applies_the_good_ones(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    body = {
        "upsert": [
            {"id": "c-1", "type": "contact", "emails": ["carol@client.example"]},
            {"id": "c-2", "type": "contact", "emails": ["not an address"]},
        ],
        "delete": ["c-9"],
    }

    response = api.post(app_host.url(f"orgs/{org}/records:batch"), json=body)

    assert response.status_code == 200
    result = response.json()
    assert (result["succeeded"], result["failed"]) == (2, 1)
    assert result["results"][1]["error"]["details"] == {"field": "emails"}
    assert api.get(app_host.url(f"orgs/{org}/records/c-1")).status_code == 200


def test_a_batch_over_1000_items_gets_413(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    body = {"delete": [f"r-{i}" for i in range(1001)]}

    assert api.post(app_host.url(f"orgs/{org}/records:batch"), json=body).status_code == 413


def test_one_org_never_reads_another_orgs_records(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    api.put(app_host.url(f"orgs/{org}/records/c-1"), json={"type": "contact", "emails": ["carol@client.example"]})

    assert api.get(app_host.url(f"orgs/{org}-other/records/c-1")).status_code == 404
