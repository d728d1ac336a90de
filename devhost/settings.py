"""App settings, host.json and storage connection strings for the local host.

Invariants:

* Precedence of app settings, lowest first: ``local.settings.json`` ``Values`` < the process
  environment < the ``settings`` passed to :class:`devhost.LocalHost`.
* :class:`EnvOverlay` writes the merged settings into ``os.environ`` (function code reads its
  configuration from there, as on Azure) and restores every key it touched on :meth:`restore`.
* ``host.json`` values that are missing fall back to the Azure Functions defaults documented
  next to each field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

#: Well-known Azurite / storage emulator account (public, documented by Microsoft).
DEV_ACCOUNT = "devstoreaccount1"
DEV_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEV_QUEUE_PORT = 10001

#: Functions host default request body limit (100 MB); app setting overrides it.
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
BODY_LIMIT_SETTING = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"
KEY_SETTING = "LOCAL_FUNCTIONS_KEY"

_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2}(?:\.\d+)?)$")
_SETTING_REF = re.compile(r"%([^%]+)%")


class SettingsError(ValueError):
    """A settings file or a setting value cannot be used."""


def parse_timespan(text: str) -> timedelta:
    """Parse a .NET TimeSpan string (``[d.]hh:mm:ss[.fff]``) as used in host.json."""
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise SettingsError(f"not a TimeSpan (expected [d.]hh:mm:ss): {text!r}")
    return timedelta(
        days=int(match["d"] or 0),
        hours=int(match["h"]),
        minutes=int(match["m"]),
        seconds=float(match["s"]),
    )


def read_local_settings(app_dir: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Return ``(Values, Host)`` from ``app_dir/local.settings.json``; empty when absent."""
    path = app_dir / "local.settings.json"
    if not path.is_file():
        return {}, {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("IsEncrypted"):
        raise SettingsError(f"{path} is encrypted; the local host only reads plain settings")
    values = {str(k): "" if v is None else str(v) for k, v in (data.get("Values") or {}).items()}
    return values, dict(data.get("Host") or {})


def merge_settings(
    file_values: Mapping[str, str],
    environ: Mapping[str, str],
    explicit: Mapping[str, str] | None,
) -> dict[str, str]:
    """Merge app settings: file values < environment < explicit values (only file/explicit keys)."""
    merged = {key: environ.get(key, value) for key, value in file_values.items()}
    merged.update(explicit or {})
    return merged


class EnvOverlay:
    """Applies settings to ``os.environ`` and undoes exactly that on :meth:`restore`."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._saved: dict[str, str | None] = {}

    def apply(self) -> None:
        for key, value in self._values.items():
            self._saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def restore(self) -> None:
        for key, old in self._saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._saved.clear()


def resolve_setting_refs(text: str, settings: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` binding expressions with app settings, as the Functions host does."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise SettingsError(f"binding expression %{name}% refers to a missing app setting")
        return settings[name]

    return _SETTING_REF.sub(lookup, text)


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` of host.json (defaults: Storage Queues extension 5.x)."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: timedelta = timedelta(minutes=1)
    visibility_timeout: timedelta = timedelta(0)
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueueOptions:
        batch = int(data.get("batchSize", cls.batch_size))
        if not 1 <= batch <= 32:
            raise SettingsError("extensions.queues.batchSize must be between 1 and 32")
        encoding = str(data.get("messageEncoding", cls.message_encoding)).lower()
        if encoding not in ("base64", "none"):
            raise SettingsError("extensions.queues.messageEncoding must be 'base64' or 'none'")
        return cls(
            batch_size=batch,
            new_batch_threshold=int(data.get("newBatchThreshold", batch // 2)),
            max_polling_interval=_span(data, "maxPollingInterval", cls.max_polling_interval),
            visibility_timeout=_span(data, "visibilityTimeout", cls.visibility_timeout),
            max_dequeue_count=int(data.get("maxDequeueCount", cls.max_dequeue_count)),
            message_encoding=encoding,
        )


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json the local host honours."""

    route_prefix: str = "api"
    queues: QueueOptions = field(default_factory=QueueOptions)

    @classmethod
    def load(cls, app_dir: Path) -> HostConfig:
        path = app_dir / "host.json"
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        extensions = data.get("extensions") or {}
        prefix = str((extensions.get("http") or {}).get("routePrefix", "api")).strip("/")
        return cls(route_prefix=prefix, queues=QueueOptions.from_json(extensions.get("queues") or {}))


def _span(data: Mapping[str, Any], key: str, default: timedelta) -> timedelta:
    return parse_timespan(str(data[key])) if key in data else default


def storage_connection_string(connection: str, settings: Mapping[str, str]) -> str:
    """Resolve a binding's ``connection`` to a connection string.

    Like the Functions host: empty means ``AzureWebJobsStorage``; ``NAME`` is looked up as
    ``NAME`` then ``AzureWebJobsNAME``. ``UseDevelopmentStorage=true`` expands to Azurite's
    well-known account on its default ports (honouring ``DevelopmentStorageProxyUri``).
    """
    name = connection or "AzureWebJobsStorage"
    value = settings.get(name) or settings.get(f"AzureWebJobs{name}")
    if not value:
        raise SettingsError(f"connection setting {name!r} is not set")
    return expand_development_storage(value)


def expand_development_storage(value: str) -> str:
    """Turn ``UseDevelopmentStorage=true[;DevelopmentStorageProxyUri=...]`` into a full string."""
    parts = dict(
        part.split("=", 1) for part in value.split(";") if "=" in part
    )
    if parts.get("UseDevelopmentStorage", "").lower() != "true":
        return value
    proxy = parts.get("DevelopmentStorageProxyUri", "http://127.0.0.1").rstrip("/")
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};"
        f"QueueEndpoint={proxy}:{DEV_QUEUE_PORT}/{DEV_ACCOUNT};"
    )


def max_body_bytes(settings: Mapping[str, str]) -> int:
    """Request body limit in bytes (``FUNCTIONS_REQUEST_BODY_SIZE_LIMIT`` or 100 MB)."""
    raw = settings.get(BODY_LIMIT_SETTING)
    return int(raw) if raw else DEFAULT_MAX_BODY_BYTES
