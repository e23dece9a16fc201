"""The loadgen mutations drive real state changes through the real delivery path."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from typing import Any

from actors.state import StateStore
from bench.loadgen import LoadGenerator
from gateway.server import GatewayConfig
from storage import queries, tokens
from storage.db import Database
from tests.helpers import subscriber_count, wait_until
from tests.wsclient import RawClient

LOAD_SUBSCRIPTION = """subscription($p: Int!) { nodeExecutionStatusChanged(projectId: $p) {
  projectId nodeId sequence timestamp datasourceExecution { executionState } } }"""


def test_loadgen_mutations_exist_only_with_the_flag(server: Any) -> None:
    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("x", "mutation { prepareLoad(projects: 1) }")
        error = await client.recv()
        assert error["type"] == "error"
        assert "prepareLoad" in error["payload"][0]["message"]
        await client.close()

    asyncio.run(scenario())


def test_a_server_without_the_flag_loads_no_benchmark_code(tmp_path: Any) -> None:
    """Load generation is benchmark code (bench/): `serve`, a worker and the App they build
    import none of it unless --enable-loadgen is given. In a fresh interpreter, since this
    one has imported bench/ already."""
    program = f"""
import sys
import run, actors.worker
from gateway.app import App, AppConfig
from gateway.server import GatewayConfig
app = App(AppConfig(database_url="sqlite:///{tmp_path}/p.db", gateway=GatewayConfig(port=0)))
assert app.loadgen is None
loaded = sorted(name for name in sys.modules if name == "bench" or name.startswith("bench."))
assert not loaded, loaded
with_flag = AppConfig(database_url="sqlite:///{tmp_path}/q.db", enable_loadgen=True)
assert App(with_flag).loadgen is not None and "bench.loadgen" in sys.modules
"""
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_load_is_delivered_in_order_with_nothing_lost(start_server: Any) -> None:
    server = start_server(enable_loadgen=True)
    projects, rate, seconds = 4, 400, 1.0

    async def scenario() -> dict[int, list[int]]:
        admin = await RawClient.open(server.url)
        await admin.init()
        assert (await admin.execute(f"mutation {{ prepareLoad(projects: {projects}) }}"))[
            "data"
        ] == {"prepareLoad": True}
        watchers = []
        for pid in range(1, projects + 1):
            client = await RawClient.open(server.url)
            await client.init()
            await client.subscribe("s", LOAD_SUBSCRIPTION, {"p": pid})
            watchers.append(client)
        for pid in range(1, projects + 1):
            await asyncio.to_thread(wait_until, lambda p=pid: subscriber_count(server, p) == 1)
        started = await admin.execute(
            f"mutation {{ startLoad(projects: {projects}, eventsPerSecond: {rate}, "
            f"seconds: {seconds}) }}"
        )
        assert started["data"] == {"startLoad": True}
        per_project = int(rate * seconds) // projects
        got: dict[int, list[int]] = {}
        for pid, client in enumerate(watchers, start=1):
            sequences = []
            while len(sequences) < per_project:
                event = (await client.recv())["payload"]["data"]["nodeExecutionStatusChanged"]
                assert event["projectId"] == pid and event["nodeId"] == f"load_{pid}"
                assert event["timestamp"].endswith("Z")
                sequences.append(event["sequence"])
            got[pid] = sequences
            await client.close()
        await admin.close()
        return got

    got = asyncio.run(asyncio.wait_for(scenario(), 60))
    for pid, sequences in got.items():
        assert sequences == list(range(1, len(sequences) + 1)), pid
    with server.app.db.read() as s:
        source = queries.list_data_sources(s, 1)[0]
        assert source.execution_state in ("processing", "completed")


def test_loadgen_needs_an_admin_token(start_server: Any) -> None:
    server = start_server(enable_loadgen=True, gateway=GatewayConfig(port=0, auth=True))
    with server.app.db.write() as s:
        pid = queries.create_project(s, "p").id
        scoped = tokens.create_token(s, project_ids=[pid]).raw

    async def scenario() -> None:
        client = await RawClient.open(server.url)
        await client.init({"authorization": f"Bearer {scoped}"})
        result = await client.execute("mutation { prepareLoad(projects: 1) }")
        assert result["data"] is None
        assert "admin token" in result["errors"][0]["message"]
        await client.close()

    asyncio.run(scenario())


class CountingBus:
    """Records what the load generator publishes (the real bus is tested above)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def publish(self, message: Any) -> None:
        self.messages.append(message)


def test_start_reuses_what_prepare_made_and_drives_every_project(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    db.create_schema()
    bus = CountingBus()
    generator = LoadGenerator(StateStore(db), bus)  # type: ignore[arg-type]
    try:
        generator.prepare(5)
        prepares: list[int] = []
        original = generator.prepare
        generator.prepare = lambda n: prepares.append(n) or original(n)  # type: ignore[method-assign]
        generator.start(5, rate=200, seconds=0.2)  # everything it needs was prepared
        wait_until(lambda: len(bus.messages) == 40, 10, "40 changes published")
        assert prepares == []
        generator.start(7, rate=200, seconds=0.2)  # two projects more: prepared now
        assert prepares == [7]
        wait_until(lambda: len(bus.messages) == 80, 10, "80 changes published")
        with db.read() as s:
            assert {pid: queries.last_sequence(s, pid) for pid in range(1, 8)} == {
                pid: len([m for m in bus.messages if m.project_id == pid]) for pid in range(1, 8)
            }
    finally:
        generator.stop()
        db.dispose()


def test_load_goes_through_the_state_store_and_says_where_its_time_goes(
    start_server: Any,
) -> None:
    """The generator persists with StateStore.data_source_states (the store's rules: the
    resolution stored with each row, pruning) and /metrics shows its stage timings."""
    server = start_server(enable_loadgen=True)
    calls: list[int] = []
    store = server.app.store
    original = store.data_source_states
    store.data_source_states = lambda changes, now: (  # type: ignore[method-assign]
        calls.append(len(changes)) or original(changes, now)
    )
    loadgen = server.app.loadgen
    loadgen.prepare(3)
    loadgen.start(3, rate=300, seconds=0.5)
    wait_until(lambda: loadgen.timings.changes == 150, 20, "150 load changes published")
    assert sum(calls) == 150
    with server.app.db.read() as s:
        assert sum(queries.last_sequence(s, pid) for pid in (1, 2, 3)) == 150
    with urllib.request.urlopen(f"{server.http}/metrics") as response:
        text = response.read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("planpulse_loadgen_")
    }
    assert values["planpulse_loadgen_changes_total"] == 150
    assert values["planpulse_loadgen_batches_total"] >= 1
    assert values["planpulse_loadgen_persist_seconds_total"] > 0
    assert values["planpulse_loadgen_publish_seconds_total"] > 0
    wait_until(lambda: loadgen.timings.lag_seconds == 0, 10, "the driver finished")
    assert loadgen.timings.max_lag_seconds >= 0


def test_group_commit_prunes_every_prune_every_events_in_one_statement(any_db_url: str) -> None:
    """Retention above PRUNE_EVERY: a batch that carries a project's sequence past a
    multiple of PRUNE_EVERY leaves exactly its newest `retention` events, on both
    databases (the batch's prune is one executemany of driver SQL)."""
    from sqlalchemy import func, select

    from actors.state import PRUNE_EVERY
    from storage.models import ExecutionEvent, utcnow

    db = Database(any_db_url)
    db.create_schema()
    try:
        sources = LoadGenerator(StateStore(db), CountingBus()).prepare(2)  # type: ignore[arg-type]
        retention = PRUNE_EVERY + 10
        store = StateStore(db, retention=retention)
        state = {
            "filename": "load.csv",
            "status": "processing",
            "processedAt": None,
            "executionState": "processing",
            "errorMessage": None,
        }

        def batch(count: int) -> None:
            store.data_source_states(
                [(pid, sources[pid], {**state, "dataSourceId": sources[pid]}) for pid in (1, 2)]
                * count,
                utcnow(),
            )

        def kept(project_id: int) -> tuple[int, int]:
            with db.read() as s:
                return s.execute(
                    select(func.count(), func.min(ExecutionEvent.sequence)).where(
                        ExecutionEvent.project_id == project_id
                    )
                ).one()  # type: ignore[return-value]

        batch(PRUNE_EVERY - 5)  # no multiple of PRUNE_EVERY reached: nothing pruned
        assert kept(1) == (PRUNE_EVERY - 5, 1)
        batch(3 * PRUNE_EVERY)  # reaches 2×, 3× PRUNE_EVERY; ends at 4×PRUNE_EVERY - 5
        newest = 4 * PRUNE_EVERY - 5
        assert kept(1) == (retention, newest - retention + 1)
        assert kept(2) == (retention, newest - retention + 1)
    finally:
        db.dispose()


def test_state_store_group_commit_resolves_prunes_and_orders(sqlite_url: str) -> None:
    from sqlalchemy import func, select

    from storage.models import ExecutionEvent, utcnow

    db = Database(sqlite_url)
    db.create_schema()
    try:
        sources = LoadGenerator(StateStore(db), CountingBus()).prepare(2)  # type: ignore[arg-type]
        store = StateStore(db, retention=5)

        def payload(source_id: int) -> dict[str, Any]:
            return {
                "dataSourceId": source_id,
                "filename": "load.csv",
                "status": "processing",
                "processedAt": None,
                "executionState": "processing",
                "errorMessage": None,
            }

        changes = [(1 + i % 2, sources[1 + i % 2], payload(sources[1 + i % 2])) for i in range(20)]
        messages = store.data_source_states(changes, utcnow())
        assert [(m.project_id, m.sequence) for m in messages] == [
            (1 + i % 2, i // 2 + 1) for i in range(20)
        ]
        assert messages[0].nodes == (("load_1", "DataSourceNode"),)
        assert messages[0].nodes is messages[2].nodes  # one resolution per source per batch
        with db.read() as s:
            kept = s.scalar(
                select(func.count())
                .select_from(ExecutionEvent)
                .where(ExecutionEvent.project_id == 1)
            )
        assert kept == 5  # retention below PRUNE_EVERY: pruned on every event
    finally:
        db.dispose()
