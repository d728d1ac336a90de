"""Restarting the local stack keeps a connected mailbox syncing: the emulator restored from its state dir
(``--persist``, the way ``make run`` starts it) and a new local host, against the same Azurite, twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from devhost import LocalHost
from emulator.client import EmulatorClient
from emulator.server import EmulatorServer
from tests import connect_flow
from tests.app_settings import register_app
from tools.azurite import free_port

ROOT = Path(__file__).resolve().parents[2]
FUNCTION_KEY = "restart-function-key"
RETURN_URL = "https://crm.example/app/mailboxes"
DAN = "dan@talent.example"


@contextmanager
def running_app(settings: dict[str, str], port: int) -> Iterator[LocalHost]:
    with LocalHost(ROOT, port=port, settings=settings, run_timers=False) as host:
        yield host


def test_a_connected_mailbox_keeps_syncing_across_two_restarts_of_the_emulator_and_the_host(
    tmp_path: Path, storage_connection_string: str
) -> None:
    emulator_port, host_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{host_port}"
    url = lambda path: f"{origin}/api/{path.lstrip('/')}"  # noqa: E731
    org = "org-" + uuid.uuid4().hex[:12]
    api = requests.Session()
    api.headers["x-functions-key"] = FUNCTION_KEY

    def emulator() -> EmulatorServer:
        return EmulatorServer(port=emulator_port, state_dir=tmp_path / "emulator", persist=True)

    def deliver_and_sync(client: EmulatorClient, host: LocalHost, mailbox_id: str, upn: str, subject: str) -> None:
        client.deliver(upn, from_=f"Dan <{DAN}>", to=[upn], subject=subject)
        assert api.post(url(f"orgs/{org}/mailboxes/{mailbox_id}/sync"), timeout=30).status_code == 202
        host.drain_queues(timeout=30)

    def stored_subjects() -> list[str]:
        listed = api.get(url(f"orgs/{org}/records/cand-dan/activities"), timeout=30)
        assert listed.status_code == 200, listed.text
        return sorted(a["subject"] for a in listed.json()["activities"])

    with emulator() as server:
        client = EmulatorClient(server.url, server.ca_bundle_path)
        tenant = client.provision_tenant("restart")
        upn = tenant.users["adele"].upn
        app = register_app(
            "restart", origin, function_key=FUNCTION_KEY, storage_connection_string=storage_connection_string,
            emulator=server, emulator_client=client,
        )
        with running_app(app.settings, host_port) as host:
            settings = {"internal_domains": [tenant.domain], "return_url_allow_list": ["https://crm.example/app"]}
            assert api.put(url(f"orgs/{org}/settings"), json=settings, timeout=30).status_code == 200
            record = {"type": "candidate", "name": "Dan", "emails": [DAN]}
            assert api.put(url(f"orgs/{org}/records/cand-dan"), json=record, timeout=30).status_code == 200
            mailbox_id = connect_flow.connect(api, url, client, org, upn, return_url=RETURN_URL)
            deliver_and_sync(client, host, mailbox_id, upn, "before any restart")
            assert stored_subjects() == ["before any restart"]

    expected = ["before any restart"]
    for restart in (1, 2):
        with emulator() as server, running_app(app.settings, host_port) as host:
            assert server.restored is True
            client = EmulatorClient(server.url, server.ca_bundle_path)
            subject = f"after restart {restart}"
            deliver_and_sync(client, host, mailbox_id, upn, subject)
            expected.append(subject)
            assert stored_subjects() == sorted(expected)
            mailbox = api.get(url(f"orgs/{org}/mailboxes/{mailbox_id}"), timeout=30).json()
            assert mailbox["status"] == "active", mailbox
    api.close()
