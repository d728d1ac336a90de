"""GET/PUT /api/orgs/{org}/settings: an org's logging policy, validated field by field.

PUT replaces the whole document (idempotent); omitted fields take their defaults. Domains and
never-log entries are normalised (lower-case, IDN to punycode) so what GET returns is what matching uses.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sync_core.api.http import (
    ApiRequest,
    ApiResponse,
    field_error,
    ok,
    read_bool,
    read_int,
    read_str,
    read_str_list,
    reject_unknown,
)
from sync_core.domain.addresses import normalize_address, normalize_domain
from sync_core.domain.model import Ambiguity, BulkFilters, FolderFilter, OrgSettings

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

AMBIGUITY_POLICIES = tuple(policy.value for policy in Ambiguity)
FIELDS = {
    "internal_domains", "never_log", "blocked_domains", "bulk_filters", "match_by_domain", "ambiguity",
    "type_order", "folders", "poll_interval_minutes", "return_url_allow_list", "webhook_url", "automation_enabled",
    "allowed_tenants", "connect_confirmation", "record_backfill_days", "sending_enabled",
}
MAX_RECORD_BACKFILL_DAYS = 365
_TENANT_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def get_settings(svc: Services, req: ApiRequest) -> ApiResponse:
    return ok(settings_to_json(svc.stores.settings.get(req.param("org"))))


def put_settings(svc: Services, req: ApiRequest) -> ApiResponse:
    org = req.param("org")
    settings = settings_from_json(req.json_body())
    svc.stores.settings.put(org, settings)
    return ok(settings_to_json(settings))


def proposed_settings(svc: Services, org: str, overlay: Any) -> OrgSettings | None:
    """The stored settings with the fields of ``overlay`` (an object, validated like a PUT) laid over
    them; None when there is no overlay."""
    if overlay is None:
        return None
    if not isinstance(overlay, dict):
        raise field_error("settings", "must be an object of settings fields")
    merged = {**settings_to_json(svc.stores.settings.get(org)), **overlay}
    return settings_from_json(merged)


def preview_settings(svc: Services, req: ApiRequest) -> ApiResponse:
    """POST /api/orgs/{org}/settings:preview ``{settings, mailbox_id, days}``: how many more or fewer
    messages of the mailbox's last ``days`` days the proposed settings would log, and why
    (``use_cases.preview``; inline, bounded, stores nothing)."""
    from sync_core.use_cases import preview  # noqa: PLC0415

    org = req.param("org")
    body = req.json_body()
    reject_unknown(body, {"settings", "mailbox_id", "days"})
    mailbox_id = read_str(body, "mailbox_id", required=True, max_len=128) or ""
    days = read_int(body, "days", 1, 365)
    if days is None:
        raise field_error("days", "is required: an integer from 1 to 365")
    proposed = proposed_settings(svc, org, body.get("settings", {}))
    assert proposed is not None
    result = preview.preview_settings(svc.preview_deps(), org, mailbox_id, days, proposed)
    return ok({"mailbox_id": mailbox_id, **result.to_json()})


def settings_to_json(settings: OrgSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["folders"] = settings.folders.value
    return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def settings_from_json(data: dict[str, Any]) -> OrgSettings:
    reject_unknown(data, FIELDS)
    defaults = OrgSettings()
    ambiguity = read_str(data, "ambiguity") or defaults.ambiguity
    if ambiguity not in AMBIGUITY_POLICIES:
        raise field_error("ambiguity", f"must be one of {', '.join(AMBIGUITY_POLICIES)}")
    type_order = tuple(read_str_list(data, "type_order", max_items=20, max_len=64) or ())
    if ambiguity == Ambiguity.PREFER and not type_order:
        raise field_error("type_order", "is required when ambiguity is 'prefer'")
    folders = read_str(data, "folders") or defaults.folders.value
    if folders not in {f.value for f in FolderFilter}:
        raise field_error("folders", "must be 'default' (Inbox and Sent Items) or 'all'")
    match_by_domain = read_bool(data, "match_by_domain")
    automation_enabled = read_bool(data, "automation_enabled")
    poll_interval = read_int(data, "poll_interval_minutes", 1, 1440)
    webhook = read_str(data, "webhook_url")
    connect_confirmation = read_bool(data, "connect_confirmation")
    record_backfill_days = read_int(data, "record_backfill_days", 0, MAX_RECORD_BACKFILL_DAYS)
    sending_enabled = read_bool(data, "sending_enabled")
    return OrgSettings(
        internal_domains=_domains(data, "internal_domains"),
        never_log=_never_log(data),
        blocked_domains=_domains(data, "blocked_domains"),
        bulk_filters=_bulk_filters(data.get("bulk_filters")),
        match_by_domain=defaults.match_by_domain if match_by_domain is None else match_by_domain,
        ambiguity=Ambiguity(ambiguity),
        type_order=type_order,
        folders=FolderFilter(folders),
        poll_interval_minutes=poll_interval or defaults.poll_interval_minutes,
        return_url_allow_list=tuple(
            _checked_url("return_url_allow_list", raw, allow_http_localhost=True)
            for raw in read_str_list(data, "return_url_allow_list", max_items=50, max_len=2048) or ()
        ),
        webhook_url=_checked_url("webhook_url", webhook) if webhook else None,
        automation_enabled=defaults.automation_enabled if automation_enabled is None else automation_enabled,
        allowed_tenants=_tenants(data),
        connect_confirmation=(
            defaults.connect_confirmation if connect_confirmation is None else connect_confirmation
        ),
        record_backfill_days=record_backfill_days or 0,
        sending_enabled=defaults.sending_enabled if sending_enabled is None else sending_enabled,
    )


def _tenants(data: dict[str, Any]) -> tuple[str, ...]:
    """Tenant ids (GUIDs, lower-cased) or verified domains (normalised like every domain here)."""
    found = []
    for raw in read_str_list(data, "allowed_tenants", max_items=50, max_len=253) or ():
        entry = raw.strip().lower()
        if not _TENANT_ID.fullmatch(entry):
            domain = normalize_domain(raw)
            if domain is None:
                raise field_error("allowed_tenants", f"holds neither a tenant id nor a domain: {raw!r}")
            entry = domain
        found.append(entry)
    return tuple(dict.fromkeys(found))


def _domains(data: dict[str, Any], name: str) -> tuple[str, ...]:
    found = []
    for raw in read_str_list(data, name, max_items=500, max_len=253) or ():
        domain = normalize_domain(raw)
        if domain is None:
            raise field_error(name, f"holds an invalid domain: {raw!r}")
        found.append(domain)
    return tuple(dict.fromkeys(found))


def _never_log(data: dict[str, Any]) -> tuple[str, ...]:
    """Entries are addresses or whole domains."""
    found = []
    for raw in read_str_list(data, "never_log", max_items=5000) or ():
        entry = normalize_address(raw) if "@" in raw.strip().lstrip("@") else normalize_domain(raw)
        if entry is None:
            raise field_error("never_log", f"holds an entry that is neither an address nor a domain: {raw!r}")
        found.append(entry)
    return tuple(dict.fromkeys(found))


def _bulk_filters(value: Any) -> BulkFilters:
    if value is None:
        return BulkFilters()
    if not isinstance(value, dict):
        raise field_error("bulk_filters", "must be an object of booleans")
    allowed = set(BulkFilters.__dataclass_fields__)
    unknown = sorted(set(value) - allowed)
    if unknown or not all(isinstance(v, bool) for v in value.values()):
        raise field_error("bulk_filters", f"takes only booleans named {', '.join(sorted(allowed))}")
    return BulkFilters(**value)


def _checked_url(name: str, raw: str, allow_http_localhost: bool = False) -> str:
    """An absolute https URL without credentials or fragment (http only for localhost return URLs)."""
    parts = urlsplit(raw)
    local_http = allow_http_localhost and parts.scheme == "http" and parts.hostname in {"localhost", "127.0.0.1"}
    if not parts.hostname or not (parts.scheme == "https" or local_http):
        raise field_error(name, f"must hold absolute https URLs: {raw!r}")
    if parts.username or parts.password or parts.fragment:
        raise field_error(name, f"URLs may not carry credentials or fragments: {raw!r}")
    return raw
