"""Connecting mailboxes through the running function_app: the browser-style delegated sign-in, admin
consent, application mode, and the status codes of the connect routes."""

from __future__ import annotations

import requests

from emulator.client import EmulatorClient, EmulatorTenant
from tests import connect_flow
from tests.connect_flow import query_of
from tests.e2e.conftest import AppUnderTest

RETURN_URL = "https://crm.example/app/mailboxes"


def allow_return_url(app_host: AppUnderTest, api: requests.Session, org: str) -> None:
    response = api.put(app_host.url(f"orgs/{org}/settings"), json={"return_url_allow_list": ["https://crm.example/app"]})
    assert response.status_code == 200


def sign_in(
    app_host: AppUnderTest,
    api: requests.Session,
    emulator_client: EmulatorClient,
    org: str,
    upn: str,
    *,
    return_url: str | None = None,
    account: str | None = None,
) -> requests.Response:
    """POST connect, sign in on the emulator's page, then follow the redirect to our callback (not further)."""
    return connect_flow.sign_in(
        api, app_host.url, emulator_client, org, upn, return_url=return_url, account=account
    )


def consent(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, org: str, tenant: EmulatorTenant
) -> requests.Response:
    return connect_flow.consent(api, app_host.url, emulator_client, org, tenant.users["megan"].upn, tenant=tenant.id)


def test_a_browser_sign_in_comes_back_with_a_connect_code_and_the_crms_confirmation_activates_the_mailbox(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    allow_return_url(app_host, api, org)
    adele = tenant.users["adele"]

    response = sign_in(app_host, api, emulator_client, org, adele.upn, return_url=RETURN_URL)

    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(RETURN_URL + "?")
    query = query_of(location)
    assert query["status"] == "signed_in" and set(query) == {"status", "connect_code"}
    assert api.get(app_host.url(f"orgs/{org}/mailboxes")).json() == {"mailboxes": []}
    confirmed = connect_flow.confirm(api, app_host.url, org, query["connect_code"])
    assert confirmed.status_code == 200, confirmed.text
    mailbox = api.get(app_host.url(f"orgs/{org}/mailboxes/{confirmed.json()['id']}")).json()
    assert confirmed.json()["status"] == "active"
    assert mailbox["status"] == "active" and mailbox["mode"] == "delegated"
    assert mailbox["address"] == adele.mail
    assert f"adele.vance@{tenant.domain}" in mailbox["aliases"]
    assert mailbox["user_id"] == "crm-user-1" and mailbox["tenant_id"] == tenant.id
    assert mailbox["last_sync_at"] is None and mailbox["counters"]["runs"] == 0
    assert not any("token" in key for key in mailbox)


def test_a_connect_without_a_return_url_is_refused_unless_the_org_turned_confirmation_off(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    body = {"user_id": "crm-user-1", "login_hint": tenant.users["megan"].upn}
    refused = api.post(app_host.url(f"orgs/{org}/mailboxes/connect"), json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "return_url_required"
    assert refused.json()["error"]["details"] == {"field": "return_url"}
    assert api.put(app_host.url(f"orgs/{org}/settings"), json={"connect_confirmation": False}).status_code == 200

    response = sign_in(app_host, api, emulator_client, org, tenant.users["megan"].upn)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    assert f"The mailbox {tenant.users['megan'].mail} is connected." in response.text
    listed = api.get(app_host.url(f"orgs/{org}/mailboxes")).json()["mailboxes"]
    assert [m["address"] for m in listed] == [tenant.users["megan"].mail]


def test_reloading_the_success_page_of_a_connected_mailbox_says_it_was_already_completed(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    assert api.put(app_host.url(f"orgs/{org}/settings"), json={"connect_confirmation": False}).status_code == 200
    megan = tenant.users["megan"]
    first = sign_in(app_host, api, emulator_client, org, megan.upn)
    assert first.status_code == 200 and "is connected" in first.text

    reloaded = requests.get(first.url, timeout=30)

    assert reloaded.status_code == 200, reloaded.text
    assert "Mailbox connection: Done" in reloaded.text and "already completed" in reloaded.text
    assert "invalid_state" not in reloaded.text and megan.mail not in reloaded.text
    assert reloaded.headers["Cache-Control"] == "no-store"


def test_a_tampered_state_gets_a_400_page_that_reflects_nothing_and_connects_nothing(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    response = requests.get(
        app_host.url("auth/callback"), params={"code": "x", "state": "<script>alert(1)</script>"}, timeout=30
    )

    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<script>" not in response.text and "alert(1)" not in response.text
    assert "invalid, expired or was already used" in response.text
    consent_callback = requests.get(app_host.url("auth/admin-consent/callback"), params={"state": "x"}, timeout=30)
    assert consent_callback.status_code == 400
    assert api.get(app_host.url(f"orgs/{org}/mailboxes")).json() == {"mailboxes": []}


def test_a_return_url_off_the_allow_list_is_refused_with_400_naming_the_field(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    allow_return_url(app_host, api, org)
    body = {"user_id": "u-1", "return_url": "https://evil.example/app"}

    response = api.post(app_host.url(f"orgs/{org}/mailboxes/connect"), json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "return_url_not_allowed"
    assert response.json()["error"]["details"] == {"field": "return_url"}


def test_connect_refuses_bad_json_a_wrong_content_type_and_a_missing_user_id(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    url = app_host.url(f"orgs/{org}/mailboxes/connect")

    broken = api.post(url, data="{", headers={"Content-Type": "application/json"})
    form = api.post(url, data="user_id=u-1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    missing = api.post(url, json={"login_hint": "someone@example.com"})

    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    assert form.status_code == 415
    assert (missing.status_code, missing.json()["error"]["details"]) == (400, {"field": "user_id"})


def test_admin_consent_round_trip_then_a_shared_mailbox_is_added_in_application_mode(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    page = consent(app_host, api, emulator_client, org, tenant)
    assert page.status_code == 200, page.text
    assert "Admin consent is granted" in page.text
    sales = tenant.users["sales"]

    response = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": sales.mail.upper()})

    assert response.status_code == 201, response.text
    mailbox = response.json()
    assert (mailbox["address"], mailbox["mode"], mailbox["status"]) == (sales.mail, "application", "active")
    assert response.headers["Location"] == f"/api/orgs/{org}/mailboxes/{mailbox['id']}"
    assert api.get(app_host.url(f"orgs/{org}/mailboxes/{mailbox['id']}")).json()["status"] == "active"


def test_a_mailbox_the_access_policy_denies_is_added_in_error_with_the_reason(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    assert consent(app_host, api, emulator_client, org, tenant).status_code == 200
    emulator_client.set_access_policy(tenant.id, app_host.client_id, [tenant.users["adele"].upn])
    try:
        response = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": tenant.users["megan"].mail})
    finally:
        emulator_client.set_access_policy(tenant.id, app_host.client_id, None)

    assert response.status_code == 201
    mailbox = api.get(app_host.url(f"orgs/{org}/mailboxes/{response.json()['id']}")).json()
    assert mailbox["status"] == "error"
    assert "application access policy" in mailbox["status_reason"]


def test_adding_a_mailbox_without_admin_consent_gets_409(
    app_host: AppUnderTest, api: requests.Session, tenant: EmulatorTenant, org: str
) -> None:
    response = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": tenant.users["sales"].mail})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "admin_consent_required"


def test_an_admin_consent_request_for_an_invalid_tenant_gets_400(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    response = api.get(app_host.url(f"orgs/{org}/admin-consent"), params={"tenant": "common"})

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"field": "tenant"}


def test_the_oauth_callbacks_need_no_function_key_but_the_connect_route_does(
    app_host: AppUnderTest, org: str
) -> None:
    started = requests.post(app_host.url(f"orgs/{org}/mailboxes/connect"), json={"user_id": "u"}, timeout=30)
    callback = requests.get(app_host.url("auth/callback"), timeout=30)

    assert started.status_code == 401
    assert callback.status_code == 400


def test_a_connect_link_opened_by_someone_else_or_confirmed_for_another_user_connects_nothing(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    allow_return_url(app_host, api, org)
    adele, megan = tenant.users["adele"], tenant.users["megan"]

    stranger = sign_in(app_host, api, emulator_client, org, adele.upn, return_url=RETURN_URL, account=megan.upn)
    assert query_of(stranger.headers["Location"]) == {"status": "error", "error": "wrong_account"}
    genuine = sign_in(app_host, api, emulator_client, org, adele.upn, return_url=RETURN_URL)
    assert api.get(app_host.url(f"orgs/{org}/mailboxes")).json() == {"mailboxes": []}
    code = query_of(genuine.headers["Location"])["connect_code"]
    wrong_user = connect_flow.confirm(api, app_host.url, org, code, user_id="crm-user-2")
    other_org = connect_flow.confirm(api, app_host.url, "org-elsewhere", code)

    for refused in (wrong_user, other_org):
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_connect_code"
    assert api.get(app_host.url(f"orgs/{org}/mailboxes")).json() == {"mailboxes": []}
    assert connect_flow.confirm(api, app_host.url, org, code).status_code == 200
    reused = connect_flow.confirm(api, app_host.url, org, code)
    assert (reused.status_code, reused.json()["error"]["code"]) == (400, "invalid_connect_code")


def test_confirm_refuses_bad_bodies_with_400_naming_the_field(
    app_host: AppUnderTest, api: requests.Session, org: str
) -> None:
    url = app_host.url(f"orgs/{org}/mailboxes/connect:confirm")

    missing = api.post(url, json={"user_id": "u-1"})
    too_long = api.post(url, json={"user_id": "u-1", "code": "x" * 500})
    unknown = api.post(url, json={"user_id": "u-1", "code": "c", "mailbox_id": "m"})

    assert (missing.status_code, missing.json()["error"]["details"]) == (400, {"field": "code"})
    assert (too_long.status_code, too_long.json()["error"]["details"]) == (400, {"field": "code"})
    assert unknown.status_code == 400


def test_a_consent_without_mail_read_gets_a_403_page_and_application_mode_stays_unavailable(
    app_host: AppUnderTest, api: requests.Session, emulator_client: EmulatorClient, tenant: EmulatorTenant, org: str
) -> None:
    emulator_client.set_app_roles(app_host.client_id, ["User.Read.All"])
    try:
        page = consent(app_host, api, emulator_client, org, tenant)
    finally:
        emulator_client.set_app_roles(app_host.client_id, ["Mail.Read", "User.Read.All"])

    assert page.status_code == 403 and "consent_missing_roles" in page.text and "Mail.Read" in page.text
    response = api.post(app_host.url(f"orgs/{org}/mailboxes"), json={"address": tenant.users["sales"].mail})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "admin_consent_required")
