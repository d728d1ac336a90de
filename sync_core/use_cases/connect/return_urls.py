"""The return-URL policy of the OAuth flows.

Invariants:
- ``start_*`` rejects a return URL that is not on the org's allow-list (``InvalidRequest``, HTTP 400), so
  a CRM misconfiguration shows up at once; the callback checks it again (the allow-list may have changed
  meanwhile) and otherwise, or without a return URL, answers with a plain result page.
- An allowed URL has exactly the scheme and host (and port) of an entry and a path under the entry's at a
  segment boundary; dot segments, credentials, backslashes and control characters are never allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from sync_core.domain.model import OrgSettings
from sync_core.errors import (
    InvalidRequest,
)

MAX_RETURN_URL = 2048


def _origin_and_path(url: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port] with default ports dropped, decoded path) of an absolute http(s) URL, or
    None when the URL is not one we would ever redirect to."""
    if not url or len(url) > MAX_RETURN_URL or any(ord(c) < 0x21 or c == "\\" for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if port and port != {"https": 443, "http": 80}[scheme]:
        host = f"{host}:{port}"
    path = unquote(parts.path) or "/"
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return scheme, host, path


def return_url_allowed(url: str, allow_list: Sequence[str]) -> bool:
    """True when ``url`` has exactly the scheme and host (and port) of an allow-list entry and its path
    starts with the entry's path at a segment boundary (``/crm`` allows ``/crm`` and ``/crm/x``, not
    ``/crmx``). Dot segments, credentials, backslashes and control characters are never allowed."""
    candidate = _origin_and_path(url)
    if candidate is None:
        return False
    for entry in allow_list:
        allowed = _origin_and_path(entry.strip())
        if allowed is None or allowed[:2] != candidate[:2]:
            continue
        prefix, path = allowed[2], candidate[2]
        if path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/"):
            return True
    return False


def with_params(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to its query (existing parameters of the same name replaced)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query.extend(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def validate_return_url(return_url: str | None, settings: OrgSettings) -> str:
    if not return_url:
        return ""
    if not return_url_allowed(return_url, settings.return_url_allow_list):
        raise InvalidRequest(
            "return_url_not_allowed", "return_url is not on the organisation's return-URL allow-list"
        )
    return return_url
