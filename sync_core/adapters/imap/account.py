"""What an IMAP mailbox logs in with, and the limits every IMAP conversation keeps.

``ImapAccount.password`` is a secret: it is never logged, never part of an error message, and its
``repr`` hides it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Security(StrEnum):
    """How the connection is protected: implicit TLS (port 993) or STARTTLS (port 143). There is no
    plaintext option: a password is never sent over an unencrypted connection."""

    TLS = "tls"
    STARTTLS = "starttls"


@dataclass(frozen=True)
class ImapAccount:
    host: str
    port: int
    security: Security
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ImapLimits:
    """Bounds of every IMAP conversation: a server that stalls or floods costs at most these.

    ``fetch_batch``: messages per header FETCH (and per delta page); ``body_bytes``: bytes fetched of a
    text part (``BODY.PEEK[n]<0.body_bytes>``: the rest is never downloaded, the body is marked
    truncated); ``max_message_bytes``: larger messages are listed and decided on their headers but
    their bodies are not fetched."""

    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    fetch_batch: int = 200
    body_bytes: int = 512 * 1024
    max_message_bytes: int = 50 * 1024 * 1024
    ca_file: str | None = None
