"""Security through the running app (``hosted``: the real function_app in the local host, its own process)
and on the pure rules behind it:

- two orgs with the same contact address, the same record id and the same message never see each other's
  activities or records;
- return URLs: no allow-list bypass (an adversarial list and a property), refused at the API;
- forged Graph change and lifecycle notifications change nothing and tell the forger nothing;
- a full flow (connect, sync, API reads, explain, a refused callback) logs no token, secret, key, subject or
  body: every record of the app process, at DEBUG, scanned.

OAuth state tampering, replay and expiry, and "no table holds a plaintext token" are proven where the
connect flow is tested (see docs/reliability.md for the references); the log test re-checks the tables.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import msal
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.client import EmulatorClient, EmulatorTenant
from emulator.server import EmulatorServer
from sync_core.adapters.table_due import TableDueIndex
from sync_core.adapters.table_subscriptions import TableSubscriptionStore
from sync_core.auth.crypto import TokenCipher
from sync_core.auth.token_cache_store import TableTokenCacheStore
from sync_core.ports.push import PushSubscription
from sync_core.use_cases.connect import return_url_allowed
from sync_core.use_cases.subscriptions import hash_client_state
from tests.reliability.hosted_app import FUNCTION_KEY, HostedApp

CAROL = "carol@client.example"
RETURN_URL = "https://crm.example/app/mailboxes"
ALLOW_LIST = ("https://crm.example/app",)


def new_org() -> str:
    return "org-" + uuid.uuid4().hex[:12]


def set_up(hosted: HostedApp, org: str, tenant: EmulatorTenant, records: dict[str, dict[str, Any]]) -> None:
    settings_body = {"internal_domains": [tenant.domain], "return_url_allow_list": list(ALLOW_LIST)}
    assert hosted.api.put(hosted.url(f"orgs/{org}/settings"), json=settings_body, timeout=30).status_code == 200
    for record_id, body in records.items():
        assert hosted.api.put(hosted.url(f"orgs/{org}/records/{record_id}"), json=body, timeout=30).status_code == 200


def timeline(hosted: HostedApp, org: str, record_id: str) -> list[dict[str, Any]]:
    response = hosted.api.get(hosted.url(f"orgs/{org}/records/{record_id}/activities"), timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["activities"])


def sync_now(hosted: HostedApp, org: str, mailbox_id: str) -> None:
    response = hosted.api.post(hosted.url(f"orgs/{org}/mailboxes/{mailbox_id}/sync"), timeout=30)
    assert response.status_code == 202, response.text


def wait_for_timeline(hosted: HostedApp, org: str, record_id: str, count: int) -> list[dict[str, Any]]:
    return list(hosted.wait_for(lambda: (found := timeline(hosted, org, record_id)) and len(found) >= count and found,
                                timeout=60, what=f"{count} activities of {record_id} in {org}"))  # fmt: skip


# -- isolation ---------------------------------------------------------------------------------------


def test_two_orgs_with_the_same_contact_record_id_and_message_never_see_each_others_activities_or_records(
    hosted: HostedApp, emulator_client: EmulatorClient, tenant: EmulatorTenant
) -> None:
    other = emulator_client.provision_tenant("second org")
    org_a, org_b = new_org(), new_org()
    contact = {"type": "contact", "name": "Carol", "emails": [CAROL]}
    set_up(hosted, org_a, tenant, {"contact-1": contact})
    only_b = {"type": "lead", "name": "B", "emails": ["bee@only-b.example"]}
    set_up(hosted, org_b, other, {"contact-1": contact, "b-only": only_b})
    box_a = hosted.connect(emulator_client, org_a, tenant.users["adele"].upn, RETURN_URL)
    box_b = hosted.connect(emulator_client, org_b, other.users["adele"].upn, RETURN_URL)
    shared_id = f"<same-{uuid.uuid4().hex}@client.example>"
    received = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    for who, org_tenant in (("A", tenant), ("B", other)):
        user = org_tenant.users["adele"]
        emulator_client.deliver(user.upn, from_=CAROL, to=[user.mail], subject=f"Only for org {who}",
                                body=f"Body for {who}", internet_message_id=shared_id, received=received)  # fmt: skip
    sync_now(hosted, org_a, box_a)
    sync_now(hosted, org_b, box_b)

    [seen_a] = wait_for_timeline(hosted, org_a, "contact-1", 1)
    [seen_b] = wait_for_timeline(hosted, org_b, "contact-1", 1)

    assert (seen_a["subject"], seen_a["mailbox_ids"]) == ("Only for org A", [box_a])
    assert (seen_b["subject"], seen_b["mailbox_ids"]) == ("Only for org B", [box_b])
    assert seen_a["records"] == [{"id": "contact-1", "type": "contact"}]
    assert seen_a["id"] != seen_b["id"] and seen_a["internet_message_id"] == seen_b["internet_message_id"]
    api, url = hosted.api, hosted.url
    assert api.get(url(f"orgs/{org_a}/activities/{seen_b['id']}"), timeout=30).status_code == 404
    assert api.get(url(f"orgs/{org_b}/activities/{seen_a['id']}"), timeout=30).status_code == 404
    assert api.delete(url(f"orgs/{org_a}/activities/{seen_b['id']}"), timeout=30).status_code == 404
    assert api.get(url(f"orgs/{org_b}/activities/{seen_b['id']}"), timeout=30).status_code == 200
    assert api.get(url(f"orgs/{org_a}/records/b-only"), timeout=30).status_code == 404
    assert timeline(hosted, org_a, "b-only") == []
    assert api.get(url(f"orgs/{org_a}/mailboxes/{box_b}"), timeout=30).status_code == 404
    explain = api.post(url(f"orgs/{org_a}/mailboxes/{box_b}/explain"), json={"internet_message_id": shared_id},
                       timeout=30)  # fmt: skip
    assert explain.status_code == 404
    listed = api.get(url(f"orgs/{org_a}/mailboxes"), timeout=30).json()["mailboxes"]
    assert [m["id"] for m in listed] == [box_a]


# -- open redirects -------------------------------------------------------------------------------------

ALLOWED = ("https://crm.example.com/settings", "http://localhost:8080/cb")
EVIL = [
    "https://crm.example.com.evil.example/settings", "https://crm.example.com@evil.example/settings",
    "https://evil.example@crm.example.com/settings", "https://evil.example/https://crm.example.com/settings",
    "//evil.example/settings", "/settings", "https:/crm.example.com/settings", "https:crm.example.com/settings",
    "https://crm.example.com/settings/../../evil", "https://crm.example.com/settings/%2e%2e/evil",
    "https://crm.example.com/settingsevil", "https://crm.example.com/Settings/../x", "http://crm.example.com/settings",
    "https://crm.example.com:444/settings", "https://crm.example.com\\@evil.example/settings",
    "https://crm.example.com\\evil.example", "https://crm.example.com/settings\r\nLocation: https://evil.example",
    "https://crm.example.com/settings\x00", "javascript:alert(1)//crm.example.com/settings",
    "data:text/html,<script>alert(1)</script>", "https://crm.ex\u0430mple.com/settings", "https://xn--crm-example-.com/",
    "https://crm.example.com%2f@evil.example/settings", "https://crm%2eexample%2ecom/settings",
    "ftp://crm.example.com/settings", "https://[::1]/settings", "https://localhost:8080/cb",
    "http://localhost:8080@evil.example/cb", "http://localhost:8081/cb", "", " https://crm.example.com/settings",
    "https://crm.example.com/settings/" + "a" * 3000,
]  # fmt: skip
GOOD = [
    "https://crm.example.com/settings", "https://crm.example.com/settings/", "https://crm.example.com/settings/x?a=1",
    "https://CRM.EXAMPLE.COM/settings#frag", "https://crm.example.com:443/settings/y", "http://localhost:8080/cb/z",
]  # fmt: skip


@pytest.mark.parametrize("url", EVIL)
def test_a_return_url_off_the_allow_list_in_any_disguise_is_refused(url: str) -> None:
    assert not return_url_allowed(url, ALLOWED)


@pytest.mark.parametrize("url", GOOD)
def test_return_urls_on_the_allow_list_are_accepted(url: str) -> None:
    assert return_url_allowed(url, ALLOWED)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(suffix=st.text(max_size=40), prefix=st.sampled_from(["", "https://", "https://crm.example.com", "//"]))
def test_whatever_follows_an_allowed_prefix_an_accepted_url_leads_a_browser_to_the_allowed_origin(
    prefix: str, suffix: str
) -> None:
    url = prefix + suffix if prefix != "https://crm.example.com" else "https://crm.example.com/settings" + suffix
    if return_url_allowed(url, ALLOWED):
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port in (None, 443)) == ("https", "crm.example.com", True)
        assert parts.username is None and parts.password is None
        assert "\\" not in url and not any(ord(c) < 0x21 for c in url)


def test_the_connect_api_refuses_an_open_redirect_before_any_sign_in(hosted: HostedApp, tenant: EmulatorTenant) -> None:
    org = new_org()
    set_up(hosted, org, tenant, {})
    for url in ("https://crm.example.evil.example/app", "https://crm.example@evil.example/app", "//evil.example/x",
                "https://crm.example/app/../../evil", "https://crm.example/application"):  # fmt: skip
        body = {"user_id": "u1", "return_url": url}
        response = hosted.api.post(hosted.url(f"orgs/{org}/mailboxes/connect"), json=body, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["code"] == "return_url_not_allowed", url
        consent = hosted.api.get(hosted.url(f"orgs/{org}/admin-consent"), params={"return_url": url}, timeout=30)
        assert consent.status_code == 400, url


# -- forged change notifications --------------------------------------------------------------------------


def test_forged_change_and_lifecycle_notifications_are_ignored_and_answered_like_genuine_ones(
    hosted: HostedApp, emulator_client: EmulatorClient, tenant: EmulatorTenant
) -> None:
    org = new_org()
    set_up(hosted, org, tenant, {})
    mailbox_id = hosted.connect(emulator_client, org, tenant.users["megan"].upn, RETURN_URL)
    service = hosted.tables()
    store = TableSubscriptionStore(service, hosted.prefix)
    due = TableDueIndex(service, hosted.prefix)
    secret, subscription_id, now = uuid.uuid4().hex + uuid.uuid4().hex, str(uuid.uuid4()), datetime.now(UTC)
    store.put(PushSubscription(org, mailbox_id, "inbox", subscription_id, f"users/{mailbox_id}/messages",
                               hash_client_state(secret), now + timedelta(days=2), now))  # fmt: skip
    hosted.wait_for(lambda: (e := due.get(org, mailbox_id)) is None or e.value.queued_at is None, 60, "an idle mailbox")
    before = due.get(org, mailbox_id)

    def notify(path: str, **item: Any) -> requests.Response:
        payload = {"value": [{"subscriptionId": subscription_id, "changeType": "created",
                              "resource": f"users/{mailbox_id}/messages/x", "tenantId": tenant.id, **item}]}
        return requests.post(hosted.url(path), json=payload, timeout=30)  # anonymous, as Graph calls  # fmt: skip

    answers = [
        notify("notifications", clientState="wrong"),
        notify("notifications", clientState=secret.upper()),
        notify("notifications"),
        notify("notifications", subscriptionId=str(uuid.uuid4()), clientState=secret),
        notify("notifications/lifecycle", clientState="wrong", lifecycleEvent="subscriptionRemoved"),
        notify("notifications/lifecycle", clientState="wrong", lifecycleEvent="reauthorizationRequired"),
    ]

    assert [(r.status_code, r.content) for r in answers] == [(202, b"")] * len(answers)
    after = due.get(org, mailbox_id)
    assert (after.value.queued_at if after else None) == (before.value.queued_at if before else None)
    stored = store.get(subscription_id)
    # Counted on the subscription: the 4 wrong clientStates. Not: the unknown id (not ours), and the item
    # without a clientState (malformed, refused before any storage read).
    assert stored is not None and stored.rejected == 4 and stored.notifications == 0
    assert stored.last_lifecycle_event == ""
    assert hosted.queue_empty()
    # The genuine one, for contrast: the same request with the right clientState queues a sync.
    genuine = notify("notifications", clientState=secret)
    assert (genuine.status_code, genuine.content) == (202, b"")
    assert hosted.wait_for(lambda: (e := due.get(org, mailbox_id)) is not None and e.value.queued_at, 30, "a sync")


def test_the_notification_validation_handshake_reflects_the_token_only_as_plain_text(hosted: HostedApp) -> None:
    token = "<script>alert(1)</script>&validated"
    response = requests.post(hosted.url("notifications"), params={"validationToken": token}, timeout=30)

    assert response.status_code == 200 and response.text == token
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


# -- nothing secret in the logs ---------------------------------------------------------------------------


def issued_secrets(hosted: HostedApp, emulator: EmulatorServer, org: str, mailbox_id: str) -> dict[str, str]:
    """Every token the emulator issued (to anyone: a superset of the app's), the tokens in the app's
    encrypted MSAL cache of the mailbox, and the app's settings that are secrets."""
    found: dict[str, str] = {}
    tokens = emulator.state.tokens
    with tokens.lock:
        issued = [*tokens.access_tokens, *tokens.refresh_tokens, *tokens.codes, *tokens.pending]
    for value in issued:
        found[value] = "emulator-issued token or code"
    key = hosted.settings["TOKEN_ENCRYPTION_KEY"]
    cache_store = TableTokenCacheStore(hosted.tables(), TokenCipher.from_setting(key), hosted.prefix)
    stored = cache_store.get(org, f"mailbox:{mailbox_id}")
    assert stored is not None
    cache = msal.SerializableTokenCache()
    cache.deserialize(stored.value)
    for kind in (msal.TokenCache.CredentialType.ACCESS_TOKEN, msal.TokenCache.CredentialType.REFRESH_TOKEN,
                 msal.TokenCache.CredentialType.ID_TOKEN):  # fmt: skip
        for entry in cache.search(kind):
            found[entry["secret"]] = f"cached {kind}"
            found[entry["secret"].rsplit(".", 1)[-1]] = f"signature of a cached {kind}"
    found[hosted.client_secret] = "client secret"
    found[key] = "token encryption key"
    found[key.partition(":")[2]] = "token encryption key (material)"
    found[FUNCTION_KEY] = "function key"
    return {value: what for value, what in found.items() if len(value) >= 12}


def test_a_full_flow_logs_no_token_secret_key_subject_body_or_unmatched_address_at_any_level(
    hosted: HostedApp, emulator: EmulatorServer, emulator_client: EmulatorClient, tenant: EmulatorTenant
) -> None:
    org, token = new_org(), uuid.uuid4().hex
    set_up(hosted, org, tenant, {"contact-1": {"type": "contact", "name": "Carol", "emails": [CAROL]}})
    # A refused callback first (its query carries a code and a state that must not be logged either).
    refused = requests.get(hosted.url("auth/callback"), params={"code": f"code-{token}", "state": f"state-{token}"},
                           timeout=30)  # fmt: skip
    assert refused.status_code == 400
    mailbox_id = hosted.connect(emulator_client, org, tenant.users["adele"].upn, RETURN_URL)
    user = tenant.users["adele"]
    private: list[str] = []
    received = datetime.now(UTC) + timedelta(seconds=2)
    # The unmatched sender's address is unique to this run, so any trace of it in a log is a leak: the
    # app looks it up in the records index (Table query URLs carry it), then must forget it.
    stranger = f"stranger-{token}@nowhere.example"
    for k, sender in enumerate((CAROL, stranger, CAROL)):
        subject, body = f"Private subject {token} {k}", f"Private body {token}-{k} account 4242"
        emulator_client.deliver(user.upn, from_=sender, to=[user.mail], subject=subject, body=body,
                                received=(received + timedelta(seconds=k)).isoformat())  # fmt: skip
        private += [subject, f"{token}-{k}"]
    sync_now(hosted, org, mailbox_id)
    listed = wait_for_timeline(hosted, org, "contact-1", 2)
    for activity in listed:
        assert hosted.api.get(hosted.url(f"orgs/{org}/activities/{activity['id']}"), timeout=30).status_code == 200
    assert hosted.api.get(hosted.url(f"orgs/{org}/mailboxes/{mailbox_id}"), timeout=30).status_code == 200
    assert hosted.api.get(hosted.url(f"orgs/{org}/mailboxes/{mailbox_id}/runs"), timeout=30).status_code == 200
    explained = hosted.api.post(hosted.url(f"orgs/{org}/mailboxes/{mailbox_id}/explain"),
                                json={"internet_message_id": listed[0]["internet_message_id"]}, timeout=30)  # fmt: skip
    assert explained.status_code == 200, explained.text
    # A forced token refresh: Graph rejects the access token, the app refreshes it.
    emulator_client.expire_access_tokens(user.id)
    emulator_client.deliver(user.upn, from_=CAROL, to=[user.mail], subject=f"Private subject {token} late",
                            body=f"Private body {token}-late", received=(received + timedelta(seconds=9)).isoformat())
    # The callback's code is a credential; its state is not (it is in the browser's address bar, single use,
    # and useless without the flow's PKCE verifier): it is the flow's row key, so it is in storage URLs.
    private += [f"Private subject {token} late", f"{token}-late", f"code-{token}"]
    sync_now(hosted, org, mailbox_id)
    wait_for_timeline(hosted, org, "contact-1", 3)
    # Unmatched mail through the other door, RFC 822 ingest, from (and copied to) another unique address.
    uploaded = hosted.api.post(
        hosted.url(f"orgs/{org}/messages:ingest"),
        data=(f"From: <{stranger}>\r\nTo: <{user.mail}>\r\nCc: <other-{token}@elsewhere.example>\r\n"
              f"Subject: Private subject {token} upload\r\nDate: Mon, 7 Dec 2026 09:00:00 +0000\r\n"
              f"Message-ID: <upload-{token}@nowhere.example>\r\n\r\nPrivate body {token}-upload\r\n").encode(),
        headers={"Content-Type": "message/rfc822"}, timeout=30,
    )  # fmt: skip
    assert uploaded.status_code == 200 and uploaded.json()["outcome"] == "not_logged", uploaded.text
    private += [f"Private subject {token} upload", f"{token}-upload"]

    secrets = issued_secrets(hosted, emulator, org, mailbox_id)
    secrets.update({value: "message subject, body or callback parameter" for value in private})
    # Its local part survives every encoding a URL or a Table filter gives the address (%40, %27, quoting).
    secrets[stranger.partition("@")[0]] = "address of unmatched mail"
    secrets[f"other-{token}"] = "address of unmatched mail"
    records = hosted.log_records()
    leaks = [
        (what, record["logger"], record["level"], record["message"][:200])
        for record in records
        for value, what in secrets.items()
        if any(value in record[part] for part in ("msg", "args", "message", "exc", "stack"))
    ]

    assert len(records) > 50 and any(r["level"] == "DEBUG" for r in records)
    assert any(r["logger"].startswith("sync_core") for r in records)
    assert Counter(leak[:3] for leak in leaks) == Counter(), leaks[:3]
    # The tables, too: no issued token or secret in plaintext anywhere under the app's prefix.
    service = hosted.tables()
    table_leaks = [
        (table.name, what)
        for table in service.list_tables()
        if table.name.startswith(hosted.prefix)
        for entity in service.get_table_client(table.name).list_entities()
        for text in [repr(dict(entity))]
        for value, what in secrets.items()
        if what not in ("message subject, body or callback parameter", "address of unmatched mail") and value in text
    ]
    assert table_leaks == []
