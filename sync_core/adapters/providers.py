"""One mechanism for several mail providers: route each mailbox to its provider's adapter.

The composition root registers, per provider name (``Mailbox.provider``: ``microsoft``, ``imap``,
``google``), a factory for each port the provider implements. ``ProviderTable`` builds an adapter the
first time a mailbox of that provider needs it and reuses it afterwards; ``MailSourceByProvider`` and
``MailSenderByProvider`` are the ``MailSource`` and ``MailSender`` the use cases get, so they never choose
a provider themselves.

Invariants:
- A mailbox is served only by the adapter registered under its own ``provider``; a name nobody
  registered raises ``UnknownProvider`` (a ``ConfigurationFailure``: the mailbox shows ``error`` with the
  reason), never falls back to another provider.
- Adapters are built lazily, so a deployment that only has Microsoft mailboxes never imports the IMAP
  or Google packages, and a run builds only the adapter of the mailbox it syncs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Generic, TypeVar

from sync_core.domain.model import AttachmentSummary, Mailbox, MailMessage
from sync_core.errors import UnknownProvider
from sync_core.ports import (
    DeltaPage,
    MailSender,
    MailSource,
    OutgoingMessage,
    ProviderView,
    ReportsUsage,
    RequestUsage,
    SearchPage,
    SearchQuery,
)

T = TypeVar("T")


class ProviderTable(Generic[T]):
    """Adapters of one port, one per provider name, built on first use from the registered factories."""

    def __init__(self, port: str, factories: Mapping[str, Callable[[], T]]) -> None:
        self._port = port
        self._factories = dict(factories)
        self._built: dict[str, T] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._factories))

    def for_provider(self, provider: str) -> T:
        with self._lock:
            adapter = self._built.get(provider)
            if adapter is None:
                factory = self._factories.get(provider)
                if factory is None:
                    raise UnknownProvider(
                        f"the mailbox's provider {provider!r} has no {self._port} in this deployment "
                        f"(known: {', '.join(self.names) or 'none'})"
                    )
                adapter = self._built[provider] = factory()
            return adapter

    def for_mailbox(self, mailbox: Mailbox) -> T:
        return self.for_provider(mailbox.provider)

    def built(self) -> tuple[T, ...]:
        with self._lock:
            return tuple(self._built.values())


class MailSourceByProvider:
    """The ``MailSource`` of every provider: each call goes to the source of the mailbox's provider."""

    def __init__(self, factories: Mapping[str, Callable[[], MailSource]]) -> None:
        self._sources: ProviderTable[MailSource] = ProviderTable("mail source", factories)

    def source_for(self, mailbox: Mailbox) -> MailSource:
        return self._sources.for_mailbox(mailbox)

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        return self.source_for(mailbox).delta(mailbox, folder, link, since)

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        return self.source_for(mailbox).delta_many(mailbox, links)

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        return self.source_for(mailbox).attachments(mailbox, source_ids)

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> Sequence[MailMessage]:
        return self.source_for(mailbox).complete(mailbox, messages)

    def find_message(self, mailbox: Mailbox, internet_message_id: str) -> MailMessage | None:
        return self.source_for(mailbox).find_message(mailbox, internet_message_id)

    def search(self, mailbox: Mailbox, query: SearchQuery, cursor: str | None) -> SearchPage:
        return self.source_for(mailbox).search(mailbox, query, cursor)

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        return self.source_for(mailbox).folders(mailbox)

    @property
    def requests_made(self) -> int:
        return sum(source.requests_made for source in self._sources.built())

    def close(self) -> None:
        """Close the connections of the sources built so far that hold any (IMAP's per-run sessions)."""
        for source in self._sources.built():
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def requests_for(self, mailbox: Mailbox) -> int:
        try:
            return self.source_for(mailbox).requests_for(mailbox)
        except UnknownProvider:
            return 0

    def usage_for(self, mailbox: Mailbox) -> RequestUsage:
        """``ReportsUsage`` of the mailbox's provider's source; requests only where it has no more."""
        try:
            source = self.source_for(mailbox)
        except UnknownProvider:
            return RequestUsage()
        if isinstance(source, ReportsUsage):
            return source.usage_for(mailbox)
        return RequestUsage(requests=source.requests_for(mailbox))


class MailSenderByProvider:
    """The ``MailSender`` of every provider: each call goes to the sender of the mailbox's provider (a
    provider that registered no sender raises ``UnknownProvider``: the send fails with the reason)."""

    def __init__(self, factories: Mapping[str, Callable[[], MailSender]]) -> None:
        self._senders: ProviderTable[MailSender] = ProviderTable("mail sender", factories)

    def sender_for(self, mailbox: Mailbox) -> MailSender:
        return self._senders.for_mailbox(mailbox)

    def permission_problem(self, mailbox: Mailbox) -> str | None:
        return self.sender_for(mailbox).permission_problem(mailbox)

    def prepare(self, mailbox: Mailbox, message: OutgoingMessage) -> str:
        return self.sender_for(mailbox).prepare(mailbox, message)

    def locate(self, mailbox: Mailbox, send_id: str) -> tuple[str, ...]:
        return self.sender_for(mailbox).locate(mailbox, send_id)

    def discard(self, mailbox: Mailbox, handle: str) -> None:
        self.sender_for(mailbox).discard(mailbox, handle)

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        self.sender_for(mailbox).submit(mailbox, handle)

    def inspect(self, mailbox: Mailbox, handle: str) -> ProviderView:
        return self.sender_for(mailbox).inspect(mailbox, handle)
