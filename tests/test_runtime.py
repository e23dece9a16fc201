"""Tests of actors/runtime.py: pykka actors on a few shared threads.

Each test uses its own `ActorThreads` (the class attribute is swapped and restored), so
thread counts are exact and nothing leaks into other tests' project actors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.runtime import TURN, ActorThreads, PooledActor


@pytest.fixture
def runtime() -> Iterator[ActorThreads]:
    saved = PooledActor.runtime
    PooledActor.runtime = ActorThreads(2)
    try:
        yield PooledActor.runtime
    finally:
        PooledActor.runtime = saved


class Recorder(PooledActor):
    def __init__(self, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self.started_before_first_message = False
        self.stopped = threading.Event()
        self.gate = gate
        self.thread_names: set[str] = set()

    def on_start(self) -> None:
        self.started_before_first_message = not self.seen

    def on_stop(self) -> None:
        self.stopped.set()

    def on_receive(self, message: Any) -> Any:
        self.thread_names.add(threading.current_thread().name)
        if message == "block" and self.gate is not None:
            self.gate.wait(5)
        if message == "boom":
            raise ValueError("boom")
        if message == "get":
            return list(self.seen)
        self.seen.append(message)
        return len(self.seen)


def test_many_actors_share_the_runtime_threads_and_keep_their_order(
    runtime: ActorThreads,
) -> None:
    threads_before = threading.active_count()
    refs = [Recorder.start() for _ in range(200)]

    def send(sender: int) -> None:
        for i in range(100):
            for ref in refs[sender::4]:
                ref.tell((sender, i))

    senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(10)
    for n, ref in enumerate(refs):
        assert ref.ask("get", timeout=10) == [(n % 4, i) for i in range(100)]
    assert threading.active_count() <= threads_before + runtime.size
    names = {name for ref in refs for name in ref.proxy().thread_names.get(timeout=5)}
    assert names <= {t.name for t in runtime.threads}
    for ref in refs:
        ref.stop()


def test_on_start_runs_first_and_on_stop_when_stopped(runtime: ActorThreads) -> None:
    ref = Recorder.start()
    ref.tell("a")
    assert ref.ask("get", timeout=5) == ["a"]
    assert ref.proxy().started_before_first_message.get(timeout=5) is True
    stopped = ref.proxy().stopped.get(timeout=5)
    ref.stop(block=True, timeout=5)
    assert stopped.is_set()
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("late")


def test_an_ask_that_raises_gives_the_exception_to_the_caller(runtime: ActorThreads) -> None:
    ref = Recorder.start()
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=5)
    assert ref.is_alive()  # as in pykka: a failed ask does not stop the actor
    ref.stop()


def test_a_told_message_that_raises_stops_only_that_actor(runtime: ActorThreads) -> None:
    failing, other = Recorder.start(), Recorder.start()
    failing.tell("boom")
    deadline = time.monotonic() + 5
    while failing.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not failing.is_alive()
    assert other.ask("x", timeout=5) == 1  # its thread goes on serving others
    other.stop()


class Logger(PooledActor):
    def __init__(self, name: str, log: list[str], gate: threading.Event) -> None:
        super().__init__()
        self.name, self.log, self.gate = name, log, gate

    def on_receive(self, message: Any) -> Any:
        if message == "ready":
            return None  # answered once the first turn (on_start) is over: not logged
        if message == "block":
            self.gate.wait(30)
        self.log.append(self.name)


def test_a_busy_actor_does_not_starve_the_others_on_its_thread() -> None:
    saved = PooledActor.runtime
    PooledActor.runtime = ActorThreads(1)  # one thread: both actors share it
    try:
        log: list[str] = []
        gate = threading.Event()
        busy = Logger.start("busy", log, gate)
        quiet = Logger.start("quiet", log, gate)
        # Both idle first: a message told while an actor's first turn still runs joins that
        # turn, which would let `quiet` run before `busy` is even blocked.
        busy.ask("ready", timeout=10)
        quiet.ask("ready", timeout=10)
        deadline = time.monotonic() + 10
        while busy.actor_inbox.scheduled or quiet.actor_inbox.scheduled:  # turns fully over
            assert time.monotonic() < deadline, "the actors' first turns never ended"
            time.sleep(0.001)
        busy.tell("block")  # holds the thread while both inboxes fill
        for _ in range(TURN * 10):
            busy.tell("work")
        answer = quiet.ask("x", block=False)
        gate.set()
        answer.get(timeout=5)
        busy.ask("x", timeout=10)
        # quiet ran after one turn of busy's messages, not after all of them.
        assert log.index("quiet") == TURN
        assert log.count("busy") == TURN * 10 + 2
        busy.stop()
        quiet.stop()
    finally:
        PooledActor.runtime = saved


def test_asks_are_answered_after_messages_told_before_them(runtime: ActorThreads) -> None:
    gate = threading.Event()
    ref = Recorder.start(gate)
    ref.tell("block")  # holds the actor (and its thread) until the gate opens
    ref.tell("a")
    answer = ref.ask("get", block=False)
    gate.set()
    assert answer.get(timeout=5) == ["block", "a"]
    ref.stop()


def test_runtime_size_must_be_positive() -> None:
    expected = r"actor threads \(--actor-threads\) must be 1 or more, got 0"
    with pytest.raises(ValueError, match=expected):
        ActorThreads(0)
