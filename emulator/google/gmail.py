"""The Gmail API v1 (gmail.googleapis.com): ``/gmail/v1/users/{userId}/…``, the media upload of
``messages.send`` and the batch endpoint ``POST /batch/gmail/v1``.

A call goes: access token (401 ``authError``) → scope (403 ``insufficientPermissions``) → userId is
``me`` or the token's own address (403 "Delegation denied"; a service account's own token, without
``sub``, gets 400 ``failedPrecondition``) → latency and injected faults → the user's quota (the
method's units, docs/google-emulator-facts.md; over the limit 429 or 403 ``userRateLimitExceeded``,
nothing consumed) → the method. From the userId check on, every answer is counted per user.

Invariants:

* Error bodies have Google's shape: ``{"error": {"code", "message", "errors": [{"message", "domain",
  "reason"}], "status"}}``.
* ``messages.list`` is newest first (internalDate, then arrival) and excludes SPAM and TRASH unless
  ``includeSpamTrash``; page tokens name the last message returned, so mail arriving between pages
  neither repeats nor shifts a page.
* ``history.list`` returns records with ids greater than ``startHistoryId``; an id below the mailbox's
  history floor answers 404 ``notFound``.
* Batch sub-requests run through exactly the same path as direct calls (each authenticated, faulted
  and charged on its own); at most 100 per batch.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from werkzeug.datastructures import Headers

from emulator.core import Request, Response
from emulator.google import mailbox as store
from emulator.google import mime
from emulator.google.oauth import INVALID_TOKEN_CHALLENGE, GoogleOAuth
from emulator.google.push import PushDeliverer
from emulator.google.state import (
    GMAIL_COMPOSE,
    GMAIL_FULL,
    GMAIL_METADATA,
    GMAIL_MODIFY,
    GMAIL_READONLY,
    GMAIL_SEND,
    SYSTEM_LABELS,
    AccessToken,
    Draft,
    GmailMessage,
    GoogleState,
    GoogleUser,
    Watch,
)

BATCH_LIMIT = 100
READ = (GMAIL_READONLY, GMAIL_MODIFY, GMAIL_FULL, GMAIL_METADATA)
SEND = (GMAIL_SEND, GMAIL_COMPOSE, GMAIL_MODIFY, GMAIL_FULL)
COMPOSE = (GMAIL_COMPOSE, GMAIL_MODIFY, GMAIL_FULL)
STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
FAULT_BODIES = {
    400: ("badRequest", "global", "Bad Request"),
    403: ("rateLimitExceeded", "usageLimits", "Rate Limit Exceeded"),
    429: ("rateLimitExceeded", "usageLimits", "Rate Limit Exceeded"),
    500: ("backendError", "global", "Backend Error"),
    502: ("backendError", "global", "Bad Gateway"),
    503: ("backendError", "global", "The service is currently unavailable."),
    504: ("backendError", "global", "Deadline exceeded"),
}
MESSAGE_ID = re.compile(r"^[0-9a-f]{16}$")
TOPIC_NAME = re.compile(r"^projects/[^/]+/topics/[^/]+$")
FORMATS = ("minimal", "metadata", "full", "raw")


def gmail_error(status: int, message: str, reason: str, domain: str = "global",
                headers: dict[str, str] | None = None, **extra: str) -> Response:
    detail = {"message": message, "domain": domain, "reason": reason, **extra}
    status_name = "FAILED_PRECONDITION" if reason == "failedPrecondition" else STATUS_NAMES.get(status, "UNKNOWN")
    body = {"error": {"code": status, "message": message, "errors": [detail], "status": status_name}}
    return Response(status, {"Content-Type": "application/json; charset=UTF-8", **(headers or {})},
                    json.dumps(body).encode())


def ok(payload: Any) -> Response:
    return Response(200, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(payload).encode())


def not_found() -> Response:
    return gmail_error(404, "Requested entity was not found.", "notFound")


def invalid(message: str) -> Response:
    return gmail_error(400, message, "invalidArgument")


class Call:
    """One routed Gmail call: the token's principal, the target user and the path after ``users/{id}/``."""

    def __init__(self, request: Request, token: AccessToken, user: GoogleUser, rest: list[str]) -> None:
        self.request, self.token, self.user, self.rest = request, token, user, rest
        self.params = parse_qs(request.raw_query, keep_blank_values=True)

    def one(self, name: str, default: str = "") -> str:
        return self.params.get(name, [default])[0]

    def many(self, name: str) -> list[str]:
        return [v for value in self.params.get(name, []) for v in value.split(",") if v]


Handler = Callable[[Call], Response]


class GmailApi:
    def __init__(self, state: GoogleState, oauth: GoogleOAuth, pusher: PushDeliverer) -> None:
        self.state, self.oauth, self.pusher = state, oauth, pusher

    # -- front door ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        if request.path.rstrip("/") in ("/batch/gmail/v1", "/batch"):
            if request.method != "POST":
                return gmail_error(405, "Method not allowed", "badRequest")
            return self._batch(request)
        return self.call(request)

    def call(self, request: Request) -> Response:
        token = self.oauth.access_token(request)
        if token is None:
            return gmail_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                "authError", headers={"WWW-Authenticate": INVALID_TOKEN_CHALLENGE},
                location="Authorization", locationType="header",
            )
        path = request.path.removeprefix("/upload")
        match = re.fullmatch(r"/gmail/v1/users/([^/]+)/?(.*)", path)
        if match is None:
            return not_found()
        route = self._route(request.method, match[2].strip("/").split("/"), upload=request.path.startswith("/upload"))
        if route is None:
            return not_found()
        handler, units, scopes = route
        if not token.scopes & set(scopes):
            return self._insufficient()
        if token.user_email is None:
            return gmail_error(400, "Precondition check failed.", "failedPrecondition")
        key = unquote(match[1]).lower()
        if key not in ("me", token.user_email):
            return gmail_error(403, f"Delegation denied for {token.user_email}", "forbidden")
        with self.state.lock:
            user = self.state.users.get(token.user_email)
        if user is None:
            return gmail_error(400, "Mail service not enabled", "failedPrecondition")
        response = self._admitted(request, handler, units, Call(request, token, user, match[2].strip("/").split("/")))
        self.state.count_request(user.email, "dropped" if response.drop_connection else response.status)
        return response

    @staticmethod
    def _insufficient() -> Response:
        body = {"error": {"code": 403, "message": "Request had insufficient authentication scopes.",
                          "errors": [{"message": "Insufficient Permission", "domain": "global",
                                      "reason": "insufficientPermissions"}],
                          "status": "PERMISSION_DENIED"}}
        return Response(403, {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(body).encode())

    def _admitted(self, request: Request, handler: Handler, units: int, call: Call) -> Response:
        with self.state.lock:
            latency = self.state.config.latency_ms
            quota_status = self.state.config.quota_error_status
        if latency:
            time.sleep(latency / 1000)
        rule = self.state.take_fault(request.method, request.path, call.user.email)
        if rule is not None:
            if rule.delay_ms:
                time.sleep(rule.delay_ms / 1000)
            if rule.drop_connection:
                return Response(drop_connection=True)
            if rule.status is not None:
                reason, domain, message = FAULT_BODIES[rule.status]
                return gmail_error(rule.status, message, rule.reason or reason, domain)
        if not self.state.charge(call.user.email, units):
            if quota_status == 403:
                return gmail_error(403, "User Rate Limit Exceeded", "userRateLimitExceeded", "usageLimits")
            return gmail_error(429, "User-rate limit exceeded.", "userRateLimitExceeded", "usageLimits")
        return handler(call)

    def _route(self, method: str, rest: list[str], *, upload: bool) -> tuple[Handler, int, tuple[str, ...]] | None:
        """(handler, quota units, accepted scopes) of a path under ``users/{userId}/``."""
        n = len(rest)
        head = rest[0] if rest else ""
        table: list[tuple[bool, tuple[Handler, int, tuple[str, ...]]]] = [
            (method == "GET" and rest == ["profile"], (self._profile, 1, READ)),
            (method == "GET" and rest == ["labels"], (self._labels, 1, READ)),
            (method == "GET" and head == "labels" and n == 2, (self._label, 1, READ)),
            (method == "GET" and rest == ["messages"], (self._list, 5, READ)),
            (method == "POST" and rest == ["messages", "send"], (self._send, 100, SEND)),
            (method == "GET" and head == "messages" and n == 2, (self._get, 5, READ)),
            (method == "POST" and head == "messages" and n == 3 and rest[2] == "modify",
             (self._modify, 5, (GMAIL_MODIFY, GMAIL_FULL))),
            (method == "GET" and head == "messages" and n == 4 and rest[2] == "attachments",
             (self._attachment, 5, READ)),
            (method == "GET" and rest == ["history"], (self._history, 2, READ)),
            (method == "POST" and rest == ["watch"], (self._watch, 100, READ)),
            (method == "POST" and rest == ["stop"], (self._stop, 50, READ)),
            (method == "POST" and rest == ["drafts"], (self._draft_create, 10, COMPOSE)),
            (method == "GET" and rest == ["drafts"], (self._draft_list, 5, (*COMPOSE, GMAIL_READONLY))),
            (method == "POST" and rest == ["drafts", "send"], (self._draft_send, 100, COMPOSE)),
            (method == "GET" and head == "drafts" and n == 2, (self._draft_get, 5, (*COMPOSE, GMAIL_READONLY))),
        ]
        for matched, route in table:
            if matched:
                if upload and route[0] not in (self._send, self._draft_create):
                    return None
                return route
        return None

    # -- profile and labels --------------------------------------------------------------------

    def _profile(self, call: Call) -> Response:
        with self.state.lock:
            mailbox = call.user.mailbox
            return ok({
                "emailAddress": call.user.email,
                "messagesTotal": len(mailbox.messages),
                "threadsTotal": len({m.thread_id for m in mailbox.messages.values()}),
                "historyId": str(mailbox.history_id),
            })

    def _label_list(self, user: GoogleUser) -> list[dict[str, Any]]:
        labels: list[dict[str, Any]] = []
        for name in SYSTEM_LABELS:
            entry: dict[str, Any] = {"id": name, "name": name, "type": "system"}
            if name in ("INBOX", "SENT", "DRAFT", "SPAM", "TRASH", "STARRED", "IMPORTANT", "UNREAD"):
                entry.update({"messageListVisibility": "hide", "labelListVisibility": "labelShow"}
                             if name in ("INBOX", "SENT", "DRAFT") else {})
            labels.append(entry)
        for label in user.mailbox.user_labels.values():
            labels.append({"id": label.id, "name": label.name, "type": "user",
                           "messageListVisibility": "show", "labelListVisibility": "labelShow"})
        return labels

    def _labels(self, call: Call) -> Response:
        with self.state.lock:
            return ok({"labels": self._label_list(call.user)})

    def _label(self, call: Call) -> Response:
        with self.state.lock:
            for label in self._label_list(call.user):
                if label["id"] == call.rest[1]:
                    return ok(label)
        return not_found()

    # -- messages ------------------------------------------------------------------------------

    def _list(self, call: Call) -> Response:
        try:
            max_results = int(call.one("maxResults", "100"))
            terms = mime.parse_query(call.one("q"))
            for term in terms:
                if term.key in ("after", "before"):
                    mime.search_date(term.value)
        except ValueError:
            return invalid("Invalid query or maxResults")
        if max_results < 1:
            return invalid("Invalid maxResults")
        max_results = min(max_results, 500)
        if GMAIL_METADATA in call.token.scopes and not call.token.scopes & {GMAIL_READONLY, GMAIL_MODIFY, GMAIL_FULL} \
                and call.one("q"):
            return gmail_error(403, "Metadata scope does not support 'q' parameter", "forbidden")
        label_filter = call.many("labelIds")
        include_spam_trash = call.one("includeSpamTrash").lower() == "true"
        after = call.one("pageToken")
        if after and not re.fullmatch(r"\d{20}", after):
            return invalid("Invalid pageToken")
        with self.state.lock:
            names = {label.id: label.name for label in call.user.mailbox.user_labels.values()}
            ordered = sorted(call.user.mailbox.messages.values(), key=lambda m: (m.internal_date_ms, m.seq),
                             reverse=True)
            matching = [
                m for m in ordered
                if all(label in m.label_ids for label in label_filter)
                and (include_spam_trash or not {"SPAM", "TRASH"} & set(m.label_ids)
                     or {"SPAM", "TRASH"} & set(label_filter))
                and self._matches(terms, m, names)
            ]
        start = 0
        if after:
            cursor = (int(after[:13]), int(after[13:]))
            start = next((i for i, m in enumerate(matching) if (m.internal_date_ms, m.seq) < cursor), len(matching))
        page = matching[start:start + max_results]
        body: dict[str, Any] = {}
        if page:
            body["messages"] = [{"id": m.id, "threadId": m.thread_id} for m in page]
        if start + max_results < len(matching):
            last = page[-1]
            body["nextPageToken"] = f"{last.internal_date_ms:013d}{last.seq:07d}"
        body["resultSizeEstimate"] = len(matching)
        return ok(body)

    @staticmethod
    def _matches(terms: list[mime.Term], message: GmailMessage, names: dict[str, str]) -> bool:
        if not terms:
            return True
        parsed = mime.parse(message.raw)
        return all(
            mime.term_matches(term, parsed, message.label_ids, names, message.internal_date_ms) != term.negated
            for term in terms
        )

    def _message(self, call: Call, message_id: str) -> GmailMessage | Response:
        if not MESSAGE_ID.fullmatch(message_id):
            return invalid("Invalid id value")
        with self.state.lock:
            message = call.user.mailbox.messages.get(message_id)
        return message if message is not None else not_found()

    def _get(self, call: Call) -> Response:
        message = self._message(call, call.rest[1])
        if isinstance(message, Response):
            return message
        fmt = call.one("format", "full").lower()
        if fmt not in FORMATS:
            return invalid(f"Invalid value at 'format' ({fmt})")
        only_metadata = GMAIL_METADATA in call.token.scopes and not call.token.scopes & {
            GMAIL_READONLY, GMAIL_MODIFY, GMAIL_FULL}
        if only_metadata and fmt in ("full", "raw"):
            return gmail_error(403, f"Metadata scope doesn't allow format {fmt.upper()}", "forbidden")
        return ok(self.render(message, fmt, call.many("metadataHeaders")))

    @staticmethod
    def render(message: GmailMessage, fmt: str, metadata_headers: list[str] | None = None) -> dict[str, Any]:
        parsed = mime.parse(message.raw)
        body: dict[str, Any] = {
            "id": message.id,
            "threadId": message.thread_id,
            "labelIds": list(message.label_ids),
            "snippet": mime.snippet(parsed),
            "sizeEstimate": len(message.raw),
            "historyId": str(message.history_id),
            "internalDate": str(message.internal_date_ms),
        }
        if fmt == "raw":
            body["raw"] = mime.b64url(message.raw)
        elif fmt == "metadata":
            wanted = {h.lower() for h in metadata_headers or []}
            body["payload"] = {
                "partId": "",
                "mimeType": parsed.get_content_type(),
                "filename": "",
                "headers": [{"name": k, "value": str(v)} for k, v in parsed.items()
                            if not wanted or k.lower() in wanted],
            }
        elif fmt == "full":
            body["payload"] = mime.payload(message.id, parsed)
        return body

    def _modify(self, call: Call) -> Response:
        """``messages.modify``: ``{"addLabelIds", "removeLabelIds"}`` (label ids); answers the message
        (minimal). Unknown label ids are 400."""
        message = self._message(call, call.rest[1])
        if isinstance(message, Response):
            return message
        try:
            body = json.loads(call.request.body or b"{}")
        except ValueError:
            return invalid("Invalid JSON payload received.")
        add, remove = (body.get(k) or [] for k in ("addLabelIds", "removeLabelIds")) if isinstance(body, dict) \
            else ([], [])
        with self.state.lock:
            known = set(SYSTEM_LABELS) | set(call.user.mailbox.user_labels)
        if not all(isinstance(x, str) and x in known for x in [*add, *remove]):
            return invalid("Invalid label")
        store.modify_labels(self.state, self.pusher, call.user, message, add=list(add), remove=list(remove))
        return ok(self.render(message, "minimal"))

    def _attachment(self, call: Call) -> Response:
        message = self._message(call, call.rest[1])
        if isinstance(message, Response):
            return message
        part_id = mime.part_of_attachment(message.id, call.rest[3])
        part = mime.find_part(mime.parse(message.raw), part_id) if part_id is not None else None
        if part is None:
            return invalid("Invalid attachment token")
        data = part.get_payload(decode=True)
        content = data if isinstance(data, bytes) else b""
        return ok({"attachmentId": call.rest[3], "size": len(content), "data": mime.b64url(content)})

    # -- history -------------------------------------------------------------------------------

    def _history(self, call: Call) -> Response:
        raw_start = call.one("startHistoryId")
        if not raw_start:
            return invalid("Missing startHistoryId")
        if not raw_start.isdigit():
            return invalid("Invalid startHistoryId")
        try:
            max_results = min(int(call.one("maxResults", "100")), 500)
        except ValueError:
            return invalid("Invalid maxResults")
        types = set(call.many("historyTypes")) or {"messageAdded", "messageDeleted", "labelAdded", "labelRemoved"}
        unknown = types - {"messageAdded", "messageDeleted", "labelAdded", "labelRemoved"}
        if unknown or max_results < 1:
            return invalid("Invalid historyTypes or maxResults")
        label = call.one("labelId")
        token = call.one("pageToken")
        if token and not token.isdigit():
            return invalid("Invalid pageToken")
        start = int(token) if token else int(raw_start)
        with self.state.lock:
            mailbox = call.user.mailbox
            if int(raw_start) < mailbox.history_floor:
                return not_found()
            kinds = {"messageAdded": "messageAdded", "labelsAdded": "labelAdded", "labelsRemoved": "labelRemoved"}
            records = [r for r in mailbox.history if r.id > start and kinds.get(r.kind) in types
                       and (not label or label in r.label_ids or label in r.added_labels)]
            current = mailbox.history_id
        page = records[:max_results]
        body: dict[str, Any] = {}
        if page:
            body["history"] = [self._history_entry(r) for r in page]
        if len(records) > max_results:
            body["nextPageToken"] = str(page[-1].id)
        body["historyId"] = str(current)
        return ok(body)

    @staticmethod
    def _history_entry(record: Any) -> dict[str, Any]:
        message = {"id": record.message_id, "threadId": record.thread_id, "labelIds": list(record.label_ids)}
        entry: dict[str, Any] = {"id": str(record.id),
                                 "messages": [{"id": record.message_id, "threadId": record.thread_id}]}
        if record.kind == "messageAdded":
            entry["messagesAdded"] = [{"message": message}]
        else:
            entry[record.kind] = [{"message": message, "labelIds": list(record.added_labels)}]
        return entry

    # -- watch ---------------------------------------------------------------------------------

    def _watch(self, call: Call) -> Response:
        try:
            body = json.loads(call.request.body or b"{}")
        except ValueError:
            return invalid("Invalid JSON payload received.")
        topic_name = str(body.get("topicName", "")) if isinstance(body, dict) else ""
        if not TOPIC_NAME.fullmatch(topic_name):
            return invalid("Invalid topicName does not match projects/SOME-ANDROID-PROJECT/topics/*")
        behavior = str(body.get("labelFilterBehavior") or body.get("labelFilterAction") or "include").lower()
        if behavior not in ("include", "exclude"):
            return invalid("Invalid labelFilterBehavior")
        with self.state.lock:
            topic = self.state.topics.get(topic_name)
            if topic is None:
                return gmail_error(404, f"Resource not found (resource={topic_name.rpartition('/')[2]}).", "notFound")
            if not topic.publisher_granted:
                return gmail_error(403, f"Error sending test message to Cloud PubSub {topic_name} : User not "
                                   "authorized to perform this action.", "forbidden")
            mailbox = call.user.mailbox
            expiration = int(time.time() * 1000) + self.state.config.watch_lifetime_s * 1000
            mailbox.watch = Watch(topic_name, [str(x) for x in body.get("labelIds") or []], behavior, expiration,
                                  mailbox.history_id)
            return ok({"historyId": str(mailbox.history_id), "expiration": str(expiration)})

    def _stop(self, call: Call) -> Response:
        with self.state.lock:
            call.user.mailbox.watch = None
        return Response(204, {}, b"")

    # -- sending and drafts --------------------------------------------------------------------

    def _raw_of(self, call: Call, body: Any) -> bytes | Response:
        if call.request.path.startswith("/upload"):
            if not call.request.body:
                return invalid("Recipient address required")
            return call.request.body
        raw = body.get("raw") if isinstance(body, dict) else None
        if not isinstance(raw, str) or not raw:
            return invalid("'raw' RFC822 payload message string or uploading message via /upload/* URL required")
        try:
            return mime.b64url_decode(raw)
        except ValueError:
            return invalid("Invalid value for ByteString: raw")

    def _json_body(self, call: Call) -> Any:
        if call.request.path.startswith("/upload"):
            return {"threadId": call.one("threadId")} if call.one("threadId") else {}
        try:
            return json.loads(call.request.body or b"{}")
        except ValueError:
            return None

    def _send(self, call: Call) -> Response:
        body = self._json_body(call)
        if body is None:
            return invalid("Invalid JSON payload received.")
        raw = self._raw_of(call, body)
        if isinstance(raw, Response):
            return raw
        return self._send_raw(call, raw, body.get("threadId") if isinstance(body, dict) else None)

    def _send_raw(self, call: Call, raw: bytes, thread_id: Any) -> Response:
        parsed = mime.parse(raw)
        if not mime.addresses(parsed, "To", "Cc", "Bcc"):
            return invalid("Recipient address required")
        thread = self._thread(call, thread_id, parsed)
        if isinstance(thread, Response):
            return thread
        refused = self._over_sending_limit(call)
        if refused is not None:
            return refused
        message = store.send(self.state, self.pusher, call.user, raw, thread)
        return ok({"id": message.id, "threadId": message.thread_id, "labelIds": list(message.label_ids)})

    def _thread(self, call: Call, thread_id: Any, parsed: Any) -> str | Response | None:
        """The thread a sent message joins: ``threadId`` if it names a thread of the mailbox and the
        Subject matches (Gmail's threading rule), else its own new thread."""
        if not thread_id:
            return None
        with self.state.lock:
            members = [m for m in call.user.mailbox.messages.values() if m.thread_id == str(thread_id)]
        if not members:
            return not_found()

        def base(subject: str) -> str:
            return re.sub(r"^((re|fwd?|aw|wg)\s*:\s*)+", "", subject.strip(), flags=re.IGNORECASE).lower()

        subject = base(mime.header(parsed, "Subject"))
        if any(base(mime.header(mime.parse(m.raw), "Subject")) == subject for m in members):
            return str(thread_id)
        return None

    def _over_sending_limit(self, call: Call) -> Response | None:
        """429 "User-rate limit exceeded" (Mail sending) with the time to retry, past the daily limit."""
        retry_at = self.state.take_send(call.user.email)
        if retry_at is None:
            return None
        when = datetime.fromtimestamp(retry_at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return gmail_error(429, f"User-rate limit exceeded.  Retry after {when} (Mail sending)", "rateLimitExceeded",
                           "usageLimits")

    def _draft_create(self, call: Call) -> Response:
        body = self._json_body(call)
        if call.request.path.startswith("/upload"):
            raw: bytes | Response = call.request.body or invalid("Invalid draft")
            thread_id = None
        else:
            message = body.get("message") if isinstance(body, dict) else None
            if not isinstance(message, dict):
                return invalid("Invalid draft: message is required")
            raw = self._raw_of(call, message)
            thread_id = message.get("threadId")
        if isinstance(raw, Response):
            return raw
        thread = self._thread(call, thread_id, mime.parse(raw))
        if isinstance(thread, Response):
            return thread
        stored = store.add_message(self.state, self.pusher, call.user, store.ensure_message_id(raw, call.user.email),
                                   ["DRAFT"], thread_id=thread)
        draft = Draft("r" + str(secrets.randbelow(10**19)), stored.id)
        with self.state.lock:
            call.user.mailbox.drafts[draft.id] = draft
        return ok({"id": draft.id, "message": {"id": stored.id, "threadId": stored.thread_id,
                                               "labelIds": list(stored.label_ids)}})

    def _draft_list(self, call: Call) -> Response:
        with self.state.lock:
            entries = [(d, call.user.mailbox.messages.get(d.message_id)) for d in call.user.mailbox.drafts.values()]
        drafts = [{"id": d.id, "message": {"id": m.id, "threadId": m.thread_id}} for d, m in entries if m]
        body: dict[str, Any] = {"resultSizeEstimate": len(drafts)}
        if drafts:
            body = {"drafts": drafts, **body}
        return ok(body)

    def _draft_get(self, call: Call) -> Response:
        with self.state.lock:
            draft = call.user.mailbox.drafts.get(call.rest[1])
            message = call.user.mailbox.messages.get(draft.message_id) if draft else None
        if draft is None or message is None:
            return not_found()
        fmt = call.one("format", "full").lower()
        if fmt not in FORMATS:
            return invalid(f"Invalid value at 'format' ({fmt})")
        return ok({"id": draft.id, "message": self.render(message, fmt)})

    def _draft_send(self, call: Call) -> Response:
        body = self._json_body(call)
        draft_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(draft_id, str) or not draft_id:
            return invalid("Invalid draft: id is required")
        with self.state.lock:
            draft = call.user.mailbox.drafts.get(draft_id)
            message = call.user.mailbox.messages.get(draft.message_id) if draft else None
        if draft is None or message is None:
            return not_found()
        parsed = mime.parse(message.raw)
        if not mime.addresses(parsed, "To", "Cc", "Bcc"):
            return invalid("Recipient address required")
        refused = self._over_sending_limit(call)
        if refused is not None:
            return refused
        with self.state.lock:
            call.user.mailbox.drafts.pop(draft_id, None)
            call.user.mailbox.messages.pop(message.id, None)
        thread = message.thread_id if message.thread_id != message.id else None
        sent = store.send(self.state, self.pusher, call.user, message.raw, thread)
        return ok({"id": sent.id, "threadId": sent.thread_id, "labelIds": list(sent.label_ids)})

    # -- batch ---------------------------------------------------------------------------------

    def _batch(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        if not content_type.lower().startswith("multipart/mixed") or boundary is None:
            return invalid("Invalid batch request: the Content-Type must be multipart/mixed with a boundary")
        delimiter = b"--" + boundary[1].encode()
        chunks = request.body.split(delimiter)
        parts = [c for c in chunks[1:] if not c.startswith(b"--")]
        if not parts:
            return invalid("Invalid batch request: no parts")
        if len(parts) > BATCH_LIMIT:
            return invalid(f"Too many requests in batch; at most {BATCH_LIMIT} calls are allowed in one batch request")
        outer_auth = request.headers.get("authorization")
        answers = []
        for index, chunk in enumerate(parts):
            sub = self._sub_request(chunk.strip(b"\r\n"), outer_auth)
            if sub is None:
                answers.append((str(index), gmail_error(400, "Failed to parse batch request", "badRequest")))
                continue
            content_id, sub_request = sub
            answers.append((content_id or str(index), self.call(sub_request) if sub_request.path.startswith(
                ("/gmail/v1/", "/upload/gmail/v1/")) else not_found()))
        out_boundary = "batch_" + uuid.uuid4().hex
        body = b""
        for content_id, response in answers:
            status_line = f"HTTP/1.1 {response.status} {_reason(response.status)}"
            head = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
            body += (
                f"--{out_boundary}\r\nContent-Type: application/http\r\n"
                f"Content-ID: <response-{content_id.strip('<>')}>\r\n\r\n"
                f"{status_line}\r\n{head}Content-Length: {len(response.body)}\r\n\r\n"
            ).encode() + response.body + b"\r\n"
        body += f"--{out_boundary}--\r\n".encode()
        return Response(200, {"Content-Type": f"multipart/mixed; boundary={out_boundary}"}, body)

    @staticmethod
    def _sub_request(chunk: bytes, outer_auth: str | None) -> tuple[str, Request] | None:
        """The part's Content-ID and its HTTP request; None if the part is not an HTTP request."""
        head, _, inner = chunk.replace(b"\r\n", b"\n").partition(b"\n\n")
        part_headers = BytesParser(policy=HTTP).parsebytes(head + b"\n\n", headersonly=True)
        request_line, _, rest = inner.partition(b"\n")
        match = re.fullmatch(rb"(GET|POST|PUT|PATCH|DELETE) (\S+)( HTTP/1\.[01])?", request_line.strip())
        if match is None:
            return None
        header_block, _, body = rest.partition(b"\n\n")
        headers = Headers()
        for line in header_block.decode("utf-8", "replace").split("\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
        if "authorization" not in headers and outer_auth:
            headers["Authorization"] = outer_auth
        target = urlsplit(match[2].decode())  # relative, or absolute (only its path counts)
        return str(part_headers.get("Content-ID", "")), Request(
            match[1].decode(), unquote(target.path), target.query, headers, body.rstrip(b"\n")
        )


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
