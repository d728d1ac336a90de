"""Loading the app from its azure-functions metadata, and app settings precedence."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from devhost import LocalHost
from devhost.settings import (
    DEV_ACCOUNT_KEY,
    SettingsError,
    expand_development_storage,
    merge_settings,
    parse_timespan,
    storage_connection_string,
)

StartHost = Callable[..., LocalHost]


def test_all_functions_are_loaded_including_blueprint_ones(devhost_start: StartHost) -> None:
    host = devhost_start()
    assert sorted(host.functions) == sorted(
        ["item", "files", "secure", "boom", "echo", "pair", "setting", "tick", "startup_tick",
         "work", "done", "hello"]
    )
    assert host.functions["work"].trigger_type == "queueTrigger"  # from the blueprint
    assert host.functions["hello"].trigger["route"] == "hello"
    assert host.functions["tick"].trigger["schedule"] == "%TICK_SCHEDULE%"


def test_local_settings_are_read_and_environment_variables_override_them(
    devhost_start: StartHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERRIDDEN", "from-env")
    monkeypatch.delenv("GREETING", raising=False)
    host = devhost_start({"EXPLICIT": "from-settings"})

    def value(name: str) -> str | None:
        reply: str | None = requests.get(f"{host.base_url}/settings/{name}", timeout=5).json()["value"]
        return reply

    assert value("GREETING") == "from-file"
    assert value("OVERRIDDEN") == "from-env"
    assert value("EXPLICIT") == "from-settings"
    host.stop()
    assert "GREETING" not in os.environ  # the environment is restored on stop
    assert os.environ["OVERRIDDEN"] == "from-env"
    assert "EXPLICIT" not in os.environ


def test_a_failed_start_restores_the_environment(devhost_app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREETING", raising=False)
    (devhost_app_dir / "function_app.py").write_text("raise RuntimeError('broken app')\n")
    with pytest.raises(RuntimeError, match="broken app"):
        LocalHost(devhost_app_dir).start()
    assert "GREETING" not in os.environ


def test_explicit_settings_beat_environment_which_beats_the_file() -> None:
    merged = merge_settings({"A": "file", "B": "file"}, {"B": "env", "C": "env"}, {"A": "explicit"})
    assert merged == {"A": "explicit", "B": "env"}


def test_use_development_storage_means_azurite_on_its_default_ports() -> None:
    expanded = expand_development_storage("UseDevelopmentStorage=true")
    assert "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;" in expanded
    assert DEV_ACCOUNT_KEY in expanded
    proxied = expand_development_storage("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://azurite")
    assert "QueueEndpoint=http://azurite:10001/devstoreaccount1;" in proxied
    custom = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=k;QueueEndpoint=http://127.0.0.1:5/a;"
    assert expand_development_storage(custom) == custom


def test_a_connection_name_is_looked_up_as_is_then_with_the_azurewebjobs_prefix() -> None:
    settings = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "AzureWebJobsOther": "X=1"}
    assert "10001" in storage_connection_string("", settings)
    assert storage_connection_string("Other", settings) == "X=1"
    with pytest.raises(SettingsError):
        storage_connection_string("Missing", settings)


def test_host_json_timespans_are_parsed() -> None:
    assert parse_timespan("00:00:02").total_seconds() == 2
    assert parse_timespan("1.02:03:04.5").total_seconds() == 93784.5
    with pytest.raises(SettingsError):
        parse_timespan("2s")


def test_an_encrypted_local_settings_file_is_refused(devhost_app_dir: Path) -> None:
    (devhost_app_dir / "local.settings.json").write_text(json.dumps({"IsEncrypted": True, "Values": {}}))
    with pytest.raises(SettingsError):
        LocalHost(devhost_app_dir).start()


LAZY_APP = '''
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="lazy")
def lazy(req: func.HttpRequest) -> func.HttpResponse:
    import lazy_helper  # imported at call time, like services built on first use

    return func.HttpResponse(lazy_helper.VALUE)
'''


def test_another_module_name_is_served_and_its_folder_stays_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOCAL_FUNCTIONS_KEY", raising=False)
    (tmp_path / "lazy_app.py").write_text(LAZY_APP)
    (tmp_path / "lazy_helper.py").write_text("VALUE = 'imported late'\n")
    with LocalHost(tmp_path, module="lazy_app") as host:
        assert list(host.functions) == ["lazy"]
        assert requests.get(f"{host.base_url}/lazy", timeout=5).text == "imported late"
    assert str(tmp_path) not in sys.path
