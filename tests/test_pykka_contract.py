"""What actors/runtime.py relies on in pykka beyond its public API (issue 17 item 4).

pykka offers no public extension point for a new runtime: its own ThreadingActor and
GeventActor implement the "internal methods for implementors of new actor types". So
pyproject.toml pins pykka to a version range, and this file pins exactly the private
behaviour PooledActor uses; a pykka upgrade that changes any of it fails here, by name,
instead of in production:

* `Actor.start` calls `cls._create_actor_inbox()` (from `__init__`), `_create_future()`
  for asks, then `_start_actor_loop()` once, after registering the actor;
* `ActorRef.tell`/`ask` put `pykka._envelope.Envelope(message, reply_to)` into
  `actor_inbox.put` (`reply_to` None for a tell, the future for an ask);
* `_actor_loop_setup()` runs `on_start`; `_handle_receive(message)` dispatches
  `_ActorStop`, proxy calls and `on_receive`; `_handle_failure(*exc_info)` logs,
  unregisters and sets `actor_stopped`; `_stop()` unregisters, sets `actor_stopped`, runs
  `on_stop`; `_actor_loop_teardown()` fails the waiting asks with ActorDeadError;
* `Actor._actor_loop_running`'s failure rules, which PooledActor._handle_envelope copies.
"""

from __future__ import annotations

import inspect
import queue
import threading
from importlib.metadata import version
from typing import Any

import pykka
import pytest
from pykka import ActorDeadError, ActorRegistry, messages
from pykka._envelope import Envelope

from actors.runtime import ActorThreads, PooledActor, _Inbox


def test_the_pinned_version_range_is_the_one_installed() -> None:
    major, minor = (int(part) for part in version("pykka").split(".")[:2])
    assert (major, minor) >= (4, 1) and major == 4 and minor <= 5, version("pykka")


def test_the_private_names_exist_with_the_signatures_used() -> None:
    actor = pykka.Actor
    for name in (
        "_create_actor_inbox",
        "_create_future",
        "_start_actor_loop",
        "_actor_loop_setup",
        "_actor_loop_teardown",
        "_handle_receive",
        "_handle_failure",
        "_stop",
    ):
        assert callable(getattr(actor, name, None)), f"pykka.Actor.{name} is gone"
    assert list(inspect.signature(actor._handle_receive).parameters) == ["self", "message"]
    assert list(inspect.signature(actor._handle_failure).parameters) == [
        "self",
        "exception_type",
        "exception_value",
        "traceback",
    ]
    assert Envelope.__slots__ == ["message", "reply_to"]
    assert hasattr(messages, "_ActorStop")


def test_start_creates_the_inbox_then_starts_the_loop_once() -> None:
    calls: list[str] = []

    class Probe(pykka.Actor):
        @classmethod
        def _create_actor_inbox(cls) -> Any:  # type: ignore[override]
            calls.append("inbox")
            return queue.Queue()

        @staticmethod
        def _create_future() -> pykka.Future[Any]:
            calls.append("future")
            return pykka.ThreadingFuture()

        def _start_actor_loop(self) -> None:
            calls.append("loop")
            assert ActorRegistry.get_by_urn(self.actor_urn) is not None, "registered first"

    ref = Probe.start()
    assert calls == ["inbox", "loop"]
    ref.ask("hello", block=False)
    assert calls == ["inbox", "loop", "future"]
    ActorRegistry.unregister(ref)


def test_tell_and_ask_put_envelopes_with_reply_to() -> None:
    class Probe(pykka.Actor):
        @classmethod
        def _create_actor_inbox(cls) -> Any:  # type: ignore[override]
            return _Inbox()

        @staticmethod
        def _create_future() -> pykka.Future[Any]:
            return pykka.ThreadingFuture()

        def _start_actor_loop(self) -> None:
            pass

    ref = Probe.start()
    inbox = ref.actor_inbox
    inbox.actor = _NoSchedule()  # type: ignore[attr-defined]
    ref.tell("told")
    future = ref.ask("asked", block=False)
    told, asked = list(inbox.envelopes)  # type: ignore[attr-defined]
    assert isinstance(told, Envelope) and told.message == "told" and told.reply_to is None
    assert asked.message == "asked" and asked.reply_to is future
    ActorRegistry.unregister(ref)


class _NoSchedule:
    """Stands in for the actor an _Inbox schedules (these probes have no thread)."""

    class _Queue:
        def put(self, _actor: Any) -> None:
            pass

    _ready_queue = _Queue()


def test_the_loop_pieces_behave_as_pooled_actor_expects() -> None:
    events: list[str] = []

    class Probe(pykka.ThreadingActor):
        def on_start(self) -> None:
            events.append("start")

        def on_stop(self) -> None:
            events.append("stop")

        def on_receive(self, message: Any) -> Any:
            return ("got", message)

    probe = Probe()  # not started: the pieces are called by hand, as PooledActor does
    probe._actor_loop_setup()
    assert events == ["start"]
    assert probe._handle_receive("x") == ("got", "x")
    assert probe._handle_receive(
        messages.ProxyCall(attr_path=("on_receive",), args=("y",), kwargs={})
    ) == ("got", "y")
    ActorRegistry.register(probe.actor_ref)
    probe._handle_receive(messages._ActorStop())  # _stop: unregistered, stopped, on_stop
    assert probe.actor_stopped.is_set() and events == ["start", "stop"]
    assert ActorRegistry.get_by_urn(probe.actor_urn) is None
    # The teardown fails what still waits with ActorDeadError.
    waiting = pykka.ThreadingFuture()
    probe.actor_inbox.put(Envelope("late", reply_to=waiting))
    probe._actor_loop_teardown()
    with pytest.raises(ActorDeadError):
        waiting.get(timeout=1)


def test_handle_failure_logs_unregisters_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    class Probe(pykka.ThreadingActor):
        pass

    probe = Probe()
    ActorRegistry.register(probe.actor_ref)
    try:
        raise ValueError("boom")
    except ValueError as error:
        probe._handle_failure(type(error), error, error.__traceback__)
    assert probe.actor_stopped.is_set()
    assert ActorRegistry.get_by_urn(probe.actor_urn) is None
    assert "Unhandled exception" in caplog.text


def test_a_pooled_actor_end_to_end_on_this_pykka() -> None:
    """The whole contract at once: start, tell, ask, proxy, failure, stop."""
    saved = PooledActor.runtime
    PooledActor.runtime = ActorThreads(1)
    failed = threading.Event()
    try:

        class Echo(PooledActor):
            def on_receive(self, message: Any) -> Any:
                if message == "fail":
                    raise RuntimeError("a bug")
                return message

            def on_failure(self, *_exc_info: Any) -> None:
                failed.set()

            def double(self, n: int) -> int:
                return 2 * n

        ref = Echo.start()
        assert ref.ask("ping", timeout=5) == "ping"
        assert ref.proxy().double(21).get(timeout=5) == 42
        with pytest.raises(RuntimeError):
            ref.ask("fail", timeout=5)  # an ask gets the exception; the actor lives
        assert ref.is_alive()
        ref.tell("fail")  # a tell's failure stops the actor, after on_failure
        assert failed.wait(5)
        assert not ref.is_alive()
        with pytest.raises(ActorDeadError):
            ref.tell("after")
    finally:
        PooledActor.runtime = saved
