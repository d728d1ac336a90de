"""Gmail push: ``users.watch`` to the deployment's Pub/Sub topic, and the verification of the pushes its
push subscription posts (developers.google.com/gmail/api/guides/push; Pub/Sub "Authenticate push
subscriptions", cloud.google.com/pubsub/docs/authenticate-push-subscriptions).

Invariants:
- A watch covers the labels the sync reads by default (``INBOX``, ``SENT``; ``labelFilterBehavior``
  include); Google asks for a renewal at least every 7 days (the use case renews daily).
- A push is accepted only with ``Authorization: Bearer <OIDC token>`` whose RS256 signature verifies
  against Google's JWKS (``GOOGLE_JWKS_URL``, cached; fetched again once for an unknown key id), whose
  ``iss`` is Google's, ``aud`` the configured audience, ``email`` the configured push service account
  with ``email_verified``, and which has not expired. Anything else is ``InvalidNotification``, without
  saying which check failed; the token is never logged.
- The push's data names only ``{"emailAddress", "historyId"}``: the subscription id is derived from the
  normalised address (``gmail-watch:<address>``); the caller still has to find a watch of ours under it.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import jwt
import requests

from sync_core.adapters.google.endpoints import GOOGLE_ISSUERS
from sync_core.adapters.google.http import GmailHttp
from sync_core.domain.addresses import normalize_address
from sync_core.domain.model import Mailbox
from sync_core.errors import InvalidNotification, MessageNotFound
from sync_core.ports.push import CreatedSubscription

WATCHED_LABELS = ("INBOX", "SENT")
JWKS_TTL = 3600.0  # seconds a fetched JWKS is trusted before it is fetched again
REFETCH_AFTER = 60.0  # seconds between fetches for an unknown key id
MAX_PUSH_BYTES = 64 * 1024
REFUSED = "the push is not proven to come from the configured Pub/Sub push subscription"


def watch_id(address: str) -> str:
    return f"gmail-watch:{address.strip().lower()}"


class GmailPushes:
    """The ``MailboxPushes`` of Gmail mailboxes."""

    def __init__(  # noqa: PLR0917
        self,
        session: requests.Session,
        http_for: Callable[[Mailbox], GmailHttp],
        topic: str,
        jwks_url: str,
        audience: str,
        service_account: str,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._http_for = http_for
        self._topic = topic
        self._jwks_url = jwks_url
        self._audience = audience
        self._service_account = service_account.strip().lower()
        self._now = now
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._topic and self._audience and self._service_account)

    def watch(self, mailbox: Mailbox) -> CreatedSubscription:
        body = {"topicName": self._topic, "labelIds": list(WATCHED_LABELS), "labelFilterBehavior": "include"}
        answer = self._http_for(mailbox).post("watch", body) or {}
        expires = datetime.fromtimestamp(int(str(answer.get("expiration") or "0")) / 1000, UTC)
        return CreatedSubscription(watch_id(mailbox.address), expires)

    def stop(self, mailbox: Mailbox) -> None:
        try:
            self._http_for(mailbox).post("stop", {})
        except MessageNotFound:
            return

    def subscription_of(self, authorization: str, body: bytes) -> str:
        scheme, _, token = authorization.partition(" ")
        if not self.enabled or scheme.lower() != "bearer" or not token.strip():
            raise InvalidNotification(REFUSED)
        claims = self._verified(token.strip())
        if str(claims.get("email", "")).lower() != self._service_account or claims.get("email_verified") not in (
            True,
            "true",
        ):
            raise InvalidNotification(REFUSED)
        return watch_id(_pushed_address(body))

    def _verified(self, token: str) -> dict[str, Any]:
        try:
            kid = str(jwt.get_unverified_header(token).get("kid") or "")
            key = self._key(kid)
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["RS256"], audience=self._audience, issuer=GOOGLE_ISSUERS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )  # fmt: skip
        except (jwt.PyJWTError, ValueError, KeyError) as exc:
            raise InvalidNotification(REFUSED) from exc
        return claims

    def _key(self, kid: str) -> Any:
        """The signing key ``kid``: fetched when the cached set is stale, or when the key is unknown and
        the set was fetched more than ``REFETCH_AFTER`` ago (Google rotates keys; anonymous traffic with
        made-up key ids cannot make us fetch more often than that). KeyError when Google has no such key."""
        with self._lock:
            age = self._now() - self._fetched_at
            if age > JWKS_TTL or (kid not in self._keys and age > REFETCH_AFTER):
                self._keys = self._fetch()
                self._fetched_at = self._now()
            return self._keys[kid]

    def _fetch(self) -> dict[str, Any]:
        try:
            response = self._session.get(self._jwks_url, timeout=(5.0, 10.0))
            response.raise_for_status()
            keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (requests.RequestException, jwt.PyJWTError, ValueError) as exc:
            raise InvalidNotification(REFUSED) from exc
        return {str(k.key_id): k.key for k in keys if k.key_id}


def _pushed_address(body: bytes) -> str:
    """``message.data`` (base64 JSON ``{"emailAddress", "historyId"}``) → the normalised address."""
    if len(body) > MAX_PUSH_BYTES:
        raise InvalidNotification("the push is too large")
    try:
        envelope = json.loads(body)
        data = json.loads(base64.b64decode(str(envelope["message"]["data"]), validate=False))
        address = normalize_address(str(data["emailAddress"]))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidNotification("the body is not a Gmail push") from exc
    if not address:
        raise InvalidNotification("the body is not a Gmail push")
    return address
