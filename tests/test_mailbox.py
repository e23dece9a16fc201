"""Tests of gateway/mailbox.py: the per-connection Outbox and per-subscription mailboxes.

Each test runs its scenario on a real asyncio loop (`asyncio.run`); producers are the test
itself or real threads, as project actors are. Frames carry their node and sequence in the
payload so that what comes out can be checked against what went in.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from gateway.mailbox import SLOW_CONSUMER_CODE, Outbox, SubscriptionMailbox

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


class Harness:
    """An Outbox on the running loop, recording slow-consumer and coalescing callbacks."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.slow: list[str] = []
        self.coalesced: list[int] = []
        self.failures: list[list[dict[str, Any]]] = []
        self.outbox = Outbox(
            self.loop, on_slow_consumer=self.slow.append, on_coalesced=self.coalesced.append
        )

    def mailbox(self, op_id: str = "1", capacity: int = 100) -> SubscriptionMailbox:
        return SubscriptionMailbox(
            self.outbox, prefix(op_id), Selection(), capacity, self.failures.append
        )

    async def take(self) -> list[bytes] | None:
        return await asyncio.wait_for(self.outbox.take(), TIMEOUT)

    async def settle(self) -> None:
        """Let callbacks scheduled with call_soon_threadsafe run."""
        for _ in range(3):
            await asyncio.sleep(0)


def run(scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(Harness())

    asyncio.run(main())


# --- order and framing --------------------------------------------------------------------


def test_frames_come_out_in_order_with_the_prefix() -> None:
    async def scenario(h: Harness) -> None:
        first, second = h.mailbox("a"), h.mailbox("b")
        assert first.key != second.key and first.serial != second.serial
        first.deliver(items(("n1", 1), ("n2", 1)))
        h.outbox.put_control('{"type":"pong"}')
        second.deliver(items(("n1", 2)))
        first.deliver(items(("n1", 2)))
        assert h.outbox.waiting == 5
        frames = await h.take()
        assert frames is not None
        assert frames[0] == prefix("a") + item("n1", 1)[2] + b"}"
        assert frames[2] == b'{"type":"pong"}'
        del frames[2]
        assert decode(frames) == [("a", "n1", 1), ("a", "n2", 1), ("b", "n1", 2), ("a", "n1", 2)]
        assert h.outbox.waiting == 0
        assert h.slow == [] and h.coalesced == []

    run(scenario)


def test_subscription_fail_goes_to_its_callback() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox()
        mailbox.fail([{"message": "project 9 does not exist"}])
        assert h.failures == [[{"message": "project 9 does not exist"}]]

    run(scenario)


# --- backpressure -------------------------------------------------------------------------


def test_live_frames_beyond_capacity_coalesce_older_frames_of_the_same_node() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox(capacity=3)
        mailbox.deliver(items(("a", 1), ("b", 2), ("c", 3)))  # full
        mailbox.deliver(items(("a", 4)))  # drops a1
        mailbox.deliver(items(("b", 5), ("a", 6)))  # drops b2, then a4
        await h.settle()
        assert h.slow == []
        assert sum(h.coalesced) == 3
        frames = await h.take()
        assert frames is not None
        seen = decode(frames)
        assert [(node, seq) for _op, node, seq in seen] == [("c", 3), ("b", 5), ("a", 6)]
        sequences = [seq for *_x, seq in seen]
        assert sequences == sorted(sequences)
        # Once taken, the mailbox has room again: nothing more is coalesced.
        mailbox.deliver(items(("a", 7), ("a", 8), ("a", 9)))
        assert [seq for *_x, seq in decode(await h.take() or [])] == [7, 8, 9]
        assert sum(h.coalesced) == 3

    run(scenario)


def test_coalescing_is_per_subscription() -> None:
    async def scenario(h: Harness) -> None:
        slow, other = h.mailbox("slow", capacity=1), h.mailbox("other", capacity=1)
        slow.deliver(items(("a", 1)))
        other.deliver(items(("a", 1)))
        slow.deliver(items(("a", 2)))  # coalesces slow's a1 only
        frames = await h.take()
        assert decode(frames or []) == [("other", "a", 1), ("slow", "a", 2)]

    run(scenario)


def test_slow_consumer_is_told_and_nothing_more_is_queued() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("sub", capacity=2)
        mailbox.deliver(items(("a", 1), ("b", 2)))
        # c has no waiting frame that could make room: the subscriber cannot keep up.
        mailbox.deliver(items(("c", 3), ("a", 4)))
        await h.settle()
        assert len(h.slow) == 1
        reason = h.slow[0]
        assert "too slow" in reason
        assert "more than 2 events waiting" in reason
        assert "afterSequence" in reason
        assert h.outbox.waiting == 2
        frames = await h.take()
        assert [(node, seq) for _op, node, seq in decode(frames or [])] == [("a", 1), ("b", 2)]
        assert SLOW_CONSUMER_CODE == 1013

    run(scenario)


# Before the connection's close (scheduled on the loop by on_slow_consumer) has dropped the
# subscription, the actor thread keeps delivering: those frames must not be sent either.


def _after_slow_verdict_scenario(take_between: bool) -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("sub", capacity=2)
        mailbox.deliver(items(("a", 1), ("b", 2)))
        mailbox.deliver(items(("c", 3)))  # lost: the subscriber is too slow
        taken: list[bytes] = []
        if take_between:  # the writer task drains what was waiting before the close
            taken += await h.take() or []
        mailbox.deliver(items(("a", 4)))  # the actor thread goes on delivering
        await h.settle()
        assert len(h.slow) >= 1
        if h.outbox.waiting:
            taken += await h.take() or []
        sequences = [seq for *_x, seq in decode(taken)]
        assert max(sequences, default=0) < 3, f"sent {sequences} after losing sequence 3"

    run(scenario)


def test_no_frame_is_queued_after_the_slow_verdict_while_frames_wait() -> None:
    _after_slow_verdict_scenario(take_between=False)


def test_no_frame_is_queued_after_the_slow_verdict_once_the_writer_drained() -> None:
    _after_slow_verdict_scenario(take_between=True)


def test_replay_frames_are_never_coalesced() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("r", capacity=1)
        replayed = items(*(("a", seq) for seq in range(1, 51)))
        mailbox.deliver(replayed, replay=True)
        # Replayed frames do not use up the live capacity either.
        mailbox.deliver(items(("a", 51)))
        mailbox.deliver(items(("a", 52)))  # coalesces live a51 only
        await h.settle()
        assert h.slow == []
        assert h.coalesced == [1]
        frames = await h.take()
        assert [seq for *_x, seq in decode(frames or [])] == [*range(1, 51), 52]

    run(scenario)


# --- ending -------------------------------------------------------------------------------


def test_drop_removes_waiting_frames_of_one_subscription() -> None:
    async def scenario(h: Harness) -> None:
        gone, kept = h.mailbox("gone"), h.mailbox("kept")
        gone.deliver(items(("a", 1)))
        kept.deliver(items(("a", 1)))
        gone.deliver(items(("b", 2)), replay=True)
        kept.deliver(items(("b", 2)))
        h.outbox.drop(gone.serial)
        gone.deliver(items(("c", 3)))  # after drop: ignored
        kept.deliver(items(("c", 3)))
        frames = await h.take()
        assert decode(frames or []) == [("kept", "a", 1), ("kept", "b", 2), ("kept", "c", 3)]
        h.outbox.drop(kept.serial)  # everything waiting was dropped: take() keeps waiting
        kept.deliver(items(("d", 4)))
        waiter = asyncio.ensure_future(h.outbox.take())
        await h.settle()
        assert not waiter.done()
        h.outbox.put_control(b'{"type":"complete","id":"kept"}')
        assert await asyncio.wait_for(waiter, TIMEOUT) == [b'{"type":"complete","id":"kept"}']

    run(scenario)


def test_put_from_another_thread_wakes_the_taker() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("t", capacity=1000)
        waiter = asyncio.ensure_future(h.outbox.take())
        await h.settle()
        assert not waiter.done()

        def producer() -> None:
            for seq in range(1, 201):
                mailbox.deliver(items((f"n{seq}", seq)))

        thread = threading.Thread(target=producer)
        thread.start()
        got: list[bytes] = list(await asyncio.wait_for(waiter, TIMEOUT) or [])
        assert got  # woken by the other thread's put
        while len(got) < 200:
            got += await h.take() or []
        thread.join(TIMEOUT)
        assert [seq for *_x, seq in decode(got)] == list(range(1, 201))

    run(scenario)


def test_close_makes_take_return_none_once_empty() -> None:
    async def scenario(h: Harness) -> None:
        mailbox = h.mailbox("c")
        mailbox.deliver(items(("a", 1)))
        h.outbox.put_control("bye")
        h.outbox.close()
        mailbox.deliver(items(("a", 2)))  # after close: ignored
        h.outbox.put_control("ignored")
        frames = await h.take()
        assert frames is not None and len(frames) == 2 and frames[1] == b"bye"
        assert await h.take() is None
        assert await h.take() is None

    run(scenario)


def test_close_from_another_thread_ends_a_waiting_take() -> None:
    async def scenario(h: Harness) -> None:
        waiter = asyncio.ensure_future(h.outbox.take())
        await h.settle()
        assert not waiter.done()
        thread = threading.Thread(target=h.outbox.close)
        thread.start()
        assert await asyncio.wait_for(waiter, TIMEOUT) is None
        thread.join(TIMEOUT)

    run(scenario)
