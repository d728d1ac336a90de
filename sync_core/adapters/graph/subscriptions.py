"""The SubscriptionApi port on Microsoft Graph ``/subscriptions`` (facts §5), with the mailbox's own
credentials (delegated or application) through ``GraphHttp``.

Invariants:
- Only ``created`` changes are asked for: a new or moved-in message is what makes a sync worthwhile.
- A 400 from Graph becomes ``SubscriptionRefused``; when its message names a maximum expiration ("can only
  be N minutes in the future") that number is carried, so the caller can retry within it.
- Deleting a subscription that is already gone (404) succeeds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sync_core.adapters.graph.http import GraphHttp
from sync_core.adapters.graph.mail import GRAPH_FOLDERS
from sync_core.domain.model import Mailbox
from sync_core.errors import GraphError, MessageNotFound, SubscriptionRefused
from sync_core.ports.push import WHOLE_MAILBOX, CreatedSubscription

_GRAPH_NAME = {role.value: name for role, name in GRAPH_FOLDERS.items()}
_MAX_MINUTES = re.compile(r"(\d+)\s*minutes", re.IGNORECASE)
_FRACTION = re.compile(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def graph_datetime(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def parse_graph_datetime(value: str) -> datetime:
    """Graph's ``…T11:00:00.0000000Z`` (seven fractional digits) or any ISO 8601 form."""
    match = _FRACTION.match(value.strip())
    if match is None:
        raise ValueError(f"not a Graph datetime: {value!r}")
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = (match.group(3) or "Z").replace("Z", "+00:00")
    return datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}").astimezone(UTC)


def resource_for(mailbox: Mailbox, folder: str) -> str:
    """The Graph resource of a folder's messages (``WHOLE_MAILBOX``: every message of the mailbox)."""
    user = f"users/{quote(mailbox.graph_user_id or mailbox.address, safe='@')}"
    if folder == WHOLE_MAILBOX:
        return f"{user}/messages"
    return f"{user}/mailFolders('{quote(_GRAPH_NAME.get(folder, folder), safe='')}')/messages"


class GraphSubscriptionApi:
    def __init__(self, http_for: Callable[[Mailbox], GraphHttp]) -> None:
        self._http_for = http_for

    def resource_for(self, mailbox: Mailbox, folder: str) -> str:
        return resource_for(mailbox, folder)

    def create(
        self,
        mailbox: Mailbox,
        resource: str,
        *,
        notification_url: str,
        lifecycle_url: str,
        client_state: str,
        expires_at: datetime,
    ) -> CreatedSubscription:
        body = {
            "changeType": "created",
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": resource,
            "expirationDateTime": graph_datetime(expires_at),
            "clientState": client_state,
        }
        payload = self._send(mailbox, "POST", "subscriptions", body)
        return CreatedSubscription(str(payload["id"]), parse_graph_datetime(str(payload["expirationDateTime"])))

    def renew(self, mailbox: Mailbox, subscription_id: str, expires_at: datetime) -> datetime:
        body = {"expirationDateTime": graph_datetime(expires_at)}
        payload = self._send(mailbox, "PATCH", f"subscriptions/{quote(subscription_id, safe='')}", body)
        return parse_graph_datetime(str(payload.get("expirationDateTime") or graph_datetime(expires_at)))

    def delete(self, mailbox: Mailbox, subscription_id: str) -> None:
        try:
            self._send(mailbox, "DELETE", f"subscriptions/{quote(subscription_id, safe='')}")
        except MessageNotFound:
            return

    def _send(self, mailbox: Mailbox, method: str, url: str, body: Any = None) -> Any:
        try:
            return self._http_for(mailbox).send(method, url, body) or {}
        except GraphError as exc:
            if exc.status >= 500:
                raise
            found = _MAX_MINUTES.search(str(exc)) if "expiration" in str(exc).lower() else None
            raise SubscriptionRefused(str(exc), int(found.group(1)) if found else None) from exc
