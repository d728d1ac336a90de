"""The sync run wired as in production for Gmail mailboxes: the Gmail API over HTTPS (the Google
emulator), Google OAuth grants stored encrypted in the token-cache table, every store on Azurite.

``GmailSyncEnv`` offers what ``SyncEnv`` (the Graph one) offers the engine's integration suite —
``deliver``, ``deliver_many``, ``send``, ``expire_delta_state``, ``graph_messages`` (the mailbox's
listing as the test's oracle), ``requests_seen``, ``sync``, ``activities`` … — so the suite runs on
either provider through the ``mail_env`` fixture (``microsoft`` and ``google``). Graph-style delivery
fields (``from_``, ``folder``, ``received``, ``internet_message_id``, ``headers`` as name/value pairs,
``attachments`` with a ``size``, ``body_type``) are translated to the Google emulator's control API
(``folder="sentitems"`` is the SENT label).

Each test gets a fresh Workspace domain with users adele@ and megan@ and an OAuth client; both are
connected through the product's own ``GoogleIdentity`` (authorize URL, the emulator's consent, code
redemption with PKCE), so the stored grants are what a real connect stores.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
from azure.data.tables import TableServiceClient

from emulator.google.server import GoogleEmulatorServer
from emulator.server import EmulatorServer
from sync_core.adapters.clock import SystemClock
from sync_core.adapters.google.http import GmailHttp
from sync_core.adapters.google.identity import GoogleIdentity
from sync_core.adapters.google.mail import PAGE_SIZE, GmailMailSource
from sync_core.adapters.google.tokens import GoogleTokenSource
from sync_core.adapters.graph.session import make_session
from sync_core.adapters.tables import TableStores
from sync_core.auth.crypto import TokenCipher
from sync_core.auth.token_cache_store import TableTokenCacheStore
from sync_core.domain.model import ConnectionMode, Mailbox, OrgSettings
from sync_core.ports import ActivityStore, MailSource
from sync_core.ports.identity import mailbox_owner
from sync_core.use_cases.sync_mailbox import SyncDeps, SyncOutcome, sync_mailbox
from tests.integration.sync_env import ADELE, MEGAN, NEVER_LOG, ORG, RECORDS, SyncEnv, iso

REDIRECT_URI = "https://sync.example.net/api/auth/callback"
LABELS = {"inbox": "INBOX", "sentitems": "SENT"}


class GmailSyncEnv(SyncEnv):
    """``SyncEnv``'s interface on Gmail mailboxes (see the module docstring)."""

    provider = "google"

    def __init__(  # noqa: PLR0917
        self,
        google: GoogleEmulatorServer,
        service: TableServiceClient,
        prefix: str,
        ca_bundle: str,
        watermark: datetime,
        stores: TableStores | None = None,
        mailbox_ids: tuple[str, str] = (ADELE, MEGAN),
    ) -> None:
        """With ``stores`` (another env's), the org's settings and records are that env's, and adele's
        and megan's Gmail mailboxes are added to them under ``mailbox_ids``."""
        self.google_url = google.url
        self.service = service
        self.prefix = prefix
        self.ca_bundle = ca_bundle
        self.watermark = watermark
        self.clock = SystemClock()
        self.session = make_session(ca_bundle)
        self.control = requests.Session()
        self.control.verify = str(google.ca_bundle_path)
        self.control.trust_env = False
        self._domain = f"g{uuid.uuid4().hex[:10]}.example"
        self.stores = stores or TableStores.create(service, prefix)
        self.tokens = TableTokenCacheStore(service, TokenCipher.from_setting(TokenCipher.generate_setting()), prefix)
        self._call("POST", "domains", {"domain": self.domain})
        for user in ("adele", "megan"):
            self._call("POST", "users", {"email": self.address(user), "name": user.title()})
        self.emulator_defaults = self._call("GET", "config")
        client = self._call("POST", "clients", {"redirect_uris": [REDIRECT_URI]})
        self.client_id, self.client_secret = str(client["client_id"]), str(client["client_secret"])
        self.identity = GoogleIdentity(
            self.session, self.client_id, self.client_secret, f"{self.google_url}/o/oauth2/v2/auth",
            f"{self.google_url}/token", self.token_source_for,
        )  # fmt: skip
        if stores is None:
            self.stores.settings.put(ORG, OrgSettings(internal_domains=(self.domain,), never_log=NEVER_LOG))
            self.stores.records.upsert(ORG, list(RECORDS))
        self.ids = dict(zip(("adele", "megan"), mailbox_ids, strict=True))
        self.mailboxes = {mid: self.connect(user, mid) for user, mid in self.ids.items()}
        self.ledger: dict[str, dict[str, str]] = {}  # Gmail id -> {subject, internetMessageId}

    @property
    def domain(self) -> str:
        return self._domain

    # -- Google emulator control API ---------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        response = self.control.request(method, f"{self.google_url}/_emulator/{path}", json=body, timeout=30)
        assert response.status_code < 300, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def connect(self, user: str, mailbox_id: str, *, aliases: tuple[str, ...] | None = None) -> Mailbox:
        """A delegated connect through the product's GoogleIdentity; the grant is stored as connect stores it."""
        flow = self.identity.initiate_connect(REDIRECT_URI, self.address(user))
        answer = self._call("POST", "authorize", {"auth_uri": flow["auth_uri"], "user": self.address(user)})
        query = dict(parse_qsl(urlsplit(answer["redirect_url"]).query))
        grant = self.identity.redeem_connect(flow, query)
        self.tokens.put(ORG, mailbox_owner(mailbox_id), grant.serialized_cache, None)
        address = self.address(user)
        if aliases is None:
            aliases = (address, f"adele.vance@{self.domain}") if user == "adele" else (address,)
        mailbox = Mailbox(
            ORG, mailbox_id, address, aliases, watermark=self.watermark, mode=ConnectionMode.DELEGATED,
            graph_user_id=grant.object_id, provider="google",
        )  # fmt: skip
        if self.stores.mailboxes.get(ORG, mailbox_id) is None:
            self.stores.mailboxes.add(mailbox)
        return mailbox

    def token_source_for(self, mailbox: Mailbox) -> GoogleTokenSource:
        return GoogleTokenSource(
            self.session, f"{self.google_url}/token", self.client_id, self.client_secret, self.tokens, mailbox
        )

    def gmail_for(self, mailbox: Mailbox) -> GmailHttp:
        return GmailHttp(self.session, self.google_url, self.token_source_for(mailbox), backoff_cap=2.0)

    def mail_source(self, page_size: int = PAGE_SIZE) -> MailSource:
        return GmailMailSource(self.gmail_for, page_size=page_size)

    # -- SyncEnv's interface ------------------------------------------------------------------------

    def deps(
        self, *, page_size: int = PAGE_SIZE, activities: ActivityStore | None = None, stores: TableStores | None = None
    ) -> SyncDeps:
        s = stores or self.stores
        return SyncDeps(
            mailboxes=s.mailboxes, settings=s.settings, records=s.records, activities=activities or s.activities,
            cursors=s.cursors, leases=s.leases, reports=s.runs, mail=self.mail_source(page_size), clock=self.clock,
            table_transactions=lambda: s.metrics.transactions, state=s.sync_state,
        )  # fmt: skip

    def sync(
        self,
        mailbox_id: str = ADELE,
        *,
        page_size: int = PAGE_SIZE,
        activities: ActivityStore | None = None,
        stores: TableStores | None = None,
        budget: timedelta = timedelta(minutes=4),
    ) -> SyncOutcome:
        deps = self.deps(page_size=page_size, activities=activities, stores=stores)
        return sync_mailbox(deps, ORG, mailbox_id, budget)

    def user_id(self, user: str) -> str:
        return self.address(user)

    def address(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def deliver(self, user: str, **fields: Any) -> dict[str, Any]:
        body, message_id, subject = _control_fields(fields)
        answer = self._call("POST", f"users/{self.address(user)}/messages", body)
        self.ledger[str(answer["id"])] = {"subject": subject, "internetMessageId": message_id}
        return {"id": answer["id"], "immutableId": answer["id"], "internetMessageId": message_id}

    def deliver_many(
        self, user: str, count: int, *, start: datetime, interval_seconds: float = 1, **fields: Any
    ) -> None:
        subject = str(fields.pop("subject", ""))
        for n in range(1, count + 1):
            received = start - timedelta(seconds=interval_seconds * (n - 1))
            self.deliver(user, subject=f"{subject} #{n}", received=iso(received), **fields)

    def send(self, user: str, **fields: Any) -> dict[str, Any]:
        """The sender's SENT copy and an INBOX copy in every recipient mailbox of the domain, one Message-ID."""
        mid = str(fields.pop("internet_message_id", "") or f"<sent-{uuid.uuid4().hex}@{self.domain}>")
        fields = {**fields, "from_": self.address(user), "internet_message_id": mid}
        sent = self.deliver(user, folder="sentitems", **fields)
        for other in ("adele", "megan"):
            recipients = [*fields.get("to", ()), *fields.get("cc", ())]
            if other != user and self.address(other) in [str(r).lower() for r in recipients]:
                self.deliver(other, **fields)
        return {"sent": sent}

    def expire_delta_state(self, user: str) -> None:
        self._call("POST", f"users/{self.address(user)}/history/expire", {})

    def add_fault(self, **fault: Any) -> None:
        self._call("POST", "faults", fault)

    def set_config(self, **changes: Any) -> None:
        self._call("PUT", "config", changes)

    def revoke_grant(self, user: str) -> None:
        self._call("POST", "grants/revoke", {"user": self.address(user), "client_id": self.client_id})

    def requests_seen(self, user: str) -> dict[str, Any]:
        return self._call("GET", f"users/{self.address(user)}/stats")

    def close(self) -> None:
        """Give the (per-worker) emulator back as found: no faults, default settings."""
        self.control.delete(f"{self.google_url}/_emulator/faults", timeout=30)
        self._call("PUT", "config", self.emulator_defaults)
        self.session.close()
        self.control.close()

    def graph_messages(self, user: str, folder: str) -> list[dict[str, Any]]:
        """The label's messages as Gmail lists them (ids, read directly), described from the delivery ledger."""
        token = self.token_source_for(self.mailboxes[self.ids[user]])(False)
        found: list[dict[str, Any]] = []
        params: dict[str, str] = {"labelIds": LABELS[folder], "maxResults": "500"}
        while True:
            response = self.session.get(
                f"{self.google_url}/gmail/v1/users/me/messages", params=params,
                headers={"Authorization": f"Bearer {token}"}, timeout=30,
            )  # fmt: skip
            response.raise_for_status()
            payload = response.json()
            found += [{"id": m["id"], **self.ledger[m["id"]]} for m in payload.get("messages") or ()]
            if not payload.get("nextPageToken"):
                return found
            params["pageToken"] = payload["nextPageToken"]

    def other_stores(self, suffix: str) -> TableStores:
        stores = TableStores.create(self.service, self.prefix + suffix)
        stores.settings.put(ORG, self.stores.settings.get(ORG))
        stores.records.upsert(ORG, list(RECORDS))
        for box in self.mailboxes.values():
            stores.mailboxes.add(box)
        return stores


def _control_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """Graph-emulator-style delivery fields → the Google emulator's (body, Message-ID, subject)."""
    f = dict(fields)
    message_id = str(f.pop("internet_message_id", "") or f"<{uuid.uuid4().hex}@mail.test.example>")
    subject = str(f.pop("subject", ""))
    body: dict[str, Any] = {"subject": subject, "message_id": message_id}
    if "from_" in f:
        body["from"] = f.pop("from_")
    for key in ("to", "cc", "bcc", "in_reply_to"):
        if key in f:
            body[key] = f.pop(key)
    if "references" in f:
        refs = f.pop("references")
        body["references"] = " ".join(refs) if isinstance(refs, list) else str(refs)
    text = str(f.pop("body", ""))
    if f.pop("body_type", "text") == "html":
        body["body"], body["html"] = "", text
    else:
        body["body"] = text
    if f.get("headers"):
        body["headers"] = {str(h["name"]): str(h["value"]) for h in f.pop("headers")}
    if f.get("attachments"):
        body["attachments"] = [
            {"filename": a["name"], "content_type": a.get("content_type", "application/octet-stream"),
             "data": base64.b64encode(b"x" * int(a.get("size", 10))).decode()}
            for a in f.pop("attachments")
        ]  # fmt: skip
    folder = f.pop("folder", "inbox")
    if folder == "sentitems":
        body["labels"] = ["SENT"]
    received, sent = f.pop("received", None), f.pop("sent", None)
    if received:
        body["received_at"] = received
    if sent or received:
        body["date"] = sent or received
    f.pop("headers", None)
    f.pop("attachments", None)
    assert not f, f"delivery fields the Gmail env does not know: {sorted(f)}"
    return body, message_id, subject


@pytest.fixture
def gmail_env(  # noqa: PLR0917
    google_emulator: GoogleEmulatorServer,
    emulator: EmulatorServer,
    storage_connection_string: str,
    table_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[GmailSyncEnv]:
    # One bundle trusting both emulators' CAs, as REQUESTS_CA_BUNDLE would in a deployment that reaches both.
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(Path(emulator.ca_bundle_path).read_bytes() + google_emulator.tls.ca_pem.read_bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    service = TableServiceClient.from_connection_string(storage_connection_string)
    watermark = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
    built = GmailSyncEnv(google_emulator, service, table_prefix, str(bundle), watermark)
    try:
        yield built
    finally:
        built.close()
        for name in built.table_names():
            service.delete_table(name)


@pytest.fixture(params=["microsoft", "google", "imap"])
def mail_env(request: pytest.FixtureRequest) -> SyncEnv:
    """The engine's integration suite runs on each provider: the Graph env, the Gmail env or the IMAP env
    (Dovecot mailboxes, ``sync_env.imap_env``)."""
    name = {"microsoft": "sync_env", "google": "gmail_env", "imap": "imap_env"}[request.param]
    env: SyncEnv = request.getfixturevalue(name)
    return env


__all__ = ["GmailSyncEnv", "gmail_env", "mail_env"]
