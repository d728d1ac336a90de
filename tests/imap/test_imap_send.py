"""Sending from an IMAP mailbox: SMTP submission to the real SMTP server of ``tools/mailserver.py``, which
relays into the real Dovecot by LMTP, and the Sent copy filed by IMAP APPEND.

Proved here with the send state machine (``use_cases.send.deliver``) and Azure Table storage: a send
arrives once in the recipient's Inbox and once in the sender's Sent folder and is one activity after the
next sync; a reply is threaded; BCC recipients get it but no header names them; a connection cut after
DATA ends ``failed``/``outcome_unknown`` with exactly one delivery; a wrong SMTP password fails with the
server's reason; a worker that died before the submission is resumed and delivers once; a mailbox
without an SMTP login is refused up front; and what the Drafts and Sent folders prove at each step.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import timedelta
from email import message_from_bytes
from email.message import Message

import pytest
from imapclient import IMAPClient

from sync_core.adapters.clock import SystemClock
from sync_core.adapters.imap.send import ImapMailSender
from sync_core.adapters.table_sends import TableSendStore
from sync_core.domain.model import EmailAddress, Mailbox
from sync_core.domain.sending import AttachmentSpec, SendRequest, SendStatus
from sync_core.errors import SendingRefused
from sync_core.ports import Clock
from sync_core.ports.send import DraftState, MailSender, OutgoingMessage, ProviderView
from sync_core.ports.servers import Security, ServerAccount, ServerLogin
from sync_core.testing.scheduling import InMemoryWorkQueue
from sync_core.use_cases.send import SendDeps, deliver, request_send
from tests.integration.imap_world import PASSWORD
from tests.integration.sync_env import ADELE, DAN, ORG, SyncEnv, imap_env
from tests.reliability.rel_env import OffsetClock

__all__ = ["imap_env"]  # the fixture

AFTER_THE_LEASE = OffsetClock(timedelta(minutes=6))


class Crash(BaseException):
    """A worker dying at a chosen point (not an error the machine handles)."""


class DiesBeforeSubmit:
    """The real sender, but the worker dies the first time it is about to submit."""

    def __init__(self, inner: MailSender) -> None:
        self.inner, self.died = inner, False

    def permission_problem(self, mailbox: Mailbox) -> str | None:
        return self.inner.permission_problem(mailbox)

    def prepare(self, mailbox: Mailbox, message: OutgoingMessage) -> str:
        return self.inner.prepare(mailbox, message)

    def locate(self, mailbox: Mailbox, send_id: str) -> tuple[str, ...]:
        return self.inner.locate(mailbox, send_id)

    def discard(self, mailbox: Mailbox, handle: str) -> None:
        self.inner.discard(mailbox, handle)

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        if not self.died:
            self.died = True
            raise Crash()
        self.inner.submit(mailbox, handle)

    def inspect(self, mailbox: Mailbox, handle: str) -> ProviderView:
        return self.inner.inspect(mailbox, handle)


def server_account(
    env: SyncEnv, *, security: Security = Security.STARTTLS, password: str = PASSWORD
) -> Callable[[Mailbox], ServerAccount]:
    assert env.imap is not None
    world = env.imap
    port = world.server.ports.submission if security is Security.STARTTLS else world.server.ports.submissions

    def account_for(mailbox: Mailbox) -> ServerAccount:
        smtp = ServerLogin(world.server.host, port, security, mailbox.address, password)
        return ServerAccount(world.account_for(mailbox), smtp)

    return account_for


def send_deps(env: SyncEnv, sender: MailSender | None = None, clock: Clock | None = None) -> SendDeps:
    assert env.imap is not None
    return SendDeps(
        sends=TableSendStore(env.service, env.prefix),
        mailboxes=env.stores.mailboxes,
        settings=env.stores.settings,
        records=env.stores.records,
        activities=env.stores.activities,
        mail=env.mail_source(),
        sender=sender or ImapMailSender(server_account(env), env.imap.limits()),
        queue=InMemoryWorkQueue(),
        clock=clock or SystemClock(),
    )


def enable_sending(env: SyncEnv) -> None:
    env.stores.settings.put(ORG, dataclasses.replace(env.stores.settings.get(ORG), sending_enabled=True))


def new_send(deps: SendDeps, key: str, **fields: object) -> str:
    request = SendRequest(**fields)  # type: ignore[arg-type]
    return request_send(deps, ORG, ADELE, idempotency_key=key, request=request, contents=()).send.send_id


def copies(env: SyncEnv, user: str, folder: str, message_id: str) -> list[Message]:
    """Every message of the user's folder with the Message-ID, read with IMAPClient (not the adapter)."""
    assert env.imap is not None
    server = env.imap.server
    client = IMAPClient(server.host, server.ports.imaps, ssl_context=server.ssl_context())
    try:
        client.login(env.imap.address(user), PASSWORD)
        client.select_folder(folder, readonly=True)
        uids = client.search(["HEADER", "Message-ID", message_id.strip("<>")])
        fetched = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return [message_from_bytes(item[b"BODY[]"]) for item in fetched.values()]
    finally:
        client.logout()


def add_user(env: SyncEnv, user: str) -> str:
    assert env.imap is not None
    return env.imap.server.add_user(env.imap.address(user), PASSWORD)


# -- the happy path -----------------------------------------------------------------------------------


def test_a_send_arrives_once_in_the_inbox_once_in_sent_and_is_one_activity_after_the_next_sync(
    imap_env: SyncEnv,
) -> None:
    env = imap_env
    enable_sending(env)
    deps = send_deps(env)
    megan = env.address("megan")
    pdf = b"%PDF-1.4 offer " * 100
    request = SendRequest(
        to=(EmailAddress(megan, "Megan"), EmailAddress(DAN, "Dan")), subject="Offer",
        content_type="html", content="<p>The <b>offer</b> is attached.</p>",
        attachments=(AttachmentSpec("offer.pdf", "application/pdf", len(pdf), hashlib.sha256(pdf).hexdigest()),),
    )  # fmt: skip
    created = request_send(deps, ORG, ADELE, idempotency_key="hello", request=request, contents=(pdf,))
    send_id = created.send.send_id

    assert deliver(deps, ORG, send_id) == "sent"

    stored = deps.sends.get(ORG, send_id)
    assert stored is not None and stored.value.status is SendStatus.SENT
    message_id = stored.value.internet_message_id
    received, sent = copies(env, "megan", "INBOX", message_id), copies(env, "adele", "Sent", message_id)
    assert len(received) == 1 and len(sent) == 1
    assert copies(env, "adele", "Drafts", message_id) == []
    delivered = received[0]
    assert delivered["From"] == env.address("adele") and "Megan" in delivered["To"] and DAN in delivered["To"]
    assert delivered.get_content_type() == "multipart/mixed"
    parts = {part.get_content_type(): part for part in delivered.walk()}
    assert parts["multipart/alternative"] is not None
    assert b"The offer is attached." in parts["text/plain"].get_payload(decode=True)
    assert b"<b>offer</b>" in parts["text/html"].get_payload(decode=True)
    assert parts["application/pdf"].get_filename() == "offer.pdf"
    assert parts["application/pdf"].get_payload(decode=True) == pdf
    assert delivered["X-CRM-Send-Id"] is None and sent[0]["X-CRM-Send-Id"] is None
    activity = env.activities()[message_id]
    assert activity.sent_from_crm and activity.send_id == send_id

    outcome = env.sync(ADELE)

    assert outcome.status == "done" and outcome.report is not None
    assert outcome.report.activities_created == 0
    merged = env.activities()
    assert list(merged) == [message_id]  # the Sent copy the sync read is the same activity
    assert merged[message_id].activity_id == activity.activity_id and merged[message_id].sent_from_crm


def test_a_reply_carries_in_reply_to_and_references_of_the_original(imap_env: SyncEnv) -> None:
    env = imap_env
    enable_sending(env)
    deps = send_deps(env)
    first = new_send(deps, "first", to=(EmailAddress(DAN),), cc=(EmailAddress(env.address("megan")),), subject="Terms")
    assert deliver(deps, ORG, first) == "sent"
    original = deps.sends.get(ORG, first)
    assert original is not None
    original_id = original.value.internet_message_id

    reply = new_send(
        deps, "reply", to=(EmailAddress(DAN),), cc=(EmailAddress(env.address("megan")),), subject="Re: Terms",
        content="Following up.", reply_to_activity_id=original.value.activity_id,
    )  # fmt: skip
    assert deliver(deps, ORG, reply) == "sent"

    answered = deps.sends.get(ORG, reply)
    assert answered is not None
    [threaded] = copies(env, "megan", "INBOX", answered.value.internet_message_id)
    assert threaded["In-Reply-To"] == original_id
    assert original_id in str(threaded["References"]).split()
    activities = env.activities()
    assert activities[answered.value.internet_message_id].thread_id == activities[original_id].thread_id


def test_bcc_recipients_receive_the_message_but_no_header_names_them(imap_env: SyncEnv) -> None:
    env = imap_env
    enable_sending(env)
    deps = send_deps(env)
    hidden = add_user(env, "hidden")
    send_id = new_send(
        deps, "bcc", to=(EmailAddress(env.address("megan")),), bcc=(EmailAddress(hidden),), subject="Quiet",
        content="Only Megan is named.", record_ids=("c-dan",),
    )  # fmt: skip

    outcome = deliver(deps, ORG, send_id)
    assert outcome == "sent", deps.sends.get(ORG, send_id)

    stored = deps.sends.get(ORG, send_id)
    assert stored is not None
    message_id = stored.value.internet_message_id
    in_hidden, in_megan = copies(env, "hidden", "INBOX", message_id), copies(env, "megan", "INBOX", message_id)
    in_sent = copies(env, "adele", "Sent", message_id)
    assert len(in_hidden) == 1 and len(in_megan) == 1 and len(in_sent) == 1
    for copy in (*in_hidden, *in_megan, *in_sent):
        assert copy["Bcc"] is None
        assert hidden not in copy.as_string()


# -- what cannot be proven, and failures --------------------------------------------------------------


def test_a_connection_cut_after_data_ends_outcome_unknown_and_is_never_delivered_twice(imap_env: SyncEnv) -> None:
    env = imap_env
    assert env.imap is not None
    enable_sending(env)
    deps = send_deps(env)
    send_id = new_send(deps, "cut", to=(EmailAddress(env.address("megan")),), subject="Cut", content="Hello")
    env.imap.server.drop_after_data(env.address("adele"))

    first = deliver(deps, ORG, send_id)  # the answer to DATA never comes: retried later
    then = deliver(deps, ORG, send_id)  # which looks, and cannot prove anything

    assert first == "waiting" and then == "failed"
    stored = deps.sends.get(ORG, send_id)
    assert stored is not None and stored.value.error is not None
    assert stored.value.error.code == "outcome_unknown"
    assert "not resent" in stored.value.error.message
    [handle] = {stored.value.handle}
    assert len(copies(env, "megan", "INBOX", handle)) == 1  # the server had delivered it: once
    assert copies(env, "adele", "Sent", handle) == []  # no proof, so no Sent copy filed
    assert deliver(deps, ORG, send_id) == "failed"
    assert len(copies(env, "megan", "INBOX", handle)) == 1


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.TLS])
def test_a_wrong_smtp_password_fails_the_send_with_the_servers_reason(imap_env: SyncEnv, security: Security) -> None:
    env = imap_env
    assert env.imap is not None
    enable_sending(env)
    wrong = ImapMailSender(server_account(env, security=security, password="not-it"), env.imap.limits())
    deps = send_deps(env, wrong)
    send_id = new_send(deps, "wrong", to=(EmailAddress(env.address("megan")),), subject="Nope", content="x")

    assert deliver(deps, ORG, send_id) == "failed"

    stored = deps.sends.get(ORG, send_id)
    assert stored is not None and stored.value.error is not None
    assert stored.value.error.code == "needs_reauth"
    assert "SMTP server refused the login: 535" in stored.value.error.message
    assert "not-it" not in stored.value.error.message
    assert copies(env, "adele", "Drafts", stored.value.handle) == []  # the unsent draft is not left behind
    assert copies(env, "megan", "INBOX", stored.value.handle) == []


def test_a_worker_that_died_before_the_submission_is_resumed_and_delivers_once(imap_env: SyncEnv) -> None:
    env = imap_env
    assert env.imap is not None
    enable_sending(env)
    real = ImapMailSender(server_account(env), env.imap.limits())
    dying = send_deps(env, DiesBeforeSubmit(real))
    send_id = new_send(dying, "crash", to=(EmailAddress(env.address("megan")),), subject="Again", content="Once")

    with pytest.raises(Crash):
        deliver(dying, ORG, send_id)
    resumed = deliver(send_deps(env, real, AFTER_THE_LEASE), ORG, send_id)

    assert resumed == "sent"
    stored = send_deps(env).sends.get(ORG, send_id)
    assert stored is not None
    message_id = stored.value.internet_message_id
    assert len(copies(env, "megan", "INBOX", message_id)) == 1
    assert len(copies(env, "adele", "Sent", message_id)) == 1


def test_a_mailbox_without_an_smtp_login_is_refused_before_the_send_is_stored(imap_env: SyncEnv) -> None:
    env = imap_env
    assert env.imap is not None
    enable_sending(env)
    world = env.imap
    reading_only = ImapMailSender(lambda m: ServerAccount(world.account_for(m)), world.limits())
    deps = send_deps(env, reading_only)

    with pytest.raises(SendingRefused) as refused:
        new_send(deps, "no-smtp", to=(EmailAddress(env.address("megan")),), subject="x", content="x")

    assert refused.value.code == "send_permission_missing"
    assert "no SMTP login" in str(refused.value)
    assert deps.sends.by_key(ORG, "no-smtp") is None


# -- what the folders prove, step by step ---------------------------------------------------------------


def test_inspect_reads_each_submission_state_from_the_draft_and_sent_and_locate_finds_an_orphan(
    imap_env: SyncEnv,
) -> None:
    env = imap_env
    assert env.imap is not None
    sender = ImapMailSender(server_account(env), env.imap.limits())
    adele = env.mailboxes[ADELE]
    outgoing = OutgoingMessage(
        send_id="send-1", sender=EmailAddress(adele.address), to=(EmailAddress(env.address("megan")),), cc=(),
        bcc=(), subject="States", content_type="text", content="x",
    )  # fmt: skip
    server = env.imap.server
    client = IMAPClient(server.host, server.ports.imaps, ssl_context=server.ssl_context())
    client.login(adele.address, PASSWORD)

    def mark(handle: str, keyword: bytes) -> None:
        client.select_folder("Drafts")
        client.add_flags(client.search(["HEADER", "Message-ID", handle.strip("<>")]), [keyword])

    try:
        orphan = sender.prepare(adele, outgoing)
        assert sender.locate(adele, "send-1") == (orphan,)  # a draft whose handle was never checkpointed
        sender.discard(adele, orphan)
        assert sender.inspect(adele, orphan).state is DraftState.GONE

        unsent = sender.prepare(adele, outgoing)
        assert sender.inspect(adele, unsent).state is DraftState.NOT_SENT
        mark(unsent, b"$CrmSubmitting")  # died between marking and the server's answer
        assert sender.inspect(adele, unsent).state is DraftState.UNKNOWN
        assert sender.locate(adele, "send-1") == ()  # a draft that may have gone out is never discarded

        accepted = sender.prepare(adele, outgoing)
        mark(accepted, b"$CrmSubmitting")
        mark(accepted, b"$CrmSubmitted")  # died after the 250, before the Sent copy was filed
        view = sender.inspect(adele, accepted)
        assert view.state is DraftState.SENT and view.internet_message_id == accepted
        assert len(copies(env, "adele", "Sent", accepted)) == 1 and copies(env, "adele", "Drafts", accepted) == []
        assert sender.inspect(adele, accepted).state is DraftState.SENT  # filed once, not again
        assert len(copies(env, "adele", "Sent", accepted)) == 1
        assert copies(env, "adele", "Sent", accepted)[0]["Bcc"] is None
    finally:
        client.logout()
