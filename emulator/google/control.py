"""The Google emulator's control API under ``/_emulator``: JSON in, JSON out, no authentication
(loopback test tooling), like the Graph emulator's (emulator/control.py).

Routes: ``reset``, ``ca.pem``, ``config`` (GET/PUT), ``domains``, ``users``, ``clients`` (OAuth clients),
``service-accounts`` (answers the JSON key file), ``domains/{domain}/delegations/{client_id}`` (PUT the
scopes a Workspace admin delegated; DELETE), ``authorize`` (what the person on the consent page does,
answering the redirect URL), ``grants/revoke``, ``tokens/expire``, ``users/{email}/messages`` (deliver
RFC 822 or fields, with labels), ``users/{email}/labels``, ``users/{email}/history/expire``,
``users/{email}/stats``, ``users/{email}/watch``, ``outbox``, ``topics`` (Pub/Sub topic with its push
subscription), ``pushes``, ``faults`` (POST/DELETE).

Invariant: a malformed or impossible request answers 4xx with ``{"error": "..."}`` and changes nothing.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.core import Request, Response
from emulator.google import mailbox as store
from emulator.google import mime
from emulator.google.oauth import GoogleOAuth, PageError, SignInError, normalise_scopes
from emulator.google.push import PushDeliverer
from emulator.google.state import (
    PUSH_SERVICE_ACCOUNT,
    SYSTEM_LABELS,
    GoogleState,
    GoogleStateError,
    GoogleUser,
    Label,
    OAuthClient,
    ServiceAccount,
    Topic,
)

Route = Callable[[Request, re.Match[str], str], Response]
MAX_BULK = 10_000
FAULT_FIELDS = ("status", "reason", "delay_ms", "drop_connection", "count", "path_contains", "user", "method")


def aware(text: str) -> datetime:
    """An ISO 8601 date-time; without an offset it is UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def user_json(user: GoogleUser) -> dict[str, Any]:
    return {"email": user.email, "name": user.name, "sub": user.sub, "hd": user.hosted_domain}


class GoogleControl:
    def __init__(self, state: GoogleState, oauth: GoogleOAuth, pusher: PushDeliverer, ca_pem: Path) -> None:
        self.state, self.oauth, self.pusher, self.ca_pem = state, oauth, pusher, ca_pem
        user = r"users/(?P<user>[^/]+)"
        self.routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("POST", re.compile(r"reset"), self._reset),
            ("GET", re.compile(r"ca\.pem"), self._ca),
            ("GET", re.compile(r"config"), self._get_config),
            ("PUT", re.compile(r"config"), self._put_config),
            ("POST", re.compile(r"domains"), self._domain),
            ("PUT", re.compile(r"domains/(?P<domain>[^/]+)/delegations/(?P<client>[^/]+)"), self._delegate),
            ("DELETE", re.compile(r"domains/(?P<domain>[^/]+)/delegations/(?P<client>[^/]+)"), self._undelegate),
            ("POST", re.compile(r"users"), self._user),
            ("POST", re.compile(r"clients"), self._client),
            ("POST", re.compile(r"service-accounts"), self._service_account),
            ("POST", re.compile(r"authorize"), self._authorize),
            ("POST", re.compile(r"grants/revoke"), self._revoke),
            ("POST", re.compile(r"tokens/expire"), self._expire_tokens),
            ("POST", re.compile(rf"{user}/messages"), self._deliver),
            ("POST", re.compile(rf"{user}/messages/bulk"), self._bulk),
            ("POST", re.compile(rf"{user}/messages/(?P<message>[0-9a-f]{{16}})/labels"), self._relabel),
            ("POST", re.compile(rf"{user}/labels"), self._label),
            ("POST", re.compile(rf"{user}/history/expire"), self._expire_history),
            ("GET", re.compile(rf"{user}/stats"), self._stats),
            ("GET", re.compile(rf"{user}/watch"), self._watch),
            ("GET", re.compile(r"outbox"), self._outbox),
            ("POST", re.compile(r"topics"), self._topic),
            ("GET", re.compile(r"pushes"), self._pushes),
            ("POST", re.compile(r"faults"), self._add_fault),
            ("DELETE", re.compile(r"faults"), self._clear_faults),
        ]

    def handle(self, request: Request, origin: str) -> Response:
        route = request.path.removeprefix("/_emulator").strip("/")
        matches = [(method, handler, m) for method, pattern, handler in self.routes if (m := pattern.fullmatch(route))]
        for method, handler, match in matches:
            if method == request.method:
                try:
                    return handler(request, match, origin)
                except GoogleStateError as exc:
                    return Response.json(exc.status, {"error": str(exc)})
                except (KeyError, TypeError, ValueError) as exc:
                    return Response.json(400, {"error": f"bad request: {exc}"})
        if matches:
            return Response.json(405, {"error": f"{request.method} not allowed on /_emulator/{route}"})
        return Response.json(404, {"error": f"no control route /_emulator/{route}"})

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        body = request.json()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise GoogleStateError(400, "the body must be a JSON object")
        return body

    # -- setup ---------------------------------------------------------------------------------

    def _reset(self, request: Request, match: re.Match[str], origin: str) -> Response:
        self.state.reset()
        return Response.json(200, {})

    def _ca(self, request: Request, match: re.Match[str], origin: str) -> Response:
        return Response(200, {"Content-Type": "application/x-pem-file"}, self.ca_pem.read_bytes())

    def _get_config(self, request: Request, match: re.Match[str], origin: str) -> Response:
        with self.state.lock:
            return Response.json(200, self.state.config.as_dict())

    def _put_config(self, request: Request, match: re.Match[str], origin: str) -> Response:
        with self.state.lock:
            self.state.config.update(self._body(request))
            return Response.json(200, self.state.config.as_dict())

    def _domain(self, request: Request, match: re.Match[str], origin: str) -> Response:
        domain = self.state.add_domain(str(self._body(request)["domain"]))
        return Response.json(201, {"domain": domain.name})

    def _delegate(self, request: Request, match: re.Match[str], origin: str) -> Response:
        scopes, unknown = normalise_scopes(" ".join(self._body(request).get("scopes") or []))
        if unknown or not scopes:
            raise GoogleStateError(400, f"scopes must be known Google scopes (unknown: {unknown})")
        with self.state.lock:
            domain = self.state.domains.get(match["domain"].lower())
            if domain is None:
                raise GoogleStateError(404, f"unknown domain {match['domain']}")
            domain.delegations[match["client"]] = frozenset(scopes)
        return Response.json(200, {"domain": domain.name, "client_id": match["client"], "scopes": sorted(scopes)})

    def _undelegate(self, request: Request, match: re.Match[str], origin: str) -> Response:
        with self.state.lock:
            domain = self.state.domains.get(match["domain"].lower())
            if domain is None:
                raise GoogleStateError(404, f"unknown domain {match['domain']}")
            domain.delegations.pop(match["client"], None)
        return Response.json(200, {})

    def _user(self, request: Request, match: re.Match[str], origin: str) -> Response:
        body = self._body(request)
        user = self.state.add_user(str(body["email"]), body.get("name"))
        return Response.json(201, user_json(user))

    def _client(self, request: Request, match: re.Match[str], origin: str) -> Response:
        body = self._body(request)
        uris = body.get("redirect_uris") or []
        if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
            raise GoogleStateError(400, "redirect_uris must be a list of URLs")
        client = self.state.add_client(OAuthClient(
            client_id=str(body.get("client_id") or f"{secrets.randbelow(10**12):012d}-"
                          f"{secrets.token_hex(16)}.apps.googleusercontent.com"),
            client_secret=str(body.get("client_secret") or "GOCSPX-" + secrets.token_urlsafe(21)),
            redirect_uris=list(uris),
            name=str(body.get("name") or "CRM Mailbox Sync"),
        ))
        return Response.json(201, {"client_id": client.client_id, "client_secret": client.client_secret,
                                   "redirect_uris": client.redirect_uris, "name": client.name})

    def _service_account(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """A service account and its key: the JSON key file exactly as Google lets you download it,
        with the token URI of this emulator."""
        body = self._body(request)
        project = str(body.get("project_id") or "crm-sync-local")
        name = str(body.get("name") or f"sync-{secrets.token_hex(3)}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        account = ServiceAccount(
            client_email=f"{name}@{project}.iam.gserviceaccount.com",
            client_id=str(10**20 + secrets.randbelow(9 * 10**20)),
            project_id=project,
            private_key_id=secrets.token_hex(20),
            private_key_pem=pem,
        )
        with self.state.lock:
            if account.client_email in self.state.service_accounts:
                raise GoogleStateError(409, f"service account {account.client_email} exists")
            self.state.service_accounts[account.client_email] = account
        return Response.json(201, {
            "type": "service_account",
            "project_id": project,
            "private_key_id": account.private_key_id,
            "private_key": pem,
            "client_email": account.client_email,
            "client_id": account.client_id,
            "auth_uri": f"{origin}/o/oauth2/auth",
            "token_uri": f"{origin}/token",
            "auth_provider_x509_cert_url": f"{origin}/oauth2/v1/certs",
            "client_x509_cert_url": f"{origin}/robot/v1/metadata/x509/{account.client_email}",
            "universe_domain": "googleapis.com",
        })

    # -- sign-in and grants --------------------------------------------------------------------

    def _authorize(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """``{"auth_uri", "user", "allow": true, "decline_scopes": []}`` → ``{"redirect_url"}``, or the
        error page's text with 400 when Google would show one."""
        body = self._body(request)
        query = dict(parse_qsl(urlsplit(str(body["auth_uri"])).query, keep_blank_values=True))
        try:
            pending = self.oauth.start_authorization(query)
        except PageError as exc:
            return Response.json(400, {"error": exc.error, "error_description": exc.message})
        declined, _ = normalise_scopes(" ".join(body.get("decline_scopes") or []))
        try:
            location = self.oauth.complete(pending.id, str(body.get("user", "")), bool(body.get("allow", True)),
                                           declined=declined)
        except SignInError as exc:
            raise GoogleStateError(404, str(exc)) from exc
        return Response.json(200, {"redirect_url": location})

    def _revoke(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """``{"user", "client_id"?}``: the user removes the app's access in their Google Account."""
        body = self._body(request)
        user = self.state.user(str(body["user"]))
        with self.state.lock:
            clients = [body["client_id"]] if body.get("client_id") else [c for (u, c) in self.state.grants
                                                                          if u == user.email]
        revoked = sum(self.oauth.revoke_grant(user.email, str(c)) for c in clients)
        return Response.json(200, {"revoked": revoked})

    def _expire_tokens(self, request: Request, match: re.Match[str], origin: str) -> Response:
        body = self._body(request)
        email = self.state.user(str(body["user"])).email if body.get("user") else None
        expired = 0
        with self.state.lock:
            for record in self.state.access_tokens.values():
                if email is None or record.user_email == email:
                    record.expires_at = min(record.expires_at, time.time() - 1)
                    expired += 1
        return Response.json(200, {"expired": expired})

    # -- mail ----------------------------------------------------------------------------------

    def _label_ids(self, user: GoogleUser, names: list[str]) -> list[str]:
        """System label ids as given; other names are user labels, created when missing."""
        ids = []
        with self.state.lock:
            for name in names:
                if name.upper() in SYSTEM_LABELS:
                    ids.append(name.upper())
                    continue
                existing = next((label for label in user.mailbox.user_labels.values()
                                 if name in (label.name, label.id)), None)
                if existing is None:
                    existing = Label(f"Label_{len(user.mailbox.user_labels) + 1}", name, "user")
                    user.mailbox.user_labels[existing.id] = existing
                ids.append(existing.id)
        return ids

    def _deliver(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """``{"raw": base64 RFC 822}`` or fields (``mime.build``), with ``labels`` (default INBOX, UNREAD,
        CATEGORY_PERSONAL) and ``received_at`` (ISO 8601; the internalDate, default now)."""
        body = self._body(request)
        user = self.state.user(match["user"])
        if body.get("raw"):
            raw = base64.b64decode(str(body["raw"]))
        else:
            raw = mime.build(body, default_from="sender@external.example")
        labels = body.get("labels")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            raise GoogleStateError(400, "labels must be a list of label ids or names")
        label_ids = self._label_ids(user, labels if labels is not None else list(store.DELIVERED_LABELS))
        received = body.get("received_at")
        internal = int(aware(str(received)).timestamp() * 1000) if received else None
        message = store.add_message(self.state, self.pusher, user, raw, label_ids, internal_date_ms=internal)
        return Response.json(201, {"id": message.id, "threadId": message.thread_id, "labelIds": message.label_ids,
                                   "historyId": str(message.history_id),
                                   "internalDate": str(message.internal_date_ms)})

    def _bulk(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """``{"count", "interval_seconds"?, "start"?, "labels"?, ...fields}``: ``count`` messages from one
        template (subjects get `` #n``, each its own Message-ID), received ``interval_seconds`` apart going
        back from ``start`` (default now), as the Graph emulator's bulk route."""
        body = self._body(request)
        user = self.state.user(match["user"])
        count = body.get("count")
        if not isinstance(count, int) or not 1 <= count <= MAX_BULK:
            raise GoogleStateError(400, f"count must be an integer between 1 and {MAX_BULK}")
        interval = float(body.get("interval_seconds", 60))
        start = aware(str(body["start"])) if body.get("start") else datetime.now(UTC)
        labels = self._label_ids(user, list(body.get("labels") or store.DELIVERED_LABELS))
        template = {k: v for k, v in body.items() if k not in ("count", "interval_seconds", "start", "labels")}
        subject = str(template.get("subject", "Message"))
        ids = []
        for n in range(count):
            received = start - timedelta(seconds=interval * n)
            raw = mime.build({**template, "subject": f"{subject} #{n + 1}", "date": received.isoformat(),
                              "message_id": None}, default_from="sender@external.example")
            message = store.add_message(self.state, self.pusher, user, raw, labels,
                                        internal_date_ms=int(received.timestamp() * 1000))
            ids.append(message.id)
        return Response.json(201, {"count": count, "first": ids[0], "last": ids[-1]})

    def _relabel(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """``{"add": [...], "remove": [...]}`` (ids or user-label names): the person files a message."""
        body = self._body(request)
        user = self.state.user(match["user"])
        with self.state.lock:
            message = user.mailbox.messages.get(match["message"])
        if message is None:
            raise GoogleStateError(404, "unknown message")
        add = self._label_ids(user, list(body.get("add") or []))
        remove = self._label_ids(user, list(body.get("remove") or []))
        store.modify_labels(self.state, self.pusher, user, message, add=add, remove=remove)
        return Response.json(200, {"id": message.id, "labelIds": message.label_ids,
                                   "historyId": str(message.history_id)})

    def _label(self, request: Request, match: re.Match[str], origin: str) -> Response:
        user = self.state.user(match["user"])
        name = str(self._body(request)["name"])
        if not name or name.upper() in SYSTEM_LABELS:
            raise GoogleStateError(400, "a user label needs a name that is not a system label")
        label_id = self._label_ids(user, [name])[0]
        return Response.json(201, {"id": label_id, "name": name, "type": "user"})

    def _expire_history(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """Every history id before the current one becomes too old: history.list answers 404 for it."""
        user = self.state.user(match["user"])
        with self.state.lock:
            user.mailbox.history_floor = user.mailbox.history_id
            return Response.json(200, {"history_floor": str(user.mailbox.history_floor)})

    def _stats(self, request: Request, match: re.Match[str], origin: str) -> Response:
        user = self.state.user(match["user"])
        with self.state.lock:
            counts = dict(sorted(self.state.requests.get(user.email, {}).items()))
            published = self.state.published.get(user.email, 0)
        return Response.json(200, {"requests": sum(counts.values()), "by_status": counts,
                                   "notifications_published": published})

    def _watch(self, request: Request, match: re.Match[str], origin: str) -> Response:
        user = self.state.user(match["user"])
        with self.state.lock:
            watch = user.mailbox.watch
            if watch is None:
                return Response.json(404, {"error": "no watch"})
            return Response.json(200, {"topic": watch.topic, "label_ids": watch.label_ids,
                                       "label_filter_behavior": watch.label_filter_behavior,
                                       "expiration": str(watch.expiration_ms)})

    def _outbox(self, request: Request, match: re.Match[str], origin: str) -> Response:
        with self.state.lock:
            entries = [{"sender": e.sender, "recipients": e.recipients, "message_id": e.message_id,
                        "raw": base64.b64encode(e.raw).decode()} for e in self.state.outbox]
        return Response.json(200, {"messages": entries})

    # -- push ----------------------------------------------------------------------------------

    def _topic(self, request: Request, match: re.Match[str], origin: str) -> Response:
        """``{"topic": "projects/p/topics/t", "push_endpoint", "audience"?, "service_account_email",
        "subscription"?, "publisher_granted"?}``; the audience defaults to the endpoint (as Pub/Sub's)."""
        body = self._body(request)
        name = str(body["topic"])
        if not re.fullmatch(r"projects/[^/]+/topics/[^/]+", name):
            raise GoogleStateError(400, "topic must be projects/{project}/topics/{topic}")
        endpoint = str(body["push_endpoint"])
        with self.state.lock:
            allow_http = self.state.config.allow_http_push_endpoints
        if not endpoint.startswith("https://") and not (allow_http and endpoint.startswith("http://")):
            raise GoogleStateError(400, "a push endpoint must be an https URL (allow_http_push_endpoints for local)")
        project = name.split("/")[1]
        topic = Topic(
            name=name,
            subscription=str(
                body.get("subscription") or f"projects/{project}/subscriptions/{name.rpartition('/')[2]}-push"
            ),
            push_endpoint=endpoint,
            audience=str(body.get("audience") or endpoint),
            service_account_email=str(body["service_account_email"]),
            publisher_granted=bool(body.get("publisher_granted", True)),
        )
        with self.state.lock:
            self.state.topics[name] = topic
        return Response.json(201, {"topic": topic.name, "subscription": topic.subscription,
                                   "push_endpoint": topic.push_endpoint, "audience": topic.audience,
                                   "service_account_email": topic.service_account_email,
                                   "publisher": PUSH_SERVICE_ACCOUNT if topic.publisher_granted else None})

    def _pushes(self, request: Request, match: re.Match[str], origin: str) -> Response:
        with self.state.lock:
            pushes = [{"topic": p.topic, "email_address": p.email_address, "history_id": str(p.history_id),
                       "status": p.status, "message_id": p.message_id} for p in self.state.pushes]
        return Response.json(200, {"pushes": pushes})

    # -- faults --------------------------------------------------------------------------------

    def _add_fault(self, request: Request, match: re.Match[str], origin: str) -> Response:
        body = self._body(request)
        unknown = set(body) - set(FAULT_FIELDS)
        if unknown:
            raise GoogleStateError(400, f"unknown fault fields {sorted(unknown)}")
        rule = self.state.add_fault(**body)
        return Response.json(201, {"id": rule.id})

    def _clear_faults(self, request: Request, match: re.Match[str], origin: str) -> Response:
        with self.state.lock:
            self.state.faults.clear()
        return Response.json(200, {})
