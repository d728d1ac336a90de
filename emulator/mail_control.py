"""Control routes of the mail emulator (``/_emulator/...``): JSON in, JSON out, no auth.

``{user}`` is a directory user id, UPN, mail or proxy address (any tenant); message ids may be REST or
immutable ids. Errors are ``{"error": "message"}`` with 400/404/409, like the rest of ``/_emulator``.

=======  =================================================  ============================================
method   path                                               body -> answer
=======  =================================================  ============================================
POST     /_emulator/mailboxes/{user}/messages               delivery fields -> ids (201)
POST     /_emulator/mailboxes/{user}/messages/bulk          {count, interval_seconds?, start?, ...fields}
                                                            -> {count, first, last} (201)
POST     /_emulator/mailboxes/{user}/mime                   {mime_base64 | mime, folder?, received?} -> ids
POST     /_emulator/mailboxes/{user}/send                   fields -> {sent, delivered[]} (201)
GET      /_emulator/mailboxes/{user}/messages/{id}          -> message with both ids
PATCH    /_emulator/mailboxes/{user}/messages/{id}          changes -> ids
DELETE   /_emulator/mailboxes/{user}/messages/{id}          -> ids
POST     /_emulator/mailboxes/{user}/messages/{id}/move     {folder} -> ids (+ previousId)
GET      /_emulator/mailboxes/{user}/folders                -> every folder with wellKnownName
GET      /_emulator/mailboxes/{user}/folders/{f}/messages   -> the folder's messages with both ids, newest
                                                            first (``f``: well-known name or id)
GET      /_emulator/mailboxes/{user}/sent                   -> the same for Sent Items
GET      /_emulator/mailboxes/{user}/rights                 -> [{user, rights}] held on this mailbox
PUT      /_emulator/mailboxes/{user}/rights                 {user, rights: [FullAccess|SendAs|SendOnBehalf]}
                                                            -> {owner, user, rights} (replaces; [] revokes)
POST     /_emulator/mailboxes/{user}/submission/hold    -> submissions wait in the Outbox (sent, isDraft
                                                            false, same immutable id) and reach nobody
POST     /_emulator/mailboxes/{user}/submission/release -> {released}: held mail goes out, saved copies
                                                            move to Sent Items; holding stops
GET      /_emulator/outbox                                  ?internet_message_id= -> mail that left for
                                                            addresses outside the emulator, oldest first
DELETE   /_emulator/outbox                                  clears it (204)
POST     /_emulator/mailboxes/{user}/folders                {display_name, parent?} -> folder (201)
POST     /_emulator/mailboxes/{user}/forget                 -> {user}: the mailbox as after a restart
                                                            (empty, new folder ids, tokens gone)
POST     /_emulator/delta/expire                            {user} -> {user, generation}
POST     /_emulator/delta/behaviour                         {user?, empty_page_first?, replay_every?}
GET      /_emulator/subscriptions                           -> every subscription (expired ones too)
GET      /_emulator/subscriptions/notifications             -> outbound attempts (validation, notification,
                                                            lifecycle) with status and duration
DELETE   /_emulator/subscriptions/notifications             clears that log (204)
POST     /_emulator/subscriptions/{id}/lifecycle            {event} -> the delivery attempt record
=======  =================================================  ============================================
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .core import Request, Response, now_utc
from .mail_model import parse_iso

if TYPE_CHECKING:
    from .mail import MailStore

MAX_BULK = 20_000


class ControlError(Exception):
    """A control-API request the emulator refuses; becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def route_control(store: MailStore, request: Request) -> Response:
    """Dispatch one control request; every failure becomes a JSON error, never an exception."""
    parts = [p for p in request.path.split("/") if p]
    if parts and parts[0] == "_emulator":
        parts = parts[1:]
    method = request.method.upper()
    try:
        body = _body(request)
        if parts[:1] == ["mailboxes"] and len(parts) >= 3:
            return _mailbox_route(store, method, parts[1], parts[2:], body)
        if parts == ["delta", "expire"] and method == "POST":
            return _ok(store.expire_delta_tokens(str(body.get("user", ""))))
        if parts == ["delta", "behaviour"] and method == "POST":
            return _ok(
                store.set_delta_behaviour(body.get("user"), body.get("empty_page_first"), body.get("replay_every"))
            )
        if parts == ["outbox"]:
            if method == "GET":
                return _ok(store.outbox(request.query.get("internet_message_id")))
            if method == "DELETE":
                store.clear_outbox()
                return Response(204)
        if parts == ["subscriptions"] and method == "GET":
            return _ok(store.subscriptions.describe())
        if parts == ["subscriptions", "notifications"]:
            if method == "GET":
                with store.lock:
                    return _ok(list(store.notifier.log))
            if method == "DELETE":
                with store.lock:
                    store.notifier.log.clear()
                return Response(204)
        if len(parts) == 3 and parts[0] == "subscriptions" and parts[2] == "lifecycle" and method == "POST":
            try:
                return _ok(store.subscriptions.fire_lifecycle(parts[1], str(body.get("event", ""))))
            except KeyError:
                raise ControlError(404, f"no subscription {parts[1]!r}") from None
            except ValueError as exc:
                raise ControlError(400, str(exc)) from None
        raise ControlError(404, f"no control route {method} {request.path}")
    except ControlError as exc:
        return Response.json(exc.status, {"error": str(exc)})
    except (KeyError, TypeError, ValueError) as exc:
        return Response.json(400, {"error": f"bad request: {exc}"})


def _mailbox_route(store: MailStore, method: str, user: str, rest: list[str], body: dict[str, Any]) -> Response:
    if rest == ["messages"] and method == "POST":
        return _ok(store.deliver(user, body), 201)
    if rest == ["messages", "bulk"] and method == "POST":
        return _ok(_bulk(store, user, body), 201)
    if rest == ["mime"] and method == "POST":
        raw = _mime_bytes(body)
        return _ok(store.deliver_mime(user, raw, str(body.get("folder") or "inbox"), body.get("received")), 201)
    if rest == ["forget"] and method == "POST":
        return _ok(store.forget_mailbox(user))
    if rest == ["send"] and method == "POST":
        return _ok(store.send(user, body), 201)
    if rest == ["folders"]:
        if method == "GET":
            return _ok(store.folders(user))
        if method == "POST":
            if not body.get("display_name"):
                raise ControlError(400, "display_name is required")
            return _ok(store.create_folder(user, str(body["display_name"]), body.get("parent")), 201)
    if rest == ["sent"] and method == "GET":
        return _ok(store.folder_messages(user, "sentitems"))
    if len(rest) == 3 and rest[0] == "folders" and rest[2] == "messages" and method == "GET":
        return _ok(store.folder_messages(user, rest[1]))
    if rest[:1] == ["submission"] and len(rest) == 2 and rest[1] in ("hold", "release") and method == "POST":
        return _ok(store.hold_submissions(user, rest[1] == "hold"))
    if rest == ["rights"]:
        if method == "GET":
            return _ok(store.rights_on(user))
        if method == "PUT":
            rights = body.get("rights")
            if not body.get("user") or not isinstance(rights, list):
                raise ControlError(400, "user and rights (a list) are required")
            return _ok(store.set_rights(user, str(body["user"]), [str(r) for r in rights]))
    if len(rest) == 2 and rest[0] == "messages":
        if method == "GET":
            return _ok(store.message_state(user, rest[1]))
        if method == "PATCH":
            return _ok(store.update(user, rest[1], body))
        if method == "DELETE":
            return _ok(store.delete(user, rest[1]))
    if len(rest) == 3 and rest[0] == "messages" and rest[2] == "move" and method == "POST":
        if not body.get("folder"):
            raise ControlError(400, "folder is required")
        return _ok(store.move(user, rest[1], str(body["folder"])))
    raise ControlError(404, f"no control route {method} /_emulator/mailboxes/{user}/{'/'.join(rest)}")


def _bulk(store: MailStore, user: str, body: dict[str, Any]) -> dict[str, Any]:
    """Deliver ``count`` messages built from one template; received times step back from ``start``.

    Subjects get `` #n`` appended; each message gets its own internetMessageId.
    """
    count = body.get("count")
    if not isinstance(count, int) or not 1 <= count <= MAX_BULK:
        raise ControlError(400, f"count must be an integer between 1 and {MAX_BULK}")
    interval = float(body.get("interval_seconds", 60))
    start = parse_iso(str(body["start"])) if body.get("start") else now_utc().replace(microsecond=0)
    if start is None:
        raise ControlError(400, "start must be an ISO 8601 date-time")
    template = {k: v for k, v in body.items() if k not in ("count", "interval_seconds", "start", "internet_message_id")}
    subject = str(template.get("subject", "Message"))
    first = last = None
    for n in range(count):
        received = (start - timedelta(seconds=interval * n)).isoformat()
        ids = store.deliver(user, {**template, "subject": f"{subject} #{n + 1}", "received": received})
        first = first or ids
        last = ids
    return {"count": count, "first": first, "last": last}


def _mime_bytes(body: dict[str, Any]) -> bytes:
    if body.get("mime_base64"):
        try:
            return base64.b64decode(str(body["mime_base64"]), validate=True)
        except binascii.Error:
            raise ControlError(400, "mime_base64 is not valid base64") from None
    if body.get("mime"):
        return str(body["mime"]).encode("utf-8")
    raise ControlError(400, "mime_base64 (or mime as text) is required")


def _body(request: Request) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except ValueError:
        raise ControlError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object")
    return body


def _ok(payload: Any, status: int = 200) -> Response:
    return Response.json(status, payload)
