"""Google OAuth 2.0 / OpenID Connect on the emulator: authorize (page and automatic), code + PKCE,
offline access, consent, granted scopes, id_token, refresh, revocation, userinfo and discovery."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import jwt
from jwt import PyJWKClient

from tests.emulator.google.world import READONLY, REDIRECT_URI, SEND, World

USERINFO_EMAIL = "https://www.googleapis.com/auth/userinfo.email"


def verified_claims(world: World, id_token: str) -> dict[str, object]:
    """The id_token's claims, its RS256 signature checked against the published JWKS."""
    config = world.http.get(f"{world.url}/.well-known/openid-configuration").json()
    keys = world.http.get(config["jwks_uri"]).json()
    header = jwt.get_unverified_header(id_token)
    jwk = next(k for k in keys["keys"] if k["kid"] == header["kid"])
    key = jwt.PyJWK(jwk).key
    claims: dict[str, object] = jwt.decode(id_token, key, algorithms=["RS256"], audience=world.client_id,
                                           issuer=config["issuer"])
    return claims


def test_the_openid_configuration_names_the_emulators_endpoints_and_googles_issuer(world: World) -> None:
    config = world.http.get(f"{world.url}/.well-known/openid-configuration").json()
    assert config["issuer"] == "https://accounts.google.com"
    assert config["authorization_endpoint"] == f"{world.url}/o/oauth2/v2/auth"
    assert config["token_endpoint"] == f"{world.url}/token"
    assert config["userinfo_endpoint"] == f"{world.url}/v1/userinfo"
    assert config["revocation_endpoint"] == f"{world.url}/revoke"
    assert config["jwks_uri"] == f"{world.url}/oauth2/v3/certs"
    assert "S256" in config["code_challenge_methods_supported"]
    assert PyJWKClient  # the JWKS is a standard key set
    keys = world.http.get(config["jwks_uri"]).json()["keys"]
    assert keys and all(k["kty"] == "RSA" and k["alg"] == "RS256" and k["use"] == "sig" for k in keys)


def test_the_authorize_page_is_a_sign_in_form_naming_the_scopes_to_grant(world: World) -> None:
    url, _ = world.authorize_url(f"openid email {READONLY} {SEND}", login_hint=world.ada)
    page = world.http.get(url)
    assert page.status_code == 200
    assert "text/html" in page.headers["Content-Type"]
    assert "action='/signin/oauth/consent'" in page.text
    assert f"value='{world.ada}'" in page.text
    assert f"value='{READONLY}' checked" in page.text and f"value='{SEND}' checked" in page.text


def test_a_person_submitting_the_form_is_redirected_with_a_code_scope_hd_and_state(world: World) -> None:
    url, verifier = world.authorize_url()
    page = world.http.get(url)
    request_id = re.search(r"name='request_id' value='([^']+)'", page.text)
    assert request_id is not None
    answer = world.http.post(
        f"{world.url}/signin/oauth/consent",
        data={"request_id": request_id[1], "email": world.ada, "grant": READONLY, "action": "allow"},
        allow_redirects=False,
    )
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["state"] == "state-1"
    assert query["hd"] == world.domain
    assert set(query["scope"].split()) == {"openid", USERINFO_EMAIL, READONLY}
    assert world.redeem(query["code"], verifier).status_code == 200


def test_an_unknown_account_on_the_form_shows_the_form_again_with_the_problem(world: World) -> None:
    url, _ = world.authorize_url()
    request_id = re.search(r"name='request_id' value='([^']+)'", world.http.get(url).text)
    assert request_id is not None
    answer = world.http.post(f"{world.url}/signin/oauth/consent",
                             data={"request_id": request_id[1], "email": "nobody@nowhere.example", "action": "allow"})
    assert answer.status_code == 200
    assert "Couldn&#x27;t find your Google Account" in answer.text


def test_cancel_redirects_with_access_denied_and_the_state(world: World) -> None:
    url, _ = world.authorize_url()
    answer = world.control("POST", "authorize", {"auth_uri": url, "user": world.ada, "allow": False})
    query = parse_qs(urlsplit(answer.json()["redirect_url"]).query)
    assert query == {"error": ["access_denied"], "state": ["state-1"]}


def test_an_unregistered_redirect_uri_is_an_error_page_never_a_redirect(world: World) -> None:
    url, _ = world.authorize_url()
    page = world.http.get(url.replace("127.0.0.1%3A7071", "evil.example"), allow_redirects=False)
    assert page.status_code == 400
    assert "Error 400: redirect_uri_mismatch" in page.text


def test_an_unknown_client_is_error_401_invalid_client(world: World) -> None:
    url, _ = world.authorize_url()
    page = world.http.get(url.replace(world.client_id, "nope.apps.googleusercontent.com"))
    assert page.status_code == 401 and "Error 401: invalid_client" in page.text


def test_a_code_with_pkce_gives_tokens_with_the_granted_scopes_and_a_refresh_token(world: World) -> None:
    tokens = world.connect(world.ada)
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3599
    assert tokens["access_token"].startswith("ya29.")
    assert tokens["refresh_token"].startswith("1//")
    assert set(tokens["scope"].split()) == {"openid", USERINFO_EMAIL, READONLY}


def test_the_id_token_is_signed_by_the_published_key_with_googles_claims(world: World) -> None:
    tokens = world.connect(world.ada, nonce="n-1")
    claims = verified_claims(world, tokens["id_token"])
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["aud"] == world.client_id and claims["azp"] == world.client_id
    assert claims["email"] == world.ada and claims["email_verified"] is True
    assert claims["hd"] == world.domain
    assert claims["nonce"] == "n-1"
    assert isinstance(claims["sub"], str) and claims["sub"].isdigit() and len(claims["sub"]) == 21


def test_a_consumer_accounts_id_token_has_no_hd(world: World) -> None:
    claims = verified_claims(world, world.connect(world.consumer)["id_token"])
    assert claims["email"] == world.consumer
    assert "hd" not in claims


def test_the_issuer_is_configurable_and_the_id_token_follows_it(world: World) -> None:
    world.control("PUT", "config", {"issuer": "https://accounts.google.example"})
    claims = verified_claims(world, world.connect(world.ada)["id_token"])
    assert claims["iss"] == "https://accounts.google.example"


def test_a_wrong_code_verifier_is_invalid_grant_and_a_missing_one_too(world: World) -> None:
    query = world.sign_in(world.ada)
    wrong = world.redeem(query["code"], "not-the-verifier-" + "x" * 40)
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_grant", "error_description": "Invalid code verifier."}
    query = world.sign_in(world.ada)
    missing = world.http.post(f"{world.url}/token", data={
        "grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT_URI,
        "client_id": world.client_id, "client_secret": world.client_secret})
    assert missing.json() == {"error": "invalid_grant", "error_description": "Missing code verifier."}


def test_a_code_is_single_use(world: World) -> None:
    query = world.sign_in(world.ada)
    assert world.redeem(query["code"], query["verifier"]).status_code == 200
    again = world.redeem(query["code"], query["verifier"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_wrong_client_secret_is_invalid_client_401(world: World) -> None:
    query = world.sign_in(world.ada)
    answer = world.http.post(f"{world.url}/token", data={
        "grant_type": "authorization_code", "code": query["code"], "code_verifier": query["verifier"],
        "redirect_uri": REDIRECT_URI, "client_id": world.client_id, "client_secret": "wrong"})
    assert answer.status_code == 401
    assert answer.json() == {"error": "invalid_client", "error_description": "Unauthorized"}


def test_client_secret_basic_authenticates_the_client_too(world: World) -> None:
    query = world.sign_in(world.ada)
    answer = world.http.post(f"{world.url}/token", auth=(world.client_id, world.client_secret), data={
        "grant_type": "authorization_code", "code": query["code"], "code_verifier": query["verifier"],
        "redirect_uri": REDIRECT_URI})
    assert answer.status_code == 200


def test_a_missing_code_is_invalid_request_and_an_unknown_grant_type_unsupported(world: World) -> None:
    base = {"client_id": world.client_id, "client_secret": world.client_secret, "redirect_uri": REDIRECT_URI}
    missing = world.http.post(f"{world.url}/token", data={**base, "grant_type": "authorization_code"})
    assert missing.json() == {"error": "invalid_request", "error_description": "Missing required parameter: code"}
    odd = world.http.post(f"{world.url}/token", data={**base, "grant_type": "password"})
    assert odd.json() == {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: password"}


def test_a_second_sign_in_without_prompt_consent_gives_no_new_refresh_token(world: World) -> None:
    assert "refresh_token" in world.connect(world.ada)
    assert "refresh_token" not in world.connect(world.ada, prompt="select_account")
    assert "refresh_token" in world.connect(world.ada, prompt="consent")


def test_online_access_never_gives_a_refresh_token(world: World) -> None:
    assert "refresh_token" not in world.connect(world.ada, access_type="online")


def test_include_granted_scopes_adds_what_was_granted_before(world: World) -> None:
    world.connect(world.ada, f"openid email {READONLY}")
    incremental = world.connect(world.ada, f"openid email {SEND}")
    assert {READONLY, SEND} <= set(incremental["scope"].split())
    alone = world.connect(world.ada, f"openid email {SEND}", include_granted_scopes="false")
    assert READONLY not in alone["scope"].split()


def test_a_scope_declined_on_the_consent_screen_is_missing_from_the_token(world: World) -> None:
    tokens = world.connect(world.ada, f"openid email {READONLY} {SEND}", decline_scopes=[SEND])
    assert SEND not in tokens["scope"].split() and READONLY in tokens["scope"].split()


def test_a_refresh_gives_a_new_access_token_with_the_same_scopes_and_no_new_refresh_token(world: World) -> None:
    tokens = world.connect(world.ada)
    answer = world.http.post(f"{world.url}/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": world.client_id, "client_secret": world.client_secret})
    assert answer.status_code == 200
    refreshed = answer.json()
    assert refreshed["access_token"] != tokens["access_token"]
    assert refreshed["scope"] == tokens["scope"]
    assert "refresh_token" not in refreshed
    assert verified_claims(world, refreshed["id_token"])["email"] == world.ada


def refresh(world: World, refresh_token: str) -> dict[str, str]:
    answer = world.http.post(f"{world.url}/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": world.client_id, "client_secret": world.client_secret})
    body: dict[str, str] = answer.json()
    body["status"] = str(answer.status_code)
    return body


def test_a_revoked_grant_makes_the_refresh_token_invalid_grant_and_the_access_token_401(world: World) -> None:
    tokens = world.connect(world.ada)
    assert world.gmail("GET", tokens["access_token"], "me/profile").status_code == 200
    revoked = world.control("POST", "grants/revoke", {"user": world.ada})
    assert revoked.json() == {"revoked": 1}
    assert refresh(world, tokens["refresh_token"]) == {
        "error": "invalid_grant", "error_description": "Token has been expired or revoked.", "status": "400"}
    assert world.gmail("GET", tokens["access_token"], "me/profile").status_code == 401


def test_the_revocation_endpoint_revokes_the_whole_grant(world: World) -> None:
    tokens = world.connect(world.ada)
    assert world.http.post(f"{world.url}/revoke", data={"token": tokens["access_token"]}).status_code == 200
    assert refresh(world, tokens["refresh_token"])["error"] == "invalid_grant"
    again = world.http.post(f"{world.url}/revoke", data={"token": tokens["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_token"


def test_userinfo_answers_the_signed_in_user_and_401_without_a_token(world: World) -> None:
    tokens = world.connect(world.ada)
    info = world.http.get(f"{world.url}/v1/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert info.json()["email"] == world.ada and info.json()["hd"] == world.domain
    assert info.json()["email_verified"] is True
    assert world.http.get(f"{world.url}/v1/userinfo").status_code == 401


def test_expired_access_tokens_get_401_from_gmail(world: World) -> None:
    tokens = world.connect(world.ada)
    world.control("POST", "tokens/expire", {"user": world.ada})
    answer = world.gmail("GET", tokens["access_token"], "me/profile")
    assert answer.status_code == 401
    assert answer.json()["error"]["errors"][0]["reason"] == "authError"
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
