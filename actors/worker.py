"""A worker process's life (`python run.py worker`): executors fed by the work queue.

Its parts are built by the composition root (gateway/app.build_worker, worker mode); this
module is only what the process does with them. It publishes every state change on the
shared bus (Redis), where the gateways that have subscribers for the project pick it up. On
SIGTERM it takes nothing new, lets the requests in hand finish for `grace` seconds, and
gives back what is still running (another worker runs it again; see actors/work_queue.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from actors.bus import Bus
from actors.executors import Executors
from actors.work_queue import QueueWorker
from storage.db import Database

log = logging.getLogger(__name__)


class Worker:
    """Executors and the queue consumer of one worker process, started and stopped."""

    def __init__(
        self,
        *,
        db: Database,
        bus: Bus,
        executors: Executors,
        consumer: QueueWorker,
        grace: float,
        check_bus: Callable[[], Any] = lambda: None,
        bus_name: str = "",
    ) -> None:
        self.db = db
        self.bus = bus
        self.executors = executors
        self.consumer = consumer
        self.grace = grace
        self._check_bus = check_bus  # at start: one ping, a warning if the bus is not there
        self._bus_name = bus_name

    def start(self) -> None:
        self._check_bus()
        self.consumer.start()
        log.info("worker ready (database %s, bus %s)", self.db.describe(), self._bus_name)

    def stop(self) -> bool:
        """True when everything stopped; False when executions given back are still
        running on this process's threads (the caller must exit the process)."""
        released = self.consumer.stop(self.grace)
        if released:
            return False
        self.executors.stop()
        self.bus.close()
        self.db.dispose()
        return True


def run_worker(worker: Worker) -> int:
    """Run until SIGTERM or SIGINT; the process's exit code."""
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
