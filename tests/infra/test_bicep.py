"""The deployment template in infra/ (issue 7): it parses, passes our own checks (bicep_checks.py) and
an IaC security scan (checkov), and deliberately weakened copies fail them.

checkov runs from its own venv, .venv-infra (``make install`` creates it; see requirements-infra.txt),
once, over a temp dir holding an exact copy of infra/ and a weakened one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.bicep_checks import (
    REDIRECT_PATHS,
    SPEC_SETTINGS,
    Finding,
    Template,
    app_settings,
    check_infra,
)

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
CHECKOV = ROOT / ".venv-infra" / "bin" / "checkov"


def weakened_copy(tmp_path: Path, name: str, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of infra/ with ``{file: (old, new)}`` applied; each ``old`` must occur exactly once."""
    target = tmp_path / name
    shutil.copytree(INFRA, target)
    for file, (old, new) in edits.items():
        path = target / file
        text = path.read_text()
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {file}"
        path.write_text(text.replace(old, new))
    return target


def checks(findings: list[Finding]) -> set[str]:
    return {finding.check for finding in findings}


def test_the_template_passes_every_check() -> None:
    findings = check_infra(INFRA)

    assert findings == [], "\n".join(map(str, findings))


def test_main_bicep_and_every_module_it_uses_are_parsed() -> None:
    template = Template(INFRA)

    assert set(template.files) == {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.bicep")}
    assert {"main.bicep", "modules/functionapp.bicep", "modules/storage.bicep"} <= set(template.files)
    assert {r.type for r in template.resources()} >= {
        "Microsoft.Web/serverfarms",
        "Microsoft.Web/sites",
        "Microsoft.Storage/storageAccounts",
        "Microsoft.KeyVault/vaults",
        "Microsoft.ManagedIdentity/userAssignedIdentities",
        "Microsoft.Authorization/roleAssignments",
        "Microsoft.Insights/components",
        "Microsoft.OperationalInsights/workspaces",
        "Microsoft.Insights/workbooks",
    }


def test_the_app_gets_every_setting_of_the_spec_and_secrets_only_as_key_vault_references() -> None:
    settings, _ = app_settings(Template(INFRA))

    assert set(SPEC_SETTINGS) <= set(settings)
    assert "AzureWebJobsStorage" not in settings
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    for name in ("GRAPH_CLIENT_SECRET", "TOKEN_ENCRYPTION_KEY"):
        assert settings[name].startswith("@Microsoft.KeyVault(SecretUri=")


def test_the_outputs_name_the_urls_to_register_on_the_entra_app() -> None:
    outputs = Template(INFRA).files["main.bicep"]["outputs"]

    assert [url.removeprefix("${appUrl}") for url in outputs["redirectUris"]["value"]] == list(REDIRECT_PATHS)
    assert {"appUrl", "functionAppName", "notificationUrls"} <= set(outputs)


WEAKENINGS: dict[str, tuple[dict[str, tuple[str, str]], set[str]]] = {
    "shared-key access on": (
        {"modules/storage.bicep": ("allowSharedKeyAccess: false", "allowSharedKeyAccess: true")},
        {"storage-shared-key"},
    ),
    "storage TLS 1.0": (
        {"modules/storage.bicep": ("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'")},
        {"storage-tls"},
    ),
    "HTTP allowed": ({"modules/functionapp.bicep": ("httpsOnly: true", "httpsOnly: false")}, {"site-https-only"}),
    "site TLS 1.0": (
        {"modules/functionapp.bicep": ("      minTlsVersion: '1.2'", "      minTlsVersion: '1.0'")},
        {"site-tls"},
    ),
    "FTP on": (
        {"modules/functionapp.bicep": ("ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'")},
        {"site-ftps"},
    ),
    "scm basic auth on": (
        {
            "modules/functionapp.bicep": (
                "name: 'scm'\n  properties: {\n    allow: false",
                "name: 'scm'\n  properties: {\n    allow: true",
            )
        },
        {"site-basic-auth"},
    ),
    "python 3.10": ({"modules/functionapp.bicep": ("version: '3.11'", "version: '3.10'")}, {"site-runtime"}),
    "a storage connection string": (
        {
            "modules/functionapp.bicep": (
                "    AzureWebJobsStorage__accountName: storageAccountName\n",
                "    AzureWebJobsStorage__accountName: storageAccountName\n"
                "    AzureWebJobsStorage: 'DefaultEndpointsProtocol=https;AccountName=${storageAccountName}'\n",
            )
        },
        {"settings-connection-string"},
    ),
    "a secret that is not a Key Vault reference": (
        {
            "modules/functionapp.bicep": (
                "GRAPH_CLIENT_SECRET: '@Microsoft.KeyVault(SecretUri=${graphClientSecretUri})'",
                "GRAPH_CLIENT_SECRET: graphClientSecretUri",
            )
        },
        {"settings-keyvault-ref"},
    ),
    "a Flex-deprecated setting": (
        {
            "modules/functionapp.bicep": (
                "    GRAPH_CLIENT_ID: graphClientId\n",
                "    GRAPH_CLIENT_ID: graphClientId\n    FUNCTIONS_WORKER_RUNTIME: 'python'\n",
            )
        },
        {"flex-deprecated"},
    ),
    "purge protection off": (
        {"modules/keyvault.bicep": ("enablePurgeProtection: true", "enablePurgeProtection: false")},
        {"keyvault-purge-protection"},
    ),
    "a secret parameter that is not secure": (
        {"main.bicep": ("@secure()\nparam graphClientSecret string", "param graphClientSecret string")},
        {"secure-params"},
    ),
    "queue data reader instead of contributor": (
        {
            "modules/roles.bicep": (
                "974c5e8b-45b9-4653-ba55-5f855dd0fb88')\n    principalId",
                "19e7f393-937e-4f77-808e-94535e297925')\n    principalId",
            )
        },
        {"roles"},
    ),
    "a wrong redirect URI output": (
        {"main.bicep": ("'${appUrl}/api/auth/admin-consent/callback'", "'${appUrl}/api/auth/consent'")},
        {"outputs"},
    ),
    "a module parameter left out": (
        {"main.bicep": ("    graphBaseUrl: graphBaseUrl\n", "")},
        {"module-params"},
    ),
    "a secret in the parameters file": (
        {
            "main.parameters.json": (
                '"parameters": {\n',
                '"parameters": {\n    "graphClientSecret": {"value": "s3cret"},\n',
            )
        },
        {"params"},
    ),
    "a workbook not linked to Application Insights": (
        {"modules/monitoring.bicep": ("    sourceId: appInsights.id\n", "    sourceId: workspace.id\n")},
        {"workbook"},
    ),
    "a workbook whose queries file is missing": (
        {"modules/monitoring.bicep": ("loadTextContent('../workbook.json')", "loadTextContent('../dashboard.json')")},
        {"workbook"},
    ),
    "a file that does not parse": (
        {"modules/monitoring.bicep": ("resource workspace", "resource workspace workspace")},
        {"parse"},
    ),
}


@pytest.mark.parametrize("weakening", list(WEAKENINGS))
def test_a_weakened_template_fails_with_exactly_the_finding_for_that_weakness(tmp_path: Path, weakening: str) -> None:
    edits, expected = WEAKENINGS[weakening]

    findings = check_infra(weakened_copy(tmp_path, "infra", edits))

    assert checks(findings) == expected, "\n".join(map(str, findings))


def run_checkov(scan: Path) -> dict[str, Any]:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run `make install` (it creates .venv-infra)")
    Template(INFRA)  # builds pycep's parser cache (shared with checkov's pycep) if it is not there yet
    result = subprocess.run(
        [str(CHECKOV), "-d", str(scan), "--framework", "bicep", "--compact", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
        check=False,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov exited {result.returncode} without a JSON report: {result.stderr[-3000:]}")
    assert isinstance(report, dict), "expected one report (bicep only)"
    return report


def in_dir(results: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in results if r["file_path"].startswith(f"/{name}/")]


def test_checkov_passes_infra_with_every_skip_justified_and_fails_a_weakened_copy(tmp_path: Path) -> None:
    # One checkov run (~15 s) over an exact copy of infra/ and a copy with storage TLS 1.0 and FTP on.
    shutil.copytree(INFRA, tmp_path / "infra")
    weakened_copy(
        tmp_path,
        "weakened",
        {
            "modules/storage.bicep": ("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'"),
            "modules/functionapp.bicep": ("ftpsState: 'Disabled'", "ftpsState: 'AllAllowed'"),
        },
    )

    report = run_checkov(tmp_path)

    results = report["results"]
    assert report["summary"]["parsing_errors"] == 0  # checkov skips a file it cannot parse, and exits 0
    assert len(in_dir(results.get("passed_checks", []), "infra")) >= 20
    assert [(r["check_id"], r["resource"]) for r in in_dir(results.get("failed_checks", []), "infra")] == []
    for skipped in in_dir(results.get("skipped_checks", []), "infra"):
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) >= 20 and reason != "No comment provided", (skipped["check_id"], skipped["resource"])
    weakened = {r["check_id"] for r in in_dir(results.get("failed_checks", []), "weakened")}
    assert {"CKV_AZURE_44", "CKV_AZURE_78"} <= weakened  # storage TLS, FTP
