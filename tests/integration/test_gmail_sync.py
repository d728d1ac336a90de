"""Gmail mailboxes beyond the shared engine suite (tests/integration/test_sync_engine.py runs on Gmail
too): a revoked grant, Gmail's quota errors, and one message seen by a Gmail and a Microsoft 365
mailbox of the same org. The Google emulator over HTTPS, every store on Azurite; each test ends in one
check of the end state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from emulator.google.server import GoogleEmulatorServer
from sync_core.domain.model import FolderFilter, OrgSettings
from tests.integration.gmail_env import GmailSyncEnv, gmail_env
from tests.integration.sync_env import ADELE, CAROL, DAN, NEVER_LOG, ORG, STRANGER, SyncEnv, sync_env

__all__ = ["gmail_env", "sync_env"]  # the fixtures


def stored_subjects(env: SyncEnv) -> list[str]:
    return sorted(a.subject for a in env.activities().values())


def test_a_gmail_mailbox_whose_grant_was_revoked_needs_reauth_with_googles_reason_and_keeps_what_it_stored(
    gmail_env: GmailSyncEnv,
) -> None:
    env = gmail_env
    adele = env.address("adele")
    env.deliver("adele", subject="Before", from_=CAROL, to=[adele])
    assert env.sync(ADELE).status == "done"
    env.revoke_grant("adele")  # the person removed the app in their Google Account
    env.deliver("adele", subject="After", from_=CAROL, to=[adele])

    outcome = env.sync(ADELE)

    found = env.stores.mailboxes.get(ORG, ADELE)
    assert found is not None and outcome.report is not None
    assert (
        outcome.status, outcome.report.error_class, found.value.status.value,
        "invalid_grant" in found.value.status_reason, "connect the mailbox again" in found.value.status_reason,
        stored_subjects(env),
    ) == ("failed", "grant", "needs_reauth", True, True, ["Before"])  # fmt: skip


@pytest.mark.parametrize("quota_status", [429, 403])
def test_a_sync_through_gmail_quota_errors_backs_off_and_stores_every_matched_message_exactly_once(
    gmail_env: GmailSyncEnv, quota_status: int
) -> None:
    env = gmail_env
    adele = env.address("adele")
    start = datetime.now(UTC) - timedelta(minutes=5)
    env.deliver_many("adele", 12, start=start, subject="Busy", from_=CAROL, to=[adele])
    env.deliver_many("adele", 6, start=start, subject="Noise", from_=STRANGER, to=[adele])
    env.deliver_many("adele", 3, start=start, subject="Sent", from_=adele, to=[DAN], folder="sentitems")
    # A user's quota far below one batch of reads (5 units a message), refilled every second, plus
    # Google's per-method rate limit errors on history and body reads.
    env.set_config(user_quota_units=60, quota_window_s=1, quota_error_status=quota_status)
    env.add_fault(status=quota_status, reason="rateLimitExceeded", count=2, path_contains="/history")
    env.add_fault(status=403, reason="userRateLimitExceeded", count=2, path_contains="format=full")
    before = env.requests_seen("adele")["by_status"]

    first = env.sync(ADELE, page_size=5)
    env.deliver("adele", subject="Later", from_=DAN, to=[adele])
    env.add_fault(status=quota_status, reason="rateLimitExceeded", count=1, path_contains="/history")
    second = env.sync(ADELE, page_size=5)

    statuses = env.requests_seen("adele")["by_status"]
    refused = statuses.get(str(quota_status), 0) - before.get(str(quota_status), 0)
    expected = sorted([f"Busy #{n}" for n in range(1, 13)] + [f"Sent #{n}" for n in range(1, 4)] + ["Later"])
    assert (first.status, second.status, refused >= 3, stored_subjects(env)) == ("done", "done", True, expected)


@pytest.fixture
def gmail_beside_graph(
    sync_env: SyncEnv, google_emulator: GoogleEmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[GmailSyncEnv]:
    """Gmail mailboxes ``mb-gina`` (adele@ a Google domain) and ``mb-gail`` in ``sync_env``'s org and tables."""
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(Path(sync_env.ca_bundle).read_bytes() + google_emulator.tls.ca_pem.read_bytes())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    env = GmailSyncEnv(
        google_emulator, sync_env.service, sync_env.prefix, str(bundle), sync_env.watermark,
        stores=sync_env.stores, mailbox_ids=("mb-gina", "mb-gail"),
    )  # fmt: skip
    settings = sync_env.stores.settings.get(ORG)
    sync_env.stores.settings.put(
        ORG, OrgSettings(internal_domains=(*settings.internal_domains, env.domain), never_log=NEVER_LOG)
    )
    try:
        yield env
    finally:
        env.close()


def test_one_message_seen_by_a_gmail_and_a_microsoft_365_mailbox_of_the_org_is_one_activity_with_both(
    sync_env: SyncEnv, gmail_beside_graph: GmailSyncEnv
) -> None:
    graph, gmail = sync_env, gmail_beside_graph
    both = [graph.address("adele"), gmail.address("adele")]
    shared = f"<cross-provider-{datetime.now(UTC).timestamp()}@client.example>"
    graph.deliver("adele", subject="To both", from_=CAROL, to=both, internet_message_id=shared)
    gmail.deliver("adele", subject="To both", from_=CAROL, to=both, internet_message_id=shared)

    from_graph = graph.sync(ADELE)
    from_gmail = gmail.sync("mb-gina")
    again = [graph.sync(ADELE), gmail.sync("mb-gina")]

    stored = graph.activities()
    assert (
        [o.report is not None and (o.report.activities_created, o.report.activities_merged)
         for o in (from_graph, from_gmail, *again)],
        {imid: (sorted(a.mailbox_ids), sorted(r.record_id for r in a.records)) for imid, a in stored.items()},
    ) == ([(1, 0), (0, 1), (0, 0), (0, 0)], {shared: ([ADELE, "mb-gina"], ["c-carol"])})  # fmt: skip


def test_with_all_folders_every_label_but_spam_trash_and_drafts_is_synced_and_explain_finds_a_copy(
    gmail_env: GmailSyncEnv,
) -> None:
    env = gmail_env
    adele = env.address("adele")
    settings = env.stores.settings.get(ORG)
    env.stores.settings.put(ORG, replace(settings, folders=FolderFilter.ALL))
    delivered = {}
    for subject, labels in [("Filed", ["Projects"]), ("Starred archive", ["STARRED"]), ("In inbox", ["INBOX"]),
                            ("Junk", ["SPAM"]), ("Binned", ["TRASH"])]:  # fmt: skip
        mid = f"<{subject.replace(' ', '-').lower()}-{ORG}@client.example>"
        env._call("POST", f"users/{adele}/messages", {"from": CAROL, "to": [adele], "subject": subject,
                                                      "message_id": mid, "labels": labels})  # fmt: skip
        delivered[subject] = mid

    outcome = env.sync(ADELE)
    found = env.mail_source().find_message(env.mailboxes[ADELE], delivered["In inbox"].strip("<>"))
    junk = env.mail_source().find_message(env.mailboxes[ADELE], delivered["Junk"])

    assert (
        outcome.status, stored_subjects(env), found is not None and (found.folder, found.subject),
        junk is not None and junk.folder,
    ) == ("done", ["Filed", "In inbox", "Starred archive"], ("inbox", "In inbox"), "junkemail")  # fmt: skip
