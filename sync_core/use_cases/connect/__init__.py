"""Connecting mailboxes (spec §3): delegated sign-in, admin consent, application mode, disconnect.

One module per job, each with the invariants it keeps: ``delegated`` (a CRM user's sign-in and its
confirmation), ``admin_consent`` (the tenant admin's consent chain), ``app_mode`` (adding a mailbox of a
consented tenant), ``org_access`` (a Google Workspace service account and the mailboxes it
reads), ``disconnect`` (disconnect and sign-out), ``return_urls`` (the return-URL policy),
``results`` (what a callback answers) and ``common`` (deps, results, and how an account becomes an active
mailbox). This package exports their public names, so ``sync_core.use_cases.connect`` is imported as one
use case by the API, bootstrap and tests."""

from sync_core.use_cases.connect.admin_consent import (
    complete_admin_consent,
    missing_app_roles,
    required_app_roles,
    start_admin_consent,
)
from sync_core.use_cases.connect.app_mode import add_app_mailbox
from sync_core.use_cases.connect.common import (
    ADMIN_CONSENT_CALLBACK_PATH,
    CALLBACK_PATH,
    MAX_USER_ID,
    ConnectDeps,
    ConnectProvider,
    ConnectResult,
    DisconnectResult,
    aliases_from_profile,
    mailbox_id_for,
)
from sync_core.use_cases.connect.delegated import (
    MAX_CONNECT_CODE,
    complete_connect,
    confirm_connect,
    connect_code_key,
    start_connect,
    tenant_allowed,
)
from sync_core.use_cases.connect.disconnect import SIGNED_OUT_REASON, disconnect, sign_out_all
from sync_core.use_cases.connect.org_access import (
    ORG_ACCESS_REMOVED,
    add_org_mailbox,
    install_org_access,
    org_access_of,
    remove_org_access,
)
from sync_core.use_cases.connect.return_urls import MAX_RETURN_URL, return_url_allowed, with_params
from sync_core.use_cases.connect.server_mode import SERVER_PROVIDERS, add_server_mailbox, change_server_credentials

__all__ = [
    "ADMIN_CONSENT_CALLBACK_PATH",
    "CALLBACK_PATH",
    "MAX_CONNECT_CODE",
    "MAX_RETURN_URL",
    "MAX_USER_ID",
    "ORG_ACCESS_REMOVED",
    "SERVER_PROVIDERS",
    "SIGNED_OUT_REASON",
    "ConnectDeps",
    "ConnectProvider",
    "ConnectResult",
    "DisconnectResult",
    "add_app_mailbox",
    "add_org_mailbox",
    "add_server_mailbox",
    "aliases_from_profile",
    "change_server_credentials",
    "complete_admin_consent",
    "complete_connect",
    "confirm_connect",
    "connect_code_key",
    "disconnect",
    "install_org_access",
    "mailbox_id_for",
    "missing_app_roles",
    "org_access_of",
    "remove_org_access",
    "required_app_roles",
    "return_url_allowed",
    "sign_out_all",
    "start_admin_consent",
    "start_connect",
    "tenant_allowed",
    "with_params",
]
