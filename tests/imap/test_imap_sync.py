"""The IMAP provider against the real Dovecot: what only IMAP can get wrong.

The provider-neutral behaviour (the 2,000-message mix, crash and re-run, nothing of unmatched mail kept,
lost sync state, one activity per message across mailboxes) is tests/integration/test_sync_engine.py,
run for both providers. Here: bodies of unmatched mail never downloaded (proved from Dovecot's own trace
of the conversation), a dropped connection, a wrong password, an untrusted certificate, a server without
CONDSTORE, folders, attachments from BODYSTRUCTURE, and a Graph and an IMAP mailbox of one org.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from imapclient import IMAPClient

from sync_core.adapters.graph.mail import GraphMailSource
from sync_core.adapters.imap.mail import ImapMailSource, _map_folders
from sync_core.adapters.providers import MailSourceByProvider
from sync_core.domain.model import Mailbox, MailboxStatus
from sync_core.use_cases.sync_mailbox import SyncOutcome, sync_mailbox
from tests.imap.proxy import DroppingProxy
from tests.integration.imap_world import PASSWORD, ImapWorld
from tests.integration.sync_env import ADELE, CAROL, DAN, ORG, STRANGER, SyncEnv, sync_env
from tools import mailserver

__all__ = ["sync_env"]  # the fixture

imap_only = pytest.mark.parametrize("sync_env", ["imap"], indirect=True)
BUDGET = timedelta(minutes=4)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def run(env: SyncEnv, source: ImapMailSource, mailbox_id: str = ADELE) -> SyncOutcome:
    deps = dataclasses.replace(env.deps(), mail=source)
    return sync_mailbox(deps, ORG, mailbox_id, BUDGET)


def source_for(env: SyncEnv, **changes: object) -> ImapMailSource:
    assert env.imap is not None
    world = env.imap
    limits = dataclasses.replace(world.limits(), **{k: v for k, v in changes.items() if k != "account"})
    account = changes.get("account")
    return ImapMailSource(account if callable(account) else world.account_for, limits, page_size=5)


# -- two-phase fetch -------------------------------------------------------------------------------------


@imap_only
def test_the_body_of_an_unmatched_message_is_never_downloaded_and_nothing_is_marked_seen(sync_env: SyncEnv) -> None:
    env = sync_env
    assert env.imap is not None
    adele, token = env.address("adele"), uuid.uuid4().hex
    kept = env.deliver("adele", subject="Kept", from_=CAROL, to=[adele], body=f"kept-body-{token}")
    secret = env.deliver("adele", subject="Cold pitch", from_=STRANGER, to=[adele], body=f"secret-body-{token}")
    html = env.deliver(
        "adele", subject="Html", from_=DAN, to=[adele], body=f"<p>html-body-{token}</p>", body_type="html",
        attachments=[{"name": "terms.pdf", "content_type": "application/pdf", "size": 3000}],
    )  # fmt: skip
    trace_before = env.imap.server.rawlog(adele, ".out")

    outcome = env.sync(ADELE)

    assert outcome.status == "done" and outcome.report is not None
    assert outcome.report.reasons["unmatched"] == 1 and outcome.report.activities_created == 2
    stored = env.activities()
    assert stored[kept["internetMessageId"]].body_text == f"kept-body-{token}"
    assert stored[html["internetMessageId"]].body_text == f"html-body-{token}"
    assert [(f.name, f.content_type) for f in stored[html["internetMessageId"]].attachments] == [
        ("terms.pdf", "application/pdf")
    ]
    # Dovecot's trace of everything it sent the adapter: the matched bodies, never the unmatched one.
    answers = env.imap.server.rawlog(adele, ".out")[len(trace_before) :]
    assert f"kept-body-{token}" in answers and f"html-body-{token}" in answers
    assert f"secret-body-{token}" not in answers
    commands = env.imap.server.rawlog(adele, ".in")
    secret_uid = secret["id"].split("/")[1]
    body_fetches = [line for line in commands.splitlines() if "BODY.PEEK[1" in line or "BODY.PEEK[2" in line]
    assert body_fetches and all(secret_uid not in re.split(r"[ ,]", line) for line in body_fetches)
    verbs = [line.split()[2:4] for line in commands.splitlines() if len(line.split()) > 2]
    assert not [v for v in verbs if v[:1] == ["STORE"] or v == ["UID", "STORE"]]  # no flag changes
    assert not re.search(r"BODY\[|RFC822[ )]|RFC822\.TEXT", commands)  # every body read is a PEEK
    client = IMAPClient(env.imap.server.host, env.imap.server.ports.imaps, ssl_context=env.imap.server.ssl_context())
    client.login(adele, PASSWORD)
    client.select_folder("INBOX", readonly=True)
    assert all(b"\\Seen" not in flags for flags in client.get_flags(client.search(["ALL"])).values())
    client.logout()


# -- failures --------------------------------------------------------------------------------------------


@imap_only
def test_a_connection_dropped_mid_sync_resumes_at_the_checkpoint_and_ends_as_a_clean_run(sync_env: SyncEnv) -> None:
    env = sync_env
    assert env.imap is not None
    adele, start = env.address("adele"), now() - timedelta(minutes=30)
    env.deliver_many("adele", 40, start=start, interval_seconds=10, subject="Update", from_=CAROL, to=[adele])
    server = env.imap.server
    proxy = DroppingProxy((server.host, server.ports.imaps), cut_after=10_000)
    through_proxy = source_for(env, account=lambda m: dataclasses.replace(env.imap.account_for(m), port=proxy.port))  # type: ignore[union-attr]

    try:
        dropped = run(env, through_proxy)
    finally:
        proxy.close()
    resumed = env.sync(ADELE, page_size=5)
    clean = env.sync(ADELE, page_size=5, stores=env.other_stores("clean"))

    assert proxy.cuts == 1
    assert dropped.status == "more" and dropped.report is not None
    assert "connection to the mail server was lost" in dropped.report.error
    assert 0 < dropped.report.activities_created < 40  # the pages before the drop were kept
    assert resumed.status == "done" and resumed.report is not None
    assert resumed.report.activities_created == 40 - dropped.report.activities_created
    assert resumed.report.activities_merged == 0
    assert clean.report is not None and clean.report.activities_created == 40
    assert env.activities() == env.activities("clean")


@imap_only
def test_a_wrong_password_puts_the_mailbox_in_needs_reauth_with_the_servers_reason(sync_env: SyncEnv) -> None:
    env = sync_env
    assert env.imap is not None
    env.deliver("adele", subject="Hello", from_=CAROL, to=[env.address("adele")])
    wrong = source_for(env, account=lambda m: dataclasses.replace(env.imap.account_for(m), password="not-it"))  # type: ignore[union-attr]

    outcome = run(env, wrong)

    assert outcome.status == "failed" and outcome.report is not None
    found = env.stores.mailboxes.get(ORG, ADELE)
    mailbox = found.value if found is not None else None
    assert mailbox is not None and mailbox.status is MailboxStatus.NEEDS_REAUTH
    assert "AUTHENTICATIONFAILED" in mailbox.status_reason  # Dovecot's own words
    assert "not-it" not in mailbox.status_reason and "not-it" not in outcome.report.error
    assert env.activities() == {}


@imap_only
def test_a_server_whose_certificate_is_not_trusted_is_never_sent_the_password(sync_env: SyncEnv) -> None:
    env = sync_env
    assert env.imap is not None
    system_trust_only = source_for(env, ca_file=None)  # the local CA is not in the system's trust store

    outcome = run(env, system_trust_only)

    assert outcome.status == "failed" and outcome.report is not None
    found = env.stores.mailboxes.get(ORG, ADELE)
    mailbox = found.value if found is not None else None
    assert mailbox is not None and mailbox.status is MailboxStatus.ERROR
    assert "certificate is not trusted" in mailbox.status_reason
    assert "method=PLAIN" not in env.imap.server.log().split("\n")[-1]
    assert f"user=<{env.address('adele')}>, method" not in env.imap.server.log()  # no login attempt


# -- a server without CONDSTORE (as Microsoft 365's IMAP) ----------------------------------------------


@pytest.fixture(scope="module")
def plain_server() -> Iterator[mailserver.MailServer]:
    root = mailserver.ROOT / ".local" / f"mailserver-plain-{uuid.uuid4().hex[:8]}"
    with mailserver.running(root, no_condstore=True, sent=False) as server:
        yield server
    shutil.rmtree(root, ignore_errors=True)


def test_without_condstore_new_mail_is_found_by_uid_ranges_and_idle_polls_stay_cheap(
    plain_server: mailserver.MailServer,
) -> None:
    world = ImapWorld(plain_server)
    adele = world.address("adele")
    mailbox = Mailbox(ORG, ADELE, adele, (adele,), watermark=now() - timedelta(hours=1), provider="imap")
    source = ImapMailSource(world.account_for, world.limits(), page_size=3)
    for k in range(5):
        world.deliver("adele", subject=f"First {k}", from_=CAROL, to=[adele])

    link, seen = None, []
    while True:
        page = source.delta(mailbox, "inbox", link, mailbox.watermark)
        seen += [m.subject for m in page.messages]
        if page.delta_link:
            break
        link = page.next_link
    idle = source.delta_many(mailbox, {"inbox": page.delta_link})
    world.deliver("adele", subject="Later", from_=CAROL, to=[adele])
    later = source.delta_many(mailbox, {"inbox": idle["inbox"].delta_link or ""})

    assert sorted(seen) == [f"First {k}" for k in range(5)]
    assert page.delta_link.split()[3] == "0"  # no HIGHESTMODSEQ without CONDSTORE
    assert idle["inbox"].messages == ()
    assert [m.subject for m in later["inbox"].messages] == ["Later"]
    commands = plain_server.rawlog(adele)
    assert "CONDSTORE" not in commands and "MODSEQ" not in commands
    assert "RETURN (" not in commands  # no LIST-STATUS offered: the idle polls EXAMINE the folder
    world.close()


# -- folders -----------------------------------------------------------------------------------------------


def test_sent_is_found_by_its_special_use_flag_else_by_its_usual_name_and_junk_trash_drafts_never_sync() -> None:
    by_flag = [
        ((b"\\HasNoChildren",), b"/", "INBOX"),
        ((b"\\Sent",), b"/", "Gesendete Objekte"),
        ((), b"/", "Sent"),
        ((b"\\Junk",), b"/", "Spam-Ordner"),
        ((b"\\Trash",), b"/", "Papierkorb"),
        ((b"\\Drafts",), b"/", "Entwürfe"),
        ((b"\\Noselect",), b"/", "Archive"),
        ((), b"/", "Archive/2026"),
    ]
    by_name = [((), b".", "INBOX"), ((), b".", "INBOX.Sent Items"), ((), b".", "Sent Items"), ((), b".", "Trash")]

    mapping, every = _map_folders(by_flag)
    named, named_every = _map_folders(by_name)

    assert mapping["sentitems"] == "Gesendete Objekte"
    assert every == ("inbox", "sentitems", "Sent", "Archive/2026")
    assert named["sentitems"] == "Sent Items" and named_every == ("inbox", "sentitems", "INBOX.Sent Items")


@imap_only
def test_all_folders_are_every_selectable_folder_but_junk_trash_and_drafts(sync_env: SyncEnv) -> None:
    env = sync_env
    assert env.imap is not None
    client = env.imap._client("adele")
    client.create_folder("Projects")

    source = env.mail_source()
    folders = source.folders(env.mailboxes[ADELE])

    assert folders == ("inbox", "sentitems", "Projects")


# -- one org, two providers ---------------------------------------------------------------------------------


def test_a_message_seen_by_a_graph_mailbox_and_an_imap_mailbox_of_the_org_is_one_activity(
    sync_env: SyncEnv, mail_server: mailserver.MailServer
) -> None:
    env = sync_env  # the Graph org (emulator tenant)
    world = ImapWorld(mail_server)
    imap_box = Mailbox(
        ORG, "mb-imap", world.address("adele"), (world.address("adele"),), watermark=env.watermark, provider="imap"
    )
    env.stores.mailboxes.add(imap_box)
    shared = f"<both-providers-{uuid.uuid4().hex}@client.example>"
    fields = {"from_": CAROL, "subject": "Seen twice", "internet_message_id": shared}
    env.deliver("adele", to=[env.address("adele"), imap_box.address], **fields)
    world.deliver("adele", to=[env.address("adele"), imap_box.address], **fields)
    routed = MailSourceByProvider({
        "microsoft": lambda: GraphMailSource(env.graph_for),
        "imap": lambda: ImapMailSource(world.account_for, world.limits()),
    })  # fmt: skip
    deps = dataclasses.replace(env.deps(), mail=routed)

    graph_run = sync_mailbox(deps, ORG, ADELE, BUDGET)
    imap_run = sync_mailbox(dataclasses.replace(deps, mail=routed), ORG, "mb-imap", BUDGET)

    assert graph_run.report is not None and imap_run.report is not None
    assert (graph_run.report.activities_created, imap_run.report.activities_merged) == (1, 1)
    assert imap_run.report.activities_created == 0
    stored = env.activities()
    assert list(stored) == [shared]
    assert set(stored[shared].mailbox_ids) == {ADELE, "mb-imap"}
    world.close()


@pytest.mark.parametrize("sync_env", ["imap"], indirect=True)
def test_the_imap_mailbox_limits_bound_every_body_download(sync_env: SyncEnv) -> None:
    env = sync_env
    assert env.imap is not None
    adele = env.address("adele")
    big = env.deliver("adele", subject="Long", from_=CAROL, to=[adele], body="x" * 50_000 + " tail-marker")
    small_limits = source_for(env, body_bytes=1_000)

    outcome = run(env, small_limits)

    assert outcome.status == "done"
    activity = env.activities()[big["internetMessageId"]]
    assert activity.body_truncated and "tail-marker" not in activity.body_text
    assert len(activity.body_text) <= 1_000
    assert "<0.1000>" in env.imap.server.rawlog(adele)



@imap_only
def test_a_debug_log_of_a_sync_never_holds_the_conversation_or_anything_of_unmatched_mail(
    sync_env: SyncEnv, caplog: pytest.LogCaptureFixture
) -> None:
    import sync_core.bootstrap  # noqa: F401, PLC0415 - the app's log levels, set when the app loads

    env = sync_env
    token = uuid.uuid4().hex
    stranger = f"ghost-{token[:8]}@phantom.example"
    env.deliver("adele", subject=f"Pitch {token}", from_=stranger, to=[env.address("adele")], body=f"body {token}")
    caplog.set_level(logging.DEBUG)

    outcome = env.sync(ADELE)

    assert outcome.status == "done" and outcome.report is not None and outcome.report.reasons["unmatched"] == 1
    assert token not in caplog.text and stranger not in caplog.text and PASSWORD not in caplog.text


@imap_only
def test_a_backfill_reads_older_mail_by_search_since_and_only_back_to_its_new_watermark(sync_env: SyncEnv) -> None:
    env = sync_env
    adele = env.address("adele")
    env.deliver("adele", subject="Two days old", from_=CAROL, to=[adele], received=now() - timedelta(days=2))
    env.deliver("adele", subject="Ten days old", from_=CAROL, to=[adele], received=now() - timedelta(days=10))
    before = env.sync(ADELE)
    found = env.stores.mailboxes.get(ORG, ADELE)
    assert found is not None
    # What a backfill of 3 days applies under the sync lease (schedule.requests.apply_pending_backfill).
    env.stores.mailboxes.replace(found.value.backfilled(now() - timedelta(days=3)), found.etag)
    env.stores.cursors.clear(ORG, ADELE)

    after = env.sync(ADELE)

    assert before.report is not None and before.report.activities_created == 0
    assert after.report is not None and after.report.activities_created == 1
    assert [a.subject for a in env.activities().values()] == ["Two days old"]
    assert re.search(r"UID SEARCH UID 1:\* SINCE \d{2}-\w{3}-\d{4}", env.imap.server.rawlog(adele))  # type: ignore[union-attr]
