"""The one composition root: every planpulse process is built here, for one deployment mode.

A process is one of three things, decided once (`decide`) from the command line or config
and never guessed again from the objects it built:

* `embedded`: one process does everything: the in-process bus, SQLite or PostgreSQL, the
  executors run here (`run.py serve`, the default).
* `gateway`: sockets on a shared bus (Redis), so that other processes' events reach this
  process's subscribers. On PostgreSQL, work goes through the durable queue
  (actors/work_queue.py) and this process's executors, if any, consume it like a worker;
  `--no-executors` leaves all of it to `run.py worker` processes. `serve --processes N` runs
  N of these on one port (gateway/supervisor.py).
* `worker`: no sockets; executors that claim work from the queue and publish on the bus
  (`run.py worker`; its loop is actors/worker.py).

Why here: the composition root has to import every layer, and gateway/ is the top of the
import graph (gateway imports actors and storage, never the reverse); keeping the module's
old name means run.py, gateway/demo.py and the tests start processes the same way as before.
Test hooks (tests/hooks.py) are imported only when one of their PLANPULSE_TEST_* variables
is set, so that no production module carries them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from actors.bus import Bus, InProcessBus
from actors.executors import Executors, WorkSink
from actors.hub import Hub
from actors.messages import Resync
from actors.plan import NodeHook
from actors.redis_bus import REDIS_URL_SCHEMES, RedisBus
from actors.runtime import DEFAULT_THREADS, PooledActor
from actors.state import DEFAULT_RETENTION, StateStore
from actors.work_queue import DEFAULT_MAX_ATTEMPTS, QueueWorker, WorkQueue
from actors.worker import Worker
from gateway.schema import SchemaExtension, make_schema
from gateway.server import Gateway, GatewayConfig
from gateway.services import Services
from storage.db import (
    DEFAULT_DATABASE_URL,
    DEFAULT_DATABASE_WAIT,
    check_database_url,
    open_database,
)

if TYPE_CHECKING:  # benchmark code: never imported at run time without --enable-loadgen
    from bench.loadgen import LoadGenerator

log = logging.getLogger(__name__)


# --- the deployment mode ----------------------------------------------------------------------


class Mode(enum.Enum):
    EMBEDDED = "embedded"
    GATEWAY = "gateway"
    WORKER = "worker"


class DeploymentError(ValueError):
    """A combination of flags no process can run: the message names the flag to change."""


def bus_is_shared(bus_url: str | None) -> bool:
    """False for the in-process bus (unset), True for Redis; an unknown scheme is an error."""
    if not bus_url or bus_url in ("inprocess", "in-process"):
        return False
    if bus_url.startswith(REDIS_URL_SCHEMES):
        return True
    raise DeploymentError(
        f"unknown bus URL {bus_url!r}: use redis://host:6379/0 (or leave it unset for the "
        "in-process bus of a single process)"
    )


@dataclass(frozen=True)
class Deployment:
    """What this process is, and so what it builds (see the module docstring)."""

    mode: Mode
    database_is_sqlite: bool
    executors: bool  # this process runs executors
    processes: int = 1  # gateway processes behind one port (`serve --processes N`)

    @property
    def shared_bus(self) -> bool:
        return self.mode is not Mode.EMBEDDED

    @property
    def work_queue(self) -> bool:
        """Work goes through the PostgreSQL queue, so that exactly one process runs each
        request whichever gateway took it (SQLite has no queue: its executors are local)."""
        return self.shared_bus and not self.database_is_sqlite

    @property
    def serves_sockets(self) -> bool:
        return self.mode is not Mode.WORKER

    def describe(self) -> str:
        if self.mode is Mode.WORKER:
            return "worker (claims work from the queue)"
        if self.work_queue:
            work = "work queue, consumed here too" if self.executors else "work queue only"
        else:
            work = "executors in this process" if self.executors else "no executors"
        processes = f", {self.processes} processes" if self.processes > 1 else ""
        return f"{self.mode.value} ({work}{processes})"


def decide(
    *,
    database_url: str,
    bus_url: str | None,
    mode: Mode | str | None = None,
    executors: bool = True,
    processes: int = 1,
) -> Deployment:
    """The deployment mode for these flags, or a DeploymentError that says what to change.

    `mode` None: `gateway` with a shared --bus-url, `embedded` without one."""
    check_database_url(database_url)
    sqlite = make_url(database_url).get_backend_name() == "sqlite"
    shared = bus_is_shared(bus_url)
    if isinstance(mode, str):
        try:
            mode = Mode(mode)
        except ValueError:
            choices = ", ".join(m.value for m in Mode)
            raise DeploymentError(f"unknown mode {mode!r}: use one of {choices}") from None
    if mode is None:
        mode = Mode.GATEWAY if shared else Mode.EMBEDDED
    if processes < 1:
        raise DeploymentError(f"--processes {processes}: give 1 or more")
    if mode is Mode.WORKER:
        if not shared:
            raise DeploymentError(
                "worker mode needs --bus-url redis://… (or PLANPULSE_BUS_URL): its state "
                "changes must reach the gateways' subscribers"
            )
        if sqlite:
            raise DeploymentError(
                "worker mode needs PostgreSQL (--database-url postgresql+psycopg://…): the "
                "work queue is there; SQLite serves one process, with its own executors"
            )
        return Deployment(Mode.WORKER, database_is_sqlite=False, executors=True)
    if mode is Mode.EMBEDDED and shared:
        raise DeploymentError(
            "embedded mode uses the in-process bus: drop --bus-url, or use --mode gateway "
            "to share projects with other processes over it"
        )
    if mode is Mode.GATEWAY and not shared:
        raise DeploymentError(
            "gateway mode needs --bus-url redis://host:6379/0 (or PLANPULSE_BUS_URL): the "
            "bus is how other processes' events reach this one's subscribers"
        )
    if processes > 1:
        if not shared:
            raise DeploymentError(
                f"--processes {processes} needs a shared bus: add --bus-url "
                "redis://host:6379/0 so that every process sees every project's events "
                "(and a PostgreSQL --database-url), or run --processes 1"
            )
        if sqlite:
            raise DeploymentError(
                f"--processes {processes} needs PostgreSQL (--database-url "
                "postgresql+psycopg://…): every process writes the database and the work "
                "queue lives there; on SQLite run --processes 1"
            )
    return Deployment(mode, database_is_sqlite=sqlite, executors=executors, processes=processes)


# --- test hooks: imported only when asked for ---------------------------------------------------

TEST_HOOK_VARIABLES = ("PLANPULSE_TEST_PAUSE_NODE", "PLANPULSE_TEST_DROP_PUBLISH")


def hooks_from_test_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The hooks the multi-process tests set through PLANPULSE_TEST_* (tests/hooks.py):
    keyword arguments for build_worker (`before_node`, `wrap_bus`; App takes `before_node`);
    {} unless one is set. They live in tests/, which a production install does not have."""
    asked = [name for name in TEST_HOOK_VARIABLES if environ.get(name)]
    if not asked:
        return {}
    try:
        from tests.hooks import hooks_from_env
    except ImportError:
        raise DeploymentError(
            f"{', '.join(asked)} is a test hook and needs the repository's tests/ package: "
            "unset it outside the test suite"
        ) from None
    return hooks_from_env(environ)


# --- a serving process: embedded or gateway ----------------------------------------------------


@dataclass
class AppConfig:
    database_url: str = DEFAULT_DATABASE_URL
    executors: bool = True
    executor_workers: int = 2
    retention: int = DEFAULT_RETENTION
    idle_seconds: float = 30.0
    actor_threads: int = DEFAULT_THREADS  # shared by all project actors
    # None: the in-process bus (embedded). redis://…: a gateway among other processes;
    # with PostgreSQL, work then goes through the durable queue (actors/work_queue.py).
    bus_url: str | None = None
    # None: decided from bus_url (see `decide`); "embedded" or "gateway" to insist.
    mode: Mode | str | None = None
    # Gateway processes on one port (`serve --processes N`): gateway mode on PostgreSQL.
    processes: int = 1
    enable_loadgen: bool = False
    # Seconds to wait at start for a database that is not reachable yet (--database-wait).
    database_wait: float = DEFAULT_DATABASE_WAIT
    gateway: GatewayConfig = field(default_factory=GatewayConfig)

    def deployment(self) -> Deployment:
        return decide(
            database_url=self.database_url,
            bus_url=self.bus_url,
            mode=self.mode,
            executors=self.executors,
            processes=self.processes,
        )


class App:
    """One serving process (embedded or gateway): storage, bus, hub, executors or the work
    queue, the gateway. What `run.py serve` runs and the end-to-end tests start."""

    def __init__(self, config: AppConfig, before_node: NodeHook | None = None) -> None:
        self.config = config
        self.deployment = config.deployment()
        if not self.deployment.serves_sockets:
            raise DeploymentError("worker mode serves no sockets: build it with build_worker")
        PooledActor.use_threads(config.actor_threads)
        self.db = open_database(config.database_url, wait=config.database_wait)
        self.store = StateStore(self.db, retention=config.retention)
        self.redis: RedisBus | None = None
        self.bus: Bus
        if self.deployment.shared_bus:
            self.redis = RedisBus(config.bus_url or "")
            self.bus = self.redis
        else:
            self.bus = InProcessBus()
        self.hub = Hub(
            self.db,
            idle_seconds=config.idle_seconds,
            on_first_subscriber=self.bus.watch,
            on_last_actor_gone=self.bus.unwatch,
        )
        if self.redis is not None:
            # Redis may lose messages; its listener asks (and waits) on a thread of its own.
            self.redis.attach(self.hub.route, resync=self._catch_up)
        else:
            # In one process a failed routing is repaired without blocking the publisher.
            self.bus.attach(self.hub.route, self.hub.resync)
        self.executors = (
            Executors(
                self.store, self.bus, workers=config.executor_workers, before_node=before_node
            )
            if self.deployment.executors
            else None
        )
        # Several processes: work goes through the queue, and this process's executors, if
        # any, consume it like a `run.py worker` does. Each request is claimed by one.
        self.queue_worker: QueueWorker | None = None
        work: WorkSink | None = self.executors
        if self.deployment.work_queue:
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
        self.loadgen: LoadGenerator | None = None
        extensions: list[SchemaExtension] = []
        if config.enable_loadgen:  # benchmark code (bench/): imported only when asked for
            from bench.loadgen_schema import load_generation

            # It runs in the process that received startLoad and publishes on this bus:
            # with several processes it runs in one place, and the bus carries it to all.
            self.loadgen, extension = load_generation(self.store, self.bus)
            extensions.append(extension)
        self.gateway = Gateway(self.services, make_schema(extensions=extensions), config.gateway)
        self.hub.on_delivered = self.gateway.metrics.observe_delivery
        if self.loadgen is not None:
            self.gateway.metrics.watch_loadgen(self.loadgen.timings)

    async def start(self) -> None:
        if self.redis is not None:
            await asyncio.to_thread(self.redis.warn_if_unreachable)
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
            "planpulse listening on ws://%s:%d/graphql (mode %s, database %s, bus %s, pid %d)",
            self.config.gateway.host,
            self.gateway.port,
            self.deployment.describe(),
            self.db.describe(),
            self.redis.describe() if self.redis is not None else "in-process",
            os.getpid(),
        )

    async def stop(self) -> None:
        await self.gateway.stop()
        if self.loadgen is not None:
            await asyncio.to_thread(self.loadgen.stop)
        if self.queue_worker is not None:
            await asyncio.to_thread(self.queue_worker.stop, 10.0)
        if self.executors is not None:
            await asyncio.to_thread(self.executors.stop)
        await asyncio.to_thread(self.hub.stop)
        self.bus.close()
        self.db.dispose()

    def _catch_up(self, project_id: int | None) -> None:
        """The Redis bus may have lost messages: catch up from the event log."""
        if project_id is None:
            self.hub.resync_all()
        else:
            self.hub.ask(project_id, Resync(), timeout=30.0)

    @property
    def port(self) -> int:
        return self.gateway.port


# --- a worker process ---------------------------------------------------------------------------


@dataclass
class WorkerConfig:
    database_url: str
    bus_url: str | None
    workers: int = 2
    retention: int = DEFAULT_RETENTION
    grace: float = 30.0
    poll_interval: float = 1.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    database_wait: float = DEFAULT_DATABASE_WAIT  # seconds to wait for the database at start


def build_worker(
    config: WorkerConfig,
    *,
    before_node: NodeHook | None = None,
    wrap_bus: Any = None,
) -> Worker:
    """A worker process's parts (worker mode): a publishing-only Redis bus, the state store,
    executors and the queue consumer. `before_node` and `wrap_bus` are test hooks."""
    decide(database_url=config.database_url, bus_url=config.bus_url, mode=Mode.WORKER)
    redis = RedisBus(config.bus_url or "", listen=False)
    db = open_database(config.database_url, wait=config.database_wait)
    store = StateStore(db, retention=config.retention)
    bus: Bus = wrap_bus(redis) if wrap_bus is not None else redis
    executors = Executors(store, bus, workers=config.workers, before_node=before_node)
    consumer = QueueWorker(
        config.database_url,
        executors,
        slots=2 * max(1, config.workers),
        poll_interval=config.poll_interval,
        max_attempts=config.max_attempts,
    )
    return Worker(
        db=db,
        bus=bus,
        executors=executors,
        consumer=consumer,
        grace=config.grace,
        check_bus=redis.warn_if_unreachable,
        bus_name=redis.describe(),
    )
