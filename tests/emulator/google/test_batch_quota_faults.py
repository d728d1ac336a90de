"""Gmail's batch endpoint, per-user quota units and injected faults on the emulator."""

from __future__ import annotations

import base64
import re
import time

from tests.emulator.google.world import World


def batch_body(boundary: str, paths: list[str]) -> bytes:
    parts = [
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <item{i}>\r\n\r\n"
        f"GET {path}\r\nAccept: application/json\r\n\r\n"
        for i, path in enumerate(paths)
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def batch_answers(text: str) -> list[tuple[str, int, str]]:
    """(Content-ID, status, body) of each part of a multipart/mixed batch response."""
    boundary = text.split("\r\n", 1)[0]
    answers = []
    for part in text.split(boundary)[1:-1]:
        content_id = re.search(r"Content-ID: <([^>]+)>", part)
        status = re.search(r"HTTP/1\.1 (\d{3})", part)
        assert content_id and status
        answers.append((content_id[1], int(status[1]), part.rsplit("\r\n\r\n", 1)[1].strip()))
    return answers


def post_batch(world: World, token: str, paths: list[str]) -> tuple[int, str]:
    answer = world.http.post(
        f"{world.url}/batch/gmail/v1", data=batch_body("b-1", paths),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "multipart/mixed; boundary=b-1"},
    )
    return answer.status_code, answer.text


def test_a_batch_answers_each_call_in_a_multipart_response_with_its_content_id(world: World) -> None:
    ids = [world.deliver(world.ada, subject=f"B{i}")["id"] for i in range(3)]
    token = world.token_for(world.ada)
    status, text = post_batch(world, token, [f"/gmail/v1/users/me/messages/{i}?format=metadata" for i in ids]
                              + ["/gmail/v1/users/me/messages/0123456789abcdef"])
    assert status == 200
    answers = batch_answers(text)
    assert [a[0] for a in answers] == ["response-item0", "response-item1", "response-item2", "response-item3"]
    assert [a[1] for a in answers] == [200, 200, 200, 404]
    assert all(f'"id": "{i}"' in answers[n][2] for n, i in enumerate(ids))


def test_a_batch_of_more_than_100_calls_is_refused(world: World) -> None:
    status, text = post_batch(world, world.token_for(world.ada), ["/gmail/v1/users/me/profile"] * 101)
    assert status == 400 and "100" in text


def test_each_batch_call_is_charged_so_a_batch_can_run_into_the_user_quota(world: World) -> None:
    world.control("PUT", "config", {"user_quota_units": 12})  # two messages.get (5 each), then over
    message = world.deliver(world.ada, subject="Q")["id"]
    token = world.token_for(world.ada)
    status, text = post_batch(world, token, [f"/gmail/v1/users/me/messages/{message}"] * 3)
    assert status == 200
    answers = batch_answers(text)
    assert [a[1] for a in answers] == [200, 200, 429]
    assert '"reason": "userRateLimitExceeded"' in answers[2][2]


def test_over_the_user_quota_is_429_user_rate_limit_exceeded_and_consumes_nothing(world: World) -> None:
    world.control("PUT", "config", {"user_quota_units": 6})
    token = world.token_for(world.ada)
    assert world.gmail("GET", token, "me/messages").status_code == 200  # 5 units
    refused = world.gmail("GET", token, "me/messages")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["errors"][0] == {"message": "User-rate limit exceeded.", "domain": "usageLimits",
                                  "reason": "userRateLimitExceeded"}
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert world.gmail("GET", token, "me/profile").status_code == 200  # 1 unit still fits


def test_the_quota_error_can_be_the_documented_403_variant(world: World) -> None:
    world.control("PUT", "config", {"user_quota_units": 0, "quota_error_status": 403})
    refused = world.gmail("GET", world.token_for(world.ada), "me/profile")
    assert refused.status_code == 403
    assert refused.json()["error"]["errors"][0]["reason"] == "userRateLimitExceeded"


def test_the_quota_window_frees_units_as_it_slides(world: World) -> None:
    world.control("PUT", "config", {"user_quota_units": 5, "quota_window_s": 1})
    token = world.token_for(world.ada)
    assert world.gmail("GET", token, "me/messages").status_code == 200
    assert world.gmail("GET", token, "me/messages").status_code == 429
    time.sleep(1.1)
    assert world.gmail("GET", token, "me/messages").status_code == 200


def test_quota_is_per_user(world: World) -> None:
    world.control("PUT", "config", {"user_quota_units": 5})
    assert world.gmail("GET", world.token_for(world.ada), "me/messages").status_code == 200
    assert world.gmail("GET", world.token_for(world.bob), "me/messages").status_code == 200


def test_an_injected_fault_answers_its_status_in_googles_shape_then_clears(world: World) -> None:
    token = world.token_for(world.ada)
    world.control("POST", "faults", {"status": 503, "path_contains": "/history", "user": world.ada, "count": 1})
    world.control("POST", "faults", {"status": 429, "path_contains": "/profile", "count": 1})
    start = world.gmail("GET", token, "me/profile")
    assert start.status_code == 429
    assert start.json()["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    history_id = world.gmail("GET", token, "me/profile").json()["historyId"]
    failed = world.gmail("GET", token, "me/history", params={"startHistoryId": history_id})
    assert failed.status_code == 503 and failed.json()["error"]["errors"][0]["reason"] == "backendError"
    assert world.gmail("GET", token, "me/history", params={"startHistoryId": history_id}).status_code == 200
    stats = world.control("GET", f"users/{world.ada}/stats").json()
    assert stats["by_status"]["429"] == 1 and stats["by_status"]["503"] == 1


def test_a_fault_with_a_reason_answers_that_reason(world: World) -> None:
    token = world.token_for(world.ada)
    world.control("POST", "faults", {"status": 403, "reason": "userRateLimitExceeded", "count": 1})
    answer = world.gmail("GET", token, "me/profile")
    assert answer.status_code == 403 and answer.json()["error"]["errors"][0]["reason"] == "userRateLimitExceeded"


def test_a_token_endpoint_fault_is_a_5xx(world: World) -> None:
    query = world.sign_in(world.ada)
    world.control("POST", "faults", {"status": 503, "path_contains": "/token", "count": 1})
    assert world.redeem(query["code"], query["verifier"]).status_code == 503
    assert world.redeem(query["code"], query["verifier"]).status_code == 200


def test_unknown_fault_fields_and_statuses_are_refused(world: World) -> None:
    assert world.control("POST", "faults", {"status": 418}).status_code == 400
    assert world.control("POST", "faults", {"status": 500, "colour": "red"}).status_code == 400


def test_past_the_daily_sending_limit_send_is_429_mail_sending_and_nothing_is_sent(world: World) -> None:
    world.control("PUT", "config", {"daily_send_limit": 1})
    token = world.token_for(world.ada)
    raw = base64.urlsafe_b64encode(f"From: {world.ada}\r\nTo: {world.bob}\r\nSubject: s\r\n\r\nhi".encode()).decode()
    assert world.gmail("POST", token, "me/messages/send", json={"raw": raw}).status_code == 200
    refused = world.gmail("POST", token, "me/messages/send", json={"raw": raw})
    assert refused.status_code == 429
    assert refused.json()["error"]["message"].endswith("(Mail sending)")
    sent = world.gmail("GET", token, "me/messages", params={"labelIds": "SENT"}).json()
    assert sent["resultSizeEstimate"] == 1
