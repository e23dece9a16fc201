"""Prometheus metrics of one gateway (prometheus-client, one registry per server).

A registry per server, not the global one, so that tests can run several servers in one
process and read each one's numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class GatewayMetrics:
    def __init__(self, active_actors: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("planpulse_connections", "Open WebSocket connections", registry=r)
        self.subscriptions = Gauge("planpulse_subscriptions", "Active subscriptions", registry=r)
        self.actors = Gauge("planpulse_project_actors", "Running project actors", registry=r)
        self.actors.set_function(lambda: float(active_actors()))
        self.events_published = Counter(
            "planpulse_events_published", "State changes published by this process", registry=r
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
        self.delivery_latency = Histogram(
            "planpulse_delivery_latency_seconds",
            "From a state change's timestamp to its frame being written",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
