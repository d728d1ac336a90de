"""Connect use cases on in-memory stores with a fake identity platform and a fake Graph: the rules
(return URLs, aliases, mailbox identity) and the failure paths the emulator cannot easily produce."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.adapters.graph.directory import GraphDirectory
from sync_core.adapters.graph.identity import reauth_error, token_roles
from sync_core.api.http import ApiError
from sync_core.api.settings import settings_from_json
from sync_core.auth.crypto import TokenCipher
from sync_core.domain.model import Mailbox, MailboxStatus, OrgSettings
from sync_core.errors import IdentityError, InvalidRequest, MessageNotFound, TransientGraphError
from sync_core.ports.identity import AdminSignIn, AppGrant, DelegatedGrant, OrgTenant, PendingAuthFlow, TokenSource
from sync_core.testing.auth import MemoryAuthFlowStore, MemoryOrgTenantStore, MemoryTokenCacheStore
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases.connect import (
    ConnectDeps,
    ConnectResult,
    add_app_mailbox,
    aliases_from_profile,
    complete_admin_consent,
    complete_connect,
    confirm_connect,
    disconnect,
    mailbox_id_for,
    missing_app_roles,
    return_url_allowed,
    sign_out_all,
    start_admin_consent,
    start_connect,
    tenant_allowed,
    with_params,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TENANT = "11111111-2222-3333-4444-555555555555"
ADELE = {
    "id": "aaaaaaaa-0000-0000-0000-000000000001",
    "mail": "Adele@Contoso.example",
    "userPrincipalName": "adele@contoso.example",
    "proxyAddresses": ["SMTP:adele@contoso.example", "smtp:Adele.Vance@contoso.example", "X500:/o=Exchange/cn=adele"],
}


class Clock:
    def __init__(self) -> None:
        self.current = T0

    def now(self) -> datetime:
        return self.current


@dataclass
class FakeIdentity:
    """An IdentityProvider double: hands out flows, and redeems codes as configured."""

    grant: DelegatedGrant | Exception = field(
        default_factory=lambda: DelegatedGrant("at-1", TENANT, ADELE["id"], "adele@contoso.example", "{}")
    )
    proof: AppGrant | Exception = field(default_factory=lambda: AppGrant(TENANT, "app-at", "{}", ("Mail.Read",)))
    admin: AdminSignIn = field(default_factory=lambda: AdminSignIn(TENANT, "admin-oid", "admin@contoso.example"))
    counter: Any = field(default_factory=lambda: itertools.count(1))

    def initiate_connect(self, redirect_uri: str, login_hint: str | None, *, send: bool = False) -> dict[str, Any]:
        state = f"state-{next(self.counter)}"
        return {"state": state, "auth_uri": f"https://login.example/authorize?state={state}", "code_verifier": "v"}

    def redeem_connect(self, flow: Mapping[str, Any], auth_response: Mapping[str, str]) -> DelegatedGrant:
        if isinstance(self.grant, Exception):
            raise self.grant
        return self.grant

    def initiate_admin_sign_in(self, tenant: str, redirect_uri: str) -> dict[str, Any]:
        state = f"admin-state-{next(self.counter)}"
        return {"state": state, "auth_uri": f"https://login.example/{tenant}/authorize?state={state}"}

    def redeem_admin_sign_in(
        self, tenant: str, flow: Mapping[str, Any], auth_response: Mapping[str, str]
    ) -> AdminSignIn:
        return self.admin

    def admin_consent_url(self, tenant: str, redirect_uri: str, state: str) -> str:
        return f"https://login.example/{tenant}/v2.0/adminconsent?state={state}"

    def prove_app_access(self, tenant_id: str) -> AppGrant:
        if isinstance(self.proof, Exception):
            raise self.proof
        return self.proof

    def token_source(self, mailbox: Mailbox) -> TokenSource:
        return lambda _refresh: "at"

    def app_token_source(self, org_id: str, tenant_id: str) -> TokenSource:
        return lambda _refresh: "app-at"


class FakeGraph:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def get(self, url: str, params: Mapping[str, str] | None = None, prefer: Sequence[str] = ()) -> Any:
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def deps() -> ConnectDeps:
    cipher = TokenCipher.from_setting(TokenCipher.generate_setting())
    stores = InMemoryStores()
    stores.settings.put("org", OrgSettings(return_url_allow_list=("https://crm.example.com/app",)))
    graph = FakeGraph({"me": dict(ADELE)})
    return ConnectDeps(
        identity=FakeIdentity(),
        flows=MemoryAuthFlowStore(cipher),
        tokens=MemoryTokenCacheStore(cipher),
        tenants=MemoryOrgTenantStore(),
        mailboxes=stores.mailboxes,
        settings=stores.settings,
        cursors=stores.cursors,
        activities=stores.activities,
        leases=stores.leases,
        clock=Clock(),
        directory_for=lambda _source: GraphDirectory(graph),
        public_base_url="https://sync.example.net/",
    )


def callback(deps: ConnectDeps, login_hint: str | None = None, **extra: str) -> dict[str, str]:
    url = start_connect(deps, "org", "crm-user", login_hint, "https://crm.example.com/app/done")
    return {"state": url.rpartition("=")[2], "code": "code-1", **extra}


def connected(deps: ConnectDeps) -> ConnectResult:
    """Sign-in callback, then the CRM's confirmation for the same CRM user."""
    result = complete_connect(deps, callback(deps))
    assert result.ok and result.connect_code
    confirm_connect(deps, "org", "crm-user", result.connect_code)
    return result


# -- rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://crm.example.com/app", True),
        ("https://crm.example.com/app/", True),
        ("https://crm.example.com/app/settings?tab=mail#top", True),
        ("https://CRM.example.com:443/app/x", True),
        ("https://crm.example.com/apple", False),
        ("https://crm.example.com/", False),
        ("http://crm.example.com/app", False),
        ("https://crm.example.com:8443/app", False),
        ("https://crm.example.com.evil.example/app", False),
        ("https://user:pw@crm.example.com/app", False),
        ("https://crm.example.com/app/../admin", False),
        ("https://crm.example.com/app/%2e%2e/admin", False),
        ("https://crm.example.com/app\\..\\admin", False),
        ("https://crm.example.com/app/\nx", False),
        ("javascript:alert(1)//crm.example.com/app", False),
        ("//crm.example.com/app", False),
        ("", False),
    ],
)
def test_a_return_url_is_allowed_only_under_an_allow_list_entrys_exact_origin_and_path(url: str, allowed: bool) -> None:
    assert return_url_allowed(url, ("https://crm.example.com/app",)) is allowed


def test_an_allow_list_entry_with_a_trailing_slash_or_root_path_matches_below_it() -> None:
    assert return_url_allowed("https://crm.example.com/app/x", ("https://crm.example.com/app/",))
    assert return_url_allowed("https://crm.example.com/anything", ("https://crm.example.com",))
    assert not return_url_allowed("https://crm.example.com/x", ())


def test_aliases_are_mail_first_then_smtp_proxy_addresses_and_the_upn_normalised_once() -> None:
    primary, aliases = aliases_from_profile(ADELE)

    assert primary == "adele@contoso.example"
    assert aliases == ("adele@contoso.example", "adele.vance@contoso.example")


def test_without_mail_the_upn_is_the_primary_address() -> None:
    primary, aliases = aliases_from_profile({"mail": None, "userPrincipalName": "Bob@Contoso.example"})

    assert (primary, aliases) == ("bob@contoso.example", ("bob@contoso.example",))


def test_the_mailbox_id_depends_on_org_and_graph_user_only() -> None:
    assert mailbox_id_for("org", "ABC") == mailbox_id_for("org", "abc")
    assert mailbox_id_for("org", "abc") != mailbox_id_for("org2", "abc")


def test_result_parameters_are_added_to_the_return_urls_own_query() -> None:
    assert (
        with_params("https://crm.example.com/app?tab=mail&status=old#frag", {"status": "connected", "mailbox_id": "m"})
        == "https://crm.example.com/app?tab=mail&status=connected&mailbox_id=m#frag"
    )


@pytest.mark.parametrize(
    ("codes", "code", "words"),
    [
        ([70008], 70008, "inactivity"),
        ([700082], 700082, "not used for too long"),
        ([50173], 50173, "revoked"),
        ([65001], 65001, "consent"),
        ([9002313, 50173], 50173, "revoked"),
        ([], None, "refused the stored sign-in"),
    ],
)
def test_a_dead_grant_has_a_readable_reason_and_its_aadsts_code(codes: list[int], code: int | None, words: str) -> None:
    error = reauth_error("invalid_grant", codes)

    assert error.aadsts == code and words in str(error) and "reconnect" in str(error)


# -- failure paths of the callback ------------------------------------------------------------------------


def test_a_profile_of_another_account_than_the_one_that_signed_in_is_refused(deps: ConnectDeps) -> None:
    deps.identity = FakeIdentity(grant=DelegatedGrant("at", TENANT, "someone-else", "x", "{}"))

    result = complete_connect(deps, callback(deps))

    assert not result.ok and result.error == "account_mismatch"
    assert deps.mailboxes.list("org") == ()


def test_an_account_without_any_mailbox_address_is_refused(deps: ConnectDeps) -> None:
    deps.directory_for = lambda _source: GraphDirectory(
        FakeGraph({"me": {"id": ADELE["id"], "mail": None, "userPrincipalName": None}})
    )

    result = complete_connect(deps, callback(deps))

    assert not result.ok and result.error == "no_mailbox"
    assert result.redirect_url == "https://crm.example.com/app/done?status=error&error=no_mailbox"


def test_an_unreadable_profile_stores_nothing(deps: ConnectDeps) -> None:
    deps.directory_for = lambda _source: GraphDirectory(FakeGraph({"me": TransientGraphError("down")}))

    result = complete_connect(deps, callback(deps))

    assert not result.ok and result.error == "profile_unavailable"
    assert deps.mailboxes.list("org") == () and deps.tokens.delete_org("org") == 0


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (TransientGraphError("identity platform unreachable"), "temporarily_unavailable"),
        (IdentityError("refused", "invalid_grant", [54005]), "sign_in_failed"),
    ],
)
def test_a_failed_code_redemption_is_an_error_result_not_a_crash(
    deps: ConnectDeps, failure: Exception, error: str
) -> None:
    deps.identity = FakeIdentity(grant=failure)

    result = complete_connect(deps, callback(deps))

    assert not result.ok and result.error == error and result.org_id == "org"


def test_a_callback_without_a_code_or_error_is_refused(deps: ConnectDeps) -> None:
    params = callback(deps)
    del params["code"]

    assert complete_connect(deps, params).error == "sign_in_failed"


def test_an_admin_consent_state_cannot_complete_a_user_connect(deps: ConnectDeps) -> None:
    deps.flows.save(PendingAuthFlow("consent-state", "org", "admin_consent", T0))

    assert complete_connect(deps, {"state": "consent-state", "code": "c"}).error == "invalid_state"


def test_an_admin_consent_in_another_tenant_than_the_requested_one_is_refused(deps: ConnectDeps) -> None:
    deps.flows.save(PendingAuthFlow("s", "org", "admin_consent", T0, flow={"tenant_id": TENANT}))

    result = complete_admin_consent(
        deps, {"admin_consent": "True", "tenant": "99999999-2222-3333-4444-555555555555", "state": "s"}
    )

    assert not result.ok and result.error == "tenant_mismatch"
    assert deps.tenants.get("org") is None


def test_a_consent_callback_without_a_tenant_guid_is_refused(deps: ConnectDeps) -> None:
    deps.flows.save(PendingAuthFlow("s", "org", "admin_consent", T0))

    assert complete_admin_consent(deps, {"admin_consent": "True", "tenant": "evil", "state": "s"}).error == (
        "consent_failed"
    )


def test_connecting_creates_an_active_mailbox_watermarked_at_the_connect_time(deps: ConnectDeps) -> None:
    result = connected(deps)

    stored = deps.mailboxes.get("org", result.mailbox_id)
    assert result.ok and stored is not None
    assert stored.value.watermark == T0 and stored.value.status is MailboxStatus.ACTIVE
    assert deps.tokens.get("org", f"mailbox:{result.mailbox_id}") is not None


def test_reconnecting_a_paused_mailbox_refreshes_its_tokens_but_keeps_it_paused(deps: ConnectDeps) -> None:
    first = connected(deps)
    stored = deps.mailboxes.get("org", first.mailbox_id)
    assert stored is not None
    deps.mailboxes.replace(replace(stored.value, status=MailboxStatus.PAUSED, enabled=False), stored.etag)
    deps.tokens.delete("org", f"mailbox:{first.mailbox_id}")

    again = connected(deps)

    kept = deps.mailboxes.get("org", first.mailbox_id)
    assert again.ok and kept is not None
    assert kept.value.status is MailboxStatus.PAUSED and kept.value.enabled is False
    assert deps.tokens.get("org", f"mailbox:{first.mailbox_id}") is not None


def test_sign_out_all_leaves_disconnected_mailboxes_alone(deps: ConnectDeps) -> None:
    first = connected(deps)
    disconnect(deps, "org", first.mailbox_id)
    deps.clock.current += timedelta(minutes=1)  # type: ignore[attr-defined]

    assert sign_out_all(deps, "org") == 0
    stored = deps.mailboxes.get("org", first.mailbox_id)
    assert stored is not None and stored.value.status is MailboxStatus.DISCONNECTED


def test_a_lookup_of_an_unknown_address_in_app_mode_is_a_request_error(deps: ConnectDeps) -> None:
    deps.tenants.claim(OrgTenant("org", TENANT, T0))
    deps.directory_for = lambda _source: GraphDirectory(
        FakeGraph({"users/nobody@contoso.example": MessageNotFound("404")})
    )

    with pytest.raises(InvalidRequest) as info:
        add_app_mailbox(deps, "org", "Nobody@Contoso.example")
    assert info.value.code == "address_not_found"


# -- connect confirmation and consent proof ----------------------------------------------------------------


def test_the_callback_activates_nothing_and_only_the_starting_crm_user_can_confirm(deps: ConnectDeps) -> None:
    result = complete_connect(deps, callback(deps))

    assert result.ok and not result.activated and deps.mailboxes.list("org") == ()
    with pytest.raises(InvalidRequest):
        confirm_connect(deps, "org", "crm-other-user", result.connect_code)
    assert deps.mailboxes.list("org") == ()
    mailbox = confirm_connect(deps, "org", "crm-user", result.connect_code)
    assert mailbox.status is MailboxStatus.ACTIVE and mailbox.user_id == "crm-user"
    with pytest.raises(InvalidRequest):
        confirm_connect(deps, "org", "crm-user", result.connect_code)


def test_a_sign_in_by_an_account_that_does_not_own_the_login_hint_is_refused(deps: ConnectDeps) -> None:
    assert complete_connect(deps, callback(deps, "ADELE.VANCE@contoso.example")).ok
    refused = complete_connect(deps, callback(deps, "megan@contoso.example"))

    assert not refused.ok and refused.error == "wrong_account"


@pytest.mark.parametrize(
    ("allowed", "result"),
    [
        ((), True),
        ((TENANT,), True),
        (("contoso.example",), True),
        (("fabrikam.example", TENANT.upper()), True),
        (("fabrikam.example",), False),
        (("99999999-2222-3333-4444-555555555555",), False),
        (("example",), False),
    ],
)
def test_a_tenant_is_allowed_by_its_id_or_the_domain_of_the_accounts_upn(
    allowed: tuple[str, ...], result: bool
) -> None:
    assert tenant_allowed(allowed, TENANT, "Adele@Contoso.example") is result


def test_allowed_tenants_are_validated_and_normalised_and_confirmation_is_on_by_default() -> None:
    settings = settings_from_json({"allowed_tenants": [TENANT.upper(), "Contoso.Example", "contoso.example"]})

    assert settings.allowed_tenants == (TENANT, "contoso.example") and settings.connect_confirmation is True
    assert settings_from_json({"connect_confirmation": False}).connect_confirmation is False
    with pytest.raises(ApiError):
        settings_from_json({"allowed_tenants": ["not a tenant"]})


def test_mail_read_is_needed_and_mail_readwrite_includes_it() -> None:
    assert missing_app_roles(("User.Read.All",), ("Mail.Read",)) == ("Mail.Read",)
    assert missing_app_roles(("mail.read",), ("Mail.Read",)) == ()
    assert missing_app_roles(("Mail.ReadWrite",), ("Mail.Read",)) == ()


def test_the_roles_of_an_app_token_are_read_from_its_claims_and_an_opaque_token_has_none() -> None:
    payload = base64.urlsafe_b64encode(json.dumps({"roles": ["Mail.Read"]}).encode()).decode().rstrip("=")

    assert token_roles(f"h.{payload}.s") == ("Mail.Read",)
    assert token_roles("opaque") == () and token_roles("a.%%%.b") == ()


def admin_consent_through(deps: ConnectDeps) -> ConnectResult:
    url = start_admin_consent(deps, "org", None, "https://crm.example.com/app")
    signed_in = complete_admin_consent(deps, {"state": url.rpartition("=")[2], "code": "c"})
    assert signed_in.continues and signed_in.redirect_url is not None
    state = signed_in.redirect_url.rpartition("=")[2]
    return complete_admin_consent(deps, {"admin_consent": "True", "tenant": TENANT, "state": state})


def test_a_consent_proven_by_a_token_without_mail_read_is_refused_and_records_nothing(deps: ConnectDeps) -> None:
    deps.identity = FakeIdentity(proof=AppGrant(TENANT, "app-at", "{}", ("User.Read.All",)))

    result = admin_consent_through(deps)

    assert not result.ok and result.error == "consent_missing_roles"
    assert deps.tenants.get("org") is None
    deps.identity = FakeIdentity()
    assert admin_consent_through(deps).ok and deps.tenants.get("org") is not None
