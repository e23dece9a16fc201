"""Clients that behave as a careful editor does when things fail: the fault suite's eyes.

`ResumingWatcher` subscribes to a project's `nodeExecutionStatusChanged` and, whenever the
subscription ends (`complete`, `error`) or its socket drops, subscribes again with
`afterSequence` set to the last sequence it holds; when its gateway is gone it moves to
the next one of its list. It records every event with its arrival time, so that what it
got can be compared with the event log (`compare`) and the time to recover measured.

It resumes after the highest sequence it holds. A change that names several nodes gives
each its event with one sequence: a socket lost between those events would cost the
rest of them on resume; the fault suite's plans name each data source once.

It resumes on every *visible* end. A subscription that goes silent without an end is not
resumed: that is a fault of the server, and the suite must show it, not paper over it.

`GraphQLSession` is a small graphql-transport-ws client for queries and mutations that
fails over between gateways too (the traffic of the fault suite).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "graphql-transport-ws"
WATCH = (
    "subscription($p: Int!, $after: Int) { nodeExecutionStatusChanged(projectId: $p, "
    "afterSequence: $after) { nodeId sequence } }"
)
EVENTS = (
    "query($p: Int!, $after: Int, $limit: Int) { executionEvents(projectId: $p, "
    "afterSequence: $after, limit: $limit) { nodeId sequence } }"
)
EVENTS_PAGE = 1000


class GraphQLError(Exception):
    """The server answered an operation with GraphQL errors."""


async def _open(url: str, timeout: float) -> ClientConnection:
    ws = await asyncio.wait_for(
        connect(url, subprotocols=[SUBPROTOCOL], open_timeout=timeout, max_size=None),  # type: ignore[list-item]
        timeout,
    )
    await ws.send(orjson.dumps({"type": "connection_init", "payload": {}}).decode())
    while True:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message.get("type") == "connection_ack":
            return ws
        if message.get("type") == "ping":
            await ws.send('{"type":"pong"}')


class GraphQLSession:
    """Queries and mutations over one socket, reopened on the next gateway when it drops."""

    def __init__(self, urls: Sequence[str], timeout: float = 5.0) -> None:
        self.urls = list(urls)
        self.timeout = timeout
        self._ws: ClientConnection | None = None
        self._turn = 0
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        """The `data` of one operation; GraphQLError for errors; OSError/ConnectionClosed
        and TimeoutError when no gateway could be reached (the socket is then dropped)."""
        async with self._lock:
            ws = await self._connection()
            op = str(next(self._ids))
            payload = {"query": query, "variables": variables}
            try:
                frame = {"id": op, "type": "subscribe", "payload": payload}
                await ws.send(orjson.dumps(frame).decode())
                data: dict[str, Any] | None = None
                while True:
                    raw = await asyncio.wait_for(ws.recv(), self.timeout)
                    message = orjson.loads(raw)
                    kind = message.get("type")
                    if kind == "ping":
                        await ws.send('{"type":"pong"}')
                    elif message.get("id") != op:
                        continue
                    elif kind == "next":
                        result = message["payload"]
                        if result.get("errors"):
                            raise GraphQLError(result["errors"][0].get("message", "error"))
                        data = result.get("data") or {}
                    elif kind == "error":
                        raise GraphQLError(message["payload"][0].get("message", "error"))
                    elif kind == "complete":
                        return data or {}
            except (ConnectionClosed, OSError, TimeoutError):
                await self._drop()
                raise

    async def _connection(self) -> ClientConnection:
        if self._ws is not None:
            return self._ws
        error: Exception | None = None
        for _ in range(len(self.urls)):
            url = self.urls[self._turn % len(self.urls)]
            try:
                self._ws = await _open(url, self.timeout)
                return self._ws
            except (OSError, TimeoutError, ConnectionClosed) as failed:
                error = failed
                self._turn += 1
        assert error is not None
        raise error

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        self._turn += 1  # try the next gateway first: this one may be gone
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def close(self) -> None:
        await self._drop()

    async def events(self, project_id: int, after: int = 0) -> list[tuple[int, str]]:
        """The project's event log as (sequence, nodeId), through `executionEvents`."""
        events: list[tuple[int, str]] = []
        cursor = after
        while True:
            data = await self.execute(EVENTS, p=project_id, after=cursor, limit=EVENTS_PAGE)
            page = [(e["sequence"], e["nodeId"]) for e in data["executionEvents"]]
            if not page:
                return events
            events.extend(page)
            cursor = page[-1][0]


@dataclass
class Comparison:
    """One watcher's events against the log, over sequences (lo, hi]."""

    expected: int
    delivered: int
    missing: int
    duplicates: int
    out_of_order: int
    unexpected: int  # events the log does not have (never should be)


@dataclass
class ResumingWatcher:
    """One subscription that resumes with afterSequence after every visible end."""

    urls: list[str]
    project_id: int
    after: int = 0  # where it starts: it has "seen" everything up to here
    name: str = "watcher"
    received: list[tuple[float, int, str]] = field(default_factory=list)  # (t, seq, node)
    last_sequence: int = 0
    resumes: int = 0  # subscriptions after the first
    moves: int = 0  # times it went to another gateway
    errors: list[str] = field(default_factory=list)  # `error` payloads received
    url: str = ""
    connected: bool = False
    subscribed_at: float | None = None  # when its first subscribe was sent (monotonic)
    _turn: int = 0
    _task: asyncio.Task[None] | None = None
    _ws: ClientConnection | None = None

    def __post_init__(self) -> None:
        self.last_sequence = self.after
        self.url = self.urls[0]

    def start(self) -> ResumingWatcher:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2)

    def first_event_after(self, moment: float) -> float | None:
        """Arrival time of the first event received after `moment` (monotonic)."""
        for arrived, _sequence, _node in self.received:
            if arrived > moment:
                return arrived
        return None

    def compare(self, log: Sequence[tuple[int, str]], lo: int, hi: int) -> Comparison:
        """What this watcher got of the log's events with lo < sequence <= hi."""
        lo = max(lo, self.after)
        expected = {(s, n) for s, n in log if lo < s <= hi}
        got = [(s, n) for _t, s, n in self.received if lo < s <= hi]
        seen: set[tuple[int, str]] = set()
        duplicates = out_of_order = 0
        highest = lo
        for event in got:
            if event in seen:
                duplicates += 1
                continue
            if event[0] < highest:
                out_of_order += 1
            seen.add(event)
            highest = max(highest, event[0])
        return Comparison(
            expected=len(expected),
            delivered=len(got),
            missing=len(expected - seen),
            duplicates=duplicates,
            out_of_order=out_of_order,
            unexpected=len(seen - expected),
        )

    async def _run(self) -> None:
        delay = 0.05
        first = True
        while True:
            try:
                self._ws = await _open(self.url, 5.0)
            except (OSError, TimeoutError, ConnectionClosed):
                self._next_gateway()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self.connected = True
            try:
                while True:  # subscriptions on this socket, one after the other
                    if not first:
                        self.resumes += 1
                    first = False
                    ended = await self._subscription(self._ws)
                    if ended == "error":
                        await asyncio.sleep(0.2)  # e.g. the database is down: not a hot loop
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            finally:
                self.connected = False
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
            await asyncio.sleep(0.05)

    def _next_gateway(self) -> None:
        if len(self.urls) > 1:
            self._turn += 1
            self.url = self.urls[self._turn % len(self.urls)]
            self.moves += 1

    async def _subscription(self, ws: ClientConnection) -> str:
        """One subscription, to its end: "complete" or "error"; raises if the socket drops."""
        op = f"w{self.resumes}"
        variables = {"p": self.project_id, "after": self.last_sequence}
        payload = {"query": WATCH, "variables": variables}
        await ws.send(orjson.dumps({"id": op, "type": "subscribe", "payload": payload}).decode())
        now = time.monotonic
        if self.subscribed_at is None:
            self.subscribed_at = now()
        while True:
            message = orjson.loads(await ws.recv())
            kind = message.get("type")
            if kind == "ping":
                await ws.send('{"type":"pong"}')
                continue
            if message.get("id") != op:
                continue
            if kind == "next":
                result = message["payload"]
                if result.get("errors"):
                    self.errors.append(result["errors"][0].get("message", ""))
                    continue
                event = result["data"]["nodeExecutionStatusChanged"]
                sequence = event["sequence"]
                self.received.append((now(), sequence, event["nodeId"]))
                if sequence > self.last_sequence:
                    self.last_sequence = sequence
            elif kind == "error":
                self.errors.append(str(message.get("payload")))
                return "error"
            elif kind == "complete":
                return "complete"
