"""``ImapMailSource``: the ``MailSource`` port over IMAP (RFC 3501), with CONDSTORE (RFC 7162) where the
server has it.

Folders: Inbox is ``INBOX``; Sent is the folder flagged ``\\Sent`` (RFC 6154 SPECIAL-USE), else the first
of the usual names (``SENT_NAMES``). "All folders" is every selectable folder but Junk, Trash, Drafts and
the virtual ``\\All``/``\\Flagged`` views, each named by its IMAP name (the provider's folder id).

A folder's cursor (``cursor.FolderCursor``) holds its UIDVALIDITY, the last UID returned, the
HIGHESTMODSEQ seen and, mid-round, the round's last UID. Invariants:

- **New mail only, by INTERNALDATE**: a round returns the messages with a UID above the cursor's and an
  INTERNALDATE at or after ``since`` (``UID SEARCH UID n:m SINCE <day before>`` narrows, the INTERNALDATE
  decides). Older mail is never returned, not even counted, as with Graph's filter.
- **UIDVALIDITY**: a cursor of another UIDVALIDITY raises ``DeltaTokenExpired``; the sync restarts the
  folder from the watermark, and the activity store's keyed writes (org + Message-ID) make the replay
  create nothing twice.
- **One UID SEARCH per folder and round**: a round's first page searches ``UID n:*`` and keeps the UIDs
  found for its later pages (in the connection's session), so a backfill costs one SEARCH per folder per
  run. The round's end is fixed by that search: mail arriving meanwhile has higher UIDs (RFC 3501 §2.3.1.1:
  UIDs only ascend) and waits for the next round; mail expunged meanwhile is simply missing from the FETCH.
- **The next page is on its way while a page is parsed and decided**: as soon as a round's page has been
  fetched, the round's next FETCH is sent from a background thread, so the server's work and the transfer
  overlap the parsing and the caller's decisions. The connection serves one command at a time: every call
  waits for that FETCH to end first (and fails as it failed); the next page takes its answer, anything else
  leaves it unused.
- **Idle polls are cheap**: with CONDSTORE an unchanged HIGHESTMODSEQ ends a folder's poll; without it, a
  UIDNEXT not above the cursor does. ``delta_many`` reads both for every folder in one command where the
  server offers LIST-STATUS (RFC 5819) and SPECIAL-USE (RFC 6154), which also lists the folders:
  ``LIST "" "*" RETURN (SPECIAL-USE STATUS (UIDNEXT UIDVALIDITY HIGHESTMODSEQ))``; elsewhere each folder is
  EXAMINEd. CONDSTORE is ENABLEd just before the connection's first EXAMINE, so a poll that finds nothing
  costs LOGIN and that one LIST.
- **Two phases, bodies of matched mail only**: ``delta`` fetches ``UID FLAGS INTERNALDATE RFC822.SIZE
  BODYSTRUCTURE BODY.PEEK[HEADER]`` (the header section bounded to ``MAX_HEADER_BYTES``); the pipeline
  decides on that; ``complete`` then fetches ``BODY.PEEK[<section>]<0.limit>`` of the text parts of the
  messages it is given, which the pipeline calls for matched messages only. Nothing sets ``\\Seen``
  (EXAMINE opens folders read-only, and every fetch is a PEEK).
- **Bounded**: connect and read timeouts, ``fetch_batch`` messages per FETCH and per page, ``body_bytes``
  per text part, no body at all above ``max_message_bytes``.
- **A dropped connection** fails the call with ``MailServerUnavailable`` (transient) and forgets the
  connection; the run stops there, and the next one resumes at the last stored cursor.

``requests_for`` counts IMAP commands (each round trip once).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import logging
import quopri
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.response_parser import parse_response

from sync_core.adapters.imap import structure
from sync_core.adapters.imap.account import ImapAccount, ImapLimits
from sync_core.adapters.imap.connection import close, connect, translated_errors
from sync_core.adapters.imap.cursor import FolderCursor
from sync_core.domain.folders import FolderRole
from sync_core.domain.mime import header_section_fields
from sync_core.domain.model import AttachmentSummary, Mailbox, MailMessage
from sync_core.domain.text import html_text, preview
from sync_core.errors import DeltaTokenExpired, InvalidMessage, MessageNotFound
from sync_core.ports import DeltaPage, SearchPage, SearchQuery

log = logging.getLogger(__name__)
T = TypeVar("T")

SENT_NAMES = ("Sent", "Sent Items", "Sent Messages", "Sent Mail", "INBOX.Sent", "INBOX/Sent", "[Gmail]/Sent Mail")
EXCLUDED_USES = (b"\\Junk", b"\\Trash", b"\\Drafts", b"\\All", b"\\Flagged")
EXCLUDED_NAMES = ("junk", "spam", "trash", "deleted items", "deleted messages", "drafts", "bulk mail")
MAX_HEADER_BYTES = 256 * 1024
HEADER_ITEM = f"BODY.PEEK[HEADER]<0.{MAX_HEADER_BYTES}>"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PHASE_ONE = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODYSTRUCTURE", HEADER_ITEM]


@dataclass(frozen=True)
class _Status:
    """A folder's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ (0 without CONDSTORE), from EXAMINE or LIST-STATUS."""

    uidvalidity: int
    uidnext: int
    highestmodseq: int


@dataclass(frozen=True)
class _Round:
    """What a round's one ``UID SEARCH`` found in a folder: the UIDs above the round's start up to ``end``
    (its last UID), for the watermark's ``day``."""

    uidvalidity: int
    day: date | None
    end: int
    uids: tuple[int, ...]


@dataclass
class _Prefetch:
    """A round's next FETCH, running on ``thread``: ``key`` is (IMAP name, UIDVALIDITY, UIDs)."""

    key: tuple[str, int, tuple[int, ...]]
    thread: threading.Thread
    answer: dict[int, Any] | None = None
    error: BaseException | None = None


@dataclass
class _Session:
    client: IMAPClient
    condstore: bool
    list_status: bool = False  # LIST-STATUS and SPECIAL-USE offered (and the command not refused)
    condstore_enabled: bool = False
    folders: dict[str, str] | None = None  # folder id (role or IMAP name) -> IMAP name
    all_folders: tuple[str, ...] | None = None
    selected: tuple[str, dict[bytes, Any]] | None = None
    # source id -> (BODYSTRUCTURE, size) of the latest pages' messages (``_forget_old_structures``)
    structures: dict[str, tuple[structure.Structure, int]] = field(default_factory=dict)
    rounds: dict[str, _Round] = field(default_factory=dict)  # IMAP name -> the folder's round in progress
    prefetch: _Prefetch | None = None  # the round's next FETCH, sent before the caller asked for it


class ImapMailSource:
    """See the module docstring. One instance per run (as ``bootstrap`` builds mail sources): it keeps one
    logged-in connection per mailbox for the run, closed by ``close``."""

    def __init__(
        self,
        account_for: Callable[[Mailbox], ImapAccount],
        limits: ImapLimits | None = None,
        *,
        page_size: int | None = None,
    ) -> None:
        self._account_for = account_for
        self.limits = limits = limits or ImapLimits()
        self.page_size = min(page_size or limits.fetch_batch, limits.fetch_batch)
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    # -- MailSource ---------------------------------------------------------------------------------

    @property
    def requests_made(self) -> int:
        return sum(self._counts.values())

    def requests_for(self, mailbox: Mailbox) -> int:
        return self._counts[_key(mailbox)]

    def delta(self, mailbox: Mailbox, folder: str, link: str | None, since: datetime) -> DeltaPage:
        return self._call(mailbox, lambda s: self._delta_from_link(mailbox, s, folder, link, since))

    def delta_many(self, mailbox: Mailbox, links: Mapping[str, str]) -> Mapping[str, DeltaPage]:
        """Every folder's status from one LIST-STATUS command where the server offers it, else one EXAMINE
        per folder (IMAP has no batch): a caught-up folder whose UIDVALIDITY and HIGHESTMODSEQ (or UIDNEXT)
        did not move costs nothing more; any other folder is read as ``delta`` reads it, from the mailbox's
        watermark."""

        def poll(session: _Session) -> dict[str, DeltaPage]:
            statuses = self._list_status(mailbox, session)
            pages = {}
            for folder, link in links.items():
                cursor = FolderCursor.decode(link)
                name = (session.folders or {}).get(folder)
                status = statuses.get(name) if statuses is not None and name is not None else None
                if cursor is None or status is None or not cursor.caught_up:
                    pages[folder] = self._delta_from_link(mailbox, session, folder, link, mailbox.watermark)
                    continue
                if status.uidvalidity != cursor.uidvalidity:
                    raise DeltaTokenExpired("the folder's UIDVALIDITY changed: its UIDs were renumbered")
                same = _unchanged(cursor, status)
                if same is not None:
                    pages[folder] = DeltaPage(folder, (), next_link=None, delta_link=same.encode())
                else:
                    pages[folder] = self._delta(mailbox, session, folder, cursor, mailbox.watermark)
            return pages

        return self._call(mailbox, poll)

    def complete(self, mailbox: Mailbox, messages: Sequence[MailMessage]) -> list[MailMessage]:
        """The messages with their bodies (text parts only, PEEKed). Messages of another source, or gone
        from the server meanwhile, come back as they were given."""
        if not messages:
            return []
        return self._call(mailbox, lambda s: self._complete(mailbox, s, messages))

    def attachments(self, mailbox: Mailbox, source_ids: Sequence[str]) -> Mapping[str, tuple[AttachmentSummary, ...]]:
        """From BODYSTRUCTURE (read by ``delta``, or again here); a message gone from the server is left out."""

        def read(session: _Session) -> dict[str, tuple[AttachmentSummary, ...]]:
            self._structures(mailbox, session, [i for i in source_ids if i not in session.structures])
            return {i: session.structures[i][0].attachments for i in source_ids if i in session.structures}

        return self._call(mailbox, read)

    def find_message(self, mailbox: Mailbox, internet_message_id: str) -> MailMessage | None:
        """``UID SEARCH HEADER Message-ID`` in Inbox and Sent, then every other folder."""
        wanted = internet_message_id.strip().strip("<>")
        if not wanted:
            return None

        def find(session: _Session) -> MailMessage | None:
            folders = self._folder_map(mailbox, session)
            order = [FolderRole.INBOX.value, FolderRole.SENT.value]
            order += [f for f in self._all_folders(mailbox, session) if f not in order]
            for folder in order:
                if folder not in folders:
                    continue
                info = self._examine(mailbox, session, folders[folder])
                self._count(mailbox)
                uids = sorted(session.client.search(["HEADER", "Message-ID", wanted]))
                messages = self._fetch_headers(mailbox, session, folder, info, uids[:1])
                if messages:
                    return self._complete(mailbox, session, messages)[0]
            return None

        return self._call(mailbox, find)

    def search(self, mailbox: Mailbox, query: SearchQuery, cursor: str | None) -> SearchPage:
        """``UID SEARCH UID n:* SINCE <day before> OR (FROM a) (OR (TO a) …)`` in the folder, then the
        headers of the first ``page_size`` UIDs found, as ``delta`` reads them (three commands a page:
        EXAMINE, SEARCH, FETCH). FROM/TO/CC match substrings of the header (a domain is asked as
        ``@domain``) and SINCE is by day, so what comes back is narrowed to ``query.wants``: exactly the
        participants and the window. ``cursor`` is ``"<uidvalidity> <last uid returned>"``; a
        UIDVALIDITY change between pages starts the folder's search again (duplicates are the caller's
        to drop, by Message-ID)."""
        words = [*query.addresses, *(f"@{domain}" for domain in query.domains)]
        keys = [[field, word] for word in words for field in ("FROM", "TO", "CC")]

        def find(session: _Session) -> SearchPage:
            info = self._examine(mailbox, session, self._imap_name(mailbox, session, query.folder))
            uidvalidity = int(info.get(b"UIDVALIDITY", 0))
            seen, last = (cursor or "0 0").partition(" ")[::2]
            after = int(last) if int(seen) == uidvalidity else 0
            day_before = (query.since.astimezone(UTC) - timedelta(days=1)).date()
            criteria: list[Any] = ["UID", f"{after + 1}:*", "SINCE", day_before]
            self._count(mailbox)
            found = sorted(uid for uid in session.client.search([*criteria, *_any_of(keys)]) if uid > after)
            batch = found[: self.page_size]
            messages = self._fetch_headers(mailbox, session, query.folder, info, batch, since=query.since)
            more = len(found) > len(batch)
            return SearchPage(
                query.folder,
                tuple(m for m in messages if query.wants(m)),
                f"{uidvalidity} {batch[-1]}" if more else None,
            )

        return self._call(mailbox, find)

    def folders(self, mailbox: Mailbox) -> tuple[str, ...]:
        return self._call(mailbox, lambda s: self._all_folders(mailbox, s))

    def close(self) -> None:
        """Log out of every connection this source opened."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            if session.prefetch is not None:
                session.prefetch.thread.join()
            close(session.client)

    # -- connections --------------------------------------------------------------------------------

    def _call(self, mailbox: Mailbox, work: Callable[[_Session], T]) -> T:
        session = self._session(mailbox)
        try:
            with translated_errors():
                _settle(session)
                return work(session)
        except (DeltaTokenExpired, MessageNotFound):
            raise  # answers about a folder: the conversation itself is fine
        except Exception:
            # Whatever failed may have left the conversation mid-command: never reuse it.
            self._drop(mailbox)
            raise

    def _session(self, mailbox: Mailbox) -> _Session:
        key = _key(mailbox)
        with self._lock:
            found = self._sessions.get(key)
        if found is not None:
            return found
        self._count(mailbox)  # LOGIN (connecting is no command)
        client = connect(self._account_for(mailbox), self.limits)
        with translated_errors():  # from the login answer's CAPABILITY code (asked for if it had none)
            condstore = client.has_capability("CONDSTORE")
            list_status = client.has_capability("LIST-STATUS") and client.has_capability("SPECIAL-USE")
        session = _Session(client, condstore, list_status=list_status)
        with self._lock:
            self._sessions[key] = session
        return session

    def _drop(self, mailbox: Mailbox) -> None:
        with self._lock:
            session = self._sessions.pop(_key(mailbox), None)
        if session is not None:
            if session.prefetch is not None:
                session.prefetch.thread.join()
            close(session.client)

    def _count(self, mailbox: Mailbox, n: int = 1) -> None:
        with self._lock:
            self._counts[_key(mailbox)] += n

    # -- folders ------------------------------------------------------------------------------------

    def _folder_map(self, mailbox: Mailbox, session: _Session) -> dict[str, str]:
        if session.folders is None:
            self._count(mailbox)
            listed = session.client.list_folders()
            session.folders, session.all_folders = _map_folders(listed)
        return session.folders

    def _all_folders(self, mailbox: Mailbox, session: _Session) -> tuple[str, ...]:
        self._folder_map(mailbox, session)
        assert session.all_folders is not None
        return session.all_folders

    def _imap_name(self, mailbox: Mailbox, session: _Session, folder: str) -> str:
        name = self._folder_map(mailbox, session).get(folder)
        if name is None:
            raise MessageNotFound(f"the mailbox has no {folder!r} folder")
        return name

    def _examine(self, mailbox: Mailbox, session: _Session, name: str, *, fresh: bool = True) -> dict[bytes, Any]:
        """EXAMINE (read-only SELECT) the folder: ``fresh`` always (UIDNEXT/HIGHESTMODSEQ current), else
        only when another folder is selected. The connection's first EXAMINE is preceded by ENABLE CONDSTORE
        where the server has it (EXAMINE then reports HIGHESTMODSEQ, RFC 7162 §3.1; ENABLE is valid only
        before a folder is selected, RFC 5161 §3.1), so a connection that selects nothing never sends it."""
        if not fresh and session.selected is not None and session.selected[0] == name:
            return session.selected[1]
        if session.condstore and not session.condstore_enabled:
            self._count(mailbox)
            session.client.enable("CONDSTORE")
            session.condstore_enabled = True
        self._count(mailbox)
        info: dict[bytes, Any] = session.client.select_folder(name, readonly=True)
        session.selected = (name, info)
        return info

    def _list_status(self, mailbox: Mailbox, session: _Session) -> dict[str, _Status] | None:
        """The status of every selectable folder by IMAP name from one ``LIST "" "*" RETURN (SPECIAL-USE
        STATUS (UIDNEXT UIDVALIDITY [HIGHESTMODSEQ]))`` (RFC 5819), which also refreshes the session's folder
        map (the SPECIAL-USE return option of RFC 6154 keeps the ``\\Sent``, ``\\Junk``... attributes, which
        Dovecot leaves out of an extended LIST without it); None where the server offers no LIST-STATUS or
        SPECIAL-USE, or refused the command (the caller then EXAMINEs). HIGHESTMODSEQ is a STATUS item of
        RFC 7162 §3.1 (and asking for it makes the connection CONDSTORE-aware), asked of CONDSTORE servers only;
        a non-selectable folder has no status (Dovecot sends none for a ``\\Noselect`` one).
        """
        if not session.list_status:
            return None
        items = "UIDNEXT UIDVALIDITY HIGHESTMODSEQ" if session.condstore else "UIDNEXT UIDVALIDITY"
        imap = session.client._imap  # imapclient's LIST takes no return options; imaplib's passes them on
        imap.response("STATUS")  # forget unsolicited STATUS responses, if any
        self._count(mailbox)
        try:
            typ, listed = imap.list('""', f'"*" RETURN (SPECIAL-USE STATUS ({items}))')
        except IMAPClientAbortError:
            raise
        except IMAPClientError:  # BAD: the server does not take it after all
            typ, listed = "BAD", []
        if typ != "OK":
            session.list_status = False
            return None
        _, answered = imap.response("STATUS")
        client = session.client
        folders = [
            (flags, delimiter, _folder_name(client, name))
            for flags, delimiter, name in _chunks(parse_response(_present(listed)), 3)
        ]
        session.folders, session.all_folders = _map_folders(folders)
        statuses: dict[str, _Status] = {}
        for name, pairs in _chunks(parse_response(_present(answered)), 2):
            values = dict(zip(pairs[::2], pairs[1::2], strict=False))
            statuses[_folder_name(client, name)] = _Status(
                int(values.get(b"UIDVALIDITY", 0)), int(values.get(b"UIDNEXT", 0)), int(values.get(b"HIGHESTMODSEQ", 0))
            )
        return statuses

    # -- delta --------------------------------------------------------------------------------------

    def _delta_from_link(
        self, mailbox: Mailbox, session: _Session, folder: str, link: str | None, since: datetime
    ) -> DeltaPage:
        cursor = FolderCursor.decode(link) if link else None
        if link and cursor is None:
            raise DeltaTokenExpired("not a cursor of this IMAP adapter")
        return self._delta(mailbox, session, folder, cursor, since)

    def _delta(
        self, mailbox: Mailbox, session: _Session, folder: str, cursor: FolderCursor | None, since: datetime
    ) -> DeltaPage:
        name = self._imap_name(mailbox, session, folder)
        info = self._examine(mailbox, session, name, fresh=cursor is None or cursor.caught_up)
        uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        modseq = int(info.get(b"HIGHESTMODSEQ", 0)) if session.condstore else 0
        if cursor is not None and not cursor.caught_up:
            # A round keeps the HIGHESTMODSEQ of its start: one seen now may count mail past the round's end,
            # which its delta link must not claim (the next poll would take that mail for seen).
            modseq = cursor.highestmodseq
        uidnext = int(info.get(b"UIDNEXT", 0))
        if cursor is not None and cursor.uidvalidity != uidvalidity:
            raise DeltaTokenExpired("the folder's UIDVALIDITY changed: its UIDs were renumbered")
        last = cursor.last_uid if cursor is not None else 0
        if cursor is not None and cursor.caught_up:
            same = _unchanged(cursor, _Status(uidvalidity, uidnext, modseq))
            if same is not None:
                return DeltaPage(folder, (), next_link=None, delta_link=same.encode())
        end = cursor.end_uid if cursor is not None and not cursor.caught_up else 0
        candidates = self._search(mailbox, session, name, uidvalidity=uidvalidity, last=last, end=end, since=since)
        if not candidates:
            # A round's end bounds it: a UIDNEXT seen by another run's EXAMINE may count mail that arrived after
            # the round started, which this round never searched.
            top = max(last, end) if end else max(last, uidnext - 1 if uidnext else last)
            return DeltaPage(folder, (), next_link=None, delta_link=FolderCursor(uidvalidity, top, modseq).encode())
        end = end or candidates[-1]
        batch = candidates[: self.page_size]
        following_uids = tuple(candidates[self.page_size : 2 * self.page_size])
        messages = self._fetch_headers(
            mailbox, session, folder, info, batch, since=since, then=(name, uidvalidity, following_uids)
        )
        new_last = batch[-1]
        if new_last >= end:
            top = max(end, new_last)
            return DeltaPage(folder, tuple(messages), next_link=None,
                             delta_link=FolderCursor(uidvalidity, top, modseq).encode())  # fmt: skip
        following = FolderCursor(uidvalidity, new_last, modseq, end)
        return DeltaPage(folder, tuple(messages), next_link=following.encode(), delta_link=None)

    def _prefetch(self, mailbox: Mailbox, session: _Session, key: tuple[str, int, tuple[int, ...]]) -> None:
        """Send the round's next FETCH (``key``: IMAP name, UIDVALIDITY, UIDs) from a background thread; the
        next ``_call`` waits for it (``_settle``) before it uses the connection."""
        if not key[2]:
            return
        client = session.client

        def fetch() -> None:
            try:
                pending.answer = client.fetch(list(key[2]), PHASE_ONE)
            except BaseException as exc:  # handed to the next call, which fails with it
                pending.error = exc

        pending = _Prefetch(key, threading.Thread(target=fetch, name="imap-prefetch", daemon=True))
        self._count(mailbox)
        session.prefetch = pending
        pending.thread.start()

    def _search(
        self, mailbox: Mailbox, session: _Session, name: str, *, uidvalidity: int, last: int, end: int, since: datetime
    ) -> list[int]:
        """UIDs above ``last`` (up to ``end`` when set) of mail that may be as new as ``since``: SEARCH
        SINCE is by day in the server's time zone, so the day before is asked and INTERNALDATE decides.

        A round in progress (``end`` set) that this session searched already takes its UIDs from there (see
        the module docstring); a new round, or one resumed by another run, searches."""
        day = (since.astimezone(UTC) - timedelta(days=1)).date() if since > _EPOCH else None
        known = session.rounds.get(name)
        if end and known is not None and (known.uidvalidity, known.day, known.end) == (uidvalidity, day, end):
            return list(known.uids[bisect.bisect_right(known.uids, last) :])
        criteria: list[Any] = ["UID", f"{last + 1}:{end or '*'}"]
        if day is not None:
            criteria += ["SINCE", day]
        self._count(mailbox)
        found = session.client.search(criteria)
        # "n:*" includes the highest UID even when it is below n (RFC 3501 §6.4.8): keep only new ones.
        uids = sorted(uid for uid in found if uid > last and (not end or uid <= end))
        session.rounds[name] = _Round(uidvalidity, day, end or (uids[-1] if uids else 0), tuple(uids))
        return uids

    def _fetch_headers(
        self,
        mailbox: Mailbox,
        session: _Session,
        folder: str,
        info: Mapping[bytes, Any],
        uids: Sequence[int],
        *,
        since: datetime = _EPOCH,
        then: tuple[str, int, tuple[int, ...]] | None = None,
    ) -> list[MailMessage]:
        """The messages of ``uids`` (the background FETCH's answer when it was for them); ``then``: the round's
        next FETCH, sent in the background as soon as this one's answer is in, before it is parsed."""
        if not uids:
            return []
        self._forget_old_structures(session)
        uidvalidity = int(info.get(b"UIDVALIDITY", 0))
        name = session.selected[0] if session.selected else folder
        prefetched, session.prefetch = session.prefetch, None
        if (
            prefetched is not None
            and prefetched.key == (name, uidvalidity, tuple(uids))
            and prefetched.answer is not None
        ):
            fetched = prefetched.answer
        else:
            self._count(mailbox)
            fetched = session.client.fetch(list(uids), PHASE_ONE)
        if then is not None:
            self._prefetch(mailbox, session, then)
        since = since.replace(microsecond=0)  # INTERNALDATE has whole seconds: mail of the watermark's second counts
        messages = []
        for uid in sorted(fetched):
            item = fetched[uid]
            internal = _aware(item.get(b"INTERNALDATE"))
            if internal is None or internal < since:
                continue
            source_id = f"{uidvalidity}/{uid}/{name}"
            parsed = structure.parse(item.get(b"BODYSTRUCTURE"))
            session.structures[source_id] = (parsed, int(item.get(b"RFC822.SIZE") or 0))
            message = _message(item, source_id, folder, internal, parsed)
            if message is not None:
                messages.append(message)
        return messages

    def _forget_old_structures(self, session: _Session) -> None:
        """Keep the structures of the latest ``2 * fetch_batch`` messages read (this page's and the one before,
        which the caller completes and lists): a run's structures would otherwise stay in memory to its end,
        and every garbage collection walks them. A message forgotten is read again if asked for."""
        excess = len(session.structures) - 2 * self.limits.fetch_batch
        if excess > 0:
            for source_id in list(itertools.islice(session.structures, excess)):
                del session.structures[source_id]

    def _structures(self, mailbox: Mailbox, session: _Session, source_ids: Iterable[str]) -> None:
        for name, uidvalidity, uids in _by_folder(source_ids):
            info = self._examine(mailbox, session, name, fresh=False)
            if int(info.get(b"UIDVALIDITY", 0)) != uidvalidity:
                continue
            self._count(mailbox)
            fetched = session.client.fetch(uids, ["UID", "RFC822.SIZE", "BODYSTRUCTURE"])
            for uid, item in fetched.items():
                parsed = structure.parse(item.get(b"BODYSTRUCTURE"))
                session.structures[f"{uidvalidity}/{uid}/{name}"] = (parsed, int(item.get(b"RFC822.SIZE") or 0))

    # -- phase two: bodies of the messages the pipeline matched ------------------------------------------

    def _complete(self, mailbox: Mailbox, session: _Session, messages: Sequence[MailMessage]) -> list[MailMessage]:
        ours = [m.source_id for m in messages if _parse_source_id(m.source_id) is not None]
        self._structures(mailbox, session, [i for i in ours if i not in session.structures])
        bodies: dict[str, tuple[str, bool]] = {}
        for name, uidvalidity, uids in _by_folder(ours):
            wanted: dict[tuple[str, ...], list[int]] = {}
            for uid in uids:
                known = session.structures.get(f"{uidvalidity}/{uid}/{name}")
                if known is None:
                    continue
                parsed, size = known
                if size > self.limits.max_message_bytes:
                    bodies[f"{uidvalidity}/{uid}/{name}"] = ("", True)
                    continue
                sections = tuple(leaf.section for leaf in parsed.text)
                if sections:
                    wanted.setdefault(sections, []).append(uid)
            if not wanted:
                continue
            info = self._examine(mailbox, session, name, fresh=False)
            if int(info.get(b"UIDVALIDITY", 0)) != uidvalidity:
                continue
            for sections, group in wanted.items():
                for start in range(0, len(group), self.limits.fetch_batch):
                    chunk = group[start : start + self.limits.fetch_batch]
                    items = [f"BODY.PEEK[{section}]<0.{self.limits.body_bytes}>" for section in sections]
                    self._count(mailbox)
                    fetched = session.client.fetch(chunk, items)
                    for uid, item in fetched.items():
                        source_id = f"{uidvalidity}/{uid}/{name}"
                        bodies[source_id] = self._body(session.structures[source_id][0], item)
        out = []
        for message in messages:
            found = bodies.get(message.source_id)
            if found is None:
                out.append(message)
                continue
            text, truncated = found
            out.append(replace(message, body_text=text, body_preview=preview(text), body_truncated=truncated))
        return out

    def _body(self, parsed: structure.Structure, item: Mapping[bytes, Any]) -> tuple[str, bool]:
        texts, truncated = [], False
        for leaf in parsed.text:
            raw = item.get(f"BODY[{leaf.section}]<0>".encode())
            if raw is None:
                raw = item.get(f"BODY[{leaf.section}]".encode())
            data = bytes(raw or b"")
            cut = leaf.size > self.limits.body_bytes
            text = _decode(data, leaf, cut)
            if leaf.content_type == "text/html":
                html = html_text(text)
                text, cut = html.text, cut or html.truncated
            text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
            if text:
                texts.append(text)
            truncated = truncated or cut
        return "\n\n".join(texts), truncated


def _settle(session: _Session) -> None:
    """Wait for the session's background FETCH, if any; raise what it failed with (the connection is then in
    an unknown state, so the caller drops it), else leave its answer for the page that asks for it."""
    pending = session.prefetch
    if pending is None:
        return
    pending.thread.join()
    if pending.error is not None:
        session.prefetch = None
        raise pending.error


def _unchanged(cursor: FolderCursor, status: _Status) -> FolderCursor | None:
    """The caught-up cursor again when its folder holds nothing new (HIGHESTMODSEQ unchanged with CONDSTORE,
    else UIDNEXT not above the cursor's last UID), else None. Comparing UIDVALIDITY is the caller's part."""
    last = cursor.last_uid
    modseq, uidnext = status.highestmodseq, status.uidnext
    if (modseq and modseq == cursor.highestmodseq) or (uidnext and uidnext <= last + 1):
        return FolderCursor(cursor.uidvalidity, last, modseq or cursor.highestmodseq)
    return None


def _present(data: Sequence[Any]) -> list[Any]:
    """imaplib's untagged data without its placeholders (``[None]`` when there was none)."""
    return [item for item in data if item not in (b"", None)]


def _chunks(values: Sequence[Any], size: int) -> list[tuple[Any, ...]]:
    return [tuple(values[i : i + size]) for i in range(0, len(values) - size + 1, size)]


def _folder_name(client: IMAPClient, raw: Any) -> str:
    """A folder name from a LIST or STATUS response as imapclient's ``list_folders`` gives it."""
    if isinstance(raw, int):
        return str(raw)  # a quoted all-digit name parses as a number
    if isinstance(raw, bytes):
        return str(decode_utf7(raw)) if client.folder_encode else raw.decode("utf-8", "replace")
    return str(raw)


def _any_of(keys: Sequence[list[str]]) -> list[Any]:
    """IMAP's OR takes two search keys: several become a balanced tree of ORs over parenthesised keys."""
    if len(keys) == 1:
        return [keys[0]]
    middle = len(keys) // 2
    return ["OR", _any_of(keys[:middle]), _any_of(keys[middle:])]


def _key(mailbox: Mailbox) -> tuple[str, str]:
    return (mailbox.org_id, mailbox.mailbox_id)


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _parse_source_id(source_id: str) -> tuple[int, int, str] | None:
    uidvalidity, _, rest = source_id.partition("/")
    uid, _, name = rest.partition("/")
    if not (uidvalidity.isdigit() and uid.isdigit() and name):
        return None
    return int(uidvalidity), int(uid), name


def _by_folder(source_ids: Iterable[str]) -> list[tuple[str, int, list[int]]]:
    groups: dict[tuple[str, int], list[int]] = {}
    for source_id in source_ids:
        parsed = _parse_source_id(source_id)
        if parsed is not None:
            uidvalidity, uid, name = parsed
            groups.setdefault((name, uidvalidity), []).append(uid)
    return [(name, uidvalidity, sorted(uids)) for (name, uidvalidity), uids in groups.items()]


def _map_folders(listed: Sequence[tuple[Sequence[bytes], Any, Any]]) -> tuple[dict[str, str], tuple[str, ...]]:
    """(folder id -> IMAP name, ids of every folder to sync when the org syncs all folders)."""
    names: list[tuple[tuple[bytes, ...], str]] = []
    for flags, _delimiter, name in listed:
        text = name.decode() if isinstance(name, bytes) else str(name)
        names.append((tuple(flags), text))
    hidden = (b"\\Noselect", b"\\NonExistent")
    selectable = [(flags, name) for flags, name in names if not any(h in flags for h in hidden)]
    mapping = {FolderRole.INBOX.value: "INBOX"}
    sent = next((name for flags, name in selectable if b"\\Sent" in flags), None)
    if sent is None:
        lowered = {name.lower(): name for _, name in selectable}
        sent = next((lowered[n.lower()] for n in SENT_NAMES if n.lower() in lowered), None)
    if sent is not None:
        mapping[FolderRole.SENT.value] = sent
    every = [FolderRole.INBOX.value] + ([FolderRole.SENT.value] if sent else [])
    for flags, name in selectable:
        last = name.replace("\\", "/").split("/")[-1].split(".")[-1].lower()
        if name.upper() == "INBOX" or name == sent:
            continue
        if any(use in flags for use in EXCLUDED_USES) or last in EXCLUDED_NAMES:
            continue
        mapping[name] = name
        every.append(name)
    return mapping, tuple(every)


def _message(
    item: Mapping[bytes, Any], source_id: str, folder: str, internal: datetime, parsed: structure.Structure
) -> MailMessage | None:
    """The message of a phase-one item: its header section read as RFC 822 ingest reads it, with the adapter's
    id, folder, INTERNALDATE, ``\\Draft`` flag and attachments from BODYSTRUCTURE; no body yet."""
    header = item.get(b"BODY[HEADER]<0>") or item.get(b"BODY[HEADER]") or b""
    try:
        fields = header_section_fields(bytes(header), folder=folder, received_fallback=internal)
    except InvalidMessage as exc:
        log.info("a message's header section cannot be read (%s); skipped", exc.code)
        return None
    flags = tuple(item.get(b"FLAGS") or ())
    fields.update(
        source_id=source_id,
        folder=folder,
        received_at=internal,
        is_draft=fields["is_draft"] or b"\\Draft" in flags,
        has_attachments=bool(parsed.attachments),
        attachments=parsed.attachments,
    )
    return MailMessage(**fields)


def _decode(data: bytes, leaf: structure.Leaf, cut: bool) -> str:
    """Undo the transfer encoding (a cut base64 part is decoded up to its last whole quantum) and decode
    the charset as ``domain.mime`` does (undeclared: UTF-8, else Windows-1252; unknown: UTF-8)."""
    if leaf.encoding == "base64":
        compact = b"".join(data.split())
        if cut:
            compact = compact[: len(compact) - len(compact) % 4]
        try:
            data = base64.b64decode(compact + b"=" * (-len(compact) % 4))
        except (binascii.Error, ValueError):
            data = b""
    elif leaf.encoding == "quoted-printable":
        data = quopri.decodestring(data)
    charset = (leaf.charset or "").lower() or None
    if charset in (None, "us-ascii", "ascii"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", errors="replace")
    try:
        return data.decode(charset, errors="replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", errors="replace")
