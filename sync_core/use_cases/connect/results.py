"""What an OAuth callback answers: a result (the API renders it as a page or a redirect), never an exception.

Invariants:
- An OAuth round trip is bound to the org, CRM user, return URL and kind it was started for: the
  callback trusts only the flow stored under its ``state`` (single use, 10 minutes), never its own query
  parameters for those. A state that is missing, unknown, expired, replayed or of the other kind changes
  nothing.
- A redirect goes only to the flow's return URL, and only while it is still on the org's allow-list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Literal

from sync_core.ports.identity import (
    PendingAuthFlow,
)
from sync_core.use_cases.connect.common import ConnectDeps, ConnectResult
from sync_core.use_cases.connect.return_urls import return_url_allowed, with_params

_DECLINED = {"access_denied", "consent_required", "interaction_required"}


def invalid_state(kind: Literal["connect", "admin_consent"]) -> ConnectResult:
    return ConnectResult(
        ok=False,
        kind=kind,
        error="invalid_state",
        message="This sign-in link is invalid, expired or was already used. Please start again from the CRM.",
    )


def callback_error(params: Mapping[str, str], declined: str) -> tuple[str, str]:
    error = params.get("error", "")
    description = params.get("error_description", "")
    aadsts = re.search(r"AADSTS(\d+)", description)
    code = f" (AADSTS{aadsts.group(1)})" if aadsts else ""
    if error in _DECLINED or (aadsts and aadsts.group(1) == "65004"):
        return "consent_declined", f"{declined}{code}"
    return "sign_in_failed", f"Microsoft sign-in returned an error: {error[:64]}{code}"


def failer(
    kind: Literal["connect", "admin_consent"], pending: PendingAuthFlow, deps: ConnectDeps
) -> Callable[[str, str], ConnectResult]:
    def fail(error: str, message: str) -> ConnectResult:
        return ConnectResult(
            ok=False,
            kind=kind,
            message=message,
            error=error,
            org_id=pending.org_id,
            redirect_url=redirect_url_for(deps, pending, {"status": "error", "error": error}),
        )

    return fail


def redirect_url_for(deps: ConnectDeps, pending: PendingAuthFlow, params: Mapping[str, str]) -> str | None:
    if not pending.return_url:
        return None
    if not return_url_allowed(pending.return_url, deps.settings.get(pending.org_id).return_url_allow_list):
        return None
    return with_params(pending.return_url, params)
