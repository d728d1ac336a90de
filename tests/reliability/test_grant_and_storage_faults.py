"""Faults outside Graph's answers, on the real engine: a delegated grant revoked in the middle of a run,
the identity platform down during a token refresh, and Table storage (a dedicated Azurite) stopped in the
middle of a run and started again. Each ends with ``assert_converged`` (see test_faults_during_sync)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import pytest
from azure.data.tables import TableServiceClient

from sync_core.domain.model import MailboxStatus
from sync_core.errors import StorageUnavailable
from sync_core.use_cases.connect import complete_connect, start_connect
from tests.checkpoint_hooks import AtCheckpoint
from tests.integration.sync_env import ORG
from tests.reliability.conftest import AzuriteControl
from tests.reliability.rel_env import Ledger, OffsetClock, RelEnv, assert_converged, at_page


def test_a_grant_revoked_in_the_middle_of_a_run_asks_for_a_reconnect_with_the_reason_and_a_reconnect_resumes_with_no_gap_and_no_duplicate(  # noqa: E501
    rel: RelEnv,
) -> None:
    connected = rel.connect("adele")
    mailbox_id, upn = connected.mailbox_id, rel.tenant.users["adele"].upn
    watermark = rel.mailbox(mailbox_id).watermark
    ledger = Ledger(rel, earliest=watermark).standard(watermark=watermark)

    def revoke() -> None:  # the user changed their password: grant ended, issued access tokens too
        assert rel.client.revoke_grant(upn, rel.tenant.app.client_id, "revoked") >= 1
        rel.client.expire_access_tokens(rel.user_id("adele"))

    first = rel.run(mailbox_id, delegated=True, after_page=at_page(2, revoke))

    assert first.status == "failed" and first.report is not None
    mailbox = rel.mailbox(mailbox_id)
    assert mailbox.status is MailboxStatus.NEEDS_REAUTH
    assert "revoked" in mailbox.status_reason and "AADSTS50173" in mailbox.status_reason
    assert "reconnect" in mailbox.status_reason
    view = rel.crm_view(mailbox_id)
    assert (view["status"], view["status_reason"]) == ("needs_reauth", mailbox.status_reason)
    assert (view["last_error"]["class"], view["last_error"]["message"]) == ("grant", mailbox.status_reason)
    kept = set(rel.activities())
    assert 0 < len(kept) < len(ledger.expected("matched"))  # the pages before the revocation are stored

    # Mail keeps arriving while nobody can read it; runs leave the mailbox alone meanwhile.
    for _ in range(3):
        ledger.matched()
    ledger.unmatched()
    assert rel.run(mailbox_id, delegated=True).status == "skipped"

    again = rel.connect("adele")

    assert again.mailbox_id == mailbox_id
    resumed_box = rel.mailbox(mailbox_id)
    assert resumed_box.status is MailboxStatus.ACTIVE and resumed_box.watermark == watermark
    ledger.matched()
    ledger.sent()
    resumed = rel.run(mailbox_id, delegated=True)
    # Mail that arrived after the Inbox's delta round began comes with the next round: the next poll.
    poll = rel.run(mailbox_id, delegated=True)

    assert resumed.status == "done" and resumed.report is not None and resumed.report.error == ""
    assert poll.status == "done" and poll.report is not None and poll.report.error == ""
    created = resumed.report.activities_created + poll.report.activities_created
    assert created == len(ledger.expected("matched")) - len(kept)
    # It went on from its checkpoint: nothing stored before the revocation was stored again.
    assert resumed.report.activities_merged == poll.report.activities_merged == 0
    assert_converged(rel, ledger, mailbox_id)


def test_the_identity_platform_down_during_a_token_refresh_is_transient_and_never_asks_the_user_to_reconnect(
    rel: RelEnv,
) -> None:
    connected = rel.connect("adele")
    mailbox_id = connected.mailbox_id
    watermark = rel.mailbox(mailbox_id).watermark
    ledger = Ledger(rel, earliest=watermark).standard(matched=9, unmatched=3, sent=3, old=1, watermark=watermark)

    def outage() -> None:
        rel.client.add_fault(status=503, retry_after=30, count=-1, path_contains="/oauth2/v2.0/token")
        rel.client.expire_access_tokens(rel.user_id("adele"))

    first = rel.run(mailbox_id, delegated=True, after_page=at_page(2, outage))

    assert first.status == "more" and first.report is not None
    assert first.report.error_class == "transient"
    assert rel.mailbox(mailbox_id).status is MailboxStatus.ACTIVE
    rel.client.clear_faults()
    second = rel.run(mailbox_id, delegated=True)
    assert second.status == "done"
    assert_converged(rel, ledger, mailbox_id)


def restart_with_key(rel: RelEnv, key_setting: str) -> None:
    """The app restarted with another ``TOKEN_ENCRYPTION_KEY``: ``rel.identity`` (and with it the token
    store and connect wiring) is built again from the new setting on its next use."""
    _ = rel.identity
    rel._msal_http.close()
    del rel._identity
    rel.key_setting = key_setting


def test_a_token_cache_no_configured_key_opens_asks_for_a_reconnect_with_the_reason_instead_of_crashing_the_run(
    rel: RelEnv,
) -> None:
    connected = rel.connect("adele")
    mailbox_id = connected.mailbox_id
    watermark = rel.mailbox(mailbox_id).watermark
    ledger = Ledger(rel, earliest=watermark).standard(matched=6, unmatched=2, sent=2, old=1, watermark=watermark)
    kid = rel.key_setting.partition(":")[0]
    # Operator error: the key id kept for a new key, so the stored cache fails to authenticate.
    restart_with_key(rel, f"{kid}:" + base64.b64encode(os.urandom(32)).decode())

    first = rel.run(mailbox_id, delegated=True)

    assert first.status == "failed" and first.report is not None
    mailbox = rel.mailbox(mailbox_id)
    assert mailbox.status is MailboxStatus.NEEDS_REAUTH
    assert "cannot be decrypted with the configured keys" in mailbox.status_reason
    assert "reconnect" in mailbox.status_reason
    view = rel.crm_view(mailbox_id)
    assert (view["status"], view["status_reason"]) == ("needs_reauth", mailbox.status_reason)
    assert rel.activities() == {}
    assert rel.run(mailbox_id, delegated=True).status == "skipped"  # left alone until reconnected

    again = rel.connect("adele")  # signs in again: a new cache under the configured key

    assert again.mailbox_id == mailbox_id and rel.mailbox(mailbox_id).status is MailboxStatus.ACTIVE
    assert rel.run(mailbox_id, delegated=True).status == "done"
    assert_converged(rel, ledger, mailbox_id)


def test_the_identity_platform_down_while_a_sign_in_completes_gives_a_try_again_result_and_connects_nothing(
    rel: RelEnv,
) -> None:
    _ = rel.identity
    upn = rel.tenant.users["adele"].upn
    url = start_connect(rel.connect_deps, ORG, "crm-adele", upn, rel.allow_return_url())
    callback = dict(parse_qsl(urlsplit(rel.client.authorize(url, upn)).query))
    before = {m.mailbox_id for m in rel.stores.mailboxes.list(ORG)}
    rel.client.add_fault(status=503, count=1, path_contains="/oauth2/v2.0/token")

    result = complete_connect(rel.connect_deps, callback)

    assert not result.ok and result.error == "temporarily_unavailable", result
    assert {m.mailbox_id for m in rel.stores.mailboxes.list(ORG)} == before


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced_in_the_transaction", "classic"])
def test_table_storage_stopped_in_the_middle_of_a_run_fails_the_run_with_storage_unavailable_and_a_rerun_after_the_restart_converges(  # noqa: E501
    own_azurite: AzuriteControl, rel_on: Callable[[TableServiceClient], RelEnv], fenced: bool
) -> None:
    env = rel_on(TableServiceClient.from_connection_string(own_azurite.connection_string))
    ledger = Ledger(env).standard()
    budget = timedelta(seconds=30)

    # Stopped at page 1's checkpoint: page 1's activities durable, nothing of page 2 written yet (classic:
    # its cursor too; fenced: the commit carrying it, the renewal before page 2's save, meets the outage).
    hook = AtCheckpoint(1, own_azurite.stop).wrap(fenced, env.stores.cursors, env.stores.sync_state)
    with pytest.raises(StorageUnavailable):
        env.run(**hook, budget=budget)

    own_azurite.start()
    survived = set(env.activities())
    assert 0 < len(survived) < len(ledger.expected("matched"))  # page 1 was stored before the outage
    # The failed run could not release its lease (storage was down): until it expires (budget + 1 minute)
    # a new run says "busy" rather than running alongside a worker that might still be alive.
    assert env.run().status == "busy"
    assert env.mailbox().status is MailboxStatus.ACTIVE

    later = env.run(clock=OffsetClock(budget + timedelta(minutes=2)))

    assert later.status == "done" and later.report is not None and later.report.error == ""
    assert later.report.activities_created == len(ledger.expected("matched")) - len(survived)
    assert_converged(env, ledger)
