"""Admin consent and application mode end to end against the emulator (client credentials over HTTPS)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sync_core.adapters.graph.tokens import REMEMBER_MARGIN, AppTokenMemory, AppTokenSource
from sync_core.domain.model import ConnectionMode, MailboxStatus
from sync_core.errors import ConsentRequired, InvalidRequest, ReauthRequired
from sync_core.ports import Versioned
from sync_core.ports.identity import TokenCacheStore
from sync_core.use_cases.connect import (
    ConnectResult,
    add_app_mailbox,
    complete_admin_consent,
    mailbox_id_for,
    sign_out_all,
    start_admin_consent,
)
from tests.integration.connect_env import ORG, PUBLIC_BASE_URL, RETURN_URL, ConnectEnv, env, query_of

__all__ = ["env"]  # the fixture


def consent(env: ConnectEnv, org: str = ORG, accept: bool = True, admin: str = "megan") -> ConnectResult:
    return env.consent(org, admin, accept)


def split(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", {k: v[0] for k, v in parse_qs(parts.query).items()}


def signed_in_admin(env: ConnectEnv, org: str = ORG, admin: str = "megan") -> ConnectResult:
    """Step 1 of the chain only: the admin's sign-in, answered by the callback."""
    url = start_admin_consent(env.deps, org, None, RETURN_URL)
    return env.finish_admin_step(env.client.authorize(url, env.upn(admin)))


def test_the_admin_consent_chain_signs_the_admin_in_then_asks_the_proven_tenant_for_graph_default(
    env: ConnectEnv,
) -> None:
    url = start_admin_consent(env.deps, ORG, env.tenant.domain, RETURN_URL)

    endpoint, query = split(url)
    assert endpoint == f"{env.tenant.base_url}/{env.tenant.id}/oauth2/v2.0/authorize"  # MSAL resolved the domain
    assert set(query["scope"].split()) == {"openid", "profile", "offline_access"}
    assert query["redirect_uri"] == f"{PUBLIC_BASE_URL}/api/auth/admin-consent/callback"
    assert query["prompt"] == "select_account" and query["code_challenge_method"] == "S256"
    signed_in = env.finish_admin_step(env.client.authorize(url, env.upn("megan")))
    assert signed_in.ok and signed_in.continues and signed_in.tenant_id == env.tenant.id
    assert signed_in.redirect_url is not None
    endpoint, query = split(signed_in.redirect_url)
    assert endpoint == f"{env.tenant.base_url}/{env.tenant.id}/v2.0/adminconsent"
    assert query["client_id"] == env.tenant.app.client_id
    assert query["scope"] == "https://graph.microsoft.com/.default"
    assert query["redirect_uri"] == f"{PUBLIC_BASE_URL}/api/auth/admin-consent/callback"
    assert query["state"] and query["state"] != split(url)[1]["state"]
    assert start_admin_consent(env.deps, ORG).startswith(f"{env.tenant.base_url}/organizations/oauth2/v2.0/authorize?")
    for bad in ("common", "unknown-tenant.example"):
        with pytest.raises(InvalidRequest) as info:
            start_admin_consent(env.deps, ORG, bad)
        assert info.value.code == "invalid_tenant"


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
    signed_in = signed_in_admin(env)
    assert signed_in.redirect_url is not None
    state = query_of(signed_in.redirect_url)["state"]

    result = complete_admin_consent(env.deps, {"admin_consent": "True", "tenant": env.tenant.id, "state": state})

    assert not result.ok and result.error == "consent_not_proven"
    assert env.deps.tenants.get(ORG) is None


def test_consent_granted_right_after_a_failed_proof_is_proven_at_once(env: ConnectEnv) -> None:
    # MSAL remembers an identical 400 for ~60 s per application object: the proof must use a fresh one.
    signed_in = signed_in_admin(env)
    assert signed_in.redirect_url is not None
    state = query_of(signed_in.redirect_url)["state"]
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


class CountedTokenCaches:
    """The real token cache store, counting its reads and writes."""

    def __init__(self, inner: TokenCacheStore) -> None:
        self.inner = inner
        self.gets = self.puts = 0

    def get(self, org_id: str, owner_key: str) -> Versioned[str] | None:
        self.gets += 1
        return self.inner.get(org_id, owner_key)

    def put(self, org_id: str, owner_key: str, serialized: str, etag: str | None) -> str:
        self.puts += 1
        return self.inner.put(org_id, owner_key, serialized, etag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_workers_app_token_is_remembered_so_its_runs_read_no_token_cache_until_it_nears_expiry(
    env: ConnectEnv,
) -> None:
    assert consent(env).ok
    now = [1_000_000.0]
    memory = AppTokenMemory(clock=lambda: now[0])
    caches = CountedTokenCaches(env.tokens)

    def run() -> AppTokenSource:  # each run builds its token source; the worker's memory outlives it
        return AppTokenSource(env.identity, caches, ORG, env.tenant.id, memory)  # type: ignore[arg-type]

    first = run()(False)
    assert (caches.gets, caches.puts) == (1, 0)  # the consent stored a token: read, not written

    assert [run()(False) for _ in range(3)] == [first] * 3
    assert (caches.gets, caches.puts) == (1, 0)  # nothing read or written while it is remembered

    now[0] += 3600 - REMEMBER_MARGIN  # the emulator's tokens last an hour: now too close to expiry
    run()(False)
    assert caches.gets == 2  # read again (another worker may have stored a newer one)

    refreshed = run()(True)  # Graph refused it: forgotten, a new one fetched and stored
    assert refreshed != first and caches.puts == 1
    assert run()(False) == refreshed and caches.gets == 3


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


# -- a tenant's consent is recorded only with proof that its admin consented for this org's flow -----------


def test_a_forged_consent_callback_naming_a_consented_tenant_records_nothing(env: ConnectEnv) -> None:
    env.tenant.consent_as_admin()  # the tenant consented to the app, but not through this org's flow
    state = query_of(start_admin_consent(env.deps, ORG, None, RETURN_URL))["state"]

    forged = complete_admin_consent(env.deps, {"admin_consent": "True", "tenant": env.tenant.id, "state": state})

    assert not forged.ok
    assert env.deps.tenants.get(ORG) is None and env.deps.tenants.org_for_tenant(env.tenant.id) is None
    with pytest.raises(ConsentRequired):
        add_app_mailbox(env.deps, ORG, env.tenant.users["sales"].mail)


def test_an_admin_signed_in_to_one_tenant_cannot_have_another_tenants_consent_recorded(env: ConnectEnv) -> None:
    env.tenant.consent_as_admin()  # the victim tenant consented to the app
    domain = f"own{env.tenant.id[:8]}.example"
    own = env.client.create_tenant("Mallory's own", [domain])
    mallory = env.client.create_user(own["id"], f"mallory@{domain}")
    url = start_admin_consent(env.deps, ORG, None, RETURN_URL)
    signed_in = env.finish_admin_step(env.client.authorize(url, mallory["user_principal_name"]))
    assert signed_in.continues and signed_in.tenant_id == own["id"] and signed_in.redirect_url is not None
    state = query_of(signed_in.redirect_url)["state"]

    forged = complete_admin_consent(env.deps, {"admin_consent": "True", "tenant": env.tenant.id, "state": state})

    assert not forged.ok and forged.error == "tenant_mismatch"
    assert env.deps.tenants.get(ORG) is None and env.deps.tenants.org_for_tenant(env.tenant.id) is None


def test_a_consent_whose_app_token_lacks_mail_read_records_nothing_and_app_mode_stays_unavailable(
    env: ConnectEnv,
) -> None:
    env.client.set_app_roles(env.tenant.app.client_id, ["User.Read.All"])

    result = consent(env)

    assert not result.ok and result.error == "consent_missing_roles"
    assert "Mail.Read" in result.message
    assert result.redirect_url == f"{RETURN_URL}?status=error&error=consent_missing_roles"
    assert env.deps.tenants.get(ORG) is None and env.tokens.get(ORG, f"tenant:{env.tenant.id}") is None
    with pytest.raises(ConsentRequired):
        add_app_mailbox(env.deps, ORG, env.tenant.users["sales"].mail)
    env.client.set_app_roles(env.tenant.app.client_id, ["Mail.Read", "User.Read.All"])
    assert consent(env).ok  # once the registration asks for Mail.Read, a new consent grants it
