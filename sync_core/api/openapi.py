"""GET /api/openapi.json: the OpenAPI 3.1 document of this API (anonymous).

The document is ``openapi.json`` next to this module, hand-written; ``tests/unit/test_openapi_matches_routes.py``
fails when it and the Function App's HTTP routes disagree.

Invariants:
- The file is read and checked (valid JSON, an OpenAPI 3.1 object) once per worker, then served byte for
  byte as stored, so what clients get is exactly the reviewed file.
- Needs no storage or settings: the document is served even when the rest of the service is misconfigured.
- ``ETag`` is a hash of the content; a matching ``If-None-Match`` gets 304 with no body.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sync_core.api.http import ApiRequest, ApiResponse

DOCUMENT_PATH = Path(__file__).with_name("openapi.json")


@dataclass(frozen=True)
class Document:
    text: str
    etag: str


@functools.cache
def document() -> Document:
    """The stored document, read once; raises ValueError when it is not an OpenAPI 3.1 JSON object."""
    raw = DOCUMENT_PATH.read_bytes()
    parsed = json.loads(raw)
    if not isinstance(parsed, dict) or not str(parsed.get("openapi", "")).startswith("3.1."):
        raise ValueError(f"{DOCUMENT_PATH.name} is not an OpenAPI 3.1 document")
    return Document(raw.decode("utf-8"), '"' + hashlib.sha256(raw).hexdigest()[:32] + '"')


def get_openapi(req: ApiRequest) -> ApiResponse:
    doc = document()
    headers = {"ETag": doc.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if _matches(req.headers.get("if-none-match", ""), doc.etag):
        return ApiResponse(304, "", headers)
    return ApiResponse(200, doc.text, {"Content-Type": "application/json; charset=utf-8", **headers})


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison against a list of entity tags (or ``*``)."""
    tags = [tag.strip() for tag in if_none_match.split(",") if tag.strip()]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)
