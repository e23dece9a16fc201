"""`run.py serve --processes N` and the deployment mode every process is built for.

The process tests run a real `run.py serve --processes 2` on PostgreSQL and Redis: two
gateway processes on one port (SO_REUSEPORT), real clients, the parent's log. They wait for
states (a log line, a pid in /healthz, a Redis subscription), never for a duration.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.bus import InProcessBus
from actors.state import StateStore
from actors.work_queue import WorkQueue
from gateway.app import Deployment, DeploymentError, Mode, decide, hooks_from_test_env
from storage.db import Database
from tests.cluster import REDIS_URL, free_port, healthz
from tests.conftest import need_server
from tests.helpers import async_wait_until, client, request, wait_until
from tests.plan_helpers import assert_legal, states_by_node
from tests.test_multiprocess import build_plan, collect, logged_events, node_state, run_over
from tests.wsclient import RawClient

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql+psycopg://u@db/planpulse"
REDIS = "redis://127.0.0.1:6379/0"


# --- the mode, decided once -------------------------------------------------------------------


def test_the_mode_follows_the_bus_and_each_mode_builds_what_it_needs() -> None:
    embedded = decide(database_url="sqlite:///p.db", bus_url=None)
    assert embedded == Deployment(Mode.EMBEDDED, database_is_sqlite=True, executors=True)
    assert not embedded.shared_bus and not embedded.work_queue
    gateway = decide(database_url=PG, bus_url=REDIS, executors=False, processes=3)
    assert gateway.mode is Mode.GATEWAY and gateway.work_queue and gateway.processes == 3
    # One process on SQLite with a Redis bus: local executors, no queue (SQLite has none).
    assert not decide(database_url="sqlite:///p.db", bus_url=REDIS).work_queue
    worker = decide(database_url=PG, bus_url=REDIS, mode="worker")
    assert worker.mode is Mode.WORKER and not worker.serves_sockets and worker.work_queue


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"database_url": "sqlite:///p.db", "bus_url": None, "processes": 2}, "--bus-url"),
        ({"database_url": "sqlite:///p.db", "bus_url": REDIS, "processes": 2}, "PostgreSQL"),
        ({"database_url": PG, "bus_url": None, "mode": "worker"}, "worker mode needs --bus-url"),
        ({"database_url": "sqlite:///p.db", "bus_url": REDIS, "mode": "worker"}, "PostgreSQL"),
        ({"database_url": PG, "bus_url": None, "mode": "gateway"}, "gateway mode needs --bus"),
        ({"database_url": PG, "bus_url": REDIS, "mode": "embedded"}, "drop --bus-url"),
        ({"database_url": PG, "bus_url": "kafka://x"}, "unknown bus URL 'kafka://x'"),
        ({"database_url": PG, "bus_url": None, "mode": "cluster"}, "unknown mode 'cluster'"),
        ({"database_url": PG, "bus_url": REDIS, "processes": 0}, "--processes 0"),
    ],
)
def test_an_impossible_combination_names_the_flag(flags: dict[str, Any], expected: str) -> None:
    with pytest.raises(DeploymentError, match=re.escape(expected)):
        decide(**flags)


def test_test_hooks_are_loaded_only_when_asked_for() -> None:
    assert hooks_from_test_env({"PLANPULSE_TEST_PG": "postgresql://x"}) == {}
    hooks = hooks_from_test_env({"PLANPULSE_TEST_PAUSE_NODE": "graph"})
    assert type(hooks["before_node"]).__module__ == "tests.hooks"


def run_py(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PLANPULSE_")}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_several_processes_on_sqlite_or_without_a_bus_is_refused_in_one_sentence(
    tmp_path: Path,
) -> None:
    sqlite = f"sqlite:///{tmp_path / 'p.db'}"
    port = str(free_port())
    cases = [
        (["serve", "--processes", "2", "--port", port, "--database-url", sqlite], "--bus-url"),
        (
            ["serve", "--processes", "2", "--port", port, "--database-url", sqlite]
            + ["--bus-url", REDIS],
            "needs PostgreSQL",
        ),
    ]
    for args, expected in cases:
        result = run_py(*args)
        assert result.returncode == 1, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: planpulse cannot start: --processes 2 needs"), last
        assert expected in last
        assert "Traceback" not in result.stderr
    result = run_py("worker", "--database-url", PG)
    assert result.returncode == 2
    assert "worker mode needs --bus-url" in result.stderr
    assert not (tmp_path / "p.db").exists()  # refused before anything was opened


def test_a_child_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    """No database there: each child says why and exits; the parent does not restart a
    process that never came up, it stops the other and exits 1."""
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    result = run_py(
        "serve",
        "--processes",
        "2",
        "--port",
        str(free_port()),
        "--database-url",
        nowhere,
        "--database-wait",
        "0",
        "--bus-url",
        REDIS,
    )
    assert result.returncode == 1, result.stderr
    assert "error: planpulse cannot start:" in result.stderr
    assert "exited before it was ready (exit code 1)" in result.stderr
    assert "starting a new one" not in result.stderr
    assert "Traceback" not in result.stderr


# --- two gateway processes, one port ---------------------------------------------------------


class Served:
    """A `run.py serve --processes N` parent, its log, and its children as /healthz sees them."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        processes: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.prefix = f"pptest{os.urandom(5).hex()}"
        self.bus_url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}prefix={self.prefix}"
        self.port = free_port()
        self.log = workdir / "serve.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PLANPULSE_")}
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "run.py"),
                    "serve",
                    "--processes",
                    str(processes),
                    "--port",
                    str(self.port),
                    "--database-url",
                    database_url,
                    "--bus-url",
                    self.bus_url,
                ],
                cwd=workdir,
                env={**environment, **(env or {}), "PYTHONUNBUFFERED": "1"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        def there() -> bool:
            assert self.popen.poll() is None or text in self.output(), self.output()
            return text in self.output()

        wait_until(there, timeout=timeout, what=f"{text!r} in the log")

    def pids_answering(self, want: int = 2, tries: int = 400) -> set[int]:
        """The pids behind /healthz over fresh connections, until `want` distinct ones."""
        seen: set[int] = set()
        for _ in range(tries):
            status, body = healthz(self.port)
            if status == 200:
                seen.add(body["pid"])
            if len(seen) >= want:
                break
        return seen

    def subscribed_processes(self, project_id: int) -> int:
        """How many processes have subscribed to the project's Redis channel."""
        import redis

        connection = redis.Redis.from_url(REDIS_URL)
        try:
            channel = f"{self.prefix}:project:{project_id}"
            return int(dict(connection.pubsub_numsub(channel)).get(channel.encode(), 0))
        finally:
            connection.close()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # the children get SIGTERM from the kernel (PDEATHSIG)
            self.popen.wait(10)


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    need_server("Redis", "127.0.0.1", 6379)
    database = Database(pg_url)
    database.create_schema()
    yield database
    database.dispose()


@pytest.fixture
def served(pg_url: str, db: Database, tmp_path: Path) -> Iterator[Served]:
    running = Served(pg_url, tmp_path)
    try:
        yield running
    finally:
        running.close()


def started_pids(output: str) -> list[int]:
    return [int(p) for p in re.findall(r"gateway process \d+ started \(pid (\d+)\)", output)]


def alive(pid: int) -> bool:
    """Running (a zombie that nobody reaped yet has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(180)
def test_two_processes_share_a_port_every_event_a_restart_and_a_clean_stop(
    served: Served, db: Database
) -> None:
    served.wait_for("all 2 gateway processes ready")
    children = set(started_pids(served.output()))
    assert len(children) == 2
    # Both accept connections on the one port: /healthz answers from both pids.
    assert served.pids_answering() == children

    # Subscribers until both processes hold the project (each SUBSCRIBEs its channel), then
    # one run: its events are produced in the one process that claims the request, and every
    # subscriber, on either process, gets all of them once and in order.
    pid, node_ids = build_plan(db)
    seen: list[list[tuple[int, str, str]]] = []

    async def scenario() -> None:
        watchers = []
        try:
            for _ in range(30):
                seen.append([])
                watchers.append(asyncio.ensure_future(collect(served.url, pid, seen[-1])))
                try:
                    await async_wait_until(
                        lambda: served.subscribed_processes(pid) == 2, timeout=1.0
                    )
                    break
                except AssertionError:
                    continue
            assert served.subscribed_processes(pid) == 2, "no subscriber reached the second"
            async with client(served.url) as admin:
                await admin.execute(
                    request("mutation($p: Int!) { executePlan(projectId: $p) }", p=pid)
                )
            await async_wait_until(
                lambda: run_over(db, pid, node_ids), timeout=30, what="the run to end"
            )
            expected = await asyncio.to_thread(logged_events, db, pid)
            await async_wait_until(
                lambda: all(len(s) >= len(expected) for s in seen),
                timeout=20,
                what=f"{len(expected)} events on every subscriber",
            )
            assert all(got == expected for got in seen)
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    asyncio.run(scenario())
    assert {e[2] for e in logged_events(db, pid) if e[1] == "out"} >= {"completed"}
    # Exactly one process ran the request (the queue's claim), once.
    took = re.findall(
        rf"took request \d+ \(run the plan of project {pid}, attempt (\d+)\)", served.output()
    )
    assert took == ["1"], served.output()

    # A child killed with -9 is noticed, named, and replaced; the port keeps answering.
    victim = min(children)
    os.kill(victim, signal.SIGKILL)
    served.wait_for(f"(pid {victim}) died (killed by SIGKILL): starting a new one")
    wait_until(lambda: len(set(started_pids(served.output()))) == 3, what="a third child")
    replacement = (set(started_pids(served.output())) - children).pop()
    wait_until(
        lambda: served.pids_answering() == (children - {victim}) | {replacement},
        timeout=30,
        what="the replacement answering beside the survivor",
    )

    # SIGTERM to the parent: every child closes its sockets with 1001 and exits, then it.
    async def close_code() -> tuple[int | None, str]:
        ws = await RawClient.open(served.url)
        await ws.init()
        served.popen.send_signal(signal.SIGTERM)
        return await ws.closed(timeout=30)

    assert asyncio.run(close_code()) == (1001, "server shutting down")
    assert served.popen.wait(timeout=40) == 0
    output = served.output()
    assert "SIGTERM received: stopping 2 gateway processes" in output
    assert output.count("stopped (exit code 0)") == 2, output
    for child in set(started_pids(output)):
        assert not alive(child), f"child {child} outlived the parent"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(120)
def test_children_stop_when_the_parent_is_killed(served: Served) -> None:
    served.wait_for("all 2 gateway processes ready")
    children = started_pids(served.output())
    served.popen.kill()
    served.popen.wait(10)
    deadline = time.monotonic() + 30
    while any(alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(c) for c in children), "orphaned gateway processes"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(180)
def test_the_run_of_a_killed_child_is_finished_by_another_once(
    pg_url: str, db: Database, tmp_path: Path
) -> None:
    """Each child's executors consume the queue: the child holding a run is killed with
    `graph` in processing; another child claims the request (attempt 2) and finishes it,
    and a subscriber on a live process sees the whole run from the log to the end."""
    release = tmp_path / "release"
    hold = {"PLANPULSE_TEST_PAUSE_NODE": "graph", "PLANPULSE_TEST_RELEASE_FILE": str(release)}
    served = Served(pg_url, tmp_path, env=hold)
    try:
        served.wait_for("all 2 gateway processes ready")
        pid, node_ids = build_plan(db)
        WorkQueue(StateStore(db), InProcessBus()).run_plan(pid)  # as a gateway's mutation
        wait_until(lambda: node_state(db, pid, "graph") == "processing", timeout=20)
        took = rf"worker \S+:(\d+): took request \d+ \(run the plan of project {pid}, attempt"
        holder = int(re.findall(took + " 1", served.output())[0])
        assert holder in started_pids(served.output())
        os.kill(holder, signal.SIGKILL)
        served.wait_for(f"(pid {holder}) died (killed by SIGKILL): starting a new one")
        release.touch()
        wait_until(lambda: run_over(db, pid, node_ids), timeout=30, what="the run to end")
        assert {node_state(db, pid, n) for n in node_ids} == {"completed"}
        states = states_by_node(db, pid)
        assert_legal(states)
        assert states["graph"] == [
            "pending",
            "processing",  # in the killed child
            "not_started",  # settled by the child that claimed it again
            "pending",
            "processing",
            "completed",
        ]
        second = [int(p) for p in re.findall(took + " 2", served.output())]
        assert len(second) == 1 and second[0] != holder, served.output()

        seen: list[tuple[int, str, str]] = []
        expected = logged_events(db, pid)

        async def watch() -> None:
            watcher = asyncio.ensure_future(collect(served.url, pid, seen))
            try:
                await async_wait_until(lambda: len(seen) >= len(expected), timeout=20)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

        asyncio.run(watch())
        assert seen == expected
    finally:
        served.close()


# --- the supervisor alone (children that do nothing but live and die) --------------------------

SUPERVISED = """
import logging, os, sys, time
sys.path.insert(0, {root!r})
from gateway.supervisor import Supervisor

logging.basicConfig(level=logging.INFO, format="%(message)s")

def crash_after_ready(index, ready):
    ready()
    return 3

def live_until_signalled(index, ready):
    ready()
    while True:
        time.sleep(1)

main = crash_after_ready if sys.argv[1] == "crash" else live_until_signalled
sys.exit(Supervisor(main, 2, stop_timeout=5).run())
"""


def supervise(how: str, tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "supervised.py"
    script.write_text(SUPERVISED.format(root=str(ROOT)))
    return subprocess.Popen(
        [sys.executable, str(script), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_child_that_keeps_dying_makes_the_supervisor_give_up(tmp_path: Path) -> None:
    process = supervise("crash", tmp_path)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert output.count("died (exit code 3): starting a new one") == 5, output
    assert "the 6th death within 60 s: stopping every gateway process" in output
    assert "before it was ready" not in output


def test_sigterm_stops_every_child(tmp_path: Path) -> None:
    process = supervise("live", tmp_path)
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "all 2 gateway processes ready" in line:
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=30)
    output = "".join(lines) + rest
    assert process.returncode == 0, output
    assert "SIGTERM received: stopping 2 gateway processes" in output
    assert output.count("stopped (killed by SIGTERM)") == 2, output
    for child in started_pids(output):
        assert not alive(child)
