"""Delegated connect end to end: MSAL over HTTPS against the emulator, auth stores on Azurite."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from sync_core.adapters.graph.identity import MsalIdentity
from sync_core.adapters.graph.session import MsalHttpClient
from sync_core.adapters.graph.tokens import DelegatedTokenSource
from sync_core.domain.model import Activity, ConnectionMode, Direction, MailboxStatus, RecordRef, activity_id_for
from sync_core.errors import InvalidRequest, MailboxNotFound, ReauthRequired
from sync_core.use_cases.connect import (
    complete_connect,
    confirm_connect,
    disconnect,
    mailbox_id_for,
    sign_out_all,
    start_connect,
)
from tests.integration.connect_env import (
    ORG,
    ORG_RETURN_URLS,
    PUBLIC_BASE_URL,
    RETURN_URL,
    ConnectEnv,
    env,
    query_of,
)

__all__ = ["env"]  # the fixture


def graph_ok(env: ConnectEnv, source: DelegatedTokenSource) -> str:
    """A real Graph read with the token source (what a sync run does)."""
    return str(env.graph_for(source).get("me/mailFolders('inbox')", {"$select": "id"})["id"])


def test_a_user_signs_in_is_sent_back_with_a_connect_code_and_the_crms_confirmation_connects_the_mailbox(
    env: ConnectEnv,
) -> None:
    signed_in_at = env.clock.now()
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)
    result = complete_connect(env.deps, env.authorize(url))

    adele = env.tenant.users["adele"]
    assert result.ok, result.message
    assert result.mailbox_id == mailbox_id_for(ORG, adele.id)
    assert result.redirect_url == f"{RETURN_URL}?status=signed_in&connect_code={result.connect_code}"
    assert env.mailboxes.list(ORG) == ()  # the callback alone activates nothing
    assert env.tokens.get(ORG, f"mailbox:{result.mailbox_id}") is None
    env.clock.advance(timedelta(minutes=2))

    confirmed = confirm_connect(env.deps, ORG, "crm-adele", result.connect_code)

    mailbox = env.mailbox(result.mailbox_id)
    assert confirmed == mailbox
    assert mailbox.address == adele.mail
    assert set(mailbox.aliases) == {adele.mail, adele.upn, f"adele.vance@{env.tenant.domain}"}
    assert mailbox.aliases[0] == adele.mail
    assert (mailbox.tenant_id, mailbox.graph_user_id, mailbox.user_id) == (env.tenant.id, adele.id, "crm-adele")
    assert mailbox.status is MailboxStatus.ACTIVE and mailbox.mode is ConnectionMode.DELEGATED
    assert mailbox.watermark == signed_in_at
    assert graph_ok(env, DelegatedTokenSource(env.identity, env.tokens, mailbox))


def test_the_authorize_url_asks_for_mail_read_with_pkce_and_the_registered_redirect(env: ConnectEnv) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert url.startswith(f"{env.tenant.base_url}/organizations/oauth2/v2.0/authorize?")
    assert set(query["scope"].split()) >= {"Mail.Read", "User.Read", "offline_access", "openid"}
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["redirect_uri"] == f"{PUBLIC_BASE_URL}/api/auth/callback"
    assert query["login_hint"] == env.upn("adele")
    assert query["prompt"] == "select_account"
    assert query["state"]


def test_a_return_url_off_the_allow_list_is_rejected_before_sign_in(env: ConnectEnv) -> None:
    for bad in (
        "https://evil.example.com/settings",
        "https://crm.example.com/settingsx",
        "https://crm.example.com/settings/../admin",
        "http://crm.example.com/settings",
        "https://crm.example.com@evil.example.com/settings",
    ):
        with pytest.raises(InvalidRequest) as info:
            start_connect(env.deps, ORG, "crm-adele", None, bad)
        assert info.value.code == "return_url_not_allowed"


def test_a_delegated_connect_needs_a_return_url_unless_the_org_turned_confirmation_off(env: ConnectEnv) -> None:
    with pytest.raises(InvalidRequest) as info:
        start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), None)
    assert info.value.code == "return_url_required"
    env.org_settings.put(ORG, replace(env.org_settings.get(ORG), connect_confirmation=False))

    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), None)
    result = complete_connect(env.deps, env.authorize(url))

    assert result.ok and result.redirect_url is None and result.connect_code == ""
    assert "is connected" in result.message
    assert env.mailbox(result.mailbox_id).status is MailboxStatus.ACTIVE


def test_a_return_url_removed_from_the_allow_list_meanwhile_gets_no_code_and_connects_nothing(
    env: ConnectEnv,
) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", None, RETURN_URL)
    env.org_settings.put(ORG, replace(env.org_settings.get(ORG), return_url_allow_list=()))

    result = complete_connect(env.deps, env.authorize(url))

    assert not result.ok and result.error == "confirmation_unavailable" and result.redirect_url is None
    assert env.mailboxes.list(ORG) == ()


def test_a_declined_consent_changes_nothing(env: ConnectEnv) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)

    result = complete_connect(env.deps, env.authorize(url, consent=False))

    assert not result.ok and result.error == "consent_declined"
    assert result.redirect_url == f"{RETURN_URL}?status=error&error=consent_declined"
    assert env.mailboxes.list(ORG) == ()
    assert env.tokens.delete_org(ORG) == 0


def test_a_tampered_state_is_refused_and_the_genuine_callback_still_works(env: ConnectEnv) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)
    params = env.authorize(url)

    for forged in ({**params, "state": params["state"] + "x"}, {k: v for k, v in params.items() if k != "state"}):
        refused = complete_connect(env.deps, forged)
        assert not refused.ok and refused.error == "invalid_state" and refused.redirect_url is None
    assert env.mailboxes.list(ORG) == ()

    assert complete_connect(env.deps, params).ok


def test_a_replayed_callback_says_already_completed_and_changes_nothing(env: ConnectEnv) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)
    params = env.authorize(url)
    first = complete_connect(env.deps, params)
    before = env.mailboxes.get(ORG, first.mailbox_id)
    cache_before = env.tokens.get(ORG, f"mailbox:{first.mailbox_id}")

    replayed = complete_connect(env.deps, params)
    reloaded_again = complete_connect(env.deps, params)

    assert first.ok and replayed.ok and replayed.already_completed and not replayed.activated
    assert reloaded_again == replayed
    # Nothing the URL's holder did not see before: no address, mailbox, code or redirect.
    assert (replayed.mailbox_id, replayed.address, replayed.connect_code, replayed.redirect_url) == ("", "", "", None)
    assert env.mailboxes.get(ORG, first.mailbox_id) == before
    assert env.tokens.get(ORG, f"mailbox:{first.mailbox_id}") == cache_before


def test_a_replayed_callback_of_a_failed_sign_in_is_still_invalid(env: ConnectEnv) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)
    params = env.authorize(url, consent=False)
    assert complete_connect(env.deps, params).error == "consent_declined"

    assert complete_connect(env.deps, params).error == "invalid_state"


def test_a_reload_after_the_flow_lifetime_is_invalid(env: ConnectEnv) -> None:
    params = env.authorize(start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL))
    assert complete_connect(env.deps, params).ok
    env.clock.advance(timedelta(minutes=10, seconds=1))

    assert complete_connect(env.deps, params).error == "invalid_state"


def test_a_callback_after_ten_minutes_is_refused(env: ConnectEnv) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)
    params = env.authorize(url)
    env.clock.advance(timedelta(minutes=10, seconds=1))

    result = complete_connect(env.deps, params)

    assert not result.ok and result.error == "invalid_state"
    assert env.mailboxes.list(ORG) == ()


def test_a_code_issued_for_one_orgs_flow_cannot_complete_another_orgs_flow(env: ConnectEnv) -> None:
    mine = env.authorize(start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL))
    theirs = env.authorize(start_connect(env.deps, "org-2", "crm-mallory", env.upn("adele"), ORG_RETURN_URLS["org-2"]))

    swapped = complete_connect(env.deps, {**theirs, "code": mine["code"]})

    assert not swapped.ok and swapped.error == "sign_in_failed"
    assert env.mailboxes.list("org-2") == () and env.mailboxes.list(ORG) == ()
    genuine = complete_connect(env.deps, mine)
    assert genuine.ok and genuine.org_id == ORG
    assert env.mailboxes.list("org-2") == ()


def test_the_same_person_connected_in_two_orgs_gets_two_separate_mailboxes(env: ConnectEnv) -> None:
    first = env.connect("adele", ORG)
    second = env.connect("adele", "org-2")

    assert first.ok and second.ok and first.mailbox_id != second.mailbox_id
    assert env.tokens.get(ORG, f"mailbox:{first.mailbox_id}") is not None
    assert env.tokens.get("org-2", f"mailbox:{second.mailbox_id}") is not None


def test_reconnecting_resumes_the_same_mailbox_with_its_watermark_and_delta_state(env: ConnectEnv) -> None:
    first = env.connect("adele")
    watermark = env.mailbox(first.mailbox_id).watermark
    env.cursors.put(ORG, first.mailbox_id, "inbox", "delta https://graph/delta?token=1")
    stored = env.mailboxes.get(ORG, first.mailbox_id)
    assert stored is not None
    env.mailboxes.replace(
        replace(stored.value, status=MailboxStatus.NEEDS_REAUTH, status_reason="the grant was revoked"), stored.etag
    )
    env.clock.advance(timedelta(hours=3))

    again = env.connect("adele")

    assert again.ok and again.mailbox_id == first.mailbox_id
    mailbox = env.mailbox(first.mailbox_id)
    assert mailbox.status is MailboxStatus.ACTIVE and mailbox.status_reason == ""
    assert mailbox.watermark == watermark
    assert env.cursors.get_all(ORG, first.mailbox_id) == {"inbox": "delta https://graph/delta?token=1"}
    assert len(env.mailboxes.list(ORG)) == 1


def test_reconnecting_a_disconnected_mailbox_starts_from_the_new_connect_time(env: ConnectEnv) -> None:
    first = env.connect("adele")
    env.cursors.put(ORG, first.mailbox_id, "inbox", "delta https://graph/delta?token=1")
    disconnect(env.deps, ORG, first.mailbox_id)
    env.clock.advance(timedelta(days=2))

    again = env.connect("adele")

    mailbox = env.mailbox(again.mailbox_id)
    assert again.mailbox_id == first.mailbox_id
    assert mailbox.status is MailboxStatus.ACTIVE and mailbox.watermark == env.clock.now()
    assert env.cursors.get_all(ORG, first.mailbox_id) == {}


@pytest.mark.parametrize(
    ("reason", "code", "words"),
    [("revoked", 50173, "revoked"), ("expired", 70008, "inactivity"), ("consent_removed", 65001, "consent")],
)
def test_a_dead_grant_makes_the_token_source_raise_reauth_required_with_its_code(
    env: ConnectEnv, reason: str, code: int, words: str
) -> None:
    result = env.connect("adele")
    source = DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id))
    assert graph_ok(env, source)

    env.client.revoke_grant(env.upn("adele"), env.tenant.app.client_id, reason)
    env.client.expire_access_tokens(env.upn("adele"))

    with pytest.raises(ReauthRequired) as info:
        source(True)
    assert info.value.aadsts == code
    assert words in str(info.value) and f"AADSTS{code}" in str(info.value)
    with pytest.raises(ReauthRequired) as through_graph:
        graph_ok(env, DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id)))
    assert through_graph.value.aadsts == code


def test_a_refresh_rotates_the_tokens_and_persists_the_changed_cache(env: ConnectEnv) -> None:
    result = env.connect("adele")
    source = DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id))
    before = env.tokens.get(ORG, f"mailbox:{result.mailbox_id}")
    issued_before = env.raw_cache(result.mailbox_id)

    token = source(True)

    after = env.tokens.get(ORG, f"mailbox:{result.mailbox_id}")
    assert before is not None and after is not None and after.etag != before.etag
    assert token in env.raw_cache(result.mailbox_id)["access"]
    assert token not in issued_before["access"]
    assert source(False) == token  # cached now: no refresh, no write
    assert env.tokens.get(ORG, f"mailbox:{result.mailbox_id}") == after


def test_concurrent_forced_refreshes_of_one_mailbox_all_get_tokens_and_leave_a_working_cache(
    env: ConnectEnv,
) -> None:
    result = env.connect("adele")
    mailbox = env.mailbox(result.mailbox_id)
    tokens: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def refresh() -> None:
        barrier.wait()
        try:
            tokens.append(DelegatedTokenSource(env.identity, env.tokens, mailbox)(True))
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and len(tokens) == 4
    assert graph_ok(env, DelegatedTokenSource(env.identity, env.tokens, mailbox))


class CountingSession(requests.Session):
    def __init__(self, ca_bundle: str) -> None:
        super().__init__()
        self.verify = ca_bundle
        self.gets: list[str] = []

    def get(self, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.gets.append(str(url))
        return super().get(url, *args, **kwargs)


def test_token_sources_build_msal_apps_per_call_without_refetching_the_discovery_document(env: ConnectEnv) -> None:
    result = env.connect("adele")
    session = CountingSession(str(env.settings.ca_bundle))
    identity = MsalIdentity(env.settings, env.tokens, MsalHttpClient(session))
    mailbox = env.mailbox(result.mailbox_id)

    tokens = [DelegatedTokenSource(identity, env.tokens, mailbox)(True) for _ in range(3)]

    assert len(set(tokens)) == 3
    assert [url for url in session.gets if url.endswith("/openid-configuration")] == [
        f"{env.tenant.base_url}/{env.tenant.id}/v2.0/.well-known/openid-configuration"
    ]


def test_a_mailbox_without_a_token_cache_needs_reauth(env: ConnectEnv) -> None:
    result = env.connect("adele")
    env.tokens.delete(ORG, f"mailbox:{result.mailbox_id}")

    with pytest.raises(ReauthRequired, match="no token cache"):
        DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id))(False)


def test_disconnect_deletes_tokens_and_delta_state_and_keeps_activities_unless_purged(env: ConnectEnv) -> None:
    adele = env.connect("adele")
    megan = env.connect("megan")
    for mailbox_id in (adele.mailbox_id, megan.mailbox_id):
        env.cursors.put(ORG, mailbox_id, "inbox", "delta x")
    only_adele = activity("<a@x>", (adele.mailbox_id,), env)
    shared = activity("<b@x>", (adele.mailbox_id, megan.mailbox_id), env)
    env.deps.activities.save([only_adele, shared])

    kept = disconnect(env.deps, ORG, adele.mailbox_id, purge=False)

    assert kept.mailbox.status is MailboxStatus.DISCONNECTED and kept.activities_purged == 0
    assert env.tokens.get(ORG, f"mailbox:{adele.mailbox_id}") is None
    assert env.cursors.get_all(ORG, adele.mailbox_id) == {}
    assert env.deps.activities.get(ORG, only_adele.activity_id) is not None
    assert env.tokens.get(ORG, f"mailbox:{megan.mailbox_id}") is not None

    purged = disconnect(env.deps, ORG, adele.mailbox_id, purge=True)

    assert purged.activities_purged >= 1
    assert env.deps.activities.get(ORG, only_adele.activity_id) is None
    remaining = env.deps.activities.get(ORG, shared.activity_id)
    assert remaining is not None and remaining.mailbox_ids == (megan.mailbox_id,)
    with pytest.raises(MailboxNotFound):
        disconnect(env.deps, ORG, "mbx_missing")


def test_sign_out_all_deletes_every_token_of_the_org_and_asks_everyone_to_reconnect(env: ConnectEnv) -> None:
    adele = env.connect("adele")
    megan = env.connect("megan")
    elsewhere = env.connect("adele", "org-2")

    assert sign_out_all(env.deps, ORG) == 2

    for result in (adele, megan):
        mailbox = env.mailbox(result.mailbox_id)
        assert mailbox.status is MailboxStatus.NEEDS_REAUTH and mailbox.status_reason == "signed out by admin"
        assert env.tokens.get(ORG, f"mailbox:{result.mailbox_id}") is None
        with pytest.raises(ReauthRequired):
            DelegatedTokenSource(env.identity, env.tokens, mailbox)(False)
    assert env.tokens.get("org-2", f"mailbox:{elsewhere.mailbox_id}") is not None
    assert env.connect("adele").ok
    assert env.mailbox(adele.mailbox_id).status is MailboxStatus.ACTIVE


def activity(message_id: str, mailbox_ids: tuple[str, ...], env: ConnectEnv) -> Activity:
    return Activity(
        org_id=ORG,
        activity_id=activity_id_for(ORG, message_id),
        internet_message_id=message_id,
        thread_id="t1",
        subject="Hello",
        body_text="Hi",
        body_preview="Hi",
        body_truncated=False,
        sender=None,
        to=(),
        cc=(),
        sent_at=None,
        received_at=env.clock.now(),
        direction=Direction.RECEIVED,
        mailbox_ids=mailbox_ids,
        records=(RecordRef("r1", "contact"),),
    )


def test_the_callback_query_of_a_connect_carries_only_the_connect_code_to_the_crm(env: ConnectEnv) -> None:
    result = env.connect("adele")

    assert result.redirect_url is not None
    assert set(query_of(result.redirect_url)) == {"status", "connect_code"}
    issued = env.raw_cache(result.mailbox_id)
    assert not any(result.connect_code in token for tokens in issued.values() for token in tokens)


# -- a connect link connects only the intended account of the intended CRM user ----------------------------


def test_a_link_completed_by_another_account_than_the_login_hint_connects_nothing(env: ConnectEnv) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)

    result = complete_connect(env.deps, env.authorize(url, "megan"))

    assert not result.ok and result.error == "wrong_account"
    assert result.redirect_url == f"{RETURN_URL}?status=error&error=wrong_account"
    assert env.mailboxes.list(ORG) == () and env.tokens.delete_org(ORG) == 0


def test_the_login_hint_matches_any_alias_of_the_account_whatever_its_case(env: ConnectEnv) -> None:
    alias = f"Adele.Vance@{env.tenant.domain.upper()}"
    url = start_connect(env.deps, ORG, "crm-adele", alias, RETURN_URL)

    result = complete_connect(env.deps, env.authorize(url, "adele"))

    assert result.ok and result.connect_code
    with pytest.raises(InvalidRequest) as info:
        start_connect(env.deps, ORG, "crm-adele", "adele", RETURN_URL)
    assert info.value.code == "invalid_login_hint"


def test_an_account_of_a_tenant_the_org_does_not_allow_connects_nothing(env: ConnectEnv) -> None:
    outsider_tenant = env.client.create_tenant("Outsider", [f"out{env.tenant.id[:8]}.example"])
    outsider = env.client.create_user(outsider_tenant["id"], f"eve@out{env.tenant.id[:8]}.example")
    env.org_settings.put(ORG, replace(env.org_settings.get(ORG), allowed_tenants=(env.tenant.domain,)))

    url = start_connect(env.deps, ORG, "crm-adele", None, RETURN_URL)
    refused = complete_connect(env.deps, query_of(env.client.authorize(url, outsider["user_principal_name"])))
    allowed = complete_connect(env.deps, env.authorize(start_connect(env.deps, ORG, "crm-adele", None, RETURN_URL)))

    assert not refused.ok and refused.error == "tenant_not_allowed"
    assert allowed.ok and allowed.connect_code
    env.org_settings.put(ORG, replace(env.org_settings.get(ORG), allowed_tenants=(env.tenant.id.upper(),)))
    assert confirm_connect(env.deps, ORG, "crm-adele", allowed.connect_code).status is MailboxStatus.ACTIVE
    assert [m.graph_user_id for m in env.mailboxes.list(ORG)] == [env.tenant.users["adele"].id]


def test_a_connect_code_confirmed_by_another_crm_user_or_org_activates_nothing_and_stays_valid(
    env: ConnectEnv,
) -> None:
    url = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)
    result = complete_connect(env.deps, env.authorize(url))

    for org, user_id, code in (
        (ORG, "crm-mallory", result.connect_code),
        ("org-2", "crm-adele", result.connect_code),
        (ORG, "crm-adele", result.connect_code + "x"),
        (ORG, "crm-adele", ""),
    ):
        with pytest.raises(InvalidRequest) as info:
            confirm_connect(env.deps, org, user_id, code)
        assert info.value.code == "invalid_connect_code"
    assert env.mailboxes.list(ORG) == () and env.mailboxes.list("org-2") == ()

    assert confirm_connect(env.deps, ORG, "crm-adele", result.connect_code).user_id == "crm-adele"


def test_a_connect_code_works_once_and_not_after_ten_minutes(env: ConnectEnv) -> None:
    used = complete_connect(env.deps, env.authorize(start_connect(env.deps, ORG, "crm-adele", None, RETURN_URL)))
    megan_url = start_connect(env.deps, ORG, "crm-megan", None, RETURN_URL)
    late = complete_connect(env.deps, env.authorize(megan_url, "megan"))
    confirm_connect(env.deps, ORG, "crm-adele", used.connect_code)
    env.clock.advance(timedelta(minutes=10, seconds=1))

    for user_id, code in (("crm-adele", used.connect_code), ("crm-megan", late.connect_code)):
        with pytest.raises(InvalidRequest) as info:
            confirm_connect(env.deps, ORG, user_id, code)
        assert info.value.code == "invalid_connect_code"
    assert [m.mailbox_id for m in env.mailboxes.list(ORG)] == [used.mailbox_id]


def test_storage_holds_neither_the_connect_code_nor_the_pending_token_cache_in_plaintext(env: ConnectEnv) -> None:
    result = complete_connect(env.deps, env.authorize(start_connect(env.deps, ORG, "crm-adele", None, RETURN_URL)))

    stored = list(env.stored_values())

    assert result.connect_code and not any(result.connect_code in value for value in stored)
    assert not any("RefreshToken" in value or "secret" in value for value in stored)


def test_reconnecting_a_mailbox_that_needs_reauth_waits_for_the_confirmation_too(env: ConnectEnv) -> None:
    first = env.connect("adele")
    stored = env.mailboxes.get(ORG, first.mailbox_id)
    assert stored is not None
    needs_reauth = replace(stored.value, status=MailboxStatus.NEEDS_REAUTH, status_reason="revoked")
    env.mailboxes.replace(needs_reauth, stored.etag)
    env.tokens.delete(ORG, f"mailbox:{first.mailbox_id}")

    again = complete_connect(env.deps, env.authorize(start_connect(env.deps, ORG, "crm-adele", None, RETURN_URL)))

    assert again.ok and env.mailbox(first.mailbox_id).status is MailboxStatus.NEEDS_REAUTH
    assert env.tokens.get(ORG, f"mailbox:{first.mailbox_id}") is None
    confirm_connect(env.deps, ORG, "crm-adele", again.connect_code)
    assert env.mailbox(first.mailbox_id).status is MailboxStatus.ACTIVE
