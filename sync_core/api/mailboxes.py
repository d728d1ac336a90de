"""Mailboxes of an org over HTTP (spec §3 and §4), all CRM routes (function key):

    POST   /api/orgs/{org}/mailboxes                          {address} → 201 (application mode)
    POST   /api/orgs/{org}/mailboxes                          {provider: imap, address, imap, smtp?} → 201
    POST   /api/orgs/{org}/mailboxes/connect:confirm          {user_id, code} → mailbox (delegated connect)
    GET    /api/orgs/{org}/mailboxes                          → {mailboxes: [...]}
    GET    /api/orgs/{org}/mailboxes/{mailbox_id}             → mailbox
    PATCH  /api/orgs/{org}/mailboxes/{mailbox_id}             {enabled?, directions?, imap?, smtp?} → mailbox
    DELETE /api/orgs/{org}/mailboxes/{mailbox_id}?purge=      → 204 (disconnect)
    GET    /api/orgs/{org}/mailboxes/{mailbox_id}/runs?limit= → {runs: [...]} newest first
    GET    /api/orgs/{org}/mailboxes/{mailbox_id}/runs/{run_id} → {run_id, status, report} (Sync now, backfill)
    POST   /api/orgs/{org}/mailboxes/{mailbox_id}/explain     {internet_message_id} → {decision, message, storage}
    POST   /api/orgs/{org}/mailboxes:sign-out-all             → {signed_out: n}

Invariants:
- Mailbox JSON never carries tokens, token-cache data or mail server passwords. Its ``status`` is the effective one: an
  ``active`` mailbox the CRM disabled, or of an org whose automation is off, shows as ``paused`` (that is
  what the sync does with it); the stored status is unchanged.
- ``last_sync_at``, ``last_success_at``, ``last_error`` and ``counters`` are derived from the run reports
  kept per mailbox (the newest ``REPORTS_KEPT``); ``counters`` are totals over those runs. ``last_error``
  is the newest run's failure (class and reason), so a run that succeeds clears it: with ``status`` it
  always describes the latest outcome. An idle poll
  stores a report only once an hour (``sync_mailbox.IDLE_REFRESH``), so ``last_sync_at`` of an idle
  mailbox is at most that old.
- PATCH writes with the mailbox's ETag (a concurrent writer, e.g. a sync setting an error, is never
  overwritten) and re-reads and re-applies once on a conflict.
- Explain reads the message through the mail source the way the sync does and runs the same decision
  (``use_cases.explain``); it writes nothing (no activity, cursor, report or status). Its ``storage`` says
  what actually happens to the message (stored, pending the next run, read past by a run, before the
  watermark, refused by a rule) and the request that would log it (``remedy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sync_core.api.http import (
    ApiError,
    ApiRequest,
    ApiResponse,
    field_error,
    not_found,
    ok,
    read_bool,
    read_int,
    read_str,
    read_str_list,
    reject_unknown,
)
from sync_core.domain.model import (
    Decision,
    DirectionSetting,
    Mailbox,
    MailboxStatus,
    OrgSettings,
    activity_id_for,
)
from sync_core.domain.representation import iso
from sync_core.errors import InvalidRequest
from sync_core.ports import RunReport, Versioned
from sync_core.ports.servers import Security, ServerAccount, ServerLogin
from sync_core.use_cases import mailbox_updates
from sync_core.use_cases.commands import valid_run_id
from sync_core.use_cases.connect import (
    MAX_CONNECT_CODE,
    MAX_USER_ID,
    SERVER_PROVIDERS,
    add_app_mailbox,
    add_org_mailbox,
    add_server_mailbox,
    change_server_credentials,
    confirm_connect,
    disconnect,
    sign_out_all,
)
from sync_core.use_cases.explain import Storage, explain, storage_of
from sync_core.use_cases.run_status import run_state
from sync_core.use_cases.sync_mailbox import REPORTS_KEPT

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

DEFAULT_RUNS = 20
MAX_INTERNET_MESSAGE_ID = 998  # RFC 5322 line limit
_LIST_PARALLELISM = 8


# -- routes ------------------------------------------------------------------------------------------


def add_mailbox(svc: Services, req: ApiRequest) -> ApiResponse:
    """Application mode: add a user or shared mailbox by address (needs admin consent, else 409). A
    mailbox the tenant's application access policy denies is created in status ``error`` with the reason.
    With ``"provider": "google"`` the org's Workspace service account reads it (409 without one, or
    when the Workspace admin did not delegate the scopes). With ``"provider": "imap"``: a mailbox on any
    IMAP server, logged in to (and its SMTP server authenticated to, when given) before anything is
    stored (``connect.server_mode``)."""
    org = req.param("org")
    body = req.json_body()
    provider = read_str(body, "provider", max_len=32) or "microsoft"
    if provider in SERVER_PROVIDERS:
        return _add_server_mailbox(svc, req, org, body, provider)
    if provider not in ("microsoft", "google"):
        raise field_error("provider", f"must be one of microsoft, google, {', '.join(SERVER_PROVIDERS)}")
    reject_unknown(body, {"address", "provider"})
    address = read_str(body, "address", required=True, max_len=320) or ""
    if provider == "microsoft":
        mailbox = add_app_mailbox(svc.connect_deps(), org, address)
    else:  # a provider with org-wide access from an uploaded credential (Google Workspace)
        mailbox = add_org_mailbox(svc.connect_deps(), org, address, provider)
    if mailbox.status is MailboxStatus.ACTIVE:
        svc.mailbox_activated(org, mailbox.mailbox_id)
    location = f"/api/orgs/{quote(org, safe='')}/mailboxes/{quote(mailbox.mailbox_id, safe='')}"
    body_out = mailbox_to_json(mailbox, (), svc.stores.settings.get(org))
    return ApiResponse(201, body_out, {"Location": location})


def _add_server_mailbox(svc: Services, req: ApiRequest, org: str, body: dict[str, Any], provider: str) -> ApiResponse:
    reject_unknown(body, {"provider", "user_id", "address", "aliases", "imap", "smtp"})
    address = read_str(body, "address", required=True, max_len=320) or ""
    user_id = read_str(body, "user_id", max_len=MAX_USER_ID) or ""
    aliases = tuple(read_str_list(body, "aliases", max_items=50) or ())
    imap = server_login(body, "imap", required=True)
    assert imap is not None
    account = ServerAccount(imap, server_login(body, "smtp"))
    mailbox = add_server_mailbox(
        svc.connect_deps(), org, address=address, account=account, user_id=user_id, aliases=aliases, provider=provider
    )
    svc.mailbox_activated(org, mailbox.mailbox_id)
    location = f"/api/orgs/{quote(org, safe='')}/mailboxes/{quote(mailbox.mailbox_id, safe='')}"
    return ApiResponse(201, mailbox_to_json(mailbox, (), svc.stores.settings.get(org)), {"Location": location})


MAX_PASSWORD = 1024


def server_login(body: dict[str, Any], name: str, *, required: bool = False) -> ServerLogin | None:
    """``{host, port, security: tls|starttls, username, password}``; any other ``security`` (``none``,
    ``plain``) is refused: a password is never sent in clear (400 ``plaintext_refused``)."""
    raw = body.get(name)
    if raw is None:
        if required:
            raise field_error(name, "is required")
        return None
    if not isinstance(raw, dict):
        raise field_error(name, "must be an object with host, port, security, username and password")
    reject_unknown(raw, {"host", "port", "security", "username", "password"})
    host = (read_str(raw, "host", required=True, max_len=253) or "").strip()
    port = read_int(raw, "port", 1, 65535)
    security = (read_str(raw, "security", required=True, max_len=16) or "").strip().lower()
    username = read_str(raw, "username", required=True, max_len=320) or ""
    password = read_str(raw, "password", required=True, max_len=MAX_PASSWORD) or ""
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise field_error(f"{name}.host", "must be a host name or IP address")
    if port is None:
        raise field_error(f"{name}.port", "is required")
    if security not in (Security.TLS.value, Security.STARTTLS.value):
        raise InvalidRequest(
            "plaintext_refused",
            f"{name}.security must be tls or starttls: connections that would send the password in clear are refused",
        )
    if not username or not password:
        raise field_error(name, "needs a non-empty username and password")
    return ServerLogin(host, port, Security(security), username, password)


def confirm_connect_mailbox(svc: Services, req: ApiRequest) -> ApiResponse:
    """The CRM confirms a completed sign-in with its ``connect_code``, for the CRM user who started it;
    only now does the mailbox become active (and due for its first sync)."""
    org = req.param("org")
    body = req.json_body()
    reject_unknown(body, {"user_id", "code"})
    user_id = read_str(body, "user_id", required=True, max_len=MAX_USER_ID)
    code = read_str(body, "code", required=True, max_len=MAX_CONNECT_CODE)
    mailbox = confirm_connect(svc.connect_deps(), org, user_id or "", code or "")
    svc.mailbox_activated(org, mailbox.mailbox_id)
    return ok(mailbox_to_json(mailbox, (), svc.stores.settings.get(org)))


def list_mailboxes(svc: Services, req: ApiRequest) -> ApiResponse:
    org = req.param("org")
    settings = svc.stores.settings.get(org)
    mailboxes = sorted(svc.stores.mailboxes.list(org), key=lambda m: (m.address, m.mailbox_id))
    reports = _reports_of(svc, org, [m.mailbox_id for m in mailboxes])
    return ok({"mailboxes": [mailbox_to_json(m, r, settings) for m, r in zip(mailboxes, reports, strict=True)]})


def get_mailbox(svc: Services, req: ApiRequest) -> ApiResponse:
    org = req.param("org")
    mailbox = _existing(svc, org, req.param("mailbox_id")).value
    reports = svc.stores.runs.recent(org, mailbox.mailbox_id, REPORTS_KEPT)
    return ok(mailbox_to_json(mailbox, reports, svc.stores.settings.get(org)))


def update_mailbox(svc: Services, req: ApiRequest) -> ApiResponse:
    """``{enabled?, directions?: both|sent|received, imap?, smtp?}``; fields left out keep their value.
    New ``imap``/``smtp`` logins (imap mailboxes only) are probed before they replace the stored ones."""
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    body = req.json_body()
    reject_unknown(body, {"enabled", "directions", "imap", "smtp"})
    imap, smtp = server_login(body, "imap"), server_login(body, "smtp")
    if imap is not None or smtp is not None:
        _existing(svc, org, mailbox_id)
        change_server_credentials(svc.connect_deps(), org, mailbox_id, imap=imap, smtp=smtp)
    enabled = read_bool(body, "enabled")
    raw_directions = read_str(body, "directions", max_len=16)
    directions = None
    if raw_directions is not None:
        try:
            directions = DirectionSetting(raw_directions.strip().lower())
        except ValueError:
            raise field_error("directions", "must be one of both, sent, received") from None
    _existing(svc, org, mailbox_id)

    def change(mailbox: Mailbox) -> Mailbox:
        return replace(
            mailbox,
            enabled=mailbox.enabled if enabled is None else enabled,
            directions=mailbox.directions if directions is None else directions,
        )

    # Two tries, then 409 concurrent_update (ConcurrencyConflict, by the error table).
    updated = mailbox_updates.update_mailbox(svc.stores.mailboxes, org, mailbox_id, change, attempts=2)
    if updated is None:
        raise not_found("mailbox")
    current = updated
    if (enabled or imap is not None or smtp is not None) and current.value.enabled:
        svc.mailbox_activated(org, mailbox_id)
    reports = svc.stores.runs.recent(org, mailbox_id, REPORTS_KEPT)
    return ok(mailbox_to_json(current.value, reports, svc.stores.settings.get(org)))


def delete_mailbox(svc: Services, req: ApiRequest) -> ApiResponse:
    """Disconnect: tokens and delta state are deleted, the mailbox stays listed as ``disconnected``;
    ``?purge=true`` also deletes the activities no other mailbox saw. Idempotent."""
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    purge = _query_bool(req, "purge")
    disconnect(svc.connect_deps(), org, mailbox_id, purge=purge)
    return ApiResponse(204)


def list_runs(svc: Services, req: ApiRequest) -> ApiResponse:
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    limit = _query_int(req, "limit", 1, REPORTS_KEPT, DEFAULT_RUNS)
    _existing(svc, org, mailbox_id)
    return ok({"runs": [run_to_json(r) for r in svc.stores.runs.recent(org, mailbox_id, limit)]})


def get_run(svc: Services, req: ApiRequest) -> ApiResponse:
    """Where a run a CRM was given an id for stands (``use_cases.run_status``); 404 for an unknown id."""
    org, mailbox_id, run_id = req.param("org"), req.param("mailbox_id"), req.param("run_id")
    _existing(svc, org, mailbox_id)
    state = run_state(svc.due_index, svc.stores.runs, org, mailbox_id, run_id) if valid_run_id(run_id) else None
    if state is None:
        raise not_found("run")
    report = run_to_json(state.report) if state.report is not None else None
    return ok({"run_id": state.run_id, "mailbox_id": mailbox_id, "status": state.status, "report": report})


def sign_out_all_mailboxes(svc: Services, req: ApiRequest) -> ApiResponse:
    """Revoke every stored token of the org; its mailboxes go to ``needs_reauth`` until reconnected."""
    org = req.param("org")
    count = sign_out_all(svc.connect_deps(), org)
    return ok({"signed_out": count})


def explain_message(svc: Services, req: ApiRequest) -> ApiResponse:
    """Fetch one message (by internetMessageId) through the mailbox's mail source and return the decision the
    sync would take for it now, check by check. Stores nothing."""
    org, mailbox_id = req.param("org"), req.param("mailbox_id")
    body = req.json_body()
    reject_unknown(body, {"internet_message_id"})
    wanted = (read_str(body, "internet_message_id", required=True, max_len=MAX_INTERNET_MESSAGE_ID) or "").strip()
    if not wanted:
        raise field_error("internet_message_id", "must not be empty")
    mailbox = _existing(svc, org, mailbox_id).value
    if mailbox.status is MailboxStatus.DISCONNECTED:
        raise ApiError(409, "disconnected", "the mailbox is disconnected; connect it again to explain its mail")
    settings = svc.stores.settings.get(org)
    explained = explain(svc.mail_source(), svc.stores.records, mailbox, settings, wanted)
    if explained is None:
        raise ApiError(404, "message_not_found", "the mailbox has no message with this internet_message_id")
    message, decision = explained.message, explained.decision
    stored = svc.stores.activities.get(org, activity_id_for(org, message.internet_message_id))
    cursors = svc.stores.cursors.get_all(org, mailbox_id)
    storage = storage_of(
        message, decision, stored=stored is not None, cursors=cursors, settings=settings, now=svc.clock.now()
    )
    return ok(
        {
            "decision": decision_to_json(decision),
            "message": {
                "internet_message_id": message.internet_message_id,
                "folder": message.folder,
                "received_at": iso(message.received_at),
                "activity_id": stored.activity_id if stored is not None else None,
            },
            "storage": storage_to_json(storage, org, mailbox_id),
        }
    )


# -- JSON --------------------------------------------------------------------------------------------


def mailbox_to_json(mailbox: Mailbox, reports: Sequence[RunReport], settings: OrgSettings) -> dict[str, Any]:
    """``reports`` newest first."""
    status, reason = effective_status(mailbox, settings)
    last_success = next((r for r in reports if not r.error), None)
    latest = reports[0] if reports else None
    reasons: dict[str, int] = {}
    for report in reports:
        for key, count in report.reasons.items():
            reasons[key] = reasons.get(key, 0) + int(count)
    return {
        "id": mailbox.mailbox_id,
        "address": mailbox.address,
        "aliases": list(mailbox.aliases),
        "provider": mailbox.provider,
        "mode": mailbox.mode.value,
        "status": status,
        "status_reason": reason,
        "enabled": mailbox.enabled,
        "directions": mailbox.directions.value,
        "watermark": iso(mailbox.watermark),
        "tenant_id": mailbox.tenant_id,
        "user_id": mailbox.user_id or None,
        "last_sync_at": iso(reports[0].finished_at) if reports else None,
        "last_success_at": iso(last_success.finished_at) if last_success else None,
        "last_error": _last_error(latest) if latest is not None and latest.error else None,
        "counters": {
            "runs": len(reports),
            "failed_runs": sum(1 for r in reports if r.error),
            "pages": sum(r.pages for r in reports),
            "graph_requests": sum(r.graph_requests for r in reports),
            "activities_created": sum(r.activities_created for r in reports),
            "activities_merged": sum(r.activities_merged for r in reports),
            "reasons": dict(sorted(reasons.items())),
        },
    }


def effective_status(mailbox: Mailbox, settings: OrgSettings) -> tuple[str, str]:
    status, reason = mailbox.effective_status(settings.automation_enabled)
    return status.value, reason


def run_to_json(report: RunReport) -> dict[str, Any]:
    duration = (report.finished_at - report.started_at).total_seconds()
    return {
        "run_id": report.run_id,
        "started_at": iso(report.started_at),
        "finished_at": iso(report.finished_at),
        "duration_ms": max(0, round(duration * 1000)),
        "reasons": dict(sorted((k, int(v)) for k, v in report.reasons.items())),
        "pages": report.pages,
        "graph_requests": report.graph_requests,
        "table_transactions": report.table_transactions,
        "activities_created": report.activities_created,
        "activities_merged": report.activities_merged,
        "more": report.more,
        "error": report.error or None,
        "error_class": report.error_class or None,
    }


def _last_error(report: RunReport) -> dict[str, Any]:
    return {"at": iso(report.finished_at), "class": report.error_class or None, "message": report.error}


def decision_to_json(decision: Decision) -> dict[str, Any]:
    return {
        "store": decision.store,
        "reason": decision.reason.value,
        "direction": decision.direction.value if decision.direction else None,
        "matches": [
            {"record_id": m.record_id, "record_type": m.record_type, "address": m.address, "by": m.by}
            for m in decision.matches
        ],
        "steps": [{"check": s.check, "passed": s.passed, "detail": s.detail} for s in decision.steps],
    }


def storage_to_json(storage: Storage, org: str, mailbox_id: str) -> dict[str, Any]:
    """``remedy``: the request that would log the message, or None when nothing would."""
    base = f"/api/orgs/{quote(org, safe='')}/mailboxes/{quote(mailbox_id, safe='')}"
    remedy: dict[str, Any] | None = None
    if storage.remedy == "backfill":
        remedy = {"action": "backfill", "method": "POST", "path": f"{base}/backfill", "body": {"days": storage.days}}
    elif storage.remedy == "sync_now":
        remedy = {"action": "sync_now", "method": "POST", "path": f"{base}/sync", "body": {}}
        if storage.days is not None:
            remedy["then_backfill_days"] = storage.days
    return {"state": storage.state, "detail": storage.detail, "remedy": remedy}


# -- helpers -----------------------------------------------------------------------------------------


def _existing(svc: Services, org: str, mailbox_id: str) -> Versioned[Mailbox]:
    current = svc.stores.mailboxes.get(org, mailbox_id)
    if current is None:
        raise not_found("mailbox")
    return current


def _reports_of(svc: Services, org: str, mailbox_ids: Iterable[str]) -> list[tuple[RunReport, ...]]:
    ids = list(mailbox_ids)
    if len(ids) <= 1:
        return [svc.stores.runs.recent(org, mailbox_id, REPORTS_KEPT) for mailbox_id in ids]
    with ThreadPoolExecutor(max_workers=min(_LIST_PARALLELISM, len(ids))) as pool:
        return list(pool.map(lambda mailbox_id: svc.stores.runs.recent(org, mailbox_id, REPORTS_KEPT), ids))


def _query_bool(req: ApiRequest, name: str) -> bool:
    raw = req.query.get(name, "").strip().lower()
    if raw in ("", "false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise ApiError(400, "invalid_query", f"'{name}' must be true or false", {"field": name})


def _query_int(req: ApiRequest, name: str, low: int, high: int, default: int) -> int:
    raw = req.query.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_query", f"'{name}' must be an integer from {low} to {high}", {"field": name})
    return int(raw)


__all__ = [
    "add_mailbox",
    "decision_to_json",
    "delete_mailbox",
    "explain_message",
    "get_mailbox",
    "get_run",
    "list_mailboxes",
    "list_runs",
    "mailbox_to_json",
    "run_to_json",
    "sign_out_all_mailboxes",
    "update_mailbox",
]
