"""The baseline: what Python and `websockets` alone can push on this machine.

No GraphQL, no actors, no database: a hand-rolled slice of graphql-transport-ws
(connection_init/ack, ping/pong, subscribe/next/complete), the two load-generation mutations
recognised by a crude string match, and a generator that makes the same event JSON as
planpulse at the asked rate, round-robin over projects 1..N. Each event is serialised once per
project; every subscriber of that project whose subscription id is the same gets the very
same bytes. Frames due in one generator tick are written to each socket in one write.

The load-test client measures it exactly as it measures planpulse, in the same run: the gap
between the two is the cost of everything planpulse does that this does not.

    python bench/baseline_server.py --port 8799
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

SUBPROTOCOL = "graphql-transport-ws"
TICK = 0.002  # seconds between generator rounds
STATES = ("processing", "completed")

log = logging.getLogger("baseline")


class Baseline:
    def __init__(self) -> None:
        # project -> next-frame prefix -> connections subscribed with that prefix
        self.subscribers: dict[int, dict[bytes, set[ServerConnection]]] = defaultdict(
            lambda: defaultdict(set)
        )
        self.sequences: dict[int, int] = defaultdict(int)
        self.published = 0
        self.connections = 0
        self.generators: set[asyncio.Task[None]] = set()
        self._ts_second = -1
        self._ts_prefix = ""

    # --- HTTP -------------------------------------------------------------------------------

    def process_request(self, _conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            body = orjson.dumps({"status": "ok", "connections": self.connections})
            return _response(HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            text = (
                "# TYPE planpulse_bus_changes_received counter\n"
                f"planpulse_bus_changes_received_total {self.published}\n"
                f"planpulse_connections {self.connections}\n"
            )
            return _response(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4")
        return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    # --- WebSocket --------------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        if ws.subprotocol != SUBPROTOCOL:
            await ws.close(4406, "Subprotocol not acceptable")
            return
        self.connections += 1
        mine: dict[str, tuple[int, bytes]] = {}
        acked = False
        try:
            async for raw in ws:
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "connection_init":
                    acked = True
                    await ws.send('{"type":"connection_ack"}')
                elif kind == "ping":
                    await ws.send('{"type":"pong"}')
                elif kind == "subscribe" and acked:
                    await self.subscribe(ws, mine, message)
                elif kind == "complete":
                    self.unsubscribe(ws, mine, message.get("id"))
        except ConnectionClosed:
            pass
        finally:
            for op_id in list(mine):
                self.unsubscribe(ws, mine, op_id)
            self.connections -= 1

    async def subscribe(
        self, ws: ServerConnection, mine: dict[str, tuple[int, bytes]], message: dict[str, Any]
    ) -> None:
        op_id = message["id"]
        payload = message.get("payload") or {}
        query: str = payload.get("query", "")
        variables: dict[str, Any] = payload.get("variables") or {}
        prefix = b'{"id":' + orjson.dumps(op_id) + b',"type":"next","payload":'
        if "prepareLoad" in query:
            await self.answer(ws, prefix, op_id, {"prepareLoad": True})
        elif "startLoad" in query:
            task = asyncio.create_task(
                self.generate(
                    int(variables["projects"]),
                    int(variables["eventsPerSecond"]),
                    float(variables["seconds"]),
                )
            )
            self.generators.add(task)
            task.add_done_callback(self.generators.discard)
            await self.answer(ws, prefix, op_id, {"startLoad": True})
        elif "executionEvents" in query:
            project = int(variables["projectId"])
            after = int(variables.get("afterSequence") or 0)
            limit = int(variables.get("limit") or 100)
            top = min(self.sequences[project], after + limit)
            events = [self.event(project, s, "") for s in range(after + 1, top + 1)]
            await self.answer(ws, prefix, op_id, {"executionEvents": events})
        else:  # a subscription: projectId from the first integer variable
            project = next((v for v in variables.values() if isinstance(v, int)), None)
            if project is None:
                err = [{"message": "baseline: pass the project id as a variable"}]
                await ws.send(orjson.dumps({"id": op_id, "type": "error", "payload": err}))
                return
            mine[op_id] = (project, prefix)
            self.subscribers[project][prefix].add(ws)

    def unsubscribe(
        self, ws: ServerConnection, mine: dict[str, tuple[int, bytes]], op_id: Any
    ) -> None:
        entry = mine.pop(op_id, None)
        if entry is None:
            return
        project, prefix = entry
        by_prefix = self.subscribers.get(project)
        if by_prefix is not None:
            by_prefix[prefix].discard(ws)

    async def answer(self, ws: ServerConnection, prefix: bytes, op_id: str, data: Any) -> None:
        await ws.send(prefix + orjson.dumps({"data": data}) + b"}")
        await ws.send(orjson.dumps({"id": op_id, "type": "complete"}))

    # --- the generator ----------------------------------------------------------------------

    def timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._ts_second:
            self._ts_second = second
            self._ts_prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._ts_prefix}.{int((now - second) * 1000):03d}Z"

    def event(self, project: int, sequence: int, timestamp: str) -> dict[str, Any]:
        return {
            "projectId": project,
            "nodeId": f"load_{project}",
            "sequence": sequence,
            "timestamp": timestamp,
            "datasourceExecution": {"executionState": STATES[sequence % 2]},
        }

    async def generate(self, projects: int, rate: int, seconds: float) -> None:
        """`rate` events per second in total, round-robin over projects 1..`projects`."""
        total = round(rate * seconds)
        started = time.monotonic()
        sent = 0
        project = 0
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            pending: dict[ServerConnection, list[bytes]] = defaultdict(list)
            timestamp = self.timestamp()
            while sent < due:
                project = project % projects + 1
                self.sequences[project] += 1
                self.published += 1
                sent += 1
                event = self.event(project, self.sequences[project], timestamp)
                payload = orjson.dumps({"data": {"nodeExecutionStatusChanged": event}})
                for prefix, conns in self.subscribers.get(project, {}).items():
                    frame = prefix + payload + b"}"  # one frame for every such subscriber
                    for ws in conns:
                        pending[ws].append(frame)
            for ws, frames in pending.items():
                if ws.protocol.state is not State.OPEN:
                    continue
                for frame in frames:
                    ws.protocol.send_text(frame)
                ws.send_data()  # one write per socket per round (as websockets' broadcast)
            await asyncio.sleep(TICK)


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


async def main(host: str, port: int) -> None:
    baseline = Baseline()
    async with serve(
        baseline.handle,
        host,
        port,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        process_request=baseline.process_request,
        compression=None,
        max_size=1_000_000,
    ) as server:
        log.warning("baseline listening on ws://%s:%d/graphql", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(main(args.host, args.port))
