"""Mail servers a mailbox reaches with a user name and password (IMAP to read, SMTP to send).

``ServerAccount`` is what the product stores for such a mailbox: encrypted at rest in the token-cache
store under the mailbox's owner key (``mailbox:{id}``), exactly as an OAuth token cache is, so key ids,
rotation by the maintenance timer, disconnect and sign-out-all apply unchanged. Passwords never appear
in a ``repr``, a log line, an error message or an API answer.

``ServerProbe`` is the check made before anything is stored: log in to the incoming server (and
authenticate to the outgoing one when given) and find the Sent folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class Security(StrEnum):
    """Implicit TLS (IMAPS 993, SMTPS 465) or STARTTLS (143, 587). There is no plaintext option: a
    password is never sent over an unencrypted connection."""

    TLS = "tls"
    STARTTLS = "starttls"


@dataclass(frozen=True)
class ServerLogin:
    host: str
    port: int
    security: Security
    username: str
    password: str = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host, "port": self.port, "security": self.security.value,
            "username": self.username, "password": self.password,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerLogin:
        return cls(
            str(data["host"]), int(data["port"]), Security(data["security"]), str(data["username"]),
            str(data["password"]),
        )  # fmt: skip


@dataclass(frozen=True)
class ServerAccount:
    """The incoming (IMAP) login and, for sending, the outgoing (SMTP) one."""

    imap: ServerLogin
    smtp: ServerLogin | None = None

    def to_json(self) -> str:
        return json.dumps(
            {"kind": "server-account", "imap": self.imap.to_dict(), "smtp": self.smtp.to_dict() if self.smtp else None}
        )

    @classmethod
    def from_json(cls, text: str) -> ServerAccount:
        """Raises ``ValueError`` for anything that is not a stored server account."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("kind") != "server-account":
                raise ValueError("not a stored server account")
            smtp = data.get("smtp")
            return cls(ServerLogin.from_dict(data["imap"]), ServerLogin.from_dict(smtp) if smtp else None)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError("not a stored server account") from exc


class ServerProbe(Protocol):
    def check(self, account: ServerAccount) -> None:
        """Log in to the IMAP server, find its Sent folder, and authenticate to the SMTP server when one
        is given; close both. Raises ``InvalidRequest`` with a precise code: ``imap_unreachable``,
        ``imap_tls_untrusted``, ``imap_starttls_unavailable``, ``imap_auth_failed``,
        ``imap_no_sent_folder``, ``smtp_unreachable``, ``smtp_tls_untrusted``,
        ``smtp_starttls_unavailable``, ``smtp_auth_failed``. The message carries the server's own reason
        for a refused login, never the password."""
