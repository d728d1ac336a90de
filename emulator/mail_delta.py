"""Message delta queries (``mailFolders/{id}/messages/delta``) with server-side sync state.

How a sync works here, as on the real service (facts §1):

* The **initial request** carries every option (``$select``, ``$filter=receivedDateTime ge|gt …``,
  ``$orderby=receivedDateTime desc``, ``changeType``; ``$top`` and ``$expand`` are accepted and ignored).
  It snapshots the folder into a *round*: one entry per message that matches (at most 5,000 with
  ``$filter``, the newest ones).
* A **later round** starts from a ``$deltatoken``: it collapses the folder's change log after the token's
  watermark into one entry per message: ``@removed`` if it was deleted or moved out last, the full item if
  it was created or moved in, else a partial item (``id``, the changed properties, ``parentFolderId``).
* Rounds are served in pages of ``Prefer: odata.maxpagesize`` (default 10, capped at 1000: the real delta
  maximum is unconfirmed, 1000 is the List-messages maximum). Every page but the last has a
  ``@odata.nextLink`` (``$skiptoken``), the last has a ``@odata.deltaLink`` (``$deltatoken``), never both.
* Tokens are random strings mapped to state kept here; links must be replayed verbatim (another query
  parameter next to a token is a 400). The id format is *not* bound to a token: it follows each request's
  ``Prefer: IdType``. A token minted before the mailbox's sync generation was bumped is ``410 Gone``
  (``SyncStateNotFound``) with a ``Location`` holding the initial query with an empty ``$deltatoken=``.
* Entries are rendered when their page is served, from the message's state at that moment; a message that
  has left the folder since the round began is skipped (the next round reports its removal).

Realism switches (``Behaviour``): an empty page with a nextLink at the start of every round, and replays
(after every ``replay_every`` entries the first of them is sent again).

Not thread-safe on its own: :class:`emulator.mail.MailStore` calls it under its lock.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, quote

from .core import GraphContext, Response, graph_error
from .mail_model import (
    DEFAULT_PROPERTIES,
    MESSAGE_PROPERTIES,
    Folder,
    Mailbox,
    Message,
    View,
    parse_select,
    render_message,
)

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 1000  # assumption: the real delta maximum is not confirmed (facts §1)
FILTER_CAP = 5000  # "Applying $filter in a delta query returns only up to 5,000 messages."

_FILTER = re.compile(r"^\s*receivedDateTime\s+(ge|gt)\s+(\S+)\s*$", re.IGNORECASE)
_ORDERBY = re.compile(r"^\s*receivedDateTime\s+desc\s*$", re.IGNORECASE)
_UNSUPPORTED = ("search", "count", "skip", "orderby")


@dataclass(frozen=True)
class DeltaQuery:
    """The options of an initial delta request, bound to every token of the sync that follows."""

    select: tuple[str, ...] | None = None
    filter_op: str | None = None
    filter_time: datetime | None = None
    descending: bool = False
    change_type: str | None = None
    initial_params: tuple[tuple[str, str], ...] = ()

    def matches(self, msg: Message) -> bool:
        if self.filter_time is None:
            return True
        return msg.received >= self.filter_time if self.filter_op == "ge" else msg.received > self.filter_time


@dataclass(frozen=True)
class Behaviour:
    empty_page_first: bool = False
    replay_every: int = 0


@dataclass(frozen=True)
class RoundEntry:
    immutable_id: str
    kind: Literal["full", "partial", "removed"]
    props: frozenset[str] = frozenset()
    removed_rest_id: str = ""


@dataclass
class DeltaRound:
    """One pass over a folder: the entries to send, and the change-log watermark the deltaLink resumes at."""

    mailbox_id: str
    folder_id: str
    generation: int
    query: DeltaQuery
    entries: list[RoundEntry]
    watermark: int
    empty_first: bool
    skip_tokens: dict[int, str] = field(default_factory=dict)
    delta_token: str | None = None


@dataclass(frozen=True)
class SkipState:
    round: DeltaRound
    offset: int  # -1: the empty first page has not been served yet


@dataclass(frozen=True)
class DeltaState:
    mailbox_id: str
    folder_id: str
    generation: int
    query: DeltaQuery
    watermark: int


class DeltaEngine:
    """Serves delta pages and keeps the token -> sync-state map."""

    def __init__(self) -> None:
        self.tokens: dict[str, SkipState | DeltaState] = {}
        self.default_behaviour = Behaviour()
        self.behaviours: dict[str, Behaviour] = {}

    def forget(self, mailbox_id: str) -> None:
        """Drop every token of the mailbox (its state is gone, as after a restart)."""
        for token in [t for t, state in self.tokens.items() if _state_target(state)[0] == mailbox_id]:
            del self.tokens[token]

    def behaviour_for(self, mailbox_id: str) -> Behaviour:
        return self.behaviours.get(mailbox_id, self.default_behaviour)

    def serve(self, ctx: GraphContext, box: Mailbox, folder: Folder, view: View, page_size: int) -> Response:
        """Answer one delta request for ``folder`` (already resolved) of ``box``."""
        params = parse_qsl(ctx.request.raw_query, keep_blank_values=True)
        named = {_option(name): value for name, value in params}
        token = named.get("skiptoken") or named.get("deltatoken")
        if token:
            if len(params) != 1:
                extra = sorted(name for name, _ in params if _option(name) not in ("skiptoken", "deltatoken"))
                return graph_error(
                    400,
                    "ErrorInvalidUrlQuery",
                    "Query options must not be added to a delta link; send the @odata.nextLink or "
                    f"@odata.deltaLink URL unchanged. Unexpected: '{', '.join(extra) or 'duplicate token'}'.",
                )
            state = self.tokens.get(token)
            if state is None or _state_target(state) != (box.user_id, folder.id):
                return graph_error(
                    400, "ErrorInvalidSyncStateData", "The sync state data is corrupt or otherwise invalid."
                )
            generation = state.round.generation if isinstance(state, SkipState) else state.generation
            if generation != box.generation:
                return self._gone(ctx, folder, box, generation, _state_query(state))
            if isinstance(state, SkipState):
                return self._page(ctx, box, folder, state.round, state.offset, view=view, page_size=page_size)
            rnd = self._later_round(box, state)
        else:
            query = parse_delta_query(params)
            if isinstance(query, Response):
                return query
            rnd = self._initial_round(box, folder, query)
        return self._page(ctx, box, folder, rnd, -1 if rnd.empty_first else 0, view=view, page_size=page_size)

    # -- rounds ------------------------------------------------------------------------------------

    def _initial_round(self, box: Mailbox, folder: Folder, query: DeltaQuery) -> DeltaRound:
        found = [m for m in box.in_folder(folder.id) if query.matches(m)]
        if query.filter_time is not None:
            found = sorted(found, key=lambda m: m.received, reverse=True)[:FILTER_CAP]
        found.sort(key=lambda m: m.received, reverse=query.descending)
        entries = [RoundEntry(m.immutable_id, "full") for m in found] if query.change_type in (None, "created") else []
        return self._new_round(box, folder.id, query, entries)

    def _later_round(self, box: Mailbox, state: DeltaState) -> DeltaRound:
        per_message: dict[str, list[Any]] = {}
        for change in box.logs.get(state.folder_id, []):
            if change.seq > state.watermark:
                per_message.setdefault(change.immutable_id, []).append(change)
        ordered = sorted(per_message.values(), key=lambda changes: changes[-1].seq)
        entries: list[RoundEntry] = []
        query = state.query
        for changes in ordered:
            last = changes[-1]
            if last.kind == "deleted":
                entry = RoundEntry(last.immutable_id, "removed", removed_rest_id=last.rest_id)
                wanted = "deleted"
            elif any(c.kind == "created" for c in changes):
                entry, wanted = RoundEntry(last.immutable_id, "full"), "created"
            else:
                props = frozenset().union(*(c.props for c in changes))
                entry, wanted = RoundEntry(last.immutable_id, "partial", props), "updated"
            if query.change_type not in (None, wanted):
                continue
            msg = box.messages.get(last.immutable_id)
            if entry.kind != "removed" and (msg is None or not query.matches(msg)):
                continue
            entries.append(entry)
        return self._new_round(box, state.folder_id, query, entries)

    def _new_round(self, box: Mailbox, folder_id: str, query: DeltaQuery, entries: list[RoundEntry]) -> DeltaRound:
        behaviour = self.behaviour_for(box.user_id)
        if behaviour.replay_every > 0:
            entries = _with_replays(entries, behaviour.replay_every)
        return DeltaRound(box.user_id, folder_id, box.generation, query, entries, box.seq, behaviour.empty_page_first)

    # -- pages -------------------------------------------------------------------------------------

    def _page(
        self,
        ctx: GraphContext,
        box: Mailbox,
        folder: Folder,
        rnd: DeltaRound,
        offset: int,
        *,
        view: View,
        page_size: int,
    ) -> Response:
        link_base = delta_link_base(ctx, folder)
        items: list[dict[str, Any]] = []
        if offset < 0:
            next_offset: int | None = 0
        else:
            position = offset
            while position < len(rnd.entries) and len(items) < page_size:
                rendered = _render(rnd.entries[position], rnd, box, view)
                if rendered is not None:
                    items.append(rendered)
                position += 1
            next_offset = position if position < len(rnd.entries) else None
        payload: dict[str, Any] = {"@odata.context": f"{ctx.base_url}/$metadata#Collection(message)"}
        if next_offset is not None:
            token = rnd.skip_tokens.get(next_offset)
            if token is None:
                token = rnd.skip_tokens[next_offset] = self._mint(SkipState(rnd, next_offset))
            payload["@odata.nextLink"] = f"{link_base}?$skiptoken={token}"
            payload["value"] = items
        else:
            if rnd.delta_token is None:
                state = DeltaState(rnd.mailbox_id, rnd.folder_id, rnd.generation, rnd.query, rnd.watermark)
                rnd.delta_token = self._mint(state)
            payload["value"] = items
            payload["@odata.deltaLink"] = f"{link_base}?$deltatoken={rnd.delta_token}"
        return Response.json(200, payload)

    def _mint(self, state: SkipState | DeltaState) -> str:
        token = secrets.token_urlsafe(48)
        self.tokens[token] = state
        return token

    def _gone(self, ctx: GraphContext, folder: Folder, box: Mailbox, generation: int, query: DeltaQuery) -> Response:
        options = [
            (name, value) for name, value in query.initial_params if _option(name) not in ("deltatoken", "skiptoken")
        ]
        options.append(("$deltatoken", ""))
        location = delta_link_base(ctx, folder) + "?" + "&".join(f"{n}={quote(v, safe=',()$:')}" for n, v in options)
        history = "".join(f"[{g}]" for g in range(box.generation, max(0, box.generation - 3), -1))
        return graph_error(
            410,
            "SyncStateNotFound",
            f"The sync state generation is not found; generation={generation};[highest={box.generation}]{history}.",
            {"Location": location},
        )


def delta_link_base(ctx: GraphContext, folder: Folder) -> str:
    return f"{ctx.base_url}/{ctx.user_segment}/mailFolders('{folder.id}')/messages/delta"


def parse_delta_query(params: list[tuple[str, str]]) -> DeltaQuery | Response:
    """Validate the options of an initial delta request (facts §1)."""
    named = {_option(name): value for name, value in params}
    unsupported = [f"${name}" for name in _UNSUPPORTED if name in named]
    if "orderby" in named and _ORDERBY.match(named["orderby"]):
        unsupported.remove("$orderby")
    if unsupported:
        return graph_error(
            400,
            "ErrorInvalidUrlQuery",
            "The following parameters are not supported with change tracking over the 'Messages' resource: "
            f"'{', '.join(unsupported)}'.",
        )
    select = parse_select(named.get("select"))
    if isinstance(select, str):
        return graph_error(
            400,
            "RequestBroker--ParseUri",
            f"Could not find a property named '{select}' on type 'microsoft.graph.message'.",
        )
    filter_op = filter_time = None
    if named.get("filter"):
        match = _FILTER.match(named["filter"])
        moment = _parse_time(match.group(2)) if match else None
        if match is None or moment is None:
            return graph_error(
                400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes."
            )
        filter_op, filter_time = match.group(1).lower(), moment
    change_type = named.get("changetype") or None
    if change_type is not None and change_type not in ("created", "updated", "deleted"):
        return graph_error(
            400, "ErrorInvalidUrlQuery", f"The value '{change_type}' of the query parameter 'changeType' is not valid."
        )
    return DeltaQuery(select, filter_op, filter_time, "orderby" in named, change_type, tuple(params))


def page_size_from(prefer: dict[str, str]) -> int | None:
    """The ``odata.maxpagesize`` preference, capped at :data:`MAX_PAGE_SIZE`; None if absent or invalid."""
    raw = prefer.get("odata.maxpagesize")
    if raw is None or not raw.isdigit() or int(raw) < 1:
        return None
    return min(int(raw), MAX_PAGE_SIZE)


def _render(entry: RoundEntry, rnd: DeltaRound, box: Mailbox, view: View) -> dict[str, Any] | None:
    if entry.kind == "removed":
        shown = entry.immutable_id if view.immutable_ids else entry.removed_rest_id
        return {"@odata.type": "#microsoft.graph.message", "id": shown, "@removed": {"reason": "deleted"}}
    msg = box.messages.get(entry.immutable_id)
    if msg is None or msg.folder_id != rnd.folder_id:
        return None
    if entry.kind == "full":
        return render_message(msg, view, rnd.query.select, odata_type=True)
    visible = rnd.query.select if rnd.query.select is not None else DEFAULT_PROPERTIES
    changed = tuple(p for p in MESSAGE_PROPERTIES if p in entry.props and p in visible and p != "parentFolderId")
    return render_message(msg, view, (*changed, "parentFolderId"), odata_type=True)


def _with_replays(entries: list[RoundEntry], every: int) -> list[RoundEntry]:
    out: list[RoundEntry] = []
    for index, entry in enumerate(entries, start=1):
        out.append(entry)
        if index % every == 0:
            out.append(entries[index - every])
    return out


def _option(name: str) -> str:
    return name.lstrip("$").lower()


def _state_target(state: SkipState | DeltaState) -> tuple[str, str]:
    if isinstance(state, SkipState):
        return state.round.mailbox_id, state.round.folder_id
    return state.mailbox_id, state.folder_id


def _state_query(state: SkipState | DeltaState) -> DeltaQuery:
    return state.round.query if isinstance(state, SkipState) else state.query


def _parse_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.strip("'"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
