"""``Directory`` on Microsoft Graph: the signed-in user (``/me``), users by address, mail access."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

PROFILE_FIELDS = "id,mail,userPrincipalName,proxyAddresses,displayName"


class GraphReader(Protocol):
    """The Graph GET a directory needs (``GraphHttp`` satisfies it)."""

    def get(self, url: str, params: Mapping[str, str] | None = None, prefer: Sequence[str] = ()) -> Any: ...


class GraphDirectory:
    """A ``Directory`` over one token source's Graph client; profiles are Graph user resources."""

    def __init__(self, graph: GraphReader) -> None:
        self._graph = graph

    def me(self) -> Mapping[str, Any]:
        profile: Mapping[str, Any] = self._graph.get("me", {"$select": PROFILE_FIELDS})
        return profile

    def user(self, address: str) -> Mapping[str, Any]:
        user: Mapping[str, Any] = self._graph.get(f"users/{quote(address, safe='@')}", {"$select": PROFILE_FIELDS})
        return user

    def check_mail_access(self, user_id: str) -> None:
        self._graph.get(f"users/{quote(user_id, safe='')}/mailFolders('inbox')", {"$select": "id"})
