"""A worker process (`python run.py worker`): executors fed by the work queue, no gateway.

It publishes every state change on the shared bus (Redis), where the gateways that have
subscribers for the project pick it up. On SIGTERM it takes nothing new, lets the requests
in hand finish for `grace` seconds, and gives back what is still running (another worker
runs it again; see actors/work_queue.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from actors.bus import Bus
from actors.executors import Executors
from actors.messages import BusMessage, StatusChanged
from actors.plan import NodeHook
from actors.redis_bus import RedisBus, bus_from_url
from actors.state import DEFAULT_RETENTION, StateStore
from actors.work_queue import DEFAULT_MAX_ATTEMPTS, QueueWorker, libpq_url
from storage.db import DEFAULT_DATABASE_WAIT, check_database_url, open_database

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    database_url: str
    bus_url: str
    workers: int = 2
    retention: int = DEFAULT_RETENTION
    grace: float = 30.0
    poll_interval: float = 1.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    database_wait: float = DEFAULT_DATABASE_WAIT  # seconds to wait for the database at start


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        before_node: NodeHook | None = None,
        wrap_bus: Any = None,
    ) -> None:
        check_database_url(config.database_url)
        libpq_url(config.database_url)  # refuses SQLite with a clear message
        bus = bus_from_url(config.bus_url, listen=False)
        if not isinstance(bus, RedisBus):
            raise ValueError(
                "a worker needs --bus-url redis://…: its state changes must reach the "
                "gateways' subscribers"
            )
        self.config = config
        self.db = open_database(config.database_url, wait=config.database_wait)
        self.store = StateStore(self.db, retention=config.retention)
        self.bus: Bus = wrap_bus(bus) if wrap_bus is not None else bus
        self._redis = bus
        self.executors = Executors(
            self.store, self.bus, workers=config.workers, before_node=before_node
        )
        self.consumer = QueueWorker(
            config.database_url,
            self.executors,
            slots=2 * max(1, config.workers),
            poll_interval=config.poll_interval,
            max_attempts=config.max_attempts,
        )

    def start(self) -> None:
        self._redis.warn_if_unreachable()
        self.consumer.start()
        log.info("worker ready (database %s, bus %s)", self.db.describe(), self._redis.describe())

    def stop(self) -> bool:
        """True when everything stopped; False when executions given back are still
        running on this process's threads (the caller must exit the process)."""
        released = self.consumer.stop(self.config.grace)
        if released:
            return False
        self.executors.stop()
        self.bus.close()
        self.db.dispose()
        return True


def run_worker(config: WorkerConfig, **hooks: Any) -> int:
    """Run until SIGTERM or SIGINT; the process's exit code."""
    worker = Worker(config, **hooks)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("worker: %s received: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    while not stop.wait(1.0):
        pass
    if worker.stop():
        log.info("worker stopped")
        return 0
    log.info("worker stopped; executions given back end with the process")
    logging.shutdown()
    os._exit(0)  # executor threads still hold work that another worker now owns


# --- test hooks: read only by `run.py worker`, from PLANPULSE_TEST_* variables ---------------


def hooks_from_env(environ: dict[str, str] | Any = os.environ) -> dict[str, Any]:
    """Hooks the multi-process tests use to make a crash land where they want it.

    PLANPULSE_TEST_PAUSE_NODE=<node id>: the worker waits before running that node, until
      the file named by PLANPULSE_TEST_RELEASE_FILE exists (forever if unset): the test
      can then kill the worker with the node in `processing`.
    PLANPULSE_TEST_DROP_PUBLISH=<n>: every n-th status change is persisted but not
      published, as a lossy bus would do: gateways must fill the gaps from the log.

    Never set them in production.
    """
    hooks: dict[str, Any] = {}
    node = environ.get("PLANPULSE_TEST_PAUSE_NODE")
    if node:
        hooks["before_node"] = PauseBefore(node, environ.get("PLANPULSE_TEST_RELEASE_FILE"))
    drop = environ.get("PLANPULSE_TEST_DROP_PUBLISH")
    if drop:
        every = int(drop)
        hooks["wrap_bus"] = lambda bus: DroppingBus(bus, every)
    if hooks:
        log.warning("TEST HOOKS ACTIVE: %s", sorted(hooks))
    return hooks


class PauseBefore:
    def __init__(self, node_id: str, release_file: str | None) -> None:
        self.node_id = node_id
        self.release_file = release_file

    def __call__(self, project_id: int, node_id: str) -> None:
        if node_id != self.node_id:
            return
        log.warning("test hook: pausing before node %s of project %s", node_id, project_id)
        while self.release_file is None or not os.path.exists(self.release_file):
            time.sleep(0.02)
        log.warning("test hook: node %s released", node_id)


class DroppingBus:
    """A Bus that loses every n-th StatusChanged (test hook)."""

    def __init__(self, bus: Bus, every: int) -> None:
        self._bus = bus
        self.every = max(1, every)
        self._count = 0
        self._lock = threading.Lock()

    def publish(self, message: BusMessage) -> None:
        if isinstance(message, StatusChanged):
            with self._lock:
                self._count += 1
                drop = self._count % self.every == 0
            if drop:
                log.warning("test hook: dropped sequence %s", message.sequence)
                return
        self._bus.publish(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)
