"""Mailbox watches (Gmail's users.watch in production) on in-memory stores and a MailboxPushes double:
watch at connect, daily renewal, pushes that request a coalesced sync only when proven."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sync_core.domain.model import Mailbox, MailboxStatus
from sync_core.errors import InvalidNotification, ReauthRequired
from sync_core.testing.mail import FixedClock
from sync_core.testing.push import FakeMailboxPushes, InMemorySubscriptionStore
from sync_core.testing.stores import InMemoryStores
from sync_core.use_cases import mailbox_watch
from sync_core.use_cases.mailbox_watch import MailboxWatchDeps

ORG = "acme"
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


class World:
    def __init__(self) -> None:
        self.stores = InMemoryStores()
        self.pushes = FakeMailboxPushes()
        self.store = InMemorySubscriptionStore()
        self.clock = FixedClock(T0)
        self.synced: list[tuple[str, str]] = []
        self.gina = Mailbox(ORG, "mb-gina", "gina@gmail.example", ("gina@gmail.example",), T0, provider="google")
        self.adele = Mailbox(ORG, "mb-adele", "adele@contoso.example", ("adele@contoso.example",), T0)
        self.stores.mailboxes.add(self.gina)
        self.stores.mailboxes.add(self.adele)
        self.deps = MailboxWatchDeps(
            pushes={"google": self.pushes}, store=self.store, mailboxes=self.stores.mailboxes,
            settings=self.stores.settings, clock=self.clock,
            request_sync=lambda org, mailbox: self.synced.append((org, mailbox)),
        )  # fmt: skip

    def push(self, address: str, token: str | None = None) -> bool:
        body = json.dumps({"address": address}).encode()
        presented = self.pushes.token if token is None else token
        return mailbox_watch.receive_push(self.deps, "google", f"Bearer {presented}", body)


def test_a_connected_gmail_mailbox_is_watched_and_a_proven_push_for_it_requests_one_sync() -> None:
    world = World()

    assert mailbox_watch.ensure(world.deps, ORG, "mb-gina")
    assert world.push("gina@gmail.example")

    assert world.synced == [(ORG, "mb-gina")]
    [sub] = world.store.for_mailbox(ORG, "mb-gina")
    assert (sub.notifications, sub.expires_at) == (1, T0 + timedelta(days=7))


def test_a_mailbox_of_a_provider_without_mailbox_pushes_is_not_watched() -> None:
    world = World()

    assert not mailbox_watch.ensure(world.deps, ORG, "mb-adele")
    assert world.pushes.watching == {} and world.store.for_mailbox(ORG, "mb-adele") == ()


@pytest.mark.parametrize("token", ["forged", ""])
def test_a_push_without_the_senders_proof_changes_nothing(token: str) -> None:
    world = World()
    mailbox_watch.ensure(world.deps, ORG, "mb-gina")

    with pytest.raises(InvalidNotification):
        world.push("gina@gmail.example", token=token)
    assert world.synced == []


def test_a_proven_push_for_an_address_nobody_watches_is_only_counted() -> None:
    world = World()

    assert not world.push("stranger@gmail.example")
    assert world.synced == [] and world.store.unknown_count() == 1


def test_watches_are_renewed_a_day_after_their_last_renewal_and_stopped_once_the_mailbox_is_paused() -> None:
    world = World()
    mailbox_watch.ensure(world.deps, ORG, "mb-gina")
    world.clock.moment = T0 + timedelta(hours=23)
    assert mailbox_watch.renew(world.deps) == {}
    world.clock.moment = world.pushes.now = T0 + timedelta(days=1, minutes=1)

    assert mailbox_watch.renew(world.deps) == {"renewed": 1}
    [sub] = world.store.for_mailbox(ORG, "mb-gina")
    assert sub.expires_at == T0 + timedelta(days=8, minutes=1)

    current = world.stores.mailboxes.get(ORG, "mb-gina")
    assert current is not None
    world.stores.mailboxes.replace(replace(current.value, status=MailboxStatus.PAUSED), current.etag)
    world.clock.moment = T0 + timedelta(days=2, minutes=2)
    assert mailbox_watch.renew(world.deps) == {"stopped": 1}
    assert world.store.for_mailbox(ORG, "mb-gina") == () and world.pushes.stopped == ["gina@gmail.example"]


def test_a_watch_that_fails_leaves_the_mailbox_polled_and_the_next_tick_tries_again() -> None:
    world = World()
    world.pushes.fail_watch = ReauthRequired("Google refused the mailbox's grant")

    assert not mailbox_watch.ensure(world.deps, ORG, "mb-gina")
    assert world.store.for_mailbox(ORG, "mb-gina") == ()


def test_a_disconnect_stops_the_watch_and_forgets_it() -> None:
    world = World()
    mailbox_watch.ensure(world.deps, ORG, "mb-gina")

    mailbox_watch.stop(world.deps, ORG, "mb-gina")

    assert world.store.for_mailbox(ORG, "mb-gina") == () and world.pushes.watching == {}
