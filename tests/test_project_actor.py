"""Tests of the ProjectActor and the Hub, on a real SQLite file, with a fake gateway side.

The fakes implement the Subscriber and Selection protocols of actors/messages.py and record
what the actor gives them. A message told to an actor is handled before any later ask, so
`actor.ask("stats")` is the barrier that says "everything told so far has been handled":
no test waits for a duration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import pykka
import pytest

from actors.events import dataset_state
from actors.hub import Hub
from actors.messages import (
    IdleCheck,
    PlanChanged,
    StatusChanged,
    Subscribe,
    Unsubscribe,
    bus_message_from_json,
)
from actors.project import ProjectActor
from actors.state import StateStore
from storage import payloads, queries
from storage.db import Database

NODES_CSV = "id,label\na,A\n"


class FakeSelection:
    """Renders the event itself as the `next` payload, and counts its renders."""

    def __init__(self, key: Hashable = "selection") -> None:
        self.key = key
        self.renders = 0
        self._lock = threading.Lock()

    def render(self, event: dict[str, Any]) -> bytes:
        with self._lock:
            self.renders += 1
        return orjson.dumps({"data": {"nodeExecutionStatusChanged": event}})


class FakeSubscriber:
    """A mailbox that records every item (with its replay flag) and every failure."""

    def __init__(self, key: Hashable, selection: FakeSelection | None = None) -> None:
        self.key = key
        self.selection = selection or FakeSelection()
        self.items: list[tuple[str, int, dict[str, Any], bool]] = []
        self.errors: list[list[dict[str, Any]]] = []

    def deliver(self, items: Sequence[tuple[str, int, bytes]], *, replay: bool = False) -> None:
        for node_id, sequence, payload in items:
            event = orjson.loads(payload)["data"]["nodeExecutionStatusChanged"]
            assert event["nodeId"] == node_id and event["sequence"] == sequence
            self.items.append((node_id, sequence, event, replay))

    def fail(self, errors: list[dict[str, Any]]) -> None:
        self.errors.append(errors)

    @property
    def seen(self) -> list[tuple[str, int]]:
        return [(node_id, sequence) for node_id, sequence, _event, _replay in self.items]

    @property
    def sequences(self) -> list[int]:
        return [sequence for _node, sequence, _event, _replay in self.items]


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = Database(sqlite_url)
    database.create_schema()
    try:
        yield database
    finally:
        pykka.ActorRegistry.stop_all()
        database.dispose()


@pytest.fixture
def store(db: Database) -> StateStore:
    return StateStore(db)


def new_project(db: Database, name: str = "plan") -> int:
    with db.write() as s:
        return queries.create_project(s, name).id


def new_source(db: Database, project_id: int, name: str = "people") -> int:
    """A data source and the DataSourceNode `datasource_<id>` naming it."""
    with db.write() as s:
        source, _node = queries.create_data_source(
            s,
            project_id,
            name=name,
            filename=f"{name}.csv",
            file_format="csv",
            data_type="nodes",
            content=NODES_CSV,
        )
        return source.id


def add_source_node(db: Database, project_id: int, node_id: str, source_id: int) -> None:
    with db.write() as s:
        queries.add_node(
            s,
            project_id,
            node_type="DataSourceNode",
            config={"dataSourceId": source_id},
            node_id=node_id,
        )


def start(project_id: int, db: Database) -> pykka.ActorRef[ProjectActor]:
    """A started actor whose on_start (reading the project's last sequence) has run."""
    actor = ProjectActor.start(project_id, db)
    handled(actor)
    return actor


def handled(actor: pykka.ActorRef[ProjectActor]) -> dict[str, int]:
    """Wait until everything told so far is handled; the actor's counters."""
    return actor.ask("stats", timeout=10)


# --- delivery -----------------------------------------------------------------------------


def test_status_change_becomes_one_item_per_node_naming_the_source(
    db: Database, store: StateStore
) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    add_source_node(db, pid, "copy_of_people", source)
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))

    change = store.data_source_processing(source)  # persisted first, then published
    actor.tell(change)
    handled(actor)

    assert sorted(subscriber.seen) == [("copy_of_people", 1), (f"datasource_{source}", 1)]
    assert subscriber.errors == []
    for node_id, sequence, event, replay in subscriber.items:
        assert replay is False
        assert event == {
            "projectId": pid,
            "nodeId": node_id,
            "nodeType": "DataSourceNode",
            "datasourceExecution": change.state,
            "datasetExecution": dataset_state(change.state),
            "graphExecution": None,
            "timestamp": change.timestamp,
            "sequence": sequence,
        }
    assert change.state["executionState"] == "processing"
    assert change.timestamp.endswith("Z")


def test_graph_change_goes_to_its_node_with_its_type(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    with db.write() as s:
        queries.add_node(s, pid, node_type="MergeNode", config={}, node_id="merge_1")
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))
    actor.tell(store.graph(pid, "merge_1", lambda g: setattr(g, "execution_state", "processing")))
    # A graph whose node is gone has no badge: no item, but the sequence is consumed.
    actor.tell(store.graph(pid, "deleted", lambda g: setattr(g, "execution_state", "completed")))
    stats = handled(actor)
    assert subscriber.seen == [("merge_1", 1)]
    event = subscriber.items[0][2]
    assert event["nodeType"] == "MergeNode"
    assert event["datasourceExecution"] is None
    assert event["graphExecution"]["executionState"] == "processing"
    assert stats["last_sequence"] == 2


def test_only_subscribers_of_the_project_get_its_events(db: Database, store: StateStore) -> None:
    first, second = new_project(db, "first"), new_project(db, "second")
    first_source, second_source = new_source(db, first), new_source(db, second)
    first_actor, second_actor = start(first, db), start(second, db)
    watches_first, watches_second = FakeSubscriber("a"), FakeSubscriber("b")
    first_actor.tell(Subscribe(watches_first))
    second_actor.tell(Subscribe(watches_second))

    first_actor.tell(store.data_source_processing(first_source))
    second_actor.tell(store.data_source_processing(second_source))
    second_actor.tell(store.data_source_pending(second_source))
    handled(first_actor)
    handled(second_actor)

    assert watches_first.seen == [(f"datasource_{first_source}", 1)]
    assert watches_second.seen == [
        (f"datasource_{second_source}", 1),
        (f"datasource_{second_source}", 2),
    ]
    assert {event["projectId"] for _n, _s, event, _r in watches_first.items} == {first}
    assert {event["projectId"] for _n, _s, event, _r in watches_second.items} == {second}


def test_unsubscribed_subscriber_gets_nothing_more(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)
    stays, leaves = FakeSubscriber("stays"), FakeSubscriber("leaves")
    actor.tell(Subscribe(stays))
    actor.tell(Subscribe(leaves))
    actor.tell(store.data_source_processing(source))
    actor.tell(Unsubscribe("leaves"))
    actor.tell(Unsubscribe("never-subscribed"))  # harmless
    actor.tell(store.data_source_pending(source))
    stats = handled(actor)
    assert stays.sequences == [1, 2]
    assert leaves.sequences == [1]
    assert stats["subscribers"] == 1


# --- stored resolution and plan edits -------------------------------------------------------


def repoint(db: Database, store: StateStore, pid: int, node_id: str, source: int) -> list[Any]:
    """updatePlanDagNode, as the resolver does it: the edit and its log rows, one transaction."""
    with db.write() as s:
        node = queries.update_node(
            s, pid, node_id, node_type="DataSourceNode", config={"dataSourceId": source}
        )
        return store.plan_edit(s, pid, payloads.node_change("updated", node), names_source_of=node)


def test_delivery_reads_the_nodes_the_change_carries(db: Database, store: StateStore) -> None:
    """No node-ID map: the message says where it goes, even if the plan says otherwise now
    (a message resolved at its sequence, read after a later edit, must not be resolved again)."""
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))
    change = store.data_source_processing(source)
    assert change.nodes == ((f"datasource_{source}", "DataSourceNode"),)
    add_source_node(db, pid, "added_later", source)  # not through the log: the plan only
    actor.tell(change)
    stats = handled(actor)
    assert subscriber.seen == [(f"datasource_{source}", 1)]
    assert stats["gap_fills"] == 0


def test_plan_edits_take_sequences_that_status_streams_skip_without_a_read(
    db: Database, store: StateStore
) -> None:
    pid = new_project(db)
    people, places = new_source(db, pid, "people"), new_source(db, pid, "places")
    add_source_node(db, pid, "movable", people)
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))
    actor.tell(store.data_source_processing(people))  # 1: people's two nodes
    actor.tell(store.data_source_processing(places))  # 2
    edit = repoint(db, store, pid, "movable", places)  # 3: the edit, 4: places announced
    assert [type(m).__name__ for m in edit] == ["PlanChanged", "StatusChanged"]
    assert [m.sequence for m in edit] == [3, 4]
    assert edit[1].nodes == (
        (f"datasource_{places}", "DataSourceNode"),
        ("movable", "DataSourceNode"),
    )
    for message in edit:
        actor.tell(message)
    actor.tell(store.data_source_pending(people))  # 5: people's own node only
    stats = handled(actor)

    assert sorted(subscriber.seen) == [
        (f"datasource_{people}", 1),
        (f"datasource_{people}", 5),
        (f"datasource_{places}", 2),
        (f"datasource_{places}", 4),
        ("movable", 1),
        ("movable", 4),
    ]
    moved = [event for node, _seq, event, _r in subscriber.items if node == "movable"]
    assert [e["datasourceExecution"]["dataSourceId"] for e in moved] == [people, places]
    assert stats["gap_fills"] == 0 and stats["last_sequence"] == 5  # 3 was known, not a gap

    # History is not rewritten: a replay from 0 says what the live stream said.
    late = FakeSubscriber("late")
    actor.tell(Subscribe(late, after_sequence=0))
    handled(actor)
    assert late.seen == subscriber.seen


def test_a_lost_plan_edit_is_filled_from_the_log_once(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    add_source_node(db, pid, "other", source)
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))
    with db.write() as s:
        node = queries.require_node(s, pid, "other")
        change = payloads.node_change("removed", node)
        queries.delete_node(s, pid, "other")
        store.plan_edit(s, pid, change)  # 1: never published (lost)
    actor.tell(store.data_source_processing(source))  # 2
    stats = handled(actor)
    assert subscriber.seen == [(f"datasource_{source}", 2)]
    assert stats["gap_fills"] == 1


# --- ordering: duplicates, gaps, replay -----------------------------------------------------


def test_duplicates_are_dropped(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))
    first = store.data_source_processing(source)
    second = store.data_source_pending(source)
    for message in (first, first, second, first, second):
        actor.tell(message)
    handled(actor)
    assert subscriber.sequences == [1, 2]


def test_gap_is_filled_from_the_event_log_in_order(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)  # started before anything was persisted: it has delivered 0
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))
    persisted = [
        store.data_source_processing(source),
        store.data_source_pending(source),
        store.data_source_failed(source, "bad row 3"),
    ]
    actor.tell(persisted[2])  # 1 and 2 are still "in flight"
    handled(actor)
    assert subscriber.sequences == [1, 2, 3]
    states = [event["datasourceExecution"]["executionState"] for *_x, event, _r in subscriber.items]
    assert states == ["processing", "pending", "error"]
    assert [event["timestamp"] for *_x, event, _r in subscriber.items] == [
        change.timestamp for change in persisted
    ]
    actor.tell(persisted[0])  # late arrivals of the filled sequences are duplicates now
    actor.tell(persisted[1])
    handled(actor)
    assert subscriber.sequences == [1, 2, 3]


def test_resume_after_sequence_replays_then_continues_live(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)
    for _ in range(5):  # delivered to nobody, but known to the actor
        actor.tell(store.data_source_processing(source))
    assert handled(actor)["last_sequence"] == 5

    subscriber = FakeSubscriber("resumer")
    actor.tell(Subscribe(subscriber, after_sequence=2))
    handled(actor)  # the replay's read is done before 6 is committed
    actor.tell(store.data_source_pending(source))  # 6, live
    actor.tell(store.data_source_processing(source))  # 7, live
    handled(actor)

    assert subscriber.errors == []
    assert subscriber.sequences == [3, 4, 5, 6, 7]
    assert [replay for *_x, replay in subscriber.items] == [True, True, True, False, False]


def test_resume_at_the_last_sequence_replays_nothing(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    store.data_source_processing(source)
    store.data_source_pending(source)
    actor = start(pid, db)  # reads the last sequence (2) when it starts
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber, after_sequence=2))
    handled(actor)
    actor.tell(store.data_source_processing(source))
    handled(actor)
    assert subscriber.errors == []
    assert subscriber.items and subscriber.sequences == [3]
    assert subscriber.items[0][3] is False


def test_resume_ahead_of_the_last_sequence_fails(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    store.data_source_processing(source)
    store.data_source_processing(source)
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber, after_sequence=7))
    stats = handled(actor)
    assert subscriber.items == []
    assert len(subscriber.errors) == 1
    [error] = subscriber.errors[0]
    assert f"afterSequence 7 is ahead of project {pid}'s last sequence 2" in error["message"]
    assert error["extensions"]["code"] == "BAD_AFTER_SEQUENCE"
    assert stats["subscribers"] == 0  # a refused subscriber is not kept
    actor.tell(store.data_source_pending(source))
    handled(actor)
    assert subscriber.items == []

    negative = FakeSubscriber("s2")
    actor.tell(Subscribe(negative, after_sequence=-1))
    handled(actor)
    assert "afterSequence must be 0 or more, got -1" in negative.errors[0][0]["message"]


def test_resume_from_a_committed_sequence_not_yet_received(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)
    assert handled(actor)["last_sequence"] == 0
    in_flight = [store.data_source_processing(source) for _ in range(3)]  # committed: 1, 2, 3
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber, after_sequence=2))
    for change in in_flight:
        actor.tell(change)
    handled(actor)
    assert subscriber.errors == []
    assert subscriber.sequences == [3]


def test_resume_before_the_retention_window_fails(db: Database) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    store = StateStore(db, retention=3)
    for _ in range(6):
        store.data_source_processing(source)  # the log keeps 4, 5, 6
    actor = start(pid, db)

    too_old = FakeSubscriber("old")
    actor.tell(Subscribe(too_old, after_sequence=2))
    just_in = FakeSubscriber("in")
    actor.tell(Subscribe(just_in, after_sequence=3))
    handled(actor)

    assert too_old.items == []
    [error] = too_old.errors[0]
    assert (
        f"events after sequence 2 of project {pid} are no longer in the event log"
        in (error["message"])
    )
    assert "before sequence 4" in error["message"]
    assert "snapshot: true" in error["message"]
    assert error["extensions"]["code"] == "RESUME_TOO_OLD"
    assert just_in.errors == []
    assert just_in.sequences == [4, 5, 6]


def test_snapshot_sends_current_state_of_every_node(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    done, broken = new_source(db, pid, "done"), new_source(db, pid, "broken")
    add_source_node(db, pid, "done_again", done)
    with db.write() as s:
        queries.add_node(s, pid, node_type="GraphNode", config={}, node_id="graph_1")
    store.data_source_processing(done)
    store.data_source_completed(done, {"nodes": [], "edges": [], "layers": []})
    store.data_source_failed(broken, "missing column 'label'")
    store.graph(pid, "graph_1", lambda g: setattr(g, "execution_state", "processing"))
    actor = start(pid, db)

    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber, snapshot=True))
    handled(actor)  # the snapshot is taken before the next change is committed
    actor.tell(store.graph(pid, "graph_1", lambda g: setattr(g, "execution_state", "completed")))
    handled(actor)

    snapshot = {node: event for node, _seq, event, replay in subscriber.items if replay}
    assert set(snapshot) == {f"datasource_{done}", "done_again", f"datasource_{broken}", "graph_1"}
    # Each item says the sequence of the change it is (its latest), in sequence order.
    assert [seq for _node, seq, _event, replay in subscriber.items if replay] == [2, 2, 3, 4]
    assert snapshot["done_again"]["sequence"] == 2 and snapshot["graph_1"]["sequence"] == 4
    assert snapshot[f"datasource_{done}"]["datasourceExecution"]["executionState"] == "completed"
    assert snapshot["done_again"]["datasourceExecution"]["status"] == "active"
    broken_state = snapshot[f"datasource_{broken}"]["datasourceExecution"]
    assert (broken_state["executionState"], broken_state["errorMessage"]) == (
        "error",
        "missing column 'label'",
    )
    assert snapshot["graph_1"]["nodeType"] == "GraphNode"
    assert snapshot["graph_1"]["graphExecution"]["executionState"] == "processing"
    live = [(node, seq) for node, seq, _event, replay in subscriber.items if not replay]
    assert live == [("graph_1", 5)]
    assert subscriber.items[-1][2]["graphExecution"]["executionState"] == "completed"


def test_snapshot_includes_a_node_added_after_its_sources_last_change(
    db: Database, store: StateStore
) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    store.data_source_completed(source, {"nodes": [], "edges": [], "layers": []})  # 1
    with db.write() as s:  # 2: the edit, 3: the source's state, naming both nodes
        node = queries.add_node(
            s, pid, node_type="DataSourceNode", node_id="alias", config={"dataSourceId": source}
        )
        store.plan_edit(s, pid, payloads.node_change("added", node), names_source_of=node)
    with db.write() as s:  # 4: a removed node is not in the snapshot
        node = queries.add_node(s, pid, node_type="GraphNode", config={}, node_id="gone")
        store.plan_edit(s, pid, payloads.node_change("added", node))
    store.graph(pid, "gone", lambda g: setattr(g, "execution_state", "completed"))  # 5
    with db.write() as s:  # 6
        node = queries.require_node(s, pid, "gone")
        change = payloads.node_change("removed", node)
        queries.delete_node(s, pid, "gone")
        store.plan_edit(s, pid, change)
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber, snapshot=True))
    handled(actor)
    assert subscriber.seen == [("alias", 3), (f"datasource_{source}", 3)]
    assert {e["datasourceExecution"]["executionState"] for *_x, e, _r in subscriber.items} == {
        "completed"
    }


def test_a_snapshot_is_stamped_by_its_own_read_and_the_stream_goes_on_after_it(
    db: Database, store: StateStore
) -> None:
    """Changes committed but not yet received when the snapshot is read: current
    subscribers get them first, the newcomer's snapshot already holds them, and what
    arrives late is a duplicate. No sequence goes down, no state goes backwards."""
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)
    early = FakeSubscriber("early")
    actor.tell(Subscribe(early))
    handled(actor)
    in_flight = [
        store.data_source_processing(source),
        store.data_source_completed(source, {"nodes": [], "edges": [], "layers": []}),
    ]
    newcomer = FakeSubscriber("new")
    actor.tell(Subscribe(newcomer, snapshot=True))
    handled(actor)  # the snapshot is read with 1 and 2 committed, neither received
    for change in in_flight:
        actor.tell(change)
    actor.tell(store.data_source_processing(source))  # 3, live
    handled(actor)
    assert early.sequences == [1, 2, 3]
    assert newcomer.sequences == [2, 3]
    states = [e["datasourceExecution"]["executionState"] for *_x, e, _r in newcomer.items]
    assert states == ["completed", "processing"]
    assert [replay for *_x, replay in newcomer.items] == [True, False]


def test_snapshot_with_after_sequence_replays_while_the_log_holds_it(db: Database) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    store = StateStore(db, retention=3)
    for _ in range(6):
        store.data_source_processing(source)  # the log keeps 4, 5, 6
    actor = start(pid, db)
    resumes = FakeSubscriber("resumes")
    actor.tell(Subscribe(resumes, after_sequence=4, snapshot=True))
    trimmed = FakeSubscriber("trimmed")
    actor.tell(Subscribe(trimmed, after_sequence=1, snapshot=True))
    handled(actor)
    assert resumes.errors == [] and resumes.sequences == [5, 6]  # a replay, no snapshot
    assert trimmed.errors == [] and trimmed.sequences == [6]  # the log lost 2, 3: a snapshot


def test_snapshot_of_an_entity_whose_every_change_was_trimmed(db: Database) -> None:
    pid = new_project(db)
    quiet, busy = new_source(db, pid, "quiet"), new_source(db, pid, "busy")
    store = StateStore(db, retention=2)
    store.data_source_failed(quiet, "bad row 2")  # 1, trimmed below
    for _ in range(4):
        store.data_source_processing(busy)  # 2..5; the log keeps 4, 5
    actor = start(pid, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber, snapshot=True))
    handled(actor)
    # quiet's state from its row, as of the sequence before the oldest the log holds.
    assert subscriber.seen == [(f"datasource_{quiet}", 3), (f"datasource_{busy}", 5)]
    assert subscriber.items[0][2]["datasourceExecution"]["errorMessage"] == "bad row 2"


def test_subscribing_to_a_missing_project_fails(db: Database) -> None:
    actor = start(4242, db)
    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber, snapshot=True))
    stats = handled(actor)
    assert subscriber.items == []
    [error] = subscriber.errors[0]
    assert error["message"] == "project 4242 does not exist"
    assert error["extensions"]["code"] == "PROJECT_NOT_FOUND"
    assert stats["subscribers"] == 0


def test_shared_selection_is_rendered_once_per_event(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    add_source_node(db, pid, "second_node", source)
    actor = start(pid, db)
    shared = FakeSelection("same document, same variables")
    alone = FakeSelection("another document")
    sharing = [FakeSubscriber(f"shared-{i}", shared) for i in range(5)]
    lonely = FakeSubscriber("lonely", alone)
    for subscriber in [*sharing, lonely]:
        actor.tell(Subscribe(subscriber))
    assert handled(actor)["groups"] == 2

    for _ in range(3):
        actor.tell(store.data_source_processing(source))
    handled(actor)

    # 3 events x 2 nodes each: 6 renders per distinct selection, however many share it.
    assert shared.renders == 6
    assert alone.renders == 6
    for subscriber in [*sharing, lonely]:
        assert sorted(subscriber.seen) == sorted(
            (node, seq) for node in (f"datasource_{source}", "second_node") for seq in (1, 2, 3)
        )
    assert sharing[0].items == sharing[4].items


def test_idle_check(db: Database, store: StateStore) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    actor = start(pid, db)
    assert actor.ask(IdleCheck(0)) is True  # nobody, and zero seconds asked
    assert actor.ask(IdleCheck(60)) is False  # just started counts as recent

    subscriber = FakeSubscriber("s1")
    actor.tell(Subscribe(subscriber))
    assert actor.ask(IdleCheck(0)) is False  # a subscriber keeps it busy
    actor.tell(Unsubscribe("s1"))
    assert actor.ask(IdleCheck(0)) is True

    actor.tell(store.data_source_processing(source))  # traffic without subscribers
    assert actor.ask(IdleCheck(0.3)) is False
    time.sleep(0.35)
    assert actor.ask(IdleCheck(0.3)) is True  # asking is not traffic


# --- the Hub ------------------------------------------------------------------------------


def project_actors() -> set[pykka.ActorRef[Any]]:
    return set(pykka.ActorRegistry.get_by_class(ProjectActor))


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.01)
    return value


@pytest.fixture
def hub(db: Database) -> Iterator[Hub]:
    # No automatic reaping: the tests call reap_idle() themselves.
    hub = Hub(db, idle_seconds=0.1, reap_interval=3600)
    try:
        yield hub
    finally:
        hub.stop()


def test_hub_subscribe_starts_an_actor_and_routes_to_it(
    db: Database, store: StateStore, hub: Hub
) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    subscriber = FakeSubscriber("s1")
    hub.subscribe(pid, subscriber)
    assert hub.project_ids() == [pid]
    assert hub.ask(pid, "stats")["subscribers"] == 1
    hub.route(store.data_source_processing(source))
    hub.route(PlanChanged(pid, 2, {"type": "edge"}, ""))
    assert hub.ask(pid, "stats")["subscribers"] == 1
    assert hub.ask(pid, "stats")["last_sequence"] == 2
    assert subscriber.seen == [(f"datasource_{source}", 1)]
    assert hub.ask(9999, "stats") is None


class GatedDatabase(Database):
    """The real database, but project actor threads wait at their first read until the gate
    opens: a deterministic stand-in for an actor thread that is slow to get going."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.gate = threading.Event()

    @contextmanager
    def read(self) -> Iterator[Any]:
        if threading.current_thread().name.startswith("ProjectActor"):
            self.gate.wait(timeout=10)
        with super().read() as s:
            yield s


def test_hub_first_subscriber_gets_a_change_committed_right_after_subscribing(
    sqlite_url: str,
) -> None:
    db = GatedDatabase(sqlite_url)
    db.create_schema()
    hub = Hub(db, idle_seconds=60, reap_interval=3600)
    try:
        pid = new_project(db)
        source = new_source(db, pid)
        subscriber = FakeSubscriber("s1")
        hub.subscribe(pid, subscriber)  # returns: the client now creates/processes a source
        change = StateStore(db).data_source_processing(source)  # committed after subscribing
        db.gate.set()  # the actor thread gets going only now
        hub.route(change)
        hub.ask(pid, "stats")
        assert subscriber.seen == [(f"datasource_{source}", 1)]
    finally:
        db.gate.set()
        hub.stop()
        db.dispose()


def test_hub_reaps_an_idle_actor_and_it_stops(db: Database, hub: Hub) -> None:
    pid = new_project(db)
    before = project_actors()
    subscriber = FakeSubscriber("s1")
    hub.subscribe(pid, subscriber)
    assert hub.ask(pid, "stats")["subscribers"] == 1
    [actor] = project_actors() - before
    assert actor.is_alive()
    threads = threading.active_count()  # actors share the runtime's threads

    time.sleep(0.15)
    assert hub.reap_idle() == 0  # a subscriber keeps it alive, however long ago it came
    assert hub.project_ids() == [pid]

    hub.unsubscribe(pid, "s1")
    assert hub.reap_idle() == 0  # the unsubscribe was traffic just now
    time.sleep(0.15)
    assert hub.reap_idle() == 1
    assert hub.project_ids() == []
    assert hub.actor_count == 0
    assert actor.actor_stopped.wait(5)
    assert actor not in project_actors()
    assert threading.active_count() == threads

    # A new subscriber later gets a fresh actor.
    again = FakeSubscriber("s2")
    hub.subscribe(pid, again)
    assert hub.ask(pid, "stats")["subscribers"] == 1


def test_hub_route_without_an_actor_does_nothing(db: Database, store: StateStore, hub: Hub) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    before = project_actors()
    hub.route(store.data_source_processing(source))
    hub.route(PlanChanged(pid, 2, {"type": "edge"}, ""))
    hub.unsubscribe(pid, "nobody")
    assert hub.project_ids() == []
    assert hub.actor_count == 0
    assert project_actors() == before == set()


def test_status_changed_survives_the_bus_encoding() -> None:
    change = StatusChanged(
        3,
        7,
        "graph",
        2,
        "g",
        {"executionState": "error"},
        "2024-01-01T00:00:00.000Z",
        (("g", "GraphNode"),),
    )
    assert bus_message_from_json(change.to_json()) == change
    edit = PlanChanged(3, 8, {"type": "node", "operation": "removed", "node": {"id": "g"}}, "t")
    assert bus_message_from_json(edit.to_json()) == edit
    with pytest.raises(ValueError, match="unknown bus message kind 'other'"):
        bus_message_from_json(b'{"kind": "other"}')
