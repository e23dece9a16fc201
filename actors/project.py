"""The ProjectActor: one per project with subscribers or traffic.

It owns the project's subscribers, and it is the only place where a logged change becomes
frames. It runs on the shared actor threads (actors/runtime.py), not on a thread of its
own: a process may watch thousands of projects. Because it handles one message at a time,
ordering is simple: it delivers sequences in increasing order, drops duplicates, and fills
any gap (a message still in flight from another executor, a lost pub/sub message) from the
event log before delivering what follows.

Sequences are per project across every kind of change: state changes and Plan DAG edits
(PlanChanged) share them. A plan edit gives status subscribers nothing, so their stream
skips its number; the actor received it (or read it from the log), so it is no gap.

No node-ID cache. DESIGN.md gives the actor one (data source → nodes, node → type), to
resolve a change's nodes when it arrives. Resolving when it arrives is what made history
change with the plan and let a gateway with a stale map lose events: now a change carries
its nodes, resolved in the transaction that persisted it (`StatusChanged.nodes`). Routing
reads them; the snapshot reads the plan in its own consistent transaction, where a cache
would be a second, possibly older, answer. So there is nothing left for a cache to hold.

Bounded. The inbox holds at most `INBOX_BOUND` logged changes (actors/runtime.py): a change
that does not fit is left out, and a `Resync` queued in its place reads it back from the
log, where it was committed before it was sent. Reads of the log go page by page
(`REPLAY_PAGE` rows). A resume (`afterSequence`) is replayed one page at a time, the next
page read only once the subscriber's socket has taken the last one (`Subscriber.
when_written`); until its replay has reached the live point the subscriber is `_Replaying`,
not in a group, and then it joins its group in this thread, between two changes, so it
misses none and gets none twice. A server thus never holds a whole long replay in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any, NamedTuple

import pykka

from actors.events import node_events
from actors.messages import (
    IdleCheck,
    LoggedChange,
    PlanChanged,
    ReplayMore,
    Resync,
    Selection,
    StatusChanged,
    Subscribe,
    Subscriber,
    Unsubscribe,
)
from actors.plan_events import DELTA, PLAN, delta_events, plan_dag_events
from actors.presence import PresenceBoard, PresenceLeave, PresenceUpdate
from actors.runtime import PooledActor
from actors.state import message_from_row, status_from_row
from storage import payloads, queries
from storage.db import Database
from storage.models import DataSource, Graph
from storage.retry import is_transient, reason, retrying

log = logging.getLogger(__name__)

REPLAY_PAGE = 1000  # log rows per read: a replay page, a page of a gap fill
INBOX_BOUND = 10_000  # logged changes waiting in an actor's inbox before it reads the log
ACTOR_DEADLINE = 0.5  # seconds an actor retries a read before the supervisor takes over


class Item(NamedTuple):
    """One rendered event for a subscriber's mailbox (a tuple, as `Subscriber.deliver`
    takes). Made once per event per selection, shared by all its subscribers, so naming it
    costs nothing per delivery."""

    coalesce_key: str  # a status event's node id: a slow mailbox keeps its latest only
    sequence: int  # 0 for presence (never counted as a gap)
    payload: bytes  # the rendered `next` payload ({"data": ...})


PRESENCE = "presence"
# What each stream makes of a logged change (plan streams: one event per plan edit).
_EVENTS: dict[str, Callable[[LoggedChange], list[dict[str, Any]]]] = {
    "status": node_events,
    PLAN: plan_dag_events,
    DELTA: delta_events,
    PRESENCE: lambda _change: [],
}


def _stream(selection: Selection) -> str:
    return getattr(selection, "stream", "status")


def _item(stream: str, event: dict[str, Any], payload: bytes) -> Item:
    """Status items coalesce per node in a slow mailbox; presence per user; plan edits
    never coalesce (a key of their own), so a watcher that falls more than the mailbox's
    capacity behind is closed and resumes with afterSequence."""
    if stream == "status":
        return Item(event["nodeId"], event["sequence"], payload)
    if stream == PRESENCE:
        return Item("user:" + event["userId"], 0, payload)
    return Item(f"#{event['sequence']}", event["sequence"], payload)


class _Group:
    """Subscribers sharing one selection: one render per event for all of them."""

    __slots__ = ("selection", "stream", "subscribers")

    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.stream = _stream(selection)  # looked up once, not per event
        self.subscribers: dict[Hashable, Subscriber] = {}


class _Replaying:
    """A subscriber whose resume is being replayed, page by page, before it goes live."""

    __slots__ = ("subscriber", "cursor")

    def __init__(self, subscriber: Subscriber, cursor: int) -> None:
        self.subscriber = subscriber
        self.cursor = cursor  # replayed up to this sequence


class ProjectActor(PooledActor):
    """Turns a project's logged changes into frames for its subscribers' mailboxes."""

    inbox_bound = INBOX_BOUND
    leavable = (StatusChanged, PlanChanged)  # committed before sent: the log has them
    catch_up = Resync()

    def __init__(
        self,
        project_id: int,
        db: Database,
        on_delivered: Callable[[str], None] | None = None,
        *,
        on_behind: Callable[[int], None] | None = None,
        on_failed: Callable[..., None] | None = None,
    ) -> None:
        super().__init__()
        # Told each delivered change's timestamp, once per change (the latency metric).
        self.on_delivered = on_delivered
        # Supervision (see actors/hub.py): told when the log could not be read (the hub has
        # this actor try again later), and when a handler failed (the hub replaces it).
        self.on_behind = on_behind
        self.on_failed = on_failed
        # True while changes wait in the log because it could not be read: nothing is
        # delivered (it would be out of order) until a Resync has caught up.
        self.behind = False
        self.project_id = project_id
        self.db = db
        self.groups: dict[Hashable, _Group] = {}
        self.subscriber_groups: dict[Hashable, Hashable] = {}
        self.replaying: dict[Hashable, _Replaying] = {}  # resumes not yet live
        self.replay_pages = 0  # replay pages read after the first (paced by the sockets)
        self.gap_fills = 0  # reads of the log for missing sequences (not per plan edit)
        self.last_activity = time.monotonic()
        self.presence = PresenceBoard()  # memory only (actors/presence.py)
        # Read here, in the thread that starts the actor (the hub's, while it routes the
        # first Subscribe), not in on_start: a change committed between the subscribe and
        # the actor's first step must count as new and be delivered.
        self.last_sequence = self._read(self._committed, "reading its last sequence")

    def _committed(self) -> int:
        with self.db.read() as s:
            return queries.last_sequence(s, self.project_id)

    def _read(self, operation: Callable[[], Any], what: str) -> Any:
        """A read of the log, retried briefly: other actors share this thread, so a longer
        outage is waited out by the hub's supervisor (`behind`), not here."""
        return retrying(
            operation, what=f"project {self.project_id}: {what}", deadline=ACTOR_DEADLINE
        )

    def _fell_behind(self, error: Exception) -> None:
        if not self.behind:
            log.warning(
                "project %s: cannot read the event log (%s): delivery waits after sequence "
                "%d until it can",
                self.project_id,
                reason(error),
                self.last_sequence,
            )
        self.behind = True
        if self.on_behind is not None:
            self.on_behind(self.project_id)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A handler raised (a bug): hand the subscribers over, so the hub can start a new
        actor that replays from the log what this one had not delivered."""
        handover = [
            Subscribe(subscriber, self.last_sequence, False)
            for group in self.groups.values()
            for subscriber in group.subscribers.values()
        ]
        handover += [Subscribe(r.subscriber, r.cursor, False) for r in self.replaying.values()]
        handling = getattr(self, "_handling", None)
        subscribed = self.subscriber_groups
        if (
            isinstance(handling, Subscribe)
            and handling.subscriber.key not in subscribed
            and handling.subscriber.key not in self.replaying
        ):
            # Its own subscribe failed: not again (the same bug would strike again).
            handling.subscriber.fail(
                [
                    {
                        "message": (
                            f"project {self.project_id}: the server failed to start this "
                            f"subscription ({exception_type.__name__}, logged): resubscribe "
                            "with afterSequence: the last sequence you received"
                        ),
                        "extensions": {"code": "INTERNAL_SERVER_ERROR"},
                    }
                ]
            )
        inbox = self.actor_inbox
        for envelope in list(getattr(inbox, "envelopes", ())):
            message = envelope.message
            if isinstance(message, Subscribe):  # not handled yet: keep what it asked for
                handover.append(message)
            elif isinstance(message, Unsubscribe):
                handover = [m for m in handover if m.subscriber.key != message.key]
        if self.on_failed is not None:
            self.on_failed(self.project_id, self.actor_ref, handover, self.last_sequence)

    # --- dispatch ---------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        self._handling = message  # for on_failure: the message a bug stopped at
        if not isinstance(message, IdleCheck):  # being asked is not traffic
            self.last_activity = time.monotonic()
        if isinstance(message, StatusChanged):
            self._on_change(message)
        elif isinstance(message, Subscribe):
            self._on_subscribe(message)
        elif isinstance(message, Unsubscribe):
            self._remove(message.key)
        elif isinstance(message, PlanChanged):
            self._on_change(message)
        elif isinstance(message, PresenceUpdate):
            self._send_presence(self.presence.update(message))
        elif isinstance(message, PresenceLeave):
            left = self.presence.leave(message.connection)
            if left is not None:
                self._send_presence(left)
        elif isinstance(message, Resync):
            self._resync()
        elif isinstance(message, ReplayMore):
            self._replay_more(message.key)
        elif isinstance(message, IdleCheck):
            return self._is_idle(message.idle_seconds)
        elif message == "stats":
            return self.stats()
        else:
            log.warning("project %s: unknown message %r", self.project_id, message)
        return None

    def stats(self) -> dict[str, Any]:
        return {
            "subscribers": len(self.subscriber_groups),
            "replaying": len(self.replaying),
            "replay_pages": self.replay_pages,
            "groups": len(self.groups),
            "last_sequence": self.last_sequence,
            "gap_fills": self.gap_fills,
            "behind": self.behind,
        }

    def _is_idle(self, idle_seconds: float) -> bool:
        if self.presence:  # editors present: their presence lives here
            return False
        if self.replaying:
            return False
        return not self.subscriber_groups and time.monotonic() - self.last_activity >= idle_seconds

    # --- logged changes ---------------------------------------------------------------

    def _on_change(self, message: LoggedChange) -> None:
        """A state change or a plan edit: both take their place in the one sequence."""
        if message.sequence <= self.last_sequence:
            return  # already delivered (a duplicate, or older than this actor's start)
        if not self.groups:
            self.last_sequence = message.sequence
            return
        if self.behind:
            return  # it is in the log: the next Resync delivers it, in order
        if message.sequence > self.last_sequence + 1:
            try:
                self._fill_gap(upto=message.sequence - 1)
            except Exception as error:
                if not is_transient(error):
                    raise
                self._fell_behind(error)
                return
        self._publish(message)

    def _resync(self) -> None:
        try:
            committed = self._read(self._committed, "reading its last sequence")
            if committed > self.last_sequence:
                self._fill_gap(upto=committed)
        except Exception as error:
            if not is_transient(error):
                raise
            self._fell_behind(error)
            return
        if self.behind:
            self.behind = False
            log.info(
                "project %s: the event log is readable again; delivered up to sequence %d",
                self.project_id,
                self.last_sequence,
            )

    def _fill_gap(self, upto: int) -> None:
        """Deliver what the log holds after the last delivered sequence, up to `upto`.

        Page by page (`REPLAY_PAGE` rows: an actor that fell far behind does not hold the
        whole gap in memory), each page all or nothing: its rows are read first, so a
        read that fails delivers nothing of it and leaves `last_sequence` after the last
        page delivered.
        """
        if not self.groups:  # nobody to deliver to: nothing to read
            self.last_sequence = max(self.last_sequence, upto)
            return
        self.gap_fills += 1

        def read() -> list[LoggedChange]:
            with self.db.read() as s:
                rows = queries.events_after(
                    s, self.project_id, self.last_sequence, REPLAY_PAGE, upto
                )
                return [message_from_row(row) for row in rows]

        while self.last_sequence < upto:
            page = self._read(read, f"reading the log after {self.last_sequence}")
            for message in page:
                self._publish(message)
            if len(page) < REPLAY_PAGE:
                break
        self.last_sequence = max(self.last_sequence, upto)

    def _publish(self, message: LoggedChange) -> None:
        # Each stream's events are built once per change, not per group or subscriber,
        # and before the sequence counts as delivered (a failure here hands subscribers
        # over from the previous sequence, so this change is not lost). Each group's
        # items are rendered once and the same list goes to every subscriber of it.
        groups = list(self.groups.values())
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for group in groups:
            stream = group.stream
            if stream not in by_stream:
                make = self.events_for if stream == "status" else _EVENTS[stream]
                by_stream[stream] = make(message)
        self.last_sequence = message.sequence
        for group in groups:
            stream = group.stream
            events = by_stream[stream]
            if not events:
                continue
            render = group.selection.render
            items = [_item(stream, event, render(event)) for event in events]
            for subscriber in list(group.subscribers.values()):
                subscriber.deliver(items)
        if (
            self.on_delivered is not None
            and isinstance(message, StatusChanged)
            and by_stream.get("status")
        ):
            self.on_delivered(message.timestamp)

    def _send_presence(self, event: dict[str, Any]) -> None:
        for group in list(self.groups.values()):
            if group.stream != PRESENCE:
                continue
            items = [_item(PRESENCE, event, group.selection.render(event))]
            for subscriber in list(group.subscribers.values()):
                subscriber.deliver(items)

    def events_for(self, message: LoggedChange) -> list[dict[str, Any]]:
        """The NodeExecutionStatusEvents of a change: from the nodes it carries."""
        return node_events(message)

    # --- subscribers ------------------------------------------------------------------

    def _on_subscribe(self, message: Subscribe) -> None:
        subscriber = message.subscriber
        try:
            replay = self._read(lambda: self._catch_up(message), "catching up a subscriber")
        except _Refused as refused:
            subscriber.fail([refused.error])
            return
        except Exception as error:
            if not is_transient(error):
                raise
            after = message.after_sequence
            if after is None and not message.snapshot:
                after = self.last_sequence  # live from here: nothing delivered yet
            subscriber.fail([resubscribe_error(self.project_id, after, message.snapshot, error)])
            return
        for items in replay.pages:
            subscriber.deliver(items, replay=True)
        if replay.cursor is None or replay.cursor >= self.last_sequence:
            self._join(subscriber)
            return
        # More to replay: the next page once the socket has taken this one.
        self.replaying[subscriber.key] = _Replaying(subscriber, replay.cursor)
        self._ask_for_more(subscriber)

    def _join(self, subscriber: Subscriber) -> None:
        """Live from now: every change after `last_sequence` reaches it through its group."""
        group = self.groups.get(subscriber.selection.key)
        if group is None:
            group = self.groups[subscriber.selection.key] = _Group(subscriber.selection)
        group.subscribers[subscriber.key] = subscriber
        self.subscriber_groups[subscriber.key] = subscriber.selection.key

    def _ask_for_more(self, subscriber: Subscriber) -> None:
        """Have the subscriber's socket say when it has taken what was delivered so far."""
        tell = self.actor_ref.tell
        message = ReplayMore(subscriber.key)

        def more() -> None:
            try:
                tell(message)
            except pykka.ActorDeadError:
                pass  # failed: its replacement replays from the cursor (on_failure)

        when_written = getattr(subscriber, "when_written", None)
        if when_written is None:  # a subscriber without a socket: no pace to keep
            more()
        else:
            when_written(more)

    def _replay_more(self, key: Hashable) -> None:
        """The next page of a resume whose previous page the socket has taken."""
        replaying = self.replaying.get(key)
        if replaying is None:
            return  # it left meanwhile
        subscriber = replaying.subscriber
        upto = self.last_sequence  # live delivery is here: replay up to it, then join
        try:
            with_page = self._read(
                lambda: self._next_page(subscriber.selection, replaying.cursor, upto),
                f"replaying after {replaying.cursor}",
            )
        except _Refused as refused:
            del self.replaying[key]
            subscriber.fail([refused.error])
            return
        except Exception as error:
            if not is_transient(error):
                raise
            del self.replaying[key]
            subscriber.fail([resubscribe_error(self.project_id, replaying.cursor, False, error)])
            return
        page, cursor = with_page
        self.replay_pages += 1
        if page:
            subscriber.deliver(page, replay=True)
        replaying.cursor = cursor
        if cursor >= self.last_sequence:
            del self.replaying[key]
            self._join(subscriber)
        else:
            self._ask_for_more(subscriber)

    def _next_page(self, selection: Selection, after: int, upto: int) -> tuple[list[Item], int]:
        """A later page of a replay: the log must still hold everything after `after`."""
        with self.db.read() as s:
            oldest = queries.oldest_retained_sequence(s, self.project_id)
            if oldest is not None and oldest > after + 1:
                raise _Refused(
                    f"events after sequence {after} of project {self.project_id} left the "
                    f"event log while they were being replayed (its retention limit now "
                    f"starts at sequence {oldest}): resubscribe with afterSequence: {after} "
                    "and snapshot: true to get the current state",
                    code="RESUME_TOO_OLD",
                    oldest=oldest,
                    afterSequence=after,
                )
            return self._replay_page(s, selection, after, upto)

    def _catch_up(self, message: Subscribe) -> _CatchUp:
        """What a new subscriber gets before live events, all from one consistent read.

        The read's last sequence is the stamp S. For a replay or a snapshot, everything up
        to S that this actor has not delivered yet (in flight, or lost by the bus) is
        delivered to the current subscribers first, so that live delivery, for everyone,
        continues exactly after S. Then the newcomer gets, up to S:

        * `afterSequence: n` while the log still holds everything after n: the replay of
          (n, S], with or without `snapshot` (the client has the state up to n): its
          first page now, the rest as the socket takes it (`cursor`: replayed so far);
        * `snapshot: true` without `afterSequence`, or with one the log has dropped: the
          latest logged state of every node up to S, each item with its own sequence,
          in sequence order;
        * `afterSequence` the log has dropped, without `snapshot`: RESUME_TOO_OLD;
        * neither: nothing; it is live from the last sequence this actor delivered.

        Either way sequences never go down, and no node's state goes backwards.
        """
        selection = message.subscriber.selection
        after = message.after_sequence
        if _stream(selection) == PRESENCE:  # the current editors, then live
            with self.db.read() as s:
                if queries.get_project(s, self.project_id) is None:
                    raise _Refused(
                        f"plan {self.project_id} does not exist (a plan's id is its project's id)",
                        code="PROJECT_NOT_FOUND",
                    )
            current = self.presence.current()
            return _CatchUp([[_item(PRESENCE, e, selection.render(e)) for e in current]])
        with self.db.consistent_read() as s:
            if queries.get_project(s, self.project_id) is None:
                raise _Refused(
                    f"project {self.project_id} does not exist",
                    code="PROJECT_NOT_FOUND",
                )
            stamp = queries.last_sequence(s, self.project_id)
            if after is not None:
                self._check_after(after, stamp)
            if (after is not None or message.snapshot) and stamp > self.last_sequence:
                self._fill_gap(upto=stamp)
                self.behind = False  # delivered up to the committed stamp: caught up
            if after is not None:
                oldest = queries.oldest_retained_sequence(s, self.project_id)
                if after >= stamp or (oldest is not None and oldest <= after + 1):
                    page, cursor = self._replay_page(s, selection, after, stamp)
                    return _CatchUp([page], cursor)
                if not message.snapshot:
                    raise _Refused(
                        f"events after sequence {after} of project {self.project_id} are no "
                        f"longer in the event log (its retention limit has dropped "
                        f"everything before sequence "
                        f"{oldest if oldest is not None else stamp + 1}): resubscribe with "
                        f"snapshot: true to get the current state",
                        code="RESUME_TOO_OLD",
                        oldest=oldest,
                    )
            if message.snapshot and _stream(selection) == "status":
                return _CatchUp([self._snapshot(s, selection, stamp)])
        return _CatchUp([])

    def _check_after(self, after: int, committed: int) -> None:
        if after < 0:
            raise _Refused(
                f"afterSequence must be 0 or more, got {after}", code="BAD_AFTER_SEQUENCE"
            )
        if after > committed:
            raise _Refused(
                f"afterSequence {after} is ahead of project {self.project_id}'s last "
                f"sequence {committed}: resubscribe with afterSequence {committed} or "
                "snapshot: true",
                code="BAD_AFTER_SEQUENCE",
            )

    def _replay_page(
        self, s: Any, selection: Selection, after: int, upto: int
    ) -> tuple[list[Item], int]:
        """One page of the logged changes in (after, upto], and the sequence it reaches."""
        stream = _stream(selection)
        status = stream == "status"
        if after >= upto:
            return [], after
        rows = queries.events_after(
            s, self.project_id, after, REPLAY_PAGE, upto, status_only=status
        )
        page = []
        for row in rows:
            change = status_from_row(row) if status else message_from_row(row)
            for event in _EVENTS[stream](change):
                page.append(_item(stream, event, selection.render(event)))
        # A short page is the last: nothing else of this stream up to `upto`.
        cursor = rows[-1].sequence if len(rows) == REPLAY_PAGE else upto
        return page, cursor

    def _snapshot(self, s: Any, selection: Selection, stamp: int) -> list[Item]:
        """The latest logged state of every node of the plan, as of `stamp`.

        A node's state is its entity's latest logged change (a data source's, or its
        graph's), which names every node that names the entity at that sequence: a plan
        edit that makes a node name a data source logs the source's state again
        (StateStore.plan_edit). A node that no logged change names has no state yet and
        is left out. Where the retention limit dropped an entity's every change, its row
        (kept in step with the log) says its state, as of the oldest sequence still held.
        """
        latest = queries.latest_status_events(s, self.project_id, stamp)
        oldest = queries.oldest_retained_sequence(s, self.project_id)
        trimmed_before = oldest if oldest is not None and oldest > 1 else None
        sources, graphs = queries.entity_ids(s, self.project_id)
        changes: list[StatusChanged] = []
        for node in queries.list_nodes(s, self.project_id):
            config = node.config if isinstance(node.config, dict) else {}
            source_id = config.get("dataSourceId")
            if node.node_type == "DataSourceNode" and source_id in sources:
                key = ("datasource", source_id)
            elif node.node_type != "DataSourceNode" and node.id in graphs:
                key = ("graph", graphs[node.id])
            else:
                continue
            row = latest.get(key)
            if row is not None:
                if any(node_id == node.id for node_id, _type in row.nodes or ()):
                    change = status_from_row(row)
                    changes.append(replace(change, nodes=((node.id, node.node_type),)))
            elif trimmed_before is not None:
                changes.append(self._from_entity_row(s, key, trimmed_before - 1, node))
        changes.sort(key=lambda change: (change.sequence, change.nodes[0][0]))
        items: list[Item] = []
        for change in changes:
            for event in node_events(change):
                items.append(Item(event["nodeId"], event["sequence"], selection.render(event)))
        return items

    def _from_entity_row(
        self, s: Any, key: tuple[str, int], sequence: int, node: Any
    ) -> StatusChanged:
        """A node's state from its entity's row, when the log no longer holds it."""
        entity, entity_id = key
        if entity == "datasource":
            row: Any = s.get(DataSource, entity_id)
            payload = payloads.data_source_payload(row)
        else:
            row = s.get(Graph, entity_id)
            payload = payloads.graph_payload(row)
        return StatusChanged(
            self.project_id,
            sequence,
            entity,
            entity_id,
            None if entity == "datasource" else node.id,
            payload,
            payloads.rfc3339(row.updated_at) or "",
            ((node.id, node.node_type),),
        )

    def _remove(self, key: Hashable) -> None:
        self.replaying.pop(key, None)
        group_key = self.subscriber_groups.pop(key, None)
        if group_key is None:
            return
        group = self.groups[group_key]
        group.subscribers.pop(key, None)
        if not group.subscribers:
            del self.groups[group_key]


def resubscribe_error(
    project_id: int, after: int | None, snapshot: bool, error: BaseException
) -> dict[str, Any]:
    """The protocol error of a subscription the event log could not serve (for now)."""
    if after is not None:
        how = f"afterSequence: {after}"
    elif snapshot:
        how = "snapshot: true"
    else:
        how = "afterSequence: the last sequence you received"
    return {
        "message": (
            f"project {project_id}'s event log cannot be read right now ({reason(error)}): "
            f"resubscribe with {how} to carry on without a gap"
        ),
        "extensions": {"code": "EVENT_LOG_UNAVAILABLE", "afterSequence": after},
    }


class _CatchUp:
    """What a new subscriber gets first: pages of items, and, if its replay goes on,
    the sequence replayed so far (None: nothing more, it is live at once)."""

    __slots__ = ("pages", "cursor")

    def __init__(self, pages: list[list[Item]], cursor: int | None = None) -> None:
        self.pages = [page for page in pages if page]
        self.cursor = cursor


class _Refused(Exception):
    """A subscription the actor cannot serve; carries the GraphQL error to send."""

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.error = {"message": message, "extensions": extensions}
