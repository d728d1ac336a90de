"""Explain's storage state: what actually happens to a message, and what would log it (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sync_core.domain.model import Decision, EmailAddress, FolderFilter, MailMessage, OrgSettings, Reason
from sync_core.use_cases.explain import READ_MARGIN, backfill_days, storage_of
from sync_core.use_cases.sync_mailbox import Cursor

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
RECEIVED = NOW - timedelta(days=3, hours=2)
MATCHED = Decision(store=True, reason=Reason.MATCHED)


def message(folder: str = "inbox", received: datetime = RECEIVED) -> MailMessage:
    return MailMessage(
        source_id="src-1",
        internet_message_id="<m1@client.example>",
        subject="Offer",
        sender=EmailAddress("carol@client.example"),
        to=(EmailAddress("adele@acme.example"),),
        cc=(),
        received_at=received,
        body_text="",
        folder=folder,
    )


def cursor(written_at: datetime, caught_up: bool = True) -> str:
    return Cursor(caught_up=caught_up, link="https://graph/delta?token=x", written_at=written_at).serialize()


def state(
    decision: Decision = MATCHED,
    *,
    stored: bool = False,
    cursors: dict[str, str] | None = None,
    settings: OrgSettings | None = None,
    received: datetime = RECEIVED,
) -> tuple[str, str, int | None]:
    found = storage_of(
        message(received=received), decision, stored=stored, cursors=cursors or {},
        settings=settings or OrgSettings(), now=NOW,
    )  # fmt: skip
    return found.state, found.remedy, found.days


def test_a_matched_message_a_run_already_read_past_is_passed_and_a_backfill_covering_it_would_log_it() -> None:
    assert state(cursors={"inbox": cursor(RECEIVED + timedelta(hours=1))}) == ("passed", "backfill", 4)


def test_a_matched_message_no_run_read_yet_is_pending_and_sync_now_logs_it() -> None:
    assert state() == ("pending", "sync_now", None)
    assert state(cursors={"inbox": cursor(RECEIVED - timedelta(minutes=1))}) == ("pending", "sync_now", None)


def test_a_cursor_written_right_after_the_message_arrived_cannot_tell_and_says_so() -> None:
    near = {"inbox": cursor(RECEIVED + READ_MARGIN - timedelta(seconds=1))}
    mid_round = {"inbox": cursor(RECEIVED + timedelta(hours=1), caught_up=False)}

    assert state(cursors=near) == ("not_stored", "sync_now", 4)
    assert state(cursors=mid_round) == ("not_stored", "sync_now", 4)


def test_an_org_syncing_every_folder_keys_cursors_by_folder_id_so_the_inbox_cursor_is_unknown() -> None:
    every = OrgSettings(folders=FolderFilter.ALL)

    assert state(cursors={"AAMkAGI2": cursor(RECEIVED + timedelta(hours=1))}, settings=every)[0] == "not_stored"


def test_a_message_before_the_watermark_names_the_backfill_that_covers_it() -> None:
    before = Decision(store=False, reason=Reason.BEFORE_WATERMARK)

    assert state(before) == ("before_watermark", "backfill", 4)
    assert state(before, received=NOW - timedelta(days=400)) == ("before_watermark", "", None)


def test_a_stored_message_and_one_a_rule_refuses_have_no_remedy() -> None:
    assert state(stored=True) == ("stored", "", None)
    assert state(Decision(store=False, reason=Reason.UNMATCHED)) == ("not_logged", "", None)


def test_backfill_days_is_the_fewest_whole_days_that_reach_the_message() -> None:
    assert backfill_days(NOW - timedelta(hours=1), NOW) == 1
    assert backfill_days(NOW - timedelta(days=1), NOW) == 2  # a backfill of 1 day would start exactly at it, later
    assert backfill_days(RECEIVED, NOW) == 4
