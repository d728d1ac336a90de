"""The WebhookSender port over requests: one POST, no redirects, bounded time, guarded targets.

Invariants:
- Only ``https`` URLs are called, and only when every address the host name resolves to is public
  (not private, loopback, link-local, multicast, reserved or unspecified), so an org's webhook URL cannot
  reach the platform's metadata endpoint or internal services. ``allow_private`` (the
  ``WEBHOOKS_ALLOW_PRIVATE_NETWORKS`` setting, for local demos and tests) lifts both rules.
- Redirects are never followed (a 3xx is an unsuccessful attempt); the connect and read timeouts bound
  an attempt; the response body is never read beyond what requests buffers for the status.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import requests

from sync_core.push_ports import WebhookSendFailed, WebhookUrlRefused

Resolver = Callable[[str, int], list[str]]


def resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def check_url(url: str, allow_private: bool, resolver: Resolver = resolve) -> None:
    """Raise ``WebhookUrlRefused`` unless ``url`` may be called."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlRefused("not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        raise WebhookUrlRefused("not an absolute http(s) URL without credentials")
    if allow_private:
        return
    if parts.scheme != "https":
        raise WebhookUrlRefused("webhook URLs must use https")
    try:
        addresses = resolver(parts.hostname, port)
    except OSError as exc:
        raise WebhookUrlRefused(f"the host name does not resolve ({type(exc).__name__})") from exc
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise WebhookUrlRefused("the host resolves to a private, loopback or reserved address")


class RequestsWebhookSender:
    def __init__(
        self,
        session: requests.Session,
        *,
        allow_private: bool = False,
        timeout: tuple[float, float] = (5.0, 10.0),
        resolver: Resolver = resolve,
    ) -> None:
        self._session = session
        self._allow_private = allow_private
        self._timeout = timeout
        self._resolver = resolver

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        check_url(url, self._allow_private, self._resolver)
        try:
            response = self._session.post(
                url, data=body, headers=dict(headers), timeout=self._timeout, allow_redirects=False, stream=True
            )
        except requests.RequestException as exc:
            raise WebhookSendFailed(type(exc).__name__) from exc
        with response:
            return int(response.status_code)
