"""One IMAP conversation: connect over TLS (or STARTTLS), log in, and name what went wrong.

Every failure leaves here as one of the product's errors, chosen so that the caller can act on it:

==========================================  =====================================================
what happened                               raised
==========================================  =====================================================
no route, refused, timeout, dropped         ``MailServerUnavailable`` (transient: retried later)
certificate not trusted / wrong host        ``MailServerUntrusted`` (configuration: a person must act)
server offers no STARTTLS                   ``MailServerUntrusted`` (the password is never sent)
login refused (``NO``/``AUTHENTICATIONFAILED``)  ``MailServerLoginFailed`` (needs_reauth, with the server's text)
==========================================  =====================================================

The server's text is kept only from login refusals, which never echo the password; host names and
user names are left out of every message (they are in the mailbox's settings already).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from sync_core.adapters.imap.account import ImapAccount, ImapLimits, Security
from sync_core.errors import MailServerLoginFailed, MailServerUnavailable, MailServerUnreachable, MailServerUntrusted

MAX_REASON_CHARS = 200


def tls_context(limits: ImapLimits) -> ssl.SSLContext:
    """The system's trust store, or only ``ca_file`` when one is configured (a private CA)."""
    context = ssl.create_default_context(cafile=limits.ca_file) if limits.ca_file else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def connect(account: ImapAccount, limits: ImapLimits) -> IMAPClient:
    """A logged-in client; raises one of the errors of the module docstring."""
    timeout = SocketTimeout(connect=limits.connect_timeout, read=limits.read_timeout)
    context = tls_context(limits)
    with translated_errors():
        client = IMAPClient(
            account.host, port=account.port, ssl=account.security is Security.TLS, ssl_context=context,
            timeout=timeout,
        )  # fmt: skip
        client.normalise_times = False  # INTERNALDATE as an aware datetime, in the server's offset
        try:
            if account.security is Security.STARTTLS:
                if not client.has_capability("STARTTLS"):
                    raise MailServerUntrusted("the server does not offer STARTTLS: the password is never sent in clear")
                client.starttls(context)
            _login(client, account)
        except BaseException:
            _close(client)
            raise
    return client


def _login(client: IMAPClient, account: ImapAccount) -> None:
    try:
        client.login(account.username, account.password)
    except LoginError as exc:
        raise MailServerLoginFailed(f"the mail server refused the login: {server_reason(exc)}") from None


def server_reason(exc: BaseException) -> str:
    """The server's own words from a refusal (``[AUTHENTICATIONFAILED] Authentication failed.``), bounded."""
    text = str(exc)
    if text.startswith("b'") or text.startswith('b"'):
        text = text[2:-1]
    return " ".join(text.split())[:MAX_REASON_CHARS] or "no reason given"


@contextmanager
def translated_errors() -> Iterator[None]:
    """Socket, TLS and protocol failures as the product's errors (see the module docstring)."""
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise MailServerUntrusted(f"the mail server's TLS certificate is not trusted ({exc.verify_message})") from None
    except ssl.SSLError as exc:
        raise MailServerUnavailable(f"TLS with the mail server failed ({exc.reason or type(exc).__name__})") from None
    except (socket.gaierror, ConnectionRefusedError) as exc:
        raise MailServerUnreachable(f"the mail server cannot be reached ({type(exc).__name__})") from None
    except (TimeoutError, socket.timeout) as exc:  # noqa: UP041 - both names, whatever the Python
        raise MailServerUnreachable(f"the mail server did not answer in time ({type(exc).__name__})") from None
    except (IMAPClientAbortError, ConnectionError, EOFError, OSError) as exc:
        raise MailServerUnavailable(f"the connection to the mail server was lost ({type(exc).__name__})") from None
    except IMAPClientError as exc:
        raise MailServerUnavailable(f"the mail server refused a command: {server_reason(exc)}") from None


def _close(client: Any) -> None:
    with suppress(Exception):  # closing a connection that is already broken
        client.shutdown()


def close(client: IMAPClient) -> None:
    """Log out politely, or just drop the socket when the server is gone."""
    try:
        client.logout()
    except Exception:
        _close(client)
