"""Admin consent and application mode end to end against the emulator (client credentials over HTTPS)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from sync_core.auth.msal_tokens import AppTokenSource
from sync_core.domain.model import ConnectionMode, MailboxStatus
from sync_core.errors import ReauthRequired
from sync_core.use_cases.connect import (
    ConnectResult,
    ConsentRequired,
    InvalidRequest,
    add_app_mailbox,
    complete_admin_consent,
    mailbox_id_for,
    sign_out_all,
    start_admin_consent,
)
from tests.integration.connect_env import ORG, PUBLIC_BASE_URL, RETURN_URL, ConnectEnv, env, query_of

__all__ = ["env"]  # the fixture


def consent(env: ConnectEnv, org: str = ORG, accept: bool = True, admin: str = "megan") -> ConnectResult:
    url = start_admin_consent(env.deps, org, None, RETURN_URL if org == ORG else None)
    redirect = env.client.admin_consent(url, env.upn(admin), accept=accept)
    assert redirect.startswith(env.deps.admin_consent_redirect_uri)
    return complete_admin_consent(env.deps, query_of(redirect))


def test_the_admin_consent_url_targets_the_v2_adminconsent_endpoint_with_graph_default(env: ConnectEnv) -> None:
    url = start_admin_consent(env.deps, ORG, env.tenant.domain, RETURN_URL)

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    endpoint = f"{parts.scheme}://{parts.netloc}{parts.path}"
    assert endpoint == f"{env.tenant.base_url}/{env.tenant.domain}/v2.0/adminconsent"
    assert query["client_id"] == env.tenant.app.client_id
    assert query["scope"] == "https://graph.microsoft.com/.default"
    assert query["redirect_uri"] == f"{PUBLIC_BASE_URL}/api/auth/admin-consent/callback"
    assert query["state"]
    assert start_admin_consent(env.deps, ORG).startswith(f"{env.tenant.base_url}/organizations/v2.0/adminconsent?")
    with pytest.raises(InvalidRequest):
        start_admin_consent(env.deps, ORG, "common")


def test_an_admin_consent_is_recorded_only_after_a_client_credentials_token_proved_it(env: ConnectEnv) -> None:
    result = consent(env)

    assert result.ok, result.message
    assert result.tenant_id == env.tenant.id
    assert result.redirect_url == f"{RETURN_URL}?status=consented&tenant_id={env.tenant.id}"
    recorded = env.deps.tenants.get(ORG)
    assert recorded is not None and recorded.tenant_id == env.tenant.id
    assert env.tokens.get(ORG, f"tenant:{env.tenant.id}") is not None  # the proof's token is reused


def test_a_declined_admin_consent_records_nothing(env: ConnectEnv) -> None:
    result = consent(env, accept=False)

    assert not result.ok and result.error == "consent_declined"
    assert "AADSTS65004" in result.message
    assert result.redirect_url == f"{RETURN_URL}?status=error&error=consent_declined"
    assert env.deps.tenants.get(ORG) is None


def test_a_forged_success_callback_for_a_tenant_without_consent_is_not_recorded(env: ConnectEnv) -> None:
    url = start_admin_consent(env.deps, ORG, None, None)
    state = query_of(url)["state"]

    result = complete_admin_consent(env.deps, {"admin_consent": "True", "tenant": env.tenant.id, "state": state})

    assert not result.ok and result.error == "consent_not_proven"
    assert env.deps.tenants.get(ORG) is None


def test_consent_granted_right_after_a_failed_proof_is_proven_at_once(env: ConnectEnv) -> None:
    # MSAL remembers an identical 400 for ~60 s per application object: the proof must use a fresh one.
    state = query_of(start_admin_consent(env.deps, ORG))["state"]
    early = complete_admin_consent(env.deps, {"admin_consent": "True", "tenant": env.tenant.id, "state": state})
    assert early.error == "consent_not_proven"

    assert consent(env).ok


def test_a_tenant_already_connected_to_another_org_cannot_be_claimed(env: ConnectEnv) -> None:
    assert consent(env).ok

    stolen = consent(env, org="org-2")

    assert not stolen.ok and stolen.error == "tenant_claimed"
    assert env.deps.tenants.get("org-2") is None
    assert env.deps.tenants.org_for_tenant(env.tenant.id) == ORG


def test_an_admin_adds_a_shared_mailbox_by_address_in_application_mode(env: ConnectEnv) -> None:
    assert consent(env).ok
    sales = env.tenant.users["sales"]

    mailbox = add_app_mailbox(env.deps, ORG, sales.mail.upper())

    assert mailbox.mailbox_id == mailbox_id_for(ORG, sales.id)
    assert mailbox.mode is ConnectionMode.APPLICATION and mailbox.status is MailboxStatus.ACTIVE
    assert (mailbox.address, mailbox.tenant_id, mailbox.graph_user_id) == (sales.mail, env.tenant.id, sales.id)
    assert mailbox.watermark == env.clock.now()
    source = env.identity.token_source(mailbox)
    assert isinstance(source, AppTokenSource)
    inbox = env.graph_for(source).get(f"users/{sales.id}/mailFolders('inbox')", {"$select": "id"})
    assert inbox["id"]


def test_adding_a_mailbox_needs_a_proven_admin_consent(env: ConnectEnv) -> None:
    with pytest.raises(ConsentRequired):
        add_app_mailbox(env.deps, ORG, env.tenant.users["sales"].mail)


def test_adding_an_unknown_or_invalid_address_is_a_clear_request_error(env: ConnectEnv) -> None:
    assert consent(env).ok

    with pytest.raises(InvalidRequest) as unknown:
        add_app_mailbox(env.deps, ORG, f"nobody@{env.tenant.domain}")
    with pytest.raises(InvalidRequest) as invalid:
        add_app_mailbox(env.deps, ORG, "not an address")

    assert (unknown.value.code, invalid.value.code) == ("address_not_found", "invalid_address")
    assert env.mailboxes.list(ORG) == ()


def test_a_mailbox_an_application_access_policy_denies_gets_a_clear_error_and_recovers_when_allowed(
    env: ConnectEnv,
) -> None:
    assert consent(env).ok
    env.client.set_access_policy(env.tenant.id, env.tenant.app.client_id, [env.upn("adele")])

    denied = add_app_mailbox(env.deps, ORG, env.tenant.users["megan"].mail)
    allowed = add_app_mailbox(env.deps, ORG, env.tenant.users["adele"].mail)

    assert denied.status is MailboxStatus.ERROR and "application access policy" in denied.status_reason
    assert allowed.status is MailboxStatus.ACTIVE
    env.client.set_access_policy(env.tenant.id, env.tenant.app.client_id, None)
    again = add_app_mailbox(env.deps, ORG, env.tenant.users["megan"].mail)
    assert again.mailbox_id == denied.mailbox_id and again.status is MailboxStatus.ACTIVE
    assert again.watermark == denied.watermark


def test_a_delegated_mailbox_added_in_application_mode_keeps_its_history_and_drops_its_user_tokens(
    env: ConnectEnv,
) -> None:
    connected = env.connect("adele")
    env.cursors.put(ORG, connected.mailbox_id, "inbox", "delta x")
    assert consent(env).ok

    mailbox = add_app_mailbox(env.deps, ORG, env.tenant.users["adele"].mail)

    assert mailbox.mailbox_id == connected.mailbox_id and mailbox.mode is ConnectionMode.APPLICATION
    assert mailbox.watermark == env.mailbox(connected.mailbox_id).watermark
    assert env.cursors.get_all(ORG, connected.mailbox_id) == {"inbox": "delta x"}
    assert env.tokens.get(ORG, f"mailbox:{connected.mailbox_id}") is None


def test_app_tokens_are_cached_per_tenant_and_a_forced_refresh_gets_a_new_one(env: ConnectEnv) -> None:
    assert consent(env).ok
    source = env.identity.app_token_source(ORG, env.tenant.id)

    first = source(False)
    assert source(False) == first
    refreshed = source(True)

    assert refreshed != first
    assert source(False) == refreshed


def test_an_app_token_source_without_a_tenant_needs_consent(env: ConnectEnv) -> None:
    with pytest.raises(ReauthRequired):
        env.identity.app_token_source(ORG, "")


def test_sign_out_all_also_signs_out_application_mode_mailboxes(env: ConnectEnv) -> None:
    assert consent(env).ok
    mailbox = add_app_mailbox(env.deps, ORG, env.tenant.users["sales"].mail)

    assert sign_out_all(env.deps, ORG) == 1

    assert env.mailbox(mailbox.mailbox_id).status is MailboxStatus.NEEDS_REAUTH
    assert env.tokens.get(ORG, f"tenant:{env.tenant.id}") is None
    assert add_app_mailbox(env.deps, ORG, env.tenant.users["sales"].mail).status is MailboxStatus.ACTIVE
