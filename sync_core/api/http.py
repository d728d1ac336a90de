"""Request, response and error types of the HTTP API, plus input validation helpers.

Invariants:
- Bodies are parsed only through ``json_body``: wrong content type → 415, over the limit → 413,
  malformed or not an object → 400, each with a precise message.
- Field readers name the offending field in ``details`` so the CRM can show it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


@dataclass(frozen=True)
class ApiRequest:
    method: str
    route: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def param(self, name: str) -> str:
        """A route parameter that names an id (org, record, mailbox…): validated, never empty."""
        value = self.route.get(name, "")
        if not ID_PATTERN.match(value):
            raise ApiError(400, "invalid_id", f"'{name}' must be 1-128 letters, digits or . _ : @ -", {"field": name})
        return value

    def json_body(self, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
        content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise ApiError(415, "unsupported_media_type", "send the body as application/json")
        if len(self.body) > max_bytes:
            raise ApiError(413, "body_too_large", f"the body is over {max_bytes} bytes", {"limit": max_bytes})
        try:
            payload = json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        return payload


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


def ok(body: Any, status: int = 200) -> ApiResponse:
    return ApiResponse(status, body)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


# -- field readers -----------------------------------------------------------------------------------


def field_error(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_field", f"'{name}' {message}", {"field": name})


def read_str(data: Mapping[str, Any], name: str, *, required: bool = False, max_len: int = 2048) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise field_error(name, "is required")
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise field_error(name, f"must be a string of at most {max_len} characters")
    return value


def read_bool(data: Mapping[str, Any], name: str) -> bool | None:
    value = data.get(name)
    if value is not None and not isinstance(value, bool):
        raise field_error(name, "must be true or false")
    return value


def read_int(data: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise field_error(name, f"must be an integer from {low} to {high}")
    return value


def read_str_list(data: Mapping[str, Any], name: str, *, max_items: int = 1000, max_len: int = 320) -> list[str] | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > max_items:
        raise field_error(name, f"must be a list of at most {max_items} strings")
    if not all(isinstance(item, str) and 0 < len(item) <= max_len for item in value):
        raise field_error(name, f"must hold only non-empty strings of at most {max_len} characters")
    return value


def reject_unknown(data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field(s): {', '.join(unknown)}", {"fields": unknown})
