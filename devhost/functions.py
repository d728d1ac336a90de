"""Load an app's functions from azure-functions metadata and invoke them.

Invariants:

* The only source of truth is ``module.app.get_functions()``: a function registered on the
  ``FunctionApp`` (directly or through a blueprint) is served without any second registration.
* :func:`call` passes the trigger value under the binding's argument name, a :class:`Context`
  when the function declares ``context``, and an :class:`Out` per output binding it supports;
  coroutine functions run to completion with ``asyncio.run`` on the calling thread.
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import inspect
import logging
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar, cast

import azure.functions as func
from azure.functions import _abc as azf_abc  # TraceContext/RetryContext are not re-exported

log = logging.getLogger("devhost")

HTTP, TIMER, QUEUE = "httpTrigger", "timerTrigger", "queueTrigger"
SUPPORTED_TRIGGERS = (HTTP, TIMER, QUEUE)
#: Non-trigger bindings the host fills in: the HTTP response and queue outputs.
SUPPORTED_OUTPUTS = ("http", "queue")

T = TypeVar("T")


@dataclass(frozen=True)
class FunctionSpec:
    """One function as declared by its decorators (enum values turned into plain values)."""

    name: str
    trigger: dict[str, Any]
    bindings: tuple[dict[str, Any], ...]
    user_function: Callable[..., Any]
    directory: str
    parameters: frozenset[str] = field(default_factory=frozenset)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def arg_name(self) -> str:
        return str(self.trigger["name"])

    @property
    def outputs(self) -> tuple[dict[str, Any], ...]:
        """Output bindings other than the HTTP response."""
        return tuple(b for b in self.bindings if b.get("direction") == "out" and b["type"] != "http")

    def unsupported_bindings(self) -> list[str]:
        """Binding types this host cannot provide; invoking such a function will fail."""
        return [
            b["type"]
            for b in self.bindings
            if b["type"] != self.trigger_type and b["type"] not in SUPPORTED_OUTPUTS
        ]


def _plain(value: Any) -> Any:
    """Turn azure-functions enums (HttpMethod, AuthLevel, BindingDirection) into plain values."""
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str) else value.name.lower()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def import_app(module: str) -> tuple[ModuleType, func.FunctionApp]:
    """Import ``module`` fresh (the app folder must be on ``sys.path``); return it and its ``app``."""
    sys.modules.pop(module, None)
    importlib.invalidate_caches()
    mod = importlib.import_module(module)
    app = getattr(mod, "app", None)
    if not isinstance(app, func.FunctionApp):
        raise TypeError(f"{module}.app is not an azure.functions.FunctionApp")
    return mod, app


def load_specs(app: func.FunctionApp, app_dir: Path) -> list[FunctionSpec]:
    """Read every registered function's metadata; names are unique (the SDK enforces it)."""
    specs = []
    for function in app.get_functions():
        declared = function.get_trigger()
        if declared is None:
            raise TypeError(f"function {function.get_function_name()!r} has no trigger")
        trigger = _plain(declared.get_dict_repr())
        bindings = tuple(_plain(b.get_dict_repr()) for b in function.get_bindings())
        user_function = function.get_user_function()
        specs.append(
            FunctionSpec(
                name=function.get_function_name() or user_function.__name__,
                trigger=trigger,
                bindings=bindings,
                user_function=user_function,
                directory=str(app_dir),
                parameters=frozenset(inspect.signature(user_function).parameters),
            )
        )
    return specs


class Out(func.Out[T], Generic[T]):
    """A concrete ``func.Out``: holds the value the function sets."""

    def __init__(self) -> None:
        self._value: T | None = None

    def set(self, val: T) -> None:
        self._value = val

    def get(self) -> T:
        return cast(T, self._value)


class _TraceContext(azf_abc.TraceContext):
    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(azf_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> azf_abc.RpcException:
        return cast(azf_abc.RpcException, None)


class Context(func.Context):
    """Invocation context (no distributed tracing, no retry policies locally)."""

    def __init__(self, spec: FunctionSpec) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._spec = spec
        self._local = threading.local()
        self._local.invocation_id = self._invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._spec.name

    @property
    def function_directory(self) -> str:
        return self._spec.directory

    @property
    def trace_context(self) -> azf_abc.TraceContext:
        return _TraceContext()

    @property
    def retry_context(self) -> azf_abc.RetryContext:
        return _RetryContext()


@dataclass
class Result:
    """What an invocation produced: the return value and output binding values by binding."""

    value: Any
    outputs: list[tuple[dict[str, Any], Any]]


def call(spec: FunctionSpec, trigger_value: Any) -> Result:
    """Invoke the user function once; exceptions propagate to the caller."""
    kwargs: dict[str, Any] = {spec.arg_name: trigger_value}
    if "context" in spec.parameters and spec.arg_name != "context":
        kwargs["context"] = Context(spec)
    outs: list[tuple[dict[str, Any], Out[Any]]] = []
    for binding in spec.outputs:
        if binding["name"] != "$return" and binding["name"] in spec.parameters:
            out: Out[Any] = Out()
            kwargs[binding["name"]] = out
            outs.append((binding, out))
    value = spec.user_function(**kwargs)
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    outputs: list[tuple[dict[str, Any], Any]] = [(b, o.get()) for b, o in outs]
    outputs += [(b, value) for b in spec.outputs if b["name"] == "$return"]
    return Result(value=value, outputs=[(b, v) for b, v in outputs if v is not None])
