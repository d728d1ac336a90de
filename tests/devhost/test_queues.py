"""Queue triggers and queue outputs through the local host against real Azurite."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import requests
from azure.storage.queue import QueueClient

from devhost import LocalHost

StartHost = Callable[..., LocalHost]
Queue = Callable[[str], QueueClient]
Events = Callable[[LocalHost, str], list[dict[str, Any]]]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_a_queue_message_is_processed_and_deleted_and_its_output_is_queued(
    devhost_start: StartHost, devhost_queue: Queue, devhost_events: Events
) -> None:
    host = devhost_start()
    devhost_queue("WORK_QUEUE").send_message(b64(b"hello"))
    host.drain_queues(timeout=10)
    assert [(e["body"], e["dequeue_count"]) for e in devhost_events(host, "work")] == [("hello", 1)]
    done = devhost_events(host, "done")  # async function fed by the queue output binding
    assert [e["body"] for e in done] == ["done:hello"]
    assert done[0]["invocation_id"]  # func.Context was passed
    assert devhost_queue("WORK_QUEUE").get_queue_properties().approximate_message_count == 0


def test_a_failing_message_is_retried_then_moved_to_the_poison_queue(
    devhost_start: StartHost, devhost_queue: Queue, devhost_events: Events
) -> None:
    host = devhost_start()
    devhost_queue("WORK_QUEUE").send_message(b64(b"fail please"))
    host.drain_queues(timeout=10)
    attempts = devhost_events(host, "work")
    assert [e["dequeue_count"] for e in attempts] == [1, 2]  # maxDequeueCount is 2
    poison = devhost_queue(f"{devhost_queue('WORK_QUEUE').queue_name}-poison")
    assert [m.content for m in poison.peek_messages(max_messages=5)] == [b64(b"fail please")]
    assert devhost_events(host, "done") == []


def test_base64_message_bodies_are_decoded_to_the_original_bytes(
    devhost_start: StartHost, devhost_queue: Queue, devhost_events: Events
) -> None:
    host = devhost_start()
    raw = "naïve ✓".encode()
    devhost_queue("WORK_QUEUE").send_message(b64(raw))
    host.drain_queues(timeout=10)
    assert [bytes.fromhex(e["raw"]) for e in devhost_events(host, "work")] == [raw]
    assert [e["body"] for e in devhost_events(host, "done")] == ["done:naïve ✓"]


def test_a_message_that_is_not_base64_goes_to_poison_without_reaching_the_function(
    devhost_start: StartHost, devhost_queue: Queue, devhost_events: Events
) -> None:
    host = devhost_start()
    devhost_queue("WORK_QUEUE").send_message("not base64!")
    host.drain_queues(timeout=10)
    assert devhost_events(host, "work") == []
    poison = devhost_queue(f"{devhost_queue('WORK_QUEUE').queue_name}-poison")
    assert [m.content for m in poison.peek_messages()] == ["not base64!"]


def test_message_encoding_none_passes_the_raw_text(
    devhost_start: StartHost,
    devhost_queue: Queue,
    devhost_events: Events,
    devhost_queue_options: Callable[..., None],
) -> None:
    devhost_queue_options(messageEncoding="none")
    host = devhost_start()
    devhost_queue("WORK_QUEUE").send_message("plain text")
    host.drain_queues(timeout=10)
    assert [e["body"] for e in devhost_events(host, "work")] == ["plain text"]
    assert [e["body"] for e in devhost_events(host, "done")] == ["done:plain text"]


def test_a_batch_of_messages_is_processed_and_every_one_runs_once(
    devhost_start: StartHost, devhost_queue: Queue, devhost_events: Events
) -> None:
    host = devhost_start()
    work = devhost_queue("WORK_QUEUE")
    for n in range(10):
        work.send_message(b64(f"m{n}".encode()))
    host.drain_queues(timeout=10)
    assert sorted(e["body"] for e in devhost_events(host, "work")) == sorted(f"m{n}" for n in range(10))
    assert len(devhost_events(host, "done")) == 10


def test_the_admin_endpoint_runs_a_queue_function_with_the_given_input(
    devhost_start: StartHost, devhost_events: Events
) -> None:
    host = devhost_start()
    reply = requests.post(f"{host.origin}/admin/functions/work", json={"input": "by hand"}, timeout=5)
    assert reply.status_code == 202
    assert [e["body"] for e in devhost_events(host, "work")] == ["by hand"]
    host.drain_queues(timeout=10)
    assert [e["body"] for e in devhost_events(host, "done")] == ["done:by hand"]


def test_trigger_queues_are_created_when_missing(devhost_start: StartHost, devhost_queue: Queue) -> None:
    devhost_start()
    for name in ("WORK_QUEUE", "DONE_QUEUE"):
        assert devhost_queue(name).get_queue_properties().approximate_message_count == 0
