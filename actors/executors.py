"""Executor actors: they do the work, persist every state change, then publish it.

A failure of any kind ends in `error` with a message for people, persisted and published:
no node is ever left in `processing` by an exception.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

from actors import processing
from actors.bus import Bus, publish_committed
from actors.messages import StatusChanged
from actors.node_build import parse_stored_source
from actors.plan import NodeHook
from actors.plan_run import PlanRunner, stop_actors
from actors.state import StateStore
from storage import queries
from storage.retry import reason

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessDataSource:
    data_source_id: int


class DataSourceExecutor(pykka.ThreadingActor):
    """Parses data sources: processing → completed (status active) or error."""

    use_daemon_thread = True  # a process that fails or is interrupted still exits

    def __init__(self, store: StateStore, bus: Bus) -> None:
        super().__init__()
        self.store = store
        self.bus = bus

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ProcessDataSource):
            return self.process(message.data_source_id)
        log.warning("data source executor: unknown message %r", message)
        return None

    def _publish(self, change: StatusChanged) -> StatusChanged:
        publish_committed(self.bus, change)
        return change

    def process(self, data_source_id: int) -> str:
        """Run one data source to its final state; returns that state."""
        try:
            self._publish(self.store.data_source_processing(data_source_id))
        except queries.NotFound:
            log.info("data source %s was deleted before processing", data_source_id)
            return "missing"
        try:
            graph = parse_stored_source(self.store, data_source_id)
        except processing.ProcessingError as error:
            self._publish(self.store.data_source_failed(data_source_id, str(error)))
            return "error"
        except Exception as error:  # noqa: BLE001 - must end in error, never in processing
            log.exception("processing data source %s failed", data_source_id)
            message = f"internal error while processing: {type(error).__name__}: {reason(error)}"
            self._publish(self.store.data_source_failed(data_source_id, message))
            return "error"
        self._publish(self.store.data_source_completed(data_source_id, graph.to_json()))
        return "completed"


class WorkSink(Protocol):
    """Where the gateway sends work requests: this process's executors, or a queue that
    worker processes consume. Every method returns at once."""

    def process_data_source(self, data_source_id: int) -> Any: ...

    def run_plan(self, project_id: int, target: str | None = None) -> None:
        """Raises PlanRefused (a message for people) when the run cannot start."""
        ...

    def stop_plan(self, project_id: int) -> bool: ...


class Executors:
    """The executor actors of this process, and the one way to hand them work."""

    def __init__(
        self,
        store: StateStore,
        bus: Bus,
        *,
        workers: int = 2,
        before_node: NodeHook | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self._sources = [DataSourceExecutor.start(store, bus) for _ in range(max(1, workers))]
        self.plans = PlanRunner(store, bus, workers=workers, before_node=before_node)

    def process_data_source(self, data_source_id: int) -> pykka.Future[str]:
        """Queue a data source for processing; the same source always goes to one actor,
        so two requests for it run one after the other, never interleaved."""
        actor = self._sources[data_source_id % len(self._sources)]
        return actor.ask(ProcessDataSource(data_source_id), block=False)

    def run_plan(self, project_id: int, target: str | None = None) -> None:
        self.plans.run(project_id, target)

    def stop_plan(self, project_id: int) -> bool:
        return self.plans.stop(project_id)

    def recover_interrupted(self) -> int:
        changes = self.store.recover_interrupted()
        for change in changes:
            publish_committed(self.bus, change)
        return len(changes)

    def stop(self) -> None:
        self.plans.shutdown()
        stop_actors(self._sources)
