"""The ``MailSender`` port on Gmail: ``users.messages.send`` with the raw RFC 822 message the product
builds, carrying our own Message-ID, so the sent copy is found again with ``rfc822msgid:``.

Gmail's facts this relies on (developers.google.com/gmail/api/guides/sending and the REST reference):
- ``POST users/me/messages/send`` ``{"raw": base64url RFC 822, "threadId"}`` sends the message and puts
  the sent copy in SENT; Gmail keeps a Message-ID the message carries (it adds one only when missing).
  It needs ``gmail.send`` (or wider); drafts would need ``gmail.compose``, which the product never asks
  for, so nothing is created at Google before the send.
- A reply joins the original's thread only with its ``threadId`` *and* RFC 2822 ``In-Reply-To`` /
  ``References`` headers and a matching subject ("The requested threadId must be specified on the
  Message … The References and In-Reply-To headers must be set in compliance with the RFC 2822
  standard. The Subject headers must match."); the thread is read from the original (``messages.get``).
- ``messages.list`` with ``q=rfc822msgid:<id>`` and ``labelIds=SENT`` finds the sent copy.

Exactly once (the machine's invariant, ``use_cases.send.machine``): ``prepare`` builds the MIME and keeps
it in this process, keyed by the handle (``gmail:<Message-ID>``), with the original's thread; ``submit``
sends it with ``GmailHttp.post_once`` (never retried: a lost answer is a ``TransientFailure`` and the
machine inspects before any resend). ``inspect`` searches SENT by the Message-ID: a message found proves
the send happened (``SENT``, with the copy's Message-ID, date and thread); none found is ``IN_FLIGHT``
when this process's own submit succeeded (the copy is not searchable yet), ``NOT_SENT`` when this process
holds the prepared MIME, else ``NOT_PREPARED``: the worker that prepared it died, nothing was sent.

**The prepared message is rebuilt, byte for byte.** ``prepare`` is a function of the ``OutgoingMessage``
(and the original's thread): the Message-ID is derived from the send id (``<crm.<send id>@<sender's
domain>>``), the Date is the message's own (``OutgoingMessage.date``: when the CRM asked), and the MIME
boundaries are derived from the send id, never random. So after ``NOT_PREPARED`` the machine prepares the
stored request again, gets the same handle and the same bytes, and submits them; any earlier submit of
that message would have carried the same Message-ID, which is what ``inspect`` searches for, so a message
that did go out is found and never sent twice. Gmail's search index may lag a send by moments; the
machine submits only with ``SUBMIT_MARGIN`` (two minutes) of its lease left, so another worker resumes
a send no sooner than that after any submit, far longer, which is what the "found proves sent, not
found allows a send" rule leans on.
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any
from urllib.parse import quote

from sync_core.adapters.google.http import GmailHttp
from sync_core.domain.model import Mailbox
from sync_core.errors import MessageNotFound, ProviderRefused
from sync_core.ports.send import DraftState, OutgoingMessage, ProviderView

SEND_ID_HEADER = "X-CRM-Send-Id"
HANDLE_PREFIX = "gmail:"
KEPT = 512  # prepared messages kept per process (a send is submitted right after it is prepared)


class _Prepared:
    """Prepared raw messages (with the thread they join) and the handles this process submitted,
    bounded (oldest dropped first: a dropped one is ``NOT_PREPARED`` and is built again)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._raw: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._submitted: OrderedDict[str, None] = OrderedDict()

    def keep(self, handle: str, raw: bytes, thread_id: str) -> None:
        with self._lock:
            self._raw[handle] = (raw, thread_id)
            while len(self._raw) > KEPT:
                self._raw.popitem(last=False)

    def raw(self, handle: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._raw.get(handle)

    def drop(self, handle: str) -> None:
        with self._lock:
            self._raw.pop(handle, None)

    def submitted(self, handle: str) -> None:
        with self._lock:
            self._raw.pop(handle, None)
            self._submitted[handle] = None
            while len(self._submitted) > KEPT:
                self._submitted.popitem(last=False)

    def was_submitted(self, handle: str) -> bool:
        with self._lock:
            return handle in self._submitted


class GmailMailSender:
    """Sends from Gmail mailboxes; ``http_for`` gives a mailbox's GmailHttp with a sending token,
    ``permission_of`` (optional) why its connection may not send."""

    def __init__(
        self,
        http_for: Callable[[Mailbox], GmailHttp],
        permission_of: Callable[[Mailbox], str | None] | None = None,
    ) -> None:
        self._http_for = http_for
        self._permission_of = permission_of
        self._prepared = _Prepared()

    def permission_problem(self, mailbox: Mailbox) -> str | None:
        return self._permission_of(mailbox) if self._permission_of is not None else None

    def prepare(self, mailbox: Mailbox, message: OutgoingMessage) -> str:
        """Build the message (deterministically, see the module docstring) and keep it until ``submit``;
        nothing is created at Google. The only request: a reply reads the original's thread."""
        http = self._http_for(mailbox)
        thread_id = ""
        target = message.reply_to
        if target is not None:
            thread_id = _thread_of(http, target.source_id, target.internet_message_id)
        message_id = message_id_for(message.send_id, message.sender.domain)
        handle = f"{HANDLE_PREFIX}{message_id}"
        self._prepared.keep(handle, mime(message, message_id), thread_id)
        return handle

    def locate(self, mailbox: Mailbox, send_id: str) -> tuple[str, ...]:
        return ()  # ``prepare`` creates nothing at Google: there is never an orphan to discard

    def discard(self, mailbox: Mailbox, handle: str) -> None:
        self._prepared.drop(handle)

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        kept = self._prepared.raw(handle)
        if kept is None:  # the machine prepares again after ``NOT_PREPARED``: only a misuse gets here
            raise ProviderRefused(
                0, "prepared_message_lost",
                "the prepared message was lost with the worker that built it; nothing was sent: send again",
            )  # fmt: skip
        raw, thread_id = kept
        body: dict[str, Any] = {"raw": base64.urlsafe_b64encode(raw).decode("ascii")}
        if thread_id:
            body["threadId"] = thread_id
        self._http_for(mailbox).post_once("messages/send", body)
        self._prepared.submitted(handle)

    def inspect(self, mailbox: Mailbox, handle: str) -> ProviderView:
        http = self._http_for(mailbox)
        _, message_id = _parse(handle)
        found = http.get("messages", {"q": f"rfc822msgid:{message_id.strip('<>')}", "labelIds": "SENT"})
        ids = [str(m["id"]) for m in (found or {}).get("messages") or () if m.get("id")]
        if not ids:
            if self._prepared.was_submitted(handle):
                return ProviderView(DraftState.IN_FLIGHT)
            return ProviderView(DraftState.NOT_SENT if self._prepared.raw(handle) else DraftState.NOT_PREPARED)
        item = http.get(f"messages/{quote(ids[0], safe='')}", {"format": "metadata", "metadataHeaders": "Message-ID"})
        headers = {
            str(h.get("name", "")).lower(): str(h.get("value", ""))
            for h in ((item or {}).get("payload") or {}).get("headers") or ()
        }
        internal = str((item or {}).get("internalDate") or "")
        sent_at = datetime.fromtimestamp(int(internal) / 1000, UTC) if internal.isdigit() else None
        return ProviderView(
            DraftState.SENT, headers.get("message-id") or message_id, sent_at, str((item or {}).get("threadId") or "")
        )


def _parse(handle: str) -> tuple[str, str]:
    """(threadId, Message-ID) of a handle; ``ProviderRefused`` for one this sender did not make. Handles
    are ``gmail:<Message-ID>``; ones written before the Message-ID was derived from the send id are
    ``gmail:<threadId>:<Message-ID>`` (their message cannot be built again: a rebuild's handle differs,
    and the machine fails such a send without sending)."""
    if not handle.startswith(HANDLE_PREFIX):
        raise ProviderRefused(0, "unknown_handle", "the send's handle is not a Gmail one")
    rest = handle[len(HANDLE_PREFIX) :]
    if rest.startswith("<"):
        return "", rest
    thread_id, _, message_id = rest.partition(":")
    return thread_id, message_id


def message_id_for(send_id: str, domain: str) -> str:
    """The Message-ID of a send's message: derived from the send id (unique, never reused), so every
    build of the message carries the same one."""
    return f"<crm.{send_id.lower()}@{(domain or 'crm-send.invalid').lower()}>"


def _thread_of(http: GmailHttp, source_id: str, internet_message_id: str) -> str:
    """The thread of the original: by its Gmail id, else by its Message-ID; "" when the mailbox lacks it
    (the reply then threads by its In-Reply-To/References alone)."""
    if source_id:
        try:
            return str(http.get(f"messages/{quote(source_id, safe='')}", {"format": "minimal"}).get("threadId") or "")
        except MessageNotFound:
            pass
    wanted = internet_message_id.strip().strip("<>")
    if not wanted:
        return ""
    found = http.get("messages", {"q": f"rfc822msgid:{wanted}", "maxResults": "1"})
    first = next(iter((found or {}).get("messages") or ()), None)
    return str(first.get("threadId") or "") if isinstance(first, dict) else ""


def mime(message: OutgoingMessage, message_id: str) -> bytes:
    """The RFC 822 message: our Message-ID, the threading headers of a reply, the send id header, the
    body (text or HTML) and the attachments. Bcc is in the headers: Gmail delivers to it and drops it
    from what recipients see (messages.send sends "to the recipients in the To, Cc, and Bcc headers").

    Deterministic: the same ``message`` and ``message_id`` give the same bytes (the Date is
    ``message.date``, the multipart boundaries are derived from the send id), which is what lets a
    resumed send build again exactly what a dead worker prepared."""
    built = EmailMessage(policy=email.policy.SMTP)
    built["From"] = formataddr((message.sender.name, message.sender.address))
    for name, parties in (("To", message.to), ("Cc", message.cc), ("Bcc", message.bcc)):
        if parties:
            built[name] = ", ".join(formataddr((p.name, p.address)) for p in parties)
    built["Subject"] = message.subject
    built["Date"] = format_datetime(message.date or datetime.now(UTC))
    built["Message-ID"] = message_id
    if message.reply_to is not None:
        original = message.reply_to.internet_message_id
        built["In-Reply-To"] = original
        built["References"] = " ".join(message.reply_to.references or (original,))
    built[SEND_ID_HEADER] = message.send_id
    built.set_content(message.content, subtype="html" if message.content_type == "html" else "plain")
    for attachment in message.attachments:
        maintype, _, subtype = (attachment.content_type or "application/octet-stream").partition("/")
        built.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype or "octet-stream", filename=attachment.name
        )
    _fix_boundaries(built, message.send_id)
    return built.as_bytes()


def _fix_boundaries(built: EmailMessage, seed: str) -> None:
    """Give every multipart part a boundary derived from ``seed`` and its position (the email package
    would draw random ones). A boundary must not occur in the parts it separates (RFC 2046 5.1.1): one
    that does is derived again with a counter, still deterministically."""
    text = built.as_bytes()
    for position, part in enumerate(p for p in built.walk() if p.is_multipart()):
        for attempt in range(100):
            digest = hashlib.sha256(f"{seed}/{position}/{attempt}".encode()).hexdigest()[:32]
            boundary = f"=_crm_{digest}"
            if boundary.encode() not in text:
                part.set_boundary(boundary)
                break


def delegated_permission_problem(granted_scopes: str) -> str | None:
    """Why a delegated Gmail connection may not send (its grant lacks ``gmail.send``), or None."""
    from sync_core.adapters.google.identity import SEND_SCOPE  # noqa: PLC0415

    if SEND_SCOPE in granted_scopes.split():
        return None
    return (
        "the mailbox's Google connection has not granted sending (gmail.send): connect it again with the "
        "organisation's sending_enabled on"
    )
