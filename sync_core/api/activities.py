"""Activities: a record's timeline, its threads, one activity, and its deletion (privacy request).

- ``GET /api/orgs/{org}/records/{record_id}/activities?cursor=&limit=`` → ``{activities, next_cursor}``,
  newest first. ``limit`` 1-100 (default 25); ``next_cursor`` is opaque and null on the last page.
- ``…?view=threads`` → ``{threads, next_cursor}``: the record's threads, the one with the newest message
  first; each thread's messages (those logged on this record) oldest first. ``limit`` counts threads.
- ``GET /api/orgs/{org}/activities/{activity_id}`` → the activity (404 unknown);
  ``DELETE`` → 204: the activity and every index row pointing at it are gone. An id that names no
  activity (never stored, another org's, or already deleted) is a 404 ``not_found``, so a privacy
  request for a wrong id is noticed rather than silently "done".

Threads are paged over the timeline: a thread is listed where its newest message sits in the timeline,
so it appears on exactly one page, and a cursor stays valid while new mail arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sync_core.api.http import ApiError, ApiRequest, ApiResponse, field_error, not_found, ok
from sync_core.domain.model import Activity
from sync_core.domain.representation import activity_to_json, iso
from sync_core.ports import ActivityStore

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

DEFAULT_LIMIT = 25
MAX_LIMIT = 100
MAX_CURSOR_CHARS = 2048
# Timeline entries one threads page may walk through (long threads are skipped cheaply past this, and
# the page ends early with a cursor to continue from).
THREAD_SCAN_LIMIT = 500
_THREADS_CURSOR = "th."  # not in the base64url alphabet: a timeline cursor never starts like this
VIEWS = ("timeline", "threads")


def list_activities(svc: Services, req: ApiRequest) -> ApiResponse:
    org, record_id = req.param("org"), req.param("record_id")
    view = req.query.get("view") or "timeline"
    if view not in VIEWS:
        raise ApiError(400, "invalid_query", "'view' must be 'timeline' or 'threads'", {"field": "view"})
    limit = _limit(req.query.get("limit"))
    cursor = req.query.get("cursor") or None
    if cursor is not None and len(cursor) > MAX_CURSOR_CHARS:
        raise _bad_cursor()
    store = svc.stores.activities
    if view == "threads":
        if cursor is not None and not cursor.startswith(_THREADS_CURSOR):
            raise _bad_cursor()
        threads, following = _threads(store, org, record_id, cursor[len(_THREADS_CURSOR) :] if cursor else None, limit)
        return ok(
            {
                "threads": [thread_to_json(members) for members in threads],
                "next_cursor": _THREADS_CURSOR + following if following else None,
            }
        )
    if cursor is not None and cursor.startswith(_THREADS_CURSOR):
        raise _bad_cursor()
    try:
        page = store.timeline(org, record_id, cursor, limit)
    except ValueError as exc:
        raise _bad_cursor() from exc
    return ok({"activities": [activity_to_json(a) for a in page.items], "next_cursor": page.cursor})


def get_activity(svc: Services, req: ApiRequest) -> ApiResponse:
    activity = svc.stores.activities.get(req.param("org"), req.param("activity_id"))
    if activity is None:
        raise not_found("activity")
    return ok(activity_to_json(activity))


def delete_activity(svc: Services, req: ApiRequest) -> ApiResponse:
    """Privacy delete: 204 when it deleted the activity, 404 when there was none (a repeat included).
    The CRM's webhook hears of the deletion once."""
    org, activity_id = req.param("org"), req.param("activity_id")
    if not svc.stores.activities.delete(org, activity_id):
        raise not_found("activity")
    svc.activity_events().deleted(org, [activity_id])
    return ApiResponse(204)


# -- threads -------------------------------------------------------------------------------------


def _threads(
    store: ActivityStore, org: str, record_id: str, cursor: str | None, limit: int
) -> tuple[list[list[Activity]], str | None]:
    """Walk the timeline from ``cursor``; each thread is taken at its newest message on the record."""
    threads: list[list[Activity]] = []
    known: dict[str, list[Activity]] = {}
    scanned = 0
    while len(threads) < limit and scanned < THREAD_SCAN_LIMIT:
        try:
            page = store.timeline(org, record_id, cursor, limit - len(threads))
        except ValueError as exc:
            raise _bad_cursor() from exc
        for activity in page.items:
            scanned += 1
            members = known.get(activity.thread_id)
            if members is None:
                on_record = store.thread(org, activity.thread_id)
                members = [m for m in on_record if any(ref.record_id == record_id for ref in m.records)]
                known[activity.thread_id] = members
            if members and _newest(members).activity_id == activity.activity_id:
                threads.append(members)
        cursor = page.cursor
        if cursor is None:
            break
    return threads, cursor


def _newest(members: Sequence[Activity]) -> Activity:
    """The member the timeline shows first: latest received, then the lowest id (the timeline's order)."""
    latest = max(m.received_at for m in members)
    return min((m for m in members if m.received_at == latest), key=lambda m: m.activity_id)


# -- JSON --------------------------------------------------------------------------------------------


def thread_to_json(members: Sequence[Activity]) -> dict[str, Any]:
    """A thread: its messages oldest first, with the thread's subject (its first message's) and times."""
    return {
        "thread_id": members[0].thread_id,
        "subject": members[0].subject,
        "message_count": len(members),
        "first_received_at": iso(members[0].received_at),
        "last_received_at": iso(_newest(members).received_at),
        "activities": [activity_to_json(m) for m in members],
    }


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise field_error("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _bad_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "'cursor' is not a cursor this listing returned", {"field": "cursor"})
