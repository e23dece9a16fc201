"""A load-test client process: many graphql-transport-ws sockets, one asyncio loop.

At tens of thousands of deliveries per second the client, not the server, is what usually
runs out of CPU, so the receive path is kept lean. `websockets` does the opening handshake
and frames what we send (masked, as a client must), through its Sans-I/O `ClientProtocol`;
incoming frames (unmasked, from the server) are cut out of the byte stream here with a few
slices, every frame of one read is stamped with that read's arrival time, and each `next` is
decoded with one `orjson.loads`. No task, future or queue per message.

The parent process (`bench.loadtest`) gives each client process its share of the
connections and talks to it over a pipe:

    parent -> client   ("start", step, t0)   a load step begins; t0 is its wall-clock origin
                       ("collect", step)     send the step's per-subscription tallies
                       ("finish",)           close every socket and exit
    client -> parent   ("ready", info)       every socket open, acked and subscribed
                       ("tick", step, seconds, live)   per-second counts and histograms
                       ("started", step)     reset done: frames from now on count
                       ("tallies", step, [Tally, ...], extra)
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import math
import os
import resource
import time
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from bench.stats import BUCKETS, LOWEST_MS, PER_DECADE, Tally

SUBPROTOCOL = Subprotocol("graphql-transport-ws")
SUBSCRIPTION = (
    "subscription($p: Int!) { nodeExecutionStatusChanged(projectId: $p) "
    "{ projectId nodeId sequence timestamp datasourceExecution { executionState } } }"
)
MAX_GAP_TRACKED = 100_000  # sequences remembered per gap (to tell late from lost)
TICK_SECONDS = 0.5

_loads = orjson.loads
_log10 = math.log10
_SCALE = 1000.0 / LOWEST_MS  # seconds -> multiples of the lowest bucket


class Subscription:
    __slots__ = (
        "op_id",
        "project",
        "first",
        "last",
        "received",
        "dups",
        "ooo",
        "missing",
        "errors",
    )

    def __init__(self, op_id: str, project: int) -> None:
        self.op_id = op_id
        self.project = project
        self.reset()

    def reset(self) -> None:
        self.first = 0
        self.last = 0
        self.received = 0
        self.dups = 0
        self.ooo = 0
        self.missing: set[int] | None = None
        self.errors = 0

    def tally(self) -> Tally:
        return Tally(
            self.project,
            self.first,
            self.last,
            self.received,
            self.dups,
            self.ooo,
            len(self.missing) if self.missing else 0,
            self.errors,
        )


class SecondStats:
    """One second of deliveries seen by this process: count, histogram, max."""

    __slots__ = ("count", "hist", "max_ms")

    def __init__(self) -> None:
        self.count = 0
        self.hist = [0] * BUCKETS
        self.max_ms = 0.0

    def sparse(self) -> tuple[int, dict[int, int], float]:
        return self.count, {i: c for i, c in enumerate(self.hist) if c}, self.max_ms


class TimestampParser:
    """RFC 3339 UTC with milliseconds -> epoch seconds, the date-and-time part cached."""

    def __init__(self) -> None:
        self._seconds: dict[str, int] = {}

    def __call__(self, ts: str) -> float:
        if len(ts) == 24 and ts[19] == "." and ts[23] == "Z":
            head = ts[:19]
            base = self._seconds.get(head)
            if base is None:
                if len(self._seconds) > 4096:
                    self._seconds.clear()
                base = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
                self._seconds[head] = base
            return base + int(ts[20:23]) / 1000.0
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class ClientSocket(asyncio.Protocol):
    """One WebSocket connection speaking graphql-transport-ws."""

    def __init__(self, worker: Worker, url: str, subscriptions: Sequence[Subscription]) -> None:
        self.worker = worker
        self.ws = ClientProtocol(parse_uri(url), subprotocols=[SUBPROTOCOL], max_size=None)
        self.subscriptions = {s.op_id: s for s in subscriptions}
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.buffer = b""
        self.fragments: list[bytes] = []
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = loop.create_future()
        self.acked: asyncio.Future[None] = loop.create_future()
        self.pong: asyncio.Future[None] | None = None
        self.closed = False
        self.close_reason = ""

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.close_reason:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed"
        for future in (self.handshake, self.acked, self.pong):
            if future is not None and not future.done():
                future.set_exception(ConnectionError(self.close_reason))
        self.worker.socket_closed(self)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self._handshake_data(data)
            return
        now = time.time()
        buffer = self.buffer + data if self.buffer else data
        size = len(buffer)
        pos = 0
        texts = []
        while size - pos >= 2:
            b0 = buffer[pos]
            length = buffer[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > size:
                break
            opcode = b0 & 0x0F
            payload = buffer[pos + header : end]
            pos = end
            if opcode == 1 and b0 & 0x80:
                texts.append(payload)
            else:
                self._other_frame(b0 & 0x80, opcode, payload, texts)
        self.buffer = buffer[pos:] if pos < size else b""
        if texts:
            self.worker.on_messages(self, texts, now)

    # --- frames other than a whole text message -------------------------------------------

    def _other_frame(self, fin: int, opcode: int, payload: bytes, texts: list[bytes]) -> None:
        if opcode in (1, 2):  # first fragment of a message
            self.fragments = [payload]
        elif opcode == 0:  # continuation
            self.fragments.append(payload)
            if fin:
                texts.append(b"".join(self.fragments))
                self.fragments = []
        elif opcode == 9:  # ping: answer as RFC 6455 requires, or the server closes us
            self.ws.send_pong(payload)
            self._flush()
        elif opcode == 8:  # close
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            reason = payload[2:].decode("utf-8", "replace")
            self.close_reason = f"closed by the server: {code} {reason}".strip()
            with contextlib.suppress(Exception):
                self.ws.send_close(code if code != 1005 else 1000)
                self._flush()
            if self.transport is not None:
                self.transport.close()

    def _handshake_data(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None or self.ws.state is not State.OPEN:
                    error = self.ws.handshake_exc or ConnectionError("handshake failed")
                    self.close_reason = f"handshake: {error}"
                    if not self.handshake.done():
                        self.handshake.set_exception(ConnectionError(self.close_reason))
                    if self.transport is not None:
                        self.transport.close()
                    return
                self.open = True
                if not self.handshake.done():
                    self.handshake.set_result(None)
            else:  # a frame right behind the response (the server spoke first): keep it
                if getattr(event, "opcode", None) is not None and event.opcode.value == 1:
                    self.worker.on_messages(self, [bytes(event.data)], time.time())

    # --- sending --------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            data = self.ws.data_to_send()
            if data:
                self.transport.write(b"".join(data))

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send_text(orjson.dumps(message))
        self._flush()

    async def ping(self) -> None:
        """graphql-transport-ws ping/pong: the server has handled all we sent before."""
        self.pong = asyncio.get_running_loop().create_future()
        self.send({"type": "ping"})
        await self.pong

    def close(self) -> None:
        if self.closed or self.transport is None:
            return
        with contextlib.suppress(Exception):
            self.ws.send_close(1000, "load test done")
            self._flush()
        self.transport.close()


class Worker:
    """One client process: its sockets, its subscriptions, its per-second statistics."""

    def __init__(
        self,
        pipe: Connection,
        url: str,
        token: str | None,
        plan: Sequence[tuple[int, Sequence[tuple[str, int]]]],
        connect_concurrency: int,
    ) -> None:
        self.pipe = pipe
        self.url = url
        self.token = token
        self.plan = plan
        self.connect_concurrency = connect_concurrency
        self.sockets: list[ClientSocket] = []
        self.parse_ts = TimestampParser()
        self.step = -1
        self.t0 = 0.0
        self.seconds: dict[int, SecondStats] = {}
        self.cur_sec = -(10**9)
        self.cur: SecondStats = SecondStats()
        self.gaps_live = 0
        self.delivered = 0
        self.first_receipt = 0.0
        self.last_receipt = 0.0
        self.closed_sockets = 0
        self.close_reasons: dict[str, int] = {}
        self.protocol_errors: list[str] = []
        self.ready = False
        self.finishing = False
        self.commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    # --- hot path -------------------------------------------------------------------------

    def on_messages(self, sock: ClientSocket, texts: list[bytes], now: float) -> None:
        sec = int(now - self.t0) if self.t0 else 0
        if sec != self.cur_sec:
            stats = self.seconds.get(sec)
            if stats is None:
                stats = self.seconds[sec] = SecondStats()
            self.cur, self.cur_sec = stats, sec
        stats = self.cur
        hist = stats.hist
        subs = sock.subscriptions
        parse_ts = self.parse_ts
        delivered = 0
        for text in texts:
            message = _loads(text)
            if message.get("type") != "next":
                self._control(sock, message)
                continue
            sub = subs.get(message.get("id"))
            if sub is None:
                continue
            payload = message["payload"]
            data = payload.get("data")
            event = data.get("nodeExecutionStatusChanged") if data else None
            if event is None:
                sub.errors += 1
                if len(self.protocol_errors) < 5:
                    self.protocol_errors.append(f"next without data: {payload}"[:300])
                continue
            # latency
            ms = (now - parse_ts(event["timestamp"])) * 1000.0
            delivered += 1
            if ms <= LOWEST_MS:
                hist[0] += 1
            else:
                index = int(_log10(ms * (1.0 / LOWEST_MS)) * PER_DECADE) + 1
                hist[index if index < BUCKETS else BUCKETS - 1] += 1
                if ms > stats.max_ms:
                    stats.max_ms = ms
            # order, gaps, duplicates
            seq = event["sequence"]
            last = sub.last
            sub.received += 1
            if seq > last:
                if last and seq > last + 1:
                    missing = sub.missing
                    if missing is None:
                        missing = sub.missing = set()
                    missing.update(range(last + 1, min(seq, last + 1 + MAX_GAP_TRACKED)))
                    self.gaps_live += seq - last - 1
                elif not last:
                    sub.first = seq
                sub.last = seq
            elif sub.missing and seq in sub.missing:
                sub.missing.discard(seq)
                sub.ooo += 1
                self.gaps_live -= 1
            else:
                sub.dups += 1
        if delivered:
            stats.count += delivered
            self.delivered += delivered
            self.last_receipt = now
            if not self.first_receipt:
                self.first_receipt = now

    def _control(self, sock: ClientSocket, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "connection_ack":
            if not sock.acked.done():
                sock.acked.set_result(None)
        elif kind == "pong":
            if sock.pong is not None and not sock.pong.done():
                sock.pong.set_result(None)
        elif kind == "ping":
            sock.send({"type": "pong"})
        elif kind in ("error", "complete"):
            sub = sock.subscriptions.get(message.get("id"))
            if sub is not None:
                sub.errors += 1
            if len(self.protocol_errors) < 5:
                self.protocol_errors.append(orjson.dumps(message).decode()[:300])

    def socket_closed(self, sock: ClientSocket) -> None:
        if self.ready and not self.finishing:
            self.closed_sockets += 1
            self.close_reasons[sock.close_reason] = self.close_reasons.get(sock.close_reason, 0) + 1

    # --- setup ----------------------------------------------------------------------------

    async def open_all(self) -> dict[str, Any]:
        limit = asyncio.Semaphore(self.connect_concurrency)
        split = urlsplit(self.url)
        host = split.hostname or "127.0.0.1"
        port = split.port or 80
        connect_ms: list[float] = []
        failures: dict[str, int] = {}

        async def open_one(subs: Sequence[tuple[str, int]]) -> None:
            subscriptions = [Subscription(op_id, project) for op_id, project in subs]
            async with limit:
                started = time.perf_counter()
                try:
                    _, sock = await asyncio.get_running_loop().create_connection(
                        lambda: ClientSocket(self, self.url, subscriptions), host, port
                    )
                    await asyncio.wait_for(sock.handshake, 60)
                    init: dict[str, Any] = {"type": "connection_init"}
                    if self.token:
                        init["payload"] = {"authorization": f"Bearer {self.token}"}
                    sock.send(init)
                    await asyncio.wait_for(sock.acked, 60)
                    connect_ms.append((time.perf_counter() - started) * 1000.0)
                    for sub in subscriptions:
                        sock.send(
                            {
                                "id": sub.op_id,
                                "type": "subscribe",
                                "payload": {"query": SUBSCRIPTION, "variables": {"p": sub.project}},
                            }
                        )
                    # The server handles a socket's messages in order: once it answers this
                    # ping, every subscription above is registered with its project.
                    await asyncio.wait_for(sock.ping(), 120)
                except (TimeoutError, OSError) as error:
                    reason = f"{type(error).__name__}: {error}"[:200]
                    failures[reason] = failures.get(reason, 0) + 1
                    return
                self.sockets.append(sock)

        await asyncio.gather(*(open_one(subs) for _, subs in self.plan))
        self.ready = True
        return {
            "connect_ms": connect_ms,
            "failures": failures,
            "connections": len(self.sockets),
            "subscriptions": sum(len(s.subscriptions) for s in self.sockets),
        }

    # --- steps ----------------------------------------------------------------------------

    def start_step(self, step: int, t0: float) -> None:
        self.flush_ticks(final=True)
        self.step = step
        self.t0 = t0
        self.seconds.clear()
        self.cur_sec = -(10**9)
        self.gaps_live = 0
        self.delivered = 0
        self.first_receipt = 0.0
        self.last_receipt = 0.0
        for sock in self.sockets:
            for sub in sock.subscriptions.values():
                sub.reset()

    def flush_ticks(self, final: bool = False) -> None:
        """Send every finished second (all of them when `final`)."""
        if self.step < 0:
            return
        now_sec = int(time.time() - self.t0)
        done = {
            sec: stats.sparse() for sec, stats in self.seconds.items() if final or sec < now_sec
        }
        for sec in done:
            del self.seconds[sec]
        if self.cur_sec in done:
            self.cur_sec = -(10**9)
        live = {
            "gaps": self.gaps_live,
            "closed": self.closed_sockets,
            "delivered": self.delivered,
            "last_receipt": self.last_receipt,
        }
        self.pipe.send(("tick", self.step, done, live))

    def tallies(self) -> list[Tally]:
        return [sub.tally() for sock in self.sockets for sub in sock.subscriptions.values()]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self._on_pipe)
        info = await self.open_all()
        info["pid"] = os.getpid()
        self.pipe.send(("ready", info))
        ticker = asyncio.create_task(self._tick_loop())
        try:
            while True:
                command = await self.commands.get()
                if command[0] == "collect":
                    self.flush_ticks(final=True)
                    extra = {
                        "delivered": self.delivered,
                        "first_receipt": self.first_receipt,
                        "last_receipt": self.last_receipt,
                        "closed": self.closed_sockets,
                        "close_reasons": self.close_reasons,
                        "protocol_errors": self.protocol_errors,
                    }
                    self.pipe.send(("tallies", command[1], self.tallies(), extra))
                elif command[0] == "finish":
                    break
        finally:
            ticker.cancel()
            self.finishing = True
            for sock in self.sockets:
                sock.close()
            await asyncio.sleep(0.2)
            loop.remove_reader(self.pipe.fileno())

    def _on_pipe(self) -> None:
        while self.pipe.poll():
            try:
                command = self.pipe.recv()
            except EOFError:  # the parent is gone
                self.commands.put_nowait(("finish",))
                return
            if command[0] == "start":
                # Here, not through the queue: no frame may be counted between the parent's
                # word and the reset. The parent waits for "started" before startLoad.
                self.start_step(command[1], command[2])
                self.pipe.send(("started", command[1]))
            else:
                self.commands.put_nowait(command)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.flush_ticks()


def worker_main(
    pipe: Connection,
    url: str,
    token: str | None,
    plan: Sequence[tuple[int, Sequence[tuple[str, int]]]],
    connect_concurrency: int = 64,
) -> None:
    """Entry point of a client process (multiprocessing target)."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    worker = Worker(pipe, url, token, plan, connect_concurrency)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(worker.run())
    pipe.close()
