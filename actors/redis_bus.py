"""Redis pub/sub as the bus between processes: workers publish, gateways listen.

One channel per project (`{prefix}:project:{id}`); a gateway subscribes to it only while
one of its project actors exists (the hub's watch/unwatch hooks), so a message reaches
exactly the gateways that have someone to show it to.

Redis pub/sub is at-most-once: a message published while a gateway is reconnecting, or
dropped with a slow subscriber's connection, is gone. Nothing is lost for subscribers,
because every message was persisted with its sequence number before it was published:

* a later message with a sequence past the next expected one makes the project actor
  fill the gap from the event log before delivering it (actors/project.py);
* after every (re)connect the listener waits until its subscriptions are confirmed, then
  asks every project actor to catch up to the database's last sequence (a lost message
  with nothing after it; a lost PlanChanged is a sequence like any other);
* when a project has been quiet for `settle_seconds` after a message, and every
  `sweep_seconds` for all projects, the same catch-up runs: it covers a message the
  *publisher* failed to send while this gateway stayed connected.

Everything that talks to Redis for listening runs on one thread; the hub's hooks only
queue a SUBSCRIBE/UNSUBSCRIBE for it (they are called under the hub's lock and must not
block). `healthy()` is false from the moment the connection is lost until the
subscriptions are back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from actors.bus import Bus, Deliver, InProcessBus
from actors.messages import BusMessage, bus_message_from_json

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "planpulse"
Resync = Callable[[int | None], None]  # a project id, or None for every project


def split_bus_url(url: str) -> tuple[str, str]:
    """`redis://host:6379/0?prefix=name` → (the URL for redis-py, the channel prefix).

    Pub/sub channels are global to a Redis server (the database number does not separate
    them), so deployments sharing one Redis need different prefixes.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((value for key, value in query if key == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix or DEFAULT_PREFIX


REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")  # gateway/app.py decides by them too


def bus_from_url(url: str | None, *, listen: bool = True) -> Bus:
    """The bus a `--bus-url` names: unset is the in-process bus, redis:// is Redis."""
    if not url or url in ("inprocess", "in-process"):
        return InProcessBus()
    if url.startswith(REDIS_URL_SCHEMES):
        return RedisBus(url, listen=listen)
    raise ValueError(
        f"unknown bus URL {url!r}: use redis://host:6379/0 (or leave it unset for the "
        "in-process bus of a single process)"
    )


class RedisBus:
    """The Bus over Redis pub/sub. `listen=False` is for workers, which only publish."""

    CONTROL = "bus"  # always subscribed: the connection (and health) exists with no project

    def __init__(
        self,
        url: str,
        *,
        listen: bool = True,
        settle_seconds: float = 1.0,
        sweep_seconds: float = 10.0,
        reconnect_max_seconds: float = 1.0,
    ) -> None:
        redis_url, self.prefix = split_bus_url(url)
        self._redis_url = redis_url
        self.listen = listen
        self.settle_seconds = settle_seconds
        self.sweep_seconds = sweep_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        name = f"{self.prefix}:{os.getpid()}"
        self._publisher = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=2.0,
            socket_keepalive=True,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
            client_name=f"{name}:pub",
        )
        self._listener_client = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            socket_keepalive=True,
            health_check_interval=5,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 0),
            client_name=f"{name}:sub",
        )
        self._deliver: Deliver | None = None
        self._resync: Resync | None = None
        self._lock = threading.Lock()
        self._watched: set[int] = set()
        self._commands: deque[tuple[str, int]] = deque()
        self._closing = threading.Event()
        self._listening = False  # subscriptions confirmed on a live connection
        self._publish_ok = True
        self._last_publish_error = 0.0
        self._reconnected = False
        self._awaiting: set[str] = set()
        self._recent: dict[int, float] = {}
        self._last_sweep = time.monotonic()
        self.published = 0
        self.dropped = 0
        self.received = 0
        self.reconnects = 0
        self.handler_errors = 0  # messages the hub could not take (see _hand_over)
        self._last_handler_error = 0.0
        self.resync_errors = 0
        self._resyncs = ResyncQueue()
        self._thread: threading.Thread | None = None
        self._resync_thread: threading.Thread | None = None

    def warn_if_unreachable(self) -> bool:
        """At start: one ping; a clear warning if Redis does not answer (the process starts
        anyway, and uses the bus once Redis is there). True when it answered."""
        try:
            self._publisher.ping()
        except redis.RedisError as error:
            log.warning(
                "the bus %s is not reachable (%s): starting anyway; until it is, state "
                "changes go to the event log only, and watchers of other processes get them "
                "when it comes back (check --bus-url)",
                self.describe(),
                error,
            )
            return False
        return True

    # --- the Bus interface ------------------------------------------------------------

    def attach(self, deliver: Deliver, resync: Resync | None = None) -> None:
        """`resync(project_id)` asks a project actor (all of them for None) to catch up
        from the event log; it may block, and is called on a thread of its own."""
        self._deliver = deliver
        self._resync = resync
        if self.listen and self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="redis-bus", daemon=True)
            self._resync_thread = threading.Thread(
                target=self._resync_loop, name="redis-bus-resync", daemon=True
            )
            self._resync_thread.start()
            self._thread.start()

    def publish(self, message: BusMessage) -> None:
        """Send after commit; never raises. A message Redis does not take is dropped: it is
        in the event log, and the gateways' gap filling gets it from there."""
        try:
            self._publisher.publish(self.channel(message.project_id), message.to_json())
        except redis.RedisError as error:
            self.dropped += 1
            now = time.monotonic()
            if self._publish_ok or now - self._last_publish_error > 5:
                log.warning("redis bus: publish failed, subscribers will catch up: %s", error)
            self._publish_ok = False
            self._last_publish_error = now
            return
        self.published += 1
        if not self._publish_ok:
            log.info("redis bus: publishing again")
        self._publish_ok = True

    def watch(self, project_id: int) -> None:
        with self._lock:
            self._watched.add(project_id)
            self._commands.append(("watch", project_id))

    def unwatch(self, project_id: int) -> None:
        with self._lock:
            self._watched.discard(project_id)
            self._commands.append(("unwatch", project_id))

    def healthy(self) -> bool:
        return self._listening if self.listen else self._publish_ok

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._resync_thread is not None:
            self._resyncs.put(_STOP)
            self._resync_thread.join(timeout=5)
        self._publisher.close()
        self._listener_client.close()
        self._deliver = None

    def describe(self) -> str:
        kwargs = self._publisher.connection_pool.connection_kwargs
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        return f"redis {where} (channels {self.prefix}:*)"

    def watched(self) -> set[int]:
        with self._lock:
            return set(self._watched)

    def channel(self, project_id: int) -> str:
        return f"{self.prefix}:project:{project_id}"

    def _project_of(self, channel: str) -> int | None:
        head = f"{self.prefix}:project:"
        if channel.startswith(head):
            try:
                return int(channel[len(head) :])
            except ValueError:
                return None
        return None

    # --- the listener thread ----------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.05
        while not self._closing.is_set():
            try:
                self._listen_on_one_connection()
                delay = 0.05
            except (redis.RedisError, OSError) as error:
                if self._listening:
                    log.warning("redis bus: lost the connection (%s): reconnecting", error)
                else:
                    log.debug("redis bus: cannot connect: %s", error)
            except Exception:  # noqa: BLE001 - the listener must outlive one bad message
                log.exception("redis bus: listener failed; reconnecting")
            self._listening = False
            if self._closing.wait(delay):
                break
            delay = min(delay * 2, self.reconnect_max_seconds)

    def _listen_on_one_connection(self) -> None:
        pubsub = self._listener_client.pubsub()
        try:
            with self._lock:
                watched = set(self._watched)
                self._commands.clear()
            channels = [self._control_channel()] + [self.channel(p) for p in watched]
            pubsub.subscribe(*channels)  # connects; raises while Redis is unreachable
            # redis-py reconnects a pub/sub connection by itself inside get_message and
            # resubscribes: hear about it, since messages were lost meanwhile.
            assert pubsub.connection is not None
            pubsub.connection.register_connect_callback(self._on_silent_reconnect)
            self._begin_catch_up(channels, watched)
            while not self._closing.is_set():
                if self._reconnected:
                    self._reconnected = False
                    self._listening = False
                    self._begin_catch_up(list(pubsub.channels), self.watched())
                self._apply_commands(pubsub)
                message = pubsub.get_message(timeout=0.05)
                if message is not None:
                    self._on_message(message)
                self._timers()
        finally:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def _control_channel(self) -> str:
        return f"{self.prefix}:{self.CONTROL}"

    def _on_silent_reconnect(self, _connection: Any) -> None:
        self.reconnects += 1
        self._reconnected = True
        log.info("redis bus: the client library reconnected; catching up from the event log")

    def _begin_catch_up(self, channels: list[Any], watched: set[int]) -> None:
        """After a (re)connect: once every subscription is confirmed, catch up every actor.

        Nothing else to do: messages carry their resolved nodes, so no actor holds a map
        that a lost plan edit could have left stale."""
        self._awaiting = {_text(channel) for channel in channels}

    def _apply_commands(self, pubsub: Any) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                action, project_id = self._commands.popleft()
            channel = self.channel(project_id)
            if action == "watch":
                pubsub.subscribe(channel)
            else:
                pubsub.unsubscribe(channel)
                self._recent.pop(project_id, None)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        channel = _text(message["channel"])
        if kind == "subscribe":
            if channel in self._awaiting:
                self._awaiting.discard(channel)
                if not self._awaiting:
                    if not self._listening:
                        log.info("redis bus: listening (%d projects)", len(self.watched()))
                    self._listening = True
                    self._resyncs.put(None)
            else:
                project_id = self._project_of(channel)
                if project_id is not None:
                    # Changes published between the actor's start and this SUBSCRIBE
                    # taking effect never reached us: catch up now that it has.
                    self._resyncs.put(project_id)
            return
        if kind != "message":
            return
        project_id = self._project_of(channel)
        if project_id is None:
            return
        try:
            bus_message = bus_message_from_json(message["data"])
        except (ValueError, TypeError, KeyError):
            log.warning("redis bus: ignoring a malformed message on %s", channel)
            return
        self.received += 1
        self._recent[project_id] = time.monotonic()
        self._hand_over(bus_message)

    def _hand_over(self, message: BusMessage) -> None:
        """Give a message to this process's hub; an error there is not the connection's.

        Letting it through would drop a healthy connection and, on reconnect, fail again
        on the same project (a message of the catch-up): a loop in which the bus is
        never healthy and no project hears anything. Instead it is counted and logged, and
        the project catches up from the event log (the message was persisted first), on
        the resync thread, once its actor can take it.
        """
        deliver = self._deliver
        if deliver is None:
            return
        try:
            deliver(message)
        except Exception:  # noqa: BLE001 - one project's failure must not stop the bus
            self.handler_errors += 1
            now = time.monotonic()
            if now - self._last_handler_error > 5:
                log.exception(
                    "redis bus: handing %s of project %s to the hub failed (%d so far); "
                    "it will catch up from the event log",
                    type(message).__name__,
                    message.project_id,
                    self.handler_errors,
                )
            self._last_handler_error = now
            self._resyncs.put(message.project_id)

    def _timers(self) -> None:
        now = time.monotonic()
        quiet = [p for p, seen in self._recent.items() if now - seen >= self.settle_seconds]
        for project_id in quiet:
            del self._recent[project_id]
            self._resyncs.put(project_id)
        if now - self._last_sweep >= self.sweep_seconds:
            self._last_sweep = now
            self._resyncs.put(None)

    # --- catching up, off the listener thread -----------------------------------------

    def _resync_loop(self) -> None:
        last_error = 0.0
        while True:
            item = self._resyncs.get()
            if item is _STOP:
                return
            resync = self._resync
            if resync is None:
                continue
            try:
                resync(item)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - a failed catch-up is retried by the next one
                self.resync_errors += 1
                now = time.monotonic()
                if now - last_error > 5:  # one line per burst, not one per message
                    log.exception(
                        "redis bus: catching up project %s failed (%d so far); the next "
                        "message, quiet period or sweep tries again",
                        "(all)" if item is None else item,
                        self.resync_errors,
                    )
                last_error = now


_STOP = object()


class ResyncQueue:
    """Catch-ups waiting for the resync thread, each project at most once (bounded).

    A catch-up reads the log up to its current end, so two waiting ones of a project are
    one: a burst of failed hand-overs or quiet periods queues it once, and a waiting
    "all" (None) covers every project queued before it. At most one entry per watched
    project plus one "all" wait, however long the resync thread is held up.
    """

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._projects: dict[int, None] = {}  # insertion-ordered set
        self._all = False
        self._stop = False

    def put(self, item: int | None | object) -> None:
        with self._ready:
            if item is _STOP:
                self._stop = True
            elif item is None:
                self._all = True
                self._projects.clear()
            elif not self._all:
                self._projects[item] = None  # type: ignore[index]
            self._ready.notify()

    def get(self) -> int | None | object:
        with self._ready:
            while not (self._stop or self._all or self._projects):
                self._ready.wait()
            if self._stop:
                return _STOP
            if self._all:
                self._all = False
                return None
            project_id = next(iter(self._projects))
            del self._projects[project_id]
            return project_id

    def __len__(self) -> int:
        with self._ready:
            return len(self._projects) + self._all


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
