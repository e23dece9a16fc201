"""Synthetic load through the real path (only with `serve --enable-loadgen`).

`prepare(n)` makes projects 1..n, each with one data source and its DataSourceNode
(`load_<project id>`). `start(n, rate, seconds)` drives those data sources through real
state changes (processing, completed, processing, …) round-robin at `rate` changes per
second in total: a driver thread decides what is due every tick and hands the batch to the
LoadExecutor actor, which persists it with the event log in one transaction (group commit)
and then publishes every StatusChanged on the bus like any executor. Nothing downstream —
bus, project actors, gateway — knows it is a load test.

Benchmark code, kept in bench/ with the load client it serves: production modules never
import it; gateway/app.py does, through bench/loadgen_schema.py, only with --enable-loadgen
(tests/test_loadgen.py checks that a server without the flag loads no bench module).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pykka
from sqlalchemy import func, insert, select, text

from actors.bus import Bus
from actors.state import StateStore
from storage import payloads, queries
from storage.group_commit import SourceStateChange
from storage.models import DataSource, PlanDagNode, Project, utcnow

log = logging.getLogger(__name__)

TICK_SECONDS = 0.01
MAX_PROJECTS = 100_000
MAX_RATE = 1_000_000


def load_node_id(project_id: int) -> str:
    return f"load_{project_id}"


@dataclass(slots=True)
class LoadTimings:
    """Where the load generator's time goes, for /metrics (one writer: its own threads).

    `lag_seconds` is how long the oldest change that fell due has waited to be persisted:
    above a tick or two, the store (not the gateway) is what cannot keep up, and the load
    offered is less than asked for.
    """

    persist_seconds: float = 0.0
    publish_seconds: float = 0.0
    batches: int = 0
    changes: int = 0
    lag_seconds: float = 0.0
    max_lag_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Batch:
    project_ids: tuple[int, ...]


class LoadExecutor(pykka.ThreadingActor):
    """Persists and publishes batches of synthetic data-source state changes."""

    use_daemon_thread = True  # a process that fails or is interrupted still exits

    def __init__(
        self, store: StateStore, bus: Bus, sources: dict[int, int], timings: LoadTimings
    ) -> None:
        super().__init__()
        self.timings = timings
        self.store = store
        self.bus = bus
        self.sources = sources  # project id -> its load data source id
        self.processing: dict[int, bool] = {}  # data source id -> next change is "completed"
        self.published = 0

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Batch):
            self._persist_and_publish(message.project_ids)
        return None

    def _persist_and_publish(self, project_ids: tuple[int, ...]) -> None:
        now = utcnow()
        stamp = payloads.rfc3339(now) or ""
        changes = []
        for project_id in project_ids:
            source_id = self.sources[project_id]
            completing = self.processing.get(source_id, False)
            self.processing[source_id] = not completing
            changes.append(
                SourceStateChange(
                    project_id,
                    source_id,
                    {
                        "dataSourceId": source_id,
                        "filename": "load.csv",
                        "status": "active" if completing else "processing",
                        "processedAt": stamp if completing else None,
                        "executionState": "completed" if completing else "processing",
                        "errorMessage": None,
                    },
                )
            )
        persisting = time.perf_counter()
        messages = self.store.data_source_states(changes, now)
        publishing = time.perf_counter()
        for message in messages:
            self.bus.publish(message)
        self.timings.persist_seconds += publishing - persisting
        self.timings.publish_seconds += time.perf_counter() - publishing
        self.timings.batches += 1
        self.timings.changes += len(messages)
        self.published += len(messages)


class LoadGenerator:
    def __init__(self, store: StateStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus
        self._lock = threading.Lock()
        self._run: threading.Thread | None = None
        self._stop = threading.Event()
        self._executor: pykka.ActorRef[LoadExecutor] | None = None
        # What the last prepare made: startLoad reuses it instead of reading 10,000
        # projects again, so that it returns at once.
        self._prepared: dict[int, int] = {}
        self.timings = LoadTimings()

    def prepare(self, projects: int) -> dict[int, int]:
        """Projects 1..n with their load data source; returns project id → source id.

        The synthetic nodes are not logged as plan edits (they are setup, made with their
        fresh source in one transaction: the source's first change names its node), so a
        load project's sequences are its state changes only, 1, 2, 3, …
        """
        _check_count("projects", projects, MAX_PROJECTS)
        db = self.store.db
        with db.write() as s:
            existing = set(s.scalars(select(Project.id).where(Project.id <= projects)))
            missing = [pid for pid in range(1, projects + 1) if pid not in existing]
            if missing:
                now = utcnow()
                s.execute(
                    insert(Project),
                    [
                        {
                            "id": pid,
                            "name": f"load {pid}",
                            "last_sequence": 0,
                            "created_at": now,
                            "updated_at": now,
                        }
                        for pid in missing
                    ],
                )
                if not db.is_sqlite:  # explicit ids: move the id sequence past them
                    s.execute(
                        text(
                            "SELECT setval(pg_get_serial_sequence('projects', 'id'), "
                            "(SELECT max(id) FROM projects))"
                        )
                    )
            nodes = {
                node_id: config
                for node_id, config in s.execute(
                    select(PlanDagNode.id, PlanDagNode.config).where(
                        PlanDagNode.project_id <= projects, PlanDagNode.id.like("load_%")
                    )
                )
            }
            sources: dict[int, int] = {}
            for pid in range(1, projects + 1):
                config = nodes.get(load_node_id(pid))
                if config and isinstance(config.get("dataSourceId"), int):
                    sources[pid] = config["dataSourceId"]
            for pid in range(1, projects + 1):
                if pid in sources:
                    continue
                source, _ = queries.create_data_source(
                    s,
                    pid,
                    name="load",
                    filename="load.csv",
                    file_format="csv",
                    data_type="nodes",
                    content="id,label\nload,Load\n",
                    add_node_for_it=False,
                )
                queries.add_node(
                    s,
                    pid,
                    node_type="DataSourceNode",
                    node_id=load_node_id(pid),
                    config={"dataSourceId": source.id, "filename": "load.csv", "dataType": "nodes"},
                )
                sources[pid] = source.id
            count = s.scalar(select(func.count()).select_from(DataSource)) or 0
        log.info("loadgen: %d projects ready (%d data sources in all)", projects, count)
        with self._lock:
            self._prepared = dict(sources)
        return sources

    def start(self, projects: int, rate: int, seconds: float) -> None:
        """Start driving the load; returns at once. A running load is replaced."""
        _check_count("projects", projects, MAX_PROJECTS)
        _check_count("eventsPerSecond", rate, MAX_RATE)
        if not 0 < seconds <= 3600:
            raise ValueError(f"seconds must be more than 0 and at most 3600, got {seconds}")
        with self._lock:
            prepared = self._prepared
        if all(pid in prepared for pid in range(1, projects + 1)):
            sources = {pid: prepared[pid] for pid in range(1, projects + 1)}
        else:
            sources = self.prepare(projects)
        self.stop()
        with self._lock:
            self._stop = threading.Event()
            self._executor = LoadExecutor.start(self.store, self.bus, sources, self.timings)
            self._run = threading.Thread(
                target=self._drive,
                args=(self._executor, projects, rate, seconds, self._stop, self.timings),
                name="loadgen-driver",
                daemon=True,
            )
            self._run.start()

    @staticmethod
    def _drive(
        executor: pykka.ActorRef[LoadExecutor],
        projects: int,
        rate: int,
        seconds: float,
        stop: threading.Event,
        timings: LoadTimings,
    ) -> None:
        started = time.monotonic()
        sent = 0
        total = int(rate * seconds)
        next_project = 0
        in_flight: pykka.Future[Any] | None = None
        waiting: list[int] = []
        waiting_due = in_flight_due = 0.0  # when the oldest change of each fell due
        while (sent < total or waiting or in_flight is not None) and not stop.is_set():
            due = min(total, int(rate * (time.monotonic() - started))) - sent
            if due > 0:
                if not waiting:
                    waiting_due = started + (sent + 1) / rate
                waiting.extend((next_project + i) % projects + 1 for i in range(due))
                next_project = (next_project + due) % projects
                sent += due
            # One batch in flight: what falls due meanwhile joins the next one, so a slow
            # commit makes the next transaction bigger instead of queueing small ones.
            if in_flight is not None and _done(in_flight):
                try:
                    in_flight.get()
                except Exception:  # noqa: BLE001 - told to the operator, then the load ends
                    log.exception("loadgen: a batch could not be persisted; the load stops")
                    return
                in_flight = None
            if in_flight is None and waiting:
                in_flight = executor.ask(Batch(tuple(waiting)), block=False)
                in_flight_due = waiting_due
                waiting = []
            oldest = in_flight_due if in_flight is not None else waiting_due if waiting else 0
            lag = max(0.0, time.monotonic() - oldest) if oldest else 0.0
            timings.lag_seconds = lag
            timings.max_lag_seconds = max(timings.max_lag_seconds, lag)
            stop.wait(TICK_SECONDS)
        timings.lag_seconds = 0.0
        log.info("loadgen: %d changes requested in %.1fs", sent, time.monotonic() - started)

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            run, executor = self._run, self._executor
            self._run = self._executor = None
        if run is not None:
            run.join(timeout=5)
        if executor is not None:
            try:
                executor.stop(block=True, timeout=30)
            except (pykka.Timeout, pykka.ActorDeadError):
                pass


def _done(future: pykka.Future[Any]) -> bool:
    try:
        future.get(timeout=0)
    except pykka.Timeout:
        return False
    return True


def _check_count(name: str, value: int, limit: int) -> None:
    if not 1 <= value <= limit:
        raise ValueError(f"{name} must be between 1 and {limit}, got {value}")
