"""The token-key commands of docs/deploy.md, run as written: the first deploy's key, the redeploy that
reads the vault back, and the rotation with two keys live, each parsed by the app's own TokenCipher.

``az`` is a stand-in on PATH that answers ``az keyvault secret show`` with the vault's current value (the
real one needs Azure); ``date`` and ``openssl`` are the real ones. Each command must appear verbatim in the
doc, so the doc and this test change together.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sync_core.auth.crypto import TokenCipher

DOC = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text(encoding="utf-8")
FIRST = 'TOKEN_KEY="k$(date -u +%Y%m%d%H%M):$(openssl rand -base64 32)"'
READ_BACK = 'TOKEN_KEY=$(az keyvault secret show --vault-name "$KV" --name token-encryption-key --query value -o tsv)'
ROTATE = (
    'CURRENT=$(az keyvault secret show --vault-name "$KV" --name token-encryption-key --query value -o tsv)\n'
    'TOKEN_KEY="k$(date -u +%Y%m%d%H%M):$(openssl rand -base64 32),$CURRENT"'
)
DROP_OLD = (
    'TOKEN_KEY=$(az keyvault secret show --vault-name "$KV" --name token-encryption-key --query value -o tsv'
    " | cut -d, -f1)"
)
FAKE_AZ = """#!/bin/sh
case "$*" in
  "keyvault secret show --vault-name kv-test --name token-encryption-key --query value -o tsv")
    printf '%s\\n' "$VAULT_VALUE";;
  *) echo "unexpected: az $*" >&2; exit 2;;
esac
"""


def run_doc_command(command: str, vault_value: str, tmp_path: Path) -> str:
    """Run ``command`` in bash with the stand-in ``az``; returns ``$TOKEN_KEY`` afterwards."""
    for line in command.splitlines():
        assert line in DOC, f"docs/deploy.md no longer shows: {line}"
    (tmp_path / "az").write_text(FAKE_AZ, encoding="utf-8")
    (tmp_path / "az").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "VAULT_VALUE": vault_value, "KV": "kv-test"}
    script = f'set -eu\n{command}\nprintf "%s" "$TOKEN_KEY"\n'
    bash = shutil.which("bash")
    assert bash, "the doc's commands are bash"
    done = subprocess.run([bash, "-c", script], env=env, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def test_the_first_deploys_key_is_one_fresh_key_the_app_accepts(tmp_path: Path) -> None:
    cipher = TokenCipher.from_setting(run_doc_command(FIRST, "", tmp_path))

    assert len(cipher.kids) == 1 and cipher.current_kid.startswith("k2")


def test_a_redeploy_passes_exactly_the_key_the_vault_holds(tmp_path: Path) -> None:
    held = TokenCipher.generate_setting("k1")

    assert run_doc_command(READ_BACK, held, tmp_path) == held


def test_rotation_puts_a_new_key_in_front_keeps_the_old_one_readable_and_then_drops_it(tmp_path: Path) -> None:
    old_setting = TokenCipher.generate_setting("k1")
    sealed_under_old = TokenCipher.from_setting(old_setting).encrypt(b"token cache", b"aad")

    both = run_doc_command(ROTATE, old_setting, tmp_path)
    rotating = TokenCipher.from_setting(both)
    resealed = rotating.encrypt(b"token cache", b"aad")
    only_new = TokenCipher.from_setting(run_doc_command(DROP_OLD, both, tmp_path))

    assert rotating.kids[1] == "k1" and rotating.current_kid != "k1"
    assert rotating.decrypt(sealed_under_old, b"aad") == b"token cache"
    assert rotating.key_id(resealed) == rotating.current_kid
    assert only_new.kids == (rotating.current_kid,)
    assert only_new.decrypt(resealed, b"aad") == b"token cache"
