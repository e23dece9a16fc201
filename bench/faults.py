"""`python run.py faults` (`python -m bench.faults`): break things under traffic, count what
the watchers lost.

It starts, all on loopback: a fresh PostgreSQL database (created, dropped at the end)
behind a TCP proxy that it can cut (bench/tcp_proxy.py), a redis-server of its own
(bench/redis_server.py), two gateways (`run.py serve --no-executors`) and a worker
(`run.py worker`). Then, one fault after the other, each on a project of its own:

    db       the database is cut for --cut-seconds: open connections reset, new ones refused
    redis    redis-server killed with -9, started again after --redis-down-seconds
    worker   the worker killed with -9 while a plan runs, a new one started
    gateway  gateway A killed with -9: its watchers move to gateway B (A is restarted after)
    storm    --storm watchers resubscribe at once with afterSequence (each from a random point)

During each: data sources reprocessed continuously and the plan executed over and over
(mutations through whichever gateway is up), and --watchers watchers (bench/watchers.py)
that resume with afterSequence whenever their subscription ends or their socket drops.
After the fault the traffic goes on for --after-seconds, stops, and the suite waits for
quiescence (nothing pending or processing, the log still) and for the watchers.

Then, per fault: events in the project's log (`executionEvents`); per watcher delivered,
missing, duplicated and out-of-order events against that log (over the sequences the
watcher was there for); time to recover (fault end → the first event at the slowest
watcher; for the storm: until every storm watcher has caught up); nodes left `pending`/
`processing`; /healthz of the gateways. A table on stdout, progress on stderr, JSON with
--json. Every process it starts is killed at the end, Ctrl-C included.

    python run.py faults --json faults.json
    python run.py faults --faults redis,worker --watchers 20 --storm 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.loadtest import _raise_nofile, free_port
from bench.redis_server import RedisServer
from bench.tcp_proxy import TcpProxy
from bench.watchers import GraphQLError, GraphQLSession, ResumingWatcher

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ("db", "redis", "worker", "gateway", "storm")
DESCRIPTIONS = {
    "db": "database cut (connections reset, new ones refused)",
    "redis": "redis-server kill -9, restart",
    "worker": "worker kill -9 mid-plan, restart",
    "gateway": "gateway kill -9, watchers move to the other",
    "storm": "resume storm: watchers resubscribe at once",
}
STUCK_STATES = ("pending", "processing")

CREATE_PROJECT = "mutation($n: String!) { createProject(input: {name: $n}) { id } }"
CREATE_SOURCE = "mutation($i: CreateDataSourceInput!) { createDataSource(input: $i) { id } }"
ADD_NODE = (
    "mutation($p: Int!, $n: PlanDagNodeInput!) { addPlanDagNode(projectId: $p, node: $n) { id } }"
)
ADD_EDGE = (
    "mutation($p: Int!, $e: PlanDagEdgeInput!) { addPlanDagEdge(projectId: $p, edge: $e) { id } }"
)
PLAN_DAG = (
    "query($p: Int!) { planDag(projectId: $p) { nodes { id nodeType config executionState } } "
    "dataSources(projectId: $p) { id executionState } }"
)
REPROCESS = "mutation($i: Int!) { reprocessDataSource(id: $i) { id } }"
EXECUTE_PLAN = "mutation($p: Int!) { executePlan(projectId: $p) }"


# --- arguments ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated, run in this order (default {','.join(FAULTS)})",
    )
    parser.add_argument("--watchers", type=int, default=10, help="watchers per fault")
    parser.add_argument(
        "--storm", type=int, default=1000, help="watchers resubscribing at once (storm)"
    )
    parser.add_argument("--cut-seconds", type=float, default=4.0, help="database cut length")
    parser.add_argument(
        "--redis-down-seconds", type=float, default=2.0, help="Redis dead this long"
    )
    parser.add_argument(
        "--worker-down-seconds", type=float, default=1.0, help="no worker this long"
    )
    parser.add_argument(
        "--warmup-seconds", type=float, default=1.5, help="traffic before each fault"
    )
    parser.add_argument("--after-seconds", type=float, default=3.0, help="traffic after each fault")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=20.0,
        help="seconds to wait for quiescence and for the watchers after each fault",
    )
    parser.add_argument(
        "--reprocess-interval",
        type=float,
        default=0.25,
        help="seconds between reprocessDataSource mutations (the traffic)",
    )
    parser.add_argument(
        "--rows", type=int, default=2000, help="rows of each data source (how long a run is)"
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get(
            "PLANPULSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
        help="a PostgreSQL database to connect to to create (and drop) the suite's own",
    )
    parser.add_argument("--seed", type=int, default=12, help="seed of the storm's resume points")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--keep-database", action="store_true", help="do not drop the database at the end"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


# --- the processes ---------------------------------------------------------------------------


@dataclass
class Child:
    """A `run.py` process: its log, its port when it is a gateway."""

    name: str
    args: list[str]
    log: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def start(self) -> Child:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PLANPULSE_")}
        with self.log.open("ab") as handle:
            self.popen = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), *self.args],
                cwd=self.log.parent,
                env=environment,
                stdout=handle,
                stderr=subprocess.STDOUT,
                preexec_fn=_raise_nofile,  # noqa: PLW1509 - only sets a limit
            )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def ready(self) -> bool:
        if self.port is not None:
            return healthz(self.port)[0] == 200
        return "worker ready" in self.output()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        with contextlib.suppress(ValueError):
            return error.code, orjson.loads(error.read())
        return error.code, {}
    except (OSError, ValueError):
        return 0, {}


class Deployment:
    """Everything the suite starts; `close()` takes it all down, whatever state it is in."""

    def __init__(self, pg_admin_url: str, keep_logs: bool, keep_database: bool = False) -> None:
        self.pg_admin_url = pg_admin_url
        self.keep_logs = keep_logs
        self.keep_database = keep_database
        self.workdir = Path(tempfile.mkdtemp(prefix="planpulse-faults-"))
        self.database = f"planpulse_faults_{uuid.uuid4().hex[:10]}"
        self.proxy: TcpProxy | None = None
        self.redis: RedisServer | None = None
        self.children: list[Child] = []
        self.gateways: list[Child] = []
        self.worker: Child | None = None
        self.database_url = ""
        self.bus_url = ""
        self._created = False

    def _admin(self) -> str:
        return self.pg_admin_url.replace("postgresql+psycopg://", "postgresql://")

    def start(self, progress: Callable[[str], None]) -> None:
        import psycopg

        import storage.work_requests  # noqa: F401 - its table is part of the schema
        from storage.db import Database

        admin = urlsplit(self._admin())
        with psycopg.connect(self._admin(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self._created = True
        direct = self.pg_admin_url.rsplit("/", 1)[0] + f"/{self.database}"
        schema = Database(direct)
        schema.create_schema()  # once, before the processes start
        schema.dispose()
        self.proxy = TcpProxy(admin.hostname or "127.0.0.1", admin.port or 5432).start()
        netloc = admin.netloc.rsplit("@", 1)
        user = netloc[0] + "@" if len(netloc) == 2 else ""
        self.database_url = (
            f"postgresql+psycopg://{user}127.0.0.1:{self.proxy.port}/{self.database}"
        )
        self.redis = RedisServer().start()
        self.bus_url = f"{self.redis.url}?prefix=faults{uuid.uuid4().hex[:8]}"
        progress(
            f"database {self.database} behind proxy :{self.proxy.port}, "
            f"redis-server :{self.redis.port}, logs in {self.workdir}"
        )
        self.gateways = [self._gateway("A"), self._gateway("B")]
        self.worker = self.start_worker()
        self.wait_ready(*self.gateways, self.worker)
        progress(
            "gateways "
            + ", ".join(f"{g.name} :{g.port}" for g in self.gateways)
            + " and a worker are ready"
        )

    def _gateway(self, name: str, port: int | None = None) -> Child:
        port = port or free_port()
        args = ["serve", "--no-executors", "--port", str(port)]
        args += ["--database-url", self.database_url, "--bus-url", self.bus_url]
        child = Child(f"gateway {name}", args, self.workdir / f"gateway-{name}.log", port)
        self.children.append(child)
        return child.start()

    def restart_gateway(self, index: int) -> Child:
        old = self.gateways[index]
        old.kill()
        child = self._gateway(old.name.split()[-1], old.port)
        self.gateways[index] = child
        return child

    def start_worker(self) -> Child:
        number = sum(1 for c in self.children if c.name.startswith("worker"))
        args = ["worker", "--database-url", self.database_url, "--bus-url", self.bus_url]
        args += ["--log-level", "INFO"]
        child = Child(f"worker {number}", args, self.workdir / f"worker-{number}.log")
        self.children.append(child)
        self.worker = child.start()
        return child

    def wait_ready(self, *children: Child, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(children)
        while pending:
            for child in list(pending):
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited:\n{child.output()[-3000:]}")
                if child.ready():
                    pending.remove(child)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {[c.name for c in pending]}")
            time.sleep(0.05)

    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def close(self) -> None:
        for child in self.children:
            with contextlib.suppress(Exception):
                child.kill()
        if self.redis is not None:
            self.redis.close()
        if self.proxy is not None:
            self.proxy.close()
        if self._created and not self.keep_database:
            import psycopg

            with contextlib.suppress(Exception):
                with psycopg.connect(self._admin(), autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if not self.keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --- one fault ---------------------------------------------------------------------------------


@dataclass
class Traffic:
    mutations: int = 0
    failed: int = 0  # the gateway could not be reached, or answered with an error
    refused: int = 0  # executePlan while a run is in progress: the normal answer
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Project:
    id: int
    sources: list[int]  # data source ids, reprocessed in turn by the traffic


class FaultSuite:
    def __init__(self, args: argparse.Namespace, deployment: Deployment) -> None:
        self.args = args
        self.deployment = deployment
        self.t0 = time.monotonic()
        self.admin = GraphQLSession([])  # its gateways are known once they have started
        self.results: list[dict[str, Any]] = []

    def progress(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)

    async def execute(self, query: str, attempts: int = 50, **variables: Any) -> dict[str, Any]:
        """An operation that must succeed (setup, checks): retried while a fault lasts."""
        for attempt in range(attempts):
            try:
                return await self.admin.execute(query, **variables)
            except Exception as error:  # noqa: BLE001 - a fault may still be lasting
                if attempt == attempts - 1:
                    raise RuntimeError(f"{query.split('{')[0]}failed: {error}") from error
                await asyncio.sleep(0.2)
        raise AssertionError("unreachable")

    # --- the project of a fault -------------------------------------------------------------

    async def make_project(self, name: str) -> Project:
        pid = (await self.execute(CREATE_PROJECT, n=f"faults: {name}"))["createProject"]["id"]
        rows = self.args.rows
        nodes_csv = "id,label,layer\n" + "".join(
            f"n{i},Node {i},{'app' if i % 2 else 'data'}\n" for i in range(rows)
        )
        edges_csv = "id,source,target\n" + "".join(
            f"e{i},n{i},n{(i * 7 + 1) % rows}\n" for i in range(rows)
        )
        sources = []
        for source_name, data_type, content in (
            ("services", "nodes", nodes_csv),
            ("calls", "edges", edges_csv),
        ):
            created = await self.execute(
                CREATE_SOURCE,
                i={
                    "projectId": pid,
                    "name": source_name,
                    "filename": f"{source_name}.csv",
                    "fileFormat": "csv",
                    "dataType": data_type,
                    "content": content,
                },
            )
            sources.append(created["createDataSource"]["id"])
        dag = (await self.execute(PLAN_DAG, p=pid))["planDag"]["nodes"]
        inputs = [n["id"] for n in dag if n["nodeType"] == "DataSourceNode"]
        layers = {"transforms": [{"kind": "keep_layers", "params": {"layers": ["app"]}}]}
        for node_id, node_type, config, upstream in (
            ("graph", "GraphNode", {}, inputs),
            ("apps", "TransformNode", layers, ["graph"]),
            ("out", "OutputNode", {}, ["apps"]),
        ):
            node = {"id": node_id, "nodeType": node_type, "config": config}
            await self.execute(ADD_NODE, p=pid, n=node)
            for source in upstream:
                await self.execute(ADD_EDGE, p=pid, e={"source": source, "target": node_id})
        project = Project(pid, sources)
        await self.wait_quiet(project, 30.0)  # the sources' first processing is done
        return project

    async def states(self, project: Project) -> dict[str, str]:
        """Every node's and data source's execution state."""
        data = await self.execute(PLAN_DAG, p=project.id)
        states = {n["id"]: n["executionState"] for n in data["planDag"]["nodes"]}
        for source in data["dataSources"]:
            states[f"dataSource {source['id']}"] = source["executionState"]
        return states

    async def last_sequence(self, project: Project) -> int:
        events = await self.admin.events(project.id)
        return events[-1][0] if events else 0

    async def wait_quiet(self, project: Project, timeout: float) -> tuple[bool, float]:
        """Until nothing is pending/processing and the log has not moved for 1 s."""
        start = time.monotonic()
        deadline = start + timeout
        still_since: float | None = None
        last = -1
        while time.monotonic() < deadline:
            try:
                states = await self.states(project)
                sequence = await self.last_sequence(project)
            except Exception:  # noqa: BLE001 - a fault still lasting: ask again
                await asyncio.sleep(0.2)
                continue
            busy = any(state in STUCK_STATES for state in states.values())
            if busy or sequence != last:
                still_since = None
                last = sequence
            elif still_since is None:
                still_since = time.monotonic()
            elif time.monotonic() - still_since >= 1.0:
                return True, time.monotonic() - start
            await asyncio.sleep(0.1)
        return False, time.monotonic() - start

    # --- traffic ----------------------------------------------------------------------------

    async def traffic(self, project: Project, counts: Traffic, stop: asyncio.Event) -> None:
        """Reprocess the data sources in turn; executePlan every 4th tick."""
        session = GraphQLSession(self.deployment.urls(), timeout=3.0)
        tick = 0
        try:
            while not stop.is_set():
                if tick % 4 == 0:
                    query, variables = EXECUTE_PLAN, {"p": project.id}
                else:
                    source = project.sources[tick % len(project.sources)]
                    query, variables = REPROCESS, {"i": source}
                tick += 1
                counts.mutations += 1
                try:
                    await session.execute(query, **variables)
                except GraphQLError as error:
                    if "already has a plan run in progress" in str(error):
                        counts.refused += 1
                    else:
                        counts.failed += 1
                        key = str(error)[:80]
                        counts.errors[key] = counts.errors.get(key, 0) + 1
                except Exception as error:  # noqa: BLE001 - no gateway reachable right now
                    counts.failed += 1
                    key = type(error).__name__
                    counts.errors[key] = counts.errors.get(key, 0) + 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.args.reprocess_interval)
        finally:
            await session.close()

    # --- the faults -------------------------------------------------------------------------

    async def fault_db(self, project: Project, phase: dict[str, Any]) -> float:
        proxy = self.deployment.proxy
        assert proxy is not None
        dropped = proxy.cut(self.args.cut_seconds)
        self.progress(f"db: cut for {self.args.cut_seconds:.1f} s ({dropped} connections reset)")
        await asyncio.sleep(self.args.cut_seconds)
        proxy.heal()
        phase["detail"] = f"{dropped} connections reset, {proxy.refused} refused in all"
        return time.monotonic()

    async def fault_redis(self, project: Project, phase: dict[str, Any]) -> float:
        redis_server = self.deployment.redis
        assert redis_server is not None
        await asyncio.to_thread(redis_server.kill)
        self.progress(f"redis: killed with -9, down for {self.args.redis_down_seconds:.1f} s")
        await asyncio.sleep(self.args.redis_down_seconds)
        await asyncio.to_thread(redis_server.start)
        back = time.monotonic()
        healthy = await self.wait_healthy(10.0)
        phase["healthz_ok_after_seconds"] = (
            round(healthy - back, 2) if healthy is not None else None
        )
        self.progress(
            "redis: started again; /healthz ok on every gateway after "
            + (f"{healthy - back:.2f} s" if healthy is not None else "never (10 s)")
        )
        return back

    async def fault_worker(self, project: Project, phase: dict[str, Any]) -> float:
        """Kill the worker while a plan run is in progress (a node past the data sources
        pending or processing), start another after --worker-down-seconds."""
        deadline = time.monotonic() + 15
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(GraphQLError):
                await self.admin.execute(EXECUTE_PLAN, p=project.id)
            seen = await self.states(project)
            if any(seen.get(n) == "processing" for n in ("graph", "apps", "out")):
                break
            if any(seen.get(n) == "pending" for n in ("graph", "apps", "out")):
                if time.monotonic() > deadline - 10:  # a few tries at `processing` first
                    break
            await asyncio.sleep(0.02)
        worker = self.deployment.worker
        assert worker is not None
        worker.kill()
        running = {n: s for n, s in seen.items() if s in STUCK_STATES}
        phase["detail"] = f"killed with {running or 'no node running'}"
        self.progress(f"worker: killed with -9 ({phase['detail']})")
        await asyncio.sleep(self.args.worker_down_seconds)
        new = self.deployment.start_worker()
        restarted = time.monotonic()
        await asyncio.to_thread(self.deployment.wait_ready, new)
        self.progress(f"worker: {new.name} started and ready")
        return restarted

    async def fault_gateway(self, project: Project, phase: dict[str, Any]) -> float:
        victim = self.deployment.gateways[0]
        victim.kill()
        killed = time.monotonic()
        self.progress(f"gateway: {victim.name} killed with -9; its watchers move")
        return killed

    async def fault_storm(self, project: Project, phase: dict[str, Any]) -> float:
        last = await self.last_sequence(project)
        rng = random.Random(self.args.seed)
        urls = self.deployment.urls()
        storm = [
            ResumingWatcher(
                urls[i % len(urls) :] + urls[: i % len(urls)],
                project.id,
                after=rng.randint(0, last),
                name=f"storm{i}",
            )
            for i in range(self.args.storm)
        ]
        started = time.monotonic()
        for watcher in storm:
            watcher.start()
        phase["storm"] = storm
        phase["storm_target"] = last
        self.progress(f"storm: {len(storm)} watchers resubscribing with afterSequence ≤ {last}")
        deadline = started + max(self.args.settle_timeout, 30.0)
        shown = started
        while time.monotonic() < deadline:
            behind = sum(1 for w in storm if w.last_sequence < last or w.subscribed_at is None)
            if not behind:
                break
            if time.monotonic() - shown > 2:
                shown = time.monotonic()
                self.progress(f"   storm: {behind} of {len(storm)} watchers still catching up")
            await asyncio.sleep(0.2)
        caught = [_caught_up_at(w, last) for w in storm]
        # Where the time went: opening the socket (handshake, connection_init/ack), then
        # the server's replay (subscribe → the last sequence of the storm's start).
        phase["storm_connect_seconds"] = _quantiles(
            [w.subscribed_at - started for w in storm if w.subscribed_at is not None]
        )
        phase["storm_replay_seconds"] = _quantiles(
            [
                at - w.subscribed_at
                for w, at in zip(storm, caught, strict=True)
                if at is not None and w.subscribed_at is not None
            ]
        )
        phase["recover_seconds"] = (
            round(max(caught) - started, 3) if caught and None not in caught else None
        )
        self.progress(
            "storm: every watcher caught up after "
            + (
                f"{phase['recover_seconds']:.2f} s"
                if phase["recover_seconds"] is not None
                else f"— {sum(c is None for c in caught)} still behind"
            )
        )
        return started

    # --- one phase --------------------------------------------------------------------------

    async def run_fault(self, name: str) -> dict[str, Any]:
        inject: Callable[[Project, dict[str, Any]], Awaitable[float]] = getattr(
            self, f"fault_{name}"
        )
        self.progress(f"{name}: {DESCRIPTIONS[name]} — setting up a project")
        project = await self.make_project(name)
        urls = self.deployment.urls()
        watchers = [
            ResumingWatcher(
                urls[i % len(urls) :] + urls[: i % len(urls)], project.id, name=f"w{i}"
            ).start()
            for i in range(self.args.watchers)
        ]
        phase: dict[str, Any] = {}
        counts = Traffic()
        stop = asyncio.Event()
        traffic = asyncio.ensure_future(self.traffic(project, counts, stop))
        try:
            await self.wait_connected(watchers)
            await asyncio.sleep(self.args.warmup_seconds)
            started = time.monotonic()
            ended = await inject(project, phase)
            await asyncio.sleep(self.args.after_seconds)
            stop.set()
            await traffic
            quiet, waited = await self.wait_quiet(project, self.args.settle_timeout)
            self.progress(
                f"{name}: traffic stopped ({counts.mutations} mutations, {counts.failed} "
                f"failed); {'quiet' if quiet else 'NOT quiet'} after {waited:.1f} s"
            )
            everyone = watchers + phase.get("storm", [])
            log = await self.admin.events(project.id)
            last = log[-1][0] if log else 0
            caught = await self.wait_watchers(everyone, last, self.args.settle_timeout)
            if name == "gateway":
                restarted = self.deployment.restart_gateway(0)
                await asyncio.to_thread(self.deployment.wait_ready, restarted)
            return self.summarise(
                name, project, watchers, phase, counts, log, started, ended, quiet, caught
            )
        finally:
            stop.set()
            await asyncio.gather(traffic, return_exceptions=True)
            await asyncio.gather(*(w.stop() for w in watchers + phase.get("storm", [])))

    async def wait_connected(self, watchers: list[ResumingWatcher]) -> None:
        deadline = time.monotonic() + 20
        while not all(w.connected for w in watchers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def wait_healthy(self, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = await asyncio.gather(
                *(asyncio.to_thread(healthz, g.port) for g in self.deployment.gateways if g.port)
            )
            if all(code == 200 for code, _ in codes):
                return time.monotonic()
            await asyncio.sleep(0.05)
        return None

    async def wait_watchers(
        self, watchers: list[ResumingWatcher], last: int, timeout: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        shown = 0.0
        while time.monotonic() < deadline:
            behind = [w for w in watchers if w.last_sequence < last]
            if not behind:
                return True
            if time.monotonic() - shown > 2:
                shown = time.monotonic()
                lowest = min(w.last_sequence for w in behind)
                self.progress(
                    f"   waiting for {len(behind)} watchers (lowest at {lowest}, log at {last})"
                )
            await asyncio.sleep(0.1)
        return False

    def summarise(
        self,
        name: str,
        project: Project,
        watchers: list[ResumingWatcher],
        phase: dict[str, Any],
        counts: Traffic,
        log: list[tuple[int, str]],
        started: float,
        ended: float,
        quiet: bool,
        caught_up: bool,
    ) -> dict[str, Any]:
        last = log[-1][0] if log else 0
        storm: list[ResumingWatcher] = phase.get("storm", [])
        everyone = watchers + storm
        compared = [w.compare(log, 0, last) for w in everyone]
        if "recover_seconds" in phase:
            recover = phase["recover_seconds"]
        else:
            firsts = [w.first_event_after(ended) for w in watchers]
            recover = round(max(firsts) - ended, 3) if firsts and None not in firsts else None
        return {
            "fault": name,
            "description": DESCRIPTIONS[name],
            "project": project.id,
            "detail": phase.get("detail"),
            "events_in_log": len(log),
            "last_sequence": last,
            "watchers": len(everyone),
            "storm_watchers": len(storm),
            "delivered": _spread([c.delivered for c in compared]),
            "expected": _spread([c.expected for c in compared]),
            "missing": _spread([c.missing for c in compared]),
            "duplicates": _spread([c.duplicates for c in compared]),
            "out_of_order": _spread([c.out_of_order for c in compared]),
            "unexpected": _spread([c.unexpected for c in compared]),
            "resumes": sum(w.resumes for w in everyone),
            "moves": sum(w.moves for w in everyone),
            "subscription_errors": sum(len(w.errors) for w in everyone),
            "watchers_caught_up": caught_up,
            "fault_seconds": round(ended - started, 3),
            "recover_seconds": recover,
            "healthz_ok_after_seconds": phase.get("healthz_ok_after_seconds"),
            "storm_connect_seconds": phase.get("storm_connect_seconds"),
            "storm_replay_seconds": phase.get("storm_replay_seconds"),
            "quiet": quiet,
            "stuck": [],  # filled in by `run` (it needs the network)
            "traffic": {
                "mutations": counts.mutations,
                "failed": counts.failed,
                "refused_busy": counts.refused,
                "errors": counts.errors,
            },
        }

    async def run(self, faults: Sequence[str]) -> list[dict[str, Any]]:
        self.admin = GraphQLSession(self.deployment.urls())
        for name in faults:
            row = await self.run_fault(name)
            project = Project(row["project"], [])
            states = await self.states(project)
            row["stuck"] = sorted(n for n, s in states.items() if s in STUCK_STATES)
            codes = await asyncio.gather(
                *(asyncio.to_thread(healthz, g.port) for g in self.deployment.gateways if g.port)
            )
            row["healthz"] = [
                {"gateway": g.name, "status": code, "bus": body.get("bus", {}).get("ok")}
                for g, (code, body) in zip(self.deployment.gateways, codes, strict=True)
            ]
            self.results.append(row)
            self.progress(f"{name}: {_line(row)}")
        await self.admin.close()
        return self.results


def _caught_up_at(watcher: ResumingWatcher, target: int) -> float | None:
    if watcher.after >= target:  # nothing to catch up on: caught up once subscribed
        return watcher.subscribed_at
    for arrived, sequence, _node in watcher.received:
        if sequence >= target:
            return arrived
    return None


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "p50": round(ordered[len(ordered) // 2], 3),
        "p90": round(ordered[int(len(ordered) * 0.9)], 3),
        "max": round(ordered[-1], 3),
    }


def _spread(values: list[int]) -> dict[str, int]:
    if not values:
        return {"min": 0, "max": 0, "total": 0}
    return {"min": min(values), "max": max(values), "total": sum(values)}


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['events_in_log']} events, missing {row['missing']['total']}, "
        f"duplicates {row['duplicates']['total']}, out of order {row['out_of_order']['total']}, "
        f"recover {_seconds(row['recover_seconds'])}, stuck {len(row['stuck'])}"
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def format_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "fault",
        "events in log",
        "watchers",
        "delivered min–max",
        "missing",
        "dups",
        "out of order",
        "recover",
        "stuck",
        "healthz",
    )
    lines = [header]
    for row in rows:
        delivered = row["delivered"]
        healthy = all(h["status"] == 200 for h in row.get("healthz", []))
        lines.append(
            (
                row["fault"],
                str(row["events_in_log"]),
                str(row["watchers"]),
                f"{delivered['min']}–{delivered['max']}",
                f"{row['missing']['total']} (max {row['missing']['max']})",
                str(row["duplicates"]["total"]),
                str(row["out_of_order"]["total"]),
                _seconds(row["recover_seconds"]),
                str(len(row["stuck"])),
                "ok" if healthy else "503",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    notes = [f"  {row['fault']}: {row['detail']}" for row in rows if row.get("detail")]
    for row in rows:
        connect, replay = row.get("storm_connect_seconds"), row.get("storm_replay_seconds")
        if connect and replay:
            notes.append(
                f"  storm: socket open+ack p50 {connect['p50']:.2f} s max {connect['max']:.2f} s;"
                f" subscribe → caught up p50 {replay['p50']:.2f} s max {replay['max']:.2f} s"
            )
    notes += [f"  {row['fault']}: stuck {', '.join(row['stuck'])}" for row in rows if row["stuck"]]
    return "\n".join(out + notes)


def git_commit() -> str | None:
    """The commit measured (`+dirty` when tracked files were changed)."""

    def git(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=5
            )
            if done.returncode == 0:
                return done.stdout.strip()
        return None

    commit = git("rev-parse", "--short", "HEAD")
    if commit is None:
        return None
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def main(args: argparse.Namespace) -> int:
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = [name for name in faults if name not in FAULTS]
    if unknown:
        print(f"unknown fault {unknown[0]!r}: choose from {', '.join(FAULTS)}", file=sys.stderr)
        return 2
    _raise_nofile()
    deployment = Deployment(args.pg_admin_url, args.keep_logs, args.keep_database)
    began = time.monotonic()

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    suite = FaultSuite(args, deployment)
    try:
        deployment.start(suite.progress)
        rows = asyncio.run(suite.run(faults))
    except KeyboardInterrupt:
        print("interrupted: stopping every process the suite started", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - say what failed, then clean up
        print(f"the fault suite could not run: {error}", file=sys.stderr)
        print(f"logs: {deployment.workdir} (kept)", file=sys.stderr)
        deployment.keep_logs = True
        return 1
    finally:
        deployment.close()
        signal.signal(signal.SIGTERM, previous)
    report = {
        "commit": git_commit(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_seconds": round(time.monotonic() - began, 1),
        "database": deployment.database,  # created for the run, dropped after it
        "config": {
            key: getattr(args, key)
            for key in (
                "faults",
                "watchers",
                "storm",
                "cut_seconds",
                "redis_down_seconds",
                "worker_down_seconds",
                "warmup_seconds",
                "after_seconds",
                "settle_timeout",
                "reprocess_interval",
                "rows",
            )
        },
        "faults": rows,
    }
    print(format_table(rows))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        print(f"JSON report: {args.json}", file=sys.stderr)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.faults", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
