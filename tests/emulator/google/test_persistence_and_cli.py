"""The Google emulator keeps its state across restarts with ``--persist``, and ``python -m emulator
--google-port`` runs it beside the Graph emulator with the demo seed."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import requests

from emulator.google.server import STATE_FILE, GoogleEmulatorServer
from emulator.google.state import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_REDIRECT_URIS
from tests.emulator.google.world import READONLY

ROOT = Path(__file__).resolve().parents[3]


def session(server_bundle: Path) -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    http.verify = str(server_bundle)
    return http


def connect_demo_user(http: requests.Session, url: str, user: str) -> dict[str, str]:
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    auth_uri = f"{url}/o/oauth2/v2/auth?" + urlencode({
        "client_id": DEMO_CLIENT_ID, "redirect_uri": DEMO_REDIRECT_URIS[0], "response_type": "code",
        "scope": f"openid email {READONLY}", "access_type": "offline", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    redirect = http.post(f"{url}/_emulator/authorize", json={"auth_uri": auth_uri, "user": user}).json()
    code = parse_qs(urlsplit(redirect["redirect_url"]).query)["code"][0]
    tokens: dict[str, str] = http.post(f"{url}/token", data={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": DEMO_REDIRECT_URIS[0], "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET}).json()
    return tokens


def test_a_restarted_emulator_with_persist_keeps_grants_mail_and_history(tmp_path: Path) -> None:
    with GoogleEmulatorServer(state_dir=tmp_path, seed="demo", persist=True) as first:
        http = session(first.ca_bundle_path)
        tokens = connect_demo_user(http, first.url, "nestor@tailspin.example")
        http.post(f"{first.url}/_emulator/users/nestor@tailspin.example/messages", json={"subject": "Kept"})
        headers = {"Authorization": f"Bearer {tokens['access_token']}"}
        profile = http.get(f"{first.url}/gmail/v1/users/me/profile", headers=headers).json()
        jwks = http.get(f"{first.url}/oauth2/v3/certs").json()
    assert (tmp_path / STATE_FILE).exists()
    with GoogleEmulatorServer(state_dir=tmp_path, seed="demo", persist=True) as second:
        assert second.restored
        http = session(second.ca_bundle_path)
        refreshed = http.post(f"{second.url}/token", data={
            "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": DEMO_CLIENT_ID, "client_secret": DEMO_CLIENT_SECRET})
        assert refreshed.status_code == 200, refreshed.text
        headers = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
        again = http.get(f"{second.url}/gmail/v1/users/me/profile", headers=headers).json()
        assert again == profile
        assert http.get(f"{second.url}/oauth2/v3/certs").json() == jwks


def test_python_m_emulator_runs_the_google_emulator_beside_graph_with_the_demo_seed(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", "--google-port", "0", "--state-dir", str(tmp_path),
         "--seed", "demo"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ},
    )
    try:
        assert process.stdout is not None
        graph_line = process.stdout.readline()
        google_line = process.stdout.readline()
        assert graph_line.startswith("emulator ready https://localhost:")
        assert google_line.startswith("google emulator ready https://localhost:")
        url = google_line.split()[-1]
        http = session(tmp_path / "ca-bundle.pem")
        tokens = connect_demo_user(http, url, "lidia@tailspin.example")
        profile = http.get(f"{url}/gmail/v1/users/me/profile",
                           headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert profile.json()["emailAddress"] == "lidia@tailspin.example"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
