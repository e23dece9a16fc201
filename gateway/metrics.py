"""Prometheus metrics of one gateway (prometheus-client, one registry per server).

A registry per server, not the global one, so that tests can run several servers in one
process and read each one's numbers.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from actors.bus import PUBLISH_FAILURES
from actors.runtime import INBOX_COUNTS
from storage.retry import COUNTS


class GatewayMetrics:
    def __init__(
        self, active_actors: Callable[[], int], changes_received: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_CallbackCounter("planpulse_bus_changes_received", _RECEIVED, changes_received))
        ProcessCollector(registry=r)  # RSS, CPU, open fds of this process (process_*)
        # Faults of the event path, repaired (process-wide counts: storage/retry.py, actors/).
        r.register(_CallbackCounter("planpulse_publish_failures", _PUB_FAIL, _publish_failures))
        r.register(_CallbackCounter("planpulse_db_retries", _DB_RETRIES, lambda: COUNTS.retries))
        r.register(_CallbackCounter("planpulse_db_gave_up", _DB_GAVE_UP, lambda: COUNTS.gave_up))
        self.connections = Gauge("planpulse_connections", "Open WebSocket connections", registry=r)
        self.subscriptions = Gauge("planpulse_subscriptions", "Active subscriptions", registry=r)
        self.actors = Gauge("planpulse_project_actors", "Running project actors", registry=r)
        self.actors.set_function(lambda: float(active_actors()))
        self.changes_handed_over = Counter(
            "planpulse_changes_handed_over",
            "State changes queued for at least one subscriber (to the Dispatcher; the loop writes "
            "them after)",
            registry=r,
        )
        self.frames_delivered = Counter(
            "planpulse_frames_delivered",
            "Frames written to subscribers' connections (WebSocket and SSE)",
            registry=r,
        )
        self.frames_coalesced = Counter(
            "planpulse_frames_coalesced",
            "Undelivered older frames of a node dropped for a newer one (slow subscriber)",
            registry=r,
        )
        self.slow_consumers_closed = Counter(
            "planpulse_slow_consumers_closed",
            "Connections closed with 1013 because their protocol messages could not be "
            "written (a lagging subscription alone is shed, see planpulse_subscriptions_shed)",
            registry=r,
        )
        self.subscriptions_shed = Counter(
            "planpulse_subscriptions_shed",
            "Subscriptions told to resume with afterSequence because they lagged even after "
            "coalescing (a protocol error for that subscription; the connection stays)",
            registry=r,
        )
        # Every live outbox (WebSocket and SSE), for the queue gauges (watch_delivery_queues).
        self.outboxes: weakref.WeakSet[Any] = weakref.WeakSet()
        self._delivered: deque[tuple[str, float]] = deque()  # (timestamp, handed over at)
        self._observing = threading.Lock()
        self.handover_latency = Histogram(
            "planpulse_handover_latency_seconds",
            "From a state change's timestamp to its frames queued for the event loop (the "
            "Dispatcher), on the project actor's thread: before the loop's turn and the write",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def watch_hub(self, hub: Any) -> None:
        """The hub's supervision counts (actors.hub.Hub), read at scrape."""
        self.registry.register(
            _CallbackCounter(
                "planpulse_project_actors_replaced",
                "Project actors that failed and were replaced (subscribers moved, no gap)",
                lambda: hub.actors_replaced,
            )
        )
        self.registry.register(
            _CallbackCounter(
                "planpulse_route_failures",
                "Bus messages a dead project actor could not take (its replacement catches up)",
                lambda: hub.route_failures,
            )
        )

    def watch_delivery_queues(self, hub: Any) -> None:
        """Queue depths and lag along the delivery path (issue 16: bounded everywhere), read
        at scrape, on the event loop: the hub's project actors' inboxes, the Dispatcher's
        queue, every outbox's backlog behind a paused socket."""
        r = self.registry
        r.register(_DeliveryQueues(hub, self.outboxes))
        r.register(
            _CallbackCounter(
                "planpulse_actor_inbox_left_out",
                "Logged changes left out of a full project-actor inbox and read back from the "
                "event log instead (nothing lost)",
                lambda: INBOX_COUNTS.left_out,
            )
        )
        for name, doc, attr in (
            ("planpulse_dispatcher_bursts", "Event-loop bursts that wrote deliveries", "bursts"),
            (
                "planpulse_dispatcher_burst_deliveries",
                "Deliveries the Dispatcher's bursts handed to outboxes",
                "deliveries",
            ),
            (
                "planpulse_dispatcher_wait_seconds",
                "Summed over bursts: from a burst's wake-up being asked for to the loop "
                "running it (the loop's turn and the GIL)",
                "wait_seconds",
            ),
            (
                "planpulse_dispatcher_burst_seconds",
                "Summed over bursts: the loop's time in a burst (outboxes, socket writes), "
                "wall clock, waits for the GIL at each socket write included",
                "burst_seconds",
            ),
        ):
            r.register(
                _CallbackCounter(
                    name,
                    doc,
                    lambda a=attr: sum(getattr(d.timings, a) for d in _dispatchers(self.outboxes)),
                )
            )
        r.register(
            _CallbackCounter(
                "planpulse_dispatcher_producer_waits",
                "Times an actor thread waited because the Dispatcher queue was at its bound",
                lambda: sum(d.producer_waits for d in _dispatchers(self.outboxes)),
            )
        )

    def watch_loadgen(self, timings: Any) -> None:
        """The load generator's stage timings (bench.loadgen.LoadTimings), read at scrape."""
        r = self.registry
        for name, doc, attr in (
            ("planpulse_loadgen_persist_seconds", "Persisting (StateStore)", "persist_seconds"),
            ("planpulse_loadgen_publish_seconds", "Publishing (bus, route)", "publish_seconds"),
            ("planpulse_loadgen_batches", "Load batches committed", "batches"),
            ("planpulse_loadgen_changes", "Load changes committed and published", "changes"),
        ):
            r.register(_CallbackCounter(name, doc, lambda a=attr: getattr(timings, a)))
        lag = Gauge(
            "planpulse_loadgen_lag_seconds",
            "Age of the oldest load change due but not yet persisted",
            registry=r,
        )
        lag.set_function(lambda: float(timings.lag_seconds))
        peak = Gauge(
            "planpulse_loadgen_max_lag_seconds", "Largest load-generator lag seen", registry=r
        )
        peak.set_function(lambda: float(timings.max_lag_seconds))

    def observe_delivery(self, timestamp: str) -> None:
        """A change was handed to its subscribers' outboxes: how long after it happened.

        Called once per change from every actor thread. prometheus-client takes a lock per
        counter and histogram update, and at tens of thousands of changes a second those
        locks became a convoy of GIL hand-offs; so this only appends (atomic) and the
        observations are made in batches, by one thread at a time, and before every scrape.
        """
        self._delivered.append((timestamp, time.time()))
        if len(self._delivered) >= self.OBSERVE_BATCH and self._observing.acquire(False):
            try:
                self._observe_waiting()
            finally:
                self._observing.release()

    OBSERVE_BATCH = 512

    def _observe_waiting(self) -> None:
        waiting = self._delivered
        last_text, happened = "", 0.0  # changes committed together share a timestamp
        count = 0
        for _ in range(len(waiting)):
            timestamp, seen = waiting.popleft()
            if timestamp != last_text:
                try:
                    happened = datetime.fromisoformat(timestamp).timestamp()
                except ValueError:
                    continue
                last_text = timestamp
            self.handover_latency.observe(max(0.0, seen - happened))
            count += 1
        self.changes_handed_over.inc(count)

    def render(self) -> bytes:
        with self._observing:
            self._observe_waiting()
        return generate_latest(self.registry)


_PUB_FAIL = "Committed changes whose publishing or routing failed (repaired from the log)"
_DB_RETRIES = "Database operations run again after a transient error"
_DB_GAVE_UP = "Database operations that kept failing transiently until their deadline"


def _publish_failures() -> int:
    return PUBLISH_FAILURES.value


_RECEIVED = "State changes received from the bus by this process (whether or not watched)"


def _dispatchers(outboxes: Any) -> set[Any]:
    return {outbox.dispatcher for outbox in list(outboxes)}


class _DeliveryQueues(Collector):
    """Depths and lag of the delivery path's queues, measured when scraped."""

    def __init__(self, hub: Any, outboxes: Any) -> None:
        self.hub = hub
        self.outboxes = outboxes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        inboxes = self.hub.inbox_load()
        outboxes = list(self.outboxes)
        dispatchers = _dispatchers(outboxes)
        backlogs = [outbox.backlog_length for outbox in outboxes]
        lag = max(
            [outbox.backlog_age(now) for outbox in outboxes]
            + [d.age(now) for d in dispatchers]
            + [0.0]
        )
        if inboxes.oldest is not None:
            try:
                lag = max(lag, time.time() - datetime.fromisoformat(inboxes.oldest).timestamp())
            except ValueError:
                pass
        for name, doc, value in (
            ("planpulse_actor_inbox_messages", _INBOX_TOTAL, inboxes.total),
            ("planpulse_actor_inbox_max_messages", _INBOX_MAX, inboxes.largest),
            (
                "planpulse_dispatcher_queue_deliveries",
                "Deliveries queued from actor threads for the event loop (bounded)",
                sum(d.waiting for d in dispatchers),
            ),
            (
                "planpulse_outbox_backlog_frames",
                "Frames waiting behind paused sockets, all connections together",
                sum(backlogs),
            ),
            (
                "planpulse_outbox_backlog_max_frames",
                "Frames waiting behind the most backed-up connection's paused socket",
                max(backlogs, default=0),
            ),
            ("planpulse_delivery_lag_seconds", _LAG, max(0.0, lag)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


_INBOX_TOTAL = "Messages waiting in project actors' inboxes, all actors together"
_INBOX_MAX = "Messages waiting in the fullest project actor's inbox (bounded: INBOX_BOUND)"
_LAG = (
    "Age of the oldest event not yet written to its socket: at the head of an actor's inbox, "
    "in the Dispatcher queue or behind a paused socket (0 when nothing waits)"
)


class _CallbackCounter(Collector):
    """A counter whose value is kept elsewhere (the hub counts under its own lock)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], int]) -> None:
        self.name = name
        self.documentation = documentation
        self.value = value

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value())
