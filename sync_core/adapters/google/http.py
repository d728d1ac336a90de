"""The Gmail API over a requests Session: retries, quota backoff, token refresh and the batch endpoint.

Invariants:
- Quota errors are retried: 429, and 403 whose reason is ``rateLimitExceeded`` or
  ``userRateLimitExceeded`` (Gmail's per-user quota: developers.google.com/gmail/api/guides/handle-errors,
  "exponential backoff"), as are 500/502/503/504 and connection errors; after ``Retry-After`` when given,
  else full-jitter exponential backoff. The total wait per client is bounded (``max_total_wait``); past it
  ``TransientGoogleError`` (a ``TransientFailure``) carries the last wait so the run is re-scheduled.
- A batch (``POST /batch/gmail/v1``, multipart/mixed of ``application/http`` parts, at most
  ``BATCH_LIMIT`` requests: developers.google.com/gmail/api/guides/batch) answers each sub-request on its
  own; sub-requests answered with a retryable status are sent again, alone, in a smaller batch.
- A 401 (of a request, or of a batch's sub-requests) triggers exactly one token refresh and one retry;
  a second 401 is ``ReauthRequired``.
- Tokens, addresses and mail never appear in logs or exception messages (only statuses and Google's
  ``reason`` codes).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import requests

from sync_core.adapters.retry_budget import RetryBudget, retry_after_seconds
from sync_core.errors import (
    GoogleError,
    MailboxAccessDenied,
    MessageNotFound,
    ReauthRequired,
    SyncError,
    TransientGoogleError,
)
from sync_core.ports.identity import TokenSource

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
RATE_LIMIT_REASONS = frozenset({"ratelimitexceeded", "userratelimitexceeded"})
BATCH_LIMIT = 50
"""Google allows 100 calls per batch but advises at most 50: larger batches trigger rate limiting. 50
``messages.get`` cost 250 quota units, a user's per-second allowance."""


@dataclass(frozen=True)
class BatchItem:
    status: int
    body: Any


class GmailHttp:
    """The Gmail API for one mailbox (``users/me`` of its token) during one run."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        token_source: TokenSource,
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_total_wait: float = 120.0,
        max_attempts: int = 8,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._token_source = token_source
        self._token: str | None = None
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._budget = RetryBudget(
            lambda seconds: TransientGoogleError("Gmail throttling exceeded the wait budget of this run", seconds),
            max_total_wait=max_total_wait, backoff_base=backoff_base, backoff_cap=backoff_cap, sleep=sleep,
        )  # fmt: skip
        self._lock = threading.Lock()
        self.metrics = self._budget.metrics

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``/gmail/v1/users/me/{path}``; returns the JSON answer."""
        return self._request("GET", f"{self.base_url}/gmail/v1/users/me/{path.lstrip('/')}", params=params).json()

    def post(self, path: str, body: Any) -> Any:
        """POST JSON to ``/gmail/v1/users/me/{path}`` (retried like reads: use it for calls whose repetition
        is harmless, such as ``watch`` and ``stop``)."""
        response = self._request("POST", f"{self.base_url}/gmail/v1/users/me/{path.lstrip('/')}", json_body=body)
        return response.json() if response.content else None

    def post_once(self, path: str, body: Any) -> Any:
        """POST JSON to ``/gmail/v1/users/me/{path}`` at most once (``messages.send``): a repeat could
        act twice, so a lost answer, a 429 or a 5xx is ``TransientGoogleError`` at once and the caller
        finds out from Gmail's state whether it acted. Only a 401 is retried (after one refresh): Google
        did nothing with an unauthenticated request."""
        url = f"{self.base_url}/gmail/v1/users/me/{path.lstrip('/')}"
        response = self._request("POST", url, json_body=body, once=True)
        return response.json() if response.content else None

    def batch(self, paths: Sequence[str]) -> list[BatchItem]:
        """GET each ``users/me``-relative path (with its query) in batches of ``BATCH_LIMIT``; answers in
        order. Sub-requests throttled or failing with a retryable status are retried after a backoff."""
        answers: list[BatchItem | None] = [None] * len(paths)
        refreshed = False
        for start in range(0, len(paths), BATCH_LIMIT):
            pending = list(range(start, min(start + BATCH_LIMIT, len(paths))))
            attempt = 0
            while pending:
                items = self._send_batch([paths[i] for i in pending])
                retry: list[int] = []
                unauthorized: list[int] = []
                for index, item in zip(pending, items, strict=True):
                    if item.status == 401 and not refreshed:
                        unauthorized.append(index)
                    elif _retryable(item.status, item.body):
                        retry.append(index)
                    else:
                        answers[index] = item
                if unauthorized:  # the batch's token expired or was revoked: one refresh, then again
                    refreshed = True
                    self._current_token(True)
                    retry += unauthorized
                elif retry:
                    self._budget.count_throttled()
                    attempt += 1
                    if attempt >= self._max_attempts:
                        raise TransientGoogleError(f"Gmail kept throttling batched requests ({attempt} times)")
                    self._budget.wait(self._budget.backoff(attempt))
                pending = retry
        return [item for item in answers if item is not None]

    # -- internals --------------------------------------------------------------------------------

    def _send_batch(self, paths: Sequence[str]) -> list[BatchItem]:
        boundary = f"batch_{uuid.uuid4().hex}"
        parts = []
        for i, path in enumerate(paths):
            parts.append(
                f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item-{i}>\r\n\r\n"
                f"GET /gmail/v1/users/me/{path.lstrip('/')}\r\n\r\n"
            )
        body = "".join(parts) + f"--{boundary}--\r\n"
        response = self._request(
            "POST",
            f"{self.base_url}/batch/gmail/v1",
            data=body.encode(),
            content_type=f"multipart/mixed; boundary={boundary}",
        )
        by_id = parse_batch_response(response.headers.get("Content-Type", ""), response.content)
        missing = BatchItem(500, {"error": {"code": 500, "message": "no answer in the batch"}})
        if len(by_id) == len(paths) and not any(f"item-{i}" in by_id for i in range(len(paths))):
            return list(by_id.values())  # answers without our Content-IDs: in request order
        return [by_id.get(f"item-{i}", missing) for i in range(len(paths))]

    def _current_token(self, refresh: bool) -> str:
        with self._lock:
            if self._token is None or refresh:
                self._token = self._token_source(refresh)
            return self._token

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        once: bool = False,
    ) -> requests.Response:
        refreshed = False
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {self._current_token(False)}", "Accept": "application/json"}
            if content_type:
                headers["Content-Type"] = content_type
            try:
                self._budget.count_request()
                response = self._session.request(
                    method, url, params=params, headers=headers, json=json_body, data=data, timeout=self._timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt += 1
                if once or attempt >= self._max_attempts:
                    raise TransientGoogleError(f"Gmail unreachable: {type(exc).__name__}") from exc
                self._budget.wait(self._budget.backoff(attempt))
                continue
            status = response.status_code
            if status < 300:
                return response
            body = _json_or_none(response)
            if status == 401 and not refreshed:
                refreshed = True
                self._current_token(True)
                continue
            if _retryable(status, body):
                self._budget.count_throttled()
                attempt += 1
                retry_after = retry_after_seconds(response.headers)
                if once or attempt >= self._max_attempts:
                    raise TransientGoogleError(f"Gmail answered {status} {attempt} times", retry_after)
                self._budget.wait(retry_after if retry_after is not None else self._budget.backoff(attempt))
                continue
            raise classify(status, body)


def reason_of(body: Any) -> str:
    """Google's error ``reason`` (``errors[0].reason``), else its ``status`` (``NOT_FOUND``…), else ""."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    errors = error.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) and errors[0].get("reason"):
        return str(errors[0]["reason"])
    return str(error.get("status") or "")


def _retryable(status: int, body: Any) -> bool:
    return status in RETRYABLE_STATUS or (status == 403 and reason_of(body).lower() in RATE_LIMIT_REASONS)


def classify(status: int, body: Any) -> SyncError:
    """The error for a Gmail answer retrying will not fix (reasons only: Google's messages may quote data)."""
    reason = reason_of(body)
    if status == 401:
        return ReauthRequired("Google rejected a freshly refreshed access token; connect the mailbox again")
    if status == 403:
        return MailboxAccessDenied(f"Google denies access to the mailbox ({reason or 'forbidden'})")
    if status == 404:
        return MessageNotFound(f"Gmail 404 {reason or 'notFound'}")
    return GoogleError(status, reason, "the request was refused")


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def parse_batch_response(content_type: str, content: bytes) -> dict[str, BatchItem]:
    """A batch's multipart/mixed answer → items by the Content-ID of their request (Google answers
    ``<response-item-0>`` for ``<item-0>``)."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + content)
    found: dict[str, BatchItem] = {}
    if not message.is_multipart():
        return found
    for part in message.iter_parts():
        content_id = str(part.get("Content-ID", "")).strip().strip("<>")
        if content_id.startswith("response-"):
            content_id = content_id[len("response-") :]
        payload = part.get_payload(decode=True) or b""
        if not isinstance(payload, bytes):
            payload = str(payload).encode()
        found[content_id or f"part-{len(found)}"] = _http_answer(payload)
    return found


def _http_answer(raw: bytes) -> BatchItem:
    """``HTTP/1.1 200 OK`` + headers + blank line + JSON body → BatchItem."""
    text = raw.replace(b"\r\n", b"\n")
    head, _, body = text.partition(b"\n\n")
    status_line = head.split(b"\n", 1)[0].decode("latin-1")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        return BatchItem(500, None)
    try:
        parsed = json.loads(body.decode("utf-8")) if body.strip() else None
    except ValueError:
        parsed = None
    return BatchItem(status, parsed)
