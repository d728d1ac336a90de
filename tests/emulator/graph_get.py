"""One GET against the emulator's Graph, as the mail tests make it."""

from __future__ import annotations

from typing import Any

import requests

from emulator.client import EmulatorTenant


def get(tenant: EmulatorTenant, token: str, url: str, prefer: str | None = None, **params: Any) -> requests.Response:
    """GET a Graph path (relative to /v1.0) or an absolute link, exactly as given."""
    headers = {"Authorization": f"Bearer {token}"}
    if prefer:
        headers["Prefer"] = prefer
    target = url if url.startswith("https://") else tenant.graph_url + url
    return tenant.session.get(target, headers=headers, params=params or None, timeout=30)
