"""An org's Google Workspace service account (org-wide access), CRM routes (function key):

    PUT    /api/orgs/{org}/google/service-account   the key file JSON → 200 {service_account, resumed}
    GET    /api/orgs/{org}/google/service-account   → {service_account} or 404
    DELETE /api/orgs/{org}/google/service-account   → {held: n} (its mailboxes go to needs_reauth)

Invariants:
- The body of PUT is the key file exactly as downloaded from the Cloud console; it is validated
  (shape, and a token Google issues for the service account itself) before it is stored, encrypted.
  No answer ever carries the private key; nothing about the key is logged.
- Mailboxes are then added with ``POST /api/orgs/{org}/mailboxes`` ``{"address", "provider": "google"}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sync_core.api.http import ApiRequest, ApiResponse, not_found, ok
from sync_core.use_cases.connect import install_org_access, org_access_of, remove_org_access

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

PROVIDER = "google"
MAX_KEY_FILE_BYTES = 16 * 1024  # a key file is about 2.4 kB


def put_service_account(svc: Services, req: ApiRequest) -> ApiResponse:
    """Store (or replace) the org's service account key; mailboxes its removal held resume."""
    org = req.param("org")
    body = req.json_body(max_bytes=MAX_KEY_FILE_BYTES)
    description, resumed = install_org_access(svc.connect_deps(), org, PROVIDER, body)
    for mailbox_id in resumed:
        svc.mailbox_activated(org, mailbox_id)
    return ok({"service_account": description, "resumed": resumed})


def get_service_account(svc: Services, req: ApiRequest) -> ApiResponse:
    description = org_access_of(svc.connect_deps(), req.param("org"), PROVIDER)
    if description is None:
        raise not_found("service account")
    return ok({"service_account": description})


def delete_service_account(svc: Services, req: ApiRequest) -> ApiResponse:
    """Remove the key; every Google mailbox added through it goes to ``needs_reauth``. Idempotent."""
    held = remove_org_access(svc.connect_deps(), req.param("org"), PROVIDER)
    return ok({"held": held})
