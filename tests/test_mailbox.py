"""Tests of the thread-to-loop handoff (gateway/dispatcher.py), per-connection Outboxes
(gateway/outbox.py) and subscription mailboxes (gateway/subscriber.py).

Each test runs its scenario on a real asyncio loop (`asyncio.run`); producers are the test
itself or real threads, as project actors are. The socket is a `Sink` that records what
would be written and can be paused like a transport whose buffer is full (the real socket
is exercised in tests/test_delivery.py). Frames carry their node and sequence in the
payload so that what comes out can be checked against what went in.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from gateway.dispatcher import Dispatcher
from gateway.outbox import SLOW_CONSUMER_CODE, Outbox
from gateway.subscriber import SubscriptionMailbox

TIMEOUT = 5.0


class Selection:
    key = "selection"

    def render(self, event: dict[str, Any]) -> bytes:
        return orjson.dumps({"data": event})


def prefix(op_id: str) -> bytes:
    return b'{"id":"' + op_id.encode() + b'","type":"next","payload":'


def item(node_id: str, sequence: int) -> tuple[str, int, bytes]:
    return node_id, sequence, orjson.dumps({"data": {"nodeId": node_id, "sequence": sequence}})


def items(*pairs: tuple[str, int]) -> list[tuple[str, int, bytes]]:
    return [item(node_id, sequence) for node_id, sequence in pairs]


def decode(frames: Sequence[bytes]) -> list[tuple[str, str, int]]:
    """(operation id, node id, sequence) of each `next` frame."""
    out = []
    for frame in frames:
        message = orjson.loads(frame)
        assert message["type"] == "next"
        data = message["payload"]["data"]
        out.append((message["id"], data["nodeId"], data["sequence"]))
    return out


class Sink:
    """A FrameSink in memory: `paused` as a transport over its high-water mark."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.writes = 0
        self.paused = False
        self.open = True
        self._resumed = asyncio.Event()

    def writable(self) -> bool:
        return self.open and not self.paused

    def is_open(self) -> bool:
        return self.open

    def write(self, frames: list[bytes]) -> None:
        assert self.open
        self.written += frames
        self.writes += 1

    async def drained(self) -> None:
        while self.paused and self.open:
            self._resumed.clear()
            await self._resumed.wait()

    def resume(self) -> None:
        self.paused = False
        self._resumed.set()

    def close(self) -> None:
        self.open = False
        self._resumed.set()


class Harness:
    """An Outbox on the running loop, recording slow-consumer and coalescing callbacks."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.slow: list[str] = []
        self.coalesced: list[int] = []
        self.failures: list[list[dict[str, Any]]] = []
        self.sink = Sink()
        self.dispatcher = Dispatcher(self.loop)
        self.outbox = Outbox(
            self.sink,
            self.dispatcher,
            on_slow_consumer=self.slow.append,
            on_coalesced=self.coalesced.append,
        )

    def mailbox(self, op_id: str = "1", capacity: int = 100) -> SubscriptionMailbox:
        return SubscriptionMailbox(
            self.outbox, prefix(op_id), Selection(), capacity, self.failures.append
        )

    async def settle(self) -> None:
        """Let callbacks scheduled with call_soon_threadsafe (and the drain task) run."""
        for _ in range(5):
            await asyncio.sleep(0)

    async def taken(self) -> list[bytes]:
        """What was written since the last call."""
        await self.settle()
        frames, self.sink.written = self.sink.written, []
        return frames


def run(scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(Harness())

    asyncio.run(main())


# --- order and framing --------------------------------------------------------------------


def test_frames_come_out_in_order_with_the_prefix_in_one_write() -> None:
    async def scenario(h: Harness) -> None:
        first, second = h.mailbox("a"), h.mailbox("b")
        assert first.key != second.key and first.serial != second.serial
        first.deliver(items(("n1", 1), ("n2", 1)))
        h.outbox.put_control('{"type":"pong"}')
        second.deliver(items(("n1", 2)))
        first.deliver(items(("n1", 2)))
        assert h.dispatcher.waiting == 4  # nothing is written before the loop runs
        frames = await h.taken()
        assert h.sink.writes == 1  # the whole burst in one socket write
        assert frames[0] == prefix("a") + item("n1", 1)[2] + b"}"
        assert frames[2] == b'{"type":"pong"}'
        del frames[2]
        assert decode(frames) == [("a", "n1", 1), ("a", "n2", 1), ("b", "n1", 2), ("a", "n1", 2)]
        assert h.outbox.waiting == 0 and h.dispatcher.waiting == 0
        assert h.slow == [] and h.coalesced == []

    run(scenario)


def test_one_loop_wakeup_serves_many_outboxes() -> None:
    async def scenario(h: Harness) -> None:
        sinks = [Sink() for _ in range(10)]
        outboxes = [Outbox(sink, h.dispatcher, on_slow_consumer=h.slow.append) for sink in sinks]
        mailboxes = [
            SubscriptionMailbox(outbox, prefix("s"), Selection(), 10, h.failures.append)
            for outbox in outboxes
        ]
        scheduled: list[object] = []
        original = h.loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any) -> Any:
            scheduled.append(callback)
            return original(callback, *args)

        h.loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        try:
            thread = threading.Thread(
                target=lambda: [m.deliver(items(("n", 1))) for m in mailboxes]
            )
            thread.start()
            thread.join(TIMEOUT)
            await h.settle()
        finally:
            h.loop.call_soon_threadsafe = original  # type: ignore[method-assign]
        assert len(scheduled) == 1
        assert [decode(sink.written) for sink in sinks] == [[("s", "n", 1)]] * 10

    run(scenario)


def test_subscription_fail_goes_to_its_callback() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox()
        mailbox.fail([{"message": "project 9 does not exist"}])
        assert h.failures == [[{"message": "project 9 does not exist"}]]

    run(scenario)


# --- backpressure: while the socket is paused ---------------------------------------------


def test_live_frames_beyond_capacity_coalesce_older_frames_of_the_same_node() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox(capacity=3)
        h.sink.paused = True
        mailbox.deliver(items(("a", 1), ("b", 2), ("c", 3)))  # full
        mailbox.deliver(items(("a", 4)))  # drops a1
        mailbox.deliver(items(("b", 5), ("a", 6)))  # drops b2, then a4
        assert await h.taken() == []
        assert h.slow == []
        assert sum(h.coalesced) == 3
        assert h.outbox.waiting == 3
        h.sink.resume()
        seen = decode(await h.taken())
        assert [(node, seq) for _op, node, seq in seen] == [("c", 3), ("b", 5), ("a", 6)]
        # Drained: the mailbox has room again and frames flow straight to the socket.
        mailbox.deliver(items(("a", 7), ("a", 8), ("a", 9)))
        assert [seq for *_x, seq in decode(await h.taken())] == [7, 8, 9]
        assert sum(h.coalesced) == 3

    run(scenario)


def test_a_burst_that_finds_the_socket_paused_waits_in_order() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox(capacity=10)
        mailbox.deliver(items(("a", 1)))
        assert decode(await h.taken()) == [("1", "a", 1)]
        h.sink.paused = True  # the write above filled the buffer
        mailbox.deliver(items(("a", 2)))
        h.outbox.put_control("ctl")
        mailbox.deliver(items(("b", 3)))
        assert await h.taken() == []
        h.sink.resume()
        frames = await h.taken()
        assert frames[1] == b"ctl"
        del frames[1]
        assert decode(frames) == [("1", "a", 2), ("1", "b", 3)]

    run(scenario)


def test_coalescing_is_per_subscription() -> None:
    async def scenario(h: Harness) -> None:
        slow, other = h.mailbox("slow", capacity=1), h.mailbox("other", capacity=1)
        h.sink.paused = True
        slow.deliver(items(("a", 1)))
        other.deliver(items(("a", 1)))
        slow.deliver(items(("a", 2)))  # coalesces slow's a1 only
        await h.settle()
        h.sink.resume()
        assert decode(await h.taken()) == [("other", "a", 1), ("slow", "a", 2)]

    run(scenario)


def test_the_resume_point_is_before_the_first_frame_the_socket_did_not_take() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("sub", capacity=2)
        mailbox.deliver(items(("a", 1), ("b", 2)))  # written: the socket accepts
        assert len(await h.taken()) == 2
        h.sink.paused = True
        mailbox.deliver(items(("a", 3), ("b", 4)))
        mailbox.deliver(items(("a", 5)))  # coalesces a3 away: 3 is not sure to arrive
        mailbox.deliver(items(("c", 6)))  # nothing of c waits: too slow
        await h.settle()
        assert h.coalesced == [1]
        (reason,) = h.slow
        assert reason.endswith("afterSequence: 2"), reason

    run(scenario)


def test_slow_consumer_is_told_and_nothing_more_is_queued() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("sub", capacity=2)
        h.sink.paused = True
        mailbox.deliver(items(("a", 1), ("b", 2)))
        # c has no waiting frame that could make room: the subscriber cannot keep up.
        mailbox.deliver(items(("c", 3), ("a", 4)))
        await h.settle()
        assert len(h.slow) == 1
        reason = h.slow[0]
        assert "too slow" in reason
        assert "more than 2 events waiting" in reason
        # a1 and b2 still wait behind the paused socket: resuming after 0 misses nothing
        assert reason.endswith("resubscribe with afterSequence: 0"), reason
        assert h.outbox.waiting == 2
        h.sink.resume()
        frames = await h.taken()
        assert [(node, seq) for _op, node, seq in decode(frames)] == [("a", 1), ("b", 2)]
        assert SLOW_CONSUMER_CODE == 1013

    run(scenario)


# Before the connection's close (started on the loop by on_slow_consumer) has dropped the
# subscription, the actor thread keeps delivering: those frames must not be sent either.


def _after_slow_verdict_scenario(drain_between: bool) -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("sub", capacity=2)
        h.sink.paused = True
        mailbox.deliver(items(("a", 1), ("b", 2)))
        mailbox.deliver(items(("c", 3)))  # lost: the subscriber is too slow
        taken: list[bytes] = []
        if drain_between:  # the socket drains what was waiting before the close
            await h.settle()
            h.sink.resume()
            taken += await h.taken()
        mailbox.deliver(items(("a", 4)))  # the actor thread goes on delivering
        await h.settle()
        assert len(h.slow) >= 1
        h.sink.resume()
        taken += await h.taken()
        sequences = [seq for *_x, seq in decode(taken)]
        assert sequences == [1, 2], f"sent {sequences}: nothing may follow lost sequence 3"

    run(scenario)


def test_no_frame_is_sent_after_the_slow_verdict_while_frames_wait() -> None:
    _after_slow_verdict_scenario(drain_between=False)


def test_no_frame_is_sent_after_the_slow_verdict_once_the_socket_drained() -> None:
    _after_slow_verdict_scenario(drain_between=True)


def test_replay_frames_are_never_coalesced() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("r", capacity=1)
        h.sink.paused = True
        replayed = items(*(("a", seq) for seq in range(1, 51)))
        mailbox.deliver(replayed, replay=True)
        # Replayed frames do not use up the live capacity either.
        mailbox.deliver(items(("a", 51)))
        mailbox.deliver(items(("a", 52)))  # coalesces live a51 only
        await h.settle()
        assert h.slow == []
        assert h.coalesced == [1]
        h.sink.resume()
        assert [seq for *_x, seq in decode(await h.taken())] == [*range(1, 51), 52]

    run(scenario)


# --- ending -------------------------------------------------------------------------------


def test_drop_removes_waiting_frames_of_one_subscription() -> None:
    async def scenario(h: Harness) -> None:
        gone, kept = h.mailbox("gone"), h.mailbox("kept")
        h.sink.paused = True
        gone.deliver(items(("a", 1)))
        kept.deliver(items(("a", 1)))
        gone.deliver(items(("b", 2)), replay=True)
        kept.deliver(items(("b", 2)))
        await h.settle()
        h.outbox.drop(gone.serial)
        gone.deliver(items(("c", 3)))  # after drop: ignored
        kept.deliver(items(("c", 3)))
        await h.settle()
        h.sink.resume()
        assert decode(await h.taken()) == [("kept", "a", 1), ("kept", "b", 2), ("kept", "c", 3)]

    run(scenario)


def test_drop_in_the_same_loop_turn_as_the_delivery_still_drops() -> None:
    async def scenario(h: Harness) -> None:
        gone = h.mailbox("gone")
        gone.deliver(items(("a", 1)))  # queued in the dispatcher
        h.outbox.drop(gone.serial)
        assert await h.taken() == []

    run(scenario)


def test_deliveries_from_another_thread_arrive_in_order() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("t", capacity=1000)

        def producer() -> None:
            for seq in range(1, 2001):
                mailbox.deliver(items((f"n{seq}", seq)))

        thread = threading.Thread(target=producer)
        thread.start()
        got: list[bytes] = []
        deadline = h.loop.time() + TIMEOUT
        while len(got) < 2000 and h.loop.time() < deadline:
            got += await h.taken()
        thread.join(TIMEOUT)
        assert [seq for *_x, seq in decode(got)] == list(range(1, 2001))

    run(scenario)


def test_close_drops_everything_and_ends_the_drain_task() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("c")
        h.sink.paused = True
        mailbox.deliver(items(("a", 1)))
        await h.settle()
        assert h.outbox.waiting == 1
        h.outbox.close()
        mailbox.deliver(items(("a", 2)))  # after close: ignored
        h.outbox.put_control("ignored")
        h.sink.resume()
        assert await h.taken() == []
        assert h.outbox.waiting == 0

    run(scenario)


def test_a_socket_that_closes_while_paused_gets_nothing_more() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("c")
        h.sink.paused = True
        mailbox.deliver(items(("a", 1)))
        await h.settle()
        h.sink.close()
        await h.settle()
        mailbox.deliver(items(("a", 2)))
        assert await h.taken() == []
        assert h.outbox.waiting == 0

    run(scenario)
