"""Tests of storage/ (and the StateStore that writes through it) on real databases.

Every test runs twice, on a real SQLite file and on a fresh real PostgreSQL database, because
the promises that matter most (gap-free sequences under concurrent writers, error messages
that name the problem) must hold on both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from actors.messages import StatusChanged
from actors.state import INTERRUPTED, StateStore
from storage import group_commit, payloads, queries
from storage.db import Database
from storage.models import DataSource, ExecutionEvent, Graph, PlanDagEdge, PlanDagNode, Project

NODES_CSV = "id,label\na,A\nb,B\n"


@pytest.fixture
def db(any_db_url: str) -> Iterator[Database]:
    database = Database(any_db_url)
    database.create_schema()
    try:
        yield database
    finally:
        database.dispose()


def new_project(db: Database, name: str = "plan") -> int:
    with db.write() as s:
        return queries.create_project(s, name, "a test project").id


def new_source(db: Database, project_id: int, name: str = "people", **kwargs: object) -> int:
    with db.write() as s:
        source, _node = queries.create_data_source(
            s,
            project_id,
            name=name,
            filename=f"{name}.csv",
            file_format="csv",
            data_type="nodes",
            content=NODES_CSV,
            **kwargs,  # type: ignore[arg-type]
        )
        return source.id


def log_event(db: Database, project_id: int, entity_id: int = 1) -> int:
    with db.write() as s:
        row = queries.record_event(
            s,
            project_id,
            entity="datasource",
            entity_id=entity_id,
            node_id=None,
            payload={"executionState": "processing"},
        )
        return row.sequence


def sequences(db: Database, project_id: int) -> list[int]:
    with db.read() as s:
        return [row.sequence for row in queries.events_after(s, project_id, 0)]


# --- projects -----------------------------------------------------------------------------


def test_project_crud(db: Database) -> None:
    with db.write() as s:
        first = queries.create_project(s, "  alpha  ", "first")
        second = queries.create_project(s, "beta")
        first_id, second_id = first.id, second.id
    assert first.name == "alpha"  # stripped
    with db.read() as s:
        assert [p.name for p in queries.list_projects(s)] == ["alpha", "beta"]
        project = queries.get_project(s, first_id)
        assert project is not None
        assert project.description == "first"
        assert project.last_sequence == 0
        assert payloads.rfc3339(project.created_at).endswith("Z")  # type: ignore[union-attr]
        assert queries.get_project(s, 9999) is None
        with pytest.raises(queries.NotFound, match="project 9999 does not exist"):
            queries.require_project(s, 9999)
    with db.write() as s:
        assert queries.delete_project(s, second_id) is True
    with db.write() as s:
        assert queries.delete_project(s, second_id) is False
    with db.read() as s:
        assert [p.id for p in queries.list_projects(s)] == [first_id]


def test_project_name_rules(db: Database) -> None:
    with db.write() as s, pytest.raises(queries.InvalidInput, match="name must not be empty"):
        queries.create_project(s, "   ")
    with db.write() as s, pytest.raises(queries.InvalidInput, match="201 characters.*200"):
        queries.create_project(s, "x" * 201)
    with db.read() as s:
        assert queries.list_projects(s) == []


# --- the Plan DAG -------------------------------------------------------------------------


def test_nodes_add_update_delete(db: Database) -> None:
    pid = new_project(db)
    with db.write() as s:
        node = queries.add_node(
            s,
            pid,
            node_type="GraphNode",
            config={"label": "g"},
            node_id="graph_1",
            metadata={"label": "Graph"},
            position_x=1.5,
            position_y=-2.0,
        )
        assert node.id == "graph_1"
        generated = queries.add_node(s, pid, node_type="MergeNode", config={})
        assert generated.id.startswith("merge_")
    with db.write() as s:
        updated = queries.update_node(
            s, pid, "graph_1", node_type="OutputNode", config={"x": 1}, position_x=3.0
        )
        assert updated.node_type == "OutputNode"
    with db.read() as s:
        node = queries.require_node(s, pid, "graph_1")
        assert (node.node_type, node.config, node.position_x) == ("OutputNode", {"x": 1}, 3.0)
        assert node.node_metadata is None
        assert {n.id for n in queries.list_nodes(s, pid)} == {"graph_1", generated.id}
    with db.write() as s:
        assert queries.delete_node(s, pid, "graph_1") is True
    with db.write() as s:
        assert queries.delete_node(s, pid, "graph_1") is False
    with db.read() as s:
        assert queries.get_node(s, pid, "graph_1") is None
        with pytest.raises(
            queries.NotFound, match=f"node 'graph_1' does not exist in project {pid}"
        ):
            queries.require_node(s, pid, "graph_1")


def test_node_errors_name_the_problem(db: Database) -> None:
    pid = new_project(db)
    with db.write() as s:
        queries.add_node(s, pid, node_type="GraphNode", config={}, node_id="g")
    with db.write() as s, pytest.raises(queries.InvalidInput) as duplicate:
        queries.add_node(s, pid, node_type="GraphNode", config={}, node_id="g")
    assert str(duplicate.value) == f"node id 'g' is already used in project {pid}"
    with db.write() as s, pytest.raises(queries.InvalidInput) as unknown:
        queries.add_node(s, pid, node_type="FancyNode", config={}, node_id="f")
    assert "nodeType 'FancyNode' is not one of" in str(unknown.value)
    assert "DataSourceNode" in str(unknown.value) and "OutputNode" in str(unknown.value)
    with db.write() as s, pytest.raises(queries.InvalidInput, match="config must be a JSON object"):
        queries.add_node(s, pid, node_type="GraphNode", config=[1], node_id="l")  # type: ignore[arg-type]
    with db.write() as s, pytest.raises(queries.InvalidInput, match="config.dataSourceId"):
        queries.add_node(s, pid, node_type="DataSourceNode", config={"dataSourceId": "7"})
    with db.write() as s, pytest.raises(queries.InvalidInput, match="config.dataSourceId"):
        queries.add_node(s, pid, node_type="DataSourceNode", config={"dataSourceId": True})
    with db.write() as s, pytest.raises(queries.NotFound, match="project 4242 does not exist"):
        queries.add_node(s, 4242, node_type="GraphNode", config={})
    with db.write() as s, pytest.raises(queries.NotFound, match="node 'nope' does not exist"):
        queries.update_node(s, pid, "nope", node_type="GraphNode", config={})
    with db.write() as s, pytest.raises(queries.InvalidInput, match="nodeType 'Bad'"):
        queries.update_node(s, pid, "g", node_type="Bad", config={})
    with db.read() as s:
        assert [(n.id, n.node_type) for n in queries.list_nodes(s, pid)] == [("g", "GraphNode")]


def test_edges_add_delete_and_errors(db: Database) -> None:
    pid = new_project(db)
    with db.write() as s:
        for node_id in ("a", "b", "c"):
            queries.add_node(s, pid, node_type="GraphNode", config={}, node_id=node_id)
        queries.add_edge(s, pid, source="a", target="b", edge_id="e1", metadata={"w": 1})
        generated = queries.add_edge(s, pid, source="b", target="c")
        assert generated.id.startswith("edge_")
    with db.read() as s:
        edges = {e.id: (e.source, e.target) for e in queries.list_edges(s, pid)}
    assert edges == {"e1": ("a", "b"), generated.id: ("b", "c")}

    with db.write() as s, pytest.raises(queries.InvalidInput) as missing_target:
        queries.add_edge(s, pid, source="a", target="ghost")
    assert str(missing_target.value) == f"edge target 'ghost' is not a node of project {pid}"
    with db.write() as s, pytest.raises(queries.InvalidInput) as missing_source:
        queries.add_edge(s, pid, source="ghost", target="a")
    assert str(missing_source.value) == f"edge source 'ghost' is not a node of project {pid}"
    with db.write() as s, pytest.raises(queries.InvalidInput) as loop:
        queries.add_edge(s, pid, source="a", target="a")
    assert str(loop.value) == "edge from 'a' to itself would make a cycle"
    with db.write() as s, pytest.raises(queries.InvalidInput) as duplicate:
        queries.add_edge(s, pid, source="a", target="c", edge_id="e1")
    assert str(duplicate.value) == f"edge id 'e1' is already used in project {pid}"

    with db.write() as s:
        assert queries.delete_edge(s, pid, "e1") is True
    with db.write() as s:
        assert queries.delete_edge(s, pid, "e1") is False
    with db.write() as s:  # deleting a node takes its edges (and its graph) with it
        queries.get_or_create_graph(s, pid, "c")
        assert queries.delete_node(s, pid, "c") is True
    with db.read() as s:
        assert queries.list_edges(s, pid) == []
        assert queries.get_graph_by_node(s, pid, "c") is None


def test_create_data_source_adds_a_node_naming_it(db: Database) -> None:
    pid = new_project(db)
    with db.write() as s:
        source, node = queries.create_data_source(
            s,
            pid,
            name=" people ",
            filename="people.csv",
            file_format="csv",
            data_type="nodes",
            content=NODES_CSV,
        )
        source_id = source.id
        assert node is not None
        assert node.id == f"datasource_{source_id}"
    with db.read() as s:
        stored = queries.require_data_source(s, source_id)
        assert (stored.name, stored.filename, stored.status, stored.execution_state) == (
            "people",
            "people.csv",
            "processing",
            "not_started",
        )
        node = queries.require_node(s, pid, f"datasource_{source_id}")
        assert node.node_type == "DataSourceNode"
        assert node.config["dataSourceId"] == source_id
        assert node.config["filename"] == "people.csv"
        assert node.node_metadata == {"label": " people "}
        assert [d.id for d in queries.list_data_sources(s, pid)] == [source_id]
        payload = payloads.data_source_payload(stored)
    assert payload == {
        "dataSourceId": source_id,
        "filename": "people.csv",
        "status": "processing",
        "processedAt": None,
        "executionState": "not_started",
        "errorMessage": None,
    }
    bare = new_source(db, pid, "bare", add_node_for_it=False)
    with db.read() as s:
        assert queries.get_node(s, pid, f"datasource_{bare}") is None
    with db.write() as s, pytest.raises(queries.InvalidInput, match="name must not be empty"):
        queries.create_data_source(
            s, pid, name=" ", filename="f", file_format="csv", data_type="nodes", content=""
        )
    with db.write() as s, pytest.raises(queries.InvalidInput, match="filename must not be empty"):
        queries.create_data_source(
            s, pid, name="n", filename="", file_format="csv", data_type="nodes", content=""
        )
    with db.read() as s, pytest.raises(queries.NotFound, match="data source 999 does not exist"):
        queries.require_data_source(s, 999)


def test_node_ids_of_a_data_source_and_the_node_id_map(db: Database) -> None:
    pid = new_project(db)
    other = new_project(db, "other")
    first = new_source(db, pid, "first")
    second = new_source(db, pid, "second", add_node_for_it=False)
    with db.write() as s:
        queries.add_node(
            s, pid, node_type="DataSourceNode", config={"dataSourceId": first}, node_id="z_copy"
        )
        queries.add_node(
            s, pid, node_type="DataSourceNode", config={"dataSourceId": second}, node_id="b"
        )
        queries.add_node(s, pid, node_type="DataSourceNode", config={}, node_id="unset")
        # Same id in a GraphNode's config or another project's node is not a DataSourceNode of it.
        queries.add_node(s, pid, node_type="GraphNode", config={"dataSourceId": first}, node_id="g")
        queries.add_node(
            s, other, node_type="DataSourceNode", config={"dataSourceId": first}, node_id="x"
        )
    with db.read() as s:
        assert queries.data_source_node_ids(s, pid, first) == [f"datasource_{first}", "z_copy"]
        assert queries.data_source_node_ids(s, pid, second) == ["b"]
        assert queries.data_source_node_ids(s, pid, 12345) == []
        by_source, types = queries.node_id_map(s, pid)
    assert by_source == {first: [f"datasource_{first}", "z_copy"], second: ["b"]}
    assert types == {
        f"datasource_{first}": "DataSourceNode",
        "z_copy": "DataSourceNode",
        "b": "DataSourceNode",
        "unset": "DataSourceNode",
        "g": "GraphNode",
    }
    with db.write() as s:  # re-pointing a node is seen by the next read
        queries.update_node(
            s, pid, "z_copy", node_type="DataSourceNode", config={"dataSourceId": second}
        )
    with db.read() as s:
        assert queries.data_source_node_ids(s, pid, first) == [f"datasource_{first}"]
        assert queries.data_source_node_ids(s, pid, second) == ["b", "z_copy"]


# --- the event log ------------------------------------------------------------------------


def test_record_event_sequences_are_per_project_and_gap_free(db: Database) -> None:
    pid = new_project(db)
    other = new_project(db, "other")
    assert [log_event(db, pid) for _ in range(3)] == [1, 2, 3]
    assert log_event(db, other) == 1
    assert log_event(db, pid) == 4
    with db.read() as s:
        assert queries.last_sequence(s, pid) == 4
        assert queries.last_sequence(s, other) == 1
        assert queries.last_sequence(s, 9999) == 0
        row = queries.events_after(s, pid, 0)[0]
        assert (row.entity, row.entity_id, row.payload) == (
            "datasource",
            1,
            {"executionState": "processing"},
        )
    assert sequences(db, pid) == [1, 2, 3, 4]


def test_a_rolled_back_transaction_uses_no_sequence(db: Database) -> None:
    pid = new_project(db)
    assert log_event(db, pid) == 1
    with pytest.raises(RuntimeError), db.write() as s:
        queries.record_event(s, pid, entity="datasource", entity_id=1, node_id=None, payload={})
        raise RuntimeError("the entity update failed")
    assert log_event(db, pid) == 2
    assert sequences(db, pid) == [1, 2]


def test_record_event_for_a_missing_project(db: Database) -> None:
    with db.write() as s, pytest.raises(queries.NotFound, match="project 77 does not exist"):
        queries.next_sequence(s, 77)


def test_concurrent_writers_get_every_sequence_exactly_once(db: Database) -> None:
    pid = new_project(db)
    sources = [new_source(db, pid, f"s{i}") for i in range(4)]
    store = StateStore(db)
    threads, per_thread = 8, 25
    results: list[list[StatusChanged]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def writer(index: int) -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                # Two threads per data source: row contention as well as sequence contention.
                results[index].append(store.data_source_processing(sources[index % 4]))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    total = threads * per_thread
    returned = sorted(change.sequence for result in results for change in result)
    assert returned == list(range(1, total + 1))
    for result in results:  # each writer saw its own sequences increase
        assert [c.sequence for c in result] == sorted(c.sequence for c in result)
    assert sequences(db, pid) == list(range(1, total + 1))
    with db.read() as s:
        assert queries.last_sequence(s, pid) == total
        count = s.scalar(select(func.count()).select_from(ExecutionEvent))
    assert count == total


def test_events_after_with_limit_and_upto(db: Database) -> None:
    pid = new_project(db)
    for _ in range(10):
        log_event(db, pid)
    with db.read() as s:

        def seqs(after: int, limit: int | None = None, upto: int | None = None) -> list[int]:
            return [r.sequence for r in queries.events_after(s, pid, after, limit, upto)]

        assert seqs(0) == list(range(1, 11))
        assert seqs(7) == [8, 9, 10]
        assert seqs(10) == []
        assert seqs(2, limit=3) == [3, 4, 5]
        assert seqs(2, upto=5) == [3, 4, 5]
        assert seqs(2, limit=2, upto=5) == [3, 4]
        assert seqs(5, upto=5) == []
        assert seqs(0, limit=0) == []


def test_prune_events_and_oldest_retained(db: Database) -> None:
    pid = new_project(db)
    other = new_project(db, "other")
    with db.read() as s:
        assert queries.oldest_retained_sequence(s, pid) is None
    for _ in range(10):
        log_event(db, pid)
    for _ in range(3):
        log_event(db, other)
    with db.write() as s:
        assert queries.prune_events(s, pid, keep=4) == 6
    with db.write() as s:
        assert queries.prune_events(s, pid, keep=4) == 0
    assert sequences(db, pid) == [7, 8, 9, 10]
    assert sequences(db, other) == [1, 2, 3]  # another project's log is untouched
    with db.read() as s:
        assert queries.oldest_retained_sequence(s, pid) == 7
        assert queries.oldest_retained_sequence(s, other) == 1
        assert queries.last_sequence(s, pid) == 10  # pruning never rewinds the counter
    assert log_event(db, pid) == 11


def test_state_store_with_small_retention_keeps_newest(db: Database) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    store = StateStore(db, retention=3)
    changes = [store.data_source_processing(source) for _ in range(7)]
    assert [c.sequence for c in changes] == list(range(1, 8))
    assert sequences(db, pid) == [5, 6, 7]
    with db.read() as s:
        assert queries.oldest_retained_sequence(s, pid) == 5
    with pytest.raises(ValueError, match="retention must be at least 1 event, got 0"):
        StateStore(db, retention=0)


def test_state_store_persists_row_and_event_together(db: Database) -> None:
    pid = new_project(db)
    source = new_source(db, pid)
    store = StateStore(db)
    processing = store.data_source_processing(source)
    completed = store.data_source_completed(source, {"nodes": [], "edges": [], "layers": []})
    assert (processing.sequence, completed.sequence) == (1, 2)
    assert processing.entity == "datasource" and processing.node_id is None
    assert processing.state["executionState"] == "processing"
    assert completed.state["executionState"] == "completed"
    assert completed.state["status"] == "active"
    assert completed.state["processedAt"].endswith("Z")
    assert completed.timestamp.endswith("Z")
    graph = store.graph(pid, "graph_1", lambda g: setattr(g, "execution_state", "processing"))
    assert (graph.sequence, graph.entity, graph.node_id) == (3, "graph", "graph_1")
    assert graph.state["executionState"] == "processing"
    with db.read() as s:
        row = queries.require_data_source(s, source)
        assert (row.status, row.execution_state) == ("active", "completed")
        log = queries.events_after(s, pid, 0)
        assert log[1].payload == completed.state
        assert queries.get_graph_by_node(s, pid, "graph_1").id == graph.entity_id  # type: ignore[union-attr]
    with pytest.raises(queries.NotFound, match="data source 999 does not exist"):
        store.data_source_processing(999)
    assert sequences(db, pid) == [1, 2, 3]  # the failed change took no sequence


def test_recover_interrupted_marks_error_and_logs_each(db: Database) -> None:
    pid = new_project(db)
    store = StateStore(db)
    running = new_source(db, pid, "running")
    queued = new_source(db, pid, "queued")
    done = new_source(db, pid, "done")
    store.data_source_processing(running)
    store.data_source_pending(queued)
    store.data_source_completed(done, {"nodes": [], "edges": [], "layers": []})

    def state(value: str):  # type: ignore[no-untyped-def]
        return lambda g: setattr(g, "execution_state", value)

    store.graph(pid, "g_running", state("processing"))
    store.graph(pid, "g_queued", state("pending"))
    store.graph(pid, "g_done", state("completed"))
    before = sequences(db, pid)[-1]

    changes = store.recover_interrupted()

    assert {
        (c.entity, c.entity_id if c.entity == "datasource" else c.node_id) for c in changes
    } == {
        ("datasource", running),
        ("datasource", queued),
        ("graph", "g_running"),
        ("graph", "g_queued"),
    }
    assert INTERRUPTED.startswith("interrupted by a restart")
    for change in changes:
        assert change.state["executionState"] == "error"
        assert change.state["errorMessage"] == INTERRUPTED
    assert sorted(c.sequence for c in changes) == list(range(before + 1, before + 5))
    with db.read() as s:
        for source_id in (running, queued):
            row = queries.require_data_source(s, source_id)
            assert (row.status, row.execution_state, row.error_message) == (
                "error",
                "error",
                INTERRUPTED,
            )
        assert queries.require_data_source(s, done).execution_state == "completed"
        for node_id in ("g_running", "g_queued"):
            graph = queries.get_graph_by_node(s, pid, node_id)
            assert graph is not None
            assert (graph.execution_state, graph.error_message) == ("error", INTERRUPTED)
        assert queries.get_graph_by_node(s, pid, "g_done").execution_state == "completed"  # type: ignore[union-attr]
        logged = queries.events_after(s, pid, before)
        assert [r.payload["executionState"] for r in logged] == ["error"] * 4
    assert store.recover_interrupted() == []  # nothing left to recover


def test_recover_interrupted_also_covers_a_source_never_started(db: Database) -> None:
    pid = new_project(db)
    source = new_source(db, pid)  # committed; the crash came before the executor ran
    changes = StateStore(db).recover_interrupted()
    with db.read() as s:
        row = queries.require_data_source(s, source)
        assert row.status != "processing"
    assert [c.entity_id for c in changes] == [source]


# --- formats and deletion -----------------------------------------------------------------


def test_rfc3339() -> None:
    assert payloads.rfc3339(None) is None
    naive = datetime(2024, 1, 2, 3, 4, 5, 678901)
    assert payloads.rfc3339(naive) == "2024-01-02T03:04:05.678Z"
    aware = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert payloads.rfc3339(aware) == "2024-01-02T03:04:05.000Z"
    plus_two = datetime(2024, 1, 2, 1, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert payloads.rfc3339(plus_two) == "2024-01-01T23:00:00.000Z"
    minus_five = datetime(2023, 12, 31, 22, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert payloads.rfc3339(minus_five) == "2024-01-01T03:30:00.000Z"


def test_timestamps_read_back_as_utc(db: Database) -> None:
    pid = new_project(db)
    moment = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    with db.write() as s:
        queries.record_event(
            s, pid, entity="datasource", entity_id=1, node_id=None, payload={}, now=moment
        )
    with db.read() as s:
        row = queries.events_after(s, pid, 0)[0]
        assert payloads.rfc3339(row.created_at) == "2024-05-06T07:08:09.123Z"


def test_delete_project_removes_children(db: Database) -> None:
    pid = new_project(db)
    keep = new_project(db, "keep")
    for project_id in (pid, keep):
        source = new_source(db, project_id)
        with db.write() as s:
            queries.add_node(s, project_id, node_type="GraphNode", config={}, node_id="g")
            queries.add_edge(s, project_id, source=f"datasource_{source}", target="g")
        StateStore(db).data_source_processing(source)
        StateStore(db).graph(project_id, "g", lambda g: setattr(g, "node_count", 2))
    with db.write() as s:
        assert queries.delete_project(s, pid) is True
    with db.read() as s:
        for model in (PlanDagEdge, PlanDagNode, ExecutionEvent, Graph, DataSource):
            owners = s.scalars(select(model.project_id)).all()
            assert owners, model.__name__
            assert set(owners) == {keep}, model.__name__
        assert s.scalars(select(Project.id)).all() == [keep]


def test_group_commit_writes_events_sources_and_counters(db: Database) -> None:
    """record_data_source_states hands rows to the driver itself: check what it wrote
    through the ORM, on SQLite and on PostgreSQL (JSONB payloads, timestamps)."""
    first, second = new_project(db, "a"), new_project(db, "b")
    a, b = new_source(db, first), new_source(db, second)
    log_event(db, second)  # second already has sequence 1
    now = datetime(2026, 11, 29, 12, 30, 45, 123456, tzinfo=UTC)

    def state(status: str, done: bool) -> dict[str, object]:
        return {
            "dataSourceId": 0,
            "filename": "f.csv",
            "status": status,
            "processedAt": "2026-11-29T12:30:45.123Z" if done else None,
            "executionState": "completed" if done else "processing",
            "errorMessage": None,
        }

    changes = [
        (first, a, state("processing", False)),
        (second, b, state("processing", False)),
        (first, a, state("active", True)),
    ]
    with db.write() as s:  # a second node names a; b's node is another project's concern
        queries.add_node(
            s, first, node_type="DataSourceNode", config={"dataSourceId": a}, node_id="a2"
        )
        recorded = group_commit.record_data_source_states(s, changes, now)
    a_nodes = [["a2", "DataSourceNode"], [f"datasource_{a}", "DataSourceNode"]]
    b_nodes = [[f"datasource_{b}", "DataSourceNode"]]
    assert [(pid, seq, source, nodes) for pid, seq, source, _p, nodes in recorded] == [
        (first, 1, a, a_nodes),
        (second, 2, b, b_nodes),
        (first, 2, a, a_nodes),
    ]
    with db.read() as s:
        assert queries.last_sequence(s, first) == 2
        assert queries.last_sequence(s, second) == 2
        events = s.scalars(
            select(ExecutionEvent)
            .where(ExecutionEvent.project_id == first)
            .order_by(ExecutionEvent.sequence)
        ).all()
        assert [e.payload["executionState"] for e in events] == ["processing", "completed"]
        assert events[1].payload == changes[2][2]
        assert {e.entity for e in events} == {"datasource"} and events[0].node_id is None
        assert [e.nodes for e in events] == [a_nodes, a_nodes]  # stored, as JSON
        assert as_utc(events[0].created_at) == now
        source_a, source_b = s.get(DataSource, a), s.get(DataSource, b)
        assert source_a is not None and source_b is not None
        assert (source_a.status, source_a.execution_state) == ("active", "completed")
        assert source_a.processed_at is not None
        assert as_utc(source_a.processed_at) == now
        assert (source_b.status, source_b.processed_at) == ("processing", None)
    with db.write() as s, pytest.raises(queries.NotFound, match="project 9999 does not exist"):
        group_commit.record_data_source_states(s, [(9999, a, state("active", True))], now)


def test_group_commit_keeps_any_text_of_a_state_exactly(db: Database) -> None:
    """Quotes, backslashes, non-ASCII and control characters in a state survive the
    batch's own serialisation (orjson, handed to the driver without SQLAlchemy)."""
    pid = new_project(db)
    source = new_source(db, pid)
    tricky = 'a "quoted" \\ back\\slash, ünïcødé ✓, a newline\nand a tab\t'
    payload = {
        "dataSourceId": source,
        "filename": "f.csv",
        "status": "error",
        "processedAt": None,
        "executionState": "error",
        "errorMessage": tricky,
    }
    now = datetime(2026, 12, 4, 5, 0, 0, tzinfo=UTC)
    with db.write() as s:
        group_commit.record_data_source_states(s, [(pid, source, payload)], now)
    with db.read() as s:
        event = s.scalars(select(ExecutionEvent).where(ExecutionEvent.project_id == pid)).one()
        assert event.payload == payload
        row = s.get(DataSource, source)
        assert row is not None
        assert (row.error_message, row.status, row.processed_at) == (tricky, "error", None)


def as_utc(moment: datetime) -> datetime:
    """SQLite gives naive UTC datetimes back, PostgreSQL aware ones in the session's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
