"""Assembling one planpulse process: storage, bus, hub, executors, gateway.

`App` is what `run.py serve` runs and what the end-to-end tests start on a free port: the
same wiring in both, so the tests exercise the real thing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from actors.bus import Bus, InProcessBus
from actors.executors import Executors
from actors.hub import Hub
from actors.plan import NodeHook
from actors.state import DEFAULT_RETENTION, StateStore
from gateway.schema import Services, make_schema
from gateway.server import Gateway, GatewayConfig
from storage.db import DEFAULT_DATABASE_URL, Database

log = logging.getLogger(__name__)


@dataclass
class AppConfig:
    database_url: str = DEFAULT_DATABASE_URL
    executors: bool = True
    executor_workers: int = 2
    retention: int = DEFAULT_RETENTION
    idle_seconds: float = 60.0
    gateway: GatewayConfig = field(default_factory=GatewayConfig)


class App:
    def __init__(
        self, config: AppConfig, bus: Bus | None = None, before_node: NodeHook | None = None
    ) -> None:
        self.config = config
        self.db = Database(config.database_url)
        self.db.create_schema()
        self.store = StateStore(self.db, retention=config.retention)
        self.bus = bus or InProcessBus()
        self.hub = Hub(
            self.db,
            idle_seconds=config.idle_seconds,
            on_first_subscriber=self.bus.watch,
            on_last_actor_gone=self.bus.unwatch,
        )
        self.bus.attach(self.hub.route)
        self.executors = (
            Executors(
                self.store, self.bus, workers=config.executor_workers, before_node=before_node
            )
            if config.executors
            else None
        )
        self.services = Services(
            db=self.db, store=self.store, bus=self.bus, hub=self.hub, work=self.executors
        )
        self.gateway = Gateway(self.services, make_schema(), config.gateway)
        self.hub.on_delivered = self.gateway.metrics.observe_delivery

    async def start(self) -> None:
        if self.executors is not None:
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
        if self.executors is not None:
            await asyncio.to_thread(self.executors.stop)
        await asyncio.to_thread(self.hub.stop)
        self.bus.close()
        self.db.dispose()

    @property
    def port(self) -> int:
        return self.gateway.port
