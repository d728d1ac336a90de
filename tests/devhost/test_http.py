"""HTTP triggers through the local host: routing, methods, keys, errors and limits."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from devhost import LocalHost

StartHost = Callable[..., LocalHost]


def test_route_parameters_are_passed_including_optional_and_catch_all(devhost_start: StartHost) -> None:
    host = devhost_start()
    full = requests.post(
        f"{host.base_url}/items/42/caf%C3%A9?x=1&x=2", data=b"payload", headers={"X-Sample": "yes"}, timeout=5
    )
    assert full.status_code == 200
    assert full.headers["Content-Type"] == "application/json; charset=utf-8"
    assert full.json() == {
        "route": {"id": "42", "name": "café"},
        "method": "POST",
        "query": {"x": "1,2"},
        "body": "payload",
        "header": "yes",
    }
    assert requests.get(f"{host.base_url}/ITEMS/7/", timeout=5).json()["route"] == {"id": "7"}
    rest = requests.get(f"{host.base_url}/files/a/b/c.txt", timeout=5).json()
    assert rest == {"rest": "a/b/c.txt"}


def test_an_int_constraint_that_does_not_match_gives_a_json_404(devhost_start: StartHost) -> None:
    host = devhost_start()
    reply = requests.get(f"{host.base_url}/items/not-a-number", timeout=5)
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found"


def test_an_unknown_path_gives_a_json_404(devhost_start: StartHost) -> None:
    host = devhost_start()
    for url in (f"{host.base_url}/nothing/here", f"{host.origin}/items/1"):
        reply = requests.get(url, timeout=5)
        assert reply.status_code == 404
        assert reply.json() == {
            "error": {"code": "not_found", "message": "No function matches this route.", "details": None}
        }


def test_a_wrong_method_gives_a_json_405_with_allow(devhost_start: StartHost) -> None:
    host = devhost_start()
    reply = requests.delete(f"{host.base_url}/items/1", timeout=5)
    assert reply.status_code == 405
    assert reply.headers["Allow"] == "GET, POST"
    assert reply.json()["error"]["code"] == "method_not_allowed"


def test_blueprint_and_async_http_functions_are_served(devhost_start: StartHost) -> None:
    host = devhost_start()
    reply = requests.get(f"{host.base_url}/hello", timeout=5)
    assert reply.status_code == 200
    assert reply.text == "hello from a blueprint"
    assert reply.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_function_keys_are_enforced_when_local_functions_key_is_set(devhost_start: StartHost) -> None:
    host = devhost_start({"LOCAL_FUNCTIONS_KEY": "k3y"})
    url = f"{host.base_url}/secure"
    missing = requests.get(url, timeout=5)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert requests.get(url, headers={"x-functions-key": "wrong"}, timeout=5).status_code == 401
    by_header = requests.get(url, headers={"x-functions-key": "k3y"}, timeout=5)
    assert (by_header.status_code, by_header.text, by_header.headers["X-Kind"]) == (200, "secret stuff", "secure")
    assert requests.get(url, params={"code": "k3y"}, timeout=5).status_code == 200
    assert requests.get(f"{host.base_url}/items/1", timeout=5).status_code == 200  # anonymous


def test_function_keys_are_not_enforced_when_local_functions_key_is_unset(devhost_start: StartHost) -> None:
    host = devhost_start()
    assert requests.get(f"{host.base_url}/secure", timeout=5).status_code == 200


def test_an_exception_gives_a_500_that_hides_its_text_and_logs_the_traceback(
    devhost_start: StartHost, caplog: pytest.LogCaptureFixture
) -> None:
    host = devhost_start()
    with caplog.at_level(logging.INFO, logger="devhost"):
        reply = requests.get(f"{host.base_url}/boom", timeout=5)
    assert reply.status_code == 500
    assert reply.json()["error"]["code"] == "internal_error"
    assert "hunter2" not in reply.text
    assert "RuntimeError" not in reply.text
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is RuntimeError]
    assert failures, "the traceback must reach the host log"


def test_the_host_log_never_holds_query_strings_headers_or_bodies(
    devhost_start: StartHost, caplog: pytest.LogCaptureFixture
) -> None:
    host = devhost_start({"LOCAL_FUNCTIONS_KEY": "k3y"})
    with caplog.at_level(logging.DEBUG, logger="devhost"):
        requests.post(
            f"{host.base_url}/items/1?code=query-secret", data=b"body-secret",
            headers={"X-Sample": "header-secret"}, timeout=5,
        )
        requests.get(f"{host.base_url}/secure?code=wrong-secret", timeout=5)
    assert "/api/items/1" in caplog.text
    for secret in ("query-secret", "body-secret", "header-secret", "wrong-secret"):
        assert secret not in caplog.text


@pytest.fixture
def small_limit_host(devhost_start: StartHost) -> Iterator[LocalHost]:
    yield devhost_start({"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "1024"})


def test_a_body_over_the_limit_gives_a_json_413(small_limit_host: LocalHost) -> None:
    url = f"{small_limit_host.base_url}/echo"
    accepted = requests.post(url, data=b"x" * 1024, timeout=5)
    assert (accepted.status_code, accepted.headers["X-Length"], len(accepted.content)) == (201, "1024", 1024)
    assert accepted.headers["Content-Type"] == "application/octet-stream; charset=utf-8"
    rejected = requests.post(url, data=b"x" * 4096, timeout=5)
    assert rejected.status_code == 413
    assert rejected.json()["error"]["code"] == "request_too_large"


def test_a_chunked_body_over_the_limit_gives_a_413(small_limit_host: LocalHost) -> None:
    url = f"{small_limit_host.base_url}/echo"
    small = requests.post(url, data=iter([b"a" * 100, b"b" * 100]), timeout=5)
    assert (small.status_code, small.content) == (201, b"a" * 100 + b"b" * 100)
    big = requests.post(url, data=iter([b"x" * 600, b"y" * 600]), timeout=5)
    assert big.status_code == 413


def test_concurrent_requests_are_served_in_parallel(devhost_start: StartHost) -> None:
    host = devhost_start()
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: requests.get(f"{host.base_url}/pair", timeout=10), range(2)))
    assert [r.status_code for r in replies] == [200, 200]


def test_an_empty_route_prefix_serves_routes_at_the_root(devhost_start: StartHost, devhost_app_dir: Path) -> None:
    host_json = devhost_app_dir / "host.json"
    data = json.loads(host_json.read_text())
    data["extensions"]["http"]["routePrefix"] = ""
    host_json.write_text(json.dumps(data))
    host = devhost_start()
    assert host.base_url == host.origin
    assert requests.get(f"{host.origin}/items/3", timeout=5).json()["route"] == {"id": "3"}


def test_host_status_answers_without_a_key(devhost_start: StartHost) -> None:
    host = devhost_start({"LOCAL_FUNCTIONS_KEY": "k3y"})
    reply = requests.get(f"{host.origin}/admin/host/status", timeout=5)
    assert (reply.status_code, reply.json()) == (200, {"state": "Running"})


def test_a_malformed_content_length_gives_a_400(devhost_start: StartHost) -> None:
    host = devhost_start()
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as sock:
        sock.sendall(b"POST /api/echo HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        status_line = sock.makefile("rb").readline()
    assert status_line.startswith(b"HTTP/1.1 400")


def raw_exchange(host: LocalHost, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send raw bytes; return the status line, the headers (lower-case names) and the body."""
    with socket.create_connection(("127.0.0.1", host.port), timeout=5) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        status_line = reader.readline()
        headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status_line, headers, reader.read(int(headers.get("content-length", "0")))


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PROPFIND", "BREW"])
def test_any_method_a_route_does_not_serve_gets_a_json_405_with_allow_and_elsewhere_a_json_404(
    devhost_start: StartHost, method: str
) -> None:
    host = devhost_start()
    served = requests.request(method, f"{host.base_url}/items/1", timeout=5)
    nowhere = requests.request(method, f"{host.base_url}/nothing/here", timeout=5)

    assert (served.status_code, served.headers["Allow"]) == (405, "GET, POST")
    assert served.json()["error"] == {
        "code": "method_not_allowed", "message": f"Method {method} is not allowed here.", "details": None,
    }  # fmt: skip
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", ["TRACE", "DELETE", "BREW"])
def test_the_admin_api_answers_other_methods_with_a_json_405(devhost_start: StartHost, method: str) -> None:
    host = devhost_start()
    status = requests.request(method, f"{host.origin}/admin/host/status", timeout=5)
    invoke = requests.request(method, f"{host.origin}/admin/functions/tick", timeout=5)

    assert [(r.status_code, r.headers["Allow"]) for r in (status, invoke)] == [(405, "GET"), (405, "POST")]
    assert {r.json()["error"]["code"] for r in (status, invoke)} == {"method_not_allowed"}


def test_connect_gets_a_json_404_not_a_501_page(devhost_start: StartHost) -> None:
    host = devhost_start()
    request = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    status_line, headers, body = raw_exchange(host, request)

    assert status_line.startswith(b"HTTP/1.1 404")
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "not_found"


def test_head_gets_the_405_headers_without_a_body_and_the_connection_stays_usable(devhost_start: StartHost) -> None:
    host = devhost_start()
    with requests.Session() as session:
        head = session.head(f"{host.base_url}/items/1", timeout=5)
        after = session.get(f"{host.base_url}/items/1", timeout=5)

    assert (head.status_code, head.headers["Allow"], head.content) == (405, "GET, POST", b"")
    assert int(head.headers["Content-Length"]) > 0
    assert after.status_code == 200 and after.json()["route"] == {"id": "1"}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /api/items/1 HTTP/1.1\r\nHost: [oops\r\n\r\n", b"400"),
        (b"GET /api/items/1 HTTP/x.y\r\nHost: x\r\n\r\n", b"400"),
        (b"GET /api/items/1 HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
    ],
    ids=["bad-host-header", "bad-version", "http-2-version"],
)
def test_requests_the_http_layer_refuses_get_the_json_error_body_never_html(
    devhost_start: StartHost, request_bytes: bytes, status: bytes
) -> None:
    host = devhost_start()
    status_line, headers, body = raw_exchange(host, request_bytes)

    assert status_line.split(b" ")[1] == status
    assert headers["content-type"].startswith("application/json")
    assert set(json.loads(body)["error"]) == {"code", "message", "details"}
