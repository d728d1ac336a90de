"""Azure Functions (ASP.NET Core) route templates: parse, order and match.

Supported syntax per segment: literals, ``{name}``, ``{name?}``, ``{name=default}``,
``{*rest}`` / ``{**rest}`` (catch-all, last segment), constraints ``{id:int}``,
``{id:regex(^\\d{{3}}$)}`` (``{{``/``}}`` escape braces), and complex segments like
``{file}.{ext}``.

Invariants:

* Matching is case-insensitive on literals and ignores one trailing slash.
* Route values are percent-decoded; optional parameters without a value are absent.
* Known constraints (int, long, bool, guid, alpha, decimal/double/float, min/max/range,
  length/minlength/maxlength, regex) reject non-matching values; unknown ones are ignored.
* :func:`precedence` orders literal segments before constrained, plain, optional and
  catch-all parameters, so the most specific template is tried first.

Not werkzeug's ``Map``/``Rule``: it matches literals case-sensitively, ends the whole match when a
converter rejects a value (ASP.NET falls through to the next route), adds HEAD to GET rules, and has
no ``{...}`` syntax, optional or defaulted parameters; this module would shrink by its regex only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote


class RouteError(ValueError):
    """A route template cannot be parsed."""


Check = Callable[[str], bool]


def _number_check(kind: Callable[[str], float]) -> Check:
    def check(value: str) -> bool:
        try:
            kind(value)
        except ValueError:
            return False
        return True

    return check


def _regex_check(pattern: str) -> Check:
    compiled = re.compile(pattern, re.IGNORECASE)
    return lambda value: compiled.search(value) is not None


_GUID = r"^\{?[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}\}?$|^\([0-9a-f-]{36}\)$"
_SIMPLE: dict[str, Check] = {
    "int": _regex_check(r"^-?\d+$"),
    "long": _regex_check(r"^-?\d+$"),
    "bool": lambda v: v.lower() in ("true", "false"),
    "guid": _regex_check(_GUID),
    "alpha": _regex_check(r"^[a-z]+$"),
    "decimal": _number_check(float),
    "double": _number_check(float),
    "float": _number_check(float),
    "required": bool,
}


def _constraint(text: str) -> Check | None:
    """Build a check for one constraint; None for unknown constraints (ignored)."""
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", text, re.DOTALL)
    if not match:
        raise RouteError(f"bad route constraint {text!r}")
    name, arg = match.group(1).lower(), match.group(2)
    if arg is None:
        return _SIMPLE.get(name)
    if name == "regex":
        return _regex_check(arg)
    numbers = [int(a) for a in arg.split(",")] if re.fullmatch(r"-?\d+(,-?\d+)?", arg) else None
    if numbers is None:
        return None
    lo, hi = numbers[0], numbers[-1]
    checks: dict[str, Check] = {
        "min": lambda v: _SIMPLE["long"](v) and int(v) >= lo,
        "max": lambda v: _SIMPLE["long"](v) and int(v) <= hi,
        "range": lambda v: _SIMPLE["long"](v) and lo <= int(v) <= hi,
        "minlength": lambda v: len(v) >= lo,
        "maxlength": lambda v: len(v) <= hi,
        "length": lambda v: lo <= len(v) <= hi,
    }
    return checks.get(name)


@dataclass(frozen=True)
class Param:
    """One ``{...}`` placeholder."""

    name: str
    optional: bool
    catch_all: bool
    default: str | None
    checks: tuple[Check, ...]
    constrained: bool


def _parse_param(body: str) -> Param:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    parts = _split_top_level(body, ":")
    head, constraints = parts[0], parts[1:]
    optional = False
    default = None
    if constraints and constraints[-1].endswith("?"):
        constraints[-1], optional = constraints[-1][:-1], True
    if constraints and "=" in constraints[-1] and not constraints[-1].startswith("regex("):
        constraints[-1], default = constraints[-1].split("=", 1)
    if head.endswith("?"):
        head, optional = head[:-1], True
    if "=" in head:
        head, default = head.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][\w-]*", head):
        raise RouteError(f"bad route parameter name {head!r}")
    checks = tuple(c for c in (_constraint(t) for t in constraints) if c is not None)
    return Param(head, optional or default is not None, catch_all, default, checks, bool(constraints))


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses (constraint arguments may contain it)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def _tokenize(template: str) -> list[list[str | Param]]:
    """Split a template into segments of literal strings and params (``{{``/``}}`` unescaped)."""
    segments: list[list[str | Param]] = [[]]
    literal, i = "", 0
    while i < len(template):
        char = template[i]
        if template.startswith(("{{", "}}"), i):
            literal, i = literal + char, i + 2
        elif char == "{":
            end, body = _param_body(template, i + 1)
            if literal:
                segments[-1].append(literal)
            segments[-1].append(_parse_param(body))
            literal, i = "", end + 1
        elif char == "}":
            raise RouteError(f"unbalanced '}}' in route {template!r}")
        elif char == "/":
            if literal:
                segments[-1].append(literal)
            segments.append([])
            literal, i = "", i + 1
        else:
            literal, i = literal + char, i + 1
    if literal:
        segments[-1].append(literal)
    return [s for s in segments if s]


def _param_body(template: str, start: int) -> tuple[int, str]:
    """Return (index of the closing brace, unescaped body) of a placeholder."""
    body, i, depth = "", start, 0
    while i < len(template):
        if template.startswith(("{{", "}}"), i):
            body, i = body + template[i], i + 2
            continue
        char = template[i]
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "}" and depth <= 0:
            return i, body
        body, i = body + char, i + 1
    raise RouteError(f"unterminated '{{' in route {template!r}")


def _segment_score(segment: list[str | Param]) -> int:
    if len(segment) > 1:
        return 1
    part = segment[0]
    if isinstance(part, str):
        return 0
    if part.catch_all:
        return 5
    if part.optional:
        return 4
    return 2 if part.constrained else 3


@dataclass(frozen=True)
class RouteTemplate:
    """A compiled route template (including the host's route prefix)."""

    template: str
    regex: re.Pattern[str]
    params: tuple[Param, ...]
    precedence: tuple[int, ...]

    def match(self, path: str) -> dict[str, str] | None:
        """Route values if ``path`` (raw, percent-encoded, no query) matches, else None."""
        found = self.regex.match(path)
        if not found:
            return None
        values: dict[str, str] = {}
        for index, param in enumerate(self.params):
            raw = found.group(f"p{index}")
            if raw is None or (param.catch_all and raw == ""):
                if param.default is not None:
                    values[param.name] = param.default
                continue
            value = unquote(raw)
            if not all(check(value) for check in param.checks):
                return None
            values[param.name] = value
        return values


def compile_route(prefix: str, route: str) -> RouteTemplate:
    """Compile ``prefix/route`` into a :class:`RouteTemplate`."""
    template = "/".join(p.strip("/") for p in (prefix, route) if p.strip("/"))
    segments = _tokenize(template)
    params: list[Param] = []
    pattern = ""
    for position, segment in enumerate(segments):
        single = segment[0] if len(segment) == 1 and isinstance(segment[0], Param) else None
        if single is not None and single.catch_all and position != len(segments) - 1:
            raise RouteError(f"catch-all parameter must be last in route {template!r}")
        if single is not None and (single.optional or single.catch_all):
            value = ".*" if single.catch_all else "[^/]+"
            pattern += f"(?:/(?P<p{len(params)}>{value}))?"
            params.append(single)
            continue
        pattern += "/"
        for part in segment:
            if isinstance(part, str):
                pattern += re.escape(part)
            else:
                pattern += f"(?P<p{len(params)}>[^/]+)"
                params.append(part)
    regex = re.compile(f"^{pattern}/?$", re.IGNORECASE | re.DOTALL)
    precedence = tuple(_segment_score(s) for s in segments)
    return RouteTemplate("/" + template, regex, tuple(params), precedence)
