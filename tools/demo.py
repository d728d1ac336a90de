"""The demo: the ``demo`` org's settings (sending on) and records, and sample mail for adele's mailbox.

    python -m tools.demo seed     # settings + records of org "demo" (make run does this once the app is up)
    python -m tools.demo mail     # sample mail of every kind into adele's mailbox (after connecting it)

``seed`` goes through the product's own API (``PUT …/settings``, ``POST …/records:batch``), and is
idempotent: records are upserted by id, so a restart or a second call changes nothing. ``mail`` goes
through the emulator's control API and delivers, received now: a matched mail, an unmatched one, a
newsletter (bulk: ``List-Unsubscribe``) from a record's address, a thread with adele's reply in Sent
Items, and a mail with an attachment. Its Message-IDs are fixed (the README's explain step names one).
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import requests

from emulator.client import EmulatorClient

ROOT = Path(__file__).resolve().parent.parent
DEMO_ORG = "demo"
DEMO_MAILBOX = "adele@contoso.example"
RETURN_URL = "http://localhost:3000/connected"
# Sending on from the start: a delegated connect then asks for Mail.ReadWrite and Mail.Send too
# (docs/sending.md), so the walkthrough's mailbox can send without connecting again.
SETTINGS: dict[str, Any] = {
    "internal_domains": ["contoso.example"], "return_url_allow_list": [RETURN_URL], "sending_enabled": True,
}
RECORDS: list[dict[str, Any]] = [
    {"id": "cand-dan", "type": "candidate", "name": "Dan Jump", "emails": ["dan@talent.example"]},
    {"id": "contact-erin", "type": "contact", "name": "Erin Hill", "emails": ["erin@fabrikam.example"]},
    {"id": "acct-northwind", "type": "account", "name": "Northwind Traders",
     "emails": ["news@northwind.example"], "domains": ["northwind.example"]},
]
MATCHED_ID = "<demo-matched@talent.example>"
THREAD_ID = "<demo-thread@fabrikam.example>"


def seed(base_url: str, key: str | None = None) -> None:
    """The demo org's settings and records through the app's API (``base_url`` ends in ``/api``)."""
    headers = {"x-functions-key": key} if key else {}
    with requests.Session() as api:
        api.headers.update(headers)
        answer = api.put(f"{base_url}/orgs/{DEMO_ORG}/settings", json=SETTINGS, timeout=30)
        answer.raise_for_status()
        answer = api.post(f"{base_url}/orgs/{DEMO_ORG}/records:batch", json={"upsert": RECORDS}, timeout=30)
        answer.raise_for_status()


def mail(emulator: EmulatorClient, user: str = "adele") -> list[str]:
    """Deliver the sample mail into ``user``'s mailbox; returns the subjects delivered."""
    me = DEMO_MAILBOX
    dan, erin = "Dan Jump <dan@talent.example>", "Erin Hill <erin@fabrikam.example>"
    reply_id = "<demo-thread-reply@contoso.example>"
    report = base64.b64encode(b"%PDF-1.4\n% demo proposal\n").decode("ascii")
    samples: list[dict[str, Any]] = [
        {"from_": dan, "to": [me], "subject": "Interview on Thursday", "internet_message_id": MATCHED_ID,
         "body": "Hi Adele, Thursday at 10 works for me. Dan"},
        {"from_": "Sam Stranger <sam@nowhere.example>", "to": [me], "subject": "Quick question",
         "internet_message_id": "<demo-unmatched@nowhere.example>", "body": "Not in the CRM: never stored."},
        {"from_": "Northwind News <news@northwind.example>", "to": [me], "subject": "Northwind monthly newsletter",
         "internet_message_id": "<demo-newsletter@northwind.example>", "body": "Our news this month.",
         "headers": [{"name": "List-Unsubscribe", "value": "<mailto:unsubscribe@northwind.example>"}]},
        {"from_": erin, "to": [me], "subject": "Proposal review", "internet_message_id": THREAD_ID,
         "body": "Can we review the proposal next week?"},
        {"from_": f"Adele Vance <{me}>", "to": [erin], "subject": "RE: Proposal review", "folder": "sentitems",
         "internet_message_id": reply_id, "in_reply_to": THREAD_ID, "references": [THREAD_ID],
         "body": "Tuesday works. Adele"},
        {"from_": erin, "to": [me], "subject": "Signed proposal",
         "internet_message_id": "<demo-attachment@fabrikam.example>", "body": "Attached, signed.",
         "attachments": [{"name": "proposal.pdf", "content_type": "application/pdf", "content_base64": report}]},
    ]
    for sample in samples:
        emulator.deliver(user, **sample)
    return [str(sample["subject"]) for sample in samples]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo")
    commands = parser.add_subparsers(dest="command", required=True)
    seed_command = commands.add_parser("seed", help="settings and records of the demo org, through the app's API")
    seed_command.add_argument("--base-url", default="http://127.0.0.1:7071/api")
    seed_command.add_argument("--key", default=None, help="function key (LOCAL_FUNCTIONS_KEY), if set")
    mail_command = commands.add_parser("mail", help="sample mail of every kind into adele's mailbox")
    mail_command.add_argument("--emulator-url", default="https://localhost:8443")
    mail_command.add_argument("--ca-bundle", type=Path, default=ROOT / ".local" / "emulator" / "ca-bundle.pem")
    mail_command.add_argument("--user", default="adele")
    options = parser.parse_args(argv)
    if options.command == "seed":
        seed(options.base_url.rstrip("/"), options.key)
        print(f"org {DEMO_ORG!r}: settings and {len(RECORDS)} records in place")
        return 0
    for subject in mail(EmulatorClient(options.emulator_url, options.ca_bundle), options.user):
        print(f"delivered: {subject}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
