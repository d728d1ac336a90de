"""The CRM's side of connecting through the running function_app (tests/e2e and tests/reliability):
the delegated connect with its confirmation step, and the two-step admin consent, the emulator's
control API standing in for the browser and Microsoft's pages."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import requests

from emulator.client import EmulatorClient


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def sign_in(
    api: requests.Session,
    url: Callable[[str], str],
    emulator_client: EmulatorClient,
    org: str,
    upn: str,
    *,
    return_url: str | None,
    user_id: str = "crm-user-1",
    account: str | None = None,
) -> requests.Response:
    """POST connect (``login_hint`` = ``upn``), sign in as ``account`` (default: ``upn``) on the emulator's
    page, then follow the redirect to our callback (not further); returns the callback's answer."""
    body = {"user_id": user_id, "login_hint": upn, **({"return_url": return_url} if return_url else {})}
    started = api.post(url(f"orgs/{org}/mailboxes/connect"), json=body, timeout=30)
    assert started.status_code == 200, started.text
    callback = emulator_client.authorize(started.json()["authorize_url"], account or upn)
    assert callback.startswith(url("auth/callback")), callback
    return requests.get(callback, allow_redirects=False, timeout=30)


def confirm(
    api: requests.Session, url: Callable[[str], str], org: str, code: str, user_id: str = "crm-user-1"
) -> requests.Response:
    """The CRM backend's ``connect:confirm`` for the CRM user whose browser came back with ``code``."""
    body = {"user_id": user_id, "code": code}
    return api.post(url(f"orgs/{org}/mailboxes/connect:confirm"), json=body, timeout=30)


def connect(
    api: requests.Session,
    url: Callable[[str], str],
    emulator_client: EmulatorClient,
    org: str,
    upn: str,
    *,
    return_url: str,
    user_id: str = "crm-user-1",
) -> str:
    """The CRM's whole "Connect mailbox": sign in, come back with a connect code, confirm it; returns the
    now active mailbox's id."""
    finished = sign_in(api, url, emulator_client, org, upn, return_url=return_url, user_id=user_id)
    assert finished.status_code == 302, finished.text
    query = query_of(finished.headers["Location"])
    assert query["status"] == "signed_in", query
    confirmed = confirm(api, url, org, query["connect_code"], user_id)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "active", confirmed.json()
    return str(confirmed.json()["id"])


def consent(
    api: requests.Session,
    url: Callable[[str], str],
    emulator_client: EmulatorClient,
    org: str,
    admin_upn: str,
    *,
    tenant: str | None = None,
    accept: bool = True,
) -> requests.Response:
    """``GET …/admin-consent``, the admin's sign-in, our callback sending the admin on to the tenant's
    adminconsent page, the consent, then our callback again; returns that last answer."""
    started = api.get(url(f"orgs/{org}/admin-consent"), params={"tenant": tenant} if tenant else None, timeout=30)
    assert started.status_code == 200, started.text
    signed_in = emulator_client.authorize(started.json()["consent_url"], admin_upn)
    assert signed_in.startswith(url("auth/admin-consent/callback")), signed_in
    step = requests.get(signed_in, allow_redirects=False, timeout=30)
    if step.status_code != 302 or "/v2.0/adminconsent?" not in step.headers["Location"]:
        return step  # refused after the sign-in already
    consented = emulator_client.admin_consent(step.headers["Location"], admin_upn, accept)
    assert consented.startswith(url("auth/admin-consent/callback")), consented
    return requests.get(consented, allow_redirects=False, timeout=30)
