"""GET /api/openapi.json through the running function_app: anonymous, the stored file byte for byte, and
the security it documents is what the host enforces on every operation."""

from __future__ import annotations

import json
import re

import requests

from sync_core.api.openapi import DOCUMENT_PATH
from tests.e2e.conftest import AppUnderTest

METHODS = ("get", "put", "post", "delete", "patch")


def test_the_document_is_served_without_a_key_as_the_stored_json(app_host: AppUnderTest) -> None:
    response = requests.get(app_host.url("openapi.json"), timeout=10)

    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == "application/json"
    assert response.content == DOCUMENT_PATH.read_bytes()
    assert response.json() == json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    assert response.json()["openapi"].startswith("3.1.")


def test_a_current_copy_is_answered_304(app_host: AppUnderTest) -> None:
    etag = requests.get(app_host.url("openapi.json"), timeout=10).headers["ETag"]

    again = requests.get(app_host.url("openapi.json"), headers={"If-None-Match": etag}, timeout=10)

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["ETag"] == etag


def test_the_host_enforces_the_documented_security_on_every_operation(app_host: AppUnderTest) -> None:
    """Keyed operations answer 401 without a key (before any handler runs, so nothing changes);
    operations documented with ``security: []`` are reached without one (sent with no body, which the
    anonymous POSTs refuse before acting)."""
    document = requests.get(app_host.url("openapi.json"), timeout=10).json()
    wrong = []
    for path, item in document["paths"].items():
        url = app_host.origin + re.sub(r"\{[^}]+\}", "openapi-e2e", path)
        for method in (m for m in METHODS if m in item):
            anonymous = item[method].get("security", document["security"]) == []
            status = requests.request(method.upper(), url, timeout=10, allow_redirects=False).status_code
            if (status == 401) == anonymous:
                documented = "anonymous" if anonymous else "keyed"
                wrong.append(f"{method.upper()} {path}: {status} without a key, documented {documented}")

    assert not wrong, "\n".join(wrong)
