"""What each make target installs, read from make's own plan (``make -nB``: every command it would run on
a fresh clone, nothing run): running needs ``.venv`` and ``node_modules`` only, testing adds the checkov
venv that tests/infra scans with."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def plan(target: str) -> str:
    make = shutil.which("make")
    assert make is not None, "make is needed to run `make test`, so it is here"
    return subprocess.run([make, "-nB", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("target", ["run", "services"])
def test_running_installs_the_app_venv_and_node_modules_but_not_the_infra_scan_venv(target: str) -> None:
    commands = plan(target)

    assert "-r requirements-dev.txt" in commands
    assert "npm ci" in commands
    assert ".venv-infra" not in commands
    assert "requirements-infra.txt" not in commands
    assert f"-m tools.stack {target}" in commands


def test_make_test_on_a_fresh_clone_installs_the_infra_scan_venv_before_the_suite() -> None:
    commands = plan("test")

    assert "-r requirements-infra.txt" in commands
    assert commands.index("requirements-infra.txt") < commands.index("-m tools.stack test")


def test_make_clean_deletes_the_local_state_of_azurite_and_the_emulator_and_keeps_the_installs() -> None:
    commands = plan("clean")

    assert "rm -rf .local " in commands
    assert ".venv" not in commands and "node_modules" not in commands
