"""Mail part of the Graph emulator: mailboxes, folders, messages, attachments, delta and subscriptions.

``MailStore`` is what the server calls once it has authenticated a Graph request, checked its Mail.*
permission and access policy, applied faults and throttling and resolved the target mailbox:

* :meth:`MailStore.handle` for every mailbox route (``ctx.rest`` after ``me/`` or ``users/{key}/``),
* :meth:`MailStore.handle_subscriptions` for ``/v1.0/subscriptions[/{id}[/reauthorize]]``,
* :meth:`MailStore.handle_control` for ``/_emulator/mailboxes|subscriptions|delta/...`` (no auth).

Invariants:

* One re-entrant lock (``MailStore.lock``) guards every mailbox, the delta tokens and the subscriptions.
  Nothing holds it while calling the directory or the network, so the directory's own lock and outbound
  HTTP never nest inside it.
* Mailboxes are created lazily, per directory user id, the first time anything touches them.
* Every mutation appends to the folder change logs (for delta) and queues change notifications; the
  caller never waits for a notification to be delivered.
* ``allow_http_notification_urls`` (default False) lets subscriptions use ``http://`` URLs; the server's
  ``/_emulator/config`` sets it.

Choices where the real service is unconfirmed or the emulator is simpler (facts §1, §4, §5):

* Delta pages are capped at 1000 (``Prefer: odata.maxpagesize``); ``$top`` and ``$expand`` are ignored.
* A move shows in delta as ``@removed`` in the source folder and a full item in the target.
* ``changeType=updated|deleted`` on an initial round returns nothing (everything there is "created").
* ``Prefer: outlook.body-content-type`` is honoured on delta too. Both id formats are accepted on input
  whatever ``Prefer: IdType`` says; it only decides which one is shown.
* A garbled token is 400 ``ErrorInvalidSyncStateData`` (Exchange's name for corrupt sync state).
* Subscriptions: at most 10,080 minutes; ``reauthorize`` answers 204; the handshake answer must be
  ``200``, ``text/plain`` and exactly the token.
* Reads (GET) are here; writes (drafts, attachments, upload sessions, ``send``, ``sendMail``,
  ``createReply``) are in :mod:`emulator.mail_send` and :mod:`emulator.mail_upload`, with sending's own
  state (mailbox rights, limits' windows, outbox, upload sessions) in ``MailStore.sending``. Attachment
  lists page at 10 like other Outlook collections; an attached message is a ``fileAttachment`` of type
  ``message/rfc822`` (the real service has ``itemAttachment``). The control API's ``delete`` is
  permanent; Outlook's soft delete (and Graph's ``DELETE``) is a move to ``deleteditems``.
"""

from __future__ import annotations

import operator
import pickle
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .core import GraphContext, Principal, Request, Response, graph_error, now_utc
from .mail_compose import UPDATABLE, apply_change, compose_message, new_internet_message_id
from .mail_control import ControlError, route_control
from .mail_delta import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Behaviour, DeltaEngine, page_size_from
from .mail_mime import build_mime, parse_mime
from .mail_model import (
    MESSAGE_PROPERTIES,
    ROOT,
    Folder,
    Mailbox,
    Message,
    View,
    looks_like_id,
    new_rest_id,
    parse_attachment_select,
    parse_iso,
    parse_select,
    recipient,
    recipients,
    render_attachment,
    render_folder,
    render_message,
)
from .mail_send import AddressBook, handle_write, release_held
from .mail_send_model import RIGHTS, SendingState, SendLimits
from .mail_subscriptions import Notifier, SubscriptionService
from .mail_upload import handle_upload, session_mailbox

SELECT_ALL = tuple(MESSAGE_PROPERTIES)


class MailStore:
    """All mailboxes of the emulator; see the module docstring for the contract and invariants."""

    def __init__(self, directory: Any, notifier_client_factory: Callable[[], Any] | None = None) -> None:
        self.directory = directory
        self.lock = threading.RLock()
        self.allow_http_notification_urls = False
        self.send_limits = SendLimits()
        self.sending = SendingState()
        self._mailboxes: dict[str, Mailbox] = {}
        self.delta = DeltaEngine()
        self.notifier = Notifier(self.lock, notifier_client_factory)
        self.subscriptions = SubscriptionService(
            self.lock, directory, self.notifier, self._folder_id_for, lambda: self.allow_http_notification_urls
        )

    # == Graph mailbox routes ======================================================================

    def handle(self, ctx: GraphContext) -> Response:
        """Serve one mailbox route; writes go to :func:`emulator.mail_send.handle_write`. Unknown routes are
        400 ``BadRequest`` as on the real service."""
        tenant_id = self._tenant_of(ctx.mailbox_id, ctx.principal.tenant_id)
        write = ctx.request.method.upper() != "GET" or ctx.rest.lower().strip("/") == "sendmail"
        book = AddressBook(self.directory.users_of(None)) if write else None  # directory before our lock
        prefer = ctx.request.prefer()
        view = View(
            immutable_ids=prefer.get("idtype", "").lower() == "immutableid",
            body_format="text" if prefer.get("outlook.body-content-type", "").lower() == "text" else "html",
        )
        segments = _segments(ctx.rest)
        with self.lock:
            call = _Call(ctx, self._mailbox(ctx.mailbox_id, tenant_id), view, prefer, _applied_preferences(prefer))
            head = segments[0].lower() if segments else ""
            if book is not None:
                response = handle_write(self, call, segments, book)
            elif head == "mailfolders":
                response = self._folder_route(call, segments[1:])
            elif head == "messages":
                response = self._message_route(call, segments[1:])
            else:
                response = _no_segment(segments[0] if segments else ctx.rest)
        if call.applied and response.status < 400:
            response.headers["Preference-Applied"] = ", ".join(call.applied)
        return response

    def _folder_route(self, call: _Call, segments: list[str]) -> Response:
        """``segments`` follow ``mailFolders``: ``[]``, ``[f]``, ``[f, childFolders, ...]``, ``[f, messages, ...]``."""
        ctx, box = call.ctx, call.box
        if not segments:
            return self._list_folders(ctx, box, box.well_known[ROOT], "mailFolders")
        folder = self._find_folder(box, segments[0])
        if isinstance(folder, Response):
            return folder
        rest = [s.lower() for s in segments[1:]]
        if not rest:
            context = self._context(ctx, "mailFolders/$entity")
            return Response.json(200, {"@odata.context": context, **self._folder_json(box, folder)})
        if rest == ["childfolders"]:
            return self._list_folders(ctx, box, folder.id, f"mailFolders('{folder.id}')/childFolders")
        if rest[0] == "childfolders":
            return self._folder_route(call, segments[2:])
        if rest[0] != "messages":
            return _no_segment(segments[1])
        if rest[1:] in (["delta"], ["delta()"]):
            page_size = page_size_from(call.prefer)
            if page_size is not None:
                call.applied.insert(0, f"odata.maxpagesize={page_size}")
            return self.delta.serve(ctx, box, folder, call.view, page_size or DEFAULT_PAGE_SIZE)
        if len(rest) == 1:
            return self._list_messages(ctx, box, folder, call.view)
        return self._message_route(call, segments[2:])

    def _message_route(self, call: _Call, segments: list[str]) -> Response:
        """``segments`` follow ``messages``: ``[]``, ``[id]``, ``[id, $value]``, ``[id, attachments, ...]``."""
        ctx, box, view = call.ctx, call.box, call.view
        if not segments:
            return self._list_messages(ctx, box, None, view)
        if segments[0].lower() in ("delta", "delta()"):
            return graph_error(
                400,
                "BadRequest",
                "Unsupported request: Change tracking is not supported against 'microsoft.graph.message'.",
            )
        msg = self._find_message(box, segments[0])
        if isinstance(msg, Response):
            return msg
        rest = [s.lower() for s in segments[1:]]
        if not rest:
            select = parse_select(ctx.request.query.get("$select"))
            if isinstance(select, str):
                return _unknown_property(select, "message")
            context = self._context(ctx, "messages/$entity")
            return Response.json(200, {"@odata.context": context, **render_message(msg, view, select)})
        if rest == ["$value"]:
            return Response(200, {"Content-Type": "message/rfc822"}, build_mime(msg))
        if rest[0] == "attachments":
            return self._attachments(ctx, msg, segments[2:], view)
        return _no_segment(segments[1])

    def _attachments(self, ctx: GraphContext, msg: Message, segments: list[str], view: View) -> Response:
        select = parse_attachment_select(ctx.request.query.get("$select"))
        if isinstance(select, str):
            return _unknown_property(select, "attachment")
        base = f"messages('{_shown(msg, view)}')/attachments"
        if not segments:
            return self._paged(ctx, [render_attachment(a, select) for a in msg.attachments], base)
        att = next((a for a in msg.attachments if a.id == segments[0]), None)
        if att is None:
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        if len(segments) == 1:
            context = self._context(ctx, base + "/$entity")
            return Response.json(200, {"@odata.context": context, **render_attachment(att, select)})
        if [s.lower() for s in segments[1:]] == ["$value"]:
            return Response(200, {"Content-Type": att.content_type}, att.data())
        return _no_segment(segments[1])

    def _list_folders(self, ctx: GraphContext, box: Mailbox, parent_id: str, path: str) -> Response:
        include_hidden = ctx.request.query.get("includeHiddenFolders", "").lower() == "true"
        folders = [f for f in box.children(parent_id) if include_hidden or not f.is_hidden]
        return self._paged(ctx, [self._folder_json(box, f) for f in folders], path)

    def _list_messages(self, ctx: GraphContext, box: Mailbox, folder: Folder | None, view: View) -> Response:
        """``GET [mailFolders/{id}/]messages``: newest first; ``$top``, ``$skip``, ``$select``, ``$filter``."""
        query = ctx.request.query
        select = parse_select(query.get("$select"))
        if isinstance(select, str):
            return _unknown_property(select, "message")
        matches = _message_filter(query.get("$filter"))
        if matches is None:
            return graph_error(
                400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes."
            )
        found = [m for m in box.messages.values() if (folder is None or m.folder_id == folder.id) and matches(m)]
        found.sort(key=lambda m: m.received, reverse=query.get("$orderby", "").lower() != "receiveddatetime asc")
        path = f"mailFolders('{folder.id}')/messages" if folder else "messages"
        return self._paged(ctx, found, path, lambda m: render_message(m, view, select))

    def _paged(
        self, ctx: GraphContext, items: list[Any], path: str, render: Callable[[Any], dict[str, Any]] | None = None
    ) -> Response:
        """One ``$top``/``$skip`` page (default 10, at most 1000) with an absolute ``@odata.nextLink``.

        ``render`` (if given) turns an item into JSON; only the items of the page are rendered.
        """
        query = ctx.request.query
        top_raw, skip_raw = query.get("$top", str(DEFAULT_PAGE_SIZE)), query.get("$skip", "0")
        if not top_raw.isdigit() or not skip_raw.isdigit() or not 1 <= int(top_raw) <= MAX_PAGE_SIZE:
            return graph_error(
                400,
                "ErrorInvalidUrlQuery",
                "The value of $top must be between 1 and 1000, and $skip must be a non-negative integer.",
            )
        top, skip = int(top_raw), int(skip_raw)
        page = items[skip : skip + top]
        values = [render(item) for item in page] if render is not None else page
        payload: dict[str, Any] = {"@odata.context": self._context(ctx, path), "value": values}
        if skip + top < len(items):
            params = [(k, v) for k, v in parse_qsl(ctx.request.raw_query, keep_blank_values=True) if k != "$skip"]
            params.append(("$skip", str(skip + top)))
            payload["@odata.nextLink"] = (
                f"{ctx.base_url}/{ctx.user_segment}/{ctx.rest}?{urlencode(params, safe='$,()')}"
            )
        return Response.json(200, payload)

    def _context(self, ctx: GraphContext, path: str) -> str:
        return f"{ctx.base_url}/$metadata#users('{ctx.mailbox_id}')/{path}"

    def _folder_json(self, box: Mailbox, folder: Folder) -> dict[str, Any]:
        inside = box.in_folder(folder.id)
        size = sum(len(m.body) + sum(a.size for a in m.attachments) for m in inside)
        return render_folder(
            folder, len(box.children(folder.id)), len(inside), sum(not m.is_read for m in inside), size
        )

    def _find_folder(self, box: Mailbox, key: str) -> Folder | Response:
        folder = box.folder(key)
        if folder is not None:
            return folder
        if looks_like_id(key):
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return graph_error(400, "ErrorInvalidIdMalformed", "Id is malformed.")

    def _find_message(self, box: Mailbox, key: str) -> Message | Response:
        msg = box.message(key)
        if msg is not None:
            return msg
        if looks_like_id(key):
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return graph_error(400, "ErrorInvalidIdMalformed", "Id is malformed.")

    # == subscriptions and control =================================================================

    def handle_subscriptions(self, request: Request, principal: Principal, base_url: str) -> Response:
        """``/v1.0/subscriptions`` routes; the server has authenticated ``principal``."""
        return self.subscriptions.handle(request, principal, base_url)

    def upload_mailbox(self, path: str) -> str | None:
        """The mailbox an attachment upload URL belongs to, or None (see :mod:`emulator.mail_upload`)."""
        return session_mailbox(self, path)

    def handle_upload(self, request: Request, origin: str) -> Response:
        """``PUT``/``GET``/``DELETE`` on an attachment upload URL (pre-authenticated by its authtoken)."""
        return handle_upload(self, request, origin)

    def has_right(self, owner_id: str, user_id: str | None, *rights: str) -> bool:
        """Whether ``user_id`` holds one of ``rights`` (FullAccess, SendAs, SendOnBehalf) on a mailbox."""
        with self.lock:
            return self.sending.has_right(owner_id, user_id, *rights)

    def handle_control(self, request: Request) -> Response:
        """``/_emulator/mailboxes|subscriptions|delta/...`` (JSON in and out); see ``mail_control``."""
        return route_control(self, request)

    def close(self) -> None:
        """Stop the notification workers (call when the store is discarded)."""
        self.notifier.shutdown()

    def snapshot(self) -> bytes:
        """Every mailbox, delta token, subscription and the notification log, pickled under the lock."""
        with self.lock:
            return pickle.dumps(
                {
                    "mailboxes": self._mailboxes,
                    "delta": self.delta,
                    "subscriptions": self.subscriptions.subscriptions,
                    "notifications": self.notifier.log,
                    "sending": self.sending,
                }
            )

    def restore(self, blob: bytes) -> None:
        """Replace the mail state with a :meth:`snapshot` (unpickled before anything changes)."""
        data = pickle.loads(blob)  # noqa: S301 (our own snapshot, from our own state dir)
        with self.lock:
            self._mailboxes = data["mailboxes"]
            self.delta = data["delta"]
            self.subscriptions.subscriptions = data["subscriptions"]
            self.notifier.log = data["notifications"]
            self.sending = data["sending"]

    def reset(self) -> None:
        """Forget every mailbox, token and subscription (the notification log too)."""
        with self.lock:
            self._mailboxes.clear()
            self.delta = DeltaEngine()
            self.subscriptions.subscriptions.clear()
            self.notifier.log.clear()
            self.sending = SendingState()

    def forget_mailbox(self, user_key: str) -> dict[str, Any]:
        """What a restart of the emulator does to one mailbox: its folders, messages, change logs and
        sync tokens are dropped; the next request starts an empty mailbox whose folders have new ids.
        A delta link stored before then names a folder id nobody has: ``404 ErrorItemNotFound``, as for
        any mailbox item id Graph does not have (learn.microsoft.com/graph/errors: 404 "The requested
        resource doesn't exist"; Exchange's code is ``ErrorItemNotFound``). It is the answer a real
        deleted or recreated folder's delta link gets, and the one the black-box run of issue 13 saw
        after the emulator restarted while storage kept the app's cursors."""
        user = self._user(user_key)
        with self.lock:
            self._mailboxes.pop(user.id, None)
            self.delta.forget(user.id)
            return {"user": user.id}

    # == mailbox operations (control API and tests) ================================================

    def deliver(self, user_key: str, fields: dict[str, Any], *, raw_mime: bytes | None = None) -> dict[str, Any]:
        """Put a new message into a folder of a mailbox (default ``inbox``, ``drafts`` for a draft).

        Fields: ``from``, ``sender``, ``to``, ``cc``, ``bcc``, ``reply_to`` (``{"address","name"}`` or
        ``"Name <a@b>"``), ``subject``, ``body``, ``body_type`` (``html``/``text``; guessed if absent),
        ``received``, ``sent`` (ISO 8601, default now), ``internet_message_id``, ``in_reply_to``,
        ``references``, ``conversation_topic``, ``headers`` ([{name, value}]), ``attachments``
        ([{name, content_type, size, is_inline, content_base64?, content_id?}]), ``is_draft``, ``is_read``,
        ``importance``, ``categories``, ``flag``, ``inference_classification``, ``folder``.
        """
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            msg = self._create_message(box, fields, raw_mime=raw_mime)
            return _ids(msg)

    def deliver_mime(
        self, user_key: str, raw: bytes, folder: str = "inbox", received: str | None = None
    ) -> dict[str, Any]:
        """Deliver an RFC 822 message; ``$value`` later returns exactly ``raw``."""
        fields = parse_mime(raw)
        fields["folder"] = folder
        if received:
            fields["received"] = received
        return self.deliver(user_key, fields, raw_mime=raw)

    def send(self, from_key: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Send as ``from_key``: a copy in its sentitems and one in the inbox of every recipient mailbox.

        All copies share the internetMessageId; recipients' copies carry no Bcc. Recipients outside the
        emulator's directory are only listed.
        """
        sender = self._user(from_key)
        fields = dict(fields)
        fields.setdefault("from", {"address": sender.mail, "name": sender.display_name})
        domain = str((recipient(fields["from"]) or {}).get("emailAddress", {}).get("address", "")).partition("@")[2]
        fields.setdefault("internet_message_id", new_internet_message_id(domain))
        addresses = [r["emailAddress"]["address"] for key in ("to", "cc", "bcc") for r in recipients(fields.get(key))]
        targets: dict[str, Any] = {}
        for address in addresses:
            found = self.directory.resolve_user(sender.tenant_id, address) or _lookup(self.directory, address)
            if found is not None:
                targets.setdefault(found.id, found)
        with self.lock:
            sent_box = self._mailbox(sender.id, sender.tenant_id)
            sent = self._create_message(sent_box, {**fields, "folder": "sentitems", "is_read": True})
            delivered = []
            for target in targets.values():
                copy = {**fields, "folder": "inbox", "bcc": [], "is_read": False}
                msg = self._create_message(self._mailbox(target.id, target.tenant_id), copy)
                delivered.append({"user": target.id, **_ids(msg)})
        return {"sent": _ids(sent), "delivered": delivered}

    def move(self, user_key: str, message_id: str, folder_key: str) -> dict[str, Any]:
        """Move a message: same immutable id, new REST id; delta sees a removal and a creation."""
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            msg, target = self._control_message(box, message_id), self._control_folder(box, folder_key)
            if target.id == msg.folder_id:
                return _ids(msg)
            old_rest_id = self._relocate(box, msg, target)
            return {**_ids(msg), "previousId": old_rest_id}

    def delete(self, user_key: str, message_id: str) -> dict[str, Any]:
        """Delete permanently (Outlook's soft delete is ``move(..., "deleteditems")``)."""
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            msg = self._control_message(box, message_id)
            box.record("deleted", msg, msg.folder_id)
            self._notify(box, msg.folder_id, "deleted", msg)
            del box.messages[msg.immutable_id]
            del box.rest_index[msg.rest_id]
            return _ids(msg)

    def update(self, user_key: str, message_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change properties (``isRead``/``is_read``, ``subject``, ``body``, ``importance``, ``categories``,
        ``flag``, ``inferenceClassification``, ``isDraft``); delta reports only what changed."""
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            msg = self._control_message(box, message_id)
            wanted = {key: UPDATABLE.get(key.lower()) for key in changes if key != "body_type"}
            unknown = sorted(key for key, prop in wanted.items() if prop is None)
            if unknown or not wanted:
                raise ControlError(
                    400, f"cannot update {unknown or 'nothing'}; updatable: {sorted(set(UPDATABLE.values()))}"
                )
            props: set[str] = set()
            for key, prop in wanted.items():
                apply_change(msg, str(prop), changes[key], changes.get("body_type"))
                props.update({"body", "bodyPreview", "uniqueBody"} if prop == "body" else {str(prop)})
            msg.touch(now_utc())
            box.record("updated", msg, msg.folder_id, frozenset(props))
            self._notify(box, msg.folder_id, "updated", msg)
            return _ids(msg)

    def create_folder(self, user_key: str, display_name: str, parent: str | None = None) -> dict[str, Any]:
        """A custom folder under ``parent`` (well-known name or id; default: top level)."""
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            parent_folder = self._control_folder(box, parent or ROOT)
            if any(f.display_name.lower() == display_name.lower() for f in box.children(parent_folder.id)):
                raise ControlError(409, f"a folder named {display_name!r} already exists there")
            return self._folder_json(box, box.add_folder(display_name, parent_folder.id))

    def folders(self, user_key: str) -> list[dict[str, Any]]:
        """Every folder of a mailbox with its well-known name (hidden ones too)."""
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            return [{**self._folder_json(box, f), "wellKnownName": f.well_known} for f in box.folders.values()]

    def message_state(self, user_key: str, message_id: str) -> dict[str, Any]:
        """A message with both ids (control API view)."""
        user = self._user(user_key)
        with self.lock:
            msg = self._control_message(self._mailbox(user.id, user.tenant_id), message_id)
            return {**render_message(msg, View()), **_ids(msg)}

    def folder_messages(self, user_key: str, folder_key: str) -> list[dict[str, Any]]:
        """A folder's messages (control API view, both ids), newest first."""
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            folder = self._control_folder(box, folder_key)
            found = sorted(box.in_folder(folder.id), key=lambda m: m.received, reverse=True)
            return [{**render_message(m, View(), SELECT_ALL), **_ids(m)} for m in found]

    def hold_submissions(self, user_key: str, hold: bool) -> dict[str, Any]:
        """Hold a mailbox's submissions in its Outbox (``hold``), or release them all (delivering them)."""
        user = self._user(user_key)
        book = AddressBook(self.directory.users_of(None))  # directory before our lock
        with self.lock:
            if hold:
                self.sending.holding.add(user.id)
                return {"user": user.id, "holding": True, "released": 0}
            return {"user": user.id, "holding": False, "released": release_held(self, user.id, book)}

    def outbox(self, internet_message_id: str | None = None) -> list[dict[str, Any]]:
        """Mail handed to addresses outside the emulator (one entry per sent message), oldest first."""
        with self.lock:
            return [
                e.as_json()
                for e in self.sending.outbox
                if internet_message_id is None or e.internet_message_id == internet_message_id
            ]

    def clear_outbox(self) -> None:
        with self.lock:
            self.sending.outbox.clear()

    def set_rights(self, owner_key: str, user_key: str, rights: list[str]) -> dict[str, Any]:
        """Exchange mailbox permissions of ``user_key`` on ``owner_key``'s mailbox (replaced; [] revokes)."""
        unknown = sorted(set(rights) - set(RIGHTS))
        if unknown:
            raise ControlError(400, f"unknown rights {unknown}; known: {list(RIGHTS)}")
        owner, user = self._user(owner_key), self._user(user_key)
        with self.lock:
            if rights:
                self.sending.rights[(owner.id, user.id)] = set(rights)
            else:
                self.sending.rights.pop((owner.id, user.id), None)
            return {"owner": owner.id, "user": user.id, "rights": sorted(rights)}

    def rights_on(self, owner_key: str) -> list[dict[str, Any]]:
        owner = self._user(owner_key)
        with self.lock:
            return [
                {"user": user_id, "rights": sorted(rights)}
                for (owner_id, user_id), rights in self.sending.rights.items()
                if owner_id == owner.id
            ]

    def expire_delta_tokens(self, user_key: str) -> dict[str, Any]:
        """Bump the mailbox's sync generation: every earlier skip/delta token becomes 410 Gone."""
        user = self._user(user_key)
        with self.lock:
            box = self._mailbox(user.id, user.tenant_id)
            box.generation += 1
            return {"user": user.id, "generation": box.generation}

    def set_delta_behaviour(
        self, user_key: str | None, empty_page_first: bool | None = None, replay_every: int | None = None
    ) -> dict[str, Any]:
        """Realism switches for one mailbox, or the default for all (``user_key`` None)."""
        user_id = self._user(user_key).id if user_key else None
        with self.lock:
            current = (
                self.delta.behaviours.get(user_id, self.delta.default_behaviour)
                if user_id
                else self.delta.default_behaviour
            )
            updated = Behaviour(
                current.empty_page_first if empty_page_first is None else bool(empty_page_first),
                current.replay_every if replay_every is None else max(0, int(replay_every)),
            )
            if user_id:
                self.delta.behaviours[user_id] = updated
            else:
                self.delta.default_behaviour = updated
            return {"user": user_id, "empty_page_first": updated.empty_page_first, "replay_every": updated.replay_every}

    # == internals ==================================================================================

    def _create_message(self, box: Mailbox, fields: dict[str, Any], *, raw_mime: bytes | None = None) -> Message:
        is_draft = bool(fields.get("is_draft", False))
        folder = self._control_folder(box, str(fields.get("folder") or ("drafts" if is_draft else "inbox")))
        msg = compose_message(box, folder, fields, raw_mime)
        box.messages[msg.immutable_id] = msg
        box.rest_index[msg.rest_id] = msg.immutable_id
        box.record("created", msg, folder.id)
        self._notify(box, folder.id, "created", msg)
        return msg

    def _relocate(self, box: Mailbox, msg: Message, target: Folder) -> str:
        """Move ``msg`` to ``target``: same immutable id, new REST id (returns the old one); delta sees a
        removal from the source folder and a creation in the target, and both fire notifications."""
        source, old_rest_id = msg.folder_id, msg.rest_id
        box.record("deleted", msg, source)
        self._notify(box, source, "deleted", msg)
        del box.rest_index[old_rest_id]
        msg.rest_id, msg.folder_id = new_rest_id(), target.id
        msg.touch(now_utc())
        box.rest_index[msg.rest_id] = msg.immutable_id
        box.record("created", msg, target.id)
        self._notify(box, target.id, "created", msg)
        return old_rest_id

    def _notify(self, box: Mailbox, folder_id: str, change_type: str, msg: Message) -> None:
        self.subscriptions.notify(
            box.user_id,
            folder_id,
            change_type,
            immutable_id=msg.immutable_id,
            rest_id=msg.rest_id,
            change_key=msg.change_key,
        )

    def _mailbox(self, user_id: str, tenant_id: str) -> Mailbox:
        box = self._mailboxes.get(user_id)
        if box is None:
            box = self._mailboxes[user_id] = Mailbox.create(user_id, tenant_id)
        return box

    def _tenant_of(self, user_id: str, fallback: str) -> str:
        user = self.directory.get_user(user_id)
        return user.tenant_id if user is not None else fallback

    def _user(self, key: str | None) -> Any:
        user = self.directory.get_user(key) if key else None
        if user is None and key:
            user = _lookup(self.directory, key)
        if user is None:
            raise ControlError(
                404, f"no user {key!r} in the emulator's directory (an id, an address, or a short name one user has)"
            )
        return user

    def _folder_id_for(self, user_id: str, tenant_id: str, key: str) -> str | None:
        with self.lock:
            folder = self._mailbox(user_id, tenant_id).folder(key)
            return folder.id if folder else None

    def _control_folder(self, box: Mailbox, key: str) -> Folder:
        folder = box.folder(key)
        if folder is None:
            raise ControlError(404, f"no folder {key!r} in mailbox {box.user_id}")
        return folder

    def _control_message(self, box: Mailbox, key: str) -> Message:
        msg = box.message(key)
        if msg is None:
            raise ControlError(404, f"no message {key!r} in mailbox {box.user_id}")
        return msg


@dataclass
class _Call:
    """One Graph request being served: its context, mailbox, rendering view and applied preferences."""

    ctx: GraphContext
    box: Mailbox
    view: View
    prefer: dict[str, str]
    applied: list[str]


# == helpers ========================================================================================


def _segments(rest: str) -> list[str]:
    """``mailFolders('inbox')/messages/delta`` -> ``["mailFolders", "inbox", "messages", "delta"]``."""
    out: list[str] = []
    for segment in rest.strip("/").split("/"):
        match = re.fullmatch(r"([A-Za-z]+)\('([^']*)'\)", segment)
        out.extend([match.group(1), match.group(2)] if match else [segment])
    return [s for s in out if s != ""]


def _applied_preferences(prefer: dict[str, str]) -> list[str]:
    applied = []
    body = prefer.get("outlook.body-content-type", "").lower()
    if body in ("text", "html"):
        applied.append(f'outlook.body-content-type="{body}"')
    id_type = prefer.get("idtype", "").lower()
    if id_type in ("immutableid", "restid"):
        applied.append('IdType="ImmutableId"' if id_type == "immutableid" else 'IdType="RestId"')
    return applied


def _no_segment(segment: str) -> Response:
    return graph_error(400, "BadRequest", f"Resource not found for the segment '{segment}'.")


def _unknown_property(name: str, entity: str) -> Response:
    return graph_error(
        400, "RequestBroker--ParseUri", f"Could not find a property named '{name}' on type 'microsoft.graph.{entity}'."
    )


def _shown(msg: Message, view: View) -> str:
    return msg.immutable_id if view.immutable_ids else msg.rest_id


def _ids(msg: Message) -> dict[str, Any]:
    return {
        "id": msg.rest_id,
        "immutableId": msg.immutable_id,
        "internetMessageId": msg.internet_message_id,
        "conversationId": msg.conversation_id,
        "parentFolderId": msg.folder_id,
    }


def _lookup(directory: Any, key: str) -> Any:
    lookup = getattr(directory, "lookup_user", None)
    return lookup(key) if lookup is not None else None


_FILTER_CLAUSE = re.compile(
    r"^\s*(?:(receivedDateTime)\s+(ge|gt|le|lt)\s+(\S+)|(internetMessageId)\s+eq\s+'((?:[^']|'')*)')\s*$", re.IGNORECASE
)


def _message_filter(raw: str | None) -> Callable[[Message], bool] | None:
    """The few ``$filter`` forms the list routes support (``and``-joined); None if invalid."""
    checks: list[Callable[[Message], bool]] = []
    for clause in re.split(r"\s+and\s+", raw, flags=re.IGNORECASE) if raw else []:
        match = _FILTER_CLAUSE.match(clause)
        if match is None:
            return None
        if match.group(1):
            moment = parse_iso(match.group(3))
            if moment is None:
                return None
            checks.append(_received_check(match.group(2).lower(), moment))
        else:
            checks.append(_message_id_check(match.group(5).replace("''", "'")))
    return lambda m: all(check(m) for check in checks)


def _received_check(op: str, moment: datetime) -> Callable[[Message], bool]:
    compare = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}[op]
    return lambda m: bool(compare(m.received, moment))


def _message_id_check(wanted: str) -> Callable[[Message], bool]:
    return lambda m: m.internet_message_id == wanted
