"""The WebhookSender port over requests: one POST, no redirects, bounded time, guarded targets.

Invariants:
- Only ``https`` URLs are called, and only when every address the host name resolves to is public
  (not private, loopback, link-local, multicast, reserved or unspecified), so an org's webhook URL cannot
  reach the platform's metadata endpoint or internal services. ``allow_private`` (the
  ``WEBHOOKS_ALLOW_PRIVATE_NETWORKS`` setting, for local demos and tests) lifts both rules.
- The host name is resolved once per attempt, through ``resolver``, and the connection goes to an address
  of that answer, never to a second resolution: a DNS answer that changes between the check and the
  connection (DNS rebinding) cannot lead the POST anywhere the check did not see. TLS still verifies the
  certificate against the URL's host name, which is also the SNI name and the ``Host`` header. Addresses
  are tried in the resolver's order, the next only when the previous one refused or timed out the
  connection (nothing was sent); no proxy is used (a proxy would resolve the name again).
- A host name that does not resolve is a failed attempt (``WebhookSendFailed``, retried later), not a
  refused URL: DNS trouble passes.
- Redirects are never followed (a 3xx is an unsuccessful attempt); the connect and read timeouts bound
  an attempt; the response body is never read beyond what requests buffers for the status.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import NewConnectionError

from sync_core.errors import WebhookSendFailed, WebhookUrlRefused

Resolver = Callable[[str, int], list[str]]
MAX_ADDRESSES = 4  # tried per attempt, each within the connect timeout


def resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class CheckedTarget:
    """A webhook URL that passed the guard: where it may be connected to, and the name TLS verifies."""

    host: str
    authority: str
    """The URL's ``host[:port]``, as sent in the ``Host`` header."""
    addresses: tuple[str, ...]
    """The checked addresses, in the resolver's order; the only ones a connection may go to."""


def check_url(url: str, allow_private: bool, resolver: Resolver = resolve) -> CheckedTarget:
    """Resolve ``url``'s host once and return the addresses it may be called at. Raises
    ``WebhookUrlRefused`` unless ``url`` may be called, ``WebhookSendFailed`` when the name does not
    resolve (now)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookUrlRefused("not a valid URL") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        raise WebhookUrlRefused("not an absolute http(s) URL without credentials")
    if not allow_private and parts.scheme != "https":
        raise WebhookUrlRefused("webhook URLs must use https")
    try:
        addresses = tuple(dict.fromkeys(resolver(parts.hostname, port)))
    except OSError as exc:
        raise WebhookSendFailed(f"the host name does not resolve ({type(exc).__name__})") from exc
    if not addresses:
        raise WebhookSendFailed("the host name resolves to no address")
    if not allow_private:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise WebhookUrlRefused("the host resolves to a private, loopback or reserved address")
    return CheckedTarget(parts.hostname, parts.netloc, addresses)


class PinnedAddressAdapter(HTTPAdapter):
    """Connects to one given address whatever the URL's host resolves to; for https the SNI name and the
    certificate check still use the URL's host name. Proxies are ignored."""

    def __init__(self, address: str) -> None:
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)
        self._address = address

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Mapping[str, str] | None = None,
        cert: Any = None,
    ) -> HTTPConnectionPool:
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        scheme, host = str(host_params["scheme"]), str(host_params["host"]).strip("[]")
        if scheme == "https":
            pool_kwargs["server_hostname"] = host
            pool_kwargs["assert_hostname"] = host if verify is not False else False
        pool: HTTPConnectionPool = self.poolmanager.connection_from_host(
            scheme=scheme, host=self._address, port=host_params["port"], pool_kwargs=pool_kwargs
        )
        return pool


def _not_connected(exc: requests.RequestException) -> bool:
    """True when the connection itself failed (refused, unreachable, connect timeout): nothing was sent."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, NewConnectionError)


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
        target = check_url(url, self._allow_private, self._resolver)
        request = self._session.prepare_request(requests.Request("POST", url, data=body, headers=dict(headers)))
        request.headers["Host"] = target.authority
        verify = self._session.merge_environment_settings(url, {}, True, None, None)["verify"]
        failure: requests.RequestException | None = None
        for address in target.addresses[:MAX_ADDRESSES]:
            adapter = PinnedAddressAdapter(address)
            try:
                response = adapter.send(request, stream=True, timeout=self._timeout, verify=verify, proxies={})
                with response:
                    return int(response.status_code)
            except requests.RequestException as exc:
                if not _not_connected(exc):
                    raise WebhookSendFailed(type(exc).__name__) from exc
                failure = exc
            finally:
                adapter.close()
        raise WebhookSendFailed(type(failure).__name__ if failure else "no address")
