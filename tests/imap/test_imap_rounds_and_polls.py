"""What a backfill and an idle poll cost in IMAP commands, read from Dovecot's own trace of the conversation:
one ``UID SEARCH`` per folder and round, whatever the number of pages; an idle poll of both folders in one
``LIST ... RETURN (STATUS ...)`` (RFC 5819) with nothing selected; a folder that changed is then read as
usual, and a renumbered one is a lost cursor."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest

from sync_core.adapters.imap.mail import ImapMailSource
from sync_core.domain.model import Mailbox
from sync_core.errors import DeltaTokenExpired
from sync_core.ports import DeltaPage
from tests.integration.imap_world import ImapWorld
from tests.integration.sync_env import ADELE, CAROL, ORG
from tools import mailserver

LIST_STATUS = 'LIST "" "*" RETURN (SPECIAL-USE STATUS (UIDNEXT UIDVALIDITY HIGHESTMODSEQ))'


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def mailbox_of(world: ImapWorld) -> Mailbox:
    adele = world.address("adele")
    return Mailbox(ORG, ADELE, adele, (adele,), watermark=now() - timedelta(hours=1), provider="imap")


def trace_marker(server: mailserver.MailServer, address: str) -> dict[str, int]:
    """How many lines each of the user's session traces holds now."""
    folder = server.root / "rawlog" / address.lower()
    return {path.name: len(path.read_bytes().splitlines()) for path in folder.glob("*.in")}


def commands_since(server: mailserver.MailServer, address: str, marker: dict[str, int]) -> list[str]:
    """The commands (tags dropped) the user's sessions sent since ``marker``; a session's trace starts after
    its LOGIN, so LOGIN is never among them."""
    folder = server.root / "rawlog" / address.lower()
    found = []
    for path in sorted(folder.glob("*.in")):
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()[marker.get(path.name, 0) :]
        found += [line.split(" ", 2)[2] for line in lines if line.count(" ") >= 2 and line.split(" ", 2)[2] != "LOGOUT"]
    return found


def drain(source: ImapMailSource, mailbox: Mailbox, folder: str, link: str | None = None) -> list[DeltaPage]:
    pages = [source.delta(mailbox, folder, link, mailbox.watermark)]
    while pages[-1].next_link:
        pages.append(source.delta(mailbox, folder, pages[-1].next_link, mailbox.watermark))
    return pages


def test_a_round_searches_its_folder_once_and_mail_arriving_meanwhile_waits_for_the_next_round(
    mail_server: mailserver.MailServer,
) -> None:
    world = ImapWorld(mail_server)
    mailbox, adele = mailbox_of(world), world.address("adele")
    world.deliver_many("adele", 7, start=now() - timedelta(minutes=30), interval_seconds=-10, subject="Early",
                       from_=CAROL, to=[adele])  # fmt: skip
    world.close()
    source = ImapMailSource(world.account_for, world.limits(), page_size=3)
    marker = trace_marker(mail_server, adele)

    first = source.delta(mailbox, "inbox", None, mailbox.watermark)
    world.deliver("adele", subject="Late", from_=CAROL, to=[adele], received=now())
    world.close()
    pages = [first, *drain(source, mailbox, "inbox", first.next_link)]
    round_commands = commands_since(mail_server, adele, marker)
    resumed = ImapMailSource(world.account_for, world.limits(), page_size=3)  # another run, mid-round
    marker = trace_marker(mail_server, adele)
    resumed_pages = drain(resumed, mailbox, "inbox", first.next_link)
    resumed_commands = commands_since(mail_server, adele, marker)
    next_round = source.delta(mailbox, "inbox", pages[-1].delta_link, mailbox.watermark)
    polled_after_resume = resumed.delta_many(mailbox, {"inbox": resumed_pages[-1].delta_link or ""})

    assert [[m.subject for m in page.messages] for page in pages] == [
        ["Early #1", "Early #2", "Early #3"],
        ["Early #4", "Early #5", "Early #6"],
        ["Early #7"],
    ]
    searches = [c for c in round_commands if "SEARCH" in c]
    assert len(searches) == 1 and re.fullmatch(r"UID SEARCH UID 1:\* SINCE \d{2}-\w{3}-\d{4}", searches[0])
    assert sum(c.startswith("UID FETCH") and "BODY.PEEK[HEADER]" in c for c in round_commands) == 3
    assert [m.subject for page in resumed_pages for m in page.messages] == [f"Early #{n}" for n in range(4, 8)]
    resumed_searches = [c for c in resumed_commands if "SEARCH" in c]
    assert len(resumed_searches) == 1 and re.fullmatch(r"UID SEARCH UID 4:\d+ SINCE .*", resumed_searches[0])
    assert resumed_pages[-1].delta_link == pages[-1].delta_link
    assert [m.subject for m in next_round.messages] == ["Late"]
    assert [m.subject for m in polled_after_resume["inbox"].messages] == ["Late"]
    source.close()
    resumed.close()
    world.close()


def test_an_idle_poll_reads_both_folders_in_one_list_status_command_and_selects_nothing(
    mail_server: mailserver.MailServer,
) -> None:
    world = ImapWorld(mail_server)
    mailbox, adele = mailbox_of(world), world.address("adele")
    world.deliver("adele", subject="In", from_=CAROL, to=[adele], received=now())
    world.send("adele", subject="Out one", to=[CAROL])
    world.close()
    backfill = ImapMailSource(world.account_for, world.limits())
    links = {folder: drain(backfill, mailbox, folder)[-1].delta_link or "" for folder in ("inbox", "sentitems")}
    backfill.close()
    poller = ImapMailSource(world.account_for, world.limits())  # the next run
    marker = trace_marker(mail_server, adele)

    idle = poller.delta_many(mailbox, links)
    idle_commands = commands_since(mail_server, adele, marker)
    idle_count = poller.requests_for(mailbox)
    world.send("adele", subject="Out two", to=[CAROL])
    world.close()
    marker = trace_marker(mail_server, adele)
    changed = poller.delta_many(mailbox, {folder: page.delta_link or "" for folder, page in idle.items()})
    changed_commands = commands_since(mail_server, adele, marker)

    assert {folder: (page.messages, page.delta_link) for folder, page in idle.items()} == {
        folder: ((), link) for folder, link in links.items()
    }
    assert idle_commands == [LIST_STATUS] and idle_count == 2  # LOGIN, then the one LIST
    assert changed["inbox"].messages == () and changed["inbox"].delta_link == links["inbox"]
    assert [m.subject for m in changed["sentitems"].messages] == ["Out two"]
    assert changed_commands[:3] == [LIST_STATUS, "ENABLE CONDSTORE", 'EXAMINE "Sent"']
    assert not [c for c in changed_commands if "INBOX" in c]  # the unchanged folder is never selected
    poller.close()
    world.close()


def test_a_folder_renumbered_since_the_last_poll_is_a_lost_cursor_without_selecting_it(
    mail_server: mailserver.MailServer,
) -> None:
    world = ImapWorld(mail_server)
    mailbox, adele = mailbox_of(world), world.address("adele")
    world.deliver("adele", subject="In", from_=CAROL, to=[adele], received=now())
    world.close()
    backfill = ImapMailSource(world.account_for, world.limits())
    links = {folder: drain(backfill, mailbox, folder)[-1].delta_link or "" for folder in ("inbox", "sentitems")}
    backfill.close()
    world.expire_delta_state("adele")  # a new UIDVALIDITY for both folders
    poller = ImapMailSource(world.account_for, world.limits())
    marker = trace_marker(mail_server, adele)

    with pytest.raises(DeltaTokenExpired):
        poller.delta_many(mailbox, links)

    assert commands_since(mail_server, adele, marker) == [LIST_STATUS]
    poller.close()


def test_a_rounds_next_page_is_sent_before_it_is_asked_for_and_fetched_only_once(
    mail_server: mailserver.MailServer,
) -> None:
    world = ImapWorld(mail_server)
    mailbox, adele = mailbox_of(world), world.address("adele")
    world.deliver_many("adele", 7, start=now() - timedelta(minutes=30), interval_seconds=-10, subject="Early",
                       from_=CAROL, to=[adele], body="the body")  # fmt: skip
    world.close()
    source = ImapMailSource(world.account_for, world.limits(), page_size=3)
    marker = trace_marker(mail_server, adele)

    first = source.delta(mailbox, "inbox", None, mailbox.watermark)
    completed = source.complete(mailbox, first.messages[:1])  # the connection is busy with the next FETCH
    restarted = source.delta(mailbox, "inbox", None, mailbox.watermark)  # not the page that was sent for
    pages = [restarted, *drain(source, mailbox, "inbox", restarted.next_link)]
    commands = commands_since(mail_server, adele, marker)

    assert [m.subject for m in first.messages] == ["Early #1", "Early #2", "Early #3"]
    assert [m.body_text for m in completed] == ["the body"]
    assert [[m.subject for m in page.messages] for page in pages] == [
        ["Early #1", "Early #2", "Early #3"],
        ["Early #4", "Early #5", "Early #6"],
        ["Early #7"],
    ]
    header_fetches = [c.split(" ")[2] for c in commands if c.startswith("UID FETCH") and "BODY.PEEK[HEADER]" in c]
    second_page = header_fetches[1]
    assert header_fetches == [header_fetches[0], second_page, header_fetches[0], second_page, header_fetches[-1]]
    body_fetch = next(i for i, c in enumerate(commands) if "BODY.PEEK[1]" in c)
    assert commands.index(next(c for c in commands if second_page in c)) < body_fetch  # sent before complete
    assert source.requests_for(mailbox) == 1 + len(commands)  # LOGIN and the trace: each command counted once
    source.close()


def test_a_round_resumed_by_another_run_with_nothing_left_in_it_leaves_later_mail_for_the_next_round(
    mail_server: mailserver.MailServer,
) -> None:
    world = ImapWorld(mail_server)
    mailbox, adele = mailbox_of(world), world.address("adele")
    world.deliver_many("adele", 4, start=now() - timedelta(minutes=30), interval_seconds=-10, subject="Early",
                       from_=CAROL, to=[adele])  # fmt: skip
    world.close()
    source = ImapMailSource(world.account_for, world.limits(), page_size=3)
    first = source.delta(mailbox, "inbox", None, mailbox.watermark)  # Early #1-#3; #4 is the round's end
    source.close()
    world.deliver("adele", subject="Late", from_=CAROL, to=[adele], received=now())
    client = world._client("adele")
    client.select_folder("INBOX")
    client.delete_messages(client.search(["SUBJECT", "Early #4"]))
    client.expunge()
    world.close()
    resumed = ImapMailSource(world.account_for, world.limits(), page_size=3)  # the next run

    rest = resumed.delta(mailbox, "inbox", first.next_link, mailbox.watermark)
    polled = resumed.delta_many(mailbox, {"inbox": rest.delta_link or ""})

    assert [m.subject for m in first.messages] == ["Early #1", "Early #2", "Early #3"]
    assert rest.messages == () and rest.delta_link is not None
    assert [m.subject for m in polled["inbox"].messages] == ["Late"]
    resumed.close()


def test_only_the_latest_pages_structures_are_kept_and_an_older_message_is_still_completed(
    mail_server: mailserver.MailServer,
) -> None:
    world = ImapWorld(mail_server)
    mailbox, adele = mailbox_of(world), world.address("adele")
    world.deliver_many("adele", 7, start=now() - timedelta(minutes=30), interval_seconds=-10, subject="Early",
                       from_=CAROL, to=[adele], body="the body",
                       attachments=[{"name": "offer.pdf", "content_type": "application/pdf", "size": 300}])  # fmt: skip
    world.close()
    limits = dataclasses.replace(world.limits(), fetch_batch=2)
    source = ImapMailSource(world.account_for, limits)
    pages = drain(source, mailbox, "inbox")
    kept = len(next(iter(source._sessions.values())).structures)
    marker = trace_marker(mail_server, adele)

    oldest = source.complete(mailbox, pages[0].messages)
    listed = source.attachments(mailbox, [m.source_id for m in pages[0].messages])
    commands = commands_since(mail_server, adele, marker)

    assert [len(page.messages) for page in pages] == [2, 2, 2, 1] and kept == 2 * 2 + 1
    assert [m.body_text for m in oldest] == ["the body", "the body"]
    assert [[a.name for a in found] for found in listed.values()] == [["offer.pdf"], ["offer.pdf"]]
    assert sum("BODYSTRUCTURE" in c and "BODY.PEEK[HEADER]" not in c for c in commands) == 1  # read again, once
    source.close()
