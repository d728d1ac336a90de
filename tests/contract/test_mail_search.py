"""``MailSource.search``, the participant search the record backfill relies on: the same cases on the in-memory
double (``FakeMailSource``), on the Graph adapter against the HTTPS emulator (``$search``, KQL) and on the Gmail
adapter against the Google emulator (``q=`` with a brace group) and on the IMAP adapter against the real Dovecot
(``UID SEARCH`` with a tree of ORs).

The port's contract (``sync_core/ports/mail.py``): at least every message of the folder received at or
after ``since`` with a searched address in From/To/Cc or an address at exactly a searched domain; never one
received earlier; pages until ``cursor`` is None; a capped search says so. A provider adapter (IMAP, Gmail)
joins by adding its ``Source`` below.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.adapters.graph.mail import GraphMailSource
from sync_core.domain.model import EmailAddress, Mailbox, MailMessage
from sync_core.errors import MessageNotFound
from sync_core.ports import MailSource, SearchPage, SearchQuery
from sync_core.testing.mail import FakeMailSource
from tests.integration.gmail_env import GmailSyncEnv, gmail_env
from tests.integration.sync_env import ADELE, SyncEnv, imap_env, iso, sync_env

__all__ = ["gmail_env", "imap_env", "sync_env"]  # the fixtures

NOW = datetime.now(UTC).replace(microsecond=0)
_ids = itertools.count(1)


@dataclass
class Source:
    """A mail source, its mailbox, and a way to put a message in it (From, To, Cc, Bcc, received, folder)."""

    kind: str
    source: MailSource
    mailbox: Mailbox
    env: SyncEnv | None = None

    def deliver(self, sender: str, to: Sequence[str], *, cc: Sequence[str] = (), bcc: Sequence[str] = (),
                received: datetime, folder: str = "inbox") -> str:  # fmt: skip
        n = next(_ids)
        mid = f"<search-{n}-{NOW.timestamp():.0f}@mail.example>"
        if self.env is None:
            assert isinstance(self.source, FakeMailSource)
            self.source.deliver(MailMessage(
                source_id=f"s{n}", internet_message_id=mid, subject=f"s{n}", sender=EmailAddress(sender),
                to=tuple(EmailAddress(a) for a in to), cc=tuple(EmailAddress(a) for a in cc),
                received_at=received, folder=folder,
            ))  # fmt: skip
        else:
            self.env.deliver("adele", from_=sender, to=list(to), cc=list(cc), bcc=list(bcc), subject=f"s{n}",
                             received=iso(received), sent=iso(received), folder=folder,
                             internet_message_id=mid)  # fmt: skip
        return mid

    def all_pages(self, query: SearchQuery) -> list[SearchPage]:
        pages, cursor = [], None
        while True:
            page = self.source.search(self.mailbox, query, cursor)
            pages.append(page)
            if page.cursor is None:
                return pages
            cursor = page.cursor

    def found(self, query: SearchQuery) -> set[str]:
        return {m.internet_message_id for page in self.all_pages(query) for m in page.messages}


@pytest.fixture(params=["fake", "graph", "gmail", "imap"])
def source(request: pytest.FixtureRequest) -> Iterator[Source]:
    if request.param == "fake":
        box = Mailbox("org-1", ADELE, "adele@contoso.example", ("adele@contoso.example",), NOW - timedelta(days=90))
        yield Source("fake", FakeMailSource(page_size=2), box)
        return
    if request.param == "gmail":
        gmail: GmailSyncEnv = request.getfixturevalue("gmail_env")
        yield Source("gmail", gmail.mail_source(), gmail.mailboxes[ADELE], gmail)
        return
    if request.param == "imap":
        dovecot: SyncEnv = request.getfixturevalue("imap_env")
        yield Source("imap", dovecot.mail_source(), dovecot.mailboxes[ADELE], dovecot)
        return
    env: SyncEnv = request.getfixturevalue("sync_env")
    graph = GraphMailSource(env.graph_for)
    yield Source("graph", graph, env.mailboxes[ADELE], env)


def me(source: Source) -> str:
    return source.mailbox.address


def test_a_search_finds_the_participants_in_from_to_and_cc_within_the_window_only(source: Source) -> None:
    since = NOW - timedelta(days=10)
    sent_by = source.deliver("dan@talent.example", [me(source)], received=NOW - timedelta(days=1))
    sent_to = source.deliver(me(source), ["dan@talent.example"], received=NOW - timedelta(days=2), folder="sentitems")
    three_days = NOW - timedelta(days=3)
    copied = source.deliver("x@other.example", [me(source)], cc=["dan@talent.example"], received=three_days)
    source.deliver("dan@talent.example", [me(source)], received=since - timedelta(days=2))  # before the window
    source.deliver("eve@else.example", [me(source)], received=NOW - timedelta(days=1))  # someone else

    inbox = source.found(SearchQuery("inbox", ("dan@talent.example",), (), since))
    sent = source.found(SearchQuery("sentitems", ("dan@talent.example",), (), since))

    assert inbox == {sent_by, copied}
    assert sent == {sent_to}


def test_a_domain_is_searched_as_the_domain_itself(source: Source) -> None:
    since = NOW - timedelta(days=10)
    at_domain = source.deliver("boss@client.example", [me(source)], received=NOW - timedelta(days=1))
    source.deliver("boss@sub.client.example", [me(source)], received=NOW - timedelta(days=1))
    source.deliver("boss@client.example.org", [me(source)], received=NOW - timedelta(days=1))

    assert source.found(SearchQuery("inbox", (), ("client.example",), since)) == {at_domain}


def test_a_participant_only_in_bcc_is_not_returned(source: Source) -> None:
    source.deliver(me(source), ["x@other.example"], bcc=["dan@talent.example"], received=NOW - timedelta(days=1),
                   folder="sentitems")  # fmt: skip
    assert source.found(SearchQuery("sentitems", ("dan@talent.example",), (), NOW - timedelta(days=5))) == set()


def test_several_terms_are_one_search_and_pages_end_with_no_cursor(source: Source) -> None:
    ids = {
        source.deliver(f"p{i}@people.example", [me(source)], received=NOW - timedelta(hours=i + 1)) for i in range(5)
    }
    query = SearchQuery("inbox", tuple(f"p{i}@people.example" for i in range(5)), (), NOW - timedelta(days=1))
    pages = source.all_pages(query)
    found = [m.internet_message_id for page in pages for m in page.messages]
    assert set(found) == ids and pages[-1].cursor is None and not any(p.capped for p in pages)


def test_a_folder_the_mailbox_does_not_have_is_not_found(source: Source) -> None:
    gone = "AAMkADAwATM0MDAAMS1hBGAAA" + "x" * 45  # the shape of a folder id, of no folder
    with pytest.raises(MessageNotFound):
        source.source.search(source.mailbox, SearchQuery(gone, ("dan@talent.example",), (), NOW), None)


def test_a_query_takes_one_to_twenty_terms() -> None:
    with pytest.raises(ValueError, match="1 to 20"):
        SearchQuery("inbox", (), (), NOW)
    with pytest.raises(ValueError, match="1 to 20"):
        SearchQuery("inbox", tuple(f"a{i}@x.example" for i in range(21)), (), NOW)


def test_graph_caps_a_search_at_1000_results_and_the_adapter_says_so(sync_env: SyncEnv) -> None:
    sync_env.deliver_many("adele", 1005, start=NOW - timedelta(minutes=1), interval_seconds=10,
                          from_="busy@client.example", to=[sync_env.address("adele")], subject="Report")  # fmt: skip
    graph = GraphMailSource(sync_env.graph_for)
    query = SearchQuery("inbox", ("busy@client.example",), (), NOW - timedelta(days=30))
    pages: list[SearchPage] = []
    cursor: Any = None
    while True:
        page = graph.search(sync_env.mailboxes[ADELE], query, cursor)
        pages.append(page)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert sum(len(p.messages) for p in pages) == 1000
    assert pages[-1].capped and len(pages) == 4  # 250 a page, one request each
