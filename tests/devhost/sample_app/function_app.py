"""A small Function App used only by the devhost tests.

Every invocation of a non-HTTP function is appended to ``EVENTS`` so tests running the host in
process can see what ran. Queue names and the timer schedule are ``%SETTING%`` expressions so
each test gets its own queues.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from typing import Any

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
bp = func.Blueprint()  # type: ignore[no-untyped-call]

EVENTS: list[dict[str, Any]] = []
_events_lock = threading.Lock()
_pair = threading.Barrier(2, timeout=5)
#: Settings the /settings route may reveal (test values only).
VISIBLE_SETTINGS = ("GREETING", "OVERRIDDEN", "EXPLICIT")


def record(kind: str, **data: Any) -> None:
    with _events_lock:
        EVENTS.append({"kind": kind, **data})


def json_response(data: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(data), status_code=status, mimetype="application/json")


@app.route(route="items/{id:int}/{name?}", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def item(req: func.HttpRequest) -> func.HttpResponse:
    return json_response(
        {
            "route": dict(req.route_params),
            "method": req.method,
            "query": {k: v for k, v in req.params.items() if k != "code"},
            "body": req.get_body().decode("utf-8"),
            "header": req.headers.get("x-sample"),
        }
    )


@app.route(route="files/{*rest}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def files(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"rest": req.route_params.get("rest")})


@app.route(route="secure", methods=["GET"])
def secure(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("secret stuff", headers={"X-Kind": "secure"})


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("connection failed: password=hunter2")


@app.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    body = req.get_body()
    return func.HttpResponse(body, status_code=201, mimetype="application/octet-stream",
                             headers={"X-Length": str(len(body))})


@app.route(route="pair", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def pair(req: func.HttpRequest) -> func.HttpResponse:
    _pair.wait()  # only returns when two requests are in flight at once
    return func.HttpResponse("paired")


@app.route(route="settings/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def setting(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params["name"]
    if name not in VISIBLE_SETTINGS:
        return json_response({"error": "not visible"}, 403)
    return json_response({"value": os.environ.get(name)})


@app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer", run_on_startup=False)
def tick(timer: func.TimerRequest) -> None:
    record("tick", past_due=timer.past_due)


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
def startup_tick(timer: func.TimerRequest) -> None:
    record("startup_tick", past_due=timer.past_due)


@bp.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
@bp.queue_output(arg_name="out", queue_name="%DONE_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage, out: func.Out[str]) -> None:
    body = msg.get_body()
    record("work", body=body.decode("utf-8", "replace"), raw=body.hex(), dequeue_count=msg.dequeue_count)
    if body.startswith(b"fail"):
        raise ValueError("refusing to process this message")
    out.set(f"done:{body.decode('utf-8', 'replace')}")


@bp.queue_trigger(arg_name="msg", queue_name="%DONE_QUEUE%", connection="AzureWebJobsStorage")
async def done(msg: func.QueueMessage, context: func.Context) -> None:
    await asyncio.sleep(0)
    record("done", body=msg.get_body().decode("utf-8"), invocation_id=context.invocation_id)


@bp.route(route="hello", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def hello(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0)
    return func.HttpResponse("hello from a blueprint")


app.register_functions(bp)
