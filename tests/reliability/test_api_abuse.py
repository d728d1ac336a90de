"""Bad input through HTTP, against the real function_app in the local Functions host (``hosted``):

- schemathesis generates requests for every operation of the OpenAPI document the app serves
  (``/api/openapi.json``), with a fixed seed and a small number of examples per operation: no answer is a
  5xx, and every answer conforms to the document (status code, content type, response schema);
- one byte over the body limit gets 413 on every operation that takes a body.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from sync_core.api.http import MAX_BODY_BYTES
from sync_core.api.sends import MAX_SEND_BODY_BYTES
from sync_core.settings import Settings
from tests.reliability.hosted_app import FUNCTION_KEY, HostedApp

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((ROOT / "sync_core" / "api" / "openapi.json").read_text(encoding="utf-8"))
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
# Labels from the reviewed file in the repository (the app serves it byte for byte); the test loads the
# document the running app serves and fails if an operation of the file is missing there.
OPERATIONS = [f"{m.upper()} {p}" for p, item in DOCUMENT["paths"].items() for m in item if m in HTTP_METHODS]


def can_be_invalid(item: dict[str, Any], operation: dict[str, Any]) -> bool:
    """Invalid requests need something to get wrong: a body, a required or constrained parameter (an
    optional header that takes any string, like If-None-Match, has no invalid value)."""
    if operation.get("requestBody"):
        return True
    for parameter in [*item.get("parameters", []), *operation.get("parameters", [])]:
        schema = parameter.get("schema", {})
        if parameter.get("required") or parameter.get("in") != "header" or set(schema) - {"type", "description"}:
            return True
    return False


CAN_BE_INVALID = {
    f"{m.upper()} {p}"
    for p, item in DOCUMENT["paths"].items()
    for m, operation in item.items()
    if m in HTTP_METHODS and can_be_invalid(item, operation)
}
CASES = [
    pytest.param(label, mode, id=f"{label}-{'valid' if mode is GenerationMode.POSITIVE else 'invalid'}")
    for label in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or label in CAN_BE_INVALID
]
SEED = 20260309
EXAMPLES_PER_OPERATION = 10
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="session")
def served_schema(hosted: HostedApp) -> Any:
    config = SchemathesisConfig.from_dict(
        {"seed": SEED, "base-url": hosted.origin, "headers": {"x-functions-key": FUNCTION_KEY}}
    )
    return schemathesis.openapi.from_url(hosted.url("openapi.json"), config=config)


@schemathesis.serializer("message/rfc822")
def rfc822_bytes(_context: Any, value: Any) -> bytes:
    """Raw messages for the ingest route: generated text as UTF-8, lone surrogates and all (invalid
    requests may carry any JSON value instead: sent as its JSON text)."""
    if isinstance(value, bytes):
        return value
    text = value if isinstance(value, str) else json.dumps(value)
    return text.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize(("label", "mode"), CASES)
def test_generated_requests_never_get_a_5xx_or_an_answer_the_openapi_document_does_not_allow(
    served_schema: Any, hosted: HostedApp, label: str, mode: GenerationMode
) -> None:
    operation = served_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is in openapi.json but not in the served document"
    calls: list[int] = []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        response = case.call_and_validate(
            base_url=hosted.origin, headers={"x-functions-key": FUNCTION_KEY}, checks=CHECKS, timeout=30
        )
        calls.append(response.status_code)

    check()
    assert calls


# Routes whose body limit is not the API's default (MAX_BODY_BYTES): the records batch takes up to 8 MiB, a send
# the Functions host's request limit (attachments travel in it, base64),
# the RFC 822 ingest up to INGEST_MAX_MESSAGE_BYTES (25 MiB by default).
LIMITS = {
    "records:batch": 8 * 1024 * 1024,
    "messages:ingest": Settings().ingest_max_bytes,
    "messages:send": MAX_SEND_BODY_BYTES,
}


def body_operations(document: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """(method, path with sample parameters, media type, body limit) of every operation taking a body."""
    found = []
    for path, item in document["paths"].items():
        concrete = (
            path.replace("{org}", "org-413").replace("{mailbox_id}", "mbx_x").replace("{record_id}", "rec-x")
            .replace("{activity_id}", "act-x")
        )  # fmt: skip
        limit = next((v for k, v in LIMITS.items() if path.endswith(k)), MAX_BODY_BYTES)
        for method, operation in item.items():
            if isinstance(operation, dict) and "requestBody" in operation:
                media = next(iter(operation["requestBody"].get("content", {"application/json": {}})))
                found.append((method.upper(), concrete, media, limit))
    return found


def test_one_byte_over_the_body_limit_gets_413_on_every_operation_that_takes_a_body(hosted: HostedApp) -> None:
    document = requests.get(hosted.url("openapi.json"), timeout=30).json()
    operations = body_operations(document)
    assert len(operations) >= 8
    answers = {}
    for method, path, media, limit in operations:
        if media == "application/json":
            body = json.dumps({"pad": "x" * (limit + 1 - len('{"pad": ""}'))}).encode()
        else:
            body = b"Subject: big\r\n\r\n" + b"x" * (limit + 1 - len(b"Subject: big\r\n\r\n"))
        assert len(body) == limit + 1
        response = hosted.api.request(
            method, f"{hosted.origin}{path}", data=body, headers={"Content-Type": media}, timeout=60
        )
        answers[f"{method} {path}"] = response.status_code
    assert answers == dict.fromkeys(answers, 413), answers
