"""Issue 16 item 3: overload that loses nothing, measured.

One planpulse server (`run.py serve --enable-loadgen`, SQLite) and three phases, each
`--seconds` long:

A. healthy: bench/loadtest.py's subscribers (`--connections`, `--projects`,
   `--subscriptions`) at `--rate` events/s, which this machine sustains;
B. the same, plus `--slow` lagging readers of one plan's `planDagChanged` offered twice what
   they read (`--slow-reads` frames/s each; a writer makes `2 × --slow-reads` plan edits/s
   with `batchMovePlanDagNodes`). Plan edits never coalesce, so a lagging reader fills its
   outbox and is shed: a SUBSCRIBER_TOO_SLOW `error` naming `afterSequence`, after which it
   resubscribes on the same connection from there;
C. as B with the healthy load at `2 × --rate`: the server as a whole past its rate.

Reported per phase: the healthy subscribers' p50/p99 and losses (from bench/loadtest.py,
run as a subprocess against this server), the server's peak and final RSS (sampled every
0.5 s from /proc), the peak delivery lag and queue depths (`/metrics`), subscriptions shed;
and, for every lagging reader, whether what it got over all its resumes equals the event
log after its start (bench/logcheck.py against the server's database). The point: RSS
stays bounded, the healthy p99 of B is A's, and every lagging reader's view is the log's.

    python -m bench.overload --rate 1000 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, text
from websockets.asyncio.client import ClientConnection, connect

from bench.databases import drop_database, fresh_database
from bench.loadtest import PREPARE, Control, ServerUnderTest
from bench.logcheck import NodeEvent, mismatch

WATCH = (
    "subscription($p: Int!, $after: Int) { planDagChanged(projectId: $p, afterSequence: $after)"
    " { sequence change { ... on PlanDagNodeChange { node { id config } } } } }"
)
CREATE = "mutation($n: String!) { createProject(input: {name: $n}) { id } }"
ADD_NODE = (
    "mutation($p: Int!, $n: PlanDagNodeInput!) { addPlanDagNode(projectId: $p, node: $n) { id } }"
)
MOVE = (
    "mutation($p: Int!, $m: [NodePositionInput!]!) "
    "{ batchMovePlanDagNodes(projectId: $p, nodePositions: $m) { id } }"
)
GAUGES = (
    "planpulse_delivery_lag_seconds",
    "planpulse_actor_inbox_max_messages",
    "planpulse_dispatcher_queue_deliveries",
    "planpulse_outbox_backlog_frames",
)
COUNTERS = (
    "planpulse_subscriptions_shed_total",
    "planpulse_frames_coalesced_total",
    "planpulse_actor_inbox_left_out_total",
    "planpulse_slow_consumers_closed_total",
)


@dataclass
class SlowReader:
    """One lagging reader: reads `reads` frames/s; on being shed, resumes from the error's
    afterSequence on the same connection."""

    url: str
    project_id: int
    after: int
    reads: float
    sequences: list[int] = field(default_factory=list)
    sheds: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event, last: asyncio.Future[int]) -> None:
        """Slow until `stop`; then at full speed until the run's `last` sequence arrived."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(_host_port(self.url))
        # No client pings: a reader this far behind gets the server's pong only after the
        # frames before it, and would time out and close the socket itself.
        ws = await connect(
            self.url,
            sock=sock,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            max_queue=16,
            ping_interval=None,
        )
        try:
            await ws.send('{"type":"connection_init"}')
            assert orjson.loads(await ws.recv())["type"] == "connection_ack"
            after = self.after
            op = 0
            while True:
                op += 1
                await _subscribe(ws, f"s{op}", self.project_id, after)
                resume = await self._read(ws, f"s{op}", stop, last)
                if resume is None:
                    return
                self.sheds += 1
                after = resume
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _read(
        self, ws: ClientConnection, op: str, stop: asyncio.Event, last: asyncio.Future[int]
    ) -> int | None:
        """Frames until shed (the afterSequence to resume from) or done (None)."""
        batch = 10
        while not (last.done() and self.sequences and self.sequences[-1] >= last.result()):
            for _ in range(batch):
                try:
                    message = orjson.loads(await asyncio.wait_for(ws.recv(), 1.0))
                except TimeoutError:
                    break
                if message.get("type") == "ping":
                    await ws.send('{"type":"pong"}')
                    continue
                if message.get("id") != op:
                    continue
                if message["type"] == "next":
                    self.sequences.append(message["payload"]["data"]["planDagChanged"]["sequence"])
                elif message["type"] == "error":
                    error = message["payload"][0]
                    if error.get("extensions", {}).get("code") != "SUBSCRIBER_TOO_SLOW":
                        self.errors.append(error.get("message", ""))
                        return None
                    return int(error["extensions"]["afterSequence"])
            if not stop.is_set():
                await asyncio.sleep(batch / self.reads)
        return None


async def _subscribe(ws: ClientConnection, op: str, pid: int, after: int) -> None:
    payload = {"query": WATCH, "variables": {"p": pid, "after": after}}
    await ws.send(orjson.dumps({"id": op, "type": "subscribe", "payload": payload}).decode())


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


async def write_plan_edits(
    control: Control, pid: int, nodes: list[str], rate: float, stop: asyncio.Event
) -> float:
    """`rate` plan edits a second (batches of moves, each a logged edit) until stopped;
    returns the rate achieved."""
    per_batch = max(1, int(rate / 4))  # a few calls a second: each one's latency is not the pace
    edits = 0
    started = time.monotonic()
    while not stop.is_set():
        moves = [
            {"nodeId": nodes[(edits + i) % len(nodes)], "position": {"x": edits + i, "y": 0.0}}
            for i in range(per_batch)
        ]
        await control.execute(MOVE, {"p": pid, "m": moves})
        edits += per_batch
        ahead = edits / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    return edits / (time.monotonic() - started)


def scrape(server: ServerUnderTest) -> dict[str, float]:
    with urllib.request.urlopen(server.http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES or name in COUNTERS:
            values[name] = float(value)
    return values


async def sample(server: ServerUnderTest, stop: asyncio.Event, into: dict[str, Any]) -> None:
    """Peak RSS and gauges every 0.5 s while the phase runs."""
    while not stop.is_set():
        status = server.proc_status() or {}
        rss = status.get("rss_mb", 0.0)
        into["rss_mb_peak"] = max(into.get("rss_mb_peak", 0.0), rss)
        into.setdefault("rss_mb_series", []).append(round(rss, 1))
        with contextlib.suppress(OSError):
            for name, value in (await asyncio.to_thread(scrape, server)).items():
                if name in GAUGES:
                    key = name.removeprefix("planpulse_") + "_peak"
                    into[key] = max(into.get(key, 0.0), value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def loadtest(server: ServerUnderTest, args: argparse.Namespace, rate: int) -> dict[str, Any]:
    """bench/loadtest.py against this server: the healthy subscribers' view."""
    command = [
        sys.executable, "-m", "bench.loadtest", "--url", server.url,
        "--server-pid", str(server.pid), "--connections", str(args.connections),
        "--projects", str(args.projects), "--subscriptions", str(args.subscriptions),
        "--rate", str(rate), "--seconds", str(args.seconds), "--json", "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if not done.stdout.strip():
        raise RuntimeError(f"loadtest failed:\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout)["summary"]
    latency = summary["latency_ms"]
    return {
        "rate": rate,
        "deliveries_per_s": summary["deliveries_per_s"],
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "lost": summary["lost"],
        "duplicates": summary["duplicates"],
        "out_of_order": summary["out_of_order"],
        "held": summary["held"],
    }


def read_log(engine: Engine, pid: int, after: int) -> list[NodeEvent]:
    """The project's log after `after`, from the server's database."""
    with engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT sequence FROM execution_events WHERE project_id = :p AND sequence > :a "
                "ORDER BY sequence"
            ),
            {"p": pid, "a": after},
        ).all()
    return [(sequence, "plan", None) for (sequence,) in rows]


def _last_sequence(engine: Engine, pid: int) -> int:
    with engine.connect() as db:
        row = db.execute(
            text("SELECT last_sequence FROM projects WHERE id = :p"), {"p": pid}
        ).first()
    return int(row[0]) if row else 0


async def phase(
    name: str,
    server: ServerUnderTest,
    control: Control,
    args: argparse.Namespace,
    rate: int,
    plan: tuple[int, list[str], int],
) -> dict[str, Any]:
    result: dict[str, Any] = {"phase": name}
    stop = asyncio.Event()
    before = await asyncio.to_thread(scrape, server)
    sampler = asyncio.ensure_future(sample(server, stop, result))
    readers: list[SlowReader] = []
    tasks: list[asyncio.Future[Any]] = []
    pid, nodes, slow = plan
    start = _last_sequence(server.engine, pid)  # type: ignore[attr-defined]
    readers = [SlowReader(server.url, pid, start, args.slow_reads) for _ in range(slow)]
    last: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    tasks = [asyncio.ensure_future(r.run(stop, last)) for r in readers]
    writing = asyncio.ensure_future(
        write_plan_edits(control, pid, nodes, 2 * args.slow_reads, stop)
    )
    result["healthy"] = await asyncio.to_thread(loadtest, server, args, rate)
    stop.set()
    result["plan_edits_per_s"] = round(await writing, 1)
    result["slow_reads_per_s"] = args.slow_reads
    last.set_result(_last_sequence(server.engine, pid))  # type: ignore[attr-defined]
    ended: list[Any] = []
    with contextlib.suppress(TimeoutError):
        ended = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
    await sampler
    if readers:
        log = read_log(server.engine, pid, readers[0].after)  # type: ignore[attr-defined]
        verdicts = [mismatch(log, [(s, "plan", None) for s in r.sequences], after=r.after)
                    for r in readers]  # fmt: skip
        result["slow"] = {
            "readers": len(readers),
            "sheds": [r.sheds for r in readers],
            "equal_to_log": sum(v is None for v in verdicts),
            "mismatches": [v for v in verdicts if v][:3],
            "errors": ([e for r in readers for e in r.errors] + [repr(e) for e in ended if e])[:3],
            "log_events": len(log),
        }
    after = await asyncio.to_thread(scrape, server)
    result["counts"] = {
        k.removeprefix("planpulse_"): after.get(k, 0) - before.get(k, 0) for k in COUNTERS
    }
    result["rss_mb_end"] = round((server.proc_status() or {}).get("rss_mb", 0.0), 1)
    series = result.pop("rss_mb_series", [])
    result["rss_mb_last_third_max"] = max(series[len(series) * 2 // 3 :] or [0])
    result["rss_mb_every_10s"] = series[::20]  # sampled every 0.5 s
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    database_url, pg_name = None, None
    if args.postgres:
        database_url, pg_name = fresh_database(args.postgres, "planpulse_overload")
    start_args = argparse.Namespace(server="planpulse", database_url=database_url, server_arg=[])
    server = await asyncio.to_thread(ServerUnderTest.start, start_args)
    assert server.workdir is not None
    url = database_url or f"sqlite:///{os.path.join(server.workdir, 'loadtest.db')}"
    server.engine = create_engine(url)  # type: ignore[attr-defined]
    report: dict[str, Any] = {"args": vars(args), "server_command": server.command}
    try:
        control = await Control.open(server.url, None)
        await control.execute(PREPARE, {"projects": args.projects}, timeout=1800)
        pid = (await control.execute(CREATE, {"n": "overload"}))["createProject"]["id"]
        nodes = [f"n{i}" for i in range(8)]
        for node in nodes:
            blob = "x" * args.frame_bytes  # each edit's frame carries it: buffers fill
            spec = {"id": node, "nodeType": "GraphNode", "config": {"note": blob}}
            await control.execute(ADD_NODE, {"p": pid, "n": spec})
        report["idle_rss_mb"] = (server.proc_status() or {}).get("rss_mb")
        phases = [
            ("A healthy at rate, plan edits, no lagging reader", args.rate, 0),
            ("B as A + lagging readers offered 2x their rate", args.rate, args.slow),
            ("C as B, healthy at 2x rate", 2 * args.rate, args.slow),
        ]
        report["phases"] = []
        for name, rate, slow in phases:
            print(f"phase {name} …", file=sys.stderr)
            plan = (pid, nodes, slow)
            report["phases"].append(await phase(name, server, control, args, rate, plan))
        await control.close()
    finally:
        await asyncio.to_thread(server.stop)
        server.engine.dispose()  # type: ignore[attr-defined]
        if pg_name is not None:
            drop_database(args.postgres, pg_name)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"idle RSS {report['idle_rss_mb']:.0f} MB"]
    for p in report["phases"]:
        h = p["healthy"]
        lines.append(
            f"{p['phase']}: healthy rate {h['rate']}/s, {h['deliveries_per_s']:,.0f} deliveries/s, "
            f"p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, lost {h['lost']}, dup "
            f"{h['duplicates']}, ooo {h['out_of_order']}; RSS peak {p['rss_mb_peak']:.0f} MB, "
            f"end {p['rss_mb_end']:.0f} MB; lag peak {p.get('delivery_lag_seconds_peak', 0):.2f}"
            f" s; outbox backlog peak {p.get('outbox_backlog_frames_peak', 0):.0f} frames; "
            f"counts {p['counts']}"
        )
        lines.append(
            f"    plan edits {p['plan_edits_per_s']}/s, each lagging reader reads "
            f"{p['slow_reads_per_s']}/s"
        )
        if "slow" in p:
            s = p["slow"]
            lines.append(
                f"    lagging readers: {s['readers']}, sheds "
                f"{s['sheds']}, equal to the log: {s['equal_to_log']}/{s['readers']} "
                f"({s['log_events']} events) {s['mismatches'] or ''} {s['errors'] or ''}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="sustainable events/s")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--subscriptions", type=int, default=200)
    parser.add_argument("--slow", type=int, default=4, help="lagging readers")
    parser.add_argument("--slow-reads", type=float, default=100.0, help="frames/s each reads")
    parser.add_argument("--frame-bytes", type=int, default=2000, help="a plan edit's frame")
    parser.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        help="run the server on a fresh PostgreSQL database made there (and dropped after), "
        "e.g. postgresql://postgres@127.0.0.1:5432/test; default: SQLite",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() if args.json
          else format_report(report))  # fmt: skip
    slow = [p["slow"] for p in report["phases"] if "slow" in p]
    return 0 if all(s["equal_to_log"] == s["readers"] for s in slow) else 1


if __name__ == "__main__":
    sys.exit(main())
