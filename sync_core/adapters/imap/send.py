"""The ``MailSender`` port over SMTP submission, with the mailbox's IMAP folders as the durable state.

The mechanism, and what each step proves:

- ``prepare`` builds the RFC 822 message itself: our Message-ID (``<hex@sender-domain>``, the handle, the
  id the recipients' copies, the Sent copy and the activity share), From the mailbox, To/Cc, threading
  headers for a reply (In-Reply-To the original's Message-ID, References its References plus it), the body
  (html with a text alternative, or text) and attachments as MIME parts. It is APPENDed to the Drafts
  folder (``\\Draft \\Seen``) with ``X-CRM-Send-Id``, and with ``Bcc`` so the envelope can be rebuilt
  later: Drafts is never synced, and ``Bcc`` is stripped from every copy that leaves Drafts.
- ``submit`` opens SMTP (implicit TLS or STARTTLS as the mailbox's settings say, the certificate checked
  with the IMAP side's context; no plaintext), AUTHs, sends ``MAIL FROM`` and ``RCPT TO`` (To, Cc and Bcc:
  Bcc only in the envelope), then sets the keyword ``$CrmSubmitting`` on the draft, and only then sends
  ``DATA``. A positive ``250`` after the final dot proves delivery was accepted: the draft gets
  ``$CrmSubmitted``, the copy (without ``Bcc``) is APPENDed to Sent unless the server filed one already
  (``UID SEARCH HEADER Message-ID`` in Sent first), and the draft is deleted.
- ``inspect`` reads that state back: a copy in Sent, or a draft marked ``$CrmSubmitted``, is ``SENT``; a
  draft without ``$CrmSubmitting`` is ``NOT_SENT`` (no ``DATA`` was ever sent for it: safe to submit); a
  draft marked ``$CrmSubmitting`` only is ``UNKNOWN``; nothing at all is ``GONE``.

**What counts as proof (SMTP has no way to ask "did you take message X?").** Before ``DATA`` nothing was
delivered, so a failure there is retried. After ``DATA`` only the final ``250`` proves delivery; a
definite refusal (``4xx``/``5xx`` reply) proves the opposite and clears ``$CrmSubmitting``. A connection
lost while waiting for that reply, or a crash between ``$CrmSubmitting`` and the reply, proves nothing:
the server may have delivered the message. The send then ends ``failed``/``outcome_unknown`` and is never
resent. The Sent folder cannot settle it either way: many servers never file submitted mail there, so a
missing copy does not prove non-delivery (a copy found does prove delivery: only this sender APPENDs it,
after a ``250``, unless the server filed it on acceptance). The cost of this rule: a crash in the short
window between setting ``$CrmSubmitting`` and sending ``DATA`` also ends ``outcome_unknown``, though
nothing went out; a second delivery is the worse mistake for a CRM's outgoing mail.
"""

from __future__ import annotations

import email.policy
import smtplib
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, getaddresses, make_msgid
from typing import Any

from imapclient import IMAPClient

from sync_core.adapters.imap.account import ImapLimits
from sync_core.adapters.imap.connection import close, connect, translated_errors
from sync_core.domain.model import EmailAddress, Mailbox
from sync_core.domain.text import html_text
from sync_core.errors import (
    ConfigurationFailure,
    CredentialsUnreadable,
    GrantFailure,
    MailServerLoginFailed,
    MailServerUnavailable,
    MailServerUnreachable,
    MailServerUntrusted,
    ProviderRefused,
    ReauthRequired,
)
from sync_core.ports.send import DraftState, OutgoingMessage, ProviderView
from sync_core.ports.servers import Security, ServerAccount, ServerLogin

SEND_ID_HEADER = "X-CRM-Send-Id"
SUBMITTING = "$CrmSubmitting"
SUBMITTED = "$CrmSubmitted"
DRAFT_FLAGS = (b"\\Draft", b"\\Seen")
DRAFTS_NAMES = ("Drafts", "Draft", "INBOX.Drafts", "INBOX/Drafts")
SENT_NAMES = ("Sent", "Sent Items", "Sent Messages", "Sent Mail", "INBOX.Sent", "INBOX/Sent")
MAX_REASON_CHARS = 200
# RFC 5322's line limit (998), not the recommended 78: the email package RFC 2047-encodes a word longer
# than the line length in an unstructured header, which would garble a long Message-ID in In-Reply-To or
# References. Folding still happens between ids when a References header grows past 998.
POLICY = email.policy.SMTP.clone(max_line_length=998)


class ImapMailSender:
    """Sends from IMAP mailboxes; ``account_for`` gives a mailbox's stored ``ServerAccount`` (IMAP and
    SMTP logins), ``limits`` the timeouts and trust store both conversations use."""

    def __init__(self, account_for: Callable[[Mailbox], ServerAccount], limits: ImapLimits | None = None) -> None:
        self._account_for = account_for
        self._limits = limits or ImapLimits()

    # -- the port -----------------------------------------------------------------------------------

    def permission_problem(self, mailbox: Mailbox) -> str | None:
        """No SMTP login stored (the mailbox was connected for reading only), or no readable login at
        all. Whether the server accepts the login is found out by the send (it names the server's
        reason)."""
        try:
            account = self._account_for(mailbox)
        except CredentialsUnreadable:
            return "the mailbox's stored credentials cannot be read: add its imap and smtp settings again"
        except ReauthRequired:
            return "the mailbox has no stored mail server login: add its imap and smtp settings again"
        if account.smtp is None:
            return (
                "the mailbox has no SMTP login: add its smtp settings (host, port, security, username, "
                "password) to send from it"
            )
        return None

    def prepare(self, mailbox: Mailbox, message: OutgoingMessage) -> str:
        self._smtp_login(mailbox)  # no SMTP login: refused before anything is created
        mime = build_message(message)
        handle = str(mime["Message-ID"])
        with self._imap(mailbox) as client:
            drafts = _folder(client, b"\\Drafts", DRAFTS_NAMES)
            if drafts is None:
                raise ProviderRefused(0, "no_drafts_folder", "the mailbox has no Drafts folder to prepare messages in")
            client.append(drafts, mime.as_bytes(), flags=DRAFT_FLAGS, msg_time=datetime.now(UTC))
        return handle

    def locate(self, mailbox: Mailbox, send_id: str) -> tuple[str, ...]:
        with self._imap(mailbox) as client:
            drafts = _folder(client, b"\\Drafts", DRAFTS_NAMES)
            if drafts is None:
                return ()
            client.select_folder(drafts, readonly=True)
            uids = client.search(["HEADER", SEND_ID_HEADER, send_id, "UNKEYWORD", SUBMITTING])
            if not uids:
                return ()
            fetched = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
            found = []
            for item in fetched.values():
                raw = next((v for k, v in item.items() if k.startswith(b"BODY[HEADER")), b"")
                message_id = message_from_bytes(raw).get("Message-ID")
                if message_id:
                    found.append(str(message_id).strip())
            return tuple(found)

    def discard(self, mailbox: Mailbox, handle: str) -> None:
        with self._imap(mailbox) as client:
            drafts = _folder(client, b"\\Drafts", DRAFTS_NAMES)
            if drafts is None:
                return
            client.select_folder(drafts)
            uids = client.search(["HEADER", "Message-ID", _bare(handle), "UNKEYWORD", SUBMITTING])
            _delete(client, uids)

    def submit(self, mailbox: Mailbox, handle: str) -> None:
        login = self._smtp_login(mailbox)
        with self._imap(mailbox) as client:
            drafts = _folder(client, b"\\Drafts", DRAFTS_NAMES)
            draft = _find(client, drafts, handle, with_body=True) if drafts else None
            if drafts is None or draft is None:
                raise ProviderRefused(0, "draft_gone", "the prepared message is no longer in Drafts")
            uid, flags, raw, _ = draft
            if SUBMITTING.encode() in flags:
                raise ProviderRefused(0, "already_submitted", "the message was handed to the server before")
            envelope, outgoing = _envelope(raw)
            with ExitStack() as stack:
                try:
                    smtp = stack.enter_context(_smtp(login, self._limits))
                    _envelope_commands(smtp, mailbox.address, envelope)
                except (ProviderRefused, GrantFailure, ConfigurationFailure):
                    # The send ends here (refused before DATA: nothing went out); its draft goes too.
                    with suppress(Exception), translated_errors():
                        client.select_folder(drafts)
                        _delete(client, [uid])
                    raise
                with translated_errors():  # the marker must be durable before DATA
                    client.select_folder(drafts)
                    marked = client.add_flags([uid], [SUBMITTING.encode()])
                if SUBMITTING.encode() not in tuple(marked.get(uid, ())):
                    # A server that cannot keep the keyword could not tell a lost answer from no send.
                    with suppress(Exception), translated_errors():
                        _delete(client, [uid])
                    raise ProviderRefused(
                        0, "keywords_unsupported", "the IMAP server cannot keep keywords on drafts, which sending needs"
                    )
                reply: bytes | str
                try:
                    code, reply = smtp.data(outgoing)
                except smtplib.SMTPDataError as exc:  # DATA itself refused: nothing was delivered
                    code, reply = exc.smtp_code, exc.smtp_error
                except (smtplib.SMTPException, OSError):
                    # Sent, but the answer was lost: delivered or not, nobody can prove it. The marker
                    # stays, so ``inspect`` says UNKNOWN and the send is never resent.
                    raise MailServerUnavailable(
                        "the connection to the SMTP server was lost after the message was sent and before "
                        "its answer: whether it was delivered cannot be proven"
                    ) from None
            if code != 250:  # a definite refusal (smtplib returns the final answer, whatever it is)
                refused = _refused(code, reply, "DATA")
                with suppress(Exception), translated_errors():
                    if isinstance(refused, ProviderRefused):  # final: the send ends, its draft too
                        _delete(client, [uid])
                    else:  # may pass: submitting again later is safe
                        client.remove_flags([uid], [SUBMITTING.encode()])
                raise refused
            with translated_errors():
                client.add_flags([uid], [SUBMITTED.encode()])
                self._file_sent(client, handle, outgoing)
                client.select_folder(drafts)
                _delete(client, [uid])

    def inspect(self, mailbox: Mailbox, handle: str) -> ProviderView:
        with self._imap(mailbox) as client:
            sent = _folder(client, b"\\Sent", SENT_NAMES)
            copy = _find(client, sent, handle, with_body=False) if sent else None
            drafts = _folder(client, b"\\Drafts", DRAFTS_NAMES)
            draft = _find(client, drafts, handle, with_body=True) if drafts else None
            if copy is not None:
                if draft is not None and SUBMITTED.encode() in draft[1] and drafts:
                    client.select_folder(drafts)
                    _delete(client, [draft[0]])
                return ProviderView(DraftState.SENT, handle, copy[3])
            if draft is None:
                return ProviderView(DraftState.GONE)
            uid, flags, raw = draft[0], draft[1], draft[2]
            if SUBMITTED.encode() in flags:  # the 250 was seen; the Sent copy was not filed yet
                self._file_sent(client, handle, _envelope(raw)[1])
                assert drafts is not None
                client.select_folder(drafts)
                _delete(client, [uid])
                return ProviderView(DraftState.SENT, handle, datetime.now(UTC))
            if SUBMITTING.encode() in flags:
                return ProviderView(DraftState.UNKNOWN)
            return ProviderView(DraftState.NOT_SENT)

    # -- helpers ------------------------------------------------------------------------------------

    def _file_sent(self, client: IMAPClient, handle: str, outgoing: bytes) -> None:
        """APPEND the sent copy to Sent unless a copy with the Message-ID is there already (the server
        filed it, or an earlier attempt did)."""
        sent = _folder(client, b"\\Sent", SENT_NAMES)
        if sent is None or _find(client, sent, handle, with_body=False) is not None:
            return
        client.append(sent, outgoing, flags=(b"\\Seen",), msg_time=datetime.now(UTC))

    def _smtp_login(self, mailbox: Mailbox) -> ServerLogin:
        login = self._account_for(mailbox).smtp
        if login is None:
            raise ReauthRequired("the mailbox has no SMTP login: add its smtp settings to send from it")
        return login

    @contextmanager
    def _imap(self, mailbox: Mailbox) -> Iterator[IMAPClient]:
        client = connect(self._account_for(mailbox).imap, self._limits)
        try:
            with translated_errors():
                yield client
        finally:
            close(client)


# -- the message ---------------------------------------------------------------------------------------


def build_message(message: OutgoingMessage) -> EmailMessage:
    """The RFC 822 message of a send (see the module docstring); ``Bcc`` is kept for the draft only."""
    mime = EmailMessage(policy=POLICY)
    mime["From"] = _address(message.sender)
    for name, parties in (("To", message.to), ("Cc", message.cc), ("Bcc", message.bcc)):
        if parties:
            mime[name] = ", ".join(_address(p) for p in parties)
    mime["Subject"] = message.subject
    mime["Date"] = format_datetime(datetime.now(UTC))
    mime["Message-ID"] = make_msgid(idstring=uuid.uuid4().hex[:12], domain=message.sender.domain or "localhost")
    if message.reply_to is not None:
        original = message.reply_to.internet_message_id
        mime["In-Reply-To"] = original
        mime["References"] = " ".join(dict.fromkeys((*message.reply_to.references, original)))
    mime[SEND_ID_HEADER] = message.send_id
    if message.content_type == "html":
        mime.set_content(html_text(message.content).text)
        mime.add_alternative(message.content, subtype="html")
    else:
        mime.set_content(message.content)
    for attachment in message.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        mime.add_attachment(
            attachment.content,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.name,
        )
    return mime


def _address(party: EmailAddress) -> str:
    return formataddr((party.name, party.address)) if party.name else party.address


def _envelope(raw: bytes) -> tuple[list[str], bytes]:
    """(envelope recipients: To, Cc and Bcc; the message as it leaves Drafts: without ``Bcc`` and
    ``X-CRM-Send-Id``)."""
    parsed = message_from_bytes(raw, policy=POLICY)
    fields = [str(v) for name in ("To", "Cc", "Bcc") for v in parsed.get_all(name, [])]
    recipients = list(dict.fromkeys(address for _, address in getaddresses(fields) if address))
    del parsed["Bcc"]
    del parsed[SEND_ID_HEADER]
    return recipients, parsed.as_bytes()


def _bare(message_id: str) -> str:
    return message_id.strip().strip("<>")


def _folder(client: IMAPClient, use: bytes, names: tuple[str, ...]) -> str | None:
    """The folder flagged with SPECIAL-USE ``use``, else the first of the usual ``names``."""
    listed = [
        (tuple(flags), name.decode() if isinstance(name, bytes) else str(name))
        for flags, _, name in client.list_folders()
    ]
    flagged = next((name for flags, name in listed if use in flags), None)
    if flagged is not None:
        return flagged
    lowered = {name.lower(): name for _, name in listed}
    return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)


def _find(
    client: IMAPClient, folder: str | None, handle: str, *, with_body: bool
) -> tuple[int, tuple[bytes, ...], bytes, datetime | None] | None:
    """(uid, flags, message bytes or b"", INTERNALDATE) of the newest message of ``folder`` with the
    Message-ID, or None."""
    if folder is None:
        return None
    client.select_folder(folder, readonly=True)
    uids = sorted(client.search(["HEADER", "Message-ID", _bare(handle)]))
    if not uids:
        return None
    uid = uids[-1]
    items = ["FLAGS", "INTERNALDATE"] + (["BODY.PEEK[]"] if with_body else [])
    fetched: dict[bytes, Any] = client.fetch([uid], items).get(uid, {})
    when = fetched.get(b"INTERNALDATE")
    sent_at = when.astimezone(UTC) if isinstance(when, datetime) and when.tzinfo else None
    return uid, tuple(fetched.get(b"FLAGS", ())), bytes(fetched.get(b"BODY[]", b"")), sent_at


def _delete(client: IMAPClient, uids: list[int]) -> None:
    """Flag ``\\Deleted`` and expunge exactly those UIDs (UIDPLUS), or everything flagged without it."""
    if not uids:
        return
    client.delete_messages(uids)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()


# -- SMTP ----------------------------------------------------------------------------------------------


@contextmanager
def _smtp(login: ServerLogin, limits: ImapLimits) -> Iterator[smtplib.SMTP]:
    """An authenticated SMTP session over TLS (implicit or STARTTLS); never a password in clear."""
    context = ssl.create_default_context(cafile=limits.ca_file) if limits.ca_file else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with _smtp_errors("at login"):
        if login.security is Security.TLS:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                login.host, login.port, timeout=limits.connect_timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(login.host, login.port, timeout=limits.connect_timeout)
    try:
        with _smtp_errors("at login"):
            smtp.ehlo()
            if login.security is Security.STARTTLS:
                if not smtp.has_extn("starttls"):
                    raise MailServerUntrusted(
                        "the SMTP server does not offer STARTTLS: the password is never sent in clear"
                    )
                smtp.starttls(context=context)
                smtp.ehlo()
            if smtp.sock is not None:
                smtp.sock.settimeout(limits.read_timeout)
            smtp.login(login.username, login.password)
        yield smtp
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _envelope_commands(smtp: smtplib.SMTP, sender: str, recipients: list[str]) -> None:
    """``MAIL FROM`` and ``RCPT TO`` each recipient; any failure here delivered nothing."""
    with _smtp_errors("before DATA"):
        code, reply = smtp.mail(sender)
        if code != 250:
            raise _refused(code, reply, "MAIL FROM")
        for recipient in recipients:
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                raise _refused(code, reply, "RCPT TO")


@contextmanager
def _smtp_errors(when: str) -> Iterator[None]:
    """SMTP failures that happen before ``DATA`` (nothing delivered) as the product's errors."""
    try:
        yield
    except smtplib.SMTPAuthenticationError as exc:
        reason = _reply_text(exc.smtp_error)
        raise MailServerLoginFailed(f"the SMTP server refused the login: {exc.smtp_code} {reason}".strip()) from None
    except smtplib.SMTPNotSupportedError:
        raise ConfigurationFailure("the SMTP server offers no AUTH method this product can use") from None
    except ssl.SSLCertVerificationError as exc:
        raise MailServerUntrusted(f"the SMTP server's TLS certificate is not trusted ({exc.verify_message})") from None
    except smtplib.SMTPResponseException as exc:
        raise _refused(exc.smtp_code, exc.smtp_error, when) from None
    except (socket.gaierror, ConnectionRefusedError, TimeoutError) as exc:
        raise MailServerUnreachable(f"the SMTP server cannot be reached ({type(exc).__name__})") from None
    except (smtplib.SMTPException, OSError) as exc:
        lost = f"the connection to the SMTP server was lost {when} ({type(exc).__name__})"
        raise MailServerUnavailable(lost) from None


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:MAX_REASON_CHARS]


def _refused(code: int, reply: bytes | str, when: str) -> Exception:
    """A definite refusal: ``4xx`` may pass (retried later), ``5xx`` will not."""
    text = f"the SMTP server refused the message at {when}: {code} {_reply_text(reply)}".strip()
    if 400 <= code < 500:
        return MailServerUnavailable(text)
    return ProviderRefused(code, f"smtp_{code}", text)
