"""Shared request/response types of the Graph + identity platform emulator.

This module is the contract between the emulator's parts:

* ``server``/``identity``/``directory``/``control`` (HTTP server, TLS, tokens, tenants, users, faults,
  throttling, ``$batch``) and
* ``mail`` (mail folders, messages, delta, attachments, subscriptions and notification delivery).

The server parses every HTTP request into a :class:`Request`, authenticates Graph calls into a
:class:`Principal`, resolves the mailbox a Graph call targets and hands mail routes to ``mail`` as a
:class:`GraphContext`. Handlers return a :class:`Response`; they never touch sockets.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from werkzeug.datastructures import Headers


@dataclass
class Request:
    """One HTTP request as the emulator sees it.

    ``headers`` is werkzeug's case-insensitive :class:`~werkzeug.datastructures.Headers`. ``path`` is the
    URL path without the query string, percent-decoded. ``query`` maps each parameter to its first value
    (Graph and the identity platform never repeat one); ``raw_query`` keeps the original string so opaque
    links can be compared verbatim.
    """

    method: str
    path: str
    raw_query: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.raw_query, keep_blank_values=True).items()}

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}

    def prefer(self) -> dict[str, str]:
        """Parse ``Prefer`` headers into ``{name: value}`` with quotes removed.

        ``Prefer: odata.maxpagesize=50, IdType="ImmutableId"`` gives
        ``{"odata.maxpagesize": "50", "idtype": "ImmutableId"}``; names are lower-cased.
        """
        prefs: dict[str, str] = {}
        raw = self.headers.get("prefer", "")
        for part in filter(None, (p.strip() for p in raw.split(","))):
            name, _, value = part.partition("=")
            prefs[name.strip().lower()] = value.strip().strip('"')
        return prefs


@dataclass
class Response:
    """What a handler returns. ``drop_connection`` closes the socket without any response."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    drop_connection: bool = False

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        merged = {"Content-Type": "application/json; odata.metadata=minimal; odata.streaming=true"}
        merged.update(headers or {})
        return cls(status, merged, json.dumps(payload).encode("utf-8"))

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, {"Content-Type": content_type}, text.encode("utf-8"))

    @classmethod
    def redirect(cls, location: str) -> Response:
        return cls(302, {"Location": location}, b"")


def now_utc() -> datetime:
    return datetime.now(UTC)


def graph_time(moment: datetime) -> str:
    """Graph's DateTimeOffset format in UTC, e.g. ``2014-01-01T00:00:00Z`` (``strftime``'s output)."""
    utc = moment.astimezone(UTC)
    if utc.year < 1000:  # strftime does not pad such years; isoformat does
        return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return utc.isoformat(timespec="seconds")[:19] + "Z"


def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Graph error body exactly as the real service shapes it."""
    return Response.json(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": graph_time(now_utc()),
                    "request-id": str(uuid.uuid4()),
                    "client-request-id": str(uuid.uuid4()),
                },
            }
        },
        headers,
    )


@dataclass(frozen=True)
class Principal:
    """Who a Graph access token was issued to.

    ``user_id`` is None for application (client-credentials) tokens. ``scopes`` are the delegated
    scopes (``scp``), ``roles`` the application permissions (``roles``), e.g. ``Mail.Read``.
    """

    tenant_id: str
    client_id: str
    user_id: str | None
    scopes: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()

    @property
    def is_app(self) -> bool:
        return self.user_id is None

    def has_permission(self, *names: str) -> bool:
        granted = self.roles if self.is_app else self.scopes
        return any(name in granted for name in names)


@dataclass
class GraphContext:
    """A Graph call routed to a mailbox.

    ``base_url`` is the absolute Graph root as the client reached it (e.g. ``https://localhost:8443/v1.0``),
    used to build absolute ``@odata.nextLink``/``@odata.deltaLink`` URLs. ``user_segment`` is how the
    client addressed the mailbox (``me`` or ``users/{id-or-upn}``) and ``rest`` the path after it,
    without a leading slash (``mailFolders('inbox')/messages/delta``). ``mailbox_id`` is the directory
    user id (a GUID) of the target mailbox.
    """

    request: Request
    principal: Principal
    mailbox_id: str
    base_url: str
    user_segment: str
    rest: str
