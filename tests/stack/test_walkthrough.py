"""The README's walkthrough ("Try it"), command for command, against ``make run``'s own stack
(``python -m tools.stack run`` on free ports with its state in a temp folder); and ``make run``'s hints
print the walkthrough's own commands."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import requests

from emulator.client import EmulatorClient
from tests.stack.test_stack_cli import Ports, start, stop_and_check_nothing_is_left
from tools import demo
from tools.stack import Layout, app_hints

ROOT = Path(__file__).resolve().parents[2]
BLOCK_DONE = "@@walkthrough block {} done@@"


def walkthrough_blocks() -> list[str]:
    """The ```sh blocks between the README's walkthrough markers (```text blocks are for the reader)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- walkthrough:start -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def json_values(text: str) -> list[Any]:
    """Every JSON document jq printed (a line starting with ``{`` or ``[`` starts one)."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while (found := re.compile(r"^[{\[]", re.MULTILINE).search(text, position)) is not None:
        value, position = decoder.raw_decode(text, found.start())
        values.append(value)
    return values


def test_the_readme_walkthrough_runs_as_written_against_make_runs_stack(tmp_path: Path) -> None:
    local, ports = tmp_path / "local", Ports.free()
    origin = f"http://127.0.0.1:{ports.host}"
    # The demo app registration names port 7071; on a free port the stack gets one naming that port.
    client_id, secret = str(uuid.uuid4()), f"secret-{uuid.uuid4().hex}"
    google_id, google_secret = f"{uuid.uuid4().hex}.apps.googleusercontent.com", f"GOCSPX-{uuid.uuid4().hex}"
    app_env = {"GRAPH_CLIENT_ID": client_id, "GRAPH_CLIENT_SECRET": secret, "PUBLIC_BASE_URL": origin,
               "GOOGLE_CLIENT_ID": google_id, "GOOGLE_CLIENT_SECRET": google_secret}  # fmt: skip
    ca_bundle = local / "emulator" / "ca-bundle.pem"
    # The only changes to the README's commands: this stack's ports and state folder instead of the defaults.
    substitutions = {
        "127.0.0.1:7071": f"127.0.0.1:{ports.host}",
        "localhost:8443": f"localhost:{ports.emulator}",
        "CA=.local/emulator/ca-bundle.pem": f"CA={ca_bundle}",
        "python -m tools.demo mail": (
            f"python -m tools.demo mail --emulator-url https://localhost:{ports.emulator} --ca-bundle {ca_bundle}"
        ),
    }
    blocks = walkthrough_blocks()
    assert len(blocks) == 13

    started = start("run", local, tmp_path / "run.txt", ports, app_env)
    try:
        EmulatorClient(f"https://localhost:{ports.emulator}", ca_bundle).create_app(
            client_id, secret, [f"{origin}/api/auth/callback", f"{origin}/api/auth/admin-consent/callback"],
            ["Mail.Read", "User.Read.All"],
        )
        # This stack's mail server and Google emulator ports, as make run prints them.
        printed = started.text()
        imaps = re.search(r"Dovecot \(IMAPS (\d+),", printed)
        submission = re.search(r"SMTP submission \((\d+) STARTTLS", printed)
        google = re.search(r"Google emulator \(OAuth, Gmail API, Pub/Sub push\) on https://localhost:(\d+)", printed)
        assert imaps and submission and google, printed
        substitutions |= {
            '"port": 10993': f'"port": {imaps[1]}',
            '"port": 10587': f'"port": {submission[1]}',
            "localhost:8444": f"localhost:{google[1]}",
        }
        answer = requests.post(
            f"https://localhost:{google[1]}/_emulator/clients", verify=ca_bundle, timeout=30,
            json={"client_id": google_id, "client_secret": google_secret,
                  "redirect_uris": [f"{origin}/api/auth/callback"]},
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        script = ["set -euo pipefail"]
        for number, block in enumerate(blocks):
            command = block
            for default, here in substitutions.items():
                command = command.replace(default, here)
            script += [command, f"echo '{BLOCK_DONE.format(number)}'"]
        ran = subprocess.run(
            ["/bin/bash", "-c", "\n".join(script)], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
        )
        output = ran.stdout
        assert ran.returncode == 0, f"{output}\n{ran.stderr}"
        outputs = [part for part in re.split(r"@@walkthrough block \d+ done@@\n", output)][: len(blocks)]
        assert len(outputs) == len(blocks), output
        _setup, connect, _terminal_sign_in, confirm, mail, sync, timeline, explain, *more = outputs
        send, sent, retry, imap, gmail = more

        assert connect.startswith(f"https://localhost:{ports.emulator}/organizations/oauth2/v2.0/authorize?"), connect
        mailbox = json_values(confirm)[0]
        assert mailbox["address"] == "adele@contoso.example" and mailbox["status"] == "active", mailbox
        assert "delivered: Interview on Thursday" in mail and "delivered: Signed proposal" in mail
        assert json_values(mail)[0]["requests"] >= 0, mail  # the emulator answers over HTTPS with its CA
        run = json_values(sync)[0]
        assert run["status"] == "done", run
        dan, erin = json_values(timeline)
        assert {"subject": "Interview on Thursday", "direction": "received"} in dan
        assert sorted(a["subject"] for a in erin) == ["Proposal review", "RE: Proposal review", "Signed proposal"]
        matched, newsletter = json_values(explain)
        assert matched == {"store": True, "reason": "matched"}
        assert newsletter == {"store": False, "reason": "bulk"}
        assert "Quick question" not in timeline  # the unmatched mail is on no timeline

        settings, sent_send = json_values(send)
        assert settings == {"sending_enabled": True}
        assert sent_send["status"] == "sent" and sent_send["internet_message_id"], sent_send
        assert sent_send["activity_id"], sent_send  # Dan's record wants it
        dan_after = json_values(sent)[0]
        assert dan_after.count({"subject": "Thursday at 10", "direction": "sent", "sent_from_crm": True}) == 1
        assert {"subject": "Interview on Thursday", "direction": "received", "sent_from_crm": False} in dan_after
        assert "idempotent-replayed: true" in retry.lower(), retry
        assert json_values(retry)[-1] == {"same_send": True, "status": "sent"}
        sends = requests.get(f"{origin}/api/orgs/demo/mailboxes/{mailbox['id']}/sends", timeout=30).json()
        assert [s["id"] for s in sends["sends"]] == [sent_send["id"]], sends  # one send, however often asked
        outbox = EmulatorClient(f"https://localhost:{ports.emulator}", ca_bundle).outbox(
            sent_send["internet_message_id"]
        )
        assert len(outbox) == 1, outbox  # and one message left for Dan

        assert json_values(imap) == [{"address": "demo@imap.example", "provider": "imap", "status": "active"}]
        assert json_values(gmail) == [{"address": "nestor@tailspin.example", "provider": "google", "status": "active"}]

        # make run seeded the demo org through the API; seeding again (a restart) changes nothing.
        demo.seed(f"{origin}/api")
        record = requests.get(f"{origin}/api/orgs/demo/records/acct-northwind", timeout=30).json()
        assert record["domains"] == ["northwind.example"], record
    finally:
        stop_and_check_nothing_is_left(started, signal.SIGTERM)


def test_make_runs_hints_print_the_walkthroughs_own_commands() -> None:
    commands = [line.strip() for line in app_hints(Layout()).splitlines() if line.startswith("  ")]
    walkthrough = {line.strip() for block in walkthrough_blocks() for line in block.splitlines()}
    assert commands and [c for c in commands if c not in walkthrough] == []
    assert "CA=.local/emulator/ca-bundle.pem" in commands
    assert any("--cacert" in c for c in commands)
