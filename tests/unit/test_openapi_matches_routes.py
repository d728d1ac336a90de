"""The OpenAPI document (sync_core/api/openapi.json) agrees with the Function App.

* Routes: every HTTP trigger of ``function_app.app`` (its route template under host.json's ``routePrefix``,
  each of its methods, its auth level) is exactly one documented operation whose ``operationId`` is the
  function's name, and every documented operation is such a trigger. A new route without documentation
  fails, and so does a documented operation without a route. Path parameters are the template's; function
  routes need the function key (header or ``code``), anonymous ones say ``security: []``.
* The document: every ``$ref`` resolves, it passes openapi-spec-validator's OpenAPI 3.1 check plus a few
  house rules the specification leaves open (no 3.0 ``nullable``, declared tags and security schemes,
  ``required`` names among the ``properties``), and its enums and limits are the code's. Whether the
  running app's answers match the documented schemas is checked against the real app by the
  schemathesis run in tests/reliability.

Request rules are written three times on purpose: the field readers of ``sync_core/api/http.py`` (they give
the API's error codes, ``unknown_field``/``invalid_field`` with ``details.field``), the document, and the
enum and limit checks below. Models generating the components (msgspec or pydantic) were weighed and not
adopted; the numbers are in the commit that added this paragraph.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openapi_spec_validator import OpenAPIV31SpecValidator

import function_app
from sync_core.api import activities, mailboxes, openapi, push, records, sends, settings
from sync_core.api.http import ID_PATTERN, ApiRequest
from sync_core.domain.model import (
    ConnectionMode,
    Direction,
    DirectionSetting,
    FolderFilter,
    MailboxStatus,
    Reason,
)
from sync_core.domain.sending import SendStatus
from sync_core.use_cases import notifications, schedule, webhooks
from sync_core.use_cases.sync_mailbox import REPORTS_KEPT

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ALL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE")  # a trigger without methods
KEY_SCHEMES = {("header", "x-functions-key"), ("query", "code")}


def load_document() -> dict[str, Any]:
    return json.loads(openapi.DOCUMENT_PATH.read_text(encoding="utf-8"))


DOC = load_document()


# -- the app's HTTP routes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRoute:
    function: str
    path: str  # OpenAPI form: /api/orgs/{org}/records:batch
    params: tuple[str, ...]
    method: str  # lower-case
    auth_level: str  # anonymous, function, admin


def route_prefix() -> str:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    return str(host.get("extensions", {}).get("http", {}).get("routePrefix", "api"))


def openapi_path(prefix: str, route: str) -> tuple[str, tuple[str, ...]]:
    """A Functions route template as an OpenAPI path: ``{id:int}`` → ``{id}``. Optional, defaulted and
    catch-all parameters have no OpenAPI form; a route using them fails here, on purpose."""
    names: list[str] = []

    def parameter(found: re.Match[str]) -> str:
        body = found.group(1)
        if body.startswith("*") or "?" in body or "=" in body:
            raise AssertionError(f"route {route!r}: {{{body}}} cannot be written as an OpenAPI path parameter")
        names.append(body.split(":", 1)[0])
        return "{" + names[-1] + "}"

    joined = "/".join(part.strip("/") for part in (prefix, route) if part.strip("/"))
    return "/" + re.sub(r"\{([^{}]*)\}", parameter, joined), tuple(names)


def _plain(value: Any) -> str:
    return str(getattr(value, "value", value))


def app_routes() -> list[HttpRoute]:
    prefix, found = route_prefix(), []
    for function in function_app.app.get_functions():
        trigger = function.get_trigger().get_dict_repr()
        if _plain(trigger.get("type")) != "httpTrigger":
            continue
        name = function.get_function_name()
        path, params = openapi_path(prefix, str(trigger.get("route") or name))
        methods = [_plain(m).upper() for m in trigger.get("methods") or ALL_METHODS]
        level = _plain(trigger.get("authLevel") or "function").lower()
        found.extend(HttpRoute(name, path, params, method.lower(), level) for method in methods)
    return found


ROUTES = app_routes()


def documented() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in DOC["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def resolve(node: Any) -> Any:
    """Follow ``$ref`` (local JSON pointers) until a node without one."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref not in seen, f"$ref cycle at {ref}"
        seen.add(ref)
        node = pointer(ref)
    return node


def pointer(ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = DOC
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise AssertionError(f"{ref} does not resolve (no {part!r})")
    return node


def _describe(route: HttpRoute) -> str:
    return f"{route.method.upper()} {route.path} (function {route.function}, auth {route.auth_level})"


# -- routes ↔ document -------------------------------------------------------------------------------------


def test_the_app_has_http_routes_and_no_two_share_a_path_and_method() -> None:
    keys = [(r.path, r.method) for r in ROUTES]

    assert {"health", "openapi_document"} <= {r.function for r in ROUTES}
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_every_http_route_is_documented() -> None:
    operations = documented()

    missing = [_describe(r) for r in ROUTES if (r.path, r.method) not in operations]

    assert not missing, "HTTP routes missing from sync_core/api/openapi.json:\n  " + "\n  ".join(missing)


def test_every_documented_operation_is_an_http_route() -> None:
    routes = {(r.path, r.method) for r in ROUTES}

    extra = sorted(f"{m.upper()} {p}" for p, m in documented() if (p, m) not in routes)

    assert not extra, "documented operations without a route in function_app:\n  " + "\n  ".join(extra)


def test_operation_ids_are_the_function_names() -> None:
    operations = documented()

    wrong = [
        f"{_describe(r)}: operationId {operations[(r.path, r.method)].get('operationId')!r}"
        for r in ROUTES
        if (r.path, r.method) in operations and operations[(r.path, r.method)].get("operationId") != r.function
    ]

    assert not wrong, "\n".join(wrong)


def test_security_follows_the_auth_level() -> None:
    schemes = DOC["components"]["securitySchemes"]
    operations, wrong = documented(), []
    for route in ROUTES:
        operation = operations.get((route.path, route.method))
        if operation is None:
            continue
        security = operation.get("security", DOC.get("security", []))
        if route.auth_level == "anonymous":
            if security != []:
                wrong.append(f"{_describe(route)}: anonymous, so the operation needs 'security: []'")
            continue
        offered = set()
        for requirement in security:
            for name in requirement:
                scheme = schemes[name]
                offered.add((scheme["in"], scheme["name"]) if scheme["type"] == "apiKey" else (scheme["type"], name))
        if not requirement_ok(security) or offered != KEY_SCHEMES:
            wrong.append(f"{_describe(route)}: needs the function key (x-functions-key header or code), got {security}")

    assert not wrong, "\n".join(wrong)


def requirement_ok(security: list[dict[str, list[str]]]) -> bool:
    """Each alternative is exactly one key scheme (a key in the header *or* the query suffices)."""
    return bool(security) and all(len(requirement) == 1 for requirement in security)


def test_path_parameters_are_the_route_parameters() -> None:
    wrong = []
    for route in ROUTES:
        item = DOC["paths"].get(route.path)
        if item is None or route.method not in item:
            continue
        declared = [resolve(p) for p in item.get("parameters", []) + item[route.method].get("parameters", [])]
        in_path = [p for p in declared if p["in"] == "path"]
        names = sorted(p["name"] for p in in_path)
        if names != sorted(route.params) or not all(p.get("required") is True for p in in_path):
            wrong.append(f"{_describe(route)}: path parameters {names}, route has {sorted(route.params)}")

    assert not wrong, "\n".join(wrong)


# -- the document itself --------------------------------------------------------------------------------------


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def test_every_ref_resolves() -> None:
    refs = [(where, node["$ref"]) for where, node in walk(DOC) if isinstance(node, dict) and "$ref" in node]
    broken = []
    for where, ref in refs:
        try:
            pointer(ref)
        except AssertionError as exc:
            broken.append(f"{where}: {exc}")

    assert refs
    assert not broken, "\n".join(broken)


def test_every_component_is_used() -> None:
    refs = {node["$ref"] for _, node in walk(DOC) if isinstance(node, dict) and "$ref" in node}
    defined = {
        f"#/components/{kind}/{name}"
        for kind in ("schemas", "parameters", "responses")
        for name in DOC["components"].get(kind, {})
    }

    assert not defined - refs, f"unused components: {sorted(defined - refs)}"


def house_rule_problems(doc: dict[str, Any]) -> Iterator[str]:
    """What OpenAPI 3.1 allows but this document must not do (the validator checks the rest)."""
    tags = {t["name"] for t in doc.get("tags", [])}
    schemes = doc.get("components", {}).get("securitySchemes", {})
    for where, node in walk(doc):
        if not isinstance(node, dict):
            continue
        if "nullable" in node or "x-nullable" in node:
            yield f"{where}: 'nullable' is OpenAPI 3.0; 3.1 writes type: [..., 'null']"
        if isinstance(node.get("properties"), dict) and isinstance(node.get("required"), list):
            missing = sorted(set(node["required"]) - set(node["properties"]))
            yield from ([f"{where}: required {missing} not in properties"] if missing else [])
        if "operationId" in node:
            yield from (f"{where}: undeclared tag {t!r}" for t in node.get("tags", []) if t not in tags)
    requirements = [(w, r) for w, n in walk(doc) if w.endswith("/security") and isinstance(n, list) for r in n]
    for where, requirement in requirements:
        yield from (f"{where}: unknown security scheme {n!r}" for n in requirement if n not in schemes)


def structural_problems(doc: dict[str, Any]) -> Iterator[str]:
    """The OpenAPI 3.1 validator's findings (schema, unique operationIds, path parameters, $refs), then ours."""
    yield from (error.message for error in OpenAPIV31SpecValidator(doc).iter_errors())
    yield from house_rule_problems(doc)


def test_the_document_is_structurally_valid_openapi_3_1() -> None:
    problems = list(structural_problems(DOC))

    assert not problems, "\n".join(problems)


def test_the_structural_check_catches_mistakes() -> None:
    broken = json.loads(json.dumps(DOC))
    broken["openapi"] = "3.0.3"
    broken["paths"]["/api/health"]["get"]["responses"]["200"].pop("description")
    broken["components"]["schemas"]["Record"]["properties"]["name"] = {"type": "string", "nullable": True}

    problems = "\n".join(structural_problems(broken))

    assert '"3.0.3" does not match' in problems
    assert '"description" is a required property' in problems
    assert "'nullable' is OpenAPI 3.0" in problems


def _enum(name: str) -> list[str]:
    return list(DOC["components"]["schemas"][name]["enum"])


def test_enums_and_limits_are_the_codes() -> None:
    schemas = DOC["components"]["schemas"]
    paths = DOC["paths"]

    def query(path: str, method: str, name: str) -> dict[str, Any]:
        return next(p["schema"] for p in paths[path][method]["parameters"] if p["name"] == name)

    assert _enum("Reason") == [r.value for r in Reason]
    assert _enum("Direction") == [d.value for d in Direction]
    assert _enum("DirectionSetting") == [d.value for d in DirectionSetting]
    assert _enum("MailboxStatus") == [s.value for s in MailboxStatus]
    assert _enum("ConnectionMode") == [m.value for m in ConnectionMode]
    assert _enum("FolderFilter") == [f.value for f in FolderFilter]
    assert _enum("AmbiguityPolicy") == list(settings.AMBIGUITY_POLICIES)
    assert set(schemas["SettingsInput"]["properties"]) == settings.FIELDS
    assert set(schemas["RecordFields"]["properties"]) == records.RECORD_FIELDS
    assert schemas["Id"]["pattern"] == ID_PATTERN.pattern
    assert schemas["RecordBatch"]["properties"]["delete"]["maxItems"] == records.BATCH_LIMIT
    assert schemas["BackfillRequest"]["properties"]["days"]["maximum"] == schedule.MAX_BACKFILL_DAYS
    timeline = query("/api/orgs/{org}/records/{record_id}/activities", "get", "limit")
    assert (timeline["maximum"], timeline["default"]) == (activities.MAX_LIMIT, activities.DEFAULT_LIMIT)
    assert query("/api/orgs/{org}/records/{record_id}/activities", "get", "view")["enum"] == list(activities.VIEWS)
    assert _enum("WebhookEventType") == [webhooks.CREATED, webhooks.DELETED, webhooks.SEND_SENT, webhooks.SEND_FAILED]
    assert _enum("SendStatus") == [s.value for s in SendStatus]
    assert set(schemas["SendRequest"]["properties"]) == sends.FIELDS
    assert schemas["NotificationCollection"]["properties"]["value"]["maxItems"] == notifications.MAX_ITEMS
    assert DOC["components"]["parameters"]["ValidationToken"]["schema"]["maxLength"] == push.MAX_VALIDATION_TOKEN
    deliveries = query("/api/orgs/{org}/webhooks/deliveries", "get", "limit")
    assert (deliveries["maximum"], deliveries["default"]) == (push.MAX_LIMIT, push.DEFAULT_LIMIT)
    runs = query("/api/orgs/{org}/mailboxes/{mailbox_id}/runs", "get", "limit")
    assert (runs["maximum"], runs["default"]) == (REPORTS_KEPT, mailboxes.DEFAULT_RUNS)


def test_the_handler_serves_the_file_byte_for_byte_with_an_etag() -> None:
    first = openapi.get_openapi(ApiRequest("GET"))
    again = openapi.get_openapi(ApiRequest("GET", headers={"if-none-match": 'W/"x", ' + first.headers["ETag"]}))

    assert first.status == 200
    assert first.body == openapi.DOCUMENT_PATH.read_text(encoding="utf-8")
    assert first.headers["Content-Type"].startswith("application/json")
    assert (again.status, again.body) == (304, "")
