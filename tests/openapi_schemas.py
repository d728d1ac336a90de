"""Validating JSON against the schemas of the OpenAPI document (sync_core/api/openapi.json).

OpenAPI 3.1 schemas are JSON Schema 2020-12; their ``$ref`` values are pointers into the whole document
(``#/components/schemas/...``), so each schema is validated inside a wrapper that carries the document's
``components`` at its root. Used by the unit test of the document's examples and by the e2e test that
checks the running app's answers against the same schemas.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests
from jsonschema import Draft202012Validator

METHODS = ("get", "put", "post", "delete", "patch")


def operations(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in document["paths"].values():
        yield from (item[m] for m in METHODS if m in item)


def resolve(document: dict[str, Any], node: Any) -> Any:
    """Follow ``$ref`` (local JSON pointers) to the node it names."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in str(node["$ref"])[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def operation(document: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return next(op for op in operations(document) if op["operationId"] == operation_id)


def schema_problems(document: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """Why ``value`` does not validate against ``schema`` (empty when it does)."""
    validator = Draft202012Validator({**schema, "components": document["components"]})
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(value)]


def response_schema_problems(document: dict[str, Any], operation_id: str, answer: requests.Response) -> list[str]:
    """An answer of the running app against the response the document gives for its status."""
    where = f"{operation_id} {answer.status_code}"
    documented = resolve(document, operation(document, operation_id)["responses"].get(str(answer.status_code)))
    if documented is None:
        return [f"{where}: status not documented"]
    content = documented.get("content", {})
    media = answer.headers.get("Content-Type", "").split(";")[0].strip()
    if not answer.content:
        return [] if not content or answer.status_code in (201, 202, 204, 302, 304) else [f"{where}: empty body"]
    if not content:
        return [] if 300 <= answer.status_code < 400 else [f"{where}: a body the document does not describe"]
    if media not in content:
        return [f"{where}: answered {media}, documented {sorted(content)}"]
    schema = content[media].get("schema")
    if media != "application/json" or schema is None:
        return []
    return [f"{where}: {problem}" for problem in schema_problems(document, schema, answer.json())]
