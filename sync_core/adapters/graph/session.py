"""The HTTP plumbing Graph and the identity platform share: a requests Session factory and the
``http_client`` MSAL gets (default timeouts, a cache of OIDC discovery documents)."""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import requests


class MsalHttpClient:
    """The ``http_client`` MSAL gets: a requests Session (whose ``verify`` follows REQUESTS_CA_BUNDLE),
    default timeouts, and a cache of successful OIDC discovery GETs. MSAL does its own throttling on
    top; it does not retry, and neither does this (callers retry whole operations)."""

    def __init__(
        self,
        session: requests.Session,
        timeout: tuple[float, float] = (5.0, 30.0),
        discovery_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._timeout = timeout
        self._ttl = discovery_ttl
        self._clock = clock
        self._discovery: dict[str, tuple[float, requests.Response]] = {}
        self._lock = threading.Lock()

    def post(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return self._session.post(url, params=params, data=data, headers=headers, **kwargs)

    def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        cacheable = url.endswith("/.well-known/openid-configuration") and not params
        if cacheable:
            with self._lock:
                hit = self._discovery.get(url)
            if hit is not None and hit[0] > self._clock():
                return hit[1]
        response = self._session.get(url, params=params, headers=headers, **kwargs)
        if cacheable and 200 <= response.status_code < 300:
            with self._lock:
                self._discovery[url] = (self._clock() + self._ttl, response)
        return response

    def close(self) -> None:
        self._session.close()


def make_session(ca_bundle: str | None) -> requests.Session:
    """A requests Session that trusts ``ca_bundle`` (REQUESTS_CA_BUNDLE: the system bundle plus any
    private CA) or the default bundle.

    Unless the environment names a proxy, the session does not consult the environment per request
    (``trust_env``): requests would otherwise scan every environment variable for proxies twice and look
    for a ``.netrc`` file on each request, a sizeable share of a sync run's CPU. What it would have read
    is read once here: the CA bundle variables (``ca_bundle`` first). With a proxy configured nothing
    changes (its ``NO_PROXY`` rules need the per-request lookup)."""
    session = requests.Session()
    if not urllib.request.getproxies():
        session.trust_env = False  # no proxy to find; no .netrc: Graph and Google authenticate by bearer token
        ca_bundle = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if ca_bundle:
        session.verify = ca_bundle
    return session
