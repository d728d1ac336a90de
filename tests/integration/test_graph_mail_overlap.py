"""The Graph mail adapter overlapping round trips with the caller's work, against the HTTPS emulator:
a delta page's next link is fetched in the background (at most one per mailbox and folder), and attachment
listings are single GETs sharing the mailbox's four request slots.

The tests synchronise with the background fetch through things outside the adapter: the emulator's
per-mailbox request count (a prefetch shows up there before the test asks for its page), and the
``sleep`` GraphHttp takes (called when a refused prefetch waits to retry, on the prefetch's own thread).
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta

import pytest

from sync_core.adapters.graph.http import GraphHttp
from sync_core.adapters.graph.mail import (
    LISTING_THREAD_NAME,
    PREFETCH_THREAD_NAME,
    GraphMailSource,
    graph_time,
)
from sync_core.domain.model import Mailbox
from sync_core.errors import DeltaTokenExpired, MailboxAccessDenied
from sync_core.ports import DeltaPage
from tests.integration.sync_env import ADELE, CAROL, STRANGER, SyncEnv, iso, sync_env

__all__ = ["sync_env"]  # the fixture

PDF = {"name": "terms.pdf", "content_type": "application/pdf", "size": 2048}
LOGO = {"name": "logo.png", "content_type": "image/png", "size": 512, "is_inline": True}


class WaitHook:
    """GraphHttp's injectable sleep: runs ``action`` at the first wait (on the waiting thread), never sleeps."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.action = action
        self.called = threading.Event()

    def __call__(self, _seconds: float) -> None:
        if not self.called.is_set():
            self.action()
            self.called.set()


def served(env: SyncEnv) -> int:
    return int(env.requests_seen("adele")["requests"])


def served_reaches(env: SyncEnv, count: int) -> int:
    """The emulator's request count of Adele's mailbox, once it reached ``count`` (or gave up waiting)."""
    deadline = time.monotonic() + 30
    seen = served(env)
    while seen < count and time.monotonic() < deadline:
        time.sleep(0.02)
        seen = served(env)
    return seen


def adapter_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith((PREFETCH_THREAD_NAME, LISTING_THREAD_NAME))}


def deliver_inbox(env: SyncEnv, count: int) -> None:
    start = env.watermark + timedelta(hours=1)
    env.deliver_many(
        "adele", count, start=start, interval_seconds=1, subject="Note", from_=CAROL, to=[env.address("adele")]
    )


def oracle_pages(env: SyncEnv, page_size: int) -> list[list[str]]:
    """Adele's Inbox delta from the watermark, page by page (internet message ids), read without the adapter."""
    http = GraphHttp(env.session, env.tenant.graph_url, env.token_source)
    params: dict[str, str] | None = {
        "$select": "internetMessageId",
        "$filter": f"receivedDateTime ge {graph_time(env.watermark)}",
    }
    link: str | None = f"users/{env.user_id('adele')}/mailFolders('inbox')/messages/delta"
    pages = []
    while link:
        payload = http.get(link, params, (f"odata.maxpagesize={page_size}",))
        pages.append([str(item["internetMessageId"]) for item in payload["value"]])
        link, params = payload.get("@odata.nextLink"), None
    return pages


def source_for(env: SyncEnv, page_size: int, sleep: Callable[[float], None] = time.sleep) -> GraphMailSource:
    return GraphMailSource(
        lambda _mailbox: GraphHttp(env.session, env.tenant.graph_url, env.token_source, sleep=sleep),
        page_size=page_size,
    )


def first_page(env: SyncEnv, source: GraphMailSource) -> tuple[Mailbox, DeltaPage]:
    mailbox = env.mailboxes[ADELE]
    return mailbox, source.delta(mailbox, "inbox", None, mailbox.watermark)


def test_delta_pages_arrive_complete_and_in_order_each_fetched_before_the_caller_asks_for_it(sync_env: SyncEnv) -> None:
    env = sync_env
    deliver_inbox(env, 14)
    expected = oracle_pages(env, page_size=3)
    before = served(env)
    source = source_for(env, page_size=3)

    mailbox, page = first_page(env, source)
    pages = [page]
    while page.next_link:
        # The next page is requested while the caller still holds this one.
        assert served_reaches(env, before + len(pages) + 1) == before + len(pages) + 1
        page = source.delta(mailbox, "inbox", page.next_link, mailbox.watermark)
        pages.append(page)

    assert [[m.internet_message_id for m in p.messages] for p in pages] == expected
    assert [len(p) for p in expected] == [3, 3, 3, 3, 2]
    assert pages[-1].delta_link is not None
    assert source.requests_made == len(pages) == served(env) - before  # each page read once, counted once


def test_an_error_on_the_prefetched_page_surfaces_on_the_delta_call_for_that_link_and_the_link_reads_again(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    deliver_inbox(env, 6)
    user = env.user_id("adele")
    megan_only = [env.user_id("megan")]
    deny = WaitHook(lambda: env.client.set_access_policy(env.tenant.id, env.tenant.app.client_id, megan_only))
    env.client.add_fault(delay_ms=1, count=1, mailbox=user, path_contains="/delta")  # the first page passes
    env.client.add_fault(status=503, count=1, mailbox=user, path_contains="/delta")  # its prefetch waits to retry
    before = env.requests_seen("adele")["by_status"]
    source = source_for(env, page_size=2, sleep=deny)

    mailbox, page = first_page(env, source)

    # Refused once and told to wait, before the caller asked for page 2; access is then denied.
    assert deny.called.wait(30)
    assert page.next_link is not None and len(page.messages) == 2
    with pytest.raises(MailboxAccessDenied):
        source.delta(mailbox, "inbox", page.next_link, mailbox.watermark)
    statuses = env.requests_seen("adele")["by_status"]
    assert statuses.get("403", 0) - before.get("403", 0) == 1
    assert statuses.get("503", 0) - before.get("503", 0) == 1

    env.client.set_access_policy(env.tenant.id, env.tenant.app.client_id, None)
    second = source.delta(mailbox, "inbox", page.next_link, mailbox.watermark)

    assert len(second.messages) == 2 and second.next_link is not None
    assert not {m.internet_message_id for m in second.messages} & {m.internet_message_id for m in page.messages}


def test_a_410_on_a_prefetched_link_raises_delta_token_expired_and_the_folder_restarts_from_the_watermark(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    deliver_inbox(env, 6)
    user = env.user_id("adele")
    lose_state = WaitHook(lambda: env.client.expire_delta_tokens(user))
    env.client.add_fault(delay_ms=1, count=1, mailbox=user, path_contains="/delta")
    env.client.add_fault(status=503, count=1, mailbox=user, path_contains="/delta")
    before = env.requests_seen("adele")["by_status"]
    source = source_for(env, page_size=2, sleep=lose_state)

    mailbox, page = first_page(env, source)

    assert lose_state.called.wait(30)  # the prefetch was refused once; the sync state is lost before it retries
    assert page.next_link is not None
    with pytest.raises(DeltaTokenExpired):
        source.delta(mailbox, "inbox", page.next_link, mailbox.watermark)
    assert env.requests_seen("adele")["by_status"].get("410", 0) - before.get("410", 0) == 1
    again = source.delta(mailbox, "inbox", None, mailbox.watermark)
    assert [m.internet_message_id for m in again.messages] == [m.internet_message_id for m in page.messages]


def test_a_call_for_another_link_discards_the_prefetch_and_every_request_made_is_counted_once(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    deliver_inbox(env, 6)
    before = served(env)
    source = source_for(env, page_size=2)

    mailbox, first = first_page(env, source)
    assert served_reaches(env, before + 2) == before + 2  # page 1 and the prefetch of page 2
    restarted = source.delta(mailbox, "inbox", None, mailbox.watermark)  # another link: page 2 is dropped
    assert served_reaches(env, before + 4) == before + 4  # the restart and the prefetch of its page 2
    assert first.next_link is not None and restarted.next_link is not None
    old_second = source.delta(mailbox, "inbox", first.next_link, mailbox.watermark)  # read again, not reused
    assert served_reaches(env, before + 6) == before + 6  # that read and the prefetch of its page 3

    assert source.requests_made == served(env) - before == 6
    assert [m.internet_message_id for m in restarted.messages] == [m.internet_message_id for m in first.messages]
    assert len(old_second.messages) == 2


def test_a_prefetch_nobody_asks_for_is_made_once_and_goes_with_the_source_and_its_threads(sync_env: SyncEnv) -> None:
    env = sync_env
    deliver_inbox(env, 6)
    already = adapter_threads()
    before = served(env)
    source = source_for(env, page_size=2)

    _, page = first_page(env, source)
    assert page.next_link is not None
    assert served_reaches(env, before + 2) == before + 2
    assert source.requests_made == 2
    started = adapter_threads() - already
    assert started  # the prefetcher
    collected = weakref.ref(source)
    del source
    gc.collect()

    assert collected() is None  # no thread holds the source, nor so the page it prefetched
    for thread in started:
        thread.join(30)
    assert not any(thread.is_alive() for thread in started)
    assert served(env) == before + 2


def test_a_synced_run_counts_every_delta_page_and_one_request_per_attachment_listing_as_graph_served_them(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    adele = env.address("adele")
    start = env.watermark + timedelta(hours=1)
    env.deliver_many("adele", 7, start=start, subject="Terms", from_=CAROL, to=[adele], attachments=[PDF, LOGO])
    env.deliver_many("adele", 3, start=start, subject="Pitch", from_=STRANGER, to=[adele])
    for k in range(2):
        env.deliver("adele", subject=f"Sent terms {k}", from_=adele, to=[CAROL], folder="sentitems",
                    attachments=[PDF], received=iso(start))  # fmt: skip
    before = served(env)

    outcome = env.sync(ADELE, page_size=4)

    assert outcome.status == "done" and outcome.report is not None and outcome.report.error == ""
    report = outcome.report
    assert report.activities_created == 9
    assert report.graph_requests == served(env) - before == report.pages + 9  # a GET per listing, no prefetch lost
    stored = env.activities()
    assert len(stored) == 9
    assert all([(f.name, f.size) for f in a.attachments] == [("terms.pdf", 2048)] for a in stored.values())
    statuses = env.requests_seen("adele")["by_status"]
    assert set(statuses) == {"200"}  # never over Graph's four requests per mailbox (no 429)
