"""``python -m tools.smoke``, the operator's after-deploy check, against the real function_app in the local
host: it passes on a healthy app, leaves no record behind, and names the check that fails."""

from __future__ import annotations

import io

import requests

from emulator.server import EmulatorServer
from tests.e2e.conftest import FUNCTION_KEY, AppUnderTest
from tools import smoke


def run_smoke(app_host: AppUnderTest, emulator: EmulatorServer, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = smoke.main(["--base-url", app_host.origin, "--authority", emulator.url, *args], out=out)
    return status, out.getvalue()


def test_a_healthy_app_passes_every_check_and_the_smoke_record_is_gone(
    app_host: AppUnderTest, api: requests.Session, emulator: EmulatorServer, org: str
) -> None:
    status, report = run_smoke(app_host, emulator, "--key", FUNCTION_KEY, "--org", org)

    assert status == 0, report
    assert [line.split(":")[0] for line in report.splitlines()] == [
        "ok    health", "ok    openapi", "ok    function key", "ok    settings", "ok    records", "ok    connect url",
    ]  # fmt: skip
    assert f"redirect_uri {app_host.url('auth/callback')}" in report
    assert api.get(app_host.url(f"orgs/{org}/records/smoke-test-record")).status_code == 404
    assert FUNCTION_KEY not in report


def test_a_wrong_key_fails_the_keyed_checks_and_says_which(
    app_host: AppUnderTest, emulator: EmulatorServer, org: str
) -> None:
    status, report = run_smoke(app_host, emulator, "--key", "not-the-key", "--org", org)

    assert status == 1
    failed = [line.split(":")[0].removeprefix("FAIL  ") for line in report.splitlines() if line.startswith("FAIL")]
    assert failed == ["function key", "settings", "records", "connect url"]
    assert "ok    health" in report and "not-the-key" not in report


def test_a_sign_in_that_goes_to_another_authority_fails_the_connect_check(
    app_host: AppUnderTest, emulator: EmulatorServer, org: str
) -> None:
    out = io.StringIO()
    argv = ["--base-url", app_host.origin, "--key", FUNCTION_KEY, "--org", org]

    status = smoke.main(argv, out=out)  # default authority: Microsoft's, but this app signs in at the emulator

    assert status == 1
    assert "FAIL  connect url: the sign-in goes to" in out.getvalue()
