"""Microsoft Graph over a requests Session: retries, throttling, concurrency and token refresh.

Invariants:
- Links Graph returns (nextLink, deltaLink, Location) are followed verbatim.
- 429/500/502/503/504 are retried after ``Retry-After`` when given, else after jittered exponential backoff
  (a 500 or 502 is a short outage of Graph or its front door as often as 503 is: retrying a read is
  harmless, and giving up on the first one would fail whole runs for it);
  the total time spent waiting per client is bounded (``max_total_wait``), after which
  ``TransientGraphError`` carries the last Retry-After so the caller can re-schedule instead of blocking.
- Connection errors and timeouts are retried the same way (reads, and ``send``'s writes whose repetition
  is harmless: subscription create, renew and delete).
- At most ``max_concurrency`` requests (Graph allows 4 per mailbox) are in flight per client; a client
  may be shared by threads (its counts and wait budget are updated under a lock).
- A 401 triggers exactly one token refresh and one retry; tokens are never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

from sync_core.adapters.retry_budget import RetryBudget, retry_after_seconds
from sync_core.errors import (
    DeltaTokenExpired,
    GraphError,
    MailboxAccessDenied,
    MessageNotFound,
    ReauthRequired,
    SyncError,
    TransientGraphError,
)
from sync_core.ports.identity import TokenSource

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
SYNC_RESET_CODES = frozenset({"syncstatenotfound", "resyncrequired", "syncstateinvalid"})
BATCH_LIMIT = 20


@dataclass(frozen=True)
class BatchResponse:
    status: int
    headers: Mapping[str, str]
    body: Any


class GraphHttp:
    """One Graph "connection" for one mailbox run."""

    def __init__(
        self,
        session: requests.Session,
        base_url: str,
        token_source: TokenSource,
        *,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_total_wait: float = 120.0,
        max_attempts: int = 8,
        max_concurrency: int = 4,
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
            lambda seconds: TransientGraphError("Graph throttling exceeded the wait budget of this run", seconds),
            max_total_wait=max_total_wait, backoff_base=backoff_base, backoff_cap=backoff_cap, sleep=sleep,
        )  # fmt: skip
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Lock()
        self.metrics = self._budget.metrics

    # -- public -----------------------------------------------------------------------------------

    def get(self, url: str, params: Mapping[str, str] | None = None, prefer: Sequence[str] = ()) -> Any:
        """GET a path (relative to the Graph root) or an absolute link Graph gave us; returns JSON."""
        return self.get_response(url, params, prefer).json()

    def get_response(
        self, url: str, params: Mapping[str, str] | None = None, prefer: Sequence[str] = ()
    ) -> requests.Response:
        """Like ``get``, but the successful response itself, its JSON not yet decoded."""
        return self._request("GET", self._absolute(url), params=params, prefer=prefer)

    def send(self, method: str, url: str, json_body: Any = None) -> Any:
        """POST/PATCH/DELETE a path (or a link Graph gave us) with a JSON body; returns the JSON answer, or
        None for an empty one (204). Retried like reads, connection errors included: use it only for calls
        whose repetition is harmless (subscriptions: a duplicate expires on its own; renew and delete are
        idempotent)."""
        response = self._request(method.upper(), self._absolute(url), json_body=json_body)
        return response.json() if response.content else None

    def call(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str = "",
        prefer: Sequence[str] = (),
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Like ``send`` with a ``Prefer`` header, query parameters, or a non-JSON body (``data`` of
        ``content_type``); retried the same way, so only for calls whose repetition is safe or checked."""
        response = self._request(
            method.upper(),
            self._absolute(url),
            params=params,
            prefer=prefer,
            json_body=json_body,
            data=data,
            content_type=content_type,
        )
        return response.json() if response.content else None

    def upload(self, url: str, data: bytes, headers: Mapping[str, str]) -> Any:
        """PUT one byte range to an upload session's URL (pre-authenticated: no token is sent). A
        retryable status or a lost connection is a ``TransientGraphError`` (the session knows what it
        got: the caller asks it before sending again)."""
        try:
            with self._slots:
                self._budget.count_request()
                response = self._session.put(url, data=data, headers=dict(headers), timeout=self._timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise TransientGraphError(f"upload interrupted: {type(exc).__name__}") from exc
        if response.status_code in RETRYABLE_STATUS:
            raise TransientGraphError(f"upload answered {response.status_code}", retry_after_seconds(response.headers))
        if response.status_code >= 300:
            raise _error_for(response)
        return response.json() if response.content else None

    def batch(self, requests_: Sequence[Mapping[str, Any]]) -> dict[str, BatchResponse]:
        """Send up to 20 requests in one ``$batch``; sub-requests answered with a retryable status are retried
        (as a smaller batch) after their Retry-After. Returns responses by id."""
        if len(requests_) > BATCH_LIMIT:
            raise ValueError(f"a Graph batch holds at most {BATCH_LIMIT} requests")
        pending = {str(req["id"]): req for req in requests_}
        done: dict[str, BatchResponse] = {}
        attempt = 0
        while pending:
            body = {"requests": list(pending.values())}
            payload = self._request("POST", f"{self.base_url}/$batch", json_body=body).json()
            waits: list[float] = []
            for item in payload.get("responses", []):
                rid = str(item.get("id"))
                status = int(item.get("status", 500))
                headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
                if status in RETRYABLE_STATUS and rid in pending:
                    self._budget.count_throttled()
                    waits.append(retry_after_seconds(headers) or self._budget.backoff(attempt))
                    continue
                done[rid] = BatchResponse(status, headers, item.get("body"))
                pending.pop(rid, None)
            if pending:
                attempt += 1
                if attempt >= self._max_attempts:
                    raise TransientGraphError("Graph kept throttling batched requests", max(waits or [0.0]))
                self._budget.wait(max(waits or [self._budget.backoff(attempt)]))
        return done

    def relative(self, link: str) -> str:
        """A link Graph returned, made relative to the Graph root (``$batch`` takes relative URLs)."""
        if link.startswith(self.base_url):
            return link[len(self.base_url) :]
        return link

    # -- internals --------------------------------------------------------------------------------

    def _absolute(self, url: str) -> str:
        if url.startswith("https://") or url.startswith("http://"):
            return url
        return f"{self.base_url}/{url.lstrip('/')}"

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
        params: Mapping[str, str] | None = None,
        prefer: Sequence[str] = (),
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str = "",
    ) -> requests.Response:
        refreshed = False
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {self._current_token(False)}", "Accept": "application/json"}
            if prefer:
                headers["Prefer"] = ", ".join(prefer)
            if content_type:
                headers["Content-Type"] = content_type
            try:
                with self._slots:
                    self._budget.count_request()
                    response = self._session.request(
                        method, url, params=params, headers=headers, json=json_body, data=data, timeout=self._timeout
                    )
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt += 1
                if attempt >= self._max_attempts:
                    raise TransientGraphError(f"Graph unreachable: {type(exc).__name__}") from exc
                self._budget.wait(self._budget.backoff(attempt))
                continue
            status = response.status_code
            if status < 300:
                return response
            if status == 401 and not refreshed:
                refreshed = True
                self._current_token(True)
                continue
            if status in RETRYABLE_STATUS:
                self._budget.count_throttled()
                attempt += 1
                retry_after = retry_after_seconds(response.headers)
                if attempt >= self._max_attempts:
                    raise TransientGraphError(f"Graph answered {status} {attempt} times", retry_after)
                self._budget.wait(retry_after if retry_after is not None else self._budget.backoff(attempt))
                continue
            raise _error_for(response)


def error_code(body: Any) -> tuple[str, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code", "")), str(error.get("message", ""))
    return "", ""


def raise_for_batch_item(item: BatchResponse) -> None:
    """Turn a failed ``$batch`` sub-response into the same exception a direct call would raise."""
    if item.status < 300:
        return
    code, message = error_code(item.body)
    raise _classify(item.status, code, message)


def _error_for(response: requests.Response) -> SyncError:
    try:
        code, message = error_code(response.json())
    except ValueError:
        code, message = "", response.reason or ""
    return _classify(response.status_code, code, message)


def _classify(status: int, code: str, message: str) -> SyncError:
    if status == 410 or code.lower() in SYNC_RESET_CODES:
        return DeltaTokenExpired(f"{status} {code}")
    if status == 401:
        return ReauthRequired("Graph rejected a freshly refreshed access token")
    if status == 403:
        return MailboxAccessDenied(f"{code}: {message}" if code else "Access denied")
    if status == 404:
        return MessageNotFound(f"{code}: {message}")
    return GraphError(status, code, message)
