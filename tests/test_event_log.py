"""The event log describes itself: each change's nodes stored with it, plan edits in the
same sequence, consistent snapshots, old databases upgraded. SQLite and PostgreSQL."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from actors.state import StateStore
from storage import payloads, queries
from storage.db import Database
from storage.migrate import SchemaUpgradeError
from storage.models import Base
from tests.log_helpers import log_rows, plan_as_of_each_change


@pytest.fixture
def db(any_db_url: str) -> Iterator[Database]:
    database = Database(any_db_url)
    database.create_schema()
    try:
        yield database
    finally:
        database.dispose()


def new_project(db: Database) -> int:
    with db.write() as s:
        return queries.create_project(s, "log").id


def new_source(db: Database, pid: int) -> int:
    with db.write() as s:
        source, _ = queries.create_data_source(
            s,
            pid,
            name="people",
            filename="people.csv",
            file_format="csv",
            data_type="nodes",
            content="id,label\na,A\n",
            add_node_for_it=False,
        )
        return source.id


def add_node(db: Database, store: StateStore, pid: int, node_id: str, source: int) -> list:
    """addPlanDagNode as the resolver does it: the edit and its log rows, one transaction."""
    with db.write() as s:
        node = queries.add_node(
            s, pid, node_type="DataSourceNode", node_id=node_id, config={"dataSourceId": source}
        )
        return store.plan_edit(s, pid, payloads.node_change("added", node), names_source_of=node)


def remove_node(db: Database, store: StateStore, pid: int, node_id: str) -> list:
    with db.write() as s:
        node = queries.get_node(s, pid, node_id)
        if node is None:
            return []
        change = payloads.node_change("removed", node)
        queries.delete_node(s, pid, node_id)
        return store.plan_edit(s, pid, change)


def test_a_change_keeps_the_nodes_it_was_logged_with(db: Database) -> None:
    store = StateStore(db)
    pid = new_project(db)
    source = new_source(db, pid)
    added, first_state = add_node(db, store, pid, "first", source)
    assert added.sequence == 1 and added.change["operation"] == "added"
    assert first_state.sequence == 2 and first_state.state["executionState"] == "not_started"
    change = store.data_source_processing(source)
    assert (change.sequence, change.nodes) == (3, (("first", "DataSourceNode"),))
    edit, announced = add_node(db, store, pid, "second", source)
    assert (edit.sequence, announced.sequence) == (4, 5)
    assert announced.nodes == (("first", "DataSourceNode"), ("second", "DataSourceNode"))
    assert announced.state["executionState"] == "processing"  # the source's current state
    remove_node(db, store, pid, "first")
    with db.read() as s:
        rows = queries.events_after(s, pid, 0)
        assert [(r.sequence, r.entity) for r in rows] == [
            (1, "plan"),
            (2, "datasource"),
            (3, "datasource"),
            (4, "plan"),
            (5, "datasource"),
            (6, "plan"),
        ]
        # History is as it was logged, whatever the plan is now.
        assert rows[2].nodes == [["first", "DataSourceNode"]]
        status = queries.events_after(s, pid, 0, limit=2, status_only=True)
        assert [r.sequence for r in status] == [2, 3]  # the limit counts state changes
        latest = queries.latest_status_events(s, pid, upto=6)
        assert {key: row.sequence for key, row in latest.items()} == {("datasource", source): 5}
        assert queries.latest_status_events(s, pid, upto=4)[("datasource", source)].sequence == 3


def test_graph_changes_name_their_node_while_it_exists(db: Database) -> None:
    store = StateStore(db)
    pid = new_project(db)
    with db.write() as s:
        node = queries.add_node(s, pid, node_type="MergeNode", config={}, node_id="merge")
        store.plan_edit(s, pid, payloads.node_change("added", node))
    assert store.graph(pid, "merge", lambda g: None).nodes == (("merge", "MergeNode"),)
    with db.write() as s:
        node = queries.require_node(s, pid, "merge")
        change = payloads.node_change("removed", node)
        queries.delete_node(s, pid, "merge")
        store.plan_edit(s, pid, change)
    assert store.graph(pid, "merge", lambda g: None).nodes == ()


def test_concurrent_edits_and_changes_store_the_plan_as_of_their_sequence(db: Database) -> None:
    """Writers of state changes and editors adding and removing nodes race; afterwards each
    change's stored nodes are exactly those the edits logged before it leave naming it."""
    store = StateStore(db)
    pid = new_project(db)
    sources = [new_source(db, pid) for _ in range(2)]
    for source in sources:
        add_node(db, store, pid, f"base_{source}", source)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def changes(source: int) -> None:
        try:
            barrier.wait()
            for _ in range(30):
                store.data_source_processing(source)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def edits(seed: int) -> None:
        chooser = random.Random(seed)
        try:
            barrier.wait()
            for i in range(15):
                node_id = f"n{seed}_{chooser.randrange(4)}"
                remove_node(db, store, pid, node_id) or add_node(
                    db, store, pid, node_id, chooser.choice(sources)
                )
                del i
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=changes, args=(s,)) for s in sources]
    threads += [threading.Thread(target=edits, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    rows = log_rows(db, pid)
    assert [r.sequence for r in rows] == list(range(1, len(rows) + 1))
    checked = plan_as_of_each_change(rows)
    assert len(checked) >= 60
    for row, expected in checked:
        assert row.nodes == expected, f"sequence {row.sequence}"


def test_a_consistent_read_sees_one_moment(db: Database) -> None:
    store = StateStore(db)
    pid = new_project(db)
    source = new_source(db, pid)
    add_node(db, store, pid, "n", source)
    with db.consistent_read() as s:
        before = queries.last_sequence(s, pid)
        store.data_source_processing(source)  # committed by another transaction meanwhile
        assert queries.events_after(s, pid, before) == []
        assert queries.list_data_sources(s, pid)[0].execution_state == "not_started"
    with db.read() as s:
        assert queries.last_sequence(s, pid) == before + 1


def test_an_old_database_is_upgraded_at_start(any_db_url: str) -> None:
    """A database made before `execution_events.nodes`: the column is added and the old
    rows resolved once, with the plan as it is at the upgrade."""
    engine = create_engine(any_db_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE execution_events DROP COLUMN nodes"))
    engine.dispose()
    old = Database(any_db_url)
    try:
        pid = new_project(old)
        source = new_source(old, pid)
        with old.write() as s:
            queries.add_node(
                s, pid, node_type="DataSourceNode", node_id="n", config={"dataSourceId": source}
            )
            queries.add_node(s, pid, node_type="GraphNode", config={}, node_id="g")
            for entity, entity_id, node_id in [
                ("datasource", source, None),
                ("graph", 7, "g"),
                ("graph", 8, "gone"),
            ]:
                s.execute(
                    text(
                        "INSERT INTO execution_events (project_id, sequence, entity, entity_id, "
                        "node_id, payload, created_at) VALUES (:p, :q, :e, :i, :n, '{}', "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {"p": pid, "q": entity_id, "e": entity, "i": entity_id, "n": node_id},
                )
            s.execute(text("UPDATE projects SET last_sequence = 8 WHERE id = :p"), {"p": pid})
        old.create_schema()
        old.create_schema()  # a second start finds nothing to do
        columns = {c["name"] for c in inspect(old.engine).get_columns("execution_events")}
        assert "nodes" in columns
        with old.read() as s:
            rows = {r.sequence: r.nodes for r in queries.events_after(s, pid, 0)}
        assert rows == {source: [["n", "DataSourceNode"]], 7: [["g", "GraphNode"]], 8: []}
        assert StateStore(old).data_source_processing(source).nodes == (("n", "DataSourceNode"),)
    finally:
        old.dispose()


def test_an_old_database_that_cannot_be_upgraded_is_refused_clearly(pg_url: str) -> None:
    """A user who may not alter the table (not its owner): one sentence saying what to do."""
    import uuid

    import psycopg

    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE execution_events DROP COLUMN nodes"))
    engine.dispose()
    role = f"pp_user_{uuid.uuid4().hex[:8]}"
    admin = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        conn.execute(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"')
    try:
        as_user = Database(pg_url.replace("postgres@", f"{role}@"))
        try:
            with pytest.raises(SchemaUpgradeError) as refused:
                as_user.create_schema()
        finally:
            as_user.dispose()
        cli = subprocess.run(
            [
                sys.executable,
                "run.py",
                "token",
                "list",
                "--database-url",
                as_user.url.render_as_string(hide_password=False),
            ],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 2, cli.stderr
        assert "\nerror: this database was made by an earlier planpulse" in cli.stderr
        assert "Traceback" not in cli.stderr
        message = str(refused.value)
        assert "made by an earlier planpulse" in message
        assert "must be owner of table execution_events" in message
        assert "ALTER TABLE execution_events ADD COLUMN IF NOT EXISTS nodes JSONB" in message
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'REASSIGN OWNED BY "{role}" TO postgres')
            conn.execute(f'DROP OWNED BY "{role}"')
            conn.execute(f'DROP ROLE "{role}"')
