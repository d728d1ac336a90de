"""The OpenAPI document is something a CRM developer can build from: every operation shows a success
example, every example validates against the schema next to it, every schema property says what it is, and
``servers`` names the local and the deployed base URL.

The examples are real answers of the app (captured through the local host, host names and ids replaced);
``tests/e2e/test_openapi_answers.py`` checks the running app's answers against the same schemas, so an
example and the app cannot drift apart without one of the two tests failing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sync_core.api import openapi
from tests.openapi_schemas import operations, resolve, schema_problems

DOC: dict[str, Any] = json.loads(openapi.DOCUMENT_PATH.read_text(encoding="utf-8"))


def examples_of(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [resolve(DOC, example).get("value") for example in media.get("examples", {}).values()]


def success_responses(operation: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for status, response in operation["responses"].items():
        if status.startswith(("2", "3")):
            yield status, resolve(DOC, response)


def example_problems(document: dict[str, Any]) -> Iterator[str]:
    """Operations without a success example; media types of success answers or request bodies without
    one; examples that do not validate against their schema."""
    for operation in operations(document):
        name, shown = operation["operationId"], False
        request = operation.get("requestBody")
        bodies = [(f"{name} request", resolve(document, request))] if request else []
        for status, response in success_responses(operation):
            bodies.append((f"{name} {status}", response))
            headers = [resolve(document, header) for header in response.get("headers", {}).values()]
            # a 204 has nothing to show; a redirect or 304 shows its Location or ETag header
            shown = shown or status == "204" or any("example" in h or "examples" in h for h in headers)
        for where, body in bodies:
            for media_type, media in body.get("content", {}).items():
                found = examples_of(media)
                if not found:
                    yield f"{where} {media_type}: no example"
                shown = shown or (bool(found) and not where.endswith("request"))
                schema = media.get("schema")
                for value in found if media_type == "application/json" and schema else []:
                    yield from (f"{where} example: {p}" for p in schema_problems(document, schema, value))
        if not shown:
            yield f"{name}: no success example"


def undescribed_properties(node: Any, where: str = "#") -> Iterator[str]:
    if isinstance(node, dict):
        for name, schema in (node.get("properties") or {}).items() if isinstance(node.get("properties"), dict) else ():
            if "description" not in schema:
                yield f"{where}/properties/{name}"
        for key, value in node.items():
            yield from undescribed_properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from undescribed_properties(value, f"{where}/{index}")


def test_every_operation_has_a_success_example_and_every_example_validates_against_its_schema() -> None:
    problems = list(example_problems(DOC))

    assert not problems, "\n".join(problems)


def test_the_example_check_catches_a_missing_and_a_wrong_example() -> None:
    broken = json.loads(json.dumps(DOC))
    health = broken["paths"]["/api/health"]["get"]["responses"]["200"]["content"]["application/json"]
    health.pop("examples")
    settings = broken["paths"]["/api/orgs/{org}/settings"]["get"]["responses"]["200"]["content"]["application/json"]
    next(iter(settings["examples"].values()))["value"]["poll_interval_minutes"] = "often"

    problems = "\n".join(example_problems(broken))

    assert "health: no success example" in problems
    assert "health 200 application/json: no example" in problems
    assert "get_settings 200 example: poll_interval_minutes: 'often' is not of type 'integer'" in problems


def test_every_schema_property_has_a_description() -> None:
    missing = list(undescribed_properties(DOC))

    assert not missing, "properties without a description:\n  " + "\n  ".join(missing)


def test_the_servers_are_the_local_host_and_a_deployed_app() -> None:
    urls = [server["url"] for server in DOC["servers"]]

    assert urls == ["http://127.0.0.1:7071", "https://{host}"]  # every path already starts with /api
    assert all(path.startswith("/api/") for path in DOC["paths"])
    assert DOC["servers"][1]["variables"]["host"]["default"].endswith(".azurewebsites.net")


def test_the_401_answer_documents_both_hosts_bodies() -> None:
    unauthorized = DOC["components"]["responses"]["Unauthorized"]
    [example] = examples_of(unauthorized["content"]["application/json"])

    assert "empty body" in unauthorized["description"]
    assert example["error"]["code"] == "unauthorized"
