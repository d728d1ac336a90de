"""Cold start: importing function_app (what the Functions worker does to index the app) loads
azure.functions and the blueprints only; the SDKs and use cases load on the first invocation that needs
them. Each case runs in a fresh interpreter, so nothing imported by pytest or other tests counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDKS = ("requests", "msal", "azure.data.tables", "azure.storage.queue", "azure.identity", "cryptography")
# Built on the first invocation, never while indexing: adapters, auth, use cases and the domain model.
LAZY_PACKAGES = ("sync_core.adapters", "sync_core.auth", "sync_core.use_cases", "sync_core.domain")


def modules_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (from the project root)."""
    report = "\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + report],
        cwd=ROOT,
        env={**_clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return set(json.loads(completed.stdout.splitlines()[-1]))


def _clean_env() -> dict[str, str]:
    """The environment without app settings or Python path overrides, so only the code under test decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AzureWebJobs", "TABLE_PREFIX"))}


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def test_importing_the_function_app_imports_no_sdk() -> None:
    modules = modules_after("import function_app")

    assert {"function_app", "azure.functions", "triggers.crm", "triggers.scheduling"} <= modules
    assert loaded(modules, SDKS) == []


def test_importing_the_function_app_imports_no_adapter_use_case_or_domain_module() -> None:
    modules = modules_after("import function_app")

    assert loaded(modules, LAZY_PACKAGES) == []
    assert loaded(modules, ("sync_core.api",)) == ["sync_core.api", "sync_core.api.http"]


def test_a_crm_records_call_works_and_loads_the_table_sdk_but_not_msal_queues_or_cryptography(
    storage_connection_string: str,
) -> None:
    org = "org-" + uuid.uuid4().hex[:12]
    code = f"""
        import json
        import azure.functions as func
        import function_app

        functions = {{f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}}

        def call(name, method, body=b""):
            req = func.HttpRequest(method, "http://localhost/api/orgs/{org}/records/r1", body=body,
                                   headers={{"Content-Type": "application/json"}},
                                   route_params={{"org": "{org}", "record_id": "r1"}})
            return functions[name](req)

        put = call("put_record", "PUT", json.dumps({{"type": "contact", "emails": ["Ann@Example.com"]}}).encode())
        got = call("get_record", "GET")
        assert (put.status_code, got.status_code) == (200, 200), (put.get_body(), got.get_body())
        assert json.loads(got.get_body())["emails"] == ["ann@example.com"], got.get_body()
    """
    env = {"AzureWebJobsStorage": storage_connection_string, "TABLE_PREFIX": "cold" + uuid.uuid4().hex[:8]}

    modules = modules_after(code, env)

    assert "azure.data.tables" in modules
    assert loaded(modules, ("msal", "azure.storage.queue", "azure.identity", "cryptography")) == []
