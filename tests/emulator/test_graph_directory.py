"""Graph's front door and directory routes: /me, /users/{id|upn}, /organization, authentication."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import certifi

from emulator.client import EmulatorTenant, emulator_session
from emulator.server import EmulatorServer


def test_a_call_without_a_token_is_401_access_token_is_empty(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", "/me")

    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert answer.json()["error"]["message"] == "Access token is empty."
    assert answer.headers["WWW-Authenticate"].startswith("Bearer ")


def test_an_unknown_token_is_401_expired_or_not_yet_valid(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", "/me", "eyJ0eXAiOiJKV1QifQ.e30.c2lnbmF0dXJl")

    assert answer.status_code == 401
    assert answer.json()["error"]["message"] == "Access token has expired or is not yet valid."


def test_a_token_past_its_lifetime_is_401(tenant: EmulatorTenant) -> None:
    tenant.client.configure(access_token_lifetime_s=0)
    _, result = tenant.sign_in("adele")

    assert result["expires_in"] == 0
    assert tenant.graph("GET", "/me", result["access_token"]).status_code == 401


def test_me_returns_the_default_properties_without_proxy_addresses(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")

    me = tenant.graph("GET", "/me", token).json()

    assert me["@odata.context"] == f"{tenant.graph_url}/$metadata#users/$entity"
    assert me["id"] == tenant.users["adele"].id
    assert (me["displayName"], me["givenName"], me["surname"]) == ("Adele Vance", "Adele", "Vance")
    assert me["userPrincipalName"] == me["mail"] == tenant.users["adele"].upn
    assert "proxyAddresses" not in me


def test_me_with_select_returns_only_the_selected_properties_including_aliases(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")

    me = tenant.graph("GET", "/me", token, params={"$select": "id,mail,proxyAddresses"}).json()

    assert set(me) == {"@odata.context", "id", "mail", "proxyAddresses"}
    assert me["proxyAddresses"] == [f"SMTP:adele@{tenant.domain}", f"smtp:adele.vance@{tenant.domain}"]


def test_selecting_an_unknown_property_is_400(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", "/me", tenant.delegated_token("adele"), params={"$select": "id,shoeSize"})

    assert answer.status_code == 400
    assert "shoeSize" in answer.json()["error"]["message"]


def test_me_needs_a_user_read_scope(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele", scopes=["Mail.Read"])

    answer = tenant.graph("GET", "/me", token)

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "Authorization_RequestDenied"


def test_an_app_token_on_me_is_a_bad_request(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", "/me", tenant.app_token())

    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "/me request is only valid with delegated authentication flow."


def test_an_app_with_user_read_all_reads_a_user_by_upn_alias_or_id(tenant: EmulatorTenant) -> None:
    token = tenant.app_token()
    adele = tenant.users["adele"]

    for key in (adele.upn, adele.id, f"adele.vance@{tenant.domain}"):
        answer = tenant.graph("GET", f"/users/{key}", token, params={"$select": "id,userPrincipalName"})
        assert answer.status_code == 200, key
        assert answer.json()["id"] == adele.id


def test_a_shared_mailbox_reads_as_a_disabled_account(tenant: EmulatorTenant) -> None:
    user = tenant.graph(
        "GET", f"/users/{tenant.users['sales'].upn}", tenant.app_token(), params={"$select": "accountEnabled,mail"}
    ).json()

    assert user["accountEnabled"] is False


def test_an_unknown_user_is_404_request_resource_not_found(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", f"/users/nobody@{tenant.domain}", tenant.app_token())

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "Request_ResourceNotFound"


def test_a_delegated_user_reads_self_but_not_others_with_user_read(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")

    assert tenant.graph("GET", f"/users/{tenant.users['adele'].upn}", token).status_code == 200
    other = tenant.graph("GET", f"/users/{tenant.users['megan'].upn}", token)
    assert other.status_code == 403
    assert other.json()["error"]["message"] == "Insufficient privileges to complete the operation."


def test_users_of_another_tenant_are_not_found(tenant: EmulatorTenant) -> None:
    other = tenant.client.create_tenant("Elsewhere", [f"elsewhere-{tenant.domain}"])
    stranger = tenant.client.create_user(other["id"], f"kim@elsewhere-{tenant.domain}")

    answer = tenant.graph("GET", f"/users/{stranger['id']}", tenant.app_token())

    assert answer.status_code == 404


def test_organization_lists_the_tenant_and_its_verified_domains(tenant: EmulatorTenant) -> None:
    organization = tenant.graph("GET", "/organization", tenant.delegated_token("megan")).json()

    [org] = organization["value"]
    assert (org["id"], org["displayName"]) == (tenant.id, tenant.display_name)
    domains = {d["name"]: d for d in org["verifiedDomains"]}
    assert domains[tenant.domain]["isDefault"] is True
    assert domains[tenant.domain]["isInitial"] is False
    initial = domains[tenant.domain.replace(".example", ".onmicrosoft.example")]
    assert (initial["isDefault"], initial["isInitial"], initial["type"]) == (False, True, "Managed")


def test_organization_needs_organization_read_all_for_an_app(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", "/organization", tenant.app_token())

    assert answer.status_code == 403


def test_an_unknown_segment_is_400_resource_not_found(tenant: EmulatorTenant) -> None:
    answer = tenant.graph("GET", "/me/calendars", tenant.delegated_token("adele"))

    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "Resource not found for the segment 'calendars'."


def test_one_keep_alive_connection_serves_sign_in_and_graph_calls(tenant: EmulatorTenant) -> None:
    token = tenant.delegated_token("adele")
    answers = [tenant.graph("GET", "/me", token) for _ in range(3)]

    assert all(a.headers["Content-Length"] == str(len(a.content)) for a in answers)
    pools = tenant.session.get_adapter(tenant.graph_url).poolmanager.pools
    assert [pools[key].num_connections for key in pools.keys()] == [1]  # noqa: SIM118 (the container is not iterable)


# -- the server process ----------------------------------------------------------------------------


def test_python_m_emulator_serves_the_demo_seed_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "emulator.pid"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emulator",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path),
            "--seed",
            "demo",
            "--pid-file",
            str(pid_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline().split()
        assert ready[:2] == ["emulator", "ready"]
        assert pid_file.read_text().strip() == str(process.pid)
        with emulator_session(tmp_path / "ca-bundle.pem") as session:
            config = session.get(f"{ready[2]}/contoso.example/v2.0/.well-known/openid-configuration", timeout=10)
        assert config.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert not pid_file.exists()


def test_a_restarted_emulator_keeps_its_ca_and_the_bundle_adds_it_to_certifi(tmp_path: Path) -> None:
    with EmulatorServer(state_dir=tmp_path) as first:
        ca = first.tls.ca_pem.read_bytes()
    with EmulatorServer(state_dir=tmp_path) as second:
        assert second.tls.ca_pem.read_bytes() == ca
        bundle = second.ca_bundle_path.read_bytes()

    assert bundle.startswith(Path(certifi.where()).read_bytes().rstrip(b"\n"))
    assert bundle.endswith(ca)
