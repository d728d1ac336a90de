"""Connecting mailboxes over HTTP (spec §3): start the delegated sign-in and the tenant admin consent
(CRM routes, function key) and answer the two OAuth redirects (anonymous, protected by their state).

    POST /api/orgs/{org}/mailboxes/connect         {user_id, login_hint?, return_url, provider?} → {authorize_url}
    POST /api/orgs/{org}/mailboxes/connect:confirm {user_id, code}                    → the mailbox
    GET  /api/orgs/{org}/admin-consent             ?tenant=&return_url=               → {consent_url}
    GET  /api/auth/callback                        complete_connect → 302 return URL (connect_code), or a page
    GET  /api/auth/admin-consent/callback          complete_admin_consent → 302 to the consent step, then
                                                   302 return URL, or a result page

Invariants:
- The callbacks trust nothing of their query but what ``complete_*`` verifies against the stored flow;
  they redirect only to the URL the use case returns (a return URL on the org's allow-list).
- Result pages are fixed HTML with the use case's message escaped; no request input is ever reflected.
  Every callback answer is ``no-store`` and sends no referrer (the code was in this URL).
- Use-case errors reach the HTTP edge unmapped: ``sync_core.api.errors`` gives each its status, once.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Literal

from sync_core.api.http import ApiError, ApiRequest, ApiResponse, ok, read_str, reject_unknown
from sync_core.errors import (
    ConcurrencyConflict,
    StorageUnavailable,
    TransientFailure,
    TransientGraphError,
)
from sync_core.use_cases.connect import (
    MAX_RETURN_URL,
    MAX_USER_ID,
    ConnectResult,
    complete_admin_consent,
    complete_connect,
    start_admin_consent,
    start_connect,
)

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

_PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


# -- CRM routes ------------------------------------------------------------------------------------------


def connect_mailbox(svc: Services, req: ApiRequest) -> ApiResponse:
    """Start a CRM user's delegated sign-in; the CRM sends the user's browser to ``authorize_url``.
    ``provider``: ``microsoft`` (default) or ``google``."""
    org = req.param("org")
    body = req.json_body()
    reject_unknown(body, {"user_id", "login_hint", "return_url", "provider"})
    provider = read_str(body, "provider", max_len=32) or "microsoft"
    user_id = read_str(body, "user_id", required=True, max_len=MAX_USER_ID)
    login_hint = read_str(body, "login_hint", max_len=320)
    return_url = read_str(body, "return_url", max_len=MAX_RETURN_URL)
    if not user_id or not user_id.strip():
        raise ApiError(400, "invalid_field", "'user_id' must not be empty", {"field": "user_id"})
    url = start_connect(svc.connect_deps(), org, user_id, login_hint or None, return_url or None, provider)
    return ok({"authorize_url": url})


def admin_consent_url(svc: Services, req: ApiRequest) -> ApiResponse:
    """The tenant admin-consent URL; ``tenant`` is a tenant id or verified domain (default: the admin's)."""
    org = req.param("org")
    tenant = req.query.get("tenant") or None
    return_url = req.query.get("return_url") or None
    if return_url is not None and len(return_url) > MAX_RETURN_URL:
        message = f"'return_url' is over {MAX_RETURN_URL} characters"
        raise ApiError(400, "invalid_field", message, {"field": "return_url"})
    url = start_admin_consent(svc.connect_deps(), org, tenant, return_url)
    return ok({"consent_url": url})


# -- OAuth redirects (anonymous) -------------------------------------------------------------------------


def connect_callback(svc: Services, req: ApiRequest) -> ApiResponse:
    try:
        result = complete_connect(svc.connect_deps(), dict(req.query))
    except (StorageUnavailable, ConcurrencyConflict, TransientFailure):
        result = _unavailable("connect")
    if result.activated:
        svc.mailbox_activated(result.org_id, result.mailbox_id)
    return callback_response(result)


def admin_consent_callback(svc: Services, req: ApiRequest) -> ApiResponse:
    try:
        result = complete_admin_consent(svc.connect_deps(), dict(req.query))
    except (StorageUnavailable, ConcurrencyConflict, TransientGraphError):
        result = _unavailable("admin_consent")
    return callback_response(result)


def _unavailable(kind: Literal["connect", "admin_consent"]) -> ConnectResult:
    message = "The service is temporarily unavailable; please start again from the CRM in a few minutes."
    return ConnectResult(ok=False, kind=kind, message=message, error="temporarily_unavailable")


def callback_response(result: ConnectResult) -> ApiResponse:
    """302 to the next step at Microsoft or to the CRM's (allowed) return URL when there is one, else a
    plain page: 200 on success, 503 when Microsoft was unavailable (worth retrying), 403 for a consent
    without the needed application permissions, 400 for every other failure."""
    if result.redirect_url:
        headers = {"Location": result.redirect_url, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        return ApiResponse(302, "", headers)
    failure_status = {"temporarily_unavailable": 503, "consent_missing_roles": 403}
    status = 200 if result.ok else failure_status.get(result.error, 400)
    return ApiResponse(status, result_page(result), _PAGE_HEADERS)


def result_page(result: ConnectResult) -> str:
    subject = "Mailbox connection" if result.kind == "connect" else "Admin consent"
    outcome = "Done" if result.ok else "Not completed"
    code = "" if result.ok else f'<p class="code">Error code: {html.escape(result.error)}</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(subject)}: {outcome}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;"
        "color:#222}.code{color:#666;font-size:.9rem}</style></head>"
        f"<body><h1>{html.escape(subject)}: {outcome}</h1>"
        f"<p>{html.escape(result.message)}</p>{code}"
        "<p>You can close this window and return to the CRM.</p></body></html>\n"
    )
