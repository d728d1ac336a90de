"""Contract of the small state stores (mailboxes, delta cursors, leases, run reports, org settings) on
both the in-memory doubles and Table storage."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.data.tables import TableServiceClient, UpdateMode

from sync_core.adapters.table_state import TableLeaseStore
from sync_core.adapters.tables import TableStores
from sync_core.domain.model import (
    BulkFilters,
    ConnectionMode,
    DirectionSetting,
    FolderFilter,
    Mailbox,
    MailboxStatus,
    OrgSettings,
)
from sync_core.errors import AlreadyExists, ConcurrencyConflict
from sync_core.ports import RunReport
from tests.contract.conftest import T0, Stores


def mailbox(mailbox_id: str = "mbx-1", org_id: str = "org-1", **changes: Any) -> Mailbox:
    base = Mailbox(
        org_id=org_id,
        mailbox_id=mailbox_id,
        address="bob@agency.example",
        aliases=("bob@agency.example", "robert@agency.example"),
        watermark=T0,
    )
    return dataclasses.replace(base, **changes)


# --- Mailboxes ---


def test_an_added_mailbox_reads_back_with_every_field(stores: Stores) -> None:
    full = mailbox(
        mode=ConnectionMode.APPLICATION,
        tenant_id="tenant-1",
        graph_user_id="graph-user",
        user_id="crm-user-7",
        status=MailboxStatus.NEEDS_REAUTH,
        status_reason="AADSTS70008: the grant expired",
        enabled=False,
        directions=DirectionSetting.SENT,
        never_log=("ceo@client.example", "private.example"),
        provider="imap",
    )
    added = stores.mailboxes.add(full)
    got = stores.mailboxes.get("org-1", "mbx-1")
    assert added.value == got.value == full
    assert got.etag == added.etag


def test_a_mailbox_row_written_before_providers_existed_reads_as_a_microsoft_mailbox(
    table_service: TableServiceClient, table_prefix: str
) -> None:
    tables = TableStores.create(table_service, table_prefix)
    tables.mailboxes.add(mailbox())
    table = table_service.get_table_client(f"{table_prefix}mailboxes")
    row = next(iter(table.list_entities()))
    del row["provider"]
    table.update_entity(row, mode=UpdateMode.REPLACE)
    got = tables.mailboxes.get("org-1", "mbx-1")
    assert got is not None and got.value.provider == "microsoft"


def test_an_unknown_mailbox_is_none(stores: Stores) -> None:
    assert stores.mailboxes.get("org-1", "nope") is None


def test_adding_a_mailbox_twice_is_refused(stores: Stores) -> None:
    stores.mailboxes.add(mailbox())
    with pytest.raises(AlreadyExists):
        stores.mailboxes.add(mailbox(address="someone-else@agency.example"))
    assert stores.mailboxes.get("org-1", "mbx-1").value.address == "bob@agency.example"


def test_replacing_with_the_current_etag_succeeds_and_gives_a_new_one(stores: Stores) -> None:
    added = stores.mailboxes.add(mailbox())
    replaced = stores.mailboxes.replace(mailbox(status=MailboxStatus.PAUSED), added.etag)
    assert replaced.etag != added.etag
    assert stores.mailboxes.get("org-1", "mbx-1") == replaced
    assert replaced.value.status is MailboxStatus.PAUSED


def test_replacing_with_a_stale_etag_is_a_conflict(stores: Stores) -> None:
    added = stores.mailboxes.add(mailbox())
    stores.mailboxes.replace(mailbox(enabled=False), added.etag)
    with pytest.raises(ConcurrencyConflict):
        stores.mailboxes.replace(mailbox(status=MailboxStatus.ERROR), added.etag)
    assert stores.mailboxes.get("org-1", "mbx-1").value.enabled is False


def test_replacing_a_mailbox_that_does_not_exist_is_a_conflict(stores: Stores) -> None:
    added = stores.mailboxes.add(mailbox("mbx-1"))
    with pytest.raises(ConcurrencyConflict):
        stores.mailboxes.replace(mailbox("mbx-2"), added.etag)


def test_listing_returns_an_orgs_mailboxes_by_id_and_no_one_elses(stores: Stores) -> None:
    for mailbox_id in ("mbx-b", "mbx-a", "mbx-c"):
        stores.mailboxes.add(mailbox(mailbox_id))
    stores.mailboxes.add(mailbox("mbx-z", org_id="org-2"))
    assert [m.mailbox_id for m in stores.mailboxes.list("org-1")] == ["mbx-a", "mbx-b", "mbx-c"]
    assert stores.mailboxes.get("org-2", "mbx-a") is None
    assert stores.mailboxes.list("org-3") == ()


def test_a_watermark_in_another_time_zone_comes_back_as_the_same_moment_in_utc(stores: Stores) -> None:
    local = datetime(2026, 3, 2, 10, 30, 15, 654321, tzinfo=timezone(timedelta(hours=1)))
    added = stores.mailboxes.add(mailbox(watermark=local))
    watermark = stores.mailboxes.get("org-1", "mbx-1").value.watermark
    assert watermark == local
    assert watermark.tzinfo == UTC
    assert added.value.watermark.tzinfo == UTC


# --- Cursors ---


def test_delta_links_are_kept_per_folder_and_cleared_together(stores: Stores) -> None:
    long_link = "https://graph.microsoft.com/v1.0/me/mailFolders('inbox')/messages/delta?$deltatoken=" + "x" * 70_000
    stores.cursors.put("org-1", "mbx-1", "inbox", long_link)
    stores.cursors.put("org-1", "mbx-1", "sentitems", "https://graph/delta?2")
    stores.cursors.put("org-1", "mbx-1", "AAMk/folder#id?=", "https://graph/delta?3")
    stores.cursors.put("org-1", "mbx-2", "inbox", "https://graph/other")
    stores.cursors.put("org-1", "mbx-1", "sentitems", "https://graph/delta?2b")
    assert stores.cursors.get_all("org-1", "mbx-1") == {
        "inbox": long_link,
        "sentitems": "https://graph/delta?2b",
        "AAMk/folder#id?=": "https://graph/delta?3",
    }
    stores.cursors.clear("org-1", "mbx-1")
    assert stores.cursors.get_all("org-1", "mbx-1") == {}
    assert stores.cursors.get_all("org-1", "mbx-2") == {"inbox": "https://graph/other"}
    assert stores.cursors.get_all("org-2", "mbx-2") == {}


# --- Leases ---

UNTIL = T0 + timedelta(minutes=10)


def test_several_folders_links_are_stored_at_once_replacing_their_old_ones(stores: Stores) -> None:
    stores.cursors.put("org-1", "mbx-1", "inbox", "https://graph/delta?1")
    stores.cursors.put("org-1", "mbx-1", "archive", "https://graph/delta?a")
    stores.cursors.put_many("org-1", "mbx-1", {"inbox": "https://graph/delta?2", "sentitems": "next x" * 20_000})
    stores.cursors.put_many("org-1", "mbx-1", {})
    assert stores.cursors.get_all("org-1", "mbx-1") == {
        "inbox": "https://graph/delta?2",
        "sentitems": "next x" * 20_000,
        "archive": "https://graph/delta?a",
    }


def test_a_free_lease_is_taken_and_then_refused_to_others(stores: Stores) -> None:
    assert stores.leases.acquire("org-1|mbx-1", "run-a", UNTIL, T0) is True
    assert stores.leases.acquire("org-1|mbx-1", "run-b", UNTIL, T0 + timedelta(minutes=5)) is False
    assert stores.leases.acquire("org-1|mbx-2", "run-b", UNTIL, T0) is True


def test_the_owner_can_renew_its_lease(stores: Stores) -> None:
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert stores.leases.acquire("k", "run-a", UNTIL + timedelta(minutes=10), T0 + timedelta(minutes=9)) is True
    assert stores.leases.acquire("k", "run-b", UNTIL, UNTIL + timedelta(minutes=5)) is False


def test_an_expired_lease_can_be_taken_over(stores: Stores) -> None:
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert stores.leases.acquire("k", "run-b", UNTIL + timedelta(minutes=10), UNTIL) is True
    assert stores.leases.acquire("k", "run-a", UNTIL, T0 + timedelta(minutes=11)) is False


def test_only_the_owner_releases_a_lease(stores: Stores) -> None:
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    stores.leases.release("k", "run-b")
    assert stores.leases.acquire("k", "run-b", UNTIL, T0) is False
    stores.leases.release("k", "run-a")
    assert stores.leases.acquire("k", "run-b", UNTIL, T0) is True
    stores.leases.release("never-taken", "run-a")


def test_of_concurrent_acquirers_exactly_one_wins(stores: Stores) -> None:
    contenders = 6
    start = threading.Barrier(contenders)
    results: list[bool] = []

    def contend(owner: str) -> None:
        start.wait()
        results.append(stores.leases.acquire("org-1|busy", owner, UNTIL, T0))

    threads = [threading.Thread(target=contend, args=(f"run-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * (contenders - 1) + [True]


def test_a_renewal_extends_the_owners_lease_so_others_wait_longer(stores: Stores) -> None:
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert stores.leases.renew("k", "run-a", UNTIL + timedelta(minutes=10)) is True
    assert stores.leases.acquire("k", "run-b", UNTIL, UNTIL + timedelta(minutes=5)) is False
    assert stores.leases.acquire("k", "run-b", UNTIL, UNTIL + timedelta(minutes=10)) is True


def test_a_renewal_fails_once_another_owner_took_the_expired_lease_even_after_it_released_it(stores: Stores) -> None:
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert stores.leases.acquire("k", "run-b", UNTIL + timedelta(minutes=10), UNTIL) is True
    assert stores.leases.renew("k", "run-a", UNTIL + timedelta(minutes=20)) is False
    stores.leases.release("k", "run-b")
    assert stores.leases.renew("k", "run-a", UNTIL + timedelta(minutes=20)) is False
    assert stores.leases.acquire("k", "run-c", UNTIL, T0) is True  # the failed renewals took nothing


def test_an_expired_lease_nobody_took_is_renewed_by_its_owner(stores: Stores) -> None:
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert stores.leases.renew("k", "run-a", UNTIL + timedelta(minutes=10)) is True  # asked after UNTIL
    assert stores.leases.acquire("k", "run-b", UNTIL, UNTIL + timedelta(minutes=1)) is False


def test_a_lease_released_or_never_taken_is_not_renewed(stores: Stores) -> None:
    assert stores.leases.renew("never-taken", "run-a", UNTIL) is False
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    stores.leases.release("k", "run-a")
    assert stores.leases.renew("k", "run-a", UNTIL) is False
    assert stores.leases.acquire("k", "run-b", UNTIL, T0) is True


def test_a_take_over_fences_out_a_live_holder_and_says_it_was_live(stores: Stores) -> None:
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert stores.leases.take_over("k", "disconnect", UNTIL + timedelta(minutes=10), T0 + timedelta(minutes=1)) is True
    assert stores.leases.renew("k", "run-a", UNTIL + timedelta(minutes=20)) is False
    assert stores.leases.acquire("k", "run-b", UNTIL, UNTIL + timedelta(minutes=5)) is False
    stores.leases.release("k", "disconnect")
    assert stores.leases.acquire("k", "run-b", UNTIL, T0) is True


def test_a_take_over_of_a_free_or_expired_lease_says_nobody_was_writing(stores: Stores) -> None:
    assert stores.leases.take_over("free", "disconnect", UNTIL, T0) is False
    stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert stores.leases.take_over("k", "disconnect", UNTIL + timedelta(minutes=10), UNTIL) is False
    assert stores.leases.renew("k", "run-a", UNTIL + timedelta(minutes=20)) is False


def test_a_lease_taken_through_one_table_adapter_is_renewed_through_another_only_while_its_owner_holds_it(
    table_service: TableServiceClient, table_prefix: str, table_stores: TableStores
) -> None:
    elsewhere = TableLeaseStore(table_service, table_prefix)
    table_stores.leases.acquire("k", "run-a", UNTIL, T0)
    assert elsewhere.renew("k", "run-a", UNTIL + timedelta(minutes=10)) is True
    assert table_stores.leases.renew("k", "run-a", UNTIL + timedelta(minutes=20)) is False  # its ETag is stale
    assert table_stores.leases.take_over("k", "disconnect", UNTIL, T0) is True
    assert elsewhere.renew("k", "run-a", UNTIL + timedelta(minutes=30)) is False


# --- Run reports ---


def report(run: int, mailbox_id: str = "mbx-1", **changes: Any) -> RunReport:
    started = T0 + timedelta(minutes=5 * run)
    base = RunReport(
        org_id="org-1",
        mailbox_id=mailbox_id,
        run_id=f"run-{run}",
        started_at=started,
        finished_at=started + timedelta(seconds=42, microseconds=17),
        reasons={"matched": 3, "unmatched": 12},
        pages=2,
        graph_requests=5,
        table_transactions=27,
        activities_created=2,
        activities_merged=1,
    )
    return dataclasses.replace(base, **changes)


def test_run_reports_come_back_newest_first_with_every_field(stores: Stores) -> None:
    for run in (1, 3, 2):
        stores.runs.add(report(run), keep=10)
    failed = report(4, more=True, error="Graph throttled past the wait budget", error_class="transient")
    stores.runs.add(failed, keep=10)
    recent = stores.runs.recent("org-1", "mbx-1", 10)
    assert [r.run_id for r in recent] == ["run-4", "run-3", "run-2", "run-1"]
    assert recent[0] == failed
    assert stores.runs.recent("org-1", "mbx-1", 2) == recent[:2]


def test_only_the_newest_reports_per_mailbox_are_kept(stores: Stores) -> None:
    for run in range(6):
        stores.runs.add(report(run), keep=3)
        stores.runs.add(report(run, mailbox_id="mbx-2"), keep=5)
    assert [r.run_id for r in stores.runs.recent("org-1", "mbx-1", 10)] == ["run-5", "run-4", "run-3"]
    assert len(stores.runs.recent("org-1", "mbx-2", 10)) == 5
    assert stores.runs.recent("org-2", "mbx-1", 10) == ()


def test_adding_the_same_run_twice_keeps_one_report(stores: Stores) -> None:
    stores.runs.add(report(1), keep=5)
    stores.runs.add(report(1, pages=9), keep=5)
    assert [r.pages for r in stores.runs.recent("org-1", "mbx-1", 5)] == [9]


# --- Settings ---


def test_an_org_without_saved_settings_gets_the_defaults(stores: Stores) -> None:
    assert stores.settings.get("org-1") == OrgSettings()


def test_every_setting_round_trips(stores: Stores) -> None:
    settings = OrgSettings(
        internal_domains=("agency.example", "agency-group.example"),
        never_log=("ceo@client.example", "hr.example"),
        blocked_domains=("gmail.com",),
        bulk_filters=BulkFilters(list_headers=False, precedence=True, auto_submitted=False, noreply_senders=True),
        match_by_domain=True,
        ambiguity="prefer",
        type_order=("candidate", "contact", "lead", "account"),
        folders=FolderFilter.ALL,
        poll_interval_minutes=15,
        return_url_allow_list=("https://crm.example/return",),
        webhook_url="https://crm.example/hooks/activities",
        automation_enabled=False,
    )
    stores.settings.put("org-1", settings)
    assert stores.settings.get("org-1") == settings
    assert stores.settings.get("org-2") == OrgSettings()


def test_putting_settings_again_replaces_them_entirely(stores: Stores) -> None:
    stores.settings.put("org-1", OrgSettings(webhook_url="https://crm.example/hook", never_log=("a@b.example",)))
    stores.settings.put("org-1", OrgSettings(poll_interval_minutes=30))
    assert stores.settings.get("org-1") == OrgSettings(poll_interval_minutes=30)


def test_a_long_never_log_list_round_trips(stores: Stores) -> None:
    settings = OrgSettings(never_log=tuple(f"private-person-{i:05d}@client.example" for i in range(3_000)))
    stores.settings.put("org-1", settings)
    assert stores.settings.get("org-1") == settings
