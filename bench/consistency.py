"""Do snapshot watchers agree with the event log while the plan is being edited? (issue 13)

Starts a gateway (`serve --no-executors`) and a worker on a fresh PostgreSQL database and
Redis, then, for `--seconds`: `--sources` data sources reprocessed continuously, a new
`snapshot: true` watcher every `--watch-every` s, a DataSourceNode naming an existing data
source added every `--add-every` s. When the runs have settled, every watcher's items are
compared with the log (`executionEvents`, paged) by bench/logcheck.py: right state at
each item's sequence, no sequence going down, nothing missed after the snapshot, current
on every node at the end.

    python -m bench.consistency                       # ~20 s; prints agreeing / total
    python -m bench.consistency --seconds 60 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.databases import drop_database, fresh_database
from bench.logcheck import NodeEvent, mismatch

ROOT = Path(__file__).resolve().parent.parent
WATCH = """subscription($p: Int!) { nodeExecutionStatusChanged(projectId: $p, snapshot: true) {
  nodeId sequence
  datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
} }"""
EVENTS = """query($p: Int!, $after: Int) { executionEvents(projectId: $p, afterSequence: $after,
  limit: 1000) { nodeId sequence
  datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
} }"""


class Socket:
    """One graphql-transport-ws connection: queries and mutations, or one subscription."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.items: list[NodeEvent] = []
        self.errors: list[Any] = []

    @classmethod
    async def open(cls, url: str) -> Socket:
        ws = await connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "connection_init"}).decode())
        ack = orjson.loads(await ws.recv())
        assert ack["type"] == "connection_ack", ack
        return cls(ws)

    async def execute(self, query: str, **variables: Any) -> Any:
        self.next_id += 1
        op = str(self.next_id)
        payload = {"query": query, "variables": variables}
        await self.ws.send(orjson.dumps({"id": op, "type": "subscribe", "payload": payload}))
        while True:
            message = orjson.loads(await self.ws.recv())
            if message.get("id") != op:
                continue
            if message["type"] == "next":
                if message["payload"].get("errors"):
                    raise RuntimeError(f"{query.split('(')[0]}: {message['payload']['errors']}")
                result = message["payload"]["data"]
            elif message["type"] == "complete":
                return result
            else:
                raise RuntimeError(f"operation failed: {message}")

    async def watch(self, project_id: int) -> None:
        payload = {"query": WATCH, "variables": {"p": project_id}}
        await self.ws.send(orjson.dumps({"id": "w", "type": "subscribe", "payload": payload}))
        async for raw in self.ws:
            message = orjson.loads(raw)
            if message["type"] == "next":
                event = message["payload"]["data"]["nodeExecutionStatusChanged"]
                self.items.append(
                    (event["sequence"], event["nodeId"], event["datasourceExecution"])
                )
            else:
                self.errors.append(message)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANPULSE_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args], env=env, stdout=out, stderr=out
        )


def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise SystemExit(f"the gateway is not healthy after 60 s:\n{log.read_text()}")


async def scenario(url: str, args: argparse.Namespace) -> dict[str, Any]:
    admin = await Socket.open(url)
    pid = (await admin.execute('mutation { createProject(input: {name: "consistency"}) { id } }'))[
        "createProject"
    ]["id"]
    sources = []
    for i in range(args.sources):
        made = await admin.execute(
            "mutation($i: CreateDataSourceInput!) { createDataSource(input: $i) { id } }",
            i={
                "projectId": pid,
                "name": f"source {i}",
                "filename": f"s{i}.csv",
                "fileFormat": "csv",
                "dataType": "nodes",
                "content": "id,label\n" + "".join(f"n{j},N{j}\n" for j in range(50)),
            },
        )
        sources.append(made["createDataSource"]["id"])
    chooser = random.Random(args.seed)
    watchers: list[Socket] = []
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()

    async def reprocess() -> None:
        while not stop.is_set():
            for source in sources:
                await admin.execute(
                    "mutation($i: Int!) { reprocessDataSource(id: $i) { id } }", i=source
                )
            await asyncio.sleep(args.reprocess_every)

    async def watch() -> None:
        while not stop.is_set():
            watcher = await Socket.open(url)
            watchers.append(watcher)
            tasks.append(asyncio.ensure_future(watcher.watch(pid)))
            await asyncio.sleep(args.watch_every)

    editor = await Socket.open(url)

    async def add_nodes() -> None:
        added = 0
        while not stop.is_set():
            await asyncio.sleep(args.add_every)
            added += 1
            await editor.execute(
                "mutation($p: Int!, $n: PlanDagNodeInput!) "
                "{ addPlanDagNode(projectId: $p, node: $n) { id } }",
                p=pid,
                n={
                    "id": f"added_{added}",
                    "nodeType": "DataSourceNode",
                    "config": {"dataSourceId": chooser.choice(sources)},
                },
            )

    loops = [asyncio.ensure_future(f()) for f in (reprocess, watch, add_nodes)]
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*loops)
    # Settled: nothing processing, and the log's last sequence quiet for a second.
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 1.0:
        states = await admin.execute(
            "query($p: Int!) { dataSources(projectId: $p) { executionState } }", p=pid
        )
        busy = any(s["executionState"] not in ("completed", "error") for s in states["dataSources"])
        log = await read_log(admin, pid)
        newest = log[-1][0] if log else 0
        if busy or newest != last:
            last, quiet_since = newest, time.monotonic()
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)  # the last frames on their way to the watchers
    log = await read_log(admin, pid)
    verdicts = [mismatch(log, w.items, snapshot=True) for w in watchers]
    for task in tasks:
        task.cancel()
    for socket in [admin, editor, *watchers]:
        await socket.ws.close()
    agreeing = sum(1 for v, w in zip(verdicts, watchers, strict=True) if v is None and not w.errors)
    return {
        "watchers": len(watchers),
        "agreeing": agreeing,
        "log_events": len(log),
        "last_sequence": last,
        "items_received": sum(len(w.items) for w in watchers),
        "disagreements": [v for v in verdicts if v][:10],
        "errors": [w.errors for w in watchers if w.errors][:5],
    }


async def read_log(socket: Socket, pid: int) -> list[NodeEvent]:
    log: list[NodeEvent] = []
    after = 0
    while True:
        page = (await socket.execute(EVENTS, p=pid, after=after))["executionEvents"]
        log += [(e["sequence"], e["nodeId"], e["datasourceExecution"]) for e in page]
        if len(page) < 1000:
            return log
        after = page[-1]["sequence"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=18.5)
    parser.add_argument("--sources", type=int, default=6)
    parser.add_argument("--watch-every", type=float, default=0.5)
    parser.add_argument("--add-every", type=float, default=2.0)
    parser.add_argument("--reprocess-every", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server where a fresh database is made (and dropped after)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    database_url, name = fresh_database(args.pg_admin_url, "planpulse_consistency")
    bus_url = f"{args.redis_url}?prefix=consistency{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="planpulse-consistency-"))
    port = free_port()
    common = ["--database-url", database_url, "--bus-url", bus_url]
    processes = []
    try:
        gateway_log = workdir / "gateway.log"
        gateway = start(["serve", "--no-executors", "--port", str(port), *common], gateway_log)
        processes.append(gateway)
        wait_healthy(port, gateway, gateway_log)  # it made the tables: the worker may start
        processes.append(start(["worker", *common], workdir / "worker.log"))
        report = asyncio.run(scenario(f"ws://127.0.0.1:{port}/graphql", args))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(20)
        drop_database(args.pg_admin_url, name)
    if args.json:
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        print(
            f"{report['agreeing']} of {report['watchers']} watchers agree with the log "
            f"({report['log_events']} node events, last sequence {report['last_sequence']}, "
            f"{report['items_received']} items received)"
        )
        for line in report["disagreements"]:
            print("  ", line)
    return 0 if report["agreeing"] == report["watchers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
