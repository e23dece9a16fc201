"""Assembling one planpulse process: storage, bus, hub, executors, gateway.

`App` is what `run.py serve` runs and what the end-to-end tests start on a free port: the
same wiring in both, so the tests exercise the real thing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from actors.bus import Bus
from actors.executors import Executors, WorkSink
from actors.hub import Hub
from actors.loadgen import LoadGenerator
from actors.messages import Resync
from actors.plan import NodeHook
from actors.redis_bus import RedisBus, bus_from_url
from actors.runtime import DEFAULT_THREADS, PooledActor
from actors.state import DEFAULT_RETENTION, StateStore
from actors.work_queue import QueueWorker, WorkQueue
from gateway.schema import Services, make_schema
from gateway.server import Gateway, GatewayConfig
from storage.db import DEFAULT_DATABASE_URL, DEFAULT_DATABASE_WAIT, open_database

log = logging.getLogger(__name__)


@dataclass
class AppConfig:
    database_url: str = DEFAULT_DATABASE_URL
    executors: bool = True
    executor_workers: int = 2
    retention: int = DEFAULT_RETENTION
    idle_seconds: float = 30.0
    actor_threads: int = DEFAULT_THREADS  # shared by all project actors
    # None: the in-process bus (one process). redis://…: several gateways and workers;
    # with PostgreSQL, work then goes through the durable queue (actors/work_queue.py).
    bus_url: str | None = None
    enable_loadgen: bool = False
    # Seconds to wait at start for a database that is not reachable yet (--database-wait).
    database_wait: float = DEFAULT_DATABASE_WAIT
    gateway: GatewayConfig = field(default_factory=GatewayConfig)


class App:
    def __init__(
        self, config: AppConfig, bus: Bus | None = None, before_node: NodeHook | None = None
    ) -> None:
        self.config = config
        PooledActor.use_threads(config.actor_threads)
        self.db = open_database(config.database_url, wait=config.database_wait)
        self.store = StateStore(self.db, retention=config.retention)
        self.bus = bus or bus_from_url(config.bus_url)
        self.hub = Hub(
            self.db,
            idle_seconds=config.idle_seconds,
            on_first_subscriber=self.bus.watch,
            on_last_actor_gone=self.bus.unwatch,
        )
        if isinstance(self.bus, RedisBus):
            self.bus.attach(self.hub.route, resync=self._resync)
        else:
            self.bus.attach(self.hub.route, self.hub.resync)
        self.executors = (
            Executors(
                self.store, self.bus, workers=config.executor_workers, before_node=before_node
            )
            if config.executors
            else None
        )
        # Several processes (a shared bus on PostgreSQL): work goes through the queue, and
        # this process's executors, if any, consume it like a `run.py worker` does.
        self.queue_worker: QueueWorker | None = None
        work: WorkSink | None = self.executors
        if isinstance(self.bus, RedisBus) and not self.db.is_sqlite:
            work = WorkQueue(self.store, self.bus)
            if self.executors is not None:
                self.queue_worker = QueueWorker(
                    config.database_url, self.executors, slots=2 * config.executor_workers
                )
        elif self.executors is None:
            log.warning(
                "no executors and no work queue: mutations that run work will be refused "
                "(the queue needs --bus-url redis://… and a PostgreSQL --database-url)"
            )
        self.services = Services(
            db=self.db, store=self.store, bus=self.bus, hub=self.hub, work=work
        )
        if config.enable_loadgen:
            self.services.loadgen = LoadGenerator(self.store, self.bus)
        self.gateway = Gateway(
            self.services, make_schema(loadgen=config.enable_loadgen), config.gateway
        )
        self.hub.on_delivered = self.gateway.metrics.observe_delivery
        if self.services.loadgen is not None:
            self.gateway.metrics.watch_loadgen(self.services.loadgen.timings)

    async def start(self) -> None:
        if isinstance(self.bus, RedisBus):
            await asyncio.to_thread(self.bus.warn_if_unreachable)
        if self.queue_worker is not None:
            # No global recovery here: other processes' executions are running. What a
            # dead worker left is settled by whoever claims its request again.
            self.queue_worker.start()
        elif self.executors is not None:
            recovered = self.executors.recover_interrupted()
            if recovered:
                log.warning("%d executions interrupted by a restart were set to error", recovered)
        await self.gateway.start()
        log.info(
            "planpulse listening on ws://%s:%d/graphql (database %s, bus %s)",
            self.config.gateway.host,
            self.gateway.port,
            self.db.describe(),
            getattr(self.bus, "describe", lambda: "custom")(),
        )

    async def stop(self) -> None:
        await self.gateway.stop()
        if self.services.loadgen is not None:
            await asyncio.to_thread(self.services.loadgen.stop)
        if self.queue_worker is not None:
            await asyncio.to_thread(self.queue_worker.stop, 10.0)
        if self.executors is not None:
            await asyncio.to_thread(self.executors.stop)
        await asyncio.to_thread(self.hub.stop)
        self.bus.close()
        self.db.dispose()

    def _resync(self, project_id: int | None) -> None:
        """The Redis bus may have lost messages: catch up from the event log."""
        if project_id is None:
            self.hub.resync_all()
        else:
            self.hub.ask(project_id, Resync(), timeout=30.0)

    @property
    def port(self) -> int:
        return self.gateway.port
