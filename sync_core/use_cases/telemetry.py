"""Operational events: one structured log record per sync run, webhook delivery attempt, send and
record backfill job step, for the fleet's dashboards (docs/operations.md; the workbook in
infra/workbook.json queries them).

    use case ends ── emit(SyncRunEvent | WebhookDeliveryEvent | SendEvent | RecordBackfillEvent)
                        │  logger ``sync_core.events``, INFO, message ``crm_sync_event {json}``
                        ▼  (and the same mapping as the record's ``crm_event`` attribute)
    Functions host ── Application Insights ``traces``: ``message`` holds the JSON

Why the JSON is in the message: the Python worker sends the host a log's level, category and formatted
message only; keys passed with ``extra=`` do not reach ``customDimensions`` (docs/operations.md cites the
sources). The message is the one field that always arrives, so a query parses it:
``traces | where message startswith "crm_sync_event " | extend e = parse_json(substring(message, 15))``.

Invariants:
- One event per sync run (``sync_mailbox`` returns or raises: every path emits once, idle polls and runs
  that found the lease taken included), per webhook delivery attempt, per send step that ends an attempt,
  per record backfill job step (one queue message of a job, however it ends).
- An event holds ids (org, mailbox, run, delivery, send), enums, counts and durations only: never an
  address, a subject, a body, a URL, a token or an exception's text (a failure is its class code).
  The fields are the dataclasses' fields below, nothing else (``event_fields``), so the workbook's
  queries are checked against them (tests/infra/test_workbook.py).
- Emitting never fails the use case: a failure to log is itself logged (its type only) and swallowed.
- The schema is versioned (``schema``): fields are only ever added; a renamed or retyped field is a new
  version, and the workbook's queries are updated with it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from sync_core.domain.model import SYNCABLE_STATUSES, Mailbox, MailboxStatus, OrgSettings, RunStatus
from sync_core.errors import ConfigurationFailure, GrantFailure, SyncFailure
from sync_core.ports import MailSource, ReportsUsage, RequestUsage, RunReport

EVENT_LOGGER = "sync_core.events"
MESSAGE_PREFIX = "crm_sync_event "
SCHEMA_VERSION = 1
RECORD_ATTRIBUTE = "crm_event"  # the event's mapping on the LogRecord, for in-process handlers (tests)

events_log = logging.getLogger(EVENT_LOGGER)
events_log.setLevel(logging.INFO)  # whatever the root logger's level: the events are always created
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncRunEvent:
    """The end of one sync run.

    ``outcome``: the run's ``RunStatus`` (``done``, ``more``, ``busy``, ``skipped``, ``failed``), or
    ``raised`` when an unclassified failure escaped (the queue retries it). ``idle``: a poll that found
    nothing and wrote nothing. ``requested``: a run a CRM polls (Sync now, backfill, a notification).
    ``trigger``: the sync message's reason (``timer``, ``sync_now``, ``backfill``, ``continuation``,
    ``scheduled``; ``other`` for a reason that is not a plain word; empty for a run not started from the
    sync queue). ``provider``: the mailbox's provider (``microsoft``, ``imap``, ``google``).
    ``mailbox_status``: the mailbox's status as read at the end of the run (empty when it is gone).
    ``reasons``: the run report's counts per decision reason (``matched``, ``unmatched``, ``bulk``, ...)
    and per page event (``skipped_items``, ``folders_resynced``, ...). ``requests``: provider requests
    (a batch counts once, a retry again); ``throttled``: responses that asked to slow down (429, 503, ...);
    ``throttle_wait_s``: time the run slept honouring them; ``retry_after_s``: the delay the run asked its
    continuation for after a transient failure. ``mail_age_*_s``: received-to-synced age of the messages
    the run saw for the first time (null when it saw none)."""

    kind: ClassVar[str] = "sync_run"

    org_id: str
    mailbox_id: str
    run_id: str = ""
    outcome: str = ""
    idle: bool = False
    requested: bool = False
    trigger: str = ""
    provider: str = ""
    mode: str = ""
    mailbox_status: str = ""
    failure_class: str = ""
    duration_ms: int = 0
    pages: int = 0
    messages: int = 0
    activities_created: int = 0
    activities_merged: int = 0
    requests: int = 0
    table_transactions: int = 0
    throttled: int = 0
    throttle_wait_s: float = 0.0
    retry_after_s: float | None = None
    mail_age_max_s: float | None = None
    mail_age_avg_s: float | None = None
    reasons: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookDeliveryEvent:
    """One attempt of a webhook delivery, as it ended: ``outcome`` the delivery's new state
    (``delivered``, ``retrying``, ``failed``, ``skipped``); ``failure`` what went wrong in one word
    (``http_status``, ``no_answer``, ``url_refused``, ``secret_unreadable``, ``no_webhook``,
    ``activity_gone``; empty when delivered); ``response_status`` the receiver's HTTP status (0: none).
    The URL is never in the event (it may carry the CRM's credentials)."""

    kind: ClassVar[str] = "webhook_delivery"

    org_id: str
    delivery_id: str
    event_type: str = ""
    attempt: int = 0
    outcome: str = ""
    failure: str = ""
    response_status: int = 0
    final: bool = False
    duration_ms: int = 0
    next_retry_s: float | None = None


@dataclass(frozen=True)
class SendEvent:
    """The end of one attempt of a send (``send`` use case, state machine). ``outcome``: ``sent``,
    ``retrying`` (a transient failure: the attempt resumes later), ``failed`` (given up), or
    ``duplicate`` (an idempotency key answered with the send it already made); ``state`` the state the
    send reached; ``failure_class`` the failure's class code. Counts only: ``recipients`` and
    ``attachments`` are numbers, never addresses or file names."""

    kind: ClassVar[str] = "send"

    org_id: str
    mailbox_id: str
    send_id: str
    outcome: str = ""
    state: str = ""
    attempt: int = 0
    failure_class: str = ""
    duration_ms: int = 0
    recipients: int = 0
    attachments: int = 0
    requests: int = 0
    throttled: int = 0
    throttle_wait_s: float = 0.0
    retry_after_s: float | None = None


@dataclass(frozen=True)
class RecordBackfillEvent:
    """One step of a record backfill job (``record_backfill.run_job``: one queue message), however it
    ended. ``outcome``: ``done``, ``more`` (budget spent, or the provider asked to wait: it continues),
    ``busy`` (the mailbox's lease was taken), ``skipped``, ``failed`` (the job ended failed), ``retrying``
    (the step raised: the job is retried later, up to its attempt bound) or ``raised`` (storage failed:
    the queue retries the message). ``state``: the job's state after the step; ``attempt``: failed
    attempts in a row; ``failure_class`` the failure's class code and ``error_code`` the failed or
    skipped job's code. ``terms`` and ``records`` are counts (never the addresses searched);
    ``searches``, ``activities_*`` and ``requests`` are this step's."""

    kind: ClassVar[str] = "record_backfill"

    org_id: str
    mailbox_id: str
    job_id: str
    outcome: str = ""
    state: str = ""
    attempt: int = 0
    failure_class: str = ""
    error_code: str = ""
    duration_ms: int = 0
    terms: int = 0
    records: int = 0
    searches: int = 0
    activities_created: int = 0
    activities_merged: int = 0
    requests: int = 0
    retry_after_s: float | None = None


Event = SyncRunEvent | WebhookDeliveryEvent | SendEvent | RecordBackfillEvent
EVENT_TYPES: tuple[
    type[SyncRunEvent] | type[WebhookDeliveryEvent] | type[SendEvent] | type[RecordBackfillEvent], ...
] = (
    SyncRunEvent,
    WebhookDeliveryEvent,
    SendEvent,
    RecordBackfillEvent,
)
COMMON_FIELDS = ("event", "schema")


def event_fields(kind: str) -> tuple[str, ...]:
    """Every top-level field an event of this kind carries (``event`` and ``schema`` included)."""
    for event_type in EVENT_TYPES:
        if event_type.kind == kind:
            return COMMON_FIELDS + tuple(f.name for f in dataclasses.fields(event_type))
    raise KeyError(kind)


def to_payload(event: Event) -> dict[str, Any]:
    """The event as the JSON object the log line carries."""
    payload: dict[str, Any] = {"event": event.kind, "schema": SCHEMA_VERSION}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        payload[item.name] = dict(value) if isinstance(value, Mapping) else value
    return payload


def render(event: Event) -> str:
    """The log line: ``crm_sync_event `` then the compact JSON (keys sorted, one line)."""
    return MESSAGE_PREFIX + json.dumps(to_payload(event), sort_keys=True, separators=(",", ":"))


def parse(message: str) -> dict[str, Any] | None:
    """The payload of a log line ``render`` wrote; None for any other line."""
    if not message.startswith(MESSAGE_PREFIX):
        return None
    value = json.loads(message[len(MESSAGE_PREFIX) :])
    return value if isinstance(value, dict) else None


def emit(event: Event) -> None:
    """Log the event (INFO, ``sync_core.events``). Never raises."""
    try:
        events_log.info("%s", render(event), extra={RECORD_ATTRIBUTE: to_payload(event)})
    except Exception as exc:  # telemetry must never fail the run, delivery or send it describes
        log.warning("could not log a %s event: %s", event.kind, type(exc).__name__)


def emit_send(
    org_id: str,
    mailbox_id: str,
    send_id: str,
    *,
    outcome: str,
    state: str = "",
    attempt: int = 0,
    failure_class: str = "",
    duration_ms: int = 0,
    recipients: int = 0,
    attachments: int = 0,
    requests: int = 0,
    throttled: int = 0,
    throttle_wait_s: float = 0.0,
    retry_after_s: float | None = None,
) -> SendEvent:
    """Emit the ``send`` event at the end of a send attempt (for the send use case to call once per
    attempt, with counts only); returns it."""
    event = SendEvent(
        org_id=org_id,
        mailbox_id=mailbox_id,
        send_id=send_id,
        outcome=outcome,
        state=state,
        attempt=attempt,
        failure_class=failure_class,
        duration_ms=duration_ms,
        recipients=recipients,
        attachments=attachments,
        requests=requests,
        throttled=throttled,
        throttle_wait_s=round(throttle_wait_s, 3),
        retry_after_s=retry_after_s,
    )
    emit(event)
    return event


# -- the sync run's event ----------------------------------------------------------------------------

_trigger: ContextVar[str] = ContextVar("sync_trigger", default="")
_PLAIN_WORD = re.compile(r"[a-z_]{1,32}")


@contextmanager
def sync_trigger(reason: str) -> Iterator[None]:
    """Runs started inside say ``reason`` as their event's ``trigger`` (the scheduler sets the queue
    message's reason around the run, so the run's signature need not carry it). The reason is free text
    on the wire: anything but a plain word shows as ``other``."""
    token = _trigger.set(reason if _PLAIN_WORD.fullmatch(reason) else "other")
    try:
        yield
    finally:
        _trigger.reset(token)



class MailAges:
    """Received times of the messages a run saw first, summed up: their age is taken when the run ends."""

    def __init__(self) -> None:
        self.count = 0
        self._total = 0.0
        self._oldest: float | None = None

    def add(self, received_at: datetime) -> None:
        stamp = received_at.timestamp()
        self.count += 1
        self._total += stamp
        self._oldest = stamp if self._oldest is None else min(self._oldest, stamp)

    def summary(self, at: datetime) -> tuple[float | None, float | None]:
        """(oldest age, mean age) in seconds at ``at``; (None, None) without messages."""
        if self._oldest is None:
            return None, None
        now = at.timestamp()
        return round(now - self._oldest, 3), round(now - self._total / self.count, 3)


class RunView(Protocol):
    """What the event reads of a sync run (``sync_mailbox._Run``)."""

    run_id: str
    idle: bool
    pages: int
    mailbox: Mailbox
    settings: OrgSettings
    ages: MailAges


class OutcomeView(Protocol):
    """What the event reads of a run's ``SyncOutcome``."""

    @property
    def status(self) -> RunStatus: ...

    @property
    def retry_after(self) -> float | None: ...

    @property
    def failure(self) -> type[SyncFailure] | None: ...


@dataclass
class RunProbe:
    """Filled in by ``sync_mailbox`` as the run goes (mailbox, the run, its report); ``emit`` logs the
    run's one event from whatever was reached, however the run ended."""

    requested: bool = False
    trigger: str = field(default_factory=_trigger.get)
    started: float = field(default_factory=time.perf_counter)
    mailbox: Mailbox | None = None
    automation_enabled: bool = True
    source: MailSource | None = None
    usage_before: RequestUsage = field(default_factory=RequestUsage)
    run: RunView | None = None
    report: RunReport | None = None

    def begin(self, source: MailSource, mailbox: Mailbox, settings: OrgSettings) -> None:
        self.source, self.mailbox, self.automation_enabled = source, mailbox, settings.automation_enabled
        self.usage_before = _usage(source, mailbox)

    def emit(self, org_id: str, mailbox_id: str, outcome: OutcomeView | None) -> None:
        """Log the run's event (``outcome`` None: the run raised). Never raises."""
        try:
            emit(self.event(org_id, mailbox_id, outcome))
        except Exception as exc:
            log.warning("could not log a sync_run event: %s", type(exc).__name__)

    def event(self, org_id: str, mailbox_id: str, outcome: OutcomeView | None) -> SyncRunEvent:
        run, report = self.run, self.report
        mailbox = run.mailbox if run is not None else self.mailbox
        automation = run.settings.automation_enabled if run is not None else self.automation_enabled
        usage = (
            _usage(self.source, mailbox).since(self.usage_before)
            if self.source is not None and mailbox is not None
            else RequestUsage()
        )
        oldest, mean = run.ages.summary(report.finished_at) if run is not None and report is not None else (None, None)
        return SyncRunEvent(
            org_id=org_id,
            mailbox_id=mailbox_id,
            run_id=run.run_id if run is not None else "",
            outcome=outcome.status.value if outcome is not None else "raised",
            idle=run.idle if run is not None else False,
            requested=self.requested,
            trigger=self.trigger,
            provider=mailbox.provider if mailbox is not None else "",
            mode=mailbox.mode.value if mailbox is not None else "",
            mailbox_status=_status_after(mailbox, automation, outcome),
            failure_class=report.error_class if report is not None else "",
            duration_ms=int((time.perf_counter() - self.started) * 1000),
            pages=run.pages if run is not None else 0,
            messages=run.ages.count if run is not None else 0,
            activities_created=report.activities_created if report is not None else 0,
            activities_merged=report.activities_merged if report is not None else 0,
            requests=report.graph_requests if report is not None else usage.requests,
            table_transactions=report.table_transactions if report is not None else 0,
            throttled=usage.throttled,
            throttle_wait_s=usage.waited_seconds,
            retry_after_s=outcome.retry_after if outcome is not None else None,
            mail_age_max_s=oldest,
            mail_age_avg_s=mean,
            reasons=dict(report.reasons) if report is not None else {},
        )


def _usage(source: MailSource, mailbox: Mailbox) -> RequestUsage:
    if isinstance(source, ReportsUsage):
        return source.usage_for(mailbox)
    return RequestUsage(requests=source.requests_for(mailbox))


def _status_after(mailbox: Mailbox | None, automation_enabled: bool, outcome: OutcomeView | None) -> str:
    """The status the run left the mailbox in (what ``sync_mailbox._set_status`` writes): a grant
    failure ``needs_reauth``, a configuration failure ``error``, a success clears ``error``; otherwise
    the status as read (``paused`` for a disabled mailbox or org)."""
    if mailbox is None:
        return ""
    status = mailbox.effective_status(automation_enabled)[0]
    if outcome is None or status not in SYNCABLE_STATUSES:
        return status.value
    if outcome.failure is GrantFailure:
        return MailboxStatus.NEEDS_REAUTH.value
    if outcome.failure is ConfigurationFailure:
        return MailboxStatus.ERROR.value
    if outcome.failure is None and outcome.status in (RunStatus.DONE, RunStatus.MORE):
        return MailboxStatus.ACTIVE.value
    return status.value
