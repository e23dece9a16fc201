"""How StatusChanged and PlanChanged travel from executors to project actors.

In one process the bus is a function call into the hub. Across processes (several gateways,
separate workers) it is Redis pub/sub; that adapter implements the same interface.
"""

from __future__ import annotations

from typing import Protocol

from actors.messages import BusMessage


class Deliver(Protocol):
    def __call__(self, message: BusMessage) -> None: ...


class Bus(Protocol):
    """Publishes after commit; delivers to this process's hub."""

    def publish(self, message: BusMessage) -> None: ...

    def attach(self, deliver: Deliver) -> None:
        """Where messages for this process go (the hub's `route`)."""
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

    def attach(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def publish(self, message: BusMessage) -> None:
        if self._deliver is not None:
            self._deliver(message)

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
