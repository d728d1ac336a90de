"""A small interpreter for the subset of KQL the operations workbook (infra/workbook.json) uses, so its
queries can be run on sample events here, where there is no Kusto engine.

The subset, and nothing more (anything else is a ``KqlError``, so a query that leaves it fails its test):

- a table name (the rows given for it), then ``| operator`` stages:
  ``where <pred>``, ``extend <name> = <expr>, ...``, ``project <name> | <name> = <expr>, ...``,
  ``summarize <agg>, ... [by <col> | <name> = <expr> | bin(<col>, <timespan>), ...]``,
  ``order by <col> [asc|desc], ...`` (``sort by`` too; the default is ``desc`` as in Kusto),
  ``take <n>`` / ``limit <n>``.
- aggregations: ``count()``, ``countif(p)``, ``sum``, ``avg``, ``min``, ``max``, ``dcount``,
  ``percentile(x, p)`` (nearest rank; Kusto's is an estimate that equals it on the small samples the
  tests use), ``arg_max(<col>, <col>, ...)``. Each needs a name (``n = count()``) except ``count()``
  (``count_``) and ``arg_max`` (its columns).
- scalars: string, integer, real, ``true``/``false`` and timespan (``15m``, ``1h``, ``1d``) literals,
  ``== != < <= > >=``, ``startswith``, ``in (...)``, ``!in (...)``, ``and``, ``or``, ``not(p)``,
  ``+ - * /``, ``parse_json``, ``substring(s, start[, length])``, ``tostring``, ``toint``, ``tolong``,
  ``todouble``, ``tobool``, ``iff``, ``isnull``, ``isnotnull``, ``isempty``, ``isnotempty``,
  ``bin(t, span)``, member access on dynamic values (``e.reasons.matched``).

Kusto's strictness is kept where it catches real mistakes: a column that does not exist is an error, and a
dynamic value (what ``parse_json`` and member access give) must be converted (``tostring``, ``toint``,
``todouble``, ``tobool``) before it is compared, summed or grouped by; ``isnull``/``isnotnull`` take it
as it is. Nulls: comparisons with null are false, aggregations skip nulls, ``count()`` counts rows.

``member_paths(query)`` lists the dynamic member accesses (``e.outcome`` → ``("e", "outcome")``), for the
check that a query reads only fields the events have.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Row = dict[str, Any]


class KqlError(Exception):
    """The query is outside the subset, or wrong (an unknown column, an unconverted dynamic value)."""


@dataclass(frozen=True)
class Dynamic:
    """A value of Kusto's ``dynamic`` type: JSON as parsed (dict, list, str, number, bool, None)."""

    value: Any


# -- tokens ------------------------------------------------------------------------------------------

TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<timespan>\d+(?:\.\d+)?(?:ms|d|h|m|s)\b)
    | (?P<number>\d+(?:\.\d+)?)
    | (?P<notin>!in\b)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|[<>=|(),.+\-*/])
    )""",
    re.VERBOSE,
)
SPANS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str


def tokenize(text: str) -> list[Tok]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise KqlError(f"cannot read the query at {text[position:position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append(Tok(kind, match.group(kind)))
        position = match.end()
    return tokens


# -- expressions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Col:
    name: str


@dataclass(frozen=True)
class Member:
    target: Any
    name: str


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Binary:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class InList:
    target: Any
    items: tuple[Any, ...]
    negated: bool


AGGREGATES = frozenset({"count", "countif", "sum", "avg", "min", "max", "dcount", "percentile", "arg_max"})
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=", "startswith")


class Parser:
    def __init__(self, tokens: Sequence[Tok], members: set[tuple[str, ...]] | None = None) -> None:
        self.tokens = list(tokens)
        self.i = 0
        self.members = members if members is not None else set()

    def peek(self, offset: int = 0) -> Tok | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def at(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.text == text

    def take(self, text: str | None = None, kind: str | None = None) -> Tok:
        tok = self.peek()
        if tok is None or (text is not None and tok.text != text) or (kind is not None and tok.kind != kind):
            raise KqlError(f"expected {text or kind}, found {tok.text if tok else 'the end'}")
        self.i += 1
        return tok

    def done(self) -> bool:
        return self.i >= len(self.tokens)

    def expr(self) -> Any:
        return self.or_()

    def or_(self) -> Any:
        left = self.and_()
        while self.at("or"):
            self.take()
            left = Binary("or", left, self.and_())
        return left

    def and_(self) -> Any:
        left = self.comparison()
        while self.at("and"):
            self.take()
            left = Binary("and", left, self.comparison())
        return left

    def comparison(self) -> Any:
        left = self.additive()
        tok = self.peek()
        if tok is not None and tok.text in COMPARISONS:
            self.take()
            return Binary(tok.text, left, self.additive())
        if tok is not None and (tok.text == "in" or tok.kind == "notin"):
            self.take()
            self.take("(")
            items = [self.additive()]
            while self.at(","):
                self.take()
                items.append(self.additive())
            self.take(")")
            return InList(left, tuple(items), tok.kind == "notin")
        return left

    def additive(self) -> Any:
        left = self.multiplicative()
        while self.at("+") or self.at("-"):
            op = self.take().text
            left = Binary(op, left, self.multiplicative())
        return left

    def multiplicative(self) -> Any:
        left = self.postfix()
        while self.at("*") or self.at("/"):
            op = self.take().text
            left = Binary(op, left, self.postfix())
        return left

    def postfix(self) -> Any:
        node = self.primary()
        while self.at("."):
            self.take()
            node = Member(node, self.take(kind="ident").text)
        if isinstance(node, Member):
            path = _path(node)
            if path is not None:
                self.members.add(path)
        return node

    def primary(self) -> Any:
        tok = self.take()
        if tok.kind == "string":
            return Lit(json.loads(tok.text) if tok.text.startswith('"') else tok.text[1:-1])
        if tok.kind == "number":
            return Lit(float(tok.text) if "." in tok.text else int(tok.text))
        if tok.kind == "timespan":
            number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", tok.text).groups()  # type: ignore[union-attr]
            return Lit(timedelta(seconds=float(number) * SPANS[unit]))
        if tok.text == "(":
            inner = self.expr()
            self.take(")")
            return inner
        if tok.text == "-":
            return Binary("-", Lit(0), self.postfix())
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                return Lit(tok.text == "true")
            if self.at("("):
                self.take("(")
                args = []
                if not self.at(")"):
                    args.append(self.expr())
                    while self.at(","):
                        self.take()
                        args.append(self.expr())
                self.take(")")
                return Call(tok.text, tuple(args))
            return Col(tok.text)
        raise KqlError(f"unexpected {tok.text!r}")


# -- evaluation of scalars ---------------------------------------------------------------------------


def _plain(value: Any, what: str) -> Any:
    if isinstance(value, Dynamic):
        raise KqlError(f"{what} of a dynamic value: convert it first (tostring, toint, todouble, tobool)")
    return value


def _raw(value: Any) -> Any:
    return value.value if isinstance(value, Dynamic) else value


def _to_number(value: Any, kind: Callable[[Any], Any]) -> Any:
    value = _raw(value)
    if value is None or isinstance(value, (dict, list)):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None


def _tostring(value: Any) -> str:
    value = _raw(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _tobool(value: Any) -> bool | None:
    value = _raw(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.lower())
    if isinstance(value, (int, float)):
        return value != 0
    return None


def _bin(value: Any, span: Any) -> Any:
    value, span = _plain(value, "bin"), _plain(span, "bin")
    if value is None:
        return None
    if isinstance(value, datetime) and isinstance(span, timedelta):
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return epoch + span * math.floor((value - epoch) / span)
    if isinstance(value, (int, float)) and isinstance(span, (int, float)):
        return math.floor(value / span) * span
    raise KqlError("bin() takes a datetime and a timespan, or two numbers")


def _substring(text: Any, start: Any, length: Any = None) -> str:
    text = _plain(text, "substring")
    if not isinstance(text, str):
        raise KqlError("substring() of a non-string")
    return text[start:] if length is None else text[start : start + length]


def _parse_json(text: Any) -> Dynamic:
    text = _raw(text)
    try:
        return Dynamic(json.loads(text) if isinstance(text, str) else text)
    except json.JSONDecodeError:
        return Dynamic(None)


SCALARS: Mapping[str, Callable[..., Any]] = {
    "parse_json": _parse_json,
    "todynamic": _parse_json,
    "substring": _substring,
    "tostring": _tostring,
    "toint": lambda v: _to_number(v, lambda x: int(float(x))),
    "tolong": lambda v: _to_number(v, lambda x: int(float(x))),
    "todouble": lambda v: _to_number(v, float),
    "tobool": _tobool,
    "isnull": lambda v: _raw(v) is None,
    "isnotnull": lambda v: _raw(v) is not None,
    "isempty": lambda v: _raw(v) is None or _raw(v) == "",
    "isnotempty": lambda v: not (_raw(v) is None or _raw(v) == ""),
    "bin": _bin,
    "not": lambda v: not _plain(v, "not"),
}


def evaluate(node: Any, row: Mapping[str, Any]) -> Any:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Col):
        if node.name not in row:
            raise KqlError(f"unknown column {node.name!r}")
        return row[node.name]
    if isinstance(node, Member):
        target = evaluate(node.target, row)
        if not isinstance(target, Dynamic):
            raise KqlError(f"member access .{node.name} on a value that is not dynamic")
        value = target.value
        return Dynamic(value.get(node.name) if isinstance(value, dict) else None)
    if isinstance(node, Call):
        if node.name == "iff":
            condition, then, otherwise = node.args
            return evaluate(then if _plain(evaluate(condition, row), "iff") else otherwise, row)
        if node.name in AGGREGATES:
            raise KqlError(f"{node.name}() outside summarize")
        if node.name not in SCALARS:
            raise KqlError(f"function {node.name}() is outside the subset")
        return SCALARS[node.name](*(evaluate(a, row) for a in node.args))
    if isinstance(node, InList):
        value = _plain(evaluate(node.target, row), "in")
        found = value in [_plain(evaluate(item, row), "in") for item in node.items]
        return not found if node.negated else found
    if isinstance(node, Binary):
        return _binary(node, row)
    raise KqlError(f"cannot evaluate {node!r}")


def _binary(node: Binary, row: Mapping[str, Any]) -> Any:
    if node.op == "and":
        return bool(_plain(evaluate(node.left, row), "and")) and bool(_plain(evaluate(node.right, row), "and"))
    if node.op == "or":
        return bool(_plain(evaluate(node.left, row), "or")) or bool(_plain(evaluate(node.right, row), "or"))
    left = _plain(evaluate(node.left, row), node.op)
    right = _plain(evaluate(node.right, row), node.op)
    if left is None or right is None:
        return False if node.op in COMPARISONS else None
    if node.op == "startswith":
        return str(left).lower().startswith(str(right).lower())
    operations: Mapping[str, Callable[[Any, Any], Any]] = {
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b if b else None,
    }
    return operations[node.op](left, right)


# -- operators ---------------------------------------------------------------------------------------


def _name_of(node: Any) -> str:
    if isinstance(node, Col):
        return node.name
    if isinstance(node, Call) and node.name == "bin" and isinstance(node.args[0], Col):
        return node.args[0].name  # Kusto names bin(timestamp, 1h) after its column
    raise KqlError("an expression in project, extend or by needs a name (name = expr)")


def _assignments(parser: Parser) -> list[tuple[str, Any]]:
    items = []
    while True:
        if parser.peek(1) is not None and parser.peek(1).text == "=":  # type: ignore[union-attr]
            name = parser.take(kind="ident").text
            parser.take("=")
            items.append((name, parser.expr()))
        else:
            node = parser.expr()
            items.append((_name_of(node), node))
        if not parser.at(","):
            return items
        parser.take(",")


def _percentile(values: list[Any], p: float) -> Any:
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def _aggregate(name: str, args: Sequence[Any], rows: Sequence[Row]) -> Any:
    if name == "count":
        return len(rows)
    if name == "countif":
        return sum(1 for r in rows if _plain(evaluate(args[0], r), "countif"))
    values = [_plain(evaluate(args[0], r), name) for r in rows]
    values = [v for v in values if v is not None]
    if name == "dcount":
        return len(set(values))
    if not values:
        return None if name != "sum" else 0
    if name == "sum":
        return sum(values)
    if name == "avg":
        return sum(values) / len(values)
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    if name == "percentile":
        return _percentile(values, float(evaluate(args[1], {})))
    raise KqlError(f"aggregation {name}() is outside the subset")


def _summarize(parser: Parser, rows: list[Row]) -> list[Row]:
    aggregations: list[tuple[str | None, Call]] = []
    while True:
        name = None
        if parser.peek(1) is not None and parser.peek(1).text == "=":  # type: ignore[union-attr]
            name = parser.take(kind="ident").text
            parser.take("=")
        node = parser.expr()
        if not isinstance(node, Call) or node.name not in AGGREGATES:
            raise KqlError("summarize takes aggregations (count(), sum(x), ...)")
        if name is None and node.name not in ("count", "arg_max"):
            raise KqlError(f"name the aggregation {node.name}() (name = {node.name}(...))")
        aggregations.append((name, node))
        if not parser.at(","):
            break
        parser.take(",")
    groups: list[tuple[str, Any]] = []
    if parser.at("by"):
        parser.take("by")
        groups = _assignments(parser)
    buckets: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        key = tuple(_plain(evaluate(expr, row), "by") for _, expr in groups)
        buckets.setdefault(key, []).append(row)
    result = []
    for key, members in buckets.items():
        out: Row = dict(zip([name for name, _ in groups], key, strict=True))
        for name, call in aggregations:
            if call.name == "arg_max":
                best = max(members, key=lambda r, c=call: _plain(evaluate(c.args[0], r), "arg_max"))
                for arg in call.args:
                    out[_name_of(arg)] = evaluate(arg, best)
            else:
                out[name or "count_"] = _aggregate(call.name, call.args, members)
        result.append(out)
    return result


def _order(parser: Parser, rows: list[Row]) -> list[Row]:
    parser.take("by")
    keys: list[tuple[Any, bool]] = []
    while True:
        node = parser.expr()
        descending = True
        if parser.at("asc") or parser.at("desc"):
            descending = parser.take().text == "desc"
        keys.append((node, descending))
        if not parser.at(","):
            break
        parser.take(",")
    ordered = list(rows)
    for node, descending in reversed(keys):  # stable sorts, last key first
        present = [r for r in ordered if _plain(evaluate(node, r), "order by") is not None]
        missing = [r for r in ordered if _plain(evaluate(node, r), "order by") is None]
        present.sort(key=lambda r, n=node: evaluate(n, r), reverse=descending)
        ordered = present + missing  # nulls last
    return ordered


def run(
    query: str,
    tables: Mapping[str, Iterable[Row]],
    parameters: Mapping[str, str] | None = None,
    *,
    members: set[tuple[str, ...]] | None = None,
) -> list[Row]:
    """Run ``query`` on ``tables`` (name → rows); ``parameters`` replaces workbook ``{Name:format}``
    placeholders first (e.g. ``{"TimeRange:grain": "1h"}``)."""
    for placeholder, value in (parameters or {}).items():
        query = query.replace("{" + placeholder + "}", value)
    if "{" in query:
        raise KqlError(f"an unreplaced workbook parameter in {query!r}")
    stages = _split(query)
    source = stages[0].strip()
    if source not in tables:
        raise KqlError(f"unknown table {source!r}")
    rows = [dict(r) for r in tables[source]]
    for stage in stages[1:]:
        rows = _stage(stage, rows, members)
    return rows


def _split(query: str) -> list[str]:
    """The query's stages, split at the pipes outside string literals."""
    stages, current, quote = [], [], ""
    for char in query:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "|":
            stages.append("".join(current))
            current = []
            continue
        current.append(char)
    stages.append("".join(current))
    return stages


def _stage(text: str, rows: list[Row], members: set[tuple[str, ...]] | None) -> list[Row]:
    parser = Parser(tokenize(text), members)
    operator = parser.take(kind="ident").text
    if operator == "where":
        predicate = parser.expr()
        result = [r for r in rows if _plain(evaluate(predicate, r), "where") is True]
    elif operator == "extend":
        assignments = _assignments(parser)
        result = []
        for row in rows:
            out = dict(row)
            for name, expr in assignments:
                out[name] = evaluate(expr, out)
            result.append(out)
    elif operator == "project":
        assignments = _assignments(parser)
        result = [{name: evaluate(expr, row) for name, expr in assignments} for row in rows]
    elif operator == "summarize":
        result = _summarize(parser, rows)
    elif operator in ("order", "sort"):
        result = _order(parser, rows)
    elif operator in ("take", "limit"):
        result = rows[: int(parser.take(kind="number").text)]
    else:
        raise KqlError(f"operator {operator!r} is outside the subset")
    if not parser.done():
        raise KqlError(f"unexpected {parser.peek().text!r} in {text.strip()!r}")  # type: ignore[union-attr]
    return result


def member_paths(query: str, parameters: Mapping[str, str] | None = None) -> set[tuple[str, ...]]:
    """Every member access in the query, as (column, member, ...): ``e.reasons.matched`` →
    ``("e", "reasons", "matched")`` (whole paths only, not their prefixes). Parses every stage (on no rows)."""
    found: set[tuple[str, ...]] = set()
    source = _split(query)[0].strip()
    run(query, {source: []}, parameters, members=found)
    return found


def _path(node: Any) -> tuple[str, ...] | None:
    if isinstance(node, Col):
        return (node.name,)
    if isinstance(node, Member):
        inner = _path(node.target)
        return None if inner is None else (*inner, node.name)
    return None
