"""The sync run end to end: Graph over HTTPS (the emulator), every store on Azurite, nothing mocked.
Tests taking ``mail_env`` run on each provider: Microsoft 365 mailboxes (Graph emulator), Gmail mailboxes
(Google emulator, ``tests/integration/gmail_env.py``) and IMAP mailboxes (the real Dovecot,
``tests/integration/imap_world.py``), with the same mail and the same expectations.

Expectations are computed from the mail each test delivers (which record each address is on, which
folder, which mailbox), never by calling the decision pipeline; internet message ids and Graph ids come
from the emulator (its control API answers, or a direct Graph listing of the mailbox).

Only request counts differ by provider: an idle IMAP poll is a LOGIN and one LIST-STATUS command for every
folder (RFC 5819) where Graph answers one ``$batch``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.adapters.tables import TableActivityStore
from sync_core.domain.model import Activity, activity_id_for
from sync_core.ports import ActivityWrite
from tests.integration.gmail_env import gmail_env, mail_env
from tests.integration.sync_env import (
    ADELE,
    CAROL,
    DAN,
    ERIN,
    FRANK,
    LAWYER,
    MEGAN,
    ORG,
    SHARED,
    STRANGER,
    SyncEnv,
    imap_env,
    iso,
    record_ids,
    sync_env,
)

__all__ = ["gmail_env", "imap_env", "mail_env", "sync_env"]  # the fixtures

MAILBOX_OF = {"adele": ADELE, "megan": MEGAN}
IDLE_POLL_REQUESTS = {"microsoft": 1, "google": 1, "imap": 2}  # as the run reports them
LIST_UNSUBSCRIBE = [{"name": "List-Unsubscribe", "value": "<mailto:unsubscribe@client.example>"}]


@dataclass(frozen=True)
class Expect:
    """What should become of one delivered message: ``reason`` as the run report counts it, or
    ``invisible`` for mail older than the watermark (Graph's filter never returns it)."""

    reason: str
    records: frozenset[str] = frozenset()
    direction: str = "received"

    @property
    def stored(self) -> bool:
        return self.reason == "matched"


def matched(*records: str, direction: str = "received") -> Expect:
    return Expect("matched", frozenset(records), direction)


INVISIBLE = Expect("invisible")


class MailPlan:
    """The mail a test delivered, by (user, subject), with what should become of each message."""

    def __init__(self, env: SyncEnv) -> None:
        self.env = env
        self.expect: dict[tuple[str, str], Expect] = {}
        self.delivered = 0

    def many(self, user: str, count: int, subject: str, expect: Expect, *, start: datetime, **fields: Any) -> None:
        self.env.deliver_many(user, count, start=start, subject=subject, **fields)
        for n in range(1, count + 1):
            self._add(user, f"{subject} #{n}", expect)

    def one(self, user: str, subject: str, expect: Expect, **fields: Any) -> dict[str, Any]:
        ids = self.env.deliver(user, subject=subject, **fields)
        self._add(user, subject, expect)
        return ids

    def sent_by(self, user: str, subject: str, expect: Expect, **fields: Any) -> dict[str, Any]:
        """Sent through the emulator's transport: the sender's Sent Items copy is the one planned here;
        copies delivered to other mailboxes of the tenant must be planned by the caller."""
        answer = self.env.send(user, subject=subject, **fields)
        self._add(user, subject, expect)
        return answer

    def also(self, user: str, subject: str, expect: Expect) -> None:
        self._add(user, subject, expect)

    def _add(self, user: str, subject: str, expect: Expect) -> None:
        assert (user, subject) not in self.expect, f"subjects must be unique per mailbox: {subject}"
        self.expect[(user, subject)] = expect
        self.delivered += 1

    def message_ids(self) -> dict[tuple[str, str], str]:
        """(user, subject) -> internetMessageId, from a Graph listing of every planned mailbox."""
        found: dict[tuple[str, str], str] = {}
        for user in sorted({user for user, _ in self.expect}):
            for folder in ("inbox", "sentitems"):
                for item in self.env.listing(user, folder):
                    found[(user, item["subject"])] = item["internetMessageId"]
        assert set(found) == set(self.expect), "the mailboxes hold exactly the planned mail"
        return found

    def expected_activities(self) -> dict[str, tuple[frozenset[str], frozenset[str], str]]:
        """internetMessageId -> (record ids, mailbox ids, direction) of every message that must be stored."""
        ids = self.message_ids()
        out: dict[str, tuple[frozenset[str], frozenset[str], str]] = {}
        for (user, subject), expect in self.expect.items():
            if not expect.stored:
                continue
            imid = ids[(user, subject)]
            records, mailboxes, direction = out.get(imid, (expect.records, frozenset(), expect.direction))
            assert records == expect.records
            out[imid] = (records, mailboxes | {MAILBOX_OF[user]}, direction)
        return out

    def reasons(self, user: str) -> dict[str, int]:
        counts = Counter(e.reason for (u, _), e in self.expect.items() if u == user and e.reason != "invisible")
        return dict(counts)


def stored_shape(activities: dict[str, Activity]) -> dict[str, tuple[frozenset[str], frozenset[str], str]]:
    return {imid: (record_ids(a), frozenset(a.mailbox_ids), a.direction.value) for imid, a in activities.items()}


def counted(reasons: dict[str, int]) -> dict[str, int]:
    return {reason: n for reason, n in reasons.items() if n}


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# -- 1. a large mixed mailbox ---------------------------------------------------------------------------


def test_a_mailbox_of_two_thousand_mixed_messages_syncs_to_exactly_the_matched_activities_and_then_idles(
    mail_env: SyncEnv,
) -> None:
    env, plan = mail_env, MailPlan(mail_env)
    recent, wm = now() - timedelta(minutes=1), env.watermark
    megan, alias = env.address("megan"), f"adele.vance@{env.domain}"
    adele = env.address("adele")
    plan.many("adele", 120, "Carol update", matched("c-carol"), start=recent, from_=CAROL, to=[adele])
    plan.many("adele", 50, "Dan and Erin", matched("c-dan", "c-erin"), start=recent, from_=DAN, to=[adele], cc=[ERIN])
    plan.many(
        "adele", 60, "Proposal", matched("c-carol", direction="sent"),
        start=recent, from_=adele, to=[CAROL], folder="sentitems",
    )  # fmt: skip
    plan.many("adele", 300, "Lunch", Expect("internal"), start=recent, from_=megan, to=[adele])
    plan.many(
        "adele", 200, "Newsletter", Expect("bulk"), start=recent, from_=CAROL, to=[adele], headers=LIST_UNSUBSCRIBE
    )
    plan.many("adele", 100, "Privileged", Expect("never_log"), start=recent, from_=LAWYER, to=[adele])
    plan.many("adele", 100, "Info request", Expect("ambiguous"), start=recent, from_=SHARED, to=[adele])
    # Older than the watermark: never read, never stored, not even counted.
    plan.many("adele", 30, "Old carol", INVISIBLE, start=wm - timedelta(hours=1), from_=CAROL, to=[adele])
    plan.many(
        "adele", 10, "Old proposal", INVISIBLE,
        start=wm - timedelta(hours=2), from_=adele, to=[CAROL], folder="sentitems",
    )  # fmt: skip
    plan.one("adele", "At the watermark", matched("c-carol"), from_=CAROL, to=[adele], received=iso(wm))
    plan.one("adele", "Just before", INVISIBLE, from_=CAROL, to=[adele], received=iso(wm - timedelta(seconds=1)))
    for k in range(3):
        plan.one(
            "adele", f"From my alias {k}", matched("c-carol", direction="sent"),
            from_=alias, to=[CAROL], folder="sentitems",
        )  # fmt: skip
    # Threads across mailboxes: Frank writes to Adele, Megan answers him from her own mailbox.
    roots = [
        plan.one("adele", f"Thread {k}", matched("c-frank"), from_=FRANK, to=[adele], received=iso(recent))
        for k in range(10)
    ]
    for k, root in enumerate(roots):
        plan.sent_by(
            "megan", f"RE: Thread {k}", matched("c-frank", direction="sent"),
            to=[FRANK], in_reply_to=root["internetMessageId"], references=[root["internetMessageId"]],
        )  # fmt: skip
    # Seen by both mailboxes: one activity each.
    for k in range(5):
        shared = f"<shared-{k}-{uuid.uuid4().hex}@client.example>"
        fields = {"from_": CAROL, "to": [adele, megan], "internet_message_id": shared}
        plan.one("adele", f"Shared {k}", matched("c-carol"), **fields)
        plan.one("megan", f"Shared {k}", matched("c-carol"), **fields)
    unmatched = 2000 - plan.delivered
    plan.many("adele", unmatched, "Cold pitch", Expect("unmatched"), start=recent, from_=STRANGER, to=[adele])
    assert plan.delivered == 2000
    expected = plan.expected_activities()
    before = env.requests_seen("adele")["requests"]

    first = env.sync(ADELE)
    second = env.sync(MEGAN)

    assert first.status == "done" and second.status == "done", (first, second)
    assert first.report is not None and second.report is not None
    stored = env.activities()
    assert stored_shape(stored) == expected
    assert all(a.received_at >= wm for a in stored.values())
    assert counted(first.report.reasons) == plan.reasons("adele")
    assert counted(second.report.reasons) == plan.reasons("megan")
    assert first.report.activities_created == sum(1 for _, boxes, _ in expected.values() if ADELE in boxes)
    assert (second.report.activities_created, second.report.activities_merged) == (10, 5)
    if env.provider != "google":  # Gmail's batches count once here, and each of their calls there
        assert first.report.graph_requests == env.requests_seen("adele")["requests"] - before
    # A reply Megan sent joins the thread of the message Frank sent Adele, oldest first.
    ids = plan.message_ids()
    for k in range(10):
        root, reply = stored[ids[("adele", f"Thread {k}")]], stored[ids[("megan", f"RE: Thread {k}")]]
        assert root.thread_id == reply.thread_id
        assert [a.internet_message_id for a in env.stores.activities.thread(ORG, root.thread_id)] == [
            root.internet_message_id,
            reply.internet_message_id,
        ]
    sample = stored[ids[("adele", "Dan and Erin #7")]]
    assert (sample.sender and sample.sender.address, [p.address for p in sample.cc]) == (DAN, [ERIN])
    assert sample.subject == "Dan and Erin #7" and sample.direction.value == "received"

    # The next poll of an idle mailbox: nothing new, both folders in one $batch request (IMAP: LOGIN, then
    # one LIST-STATUS for both).
    seen = env.requests_seen("adele")
    again = env.sync(ADELE)
    again_megan = env.sync(MEGAN)

    assert again.status == "done" and again.report is not None and again_megan.report is not None
    assert (again.report.activities_created, again.report.activities_merged) == (0, 0)
    assert (again_megan.report.activities_created, again_megan.report.activities_merged) == (0, 0)
    assert again.report.graph_requests == IDLE_POLL_REQUESTS[env.provider]
    after = env.requests_seen("adele")
    if env.provider == "imap":
        assert after["requests"] - seen["requests"] == IDLE_POLL_REQUESTS["imap"]
    else:
        assert after["requests"] - seen["requests"] == 2  # the batch's two delta sub-requests, nothing else
        assert after["by_status"].get("200", 0) - seen["by_status"].get("200", 0) == 2
    assert stored_shape(env.activities()) == expected


# -- 2. crash and re-run --------------------------------------------------------------------------------


class CrashingActivityStore:
    """The real activity store, failing its n-th save: before writing (a worker killed after fetching a
    page) or after writing (killed before the page's checkpoint)."""

    def __init__(self, inner: TableActivityStore, fail_on_call: int, when: str) -> None:
        self.inner = inner
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.when = when

    def save(self, activities: Sequence[Activity], announce_at: datetime | None = None) -> ActivityWrite:
        self.calls += 1
        if self.calls == self.fail_on_call and self.when == "before":
            raise RuntimeError("worker died before the write")
        written = self.inner.save(activities, announce_at)
        if self.calls == self.fail_on_call:
            raise RuntimeError("worker died before the checkpoint")
        return written

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def deliver_paged_mailbox(env: SyncEnv) -> None:
    """28 messages in the Inbox (20 matched, spread so every page of 4 holds some) and 6 sent ones.
    IMAP lists a folder in arrival (UID) order, so there the two Inbox templates arrive interleaved, in
    the order of their received times, as Graph lists them."""
    adele, base = env.address("adele"), now() - timedelta(minutes=10)
    if env.provider == "imap":
        inbox = [(base - timedelta(seconds=2 * k), f"Matched #{k + 1}", CAROL) for k in range(20)]
        inbox += [(base - timedelta(seconds=1 + 5 * k), f"Noise #{k + 1}", STRANGER) for k in range(8)]
        for when, subject, sender in sorted(inbox):
            env.deliver("adele", subject=subject, from_=sender, to=[adele], received=when)
        env.deliver_many(
            "adele", 6, start=base, interval_seconds=3, subject="Sent", from_=adele, to=[DAN], cc=[STRANGER],
            folder="sentitems",
        )  # fmt: skip
        return
    env.deliver_many("adele", 20, start=base, interval_seconds=2, subject="Matched", from_=CAROL, to=[adele])
    env.deliver_many(
        "adele", 8, start=base - timedelta(seconds=1), interval_seconds=5, subject="Noise", from_=STRANGER, to=[adele]
    )
    env.deliver_many(
        "adele", 6, start=base, interval_seconds=3, subject="Sent", from_=adele, to=[DAN], cc=[STRANGER],
        folder="sentitems",
    )  # fmt: skip


@pytest.mark.parametrize(("crash_on_save", "when"), [(1, "before"), (4, "after"), (7, "before"), (9, "after")])
def test_a_run_interrupted_after_any_page_and_rerun_stores_exactly_what_a_clean_run_stores(
    mail_env: SyncEnv, crash_on_save: int, when: str
) -> None:
    env = mail_env
    deliver_paged_mailbox(env)
    crashing = CrashingActivityStore(env.stores.activities, crash_on_save, when)

    with pytest.raises(RuntimeError, match="worker died"):
        env.sync(ADELE, page_size=4, activities=crashing)  # type: ignore[arg-type]
    rerun = env.sync(ADELE, page_size=4)
    clean = env.sync(ADELE, page_size=4, stores=env.other_stores("clean"))

    assert rerun.status == "done" and clean.status == "done"
    assert clean.report is not None and clean.report.activities_created == 26
    assert clean.report.pages == 9
    assert env.activities() == env.activities("clean")
    assert len(env.activities()) == 26


# -- 3. nothing of an unmatched message is kept ---------------------------------------------------------


def test_after_a_sync_no_table_holds_anything_of_an_unmatched_or_filtered_message(mail_env: SyncEnv) -> None:
    env = mail_env
    token = uuid.uuid4().hex
    adele, megan = env.address("adele"), env.address("megan")
    forbidden: list[str] = []

    def secret(user: str, k: str, *, addresses: Sequence[str] = (), **fields: Any) -> None:
        subject, body = f"Subject {token} {k}", f"Body text {token}-{k} with details"
        ids = env.deliver(user, subject=subject, body=body, **fields)
        forbidden.extend([subject, f"{token}-{k}", ids["internetMessageId"], ids["id"], ids["immutableId"]])
        forbidden.append(activity_id_for(ORG, ids["internetMessageId"]))
        forbidden.extend(addresses)

    for k in range(4):
        ghost, shade = f"ghost{k}.{token[:8]}@phantom{k}.example", f"shade{k}.{token[:8]}@mirage.example"
        secret(
            "adele", f"u{k}", addresses=[ghost, shade], from_=ghost, to=[adele], cc=[shade],
            attachments=[{"name": f"plan-{token}-{k}.pdf", "content_type": "application/pdf", "size": 1200}],
        )  # fmt: skip
    ghost = f"ghost-sent.{token[:8]}@phantom.example"
    secret("adele", "sent", addresses=[ghost], from_=adele, to=[ghost], folder="sentitems")
    secret("adele", "html", addresses=[ghost + "x"], from_=ghost + "x", to=[adele], body_type="html")
    secret("adele", "internal", from_=megan, to=[adele])
    secret("adele", "bulk", from_=CAROL, to=[adele], headers=[{"name": "List-Id", "value": "<news.client.example>"}])
    secret("adele", "never", from_=LAWYER, to=[adele])
    secret("adele", "ambiguous", from_=SHARED, to=[adele])
    kept = [
        env.deliver("adele", subject=f"Kept {k}", body="hello", from_=CAROL, to=[adele], cc=[FRANK]) for k in range(2)
    ]

    outcome = env.sync(ADELE, page_size=3)
    idle = env.sync(ADELE, page_size=3)

    assert outcome.status == "done" and outcome.report is not None and idle.status == "done"
    assert counted(outcome.report.reasons) == {
        "matched": 2, "unmatched": 6, "internal": 1, "bulk": 1, "never_log": 1, "ambiguous": 1,
    }  # fmt: skip
    assert set(env.activities()) == {ids["internetMessageId"] for ids in kept}
    tables = env.table_names()
    # The run's report is in the mailbox's sync state partition of the cursors table (``table_state``).
    assert {f"{env.prefix}{name}" for name in ("activities", "records", "cursors")} <= set(tables)
    leaks = [
        (table, text[:160], needle)
        for table, text in env.stored_values()
        for needle in forbidden
        if needle.lower() in text.lower()
    ]
    assert leaks == []


# -- 4. lost delta state ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lost", ["caught_up", "mid_round"])
def test_an_expired_delta_token_resyncs_from_the_watermark_without_duplicates_or_older_mail(
    mail_env: SyncEnv, lost: str
) -> None:
    env = mail_env
    adele, old = env.address("adele"), env.watermark - timedelta(days=1)
    early = [env.deliver("adele", subject=f"Early {k}", from_=CAROL, to=[adele]) for k in range(5)]
    early.append(env.deliver("adele", subject="Early sent", from_=adele, to=[DAN], folder="sentitems"))
    old_ids = [env.deliver("adele", subject="Old one", from_=CAROL, to=[adele], received=iso(old))]
    if lost == "caught_up":
        first = env.sync(ADELE, page_size=2)
        assert first.status == "done"
    else:  # killed on the second page: the Inbox cursor is a nextLink when the state is lost
        with pytest.raises(RuntimeError):
            env.sync(ADELE, page_size=2, activities=CrashingActivityStore(env.stores.activities, 2, "before"))
        assert env.stores.cursors.get_all(ORG, ADELE)["inbox"].startswith("next ")
    later = [env.deliver("adele", subject=f"Later {k}", from_=DAN, to=[adele]) for k in range(3)]
    later.append(env.deliver("adele", subject="Later sent", from_=adele, to=[CAROL], folder="sentitems"))
    old_ids.append(env.deliver("adele", subject="Old two", from_=CAROL, to=[adele], received=iso(old)))
    old_ids.append(
        env.deliver("adele", subject="Old sent", from_=adele, to=[CAROL], folder="sentitems", received=iso(old))
    )
    created_before = len(env.activities())
    env.expire_delta_state("adele")  # Graph: 410 SyncStateNotFound; IMAP: a new UIDVALIDITY

    resync = env.sync(ADELE, page_size=2)

    assert resync.status == "done" and resync.report is not None, resync
    assert resync.report.error == ""
    assert resync.report.activities_created == len(early) + len(later) - created_before
    assert resync.report.activities_merged == 0
    stored = env.activities()
    assert set(stored) == {ids["internetMessageId"] for ids in early + later}
    assert not {ids["internetMessageId"] for ids in old_ids} & set(stored)
    assert all(a.received_at >= env.watermark for a in stored.values())
    idle = env.sync(ADELE, page_size=2)
    assert idle.report is not None and idle.report.activities_created == 0
    assert idle.report.graph_requests == IDLE_POLL_REQUESTS[env.provider]


# -- 5. throttling and faults ----------------------------------------------------------------------------


def test_a_sync_through_429s_with_retry_after_and_a_503_still_stores_every_matched_message_exactly_once(
    sync_env: SyncEnv,
) -> None:
    env = sync_env
    adele, user = env.address("adele"), env.user_id("adele")
    pdf = {"name": "terms.pdf", "content_type": "application/pdf", "size": 2048}
    env.deliver_many("adele", 12, start=now() - timedelta(minutes=5), subject="Busy", from_=CAROL, to=[adele])
    env.deliver_many("adele", 4, start=now() - timedelta(minutes=5), subject="Noise", from_=STRANGER, to=[adele])
    for k in range(3):
        env.deliver("adele", subject=f"With file {k}", from_=DAN, to=[adele], attachments=[pdf])
    before = env.requests_seen("adele")["by_status"]
    env.client.add_fault(status=503, count=1, mailbox=user)
    env.client.add_fault(status=429, retry_after=1, count=3, mailbox=user)

    first = env.sync(ADELE, page_size=5)

    assert first.status == "done" and first.report is not None and first.report.error == ""
    assert first.report.activities_created == 15
    # Later mail, polled with one $batch whose sub-requests are throttled, and a 503 on attachments.
    for k in range(2):
        env.deliver("adele", subject=f"Later file {k}", from_=DAN, to=[adele], attachments=[pdf])
    env.deliver("adele", subject="Later plain", from_=CAROL, to=[adele])
    env.client.add_fault(status=429, retry_after=1, count=2, mailbox=user, path_contains="/delta")
    env.client.add_fault(status=503, retry_after=1, count=1, mailbox=user, path_contains="/attachments")

    second = env.sync(ADELE, page_size=5)

    assert second.status == "done" and second.report is not None and second.report.error == ""
    assert second.report.activities_created == 3
    stored = env.activities()
    assert len(stored) == 18
    assert Counter(a.subject.partition(" #")[0] for a in stored.values()) == Counter(
        {"Busy": 12, **{f"With file {k}": 1 for k in range(3)}, "Later file 0": 1, "Later file 1": 1, "Later plain": 1}
    )
    for activity in stored.values():
        files = [(f.name, f.size) for f in activity.attachments]
        assert files == ([("terms.pdf", 2048)] if "file" in activity.subject else [])
    statuses = env.requests_seen("adele")["by_status"]
    assert statuses.get("429", 0) - before.get("429", 0) == 5
    assert statuses.get("503", 0) - before.get("503", 0) == 2


# -- 6. one message, two mailboxes -----------------------------------------------------------------------


def test_a_message_seen_by_two_mailboxes_of_the_org_is_one_activity_with_both_mailbox_ids(mail_env: SyncEnv) -> None:
    env = mail_env
    adele, megan = env.address("adele"), env.address("megan")
    shared = f"<both-{uuid.uuid4().hex}@client.example>"
    for user in ("adele", "megan"):
        env.deliver(user, subject="To both", from_=CAROL, to=[adele, megan], internet_message_id=shared)
    # Megan writes to Carol with Adele in copy: Megan's Sent Items and Adele's Inbox hold the same message.
    sent = env.send("megan", subject="From Megan", to=[CAROL], cc=[adele])

    first = env.sync(ADELE)
    second = env.sync(MEGAN)
    again = [env.sync(ADELE), env.sync(MEGAN)]

    assert first.report is not None and second.report is not None
    assert (first.report.activities_created, first.report.activities_merged) == (2, 0)
    assert (second.report.activities_created, second.report.activities_merged) == (0, 2)
    assert all(
        o.report is not None and (o.report.activities_created, o.report.activities_merged) == (0, 0) for o in again
    )
    stored = env.activities()
    assert set(stored) == {shared, sent["sent"]["internetMessageId"]}
    for activity in stored.values():
        assert activity.activity_id == activity_id_for(ORG, activity.internet_message_id)
        assert set(activity.mailbox_ids) == {ADELE, MEGAN}
        assert record_ids(activity) == {"c-carol"}
    timeline = env.stores.activities.timeline(ORG, "c-carol", None, 10).items
    assert sorted(a.internet_message_id for a in timeline) == sorted(stored)
