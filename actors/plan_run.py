"""Running a Plan DAG: a PlanRun actor orders the work, NodeWorker actors do it, and the
PlanRunner keeps at most one run per project (the state rules: actors/plan.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pykka

from actors import processing
from actors.bus import Bus
from actors.node_build import InputNotReady, build_graph, parse_stored_source, read_inputs
from actors.node_states import NodeStates
from actors.plan import STOPPED, NodeHook, PlanNode, PlanRefused, RunPlan, plan_for
from actors.processing import GraphData, ProcessingError
from actors.state import StateStore
from storage import queries
from storage.retry import reason, retrying

log = logging.getLogger(__name__)


class PlanRunFailed(RuntimeError):
    """A run ended without settling every node (the database kept failing): whoever
    waits for it must give the work back, so that the next attempt settles them."""


@dataclass(frozen=True, slots=True)
class NodeResult:
    """What a node's work made: its graph, and (graph-like nodes) the digest of its inputs
    and config, stored with the graph so that a run with unchanged inputs reuses it."""

    graph: GraphData
    source_hash: str | None


@dataclass(frozen=True, slots=True)
class RunNode:
    plan: RunPlan
    node_id: str
    reply_to: pykka.ActorRef[Any]


@dataclass(frozen=True, slots=True)
class NodeDone:
    node_id: str
    outcome: str  # "completed" | "error" | "stopped"


@dataclass(frozen=True, slots=True)
class StopRun:
    pass


class NodeWorker(pykka.ThreadingActor):
    """Executes one node at a time: a data source is parsed, a graph-like node built."""

    use_daemon_thread = True  # a process that fails or is interrupted still exits

    def __init__(self, store: StateStore, bus: Bus, before_node: NodeHook | None = None) -> None:
        super().__init__()
        self.store = store
        self.bus = bus
        self.before_node = before_node

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, RunNode):
            try:
                outcome = self.run(message.plan, message.node_id)
            except Exception:  # noqa: BLE001 - the run must always hear back
                log.exception("node %s crashed its worker", message.node_id)
                outcome = "error"
            try:
                message.reply_to.tell(NodeDone(message.node_id, outcome))
            except pykka.ActorDeadError:  # the run ended (aborted): this worker serves others
                log.info("node %s ended after its run: %s", message.node_id, outcome)
        return None

    def run(self, plan: RunPlan, node_id: str) -> str:
        node = plan.by_id[node_id]
        states = NodeStates(self.store, self.bus, plan.project_id)
        if not states.set(node, "processing", expect=("pending",)):
            return "stopped"
        try:
            if self.before_node is not None:
                self.before_node(plan.project_id, node_id)
            result = self._work(plan, node)
        except (ProcessingError, InputNotReady) as error:
            done = states.set(node, "error", expect=("processing",), error=str(error))
            return "error" if done else "stopped"
        except Exception as error:  # noqa: BLE001 - must end in error, never in processing
            log.exception("node %s of project %s failed", node_id, plan.project_id)
            message = f"internal error: {type(error).__name__}: {reason(error)}"
            done = states.set(node, "error", expect=("processing",), error=message)
            return "error" if done else "stopped"
        done = states.set(
            node,
            "completed",
            expect=("processing",),
            graph=result.graph,
            source_hash=result.source_hash,
        )
        return "completed" if done else "stopped"

    def _work(self, plan: RunPlan, node: PlanNode) -> NodeResult:
        if node.node_type == "DataSourceNode":
            graph = parse_stored_source(self.store, node.data_source_id)  # type: ignore[arg-type]
            return NodeResult(graph, source_hash=None)
        inputs = read_inputs(self.store, plan.project_id, node, plan)
        salt = node.node_type + orjson.dumps(node.config, option=orjson.OPT_SORT_KEYS).decode()
        digest = processing.source_hash(inputs, salt)

        def cached() -> GraphData | None:
            with self.store.db.read() as s:
                row = queries.get_graph_by_node(s, plan.project_id, node.id)
                if row is not None and row.source_hash == digest and row.graph_json is not None:
                    return GraphData.from_json(row.graph_json)  # unchanged inputs
            return None

        graph = retrying(cached, what=f"reading node '{node.id}'", deadline=self.store.deadline)
        return NodeResult(graph if graph is not None else build_graph(node, inputs), digest)


class PlanRun(pykka.ThreadingActor):
    """One run of a project's plan: marks nodes pending, dispatches ready ones, stops."""

    use_daemon_thread = True  # a process that fails or is interrupted still exits

    def __init__(
        self,
        plan: RunPlan,
        store: StateStore,
        bus: Bus,
        workers: list[pykka.ActorRef[NodeWorker]],
        on_finished: Callable[..., None],
    ) -> None:
        super().__init__()
        self.plan = plan
        self.states = NodeStates(store, bus, plan.project_id)
        self.workers = workers
        self.on_finished = on_finished
        self.waiting: dict[str, set[str]] = {}
        self.running: set[str] = set()
        self.outcomes: dict[str, str] = {}
        self.stopped = False
        self._next_worker = 0
        # DataSourceNodes naming a data source that another node of the run already names:
        # the source is processed once, and these complete with it.
        self.aliases: dict[str, str] = {}

    def on_start(self) -> None:
        try:
            self._begin()
        except Exception as error:  # noqa: BLE001 - a run that cannot go on says so
            self._abort(error)

    def on_receive(self, message: Any) -> Any:
        try:
            self._handle(message)
        except Exception as error:  # noqa: BLE001 - as on_start
            self._abort(error)
        return None

    def _abort(self, error: Exception) -> None:
        """The run cannot go on (its database writes keep failing, or a bug): every node
        of it still pending or processing ends in `error` with a sentence, published, and
        the run ends. If even that cannot be written, the run ends as failed, and the
        work queue gives the request back (the next claim settles what it left)."""
        log.exception("plan run of project %s cannot continue", self.plan.project_id)
        sentence = (
            f"the plan run stopped: {reason(error)}: run the plan again once the cause is fixed"
        )
        unsettled = 0
        for node_id in [*self.waiting, *self.running]:
            if node_id in self.aliases:
                continue
            self.outcomes[node_id] = "error"
            try:
                self.states.set(
                    self.plan.by_id[node_id],
                    "error",
                    expect=("pending", "processing"),
                    error=sentence,
                )
            except Exception:  # noqa: BLE001 - go on with the others
                unsettled += 1
                log.exception(
                    "plan run of project %s: could not end node %s", self.plan.project_id, node_id
                )
        self.waiting.clear()
        self.running.clear()
        failure = f"{unsettled} nodes could not be set to error" if unsettled else None
        self.on_finished(self.plan.project_id, dict(self.outcomes), failure)
        self.stop()

    def _begin(self) -> None:
        primaries: dict[int, str] = {}
        for node in self.plan.order:
            self.waiting[node.id] = set(node.inputs)
            if node.node_type == "DataSourceNode":
                primary = primaries.setdefault(node.data_source_id, node.id)  # type: ignore[arg-type]
                if primary != node.id:
                    self.aliases[node.id] = primary
                    self.waiting[node.id].add(primary)
                    continue
            self.states.set(node, "pending")
        self._dispatch_ready()
        self._finish_if_done()

    def _handle(self, message: Any) -> None:
        if isinstance(message, NodeDone):
            self.running.discard(message.node_id)
            self.outcomes[message.node_id] = message.outcome
            if message.outcome == "completed" and not self.stopped:
                for waiting in self.waiting.values():
                    waiting.discard(message.node_id)
                self._dispatch_ready()
            elif message.outcome == "error":
                self._skip_downstream_of(message.node_id)
            elif message.outcome == "stopped" and not self.stopped:
                # The node was moved on by someone else (a stop, or a worker settling what
                # it thought a dead worker left): what needs it will not run either, and
                # the run must still end (its nodes would wait in `pending` for good).
                self._skip_downstream_of(message.node_id, why="was reset before it ran")
            self._finish_if_done()
        elif isinstance(message, StopRun):
            self._stop_run()
            self._finish_if_done()

    def _dispatch_ready(self) -> None:
        ready = [node_id for node_id, inputs in self.waiting.items() if not inputs]
        for node_id in ready:  # independent branches run at once, one node per worker
            del self.waiting[node_id]
            self.running.add(node_id)
            if node_id in self.aliases:
                self.actor_ref.tell(NodeDone(node_id, "completed"))
                continue
            worker = self.workers[self._next_worker % len(self.workers)]
            self._next_worker += 1
            worker.tell(RunNode(self.plan, node_id, self.actor_ref))

    def _skip_downstream_of(self, failed: str, why: str = "failed") -> None:
        frontier = [failed]
        while frontier:
            current = frontier.pop()
            for node_id, inputs in list(self.waiting.items()):
                if current in inputs:
                    del self.waiting[node_id]
                    self.outcomes[node_id] = "skipped"
                    cause = why if current == failed else "failed"
                    reason = f"not run: its input '{current}' {cause}"
                    if current != failed:
                        reason += f" (because '{failed}' {why})"
                    self.states.set(
                        self.plan.by_id[node_id], "not_started", expect=("pending",), error=reason
                    )
                    frontier.append(node_id)

    def _stop_run(self) -> None:
        # Not `_stop`: that name is pykka's own (it handles ActorStop), and overriding it
        # kept every finished PlanRun's thread alive, which also blocked process exit.
        self.stopped = True
        for node_id in list(self.waiting):
            del self.waiting[node_id]
            self.outcomes[node_id] = "stopped"
            self.states.set(
                self.plan.by_id[node_id], "not_started", expect=("pending",), error=STOPPED
            )
        for node_id in self.running:
            self.states.set(
                self.plan.by_id[node_id],
                "not_started",
                expect=("pending", "processing"),
                error=STOPPED,
            )

    def _finish_if_done(self) -> None:
        if not self.waiting and not self.running:
            self.on_finished(self.plan.project_id, dict(self.outcomes))
            self.stop()


class PlanRunner:
    """At most one run per project; `run` checks the plan and starts it, `stop` stops it."""

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
        self._workers = [NodeWorker.start(store, bus, before_node) for _ in range(max(1, workers))]
        self._runs: dict[int, pykka.ActorRef[PlanRun]] = {}
        self._finished: dict[int, threading.Event] = {}
        self.last_outcomes: dict[int, dict[str, str]] = {}
        self.last_failures: dict[int, str | None] = {}
        self._lock = threading.Lock()

    def run(self, project_id: int, target: str | None = None) -> RunPlan:
        """Start a run; PlanRefused (with a message for people) if it cannot start."""
        plan = plan_for(self.store, project_id, target)
        with self._lock:
            current = self._runs.get(project_id)
            if current is not None and current.is_alive():
                raise PlanRefused(
                    f"project {project_id} already has a plan run in progress: wait for it "
                    "to end or call stopPlanExecution"
                )
            self._finished[project_id] = threading.Event()
            self._runs[project_id] = PlanRun.start(
                plan, self.store, self.bus, self._workers, self._on_finished
            )
        return plan

    def is_running(self, project_id: int) -> bool:
        """A run of the project is in progress in this process."""
        with self._lock:
            ref = self._runs.get(project_id)
        return ref is not None and ref.is_alive()

    def stop(self, project_id: int) -> bool:
        with self._lock:
            ref = self._runs.get(project_id)
        if ref is None:
            return False
        try:
            ref.tell(StopRun())
        except pykka.ActorDeadError:
            return False
        return True

    def wait(self, project_id: int, timeout: float = 30.0) -> dict[str, str]:
        """Block until the project's current run ends (tests and the demo)."""
        with self._lock:
            finished = self._finished.get(project_id)
        if finished is None or not finished.wait(timeout):
            raise TimeoutError(f"the plan run of project {project_id} did not end in {timeout}s")
        failure = self.last_failures.get(project_id)
        if failure is not None:
            raise PlanRunFailed(f"the plan run of project {project_id} failed: {failure}")
        return self.last_outcomes.get(project_id, {})

    def _on_finished(
        self, project_id: int, outcomes: dict[str, str], failure: str | None = None
    ) -> None:
        with self._lock:
            self._runs.pop(project_id, None)
            self.last_outcomes[project_id] = outcomes
            self.last_failures[project_id] = failure
            finished = self._finished.get(project_id)
        if finished is not None:
            finished.set()

    def shutdown(self) -> None:
        with self._lock:
            runs = list(self._runs.values())
        stop_actors([*runs, *self._workers])


def stop_actors(refs: list[pykka.ActorRef[Any]], timeout: float = 10) -> None:
    """Stop actors one by one, waiting for each; one already dead or stuck is skipped."""
    for ref in refs:
        try:
            ref.stop(block=True, timeout=timeout)
        except (pykka.Timeout, pykka.ActorDeadError):
            pass
