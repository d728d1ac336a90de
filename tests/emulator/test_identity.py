"""The emulated identity platform, exercised through unchanged MSAL Python over HTTPS."""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import jwt
import pytest

from emulator.client import DELEGATED_SCOPES, EmulatorError, EmulatorTenant

AAD_DESCRIPTION = re.compile(
    r"^AADSTS(?P<code>\d+): .+\r\nTrace ID: [0-9a-f-]{36}\r\nCorrelation ID: [0-9a-f-]{36}\r\n"
    r"Timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$",
    re.DOTALL,
)


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def start_flow(tenant: EmulatorTenant, app: Any = None, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    app = app or tenant.msal_app()
    with pytest.warns(UserWarning, match="form_post"):
        flow = app.initiate_auth_code_flow(DELEGATED_SCOPES, redirect_uri=tenant.app.redirect_uri, **kwargs)
    return app, flow


def code_from(tenant: EmulatorTenant, flow: dict[str, Any], user: str = "adele") -> str:
    return query_of(tenant.client.authorize(flow["auth_uri"], tenant.users[user].upn))["code"]


# -- discovery -------------------------------------------------------------------------------------


def test_discovery_by_domain_names_the_tenant_guid_in_every_endpoint(tenant: EmulatorTenant) -> None:
    config = tenant.session.get(f"{tenant.base_url}/{tenant.domain}/v2.0/.well-known/openid-configuration").json()

    assert config["token_endpoint"] == f"{tenant.authority}/oauth2/v2.0/token"
    assert config["authorization_endpoint"] == f"{tenant.authority}/oauth2/v2.0/authorize"
    assert config["issuer"] == f"{tenant.authority}/v2.0"


def test_discovery_for_organizations_keeps_the_tenantless_endpoints(tenant: EmulatorTenant) -> None:
    config = tenant.session.get(f"{tenant.base_url}/organizations/v2.0/.well-known/openid-configuration").json()

    assert config["token_endpoint"] == f"{tenant.base_url}/organizations/oauth2/v2.0/token"
    assert config["issuer"] == f"{tenant.base_url}/{{tenantid}}/v2.0"


def test_discovery_of_an_unknown_tenant_fails_with_aadsts_90002(tenant: EmulatorTenant) -> None:
    answer = tenant.session.get(f"{tenant.base_url}/nowhere.example/v2.0/.well-known/openid-configuration")

    assert answer.status_code == 400
    assert answer.json()["error_codes"] == [90002]
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        tenant.msal_app(authority=f"{tenant.base_url}/nowhere.example")


# -- authorization code flow -----------------------------------------------------------------------


def test_auth_code_flow_with_pkce_gives_tokens_and_an_msal_account(tenant: EmulatorTenant) -> None:
    app, result = tenant.sign_in("adele")
    adele = tenant.users["adele"]

    assert result["token_type"] == "Bearer"
    assert result["scope"] == "Mail.Read User.Read profile openid email"
    assert result["expires_in"] == 3599
    assert result["refresh_token"]
    assert result["id_token_claims"]["aud"] == tenant.app.client_id
    assert result["id_token_claims"]["iss"] == f"{tenant.authority}/v2.0"
    assert result["id_token_claims"]["tid"] == tenant.id
    assert result["id_token_claims"]["oid"] == adele.id
    assert result["id_token_claims"]["preferred_username"] == adele.upn
    client_info = json.loads(base64.urlsafe_b64decode(result["client_info"] + "=="))
    assert client_info == {"uid": adele.id, "utid": tenant.id}
    [account] = app.get_accounts()
    assert account["home_account_id"] == f"{adele.id}.{tenant.id}"
    assert account["username"] == adele.upn
    access = claims(result["access_token"])
    assert (access["tid"], access["oid"], access["appid"]) == (tenant.id, adele.id, tenant.app.client_id)
    assert access["scp"] == "Mail.Read User.Read"


def test_id_token_signature_verifies_against_the_published_keys(tenant: EmulatorTenant) -> None:
    _, result = tenant.sign_in("adele")
    keys = tenant.session.get(f"{tenant.authority}/discovery/v2.0/keys").json()["keys"]
    header = jwt.get_unverified_header(result["id_token"])
    [key] = [k for k in keys if k["kid"] == header["kid"]]

    verified = jwt.decode(
        result["id_token"],
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience=tenant.app.client_id,
        issuer=f"{tenant.authority}/v2.0",
    )

    assert verified["oid"] == tenant.users["adele"].id


def test_sign_in_at_a_domain_authority_lands_in_the_tenant(tenant: EmulatorTenant) -> None:
    app = tenant.msal_app(authority=f"{tenant.base_url}/{tenant.domain}")
    _, result = tenant.sign_in("megan", app=app)

    assert result["id_token_claims"]["tid"] == tenant.id
    assert app.get_accounts()[0]["realm"] == tenant.id


def test_sign_in_page_form_post_redirects_with_a_code_msal_redeems(tenant: EmulatorTenant) -> None:
    app, flow = start_flow(tenant, login_hint=tenant.users["adele"].upn)
    page = tenant.session.get(flow["auth_uri"])
    assert page.status_code == 200
    assert "text/html" in page.headers["Content-Type"]
    assert tenant.users["adele"].upn in page.text
    request_id = re.search(r"name='request_id' value='([^']+)'", page.text)
    assert request_id is not None

    posted = tenant.session.post(
        f"{tenant.authority}/login",
        data={"request_id": request_id[1], "login": tenant.users["adele"].upn, "password": "", "action": "accept"},
        allow_redirects=False,
    )

    assert posted.status_code == 302
    location = posted.headers["Location"]
    assert location.startswith(tenant.app.redirect_uri + "?")
    params = query_of(location)
    assert params["state"] == flow["state"]
    assert {"code", "session_state", "client_info"} <= set(params)
    assert "access_token" in app.acquire_token_by_auth_code_flow(flow, params)


def test_sign_in_page_rejects_a_wrong_password_and_asks_again(tenant: EmulatorTenant) -> None:
    tenant.client.create_user(tenant.id, f"pat@{tenant.domain}", password="correct horse")
    _, flow = start_flow(tenant)
    page = tenant.session.get(flow["auth_uri"])
    request_id = re.search(r"name='request_id' value='([^']+)'", page.text)
    assert request_id is not None

    posted = tenant.session.post(
        f"{tenant.authority}/login",
        data={"request_id": request_id[1], "login": f"pat@{tenant.domain}", "password": "wrong", "action": "accept"},
        allow_redirects=False,
    )

    assert posted.status_code == 200
    assert "AADSTS50126" in posted.text


def test_authorize_with_an_unregistered_redirect_uri_shows_an_error_page_without_redirecting(
    tenant: EmulatorTenant,
) -> None:
    app = tenant.msal_app()
    with pytest.warns(UserWarning, match="form_post"):
        flow = app.initiate_auth_code_flow(DELEGATED_SCOPES, redirect_uri="https://evil.example/callback")

    page = tenant.session.get(flow["auth_uri"], allow_redirects=False)

    assert page.status_code == 400
    assert "Location" not in page.headers
    assert "AADSTS50011" in page.text
    with pytest.raises(EmulatorError, match="AADSTS50011"):
        tenant.client.authorize(flow["auth_uri"], tenant.users["adele"].upn)


def test_authorize_for_an_unknown_client_shows_an_error_page(tenant: EmulatorTenant) -> None:
    page = tenant.session.get(
        f"{tenant.authority}/oauth2/v2.0/authorize",
        params={
            "client_id": "11111111-2222-3333-4444-555555555555",
            "response_type": "code",
            "redirect_uri": tenant.app.redirect_uri,
            "scope": "User.Read",
        },
        allow_redirects=False,
    )

    assert page.status_code == 400
    assert "AADSTS700016" in page.text


def test_declined_consent_redirects_with_access_denied_and_msal_reports_it(tenant: EmulatorTenant) -> None:
    app, flow = start_flow(tenant)

    redirect = tenant.client.authorize(flow["auth_uri"], tenant.users["adele"].upn, consent=False)

    params = query_of(redirect)
    assert params == {
        "error": "access_denied",
        "error_subcode": "cancel",
        "error_description": "AADSTS65004: User declined to consent to access the app.",
        "state": flow["state"],
    }
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "access_denied"


def test_silent_authorize_without_a_session_redirects_with_login_required(tenant: EmulatorTenant) -> None:
    _, flow = start_flow(tenant, prompt="none")

    params = query_of(tenant.client.authorize(flow["auth_uri"], tenant.users["adele"].upn))

    assert params["error"] == "login_required"
    assert params["error_description"].startswith("AADSTS50058:")


def test_a_user_of_another_tenant_cannot_sign_in_at_this_tenant(tenant: EmulatorTenant) -> None:
    other = tenant.client.create_tenant("Other", [f"other-{tenant.domain}"])
    stranger = tenant.client.create_user(other["id"], f"sam@other-{tenant.domain}")
    _, flow = start_flow(tenant)

    with pytest.raises(EmulatorError, match="AADSTS50034"):
        tenant.client.authorize(flow["auth_uri"], stranger["user_principal_name"])


def test_an_unknown_account_at_a_tenant_is_named_with_the_tenants_directory(tenant: EmulatorTenant) -> None:
    _, flow = start_flow(tenant)

    with pytest.raises(EmulatorError, match="AADSTS50034") as refused:
        tenant.client.authorize(flow["auth_uri"], f"nobody@{tenant.domain}")

    assert "does not exist in the " in str(refused.value)
    assert "the this" not in str(refused.value)


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_an_unknown_account_at_organizations_does_not_exist_in_this_directory(tenant: EmulatorTenant) -> None:
    _, flow = start_flow(tenant, tenant.msal_app(authority=f"{tenant.base_url}/organizations"))

    with pytest.raises(EmulatorError, match="AADSTS50034") as refused:
        tenant.client.authorize(flow["auth_uri"], f"nobody@nowhere-{tenant.domain}")

    assert "does not exist in this directory" in str(refused.value)


def test_a_shared_mailbox_cannot_sign_in(tenant: EmulatorTenant) -> None:
    _, flow = start_flow(tenant)

    with pytest.raises(EmulatorError, match="AADSTS50057"):
        tenant.client.authorize(flow["auth_uri"], tenant.users["sales"].upn)


def test_an_authorization_code_is_single_use_aadsts_54005(tenant: EmulatorTenant) -> None:
    _, flow = start_flow(tenant)
    code = code_from(tenant, flow)
    form = {
        "grant_type": "authorization_code",
        "client_id": tenant.app.client_id,
        "client_secret": tenant.app.client_secret,
        "code": code,
        "redirect_uri": tenant.app.redirect_uri,
        "code_verifier": flow["code_verifier"],
        "scope": "Mail.Read openid",
        "client_info": "1",
    }
    assert tenant.token_request(**form).status_code == 200

    again = tenant.token_request(**form)

    assert again.status_code == 400
    assert (again.json()["error"], again.json()["error_codes"]) == ("invalid_grant", [54005])


def test_an_expired_authorization_code_fails_with_aadsts_70008(tenant: EmulatorTenant) -> None:
    tenant.client.configure(auth_code_lifetime_s=0)
    app, flow = start_flow(tenant)
    params = query_of(tenant.client.authorize(flow["auth_uri"], tenant.users["adele"].upn))

    result = app.acquire_token_by_auth_code_flow(flow, params)

    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [70008]


def test_a_wrong_pkce_verifier_fails_with_aadsts_501481(tenant: EmulatorTenant) -> None:
    _, flow = start_flow(tenant)
    code = code_from(tenant, flow)

    answer = tenant.token_request(
        grant_type="authorization_code",
        client_id=tenant.app.client_id,
        client_secret=tenant.app.client_secret,
        code=code,
        redirect_uri=tenant.app.redirect_uri,
        code_verifier="x" * 43,
    )

    body = answer.json()
    assert (answer.status_code, body["error"], body["error_codes"]) == (400, "invalid_grant", [501481])
    assert (
        "The Code_Verifier does not match the code_challenge supplied in the authorization request."
        in (body["error_description"])
    )


def test_redeeming_with_a_different_redirect_uri_fails(tenant: EmulatorTenant) -> None:
    _, flow = start_flow(tenant)
    code = code_from(tenant, flow)

    answer = tenant.token_request(
        grant_type="authorization_code",
        client_id=tenant.app.client_id,
        client_secret=tenant.app.client_secret,
        code=code,
        redirect_uri=tenant.app.admin_consent_redirect_uri,
        code_verifier=flow["code_verifier"],
    )

    assert (answer.status_code, answer.json()["error_codes"]) == (400, [500112])


def test_a_wrong_client_secret_fails_with_invalid_client_401_in_the_aad_error_shape(tenant: EmulatorTenant) -> None:
    app, flow = start_flow(tenant, app=tenant.msal_app(secret="not-the-secret"))
    code = code_from(tenant, flow)

    answer = tenant.token_request(
        grant_type="authorization_code",
        client_id=tenant.app.client_id,
        client_secret="not-the-secret",
        code=code,
        redirect_uri=tenant.app.redirect_uri,
        code_verifier=flow["code_verifier"],
    )

    body = answer.json()
    assert answer.status_code == 401
    assert set(body) == {
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    }
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    description = AAD_DESCRIPTION.match(body["error_description"])
    assert description is not None and description["code"] == "7000215"
    assert body["error_uri"] == f"{tenant.base_url}/error?code=7000215"
    assert (
        app.acquire_token_by_auth_code_flow(
            flow, query_of(tenant.client.authorize(flow["auth_uri"], tenant.users["adele"].upn))
        )["error"]
        == "invalid_client"
    )


def test_a_missing_client_secret_fails_with_invalid_client_aadsts_7000218(tenant: EmulatorTenant) -> None:
    answer = tenant.token_request(
        grant_type="client_credentials", client_id=tenant.app.client_id, scope="https://graph.microsoft.com/.default"
    )

    assert (answer.status_code, answer.json()["error"], answer.json()["error_codes"]) == (
        401,
        "invalid_client",
        [7000218],
    )


# -- refresh tokens --------------------------------------------------------------------------------


def test_graph_401_after_access_token_expiry_then_force_refresh_recovers(tenant: EmulatorTenant) -> None:
    app, result = tenant.sign_in("adele")
    token = result["access_token"]
    assert tenant.graph("GET", "/me", token).status_code == 200
    tenant.client.expire_access_tokens(tenant.users["adele"].upn)

    expired = tenant.graph("GET", "/me", token)
    assert expired.status_code == 401
    assert expired.json()["error"]["message"] == "Access token has expired or is not yet valid."
    [account] = app.get_accounts()
    assert app.acquire_token_silent(DELEGATED_SCOPES, account)["access_token"] == token  # MSAL's cache still trusts it
    refreshed = app.acquire_token_silent(DELEGATED_SCOPES, account, force_refresh=True)

    assert refreshed["token_source"] == "identity_provider"
    assert tenant.graph("GET", "/me", refreshed["access_token"]).status_code == 200


def test_refresh_tokens_rotate_and_earlier_ones_keep_working(tenant: EmulatorTenant) -> None:
    _, result = tenant.sign_in("adele")
    form = {
        "grant_type": "refresh_token",
        "client_id": tenant.app.client_id,
        "client_secret": tenant.app.client_secret,
        "scope": "Mail.Read offline_access openid",
    }

    first = tenant.token_request(**form, refresh_token=result["refresh_token"]).json()
    second = tenant.token_request(**form, refresh_token=first["refresh_token"]).json()
    original_again = tenant.token_request(**form, refresh_token=result["refresh_token"])

    assert len({result["refresh_token"], first["refresh_token"], second["refresh_token"]}) == 3
    assert original_again.status_code == 200
    assert (
        "id_token" in second
        and "id_token"
        not in tenant.token_request(**{**form, "scope": "Mail.Read"}, refresh_token=second["refresh_token"]).json()
    )


def test_refresh_after_revocation_fails_with_aadsts_50173_but_the_access_token_still_works(
    tenant: EmulatorTenant,
) -> None:
    app, result = tenant.sign_in("adele")
    [account] = app.get_accounts()

    assert tenant.client.revoke_grant(tenant.users["adele"].upn, tenant.app.client_id) == 1
    failed = app.acquire_token_silent_with_error(DELEGATED_SCOPES, account, force_refresh=True)

    assert failed["error"] == "invalid_grant"
    assert failed["error_codes"] == [50173]
    assert tenant.graph("GET", "/me", result["access_token"]).status_code == 200


def test_signing_in_again_after_revocation_starts_a_working_grant(tenant: EmulatorTenant) -> None:
    tenant.sign_in("adele")
    tenant.client.revoke_grant(tenant.users["adele"].upn, tenant.app.client_id)

    app, _ = tenant.sign_in("adele")

    assert "access_token" in app.acquire_token_silent(DELEGATED_SCOPES, app.get_accounts()[0], force_refresh=True)


def test_refresh_after_grant_expiry_fails_with_aadsts_70008(tenant: EmulatorTenant) -> None:
    app, _ = tenant.sign_in("adele")
    tenant.client.revoke_grant(tenant.users["adele"].upn, tenant.app.client_id, reason="expired")

    failed = app.acquire_token_silent_with_error(DELEGATED_SCOPES, app.get_accounts()[0], force_refresh=True)

    assert (failed["error"], failed["error_codes"]) == ("invalid_grant", [70008])


def test_refresh_after_consent_removal_fails_with_aadsts_65001(tenant: EmulatorTenant) -> None:
    app, _ = tenant.sign_in("adele")
    tenant.client.revoke_grant(tenant.users["adele"].upn, tenant.app.client_id, reason="consent_removed")

    failed = app.acquire_token_silent_with_error(DELEGATED_SCOPES, app.get_accounts()[0], force_refresh=True)

    assert (failed["error"], failed["error_codes"]) == ("invalid_grant", [65001])


def test_refresh_for_a_scope_never_consented_fails_with_aadsts_65001(tenant: EmulatorTenant) -> None:
    app, result = tenant.sign_in("adele", scopes=["User.Read"])
    assert result["scope"] == "User.Read profile openid email"

    failed = app.acquire_token_silent_with_error(["Mail.Read"], app.get_accounts()[0], force_refresh=True)

    assert (failed["error"], failed["error_codes"]) == ("invalid_grant", [65001])


# -- client credentials and admin consent ----------------------------------------------------------


def test_client_credentials_before_admin_consent_fails_with_aadsts_700016(tenant: EmulatorTenant) -> None:
    result = tenant.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])

    assert result["error"] == "unauthorized_client"
    assert result["error_codes"] == [700016]
    assert (
        f"Application with identifier '{tenant.app.client_id}' was not found in the directory"
        in (result["error_description"])
    )


def test_admin_consent_redirects_with_the_tenant_then_client_credentials_carry_the_roles(
    tenant: EmulatorTenant,
) -> None:
    redirect = tenant.consent_as_admin()

    assert redirect.startswith(tenant.app.admin_consent_redirect_uri + "?")
    assert query_of(redirect) == {
        "admin_consent": "True",
        "tenant": tenant.id,
        "scope": "https://graph.microsoft.com/.default",
        "state": "admin-state",
    }
    result = tenant.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])
    assert "refresh_token" not in result
    access = claims(result["access_token"])
    assert access["roles"] == ["Mail.Read", "User.Read.All"]
    assert (access["tid"], access["appid"], access["idtyp"]) == (tenant.id, tenant.app.client_id, "app")
    assert "scp" not in access


def test_admin_consent_grants_the_roles_the_registration_requests_then_and_app_tokens_carry_exactly_those(
    tenant: EmulatorTenant,
) -> None:
    tenant.client.set_app_roles(tenant.app.client_id, ["User.Read.All"])
    tenant.consent_as_admin()
    before = claims(tenant.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])["access_token"])
    tenant.client.set_app_roles(tenant.app.client_id, ["Mail.Read", "User.Read.All"])
    unchanged = claims(tenant.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])["access_token"])
    tenant.consent_as_admin()
    after = claims(tenant.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])["access_token"])

    assert before["roles"] == ["User.Read.All"] and unchanged["roles"] == ["User.Read.All"]
    assert after["roles"] == ["Mail.Read", "User.Read.All"]
    with pytest.raises(EmulatorError) as unknown:
        tenant.client.set_app_roles("00000000-0000-0000-0000-000000000000", ["Mail.Read"])
    assert unknown.value.status == 404


@pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning")
def test_an_oidc_only_sign_in_gets_an_id_token_naming_the_tenant(tenant: EmulatorTenant) -> None:
    app = tenant.msal_app(authority=f"{tenant.base_url}/organizations")
    result = tenant.client.sign_in(app, tenant.users["megan"].upn, [], tenant.app.admin_consent_redirect_uri)

    assert result["id_token_claims"]["tid"] == tenant.id
    assert result["id_token_claims"]["oid"] == tenant.users["megan"].id


def test_admin_consent_through_organizations_reports_the_admins_tenant(tenant: EmulatorTenant) -> None:
    redirect = tenant.client.admin_consent(tenant.admin_consent_uri("organizations"), tenant.users["megan"].upn)

    assert query_of(redirect)["tenant"] == tenant.id


def test_declined_admin_consent_redirects_with_consent_required(tenant: EmulatorTenant) -> None:
    redirect = tenant.client.admin_consent(tenant.admin_consent_uri(), tenant.users["megan"].upn, accept=False)

    raw = parse_qs(urlsplit(redirect).query)
    assert raw["admin_consent"] == ["True"]
    assert raw["error"] == ["consent_required"]
    assert raw["error_description"][0].startswith("AADSTS65004: ")
    assert raw["state"] == ["admin-state"]
    assert "tenant" not in raw
    assert tenant.msal_app().acquire_token_for_client(["https://graph.microsoft.com/.default"])["error_codes"] == [
        700016
    ]


def test_admin_consent_on_common_is_an_error_page(tenant: EmulatorTenant) -> None:
    page = tenant.session.get(tenant.admin_consent_uri("common"), allow_redirects=False)

    assert page.status_code == 400
    assert "AADSTS90130" in page.text
    with pytest.raises(EmulatorError, match="AADSTS90130"):
        tenant.client.admin_consent(tenant.admin_consent_uri("common"), tenant.users["megan"].upn)


def test_client_credentials_at_organizations_fails_for_want_of_a_tenant(tenant: EmulatorTenant) -> None:
    tenant.consent_as_admin()
    app = tenant.msal_app(authority=f"{tenant.base_url}/organizations")

    with pytest.warns(DeprecationWarning, match="organizations"):
        result = app.acquire_token_for_client(["https://graph.microsoft.com/.default"])

    assert (result["error"], result["error_codes"]) == ("invalid_request", [50059])


def test_client_credentials_need_exactly_one_default_scope(tenant: EmulatorTenant) -> None:
    tenant.consent_as_admin()

    answer = tenant.token_request(
        grant_type="client_credentials",
        client_id=tenant.app.client_id,
        client_secret=tenant.app.client_secret,
        scope="https://graph.microsoft.com/Mail.Read",
    )

    assert (answer.status_code, answer.json()["error"], answer.json()["error_codes"]) == (
        400,
        "invalid_scope",
        [1002012],
    )
