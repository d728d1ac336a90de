"""docs/crm-integration.md shows real requests with their answers; every JSON answer it shows after a
``curl`` must validate against the OpenAPI document's schema for that operation and status, so the guide
cannot drift from the API (the answers were captured from the running app)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sync_core.api import openapi
from tests.openapi_schemas import operations, resolve, schema_problems

GUIDE = (Path(__file__).resolve().parents[2] / "docs" / "crm-integration.md").read_text(encoding="utf-8")
DOC: dict[str, Any] = json.loads(openapi.DOCUMENT_PATH.read_text(encoding="utf-8"))
BLOCK = re.compile(r"(?:Answer: \*\*(?P<status>\d{3})\*\*[^\n]*\n\n)?```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)
CURL = re.compile(r'curl -sS(?: -X (?P<method>[A-Z]+))? "\$BASE(?P<path>/[^"?]*)')


def operation_id(method: str, path: str) -> str:
    for template, item in DOC["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template.removeprefix("/api"))) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return str(item[method.lower()]["operationId"])
    raise AssertionError(f"the guide calls {method} {path}, which the API does not have")


def shown_answers(guide: str) -> Iterator[tuple[str, str, Any]]:
    """(operationId, status, JSON body) for each answer that follows a curl in the guide."""
    last: str | None = None
    for block in BLOCK.finditer(guide):
        if block["lang"] == "sh" and (call := CURL.search(block["body"])):
            last = operation_id(call["method"] or "GET", call["path"])
        elif block["lang"] == "json" and block["status"] and last:
            yield last, block["status"], json.loads(block["body"])


def answer_problems(guide: str) -> Iterator[str]:
    for operation, status, body in shown_answers(guide):
        found = next(op for op in operations(DOC) if op["operationId"] == operation)
        response = resolve(DOC, found["responses"].get(status))
        if response is None:
            yield f"{operation} {status}: the document has no such answer"
            continue
        schema = response["content"]["application/json"]["schema"]
        yield from (f"{operation} {status}: {problem}" for problem in schema_problems(DOC, schema, body))


def test_every_answer_the_guide_shows_validates_against_the_document() -> None:
    shown = list(shown_answers(GUIDE))
    problems = list(answer_problems(GUIDE))

    assert len({operation for operation, _, _ in shown}) >= 15
    assert not problems, "\n".join(problems)


def test_a_drifted_answer_in_the_guide_is_caught() -> None:
    drifted = GUIDE.replace('"status": "queued"', '"status": "waiting"', 1)

    assert any("sync_mailbox_now 202" in problem for problem in answer_problems(drifted))


def test_the_guides_sequence_sends_a_message_polls_it_to_sent_and_shows_a_repeat_answering_the_same_send() -> None:
    sends = [(operation, status, body) for operation, status, body in shown_answers(GUIDE) if "send" in operation]
    accepted = [body for operation, status, body in sends if (operation, status) == ("send_message", "202")]
    polled = [body for operation, status, body in sends if (operation, status) == ("get_send", "200")]

    assert [body["status"] for body in polled] == ["sent"] and polled[0]["activity_id"]
    assert [body["id"] for body in accepted] == [polled[0]["id"]] * 2  # the first answer and the repeat
    refusals = [body["error"]["code"] for operation, status, body in sends if status == "409"]
    assert refusals == ["sending_disabled", "idempotency_key_reused"]
