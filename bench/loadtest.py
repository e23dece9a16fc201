"""`python run.py loadtest`: many subscribers, a synthetic load, and what they saw.

It starts a server itself (planpulse with `--enable-loadgen`; `--server baseline`, the
bare-websockets ceiling in bench/baseline_server.py; or `--server reference`, the graphql-ws
reference server in bench/reference/) or targets `--url`; opens `--connections`
sockets from `--client-procs` processes; spreads `--subscriptions` over `--projects` projects
(subscription i is on connection i mod C, for project i mod P + 1); asks the server to
`prepareLoad`, then `startLoad` at `--rate` events per second in total for `--seconds`; and
measures, from the events themselves:

- deliveries per second, and latency from each event's `timestamp` (when the change was
  persisted) to its receipt: p50, p90, p99, max;
- lost, duplicated and out-of-order deliveries, from each subscription's `sequence` (gaps,
  head and tail against the other subscribers of the project and the server's event log);
- connect time (TCP + handshake + connection_init/ack), server RSS and threads (from
  /proc when it started the server, or `--server-pid`), and the CPU each side used.

A progress line is redrawn on stderr while it runs; the report is a table on stdout, or JSON
with `--json`. `--sweep` raises the rate by `--sweep-factor` until a step fails (something
lost, p99 over 1 s, or the offered rate not achieved) and reports the last rate that held.
`--rates 4000,6000` runs one step at each rate. `--plot FILE.png` draws latency percentiles
and deliveries per second over time. `--compare planpulse,baseline,reference` measures
several servers in one invocation, each started fresh for each rate (bench/compare.py), and
prints one table of them side by side.

    python run.py loadtest --connections 1000 --projects 100 --subscriptions 1000 \\
        --rate 1000 --seconds 10
    python run.py loadtest --server baseline --sweep --rate 2000
    python run.py loadtest --compare planpulse,baseline,reference --rates 4000,6000 \\
        --connections 1000 --projects 100 --plot /tmp/compare.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from bench import reference
from bench.client import SUBPROTOCOL, worker_main
from bench.stats import Histogram, Tally, account, percentiles

ROOT = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).resolve().parent / "baseline_server.py"

PREPARE = "mutation($projects: Int!) { prepareLoad(projects: $projects) }"
START = (
    "mutation($projects: Int!, $eventsPerSecond: Int!, $seconds: Float!) "
    "{ startLoad(projects: $projects, eventsPerSecond: $eventsPerSecond, seconds: $seconds) }"
)
TAIL = (
    "query($projectId: Int!, $afterSequence: Int, $limit: Int) { executionEvents("
    "projectId: $projectId, afterSequence: $afterSequence, limit: $limit) { sequence } }"
)
P99_LIMIT_MS = 1000.0
ACHIEVED_FRACTION = 0.9  # of the offered deliveries/s, for a step to count as held


# --- arguments ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    target = parser.add_argument_group("server")
    target.add_argument("--url", help="target a running server (ws://host:port/graphql)")
    target.add_argument(
        "--server",
        choices=SERVERS,
        default="planpulse",
        help="without --url: which server to start (default planpulse --enable-loadgen; "
        "baseline: bare websockets; reference: graphql-ws on Node.js)",
    )
    target.add_argument(
        "--compare",
        type=server_list,
        metavar="SERVER,SERVER,...",
        help="measure these servers (of planpulse, baseline, reference; or 'all') one after "
        "the other in this one invocation, each started fresh for each of --rates, and print "
        "them side by side",
    )
    target.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the started planpulse (repeatable), e.g. "
        "--server-arg=--idle-seconds=30",
    )
    target.add_argument(
        "--database-url",
        help="for the started planpulse (default: a fresh SQLite file in a temporary folder)",
    )
    target.add_argument(
        "--server-pid", type=int, help="with --url: the server's pid, to read its RSS/threads"
    )
    target.add_argument(
        "--token",
        default=env("PLANPULSE_TOKEN"),
        help="bearer token for connection_init (an admin one when auth is on; env PLANPULSE_TOKEN)",
    )
    load = parser.add_argument_group("load")
    load.add_argument("--connections", type=int, default=100)
    load.add_argument("--projects", type=int, default=10)
    load.add_argument(
        "--subscriptions",
        type=int,
        help="in total, spread over the projects (default: one per connection)",
    )
    load.add_argument("--rate", type=int, default=100, help="events per second, all projects")
    load.add_argument(
        "--rates",
        type=rate_list,
        metavar="RATE,RATE,...",
        help="one step at each of these rates (events/s) instead of --rate",
    )
    load.add_argument("--seconds", type=float, default=10.0, help="length of the load")
    load.add_argument(
        "--client-procs",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="client processes sharing the connections (default: 2, or the cores if fewer)",
    )
    load.add_argument("--connect-concurrency", type=int, default=50, help="per client process")
    load.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="seconds to wait, after the load, for events still on their way",
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--sweep",
        action="store_true",
        help="raise the rate until a step fails; report the last that held",
    )
    sweep.add_argument("--sweep-factor", type=float, default=1.5)
    sweep.add_argument("--sweep-max-rate", type=int, default=1_000_000)
    sweep.add_argument(
        "--sweep-refine",
        type=int,
        default=0,
        help="bisection steps between the last rate that held and the first that failed",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--plot", metavar="FILE.png", help="latency and deliveries/s over time")
    out.add_argument(
        "--verify-limit",
        type=int,
        default=1000,
        help="projects whose tail is checked against the server's event log (all if fewer)",
    )
    out.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="after the clients leave, watch the server's project actors and threads for up "
        "to this many seconds",
    )
    out.add_argument("--label", default="", help="a name for this run in the report")
    out.add_argument("--quiet", action="store_true", help="no progress line")
    out.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="with --compare: before each server, wait up to this many seconds for the "
        "machine to use less than 30%% of a core (the wait is reported)",
    )


SERVERS = ("planpulse", "baseline", "reference")


def server_list(text: str) -> list[str]:
    """`planpulse,baseline` → the servers, in that order ('all': every one)."""
    names = list(SERVERS) if text.strip() == "all" else [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown server {', '.join(unknown) or '(none)'}: choose from {', '.join(SERVERS)} "
            "or 'all'"
        )
    return names


def rate_list(text: str) -> list[int]:
    """`4000,6000` → [4000, 6000] (events per second, each positive)."""
    try:
        rates = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        rates = []
    if not rates or any(r < 1 for r in rates):
        raise argparse.ArgumentTypeError(
            f"--rates takes positive integers separated by commas (events/s), not {text!r}"
        )
    return rates


# --- the server under test ------------------------------------------------------------------


def loadtest_command(
    run_py: str | Path,
    *,
    connections: int,
    projects: int,
    subscriptions: int,
    rate: int,
    seconds: float,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The `run.py loadtest` command line of one F-shaped step (the bench scripts that run
    a load test as a child: bench/profile.py, side_by_side.py, processes.py)."""
    return [
        sys.executable,
        str(run_py),
        "loadtest",
        "--connections",
        str(connections),
        "--projects",
        str(projects),
        "--subscriptions",
        str(subscriptions),
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--quiet",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ServerUnderTest:
    """The server: its URL, and its pid when known (for RSS, threads and CPU)."""

    def __init__(self, url: str, pid: int | None = None, kind: str = "external") -> None:
        self.url = url
        self.http = "http" + url[2:].split("/graphql", 1)[0] if url.startswith("ws") else url
        self.pid = pid
        self.kind = kind
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: str | None = None
        self.log_path: str | None = None
        self.command: list[str] = []

    @classmethod
    def start(cls, args: argparse.Namespace) -> ServerUnderTest:
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="planpulse-loadtest-")
        if args.server == "baseline":
            command = [sys.executable, str(BASELINE), "--port", str(port)]
        elif args.server == "reference":
            command = reference.command(port)
        else:
            database = args.database_url or f"sqlite:///{workdir}/loadtest.db"
            command = [
                sys.executable,
                str(ROOT / "run.py"),
                "serve",
                "--enable-loadgen",
                "--port",
                str(port),
                "--database-url",
                database,
                "--log-level",
                "WARNING",
                *args.server_arg,
            ]
        log_path = os.path.join(workdir, "server.log")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PLANPULSE_ENABLE_LOADGEN": "1"},
                preexec_fn=_raise_nofile,  # noqa: PLW1509 - only sets a limit, no threads yet
            )
        server = cls(f"ws://127.0.0.1:{port}/graphql", process.pid, args.server)
        server.process = process
        server.workdir = workdir
        server.log_path = log_path
        server.command = command
        server.wait_healthy()
        return server

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.http + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.1)
        raise RuntimeError(f"the server was not healthy within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- what the server costs ------------------------------------------------------------

    def proc_status(self) -> dict[str, float] | None:
        """RSS (MB) and threads from /proc, when the pid is known."""
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            return None
        return {
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024.0,
            "threads": int(fields["Threads"]),
        }

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid is not None else None

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.http + path, timeout=5) as response:
                return response.read()
        except OSError:
            return None

    def metric(self, name: str) -> float | None:
        body = self.get("/metrics")
        if body is None:
            return None
        for line in body.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                with contextlib.suppress(ValueError):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def metrics(self, names: Sequence[str]) -> dict[str, float]:
        """Several unlabelled metrics from one scrape (those the server does not have: absent)."""
        body = self.get("/metrics")
        found: dict[str, float] = {}
        if body is None:
            return found
        wanted = set(names)
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                with contextlib.suppress(ValueError):
                    found[name] = float(value)
        return found

    def healthz(self) -> dict[str, Any]:
        body = self.get("/healthz")
        if body is None:
            return {}
        with contextlib.suppress(ValueError):
            return orjson.loads(body)
        return {}


def machine_cpu_seconds() -> float | None:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


# --- the control connection (prepareLoad, startLoad, the tail check) ------------------------


class Control:
    """One socket for the operations the load test itself sends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = 0

    @classmethod
    async def open(cls, url: str, token: str | None) -> Control:
        # No keepalive pings: a server whose event loop is swamped by the load (the graphql-ws
        # reference past its ceiling) answers late, and the run must wait for it, not give up
        # on it (each operation has its own timeout).
        ws = await connect(
            url, subprotocols=[SUBPROTOCOL], max_size=None, open_timeout=30, ping_interval=None
        )
        init: dict[str, Any] = {"type": "connection_init"}
        if token:
            init["payload"] = {"authorization": f"Bearer {token}"}
        await ws.send(orjson.dumps(init).decode())
        ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"connection_init refused: {ack}")
        return cls(ws)

    async def execute(self, query: str, variables: dict[str, Any], timeout: float = 60.0) -> Any:
        results = await self.execute_many([(query, variables)], timeout=timeout)
        return results[0]

    async def execute_many(
        self,
        operations: Sequence[tuple[str, dict[str, Any]]],
        window: int = 50,
        timeout: float = 60.0,
    ) -> list[Any]:
        """Pipelined: up to `window` operations in flight on the socket. Returns `data`s;
        raises on a GraphQL error."""
        results: list[Any] = [None] * len(operations)
        pending: dict[str, int] = {}
        sent = 0
        done = 0
        deadline = time.monotonic() + timeout
        while done < len(operations):
            while sent < len(operations) and len(pending) < window:
                self.ids += 1
                op_id = f"c{self.ids}"
                query, variables = operations[sent]
                pending[op_id] = sent
                message = {
                    "id": op_id,
                    "type": "subscribe",
                    "payload": {"query": query, "variables": variables},
                }
                await self.ws.send(orjson.dumps(message).decode())
                sent += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer within {timeout:.0f} s")
            message = orjson.loads(await asyncio.wait_for(self.ws.recv(), remaining))
            index = pending.get(message.get("id"))
            if index is None:
                continue
            kind = message.get("type")
            if kind == "next":
                payload = message["payload"]
                if payload.get("errors"):
                    raise RuntimeError(f"{operations[index][0][:60]}…: {payload['errors']}")
                results[index] = payload.get("data")
            elif kind == "complete":
                del pending[message["id"]]
                done += 1
            elif kind == "error":
                raise RuntimeError(f"{operations[index][0][:60]}…: {message.get('payload')}")
        return results

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()


# --- the client processes -------------------------------------------------------------------


def plan_subscriptions(
    connections: int, projects: int, subscriptions: int, procs: int
) -> list[list[tuple[int, list[tuple[str, int]]]]]:
    """Subscription i: connection i mod C, project i mod P + 1; connection j: process j mod K.

    Ids restart at s0 on every connection, so subscribers of a project that hold the same id
    can be sent the very same bytes.
    """
    per_connection: list[list[tuple[str, int]]] = [[] for _ in range(connections)]
    for i in range(subscriptions):
        subs = per_connection[i % connections]
        subs.append((f"s{len(subs)}", i % projects + 1))
    plans: list[list[tuple[int, list[tuple[str, int]]]]] = [[] for _ in range(procs)]
    for j, subs in enumerate(per_connection):
        plans[j % procs].append((j, subs))
    return plans


@dataclass
class ClientProc:
    process: multiprocessing.process.BaseProcess
    pipe: Connection
    ready: dict[str, Any] | None = None
    started: int = -1
    live: dict[str, Any] = field(default_factory=dict)
    tallies: dict[int, tuple[list[Tally], dict[str, Any]]] = field(default_factory=dict)


class Clients:
    """The client processes, and what they report (merged per second)."""

    def __init__(self, url: str, token: str | None, args: argparse.Namespace) -> None:
        self.url = url
        self.token = token
        self.args = args
        self.procs: list[ClientProc] = []
        self.seconds: dict[int, list[Any]] = {}  # second -> [count, Histogram]
        self.step = -1
        self.changed = asyncio.Event()
        self.history: deque[tuple[float, int]] = deque()

    async def start(self) -> dict[str, Any]:
        args = self.args
        subscriptions = args.subscriptions or args.connections
        procs = max(1, min(args.client_procs, args.connections))
        plans = plan_subscriptions(args.connections, args.projects, subscriptions, procs)
        context = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for plan in plans:
            parent, child = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(child, self.url, self.token, plan, args.connect_concurrency),
                daemon=True,
            )
            process.start()
            child.close()
            proc = ClientProc(process, parent)
            self.procs.append(proc)
            loop.add_reader(parent.fileno(), self._on_pipe, proc)
        while any(p.ready is None for p in self.procs):
            if any(not p.process.is_alive() and p.ready is None for p in self.procs):
                raise RuntimeError("a client process died while connecting")
            await self._wait_change(1.0)
        connect_ms = [ms for p in self.procs for ms in p.ready["connect_ms"]]  # type: ignore[index]
        failures: dict[str, int] = {}
        for p in self.procs:
            for reason, n in p.ready["failures"].items():  # type: ignore[index]
                failures[reason] = failures.get(reason, 0) + n
        p50, p99, worst = percentiles(connect_ms, (0.5, 0.99, 1.0))
        return {
            "connections": sum(p.ready["connections"] for p in self.procs),  # type: ignore[index]
            "subscriptions": sum(p.ready["subscriptions"] for p in self.procs),  # type: ignore[index]
            "connect_ms": {"p50": _r(p50), "p99": _r(p99), "max": _r(worst)},
            "connect_failures": failures,
            "pids": [p.ready["pid"] for p in self.procs],  # type: ignore[index]
        }

    async def _wait_change(self, timeout: float) -> None:
        self.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    def _on_pipe(self, proc: ClientProc) -> None:
        try:
            while proc.pipe.poll():
                self._receive(proc, proc.pipe.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(proc.pipe.fileno())
        self.changed.set()

    def _receive(self, proc: ClientProc, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            proc.ready = message[1]
        elif kind == "tick":
            _, step, seconds, live = message
            if step != self.step:
                return
            proc.live = live
            for sec, (count, sparse, max_ms) in seconds.items():
                entry = self.seconds.get(sec)
                if entry is None:
                    entry = self.seconds[sec] = [0, Histogram()]
                entry[0] += count
                entry[1].merge_sparse(sparse, max_ms)
        elif kind == "started":
            proc.started = message[1]
        elif kind == "tallies":
            _, step, tallies, extra = message
            proc.tallies[step] = (tallies, extra)

    async def begin(self, step: int, t0: float) -> None:
        """Every client process starts counting a new step (and has said so)."""
        self.step = step
        self.seconds = {}
        self.history.clear()
        for p in self.procs:
            p.live = {}
            p.pipe.send(("start", step, t0))
        deadline = time.monotonic() + 30
        while any(p.started != step for p in self.procs):
            if time.monotonic() > deadline:
                raise RuntimeError("a client process did not start the step")
            await self._wait_change(0.5)

    def delivered(self) -> int:
        total = sum(p.live.get("delivered", 0) for p in self.procs)
        now = time.monotonic()
        self.history.append((now, total))
        while len(self.history) > 2 and now - self.history[0][0] > 2.0:
            self.history.popleft()
        return total

    def recent_rate(self) -> float:
        """Deliveries per second over the last two seconds or so (for the progress line)."""
        if len(self.history) < 2:
            return 0.0
        (t_old, n_old), (t_new, n_new) = self.history[0], self.history[-1]
        return (n_new - n_old) / (t_new - t_old) if t_new - t_old >= 1.0 else 0.0

    def gaps(self) -> int:
        return sum(p.live.get("gaps", 0) for p in self.procs)

    def closed(self) -> int:
        return sum(p.live.get("closed", 0) for p in self.procs)

    async def collect(self, step: int) -> tuple[list[Tally], dict[str, Any]]:
        for p in self.procs:
            p.pipe.send(("collect", step))
        deadline = time.monotonic() + 60
        while any(step not in p.tallies for p in self.procs):
            if time.monotonic() > deadline:
                raise RuntimeError("a client process did not report its tallies")
            await self._wait_change(1.0)
        tallies: list[Tally] = []
        extra: dict[str, Any] = {"closed": 0, "close_reasons": {}, "protocol_errors": []}
        last_receipt = 0.0
        first_receipt = 0.0
        for p in self.procs:
            t, e = p.tallies.pop(step)
            tallies.extend(t)
            extra["closed"] += e["closed"]
            for reason, n in e["close_reasons"].items():
                extra["close_reasons"][reason] = extra["close_reasons"].get(reason, 0) + n
            extra["protocol_errors"].extend(e["protocol_errors"])
            last_receipt = max(last_receipt, e["last_receipt"])
            if e["first_receipt"] and (not first_receipt or e["first_receipt"] < first_receipt):
                first_receipt = e["first_receipt"]
        extra["first_receipt"] = first_receipt
        extra["last_receipt"] = last_receipt
        return tallies, extra

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.process.pid or 0) or 0.0 for p in self.procs)

    async def finish(self) -> None:
        loop = asyncio.get_running_loop()
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.pipe.send(("finish",))
        deadline = time.monotonic() + 10
        for p in self.procs:
            while p.process.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.process.is_alive():
                p.process.terminate()
            with contextlib.suppress(Exception):
                loop.remove_reader(p.pipe.fileno())
            p.pipe.close()


# --- one run --------------------------------------------------------------------------------


class Progress:
    """One line on stderr, redrawn (or printed every few seconds when not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last_print = 0.0
        self.width = 0

    def show(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            pad = max(0, self.width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            sys.stderr.flush()
            self.width = len(text)
        elif time.monotonic() - self.last_print >= 5:
            self.last_print = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if not self.quiet and self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0

    def note(self, text: str) -> None:
        if not self.quiet:
            self.done()
            print(text, file=sys.stderr, flush=True)


def bar(fraction: float, width: int = 20) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "█" * filled + "·" * (width - filled)


class LoadTest:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.progress = Progress(args.quiet)
        self.server: ServerUnderTest | None = None
        self.control: Control | None = None
        self.clients: Clients | None = None
        self.samples: list[dict[str, float]] = []
        self.tail_skipped: str | None = None  # why the last step's tail was not checked

    # --- the whole run ----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        if args.url:
            self.server = ServerUnderTest(args.url, args.server_pid)
        else:
            self.progress.note(f"starting {args.server} …")
            self.server = await asyncio.to_thread(ServerUnderTest.start, args)
        report: dict[str, Any] = {"label": args.label, "scenario": self.scenario()}
        try:
            await self._run(report)
        finally:
            if self.clients is not None:
                await self.clients.finish()
            if self.control is not None:
                await self.control.close()
            if args.url is None and self.server is not None:
                report.setdefault("server", {})["log_tail"] = self.server.tail(10)
                await asyncio.to_thread(self.server.stop)
        return report

    async def _run(self, report: dict[str, Any]) -> None:
        args = self.args
        server = self.server
        assert server is not None
        self.control = await Control.open(server.url, args.token)
        self.progress.note(f"prepareLoad({args.projects}) …")
        started = time.monotonic()
        await self.control.execute(PREPARE, {"projects": args.projects}, timeout=1800)
        prepare_s = time.monotonic() - started
        idle = server.proc_status()
        self.progress.note(f"opening {args.connections} connections …")
        self.clients = Clients(server.url, args.token, args)
        setup = await self.clients.start()
        await asyncio.sleep(0.5)  # let the server settle before measuring what it holds
        ready = server.proc_status()
        report["server"] = self.server_info(idle, ready, setup, prepare_s)
        report["clients"] = setup
        steps: list[dict[str, Any]] = []
        report["steps"] = steps
        rate = args.rate
        if not args.sweep:
            for index, each in enumerate(args.rates or [rate]):
                if index:
                    await asyncio.sleep(1.0)
                steps.append(await self.step(index, each))
        else:
            held: dict[str, Any] | None = None
            failed: dict[str, Any] | None = None
            while rate <= args.sweep_max_rate:
                result = await self.step(len(steps), rate)
                steps.append(result)
                if not result["held"]:
                    failed = result
                    break
                held = result
                rate = max(rate + 1, int(rate * args.sweep_factor))
                await asyncio.sleep(1.0)
            low = held["rate"] if held else None
            high = failed["rate"] if failed else None
            for _ in range(args.sweep_refine):
                if low is None or high is None or high - low <= max(1, low // 20):
                    break
                if failed is not None and failed["closed_connections"]:
                    break  # the server dropped sockets: later steps would not be comparable
                middle = (low + high) // 2
                await asyncio.sleep(1.0)
                result = await self.step(len(steps), middle)
                steps.append(result)
                if result["held"]:
                    low, held = middle, result
                else:
                    high, failed = middle, result
            report["sweep"] = {
                "held_rate": held["rate"] if held else None,
                "held_deliveries_per_s": held["deliveries_per_s"] if held else None,
                "held_step": held["step"] if held else None,
                "failed_rate": failed["rate"] if failed else None,
                "failed_because": failed["verdict"] if failed else None,
            }
        report["summary"] = self.summary(report)
        after = server.proc_status()
        if after is not None:
            report["server"]["rss_mb"]["end"] = _r(after["rss_mb"])
            report["server"]["threads"]["end"] = after["threads"]
        report["server"]["project_actors_loaded"] = server.healthz().get("projectActors")
        await self.clients.finish()
        self.clients = None
        await self.control.close()
        self.control = None
        if args.linger > 0:
            report["linger"] = await self.linger(args.linger)

    def scenario(self) -> dict[str, Any]:
        a = self.args
        subscriptions = a.subscriptions or a.connections
        return {
            "server": "url" if a.url else a.server,
            "url": a.url,
            "connections": a.connections,
            "projects": a.projects,
            "subscriptions": subscriptions,
            "subscribers_per_project": round(subscriptions / a.projects, 2),
            "rate": a.rate,
            "seconds": a.seconds,
            "client_procs": max(1, min(a.client_procs, a.connections)),
            "sweep": a.sweep,
            "machine": machine(),
        }

    def server_info(
        self,
        idle: dict[str, float] | None,
        ready: dict[str, float] | None,
        setup: dict[str, Any],
        prepare_s: float,
    ) -> dict[str, Any]:
        server = self.server
        assert server is not None
        info: dict[str, Any] = {
            "kind": server.kind,
            "pid": server.pid,
            "command": " ".join(server.command) if server.command else None,
            "prepare_seconds": round(prepare_s, 2),
            "rss_mb": {},
            "threads": {},
            "project_actors_ready": server.healthz().get("projectActors"),
        }
        if idle is not None and ready is not None:
            info["rss_mb"] = {"idle": _r(idle["rss_mb"]), "ready": _r(ready["rss_mb"])}
            info["threads"] = {"idle": idle["threads"], "ready": ready["threads"]}
            connections = max(1, setup["connections"])
            info["kib_per_connection"] = _r((ready["rss_mb"] - idle["rss_mb"]) * 1024 / connections)
        else:
            rss = server.metric("process_resident_memory_bytes")
            if rss is not None:
                info["rss_mb"] = {"ready": _r(rss / 2**20)}
            info["note"] = "RSS/threads unknown: pass --server-pid with --url"
        return info

    # --- one load step ----------------------------------------------------------------------

    async def step(self, index: int, rate: int) -> dict[str, Any]:
        args = self.args
        server = self.server
        clients = self.clients
        control = self.control
        assert server is not None and clients is not None and control is not None
        subscriptions = args.subscriptions or args.connections
        offered = rate * subscriptions / args.projects
        published_before = server.metric("planpulse_bus_changes_received_total")
        stages_before = server.metrics(STAGE_METRICS)
        cpu_server = server.cpu_seconds()
        cpu_clients = clients.cpu_seconds()
        cpu_self = cpu_seconds(os.getpid())
        cpu_machine = machine_cpu_seconds()
        t0 = time.time()
        await clients.begin(index, t0)
        await control.execute(
            START,
            {"projects": args.projects, "eventsPerSecond": rate, "seconds": args.seconds},
            timeout=60,
        )
        load_end = t0 + args.seconds
        peak = {"rss_mb": 0.0, "threads": 0}
        last_sample = 0.0
        last_count, last_change = -1, time.time()
        label = f"step {index}: " if args.sweep or len(args.rates or ()) > 1 else ""
        if args.label:
            label = f"{args.label} {label}"
        cut_off = False
        while True:
            await clients._wait_change(0.25)
            now = time.time()
            count = clients.delivered()
            if count != last_count:
                last_count, last_change = count, now
            if now - last_sample >= 1.0:
                last_sample = now
                status = server.proc_status()
                if status is not None:
                    peak["rss_mb"] = max(peak["rss_mb"], status["rss_mb"])
                    peak["threads"] = max(peak["threads"], status["threads"])
                if not server.alive():
                    raise RuntimeError(f"the server died during the load:\n{server.tail()}")
            self.progress.show(self.progress_line(label, rate, offered, now - t0, peak))
            if now >= load_end + 1.0 and now - last_change >= 1.5:
                break  # quiet: nothing arrived for 1.5 s after the load
            if now >= load_end + args.drain:
                cut_off = now - last_change < 1.0
                break
        self.progress.done()
        published_after = server.metric("planpulse_bus_changes_received_total")
        stages_after = server.metrics(STAGE_METRICS)
        cpu_server_after = server.cpu_seconds()
        cpu_clients_after = clients.cpu_seconds()
        cpu_self_after = cpu_seconds(os.getpid())
        cpu_machine_after = machine_cpu_seconds()
        wall = time.time() - t0
        tallies, extra = await clients.collect(index)
        self.tail_skipped = None
        server_last = await self.tail_check(tallies)
        server_events = (
            int(published_after - published_before)
            if published_after is not None and published_before is not None
            else None
        )
        losses = account(tallies, server_last, server_events)
        stages = stage_split(stages_before, stages_after)
        if self.tail_skipped:
            losses.notes.append(
                f"the tail was not checked against the server's event log ({self.tail_skipped})"
                ": what nobody received at the end is counted only from the published count"
            )
        if cut_off:
            losses.notes.append(
                f"deliveries were still arriving {args.drain:g} s after the load ended "
                "(--drain): what had not arrived by then is counted as lost"
            )
        return self.step_result(
            index,
            rate,
            offered,
            t0,
            losses,
            extra,
            peak,
            server_events,
            stages,
            _cpu_shares(
                wall,
                server=(cpu_server, cpu_server_after),
                clients=(cpu_clients, cpu_clients_after),
                loadtest=(cpu_self, cpu_self_after),
                machine=(cpu_machine, cpu_machine_after),
            ),
        )

    def progress_line(
        self, label: str, rate: int, offered: float, elapsed: float, peak: dict[str, float]
    ) -> str:
        clients = self.clients
        assert clients is not None
        seconds = self.args.seconds
        rate_now = clients.recent_rate()
        total = Histogram()
        for _, hist in clients.seconds.values():
            total.merge(hist)
        p99 = total.percentile(0.99)
        parts = [
            f"{label}{bar(elapsed / seconds)} {min(elapsed, seconds):5.1f}/{seconds:g}s"
            + (" draining" if elapsed > seconds else ""),
            f"{rate:,} ev/s → {rate_now:,.0f} deliv/s (offered {offered:,.0f})",
            f"p99 {p99:.1f} ms" if p99 is not None else "p99 –",
            f"lost {clients.gaps():,}",
        ]
        if clients.closed():
            parts.append(f"closed {clients.closed()}")
        if peak.get("rss_mb"):
            parts.append(f"rss {peak['rss_mb']:.0f} MB")
        return "  ".join(parts)

    async def tail_check(self, tallies: Sequence[Tally]) -> dict[int, int]:
        """The server's last sequence of projects where it is higher than any client saw."""
        assert self.control is not None
        highest: dict[int, int] = {}
        for t in tallies:
            if t.last > highest.get(t.project, 0):
                highest[t.project] = t.last
        projects = sorted(highest)
        if len(projects) > self.args.verify_limit:
            projects = sorted(random.Random(0).sample(projects, self.args.verify_limit))
        if not projects:
            return {}
        operations = [
            (TAIL, {"projectId": p, "afterSequence": highest[p], "limit": 1000}) for p in projects
        ]
        try:
            results = await self.control.execute_many(operations, timeout=300)
        except (RuntimeError, TimeoutError, WebSocketException) as error:
            self.tail_skipped = str(error)[:200]
            self.progress.note(f"tail check skipped: {error}")
            return {}
        server_last: dict[int, int] = {}
        for project, data in zip(projects, results, strict=True):
            events = (data or {}).get("executionEvents") or []
            if events:
                server_last[project] = max(e["sequence"] for e in events)
        return server_last

    def step_result(
        self,
        index: int,
        rate: int,
        offered: float,
        t0: float,
        losses: Any,
        extra: dict[str, Any],
        peak: dict[str, float],
        server_events: int | None,
        stages: dict[str, float],
        cpu: dict[str, float | None],
    ) -> dict[str, Any]:
        clients = self.clients
        assert clients is not None
        total = Histogram()
        timeline = []
        for sec in sorted(clients.seconds):
            count, hist = clients.seconds[sec]
            total.merge(hist)
            timeline.append({"t": sec, "deliveries": count, **hist.summary()})
        # From the first delivery to the last: a server slow to start (startLoad prepares
        # first) is not charged for it, one that falls behind is.
        receiving = extra["last_receipt"] - extra["first_receipt"] if extra["first_receipt"] else 0
        window = max(self.args.seconds, receiving)
        deliveries_per_s = losses.received / window if window else 0.0
        latency = total.summary()
        closed = extra["closed"]
        reasons = []
        if losses.lost:
            reasons.append(f"{losses.lost} lost")
        if losses.duplicates:
            reasons.append(f"{losses.duplicates} duplicated")
        if losses.out_of_order:
            reasons.append(f"{losses.out_of_order} out of order")
        if losses.errors:
            reasons.append(f"{losses.errors} subscription errors")
        if closed:
            reasons.append(f"{closed} connections closed")
        if latency["p99"] is None:
            reasons.append("nothing delivered")
        elif latency["p99"] > P99_LIMIT_MS:
            reasons.append(f"p99 {latency['p99']:.0f} ms > {P99_LIMIT_MS:.0f} ms")
        if deliveries_per_s < ACHIEVED_FRACTION * offered:
            reasons.append(f"{deliveries_per_s:,.0f} of {offered:,.0f} deliveries/s offered")
        return {
            "step": index,
            "rate": rate,
            "offered_deliveries_per_s": round(offered, 1),
            "deliveries_per_s": round(deliveries_per_s, 1),
            "deliveries": losses.received,
            "expected_deliveries": losses.expected,
            "events": losses.events,
            "server_events": server_events,
            "latency_ms": latency,
            "lost": losses.lost,
            "duplicates": losses.duplicates,
            "out_of_order": losses.out_of_order,
            "subscription_errors": losses.errors,
            "silent_subscriptions": losses.silent_subscriptions,
            "closed_connections": closed,
            "close_reasons": extra["close_reasons"],
            "protocol_errors": extra["protocol_errors"],
            "notes": losses.notes,
            "server_peak": {
                "rss_mb": _r(peak["rss_mb"]) or None,
                "threads": peak["threads"] or None,
            },
            "cpu": cpu,
            "stages": stages,
            "held": not reasons,
            "verdict": "held" if not reasons else "; ".join(reasons),
            "timeline": timeline,
        }

    def summary(self, report: dict[str, Any]) -> dict[str, Any]:
        steps = report["steps"]
        chosen = steps[-1]
        if self.args.sweep and report["sweep"]["held_step"] is not None:
            chosen = steps[report["sweep"]["held_step"]]
        keys = (
            "rate",
            "offered_deliveries_per_s",
            "deliveries_per_s",
            "deliveries",
            "expected_deliveries",
            "latency_ms",
            "lost",
            "duplicates",
            "out_of_order",
            "subscription_errors",
            "closed_connections",
            "held",
            "verdict",
        )
        return {k: chosen[k] for k in keys}

    # --- after the clients leave ----------------------------------------------------------

    async def linger(self, seconds: float) -> dict[str, Any]:
        server = self.server
        assert server is not None
        started = time.monotonic()
        first_actors = server.healthz().get("projectActors")
        if first_actors is None:  # the baseline has no actors to watch
            return {"note": "the server reports no project actors (/healthz projectActors)"}
        timeline = []
        near_zero_at = None
        threshold = max(2, int((first_actors or 0) * 0.01))
        while time.monotonic() - started < seconds:
            elapsed = time.monotonic() - started
            actors = server.healthz().get("projectActors")
            status = server.proc_status() or {}
            timeline.append({"t": round(elapsed, 1), "actors": actors, **status})
            self.progress.show(
                f"after the clients left: {elapsed:5.1f}s  project actors {actors}  "
                f"threads {status.get('threads', '?')}  rss {status.get('rss_mb', 0):.0f} MB"
            )
            if actors is not None and actors <= threshold:
                near_zero_at = elapsed
                break
            await asyncio.sleep(1.0)
        self.progress.done()
        last = timeline[-1] if timeline else {}
        return {
            "actors_at_leave": first_actors,
            "near_zero_threshold": threshold,
            "seconds_to_near_zero": _r(near_zero_at),
            "actors_end": last.get("actors"),
            "threads_end": last.get("threads"),
            "rss_mb_end": _r(last.get("rss_mb")),
            "timeline": timeline,
        }


def _cpu_percent(before: float | None, after: float | None, wall: float) -> float | None:
    if before is None or after is None or wall <= 0:
        return None
    return round((after - before) / wall * 100, 1)


def _cpu_shares(wall: float, **spans: tuple[float | None, float | None]) -> dict[str, Any]:
    """CPU used during a step, in % of one core: the server, the client processes, this
    process, the whole machine, and everything else on it (other work skews the figures)."""
    shares: dict[str, Any] = {
        f"{name}_percent": _cpu_percent(*span, wall) for name, span in spans.items()
    }
    known = [shares[k] for k in ("server_percent", "clients_percent", "loadtest_percent")]
    if shares["machine_percent"] is not None and all(v is not None for v in known):
        shares["other_percent"] = round(max(0.0, shares["machine_percent"] - sum(known)), 1)
    else:
        shares["other_percent"] = None
    shares["cores"] = os.cpu_count()
    return shares


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    import websockets

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "websockets": websockets.__version__,
        "kernel": platform.release(),
    }


# --- the report -----------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def format_report(report: dict[str, Any]) -> str:
    s = report["scenario"]
    server = report.get("server", {})
    clients = report.get("clients", {})
    lines = []
    title = f"loadtest {report['label']}".strip()
    lines.append(
        f"{title}: {s['connections']:,} connections, {s['projects']:,} projects, "
        f"{s['subscriptions']:,} subscriptions ({s['subscribers_per_project']:g}/project), "
        f"{s['seconds']:g} s per step, {s['client_procs']} client processes"
    )
    m = s["machine"]
    lines.append(
        f"machine: {m['nproc']} × {m['cpu']}, Python {m['python']}, websockets {m['websockets']}"
    )
    lines.append(
        f"server: {server.get('kind', s['server'])} (pid {server.get('pid')}), "
        f"prepareLoad {server.get('prepare_seconds')} s"
    )
    connect = clients.get("connect_ms", {})
    failures = sum(clients.get("connect_failures", {}).values())
    lines.append(
        f"connect: {clients.get('connections', 0):,} open, p50 {_ms(connect.get('p50'))} ms, "
        f"p99 {_ms(connect.get('p99'))} ms, max {_ms(connect.get('max'))} ms, "
        f"{failures} failed"
    )
    for reason, n in clients.get("connect_failures", {}).items():
        lines.append(f"  {n} × {reason}")
    lines.append("")
    header = (
        f"{'step':>4} {'ev/s':>7} {'offered/s':>10} {'deliv/s':>10} {'p50':>7} {'p90':>7} "
        f"{'p99':>7} {'max':>8} {'lost':>6} {'dup':>5} {'ooo':>5} {'srv cpu':>7} "
        f"{'cli cpu':>7} {'other':>6}  verdict"
    )
    lines.append(header)
    lines.append("-" * len(header))
    for step in report.get("steps", []):
        lat = step["latency_ms"]
        cpu = step["cpu"]
        lines.append(
            f"{step['step']:>4} {step['rate']:>7,} {step['offered_deliveries_per_s']:>10,.0f} "
            f"{step['deliveries_per_s']:>10,.0f} {_ms(lat['p50']):>7} {_ms(lat['p90']):>7} "
            f"{_ms(lat['p99']):>7} {_ms(lat['max']):>8} {step['lost']:>6,} "
            f"{step['duplicates']:>5,} {step['out_of_order']:>5,} "
            f"{_pct(cpu['server_percent']):>7} {_pct(cpu['clients_percent']):>7} "
            f"{_pct(cpu['other_percent']):>6}  {step['verdict']}"
        )
        if step.get("stages"):
            lines.append("      where the time goes: " + format_stages(step["stages"]))
        for note in step["notes"]:
            lines.append(f"      note: {note}")
        for reason, n in step["close_reasons"].items():
            lines.append(f"      {n} × {reason}")
        for error in step["protocol_errors"][:3]:
            lines.append(f"      error: {error}")
    lines.append(
        "(latency in ms from the event's timestamp to its receipt; cpu in % of one core: "
        "the server, the client processes, and other processes on the machine)"
    )
    noisy = [st["step"] for st in report.get("steps", []) if (st["cpu"]["other_percent"] or 0) > 20]
    if noisy:
        lines.append(
            f"warning: other processes used more than 20% of a core during step(s) {noisy}: "
            "the machine was not quiet, these figures are pessimistic"
        )
    lines.append("")
    rss = server.get("rss_mb", {})
    threads = server.get("threads", {})
    peak_rss = max((st["server_peak"]["rss_mb"] or 0 for st in report.get("steps", [])), default=0)
    peak_threads = max(
        (st["server_peak"]["threads"] or 0 for st in report.get("steps", [])), default=0
    )
    if rss:
        lines.append(
            f"server RSS MB: idle {rss.get('idle')}, subscribed {rss.get('ready')}, "
            f"peak {peak_rss or '–'}, end {rss.get('end', '–')} → "
            f"{server.get('kib_per_connection')} KiB per subscribed connection"
        )
        lines.append(
            f"server threads: idle {threads.get('idle')}, subscribed {threads.get('ready')}, "
            f"peak {peak_threads or '–'}, end {threads.get('end', '–')}; project actors "
            f"{server.get('project_actors_ready')} subscribed, "
            f"{server.get('project_actors_loaded')} after the load"
        )
    elif server.get("note"):
        lines.append(server["note"])
    if "sweep" in report:
        sw = report["sweep"]
        if sw["held_rate"] is None:
            lines.append(f"sweep: no rate held (first step: {sw['failed_because']})")
        else:
            lines.append(
                f"sweep: held up to {sw['held_rate']:,} events/s = "
                f"{sw['held_deliveries_per_s']:,.0f} deliveries/s; failed at "
                f"{sw['failed_rate'] or '–'} events/s ({sw['failed_because'] or 'not reached'})"
            )
    if "linger" in report and "note" in report["linger"]:
        lines.append(f"after the clients left: {report['linger']['note']}")
    elif "linger" in report:
        lg = report["linger"]
        if lg["seconds_to_near_zero"] is not None:
            when = f"near zero (≤ {lg['near_zero_threshold']}) after {lg['seconds_to_near_zero']} s"
        else:
            when = f"still {lg['actors_end']} after {lg['timeline'][-1]['t']} s"
        lines.append(
            f"after the clients left: project actors {lg['actors_at_leave']} → {when}; "
            f"threads {lg['threads_end']}, RSS {lg['rss_mb_end']} MB"
        )
    return "\n".join(lines)


STAGE_METRICS = (
    "planpulse_loadgen_persist_seconds_total",
    "planpulse_loadgen_publish_seconds_total",
    "planpulse_loadgen_changes_total",
    "planpulse_loadgen_batches_total",
    "planpulse_loadgen_max_lag_seconds",
    "planpulse_handover_latency_seconds_sum",
    "planpulse_handover_latency_seconds_count",
    "planpulse_dispatcher_bursts_total",
    "planpulse_dispatcher_burst_deliveries_total",
    "planpulse_dispatcher_wait_seconds_total",
    "planpulse_dispatcher_burst_seconds_total",
)


def stage_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The server's own stage timings over a step, per change (µs) and per delivery (ms).

    persist: StateStore's group commit per change; publish: bus + hub route per change;
    handover: a change's timestamp → its frames queued for the event loop (the Dispatcher;
    the project actor's render, once per event per selection, included), mean. Then the
    loop: the wait from a burst's wake-up to its run, and the burst itself (mean ms, and
    µs of wall clock per delivery); the client's latency minus these is the socket and the
    client. Empty for a server without these metrics (the baseline).
    """

    def delta(name: str) -> float | None:
        if name not in before or name not in after:
            return None
        return after[name] - before[name]

    changes = delta("planpulse_loadgen_changes_total")
    out: dict[str, float] = {}
    if changes:
        persist = delta("planpulse_loadgen_persist_seconds_total") or 0.0
        publish = delta("planpulse_loadgen_publish_seconds_total") or 0.0
        batches = delta("planpulse_loadgen_batches_total") or 0.0
        out["changes"] = changes
        out["persist_us_per_change"] = round(persist / changes * 1e6, 1)
        out["publish_us_per_change"] = round(publish / changes * 1e6, 1)
        out["changes_per_batch"] = round(changes / batches, 1) if batches else 0.0
        if "planpulse_loadgen_max_lag_seconds" in after:
            out["loadgen_max_lag_ms"] = round(after["planpulse_loadgen_max_lag_seconds"] * 1e3, 1)
    handed = delta("planpulse_handover_latency_seconds_count")
    if handed:
        total = delta("planpulse_handover_latency_seconds_sum") or 0.0
        out["handover_ms_mean"] = round(total / handed * 1e3, 2)
    bursts = delta("planpulse_dispatcher_bursts_total")
    if bursts:
        deliveries = delta("planpulse_dispatcher_burst_deliveries_total") or 0.0
        burst = delta("planpulse_dispatcher_burst_seconds_total") or 0.0
        out["loop_wait_ms_mean"] = round(
            (delta("planpulse_dispatcher_wait_seconds_total") or 0.0) / bursts * 1e3, 2
        )
        out["burst_ms_mean"] = round(burst / bursts * 1e3, 2)
        out["burst_deliveries_mean"] = round(deliveries / bursts, 1)
        out["burst_us_per_delivery"] = round(burst / deliveries * 1e6, 2) if deliveries else 0.0
    return out


def format_stages(stages: dict[str, float]) -> str:
    parts = []
    if "persist_us_per_change" in stages:
        parts.append(
            f"persist {stages['persist_us_per_change']:g} µs/change "
            f"({stages['changes_per_batch']:g}/batch), "
            f"publish+route {stages['publish_us_per_change']:g} µs/change"
        )
    if "handover_ms_mean" in stages:
        parts.append(f"timestamp → dispatcher {stages['handover_ms_mean']:g} ms mean")
    if "burst_ms_mean" in stages:
        parts.append(
            f"loop: wake-up wait {stages['loop_wait_ms_mean']:g} ms, burst "
            f"{stages['burst_ms_mean']:g} ms for {stages['burst_deliveries_mean']:g} deliveries "
            f"({stages['burst_us_per_delivery']:g} µs each)"
        )
    if "loadgen_max_lag_ms" in stages:
        parts.append(f"load-generator lag max {stages['loadgen_max_lag_ms']:g} ms")
    return "; ".join(parts)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


# --- entry points ---------------------------------------------------------------------------


# What ends a run with a message instead of a traceback (NodeUnavailable is a RuntimeError;
# WebSocketException: the control connection closed by the server).
FAILURES = (RuntimeError, OSError, TimeoutError, WebSocketException)


def _stop_on_sigterm() -> None:
    """SIGTERM ends a run as Ctrl-C does: the servers it started are stopped, not orphaned.
    (A run started in the background by a shell ignores SIGINT, so `kill PID` is the way.)"""

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (imported by a test): leave it
        signal.signal(signal.SIGTERM, interrupt)


def main(args: argparse.Namespace) -> int:
    """Run the load test described by `args` (see `add_arguments`); 0 if every step held
    (for a sweep: if at least one did), 1 otherwise."""
    if args.connections < 1 or args.projects < 1 or args.rate < 1 or args.seconds <= 0:
        print(
            "error: --connections, --projects, --rate and --seconds must be positive",
            file=sys.stderr,
        )
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib (pip install -e '.[dev]')", file=sys.stderr)
            return 2
    _stop_on_sigterm()
    if args.rates and args.sweep:
        print(
            "error: --rates or --sweep, not both: give the rates, or let the sweep find them",
            file=sys.stderr,
        )
        return 2
    _raise_nofile()
    if args.compare:
        if args.url or args.sweep:
            print(
                "error: --compare starts its servers itself: no --url, no --sweep", file=sys.stderr
            )
            return 2
        from bench.compare import compare

        return compare(args)
    test = LoadTest(args)
    try:
        report = asyncio.run(test.run())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FAILURES as error:
        test.progress.done()
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.plot:
        from bench.plot import plot_report

        plot_report(report, args.plot)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_report(report))
        if args.plot:
            print(f"plot: {args.plot}")
    if args.sweep:
        return 0 if report["sweep"]["held_rate"] is not None else 1
    return 0 if all(step["held"] for step in report["steps"]) else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="loadtest",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
