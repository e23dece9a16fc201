"""Prometheus metrics of one gateway (prometheus-client, one registry per server).

A registry per server, not the global one, so that tests can run several servers in one
process and read each one's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class GatewayMetrics:
    def __init__(
        self, active_actors: Callable[[], int], changes_published: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_CallbackCounter("planpulse_events_published", _PUBLISHED, changes_published))
        ProcessCollector(registry=r)  # RSS, CPU, open fds of this process (process_*)
        self.connections = Gauge("planpulse_connections", "Open WebSocket connections", registry=r)
        self.subscriptions = Gauge("planpulse_subscriptions", "Active subscriptions", registry=r)
        self.actors = Gauge("planpulse_project_actors", "Running project actors", registry=r)
        self.actors.set_function(lambda: float(active_actors()))
        self.events_delivered = Counter(
            "planpulse_events_delivered",
            "State changes handed to at least one subscriber's outbox",
            registry=r,
        )
        self.frames_delivered = Counter(
            "planpulse_frames_delivered", "Frames written to WebSocket connections", registry=r
        )
        self.frames_coalesced = Counter(
            "planpulse_frames_coalesced",
            "Undelivered older frames of a node dropped for a newer one (slow subscriber)",
            registry=r,
        )
        self.slow_consumers_closed = Counter(
            "planpulse_slow_consumers_closed",
            "Connections closed because a subscriber could not keep up",
            registry=r,
        )
        self._last_timestamp: tuple[str, float] = ("", 0.0)
        self.delivery_latency = Histogram(
            "planpulse_delivery_latency_seconds",
            "From a state change's timestamp to its frame being written",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def observe_delivery(self, timestamp: str) -> None:
        """A change was handed to its subscribers' outboxes: how long after it happened.

        Called once per change from the actor threads; changes committed together share
        a timestamp, so the last parse is kept (one tuple, replaced atomically)."""
        last_text, happened = self._last_timestamp
        if timestamp != last_text:
            try:
                happened = datetime.fromisoformat(timestamp).timestamp()
            except ValueError:
                return
            self._last_timestamp = (timestamp, happened)
        self.events_delivered.inc()
        self.delivery_latency.observe(max(0.0, time.time() - happened))

    def render(self) -> bytes:
        return generate_latest(self.registry)


_PUBLISHED = "State changes received from the bus by this process (whether or not watched)"


class _CallbackCounter(Collector):
    """A counter whose value is kept elsewhere (the hub counts under its own lock)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], int]) -> None:
        self.name = name
        self.documentation = documentation
        self.value = value

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.value())
