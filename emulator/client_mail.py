"""Test/developer client for the mail emulator's control API (mixed into ``EmulatorClient``).

Every method is one control route (see :mod:`emulator.mail_control`). ``user`` is a directory user id,
UPN, mail or proxy address; ``message_id`` a REST or immutable id. The host class provides
``_call(method, path, json=None)``, which returns the decoded JSON answer (None for 204) and raises on
an error status.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any
from urllib.parse import quote


def _seg(value: str) -> str:
    return quote(value, safe="")


class MailControlMixin:
    """Mailbox, delta and subscription controls of the Graph emulator."""

    if TYPE_CHECKING:

        def _call(self, method: str, path: str, json: Any = None) -> Any: ...

    # -- messages ----------------------------------------------------------------------------------

    def deliver(self, user: str, **message_fields: Any) -> dict[str, Any]:
        """Deliver a message (default folder ``inbox``). Returns ``id``, ``immutableId``,
        ``internetMessageId``, ``conversationId``, ``parentFolderId``.

        Fields: ``from``/``from_``, ``sender``, ``to``, ``cc``, ``bcc``, ``reply_to``, ``subject``, ``body``,
        ``body_type`` (html|text), ``received``, ``sent``, ``internet_message_id``, ``in_reply_to``,
        ``references``, ``conversation_topic``, ``headers``, ``attachments``, ``is_draft``, ``is_read``,
        ``importance``, ``categories``, ``flag``, ``inference_classification``, ``folder``.
        """
        return dict(self._call("POST", f"/_emulator/mailboxes/{_seg(user)}/messages", _fields(message_fields)))

    def deliver_many(
        self, user: str, count: int, *, interval_seconds: float = 60, start: str | None = None, **template: Any
    ) -> dict[str, Any]:
        """Deliver ``count`` messages from one template, received ``interval_seconds`` apart going back
        from ``start`` (default now). Returns ``{count, first, last}``."""
        body = {**_fields(template), "count": count, "interval_seconds": interval_seconds}
        if start is not None:
            body["start"] = start
        return dict(self._call("POST", f"/_emulator/mailboxes/{_seg(user)}/messages/bulk", body))

    def deliver_mime(
        self, user: str, raw: bytes | str, folder: str = "inbox", received: str | None = None
    ) -> dict[str, Any]:
        """Deliver an RFC 822 message as is; ``$value`` returns these exact bytes."""
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        body: dict[str, Any] = {"mime_base64": base64.b64encode(data).decode("ascii"), "folder": folder}
        if received is not None:
            body["received"] = received
        return dict(self._call("POST", f"/_emulator/mailboxes/{_seg(user)}/mime", body))

    def send(self, from_user: str, **fields: Any) -> dict[str, Any]:
        """Send: a copy in the sender's sentitems and in the inbox of every recipient mailbox, one
        internetMessageId. Returns ``{"sent": ids, "delivered": [{"user", ...ids}]}``."""
        return dict(self._call("POST", f"/_emulator/mailboxes/{_seg(from_user)}/send", _fields(fields)))

    def move(self, user: str, message_id: str, folder: str) -> dict[str, Any]:
        """Move to a folder (well-known name or id): same immutable id, new REST id (``previousId`` is the old)."""
        path = f"/_emulator/mailboxes/{_seg(user)}/messages/{_seg(message_id)}/move"
        return dict(self._call("POST", path, {"folder": folder}))

    def delete(self, user: str, message_id: str) -> dict[str, Any]:
        """Delete permanently (use ``move(user, id, "deleteditems")`` for Outlook's soft delete)."""
        return dict(self._call("DELETE", f"/_emulator/mailboxes/{_seg(user)}/messages/{_seg(message_id)}"))

    def update(self, user: str, message_id: str, **changes: Any) -> dict[str, Any]:
        """Change ``is_read``/``isRead``, ``subject``, ``body`` (+ ``body_type``), ``importance``,
        ``categories``, ``flag``, ``inference_classification``, ``is_draft``."""
        return dict(self._call("PATCH", f"/_emulator/mailboxes/{_seg(user)}/messages/{_seg(message_id)}", changes))

    def message(self, user: str, message_id: str) -> dict[str, Any]:
        """The stored message (Graph JSON) with both ids, bypassing auth, throttling and faults."""
        return dict(self._call("GET", f"/_emulator/mailboxes/{_seg(user)}/messages/{_seg(message_id)}"))

    # -- folders -----------------------------------------------------------------------------------

    def create_folder(self, user: str, display_name: str, parent: str | None = None) -> dict[str, Any]:
        """A custom folder under ``parent`` (well-known name or id; default top level)."""
        body: dict[str, Any] = {"display_name": display_name}
        if parent is not None:
            body["parent"] = parent
        return dict(self._call("POST", f"/_emulator/mailboxes/{_seg(user)}/folders", body))

    def folders(self, user: str) -> list[dict[str, Any]]:
        """Every folder of the mailbox, hidden ones too, each with its ``wellKnownName`` (or None)."""
        return list(self._call("GET", f"/_emulator/mailboxes/{_seg(user)}/folders"))

    # -- delta -------------------------------------------------------------------------------------

    def forget_mailbox(self, user: str) -> dict[str, Any]:
        """The mailbox as after a restart of the emulator: empty, new folder ids, its delta links unknown
        (they answer 404 ``ErrorItemNotFound``)."""
        return dict(self._call("POST", f"/_emulator/mailboxes/{quote(user, safe='')}/forget"))

    def expire_delta_tokens(self, user: str) -> dict[str, Any]:
        """Make every delta/skip token of the mailbox so far answer 410 ``SyncStateNotFound``."""
        return dict(self._call("POST", "/_emulator/delta/expire", {"user": user}))

    def set_delta_behaviour(
        self, user: str | None = None, empty_page_first: bool | None = None, replay_every: int | None = None
    ) -> dict[str, Any]:
        """Delta realism for one mailbox (or the default for all): an empty first page with a nextLink at
        the start of every round; re-send an earlier item after every ``replay_every`` items (0: never)."""
        body: dict[str, Any] = {"user": user}
        if empty_page_first is not None:
            body["empty_page_first"] = empty_page_first
        if replay_every is not None:
            body["replay_every"] = replay_every
        return dict(self._call("POST", "/_emulator/delta/behaviour", body))

    # -- subscriptions -----------------------------------------------------------------------------

    def fire_lifecycle(self, subscription_id: str, event: str) -> dict[str, Any]:
        """Send ``reauthorizationRequired``, ``subscriptionRemoved`` (deletes it) or ``missed`` now.
        Returns the delivery attempt record."""
        return dict(self._call("POST", f"/_emulator/subscriptions/{_seg(subscription_id)}/lifecycle", {"event": event}))

    def list_subscriptions(self) -> list[dict[str, Any]]:
        """Every subscription, expired ones too (``expired``), with ``mailboxId`` and ``folderId``."""
        return list(self._call("GET", "/_emulator/subscriptions"))

    def notifications_log(self) -> list[dict[str, Any]]:
        """Outbound attempts in order: ``kind`` (validation|notification|lifecycle), ``url``, ``attempt``,
        ``status`` (None: no answer), ``ok``, ``error``, ``durationMs``, ``slow``, ``subscriptionId``,
        ``changeType``/``resource`` or ``lifecycleEvent``."""
        return list(self._call("GET", "/_emulator/subscriptions/notifications"))

    def clear_notifications_log(self) -> None:
        self._call("DELETE", "/_emulator/subscriptions/notifications")


class SendControlMixin:
    """Sending controls: the outbox, a folder's messages, mailbox rights and send faults."""

    if TYPE_CHECKING:

        def _call(self, method: str, path: str, json: Any = None) -> Any: ...

    def outbox(self, internet_message_id: str | None = None) -> list[dict[str, Any]]:
        """Mail that left the emulator for outside addresses (one entry per sent message)."""
        query = f"?internet_message_id={quote(internet_message_id, safe='')}" if internet_message_id else ""
        return list(self._call("GET", f"/_emulator/outbox{query}"))

    def clear_outbox(self) -> None:
        self._call("DELETE", "/_emulator/outbox")

    def folder_messages(self, user: str, folder: str) -> list[dict[str, Any]]:
        """A folder's messages (every property, both ids), newest first."""
        return list(self._call("GET", f"/_emulator/mailboxes/{_seg(user)}/folders/{_seg(folder)}/messages"))

    def sent_items(self, user: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/_emulator/mailboxes/{_seg(user)}/sent"))

    def set_mailbox_rights(self, owner: str, user: str, rights: list[str]) -> dict[str, Any]:
        """``user``'s Exchange rights on ``owner``'s mailbox: FullAccess, SendAs, SendOnBehalf ([] revokes)."""
        return dict(self._call("PUT", f"/_emulator/mailboxes/{_seg(owner)}/rights", {"user": user, "rights": rights}))

    def hold_submissions(self, user: str) -> None:
        """From now on ``user``'s sent mail waits in its Outbox and reaches nobody until released."""
        self._call("POST", f"/_emulator/mailboxes/{_seg(user)}/submission/hold")

    def release_submissions(self, user: str) -> int:
        """Send what ``user``'s Outbox holds (saved copies move to Sent Items); stop holding."""
        return int(self._call("POST", f"/_emulator/mailboxes/{_seg(user)}/submission/release")["released"])

    def fail_sends(
        self,
        count: int = 1,
        *,
        status: int | None = None,
        lost: bool = False,
        mailbox: str | None = None,
        retry_after: int | None = None,
    ) -> str:
        """The next ``count`` sends fail with ``status`` (nothing sent), or with ``lost`` are sent and then
        their answer is lost (dropped connection, or ``status`` instead of 202). Returns the fault id."""
        spec: dict[str, Any] = {"count": count, "lost": lost}
        for key, value in (("status", status), ("mailbox", mailbox), ("retry_after", retry_after)):
            if value is not None:
                spec[key] = value
        return str(self._call("POST", "/_emulator/faults/send", spec)["id"])


def _fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Python-friendly names to control names (``from_`` -> ``from``)."""
    out = dict(fields)
    if "from_" in out:
        out["from"] = out.pop("from_")
    return out
