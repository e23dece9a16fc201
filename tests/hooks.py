"""Test hooks for real processes, set through PLANPULSE_TEST_* variables.

The composition root (gateway/app.hooks_from_test_env) imports this module only when one of
those variables is set, so that no production module carries them. `run.py worker` reads
both; `run.py serve` (each of its processes) reads PLANPULSE_TEST_PAUSE_NODE:

PLANPULSE_TEST_PAUSE_NODE=<node id>: the worker waits before running that node, until the
  file named by PLANPULSE_TEST_RELEASE_FILE exists (forever if unset): the test can then
  kill the worker with the node in `processing`.
PLANPULSE_TEST_DROP_PUBLISH=<n>: every n-th status change is persisted but not published,
  as a lossy bus would do: gateways must fill the gaps from the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from actors.bus import Bus
from actors.messages import BusMessage, StatusChanged

log = logging.getLogger(__name__)


def hooks_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Keyword arguments for gateway/app.build_worker (`before_node`, `wrap_bus`)."""
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
    """Holds the executor before one node until a file exists."""

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
    """A Bus that loses every n-th StatusChanged."""

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
