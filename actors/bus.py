"""How StatusChanged and PlanChanged travel from executors to project actors.

In one process the bus is a function call into the hub. Across processes (several gateways,
separate workers) it is Redis pub/sub; that adapter implements the same interface.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from actors.messages import BusMessage

log = logging.getLogger(__name__)


class _Counter:
    """A process-wide count (read by the gateway's /metrics)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


PUBLISH_FAILURES = _Counter()  # committed changes whose publishing or routing failed


def publish_committed(bus: Any, message: BusMessage) -> None:
    """Publish a committed change; never raises (a bus that does is counted and logged:
    the change is in the log, where subscribers catch up from)."""
    try:
        bus.publish(message)
    except Exception:  # noqa: BLE001 - a committed change must not become an executor error
        PUBLISH_FAILURES.add()
        log.exception(
            "publishing sequence %s of project %s failed; subscribers catch up from the log",
            getattr(message, "sequence", "?"),
            message.project_id,
        )


class Deliver(Protocol):
    def __call__(self, message: BusMessage) -> None: ...


class Bus(Protocol):
    """Publishes after commit; delivers to this process's hub."""

    def publish(self, message: BusMessage) -> None: ...

    def attach(self, deliver: Deliver, repair: Callable[[int], None] | None = None) -> None:
        """Where messages for this process go (the hub's `route`); `repair(project_id)`
        has a project's subscribers catch up from the log (after a lost message)."""
        ...

    def watch(self, project_id: int) -> None:
        """This process has an actor for the project: start receiving its messages."""
        ...

    def unwatch(self, project_id: int) -> None: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class InProcessBus:
    """The default: publishing is handing the message to the hub of this very process."""

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._repair: Callable[[int], None] | None = None

    def attach(self, deliver: Deliver, repair: Callable[[int], None] | None = None) -> None:
        self._deliver = deliver
        self._repair = repair

    def publish(self, message: BusMessage) -> None:
        """Never raises: the change is committed and in the log, whatever happens here. A
        failure to route it is counted (`PUBLISH_FAILURES`) and repaired from the log: the
        `repair` given to `attach` (the hub's resync of the project) is asked for it."""
        if self._deliver is None:
            return
        try:
            self._deliver(message)
        except Exception:  # noqa: BLE001 - an executor must never see this
            PUBLISH_FAILURES.add()
            log.exception(
                "routing sequence %s of project %s failed; its subscribers catch up from the log",
                getattr(message, "sequence", "?"),
                message.project_id,
            )
            if self._repair is not None:
                try:
                    self._repair(message.project_id)
                except Exception:  # noqa: BLE001
                    log.exception("repairing project %s from the log failed", message.project_id)

    def watch(self, project_id: int) -> None:
        pass

    def unwatch(self, project_id: int) -> None:
        pass

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        self._deliver = None

    def describe(self) -> str:
        return "in-process"
