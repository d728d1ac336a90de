"""``ImapServerProbe``: the ``ServerProbe`` port for IMAP + SMTP, run before a mailbox's login is stored.

It logs in to IMAP exactly as the sync will (``connection.connect``: same TLS context and timeouts), lists
the folders to find Sent (SPECIAL-USE, then the usual names), and, when an SMTP login is given,
authenticates to it (``smtplib``: implicit TLS, or STARTTLS before AUTH). Each failure becomes one
``InvalidRequest`` code the CRM can show next to the field it is about (``imap`` or ``smtp``).
"""

from __future__ import annotations

import smtplib
import socket
import ssl

from sync_core.adapters.imap.account import ImapLimits
from sync_core.adapters.imap.connection import close, connect, server_reason, tls_context
from sync_core.adapters.imap.mail import _map_folders
from sync_core.domain.folders import FolderRole
from sync_core.errors import (
    InvalidRequest,
    MailServerLoginFailed,
    MailServerUnavailable,
    MailServerUnreachable,
    MailServerUntrusted,
)
from sync_core.ports.servers import Security, ServerAccount, ServerLogin


class ImapServerProbe:
    def __init__(self, limits: ImapLimits | None = None) -> None:
        self.limits = limits or ImapLimits()

    def check(self, account: ServerAccount) -> None:
        self._check_imap(account.imap)
        if account.smtp is not None:
            self._check_smtp(account.smtp)

    def _check_imap(self, login: ServerLogin) -> None:
        try:
            client = connect(login, self.limits)
        except MailServerUnreachable as exc:
            raise InvalidRequest("imap_unreachable", f"IMAP: {exc}") from None
        except MailServerUntrusted as exc:
            code = "imap_starttls_unavailable" if "STARTTLS" in str(exc) else "imap_tls_untrusted"
            raise InvalidRequest(code, f"IMAP: {exc}") from None
        except MailServerLoginFailed as exc:
            raise InvalidRequest("imap_auth_failed", f"IMAP: {exc}") from None
        except MailServerUnavailable as exc:
            raise InvalidRequest("imap_unreachable", f"IMAP: {exc}") from None
        try:
            folders, _ = _map_folders(client.list_folders())
        except Exception as exc:
            failed = f"IMAP: listing the folders failed ({type(exc).__name__})"
            raise InvalidRequest("imap_unreachable", failed) from None
        finally:
            close(client)
        if FolderRole.SENT.value not in folders:
            raise InvalidRequest(
                "imap_no_sent_folder",
                "IMAP: no Sent folder found (none flagged \\Sent, none named Sent, Sent Items, Sent Messages or "
                "Sent Mail); create one or enable SPECIAL-USE on the server",
            )

    def _check_smtp(self, login: ServerLogin) -> None:
        context = tls_context(self.limits)
        timeout = self.limits.connect_timeout
        try:
            if login.security is Security.TLS:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(login.host, login.port, timeout=timeout, context=context)
            else:
                smtp = smtplib.SMTP(login.host, login.port, timeout=timeout)
            try:
                smtp.ehlo()
                if login.security is Security.STARTTLS:
                    if not smtp.has_extn("starttls"):
                        raise InvalidRequest(
                            "smtp_starttls_unavailable",
                            "SMTP: the server does not offer STARTTLS: the password is never sent in clear",
                        )
                    smtp.starttls(context=context)
                    smtp.ehlo()
                smtp.login(login.username, login.password)
            finally:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    smtp.close()
        except smtplib.SMTPAuthenticationError as exc:
            reason = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else ""
            refused = f"SMTP: the server refused the login: {exc.smtp_code} {' '.join(reason.split())}"
            raise InvalidRequest("smtp_auth_failed", refused[:300]) from None
        except ssl.SSLCertVerificationError as exc:
            untrusted = f"SMTP: the server's TLS certificate is not trusted ({exc.verify_message})"
            raise InvalidRequest("smtp_tls_untrusted", untrusted) from None
        except (socket.gaierror, ConnectionRefusedError, TimeoutError) as exc:
            unreachable = f"SMTP: the server cannot be reached ({type(exc).__name__})"
            raise InvalidRequest("smtp_unreachable", unreachable) from None
        except smtplib.SMTPException as exc:
            raise InvalidRequest("smtp_unreachable", f"SMTP: {server_reason(exc)}") from None
        except OSError as exc:
            raise InvalidRequest("smtp_unreachable", f"SMTP: the connection failed ({type(exc).__name__})") from None
