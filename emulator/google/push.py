"""Pub/Sub push for ``users.watch``: a mailbox change in a watched mailbox is published to the watch's
topic and pushed to the topic's push subscription.

Wire format (Pub/Sub push, docs/google-emulator-facts.md): ``POST {push_endpoint}`` with JSON
``{"message": {"data", "messageId", "message_id", "publishTime", "publish_time"}, "subscription"}``
where ``data`` is standard base64 of Gmail's notification ``{"emailAddress", "historyId"}``, and
``Authorization: Bearer <OIDC JWT>`` signed by the emulator's Google key (``iss`` the configured issuer,
``aud`` the subscription's audience, ``email`` its service account, ``email_verified`` true).

Invariants: deliveries run on a small thread pool, never on the request thread and never under the
state lock; a non-2xx answer or a connection error is retried ``push_retries`` times with a short
backoff; each attempt's outcome is recorded (``/_emulator/pushes``) without the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests

from emulator.google.state import GoogleState, PushRecord, Topic

log = logging.getLogger("emulator.google.push")


def service_account_sub(email: str) -> str:
    """A stable 21-digit numeric id for a service account (Google's ``sub`` of its tokens)."""
    return str(10**20 + int(hashlib.sha256(email.encode()).hexdigest(), 16) % (9 * 10**20))


class PushDeliverer:
    def __init__(self, state: GoogleState) -> None:
        self.state = state
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="google-push")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def mailbox_changed(self, email: str, history_id: int, label_ids: list[str]) -> None:
        """Publish a notification if ``email`` has a current watch whose label filter admits the change."""
        with self.state.lock:
            user = self.state.users.get(email)
            watch = user.mailbox.watch if user else None
            if watch is None or watch.expiration_ms <= int(time.time() * 1000):
                return
            if watch.label_ids:
                hit = bool(set(watch.label_ids) & set(label_ids))
                if hit != (watch.label_filter_behavior == "include"):
                    return
            topic = self.state.topics.get(watch.topic)
            if topic is None:
                return
            retries = self.state.config.push_retries
            self.state.published[email] = self.state.published.get(email, 0) + 1
        self._pool.submit(self._deliver, topic, email, history_id, retries)

    def token(self, topic: Topic) -> str:
        now = int(time.time())
        sub = service_account_sub(topic.service_account_email)
        return self.state.signing_key.sign(
            {
                "iss": self.state.config.issuer,
                "aud": topic.audience,
                "azp": sub,
                "sub": sub,
                "email": topic.service_account_email,
                "email_verified": True,
                "iat": now,
                "exp": now + 3600,
            }
        )

    def _deliver(self, topic: Topic, email: str, history_id: int, retries: int) -> None:
        message_id = str(uuid.uuid4().int)[:16]
        published = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data = base64.b64encode(json.dumps({"emailAddress": email, "historyId": str(history_id)}).encode()).decode()
        body: dict[str, Any] = {
            "message": {
                "data": data,
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": published,
                "publish_time": published,
            },
            "subscription": topic.subscription,
        }
        for attempt in range(retries + 1):
            status: int | str
            try:
                response = requests.post(
                    topic.push_endpoint, json=body, timeout=10,
                    headers={"Authorization": f"Bearer {self.token(topic)}", "User-Agent": "APIs-Google"},
                )
                status = response.status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            with self.state.lock:
                self.state.pushes.append(PushRecord(topic.name, topic.push_endpoint, email, history_id, status,
                                                    message_id))
            if isinstance(status, int) and 200 <= status < 300:
                return
            log.info("push to %s for topic %s answered %s", topic.push_endpoint.split("?")[0], topic.name, status)
            if attempt < retries:
                time.sleep(min(0.2 * 2**attempt, 2))
