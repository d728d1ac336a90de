"""Route templates: Functions (ASP.NET Core) syntax, constraints and precedence."""

from __future__ import annotations

import pytest

from devhost.routing import RouteError, compile_route


@pytest.mark.parametrize(
    ("route", "path", "expected"),
    [
        ("items/{id}", "/api/items/5", {"id": "5"}),
        ("items/{id}", "/api/items/5/", {"id": "5"}),
        ("items/{id}", "/API/Items/a%2Fb", {"id": "a/b"}),
        ("items/{id?}", "/api/items", {}),
        ("items/{id=7}", "/api/items", {"id": "7"}),
        ("files/{*rest}", "/api/files/a/b", {"rest": "a/b"}),
        ("files/{**rest}", "/api/files", {}),
        ("f/{name}.{ext}", "/api/f/a.tar.gz", {"name": "a.tar", "ext": "gz"}),
        ("n/{id:int}", "/api/n/-3", {"id": "-3"}),
        ("n/{id:int:min(1)}", "/api/n/3", {"id": "3"}),
        ("n/{id:int?}", "/api/n", {}),
        ("g/{id:guid}", "/api/g/0f8fad5b-d9cb-469f-a165-70867728950e", {"id": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
        ("r/{code:regex(^\\d{{3}}$)}", "/api/r/123", {"code": "123"}),
        ("c/{x:customthing}", "/api/c/any", {"x": "any"}),
    ],
)
def test_templates_match_and_extract_route_values(route: str, path: str, expected: dict[str, str]) -> None:
    assert compile_route("api", route).match(path) == expected


@pytest.mark.parametrize(
    ("route", "path"),
    [
        ("items/{id}", "/api/items"),
        ("items/{id}", "/api/items/1/2"),
        ("items/{id}", "/other/items/1"),
        ("n/{id:int}", "/api/n/x"),
        ("n/{id:range(1,5)}", "/api/n/9"),
        ("a/{s:alpha}", "/api/a/abc1"),
        ("r/{code:regex(^\\d{{3}}$)}", "/api/r/1234"),
        ("l/{s:maxlength(2)}", "/api/l/abc"),
    ],
)
def test_templates_reject_paths_that_do_not_fit(route: str, path: str) -> None:
    assert compile_route("api", route).match(path) is None


@pytest.mark.parametrize("route", ["a/{", "a/}", "a/{*rest}/b", "a/{1bad}"])
def test_malformed_templates_are_rejected(route: str) -> None:
    with pytest.raises(RouteError):
        compile_route("api", route)


def test_literal_segments_take_precedence_over_parameters_and_catch_alls() -> None:
    routes = [compile_route("api", r) for r in ["items/{*rest}", "items/{id}", "items/{id:int}", "items/new"]]
    ordered = sorted(routes, key=lambda r: r.precedence)
    assert [r.template for r in ordered] == ["/api/items/new", "/api/items/{id:int}", "/api/items/{id}",
                                             "/api/items/{*rest}"]
