"""Mailbox gatekeeping, Outlook limits (budget, concurrency), injected faults and per-mailbox counters."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from emulator.client import ADMIN_CONSENT_REDIRECT_URI, REDIRECT_URI, EmulatorTenant, TenantApp, emulator_session


def inbox(tenant: EmulatorTenant, user: str) -> str:
    return f"/users/{tenant.users[user].upn}/mailFolders/inbox/messages"


# -- who may reach a mailbox -----------------------------------------------------------------------


def test_a_delegated_user_reaches_own_mailbox_but_not_a_colleagues(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")

    assert tenant.graph("GET", "/me/mailFolders/inbox/messages", token).status_code == 200
    assert tenant.graph("GET", inbox(tenant, "adele"), token).status_code == 200
    other = tenant.graph("GET", inbox(tenant, "megan"), token)
    assert other.status_code == 403
    assert other.json()["error"] == {
        **other.json()["error"],
        "code": "ErrorAccessDenied",
        "message": "Access is denied. Check credentials and try again.",
    }


def test_mail_routes_need_a_mail_permission(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele", scopes=["User.Read"])

    answer = tenant.graph("GET", "/me/messages", token)

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "ErrorAccessDenied"


def test_an_unknown_mailbox_is_404_error_invalid_user(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", f"/users/ghost@{tenant.domain}/messages", tenant.app_token())

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "ErrorInvalidUser"
    assert answer.json()["error"]["message"] == f"The requested user 'ghost@{tenant.domain}' is invalid."


def test_an_app_reaches_shared_mailboxes_by_address(tenant: EmulatorTenant) -> None:
    assert tenant.graph("GET", inbox(tenant, "sales"), tenant.app_token()).status_code == 200


def test_an_access_policy_shuts_an_app_out_of_other_mailboxes_until_removed(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()
    tenant.client.set_access_policy(tenant.id, tenant.app.client_id, [tenant.users["megan"].upn])

    denied = tenant.graph("GET", inbox(tenant, "adele"), token)
    assert denied.status_code == 403
    assert (denied.json()["error"]["code"], denied.json()["error"]["message"]) == (
        "ErrorAccessDenied",
        "Access to OData is disabled.",
    )
    assert tenant.graph("GET", inbox(tenant, "megan"), token).status_code == 200
    assert tenant.graph("GET", "/me/messages", tenant.delegated_token("adele")).status_code == 200

    tenant.client.set_access_policy(tenant.id, tenant.app.client_id, None)
    assert tenant.graph("GET", inbox(tenant, "adele"), token).status_code == 200


# -- limits ----------------------------------------------------------------------------------------


def test_an_exhausted_mailbox_budget_answers_429_with_retry_after(tenant: EmulatorTenant) -> None:
    tenant.client.configure(mailbox_request_budget=3, budget_window_s=30)
    token = tenant.app_token()

    statuses = [tenant.graph("GET", inbox(tenant, "adele"), token).status_code for _ in range(3)]
    throttled = tenant.graph("GET", inbox(tenant, "adele"), token)

    assert statuses == [200, 200, 200]
    assert throttled.status_code == 429
    assert 28 <= int(throttled.headers["Retry-After"]) <= 30
    error = throttled.json()["error"]
    assert (error["code"], error["message"]) == ("TooManyRequests", "Please retry again later.")
    assert (error["innerError"]["status"], error["innerError"]["code"]) == ("429", "429")
    assert tenant.graph("GET", inbox(tenant, "megan"), token).status_code == 200


def test_the_budget_window_slides(tenant: EmulatorTenant) -> None:
    tenant.client.configure(mailbox_request_budget=1, budget_window_s=1)
    token = tenant.app_token()

    assert tenant.graph("GET", inbox(tenant, "adele"), token).status_code == 200
    throttled = tenant.graph("GET", inbox(tenant, "adele"), token)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "1")
    time.sleep(1.05)
    assert tenant.graph("GET", inbox(tenant, "adele"), token).status_code == 200


def test_the_budget_is_per_app_and_mailbox(tenant: EmulatorTenant) -> None:
    tenant.client.configure(mailbox_request_budget=1, budget_window_s=30)
    token = tenant.delegated_token("adele")
    assert tenant.graph("GET", "/me/messages", token).status_code == 200
    assert tenant.graph("GET", "/me/messages", token).status_code == 429
    second = TenantApp(str(uuid.uuid4()), "second-secret", REDIRECT_URI, ADMIN_CONSENT_REDIRECT_URI)
    tenant.client.create_app(second.client_id, second.client_secret, [second.redirect_uri], ["Mail.Read"])
    other_app = dataclasses.replace(tenant, app=second)

    assert other_app.graph("GET", "/me/messages", other_app.delegated_token("adele")).status_code == 200
    assert tenant.graph("GET", inbox(tenant, "megan"), tenant.app_token()).status_code == 200


def test_a_fifth_concurrent_request_to_a_mailbox_is_429_mailbox_concurrency(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()
    tenant.client.add_fault(mailbox=tenant.users["adele"].upn, delay_ms=500, count=-1)

    def call(_: int) -> requests.Response:
        with emulator_session(tenant.client.ca_bundle) as session:
            return session.get(
                tenant.graph_url + inbox(tenant, "adele"), headers={"Authorization": f"Bearer {token}"}, timeout=30
            )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, range(6)))

    assert Counter(a.status_code for a in answers) == {200: 4, 429: 2}
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
    assert int(refused.headers["Retry-After"]) >= 1


# -- injected faults -------------------------------------------------------------------------------


def test_an_injected_503_carries_retry_after_and_then_the_mailbox_recovers(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()
    tenant.client.add_fault(status=503, retry_after=7, mailbox=tenant.users["adele"].upn)

    failed = tenant.graph("GET", inbox(tenant, "adele"), token)

    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "7"
    assert failed.json()["error"]["code"] == "serviceNotAvailable"
    assert tenant.graph("GET", inbox(tenant, "adele"), token).status_code == 200


def test_an_injected_504_has_no_retry_after_unless_given(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()
    tenant.client.add_fault(status=504, path_contains="/mailFolders/inbox/messages")

    failed = tenant.graph("GET", inbox(tenant, "adele"), token)

    assert failed.status_code == 504
    assert "Retry-After" not in failed.headers


def test_faults_match_by_method_and_path_and_repeat_until_cleared(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")
    tenant.client.add_fault(status=500, path_contains="/messages", method="GET", count=-1)
    tenant.client.add_fault(status=503, method="DELETE", count=-1)

    assert [tenant.graph("GET", "/me/messages", token).status_code for _ in range(2)] == [500, 500]
    assert tenant.graph("GET", "/me/mailFolders", token).status_code == 200
    tenant.client.clear_faults()
    assert tenant.graph("GET", "/me/messages", token).status_code == 200


def test_a_dropped_connection_raises_and_the_next_request_succeeds(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()
    tenant.client.add_fault(drop_connection=True, mailbox=tenant.users["adele"].upn)

    with pytest.raises(requests.ConnectionError):
        tenant.graph("GET", inbox(tenant, "adele"), token)
    assert tenant.graph("GET", inbox(tenant, "adele"), token).status_code == 200
    assert tenant.client.mailbox_stats(tenant.users["adele"].id)["by_status"] == {"200": 1, "dropped": 1}


def test_latency_applies_to_graph_and_identity_requests(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")
    tenant.client.configure(latency_ms=300)

    started = time.monotonic()
    assert tenant.graph("GET", "/me", token).status_code == 200
    graph_elapsed = time.monotonic() - started
    started = time.monotonic()
    tenant.session.get(f"{tenant.authority}/v2.0/.well-known/openid-configuration")
    identity_elapsed = time.monotonic() - started

    assert graph_elapsed >= 0.3
    assert identity_elapsed >= 0.3


def test_an_injected_token_endpoint_outage_has_the_aad_shape(tenant: EmulatorTenant) -> None:
    tenant.consent_as_admin()
    tenant.client.add_fault(status=503, retry_after=2, path_contains="/oauth2/v2.0/token")

    answer = tenant.token_request(
        grant_type="client_credentials",
        client_id=tenant.app.client_id,
        client_secret=tenant.app.client_secret,
        scope="https://graph.microsoft.com/.default",
    )

    assert (answer.status_code, answer.headers["Retry-After"]) == (503, "2")
    assert answer.json()["error"] == "temporarily_unavailable"
    assert "access_token" in tenant.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])


# -- counters --------------------------------------------------------------------------------------


def test_mailbox_counters_count_every_outcome_by_status(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()
    adele = tenant.users["adele"].upn
    tenant.client.add_fault(status=503, mailbox=adele)
    tenant.client.add_fault(status=429, retry_after=3, mailbox=adele)

    statuses = [tenant.graph("GET", inbox(tenant, "adele"), token).status_code for _ in range(4)]
    tenant.graph("GET", f"/users/{adele}", token)  # a directory read, not a mailbox request

    assert statuses == [503, 429, 200, 200]
    assert tenant.client.mailbox_stats(adele) == {"requests": 4, "by_status": {"200": 2, "429": 1, "503": 1}}
    assert tenant.client.mailbox_stats(tenant.users["megan"].id) == {"requests": 0, "by_status": {}}
