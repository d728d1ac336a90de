"""Secrets at rest: nothing the identity platform issued is ever stored in plaintext, and key rotation
re-encrypts token caches under the new key without anyone reconnecting."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from sync_core.adapters.graph.identity import MsalIdentity
from sync_core.adapters.graph.tokens import DelegatedTokenSource
from sync_core.api import push
from sync_core.api.http import ApiError, ApiRequest, ApiResponse
from sync_core.auth.token_cache_store import TableOrgTenantStore
from sync_core.bootstrap import Services
from sync_core.ports import Versioned
from sync_core.ports.identity import OrgTenant, TokenCacheStore, mailbox_owner, tenant_owner
from sync_core.use_cases.connect import (
    add_app_mailbox,
    complete_connect,
    connect_code_key,
    start_connect,
)
from sync_core.use_cases.webhooks import current_secret
from tests.integration.connect_env import KEY_A, KEY_B, ORG, RETURN_URL, ConnectEnv, env, query_of

__all__ = ["env"]  # the fixture


class RecordingTokenStore:
    """Wraps the real store and keeps every serialized MSAL cache handed to it, before encryption."""

    def __init__(self, inner: TokenCacheStore) -> None:
        self.inner = inner
        self.serialized: list[str] = []

    def get(self, org_id: str, owner_key: str) -> Versioned[str] | None:
        return self.inner.get(org_id, owner_key)

    def put(self, org_id: str, owner_key: str, serialized: str, etag: str | None) -> str:
        self.serialized.append(serialized)
        return self.inner.put(org_id, owner_key, serialized, etag)

    def delete(self, org_id: str, owner_key: str) -> None:
        self.inner.delete(org_id, owner_key)

    def delete_org(self, org_id: str) -> int:
        return self.inner.delete_org(org_id)

    def rewrap_if_needed(self, org_id: str, owner_key: str) -> bool:
        return self.inner.rewrap_if_needed(org_id, owner_key)


def secrets_in(serialized: str) -> Iterator[str]:
    """Every token secret of a serialized MSAL cache (access, refresh and id tokens)."""
    for section in ("AccessToken", "RefreshToken", "IdToken"):
        for entry in json.loads(serialized).get(section, {}).values():
            yield str(entry["secret"])


def record_tokens(env: ConnectEnv) -> RecordingTokenStore:
    recorder = RecordingTokenStore(env.tokens)
    env.identity = MsalIdentity(env.settings, recorder, env.http)
    env.deps.identity = env.identity
    env.deps.tokens = recorder
    return recorder


def test_no_storage_entity_ever_contains_an_issued_token_or_pkce_verifier_in_plaintext(env: ConnectEnv) -> None:
    recorder = record_tokens(env)
    adele = env.connect("adele")
    megan = env.connect("megan")
    for result in (adele, megan):
        source = DelegatedTokenSource(env.identity, recorder, env.mailbox(result.mailbox_id))
        source(False)
        source(True)
    assert env.consent().ok
    app_mailbox = add_app_mailbox(env.deps, ORG, env.tenant.users["sales"].mail)
    env.identity.token_source(app_mailbox)(True)
    pending_url = start_connect(env.deps, ORG, "crm-adele", None, RETURN_URL)  # a flow left pending in storage
    parked_url = start_connect(env.deps, ORG, "crm-megan", None, RETURN_URL)
    parked = complete_connect(env.deps, env.authorize(parked_url, "megan"))  # signed in, not confirmed yet

    stored = list(env.stored_values())
    flow = env.deps.flows.take(query_of(pending_url)["state"], env.clock.now())
    waiting = env.deps.flows.take(connect_code_key(ORG, "crm-megan", parked.connect_code), env.clock.now())
    assert flow is not None and waiting is not None
    caches = [*recorder.serialized, str(waiting.flow["cache"])]
    issued = {secret for cache in caches for secret in secrets_in(cache)}

    assert len(issued) >= 10
    assert any(value.startswith("v1.") for value in stored)
    for secret in issued | {str(flow.flow["code_verifier"]), parked.connect_code}:
        assert len(secret) >= 20
        assert not any(secret in value for value in stored), "a secret was stored in plaintext"


def test_rotating_the_key_keeps_every_cache_readable_and_rewrites_them_under_the_new_key(env: ConnectEnv) -> None:
    adele = env.connect("adele")
    megan = env.connect("megan")
    sources: dict[str, Any] = {}
    for result in (adele, megan):
        DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id))(False)
        assert env.tokens.stored_key_id(ORG, f"mailbox:{result.mailbox_id}") == "a"
    pending = start_connect(env.deps, ORG, "crm-adele", env.upn("adele"), RETURN_URL)  # a flow saved under A

    env.rotate(f"{KEY_B},{KEY_A}")
    for result in (adele, megan):
        sources[result.mailbox_id] = DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id))

    assert sources[adele.mailbox_id](False)  # read under the old key; nothing changed, nothing written
    assert env.tokens.stored_key_id(ORG, f"mailbox:{adele.mailbox_id}") == "a"
    assert env.tokens.rewrap_if_needed(ORG, f"mailbox:{adele.mailbox_id}") is True
    assert sources[megan.mailbox_id](True)  # a refresh writes the cache under the new key
    for result in (adele, megan):
        assert env.tokens.stored_key_id(ORG, f"mailbox:{result.mailbox_id}") == "b"
    assert complete_connect(env.deps, env.authorize(pending)).ok

    env.rotate(KEY_B)  # the old key is gone
    for result in (adele, megan):
        assert DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id))(True)


# -- key changes: unreadable secrets fail cleanly, and the maintenance timer re-wraps old keys ----------------


def app_services(env: ConnectEnv, storage_connection_string: str, key_setting: str) -> Services:
    """The app's composition root (``bootstrap.Services``) on this test's tables with that key setting."""
    return Services(
        replace(env.settings, storage_connection_string=storage_connection_string, token_encryption_key=key_setting)
    )


def post_webhook_secret(services: Services, rotate: bool = False) -> ApiResponse:
    query = {"rotate": "true"} if rotate else {}
    return push.webhook_secret(services, ApiRequest("POST", route={"org": ORG}, query=query))


def test_a_webhook_secret_no_configured_key_opens_answers_409_with_a_code_and_rotate_replaces_it(
    env: ConnectEnv, storage_connection_string: str
) -> None:
    before = post_webhook_secret(app_services(env, storage_connection_string, KEY_A))
    assert before.status == 201
    # Operator error: the key id "a" reused for another key.
    changed = app_services(env, storage_connection_string, "a:" + base64.b64encode(b"C" * 32).decode())

    with pytest.raises(ApiError) as refused:
        post_webhook_secret(changed)
    rotated = post_webhook_secret(changed, rotate=True)

    assert (refused.value.status, refused.value.code) == (409, "webhook_secret_unreadable")
    assert "rotate=true" in refused.value.message and before.body["secret"] not in refused.value.message
    assert rotated.status == 201 and rotated.body["secret"] != before.body["secret"]
    assert current_secret(changed.webhook_deps(), ORG) == rotated.body["secret"]  # signs from now on


def test_the_maintenance_timer_rewraps_everything_under_the_old_key_so_dropping_it_breaks_nothing(
    env: ConnectEnv, storage_connection_string: str
) -> None:
    from sync_core.use_cases import maintenance  # noqa: PLC0415 - the timer's use case (absent before it existed)

    adele = env.connect("adele")
    megan = env.connect("megan")
    parked = env.mailbox(megan.mailbox_id)  # a disabled mailbox: no run ever rewrites its cache
    env.mailboxes.replace(replace(parked, enabled=False), env.mailboxes.get(ORG, megan.mailbox_id).etag)  # type: ignore[union-attr]
    tenant_cache = '{"AccessToken": {}}'
    TableOrgTenantStore(env.service, env.prefix).claim(OrgTenant(ORG, env.tenant.id, env.clock.now()))
    env.tokens.put(ORG, tenant_owner(env.tenant.id), tenant_cache, None)
    secret = post_webhook_secret(app_services(env, storage_connection_string, KEY_A)).body["secret"]
    owners = [mailbox_owner(adele.mailbox_id), mailbox_owner(megan.mailbox_id), tenant_owner(env.tenant.id)]

    rotating = app_services(env, storage_connection_string, f"{KEY_B},{KEY_A}")  # step 1: the new key first
    assert [rotating.token_caches.stored_key_id(ORG, owner) for owner in owners] == ["a", "a", "a"]
    counts = maintenance.maintain(rotating.maintenance_deps())  # step 2: the timer's tick

    assert counts == {"rewrapped": 4}  # three caches and the webhook secret
    assert [rotating.token_caches.stored_key_id(ORG, owner) for owner in owners] == ["b", "b", "b"]
    assert rotating.maintenance_deps().secrets.stored_key_id(ORG) == "b"
    assert maintenance.maintain(rotating.maintenance_deps()) == {}  # nothing left under the old key

    env.rotate(KEY_B)  # step 3: the old key dropped
    for result in (adele, megan):
        assert DelegatedTokenSource(env.identity, env.tokens, env.mailbox(result.mailbox_id))(True)
    assert env.tokens.get(ORG, tenant_owner(env.tenant.id)).value == tenant_cache  # type: ignore[union-attr]
    assert current_secret(app_services(env, storage_connection_string, KEY_B).webhook_deps(), ORG) == secret


def test_the_maintenance_timer_rewraps_an_orgs_workspace_service_account_key_too(
    env: ConnectEnv, storage_connection_string: str
) -> None:
    from sync_core.ports.identity import org_access_owner  # noqa: PLC0415
    from sync_core.use_cases import maintenance  # noqa: PLC0415

    env.connect("adele")  # the org is in the catalog through a mailbox
    stored = '{"client_email": "sync@p.iam.gserviceaccount.com", "private_key": "pem"}'
    env.tokens.put(ORG, org_access_owner("google"), stored, None)

    rotating = app_services(env, storage_connection_string, f"{KEY_B},{KEY_A}")
    maintenance.maintain(rotating.maintenance_deps())

    assert rotating.token_caches.stored_key_id(ORG, org_access_owner("google")) == "b"
    env.rotate(KEY_B)
    assert env.tokens.get(ORG, org_access_owner("google")).value == stored  # type: ignore[union-attr]
