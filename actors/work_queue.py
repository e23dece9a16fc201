"""The durable work queue between gateways and workers, on PostgreSQL.

Gateways put requests in (`WorkQueue`, a WorkSink); workers take them out and run them on
their local executors (`QueueWorker`). Why PostgreSQL rather than Redis Streams is in the
README ("Running on several machines"); in short: the request is as durable as the state
it changes, and a dead worker's claim ends with its connection, with no timeout to tune.

How a request goes, at least once:

1. A gateway INSERTs a row in `work_requests` and NOTIFYs `planpulse_work` in the same
   transaction. A second run of a project that has one queued or running breaks a unique
   index: the mutation is refused at once, whichever gateway it reached.
2. A worker slot, on its own connection, picks the oldest row nobody holds with
   `SELECT … FOR UPDATE SKIP LOCKED` (concurrent slots never wait for each other), takes a
   session-level advisory lock on its id (the claim), counts the attempt, and commits.
   The claim outlives that short transaction (no transaction stays open while the work
   runs) and ends with the session.
3. The slot runs the request on the executors and waits for its end (a plan run:
   `PlanRunner.wait`), then DELETEs the row and drops the lock.
4. A worker that dies (SIGKILL, host lost: the server's TCP keepalive ends the session)
   loses its session, so its advisory locks go with it and the next poll of any worker
   claims the row again, with `attempts` above 1. Before re-running it, that worker moves
   what the dead one left `pending`/`processing` to `not_started` ("interrupted: …"), a
   legal move, so the re-run goes pending → processing → completed | error again and no
   badge stays in processing. After `max_attempts` the request is given up: its nodes end
   in `error`.

Order: requests for one data source run one after the other, oldest first, as in one
process; and a plan run and a project's data-source requests never overlap (each waits for
the older ones of the other kind). A reprocessing that overlapped a run would move a data
source the run had marked `pending` on by itself; the run's own step for that node then
finds it no longer pending and ends without completing it, and the nodes below it would wait
in `pending` for good (seen by the fault suite after a worker restart, when the backlog of
requests is claimed at once).

Stops: `stopPlanExecution` flags the row and NOTIFYs `planpulse_stop`; the worker holding
the run stops it (it also re-reads the flag while it waits, in case it missed the NOTIFY).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import pykka
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from actors.bus import Bus, publish_committed
from actors.executors import Executors
from actors.node_states import NodeStates
from actors.plan import STOPPED, PlanNode, PlanRefused, plan_for
from actors.state import StateStore, Superseded
from storage import queries
from storage.models import DataSource
from storage.work_requests import (
    CLAIM_LOCK_NAMESPACE,
    PROCESS_DATA_SOURCE,
    RUN_PLAN,
    STOP_CHANNEL,
    WORK_CHANNEL,
    WorkRequest,
)

log = logging.getLogger(__name__)

INTERRUPTED_RETRY = "interrupted: the worker running it stopped; running it again"
UNIQUE_RUN_INDEX = "uq_work_requests_one_run_per_project"
DEFAULT_MAX_ATTEMPTS = 5


def gave_up_message(attempts: int) -> str:
    return (
        f"interrupted {attempts - 1} times (its worker stopped each time): not run again; "
        "run it again when the cause is fixed"
    )


def libpq_url(database_url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://…) as the URL psycopg itself takes."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(
            f"the work queue needs PostgreSQL (--database-url postgresql+psycopg://…), "
            f"not {url.get_backend_name()}: SQLite serves one process, with its own executors"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


# --- the gateway's side -------------------------------------------------------------------


class WorkQueue:
    """A WorkSink that queues requests for worker processes; every method returns at once."""

    def __init__(self, store: StateStore, bus: Bus) -> None:
        if store.db.is_sqlite:
            raise ValueError("the work queue needs PostgreSQL, not SQLite")
        self.store = store
        self.db = store.db
        self.bus = bus

    def process_data_source(self, data_source_id: int) -> int:
        """Queue a data source for processing; returns the request id."""
        with self.db.write() as s:
            source = queries.require_data_source(s, data_source_id)
            row = WorkRequest(
                kind=PROCESS_DATA_SOURCE,
                project_id=source.project_id,
                data_source_id=data_source_id,
            )
            s.add(row)
            s.flush()
            _notify(s, WORK_CHANNEL, str(row.id))
            return row.id

    def run_plan(self, project_id: int, target: str | None = None) -> None:
        # Checked here, not by the worker, so that the mutation answers with the reason.
        plan_for(self.store, project_id, target)
        try:
            with self.db.write() as s:
                row = WorkRequest(kind=RUN_PLAN, project_id=project_id, target=target)
                s.add(row)
                s.flush()
                _notify(s, WORK_CHANNEL, str(row.id))
        except IntegrityError as error:
            constraint = getattr(getattr(error.orig, "diag", None), "constraint_name", None)
            if constraint != UNIQUE_RUN_INDEX:
                raise
            raise PlanRefused(
                f"project {project_id} already has a plan run in progress: wait for it "
                "to end or call stopPlanExecution"
            ) from error

    def stop_plan(self, project_id: int) -> bool:
        """True if the project had a run queued or running (it is being stopped)."""
        with self.db.write() as s:
            ids = s.scalars(
                update(WorkRequest)
                .where(WorkRequest.project_id == project_id, WorkRequest.kind == RUN_PLAN)
                .values(stop_requested=True)
                .returning(WorkRequest.id)
            ).all()
            if ids:
                _notify(s, STOP_CHANNEL, str(project_id))
        return bool(ids)


def _notify(s: Any, channel: str, payload: str) -> None:
    s.execute(
        text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
    )


# --- the worker's side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    kind: str
    project_id: int
    data_source_id: int | None
    target: str | None
    attempts: int
    stop_requested: bool

    def describe(self) -> str:
        what = (
            f"process data source {self.data_source_id}"
            if self.kind == PROCESS_DATA_SOURCE
            else f"run {'node ' + repr(self.target) if self.target else 'the plan'}"
        )
        return f"request {self.id} ({what} of project {self.project_id}, attempt {self.attempts})"


_CLAIM = """
SELECT r.id, r.kind, r.project_id, r.data_source_id, r.target
FROM work_requests r
WHERE NOT EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.classid = %(ns)s::oid
          AND l.objid = r.id::oid AND l.objsubid = 2)
  AND NOT EXISTS (
        SELECT 1 FROM work_requests e
        WHERE e.project_id = r.project_id AND e.id < r.id
          AND (e.kind <> r.kind
               OR (r.kind = 'process_data_source' AND e.data_source_id = r.data_source_id)))
ORDER BY r.id
LIMIT 1
FOR UPDATE OF r SKIP LOCKED
"""

# Server-side TCP keepalive: a worker whose host vanishes loses its session (and so its
# claims) in about 20 s instead of the kernel's default two hours.
_SESSION_SETUP = (
    "SET tcp_keepalives_idle = 10",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 2",
    "SET application_name = 'planpulse-worker'",
)


class _Released(Exception):
    """The worker is shutting down and gave the request back instead of finishing it."""


class _Slot:
    """One request in hand at most, on its own connection (which holds the claim)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: psycopg.Connection[Any] | None = None
        self.request: Claimed | None = None
        self.thread: threading.Thread | None = None
        self.released = False
        self.lock = threading.Lock()  # the connection is used by the slot and by stop()

    def connect(self, conninfo: str) -> psycopg.Connection[Any]:
        if self.conn is None or self.conn.closed:
            conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
            for statement in _SESSION_SETUP:
                conn.execute(statement)
            self.conn = conn
        return self.conn

    def drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass


class QueueWorker:
    """Takes requests off the queue, up to `slots` at once, and runs them on `executors`."""

    def __init__(
        self,
        database_url: str,
        executors: Executors,
        *,
        slots: int = 4,
        poll_interval: float = 1.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        name: str | None = None,
    ) -> None:
        self.conninfo = libpq_url(database_url)
        self.executors = executors
        self.store = executors.store
        self.bus = executors.bus
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._slots = [_Slot(i) for i in range(max(1, slots))]
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._generation = 0
        self._listener: threading.Thread | None = None
        self.done = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._listener = threading.Thread(
            target=self._listen, name="work-queue-listener", daemon=True
        )
        self._listener.start()
        for slot in self._slots:
            slot.thread = threading.Thread(
                target=self._run_slot, args=(slot,), name=f"work-slot-{slot.index}", daemon=True
            )
            slot.thread.start()
        log.info("worker %s: consuming the work queue with %d slots", self.name, len(self._slots))

    def in_hand(self) -> list[Claimed]:
        return [slot.request for slot in self._slots if slot.request is not None]

    def stop(self, grace: float = 30.0) -> list[Claimed]:
        """Take nothing new, let requests in hand finish for `grace` seconds, then give
        the rest back (their claims end; another worker runs them again). Returns those
        given back: their executions may still be running in this process."""
        self._stopping.set()
        self._wake_all()
        deadline = time.monotonic() + grace
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
        released = []
        for slot in self._slots:
            request = slot.request
            if slot.thread is not None and slot.thread.is_alive() and request is not None:
                slot.released = True
                with slot.lock:
                    slot.drop_connection()  # the session ends: so does the claim
                log.warning(
                    "worker %s: gave back %s for another worker (still running at shutdown)",
                    self.name,
                    request.describe(),
                )
                released.append(request)
            else:
                with slot.lock:
                    slot.drop_connection()
        if self._listener is not None:
            self._listener.join(timeout=self.poll_interval + 2)
        return released

    def _wake_all(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    # --- NOTIFY: new work, stops ----------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {WORK_CHANNEL}")
                    conn.execute(f"LISTEN {STOP_CHANNEL}")
                    self._wake_all()  # notifications may have been missed while away
                    delay = 0.1
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=0.5, stop_after=50):
                            if notify.channel == STOP_CHANNEL:
                                self._on_stop(notify.payload)
                            else:
                                self._wake_all()
            except psycopg.Error as error:
                log.warning("worker %s: LISTEN connection lost (%s): retrying", self.name, error)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 2.0)

    def _on_stop(self, payload: str) -> None:
        try:
            project_id = int(payload)
        except ValueError:
            return
        for request in self.in_hand():
            if request.kind == RUN_PLAN and request.project_id == project_id:
                log.info("worker %s: stopping %s", self.name, request.describe())
                self.executors.stop_plan(project_id)

    # --- a slot -------------------------------------------------------------------------

    def _run_slot(self, slot: _Slot) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            generation = self._generation
            try:
                request = self._claim(slot)
                delay = 0.1
            except psycopg.Error as error:
                log.warning("worker %s: cannot claim work (%s): retrying", self.name, error)
                with slot.lock:
                    slot.drop_connection()
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            if request is None:
                with self._wake:
                    if self._generation == generation and not self._stopping.is_set():
                        self._wake.wait(self.poll_interval)
                continue
            if self._stopping.is_set():  # claimed as the shutdown began: give it back
                with slot.lock:
                    slot.drop_connection()
                return
            slot.request = request
            log.info("worker %s: took %s", self.name, request.describe())
            try:
                outcome = self._execute(slot, request)
            except _Released:
                return
            except Exception:  # noqa: BLE001 - give it back; max_attempts bounds retries
                log.exception("worker %s: %s failed; giving it back", self.name, request.describe())
                with slot.lock:
                    slot.drop_connection()
                slot.request = None
                self._stopping.wait(self.poll_interval)  # not a hot loop of failures
                continue
            if slot.released:
                return
            self._finish(slot, request)
            slot.request = None
            self.done += 1
            log.info("worker %s: done with %s: %s", self.name, request.describe(), outcome)

    def _claim(self, slot: _Slot) -> Claimed | None:
        with slot.lock:
            conn = slot.connect(self.conninfo)
            with conn.transaction():
                row = conn.execute(_CLAIM, {"ns": CLAIM_LOCK_NAMESPACE}).fetchone()
                if row is None:
                    return None
                request_id = row[0]
                (locked,) = conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (CLAIM_LOCK_NAMESPACE, request_id)
                ).fetchone()  # type: ignore[misc]
                if not locked:  # claimed by someone between our look and our lock
                    self._wake_all()
                    return None
                attempts, stop_requested = conn.execute(
                    "UPDATE work_requests SET attempts = attempts + 1, claimed_by = %s, "
                    "claimed_at = now() WHERE id = %s RETURNING attempts, stop_requested",
                    (self.name, request_id),
                ).fetchone()  # type: ignore[misc]
        return Claimed(row[0], row[1], row[2], row[3], row[4], attempts, stop_requested)

    def _finish(self, slot: _Slot, request: Claimed) -> None:
        """Delete the done request, then drop the claim (in that order: never claimable
        again once done). If the claim was lost meanwhile (the connection broke), another
        worker may be running it again: at least once, not exactly once."""
        try:
            with slot.lock:
                conn = slot.connect(self.conninfo)
                with conn.transaction():
                    # Only if no one claimed it since (our claim lost with a broken
                    # connection): their run is in progress, and the row is its claim.
                    conn.execute(
                        "DELETE FROM work_requests WHERE id = %s AND attempts = %s",
                        (request.id, request.attempts),
                    )
                conn.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", (CLAIM_LOCK_NAMESPACE, request.id)
                )
        except psycopg.Error as error:
            log.warning(
                "worker %s: could not mark %s done (%s): it may run again",
                self.name,
                request.describe(),
                error,
            )
            with slot.lock:
                slot.drop_connection()

    def _stop_asked(self, slot: _Slot, request: Claimed) -> bool:
        try:
            with slot.lock:
                if slot.conn is None:
                    return False
                row = slot.conn.execute(
                    "SELECT stop_requested FROM work_requests WHERE id = %s", (request.id,)
                ).fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    # --- running a request --------------------------------------------------------------

    def _execute(self, slot: _Slot, request: Claimed) -> str:
        if request.kind == PROCESS_DATA_SOURCE:
            return self._process_data_source(slot, request)
        if request.kind == RUN_PLAN:
            return self._run_plan(slot, request)
        log.warning("worker %s: unknown request kind %r: dropped", self.name, request.kind)
        return "unknown kind"

    def _process_data_source(self, slot: _Slot, request: Claimed) -> str:
        source_id = request.data_source_id
        assert source_id is not None
        if request.attempts > 1:
            gave_up = request.attempts > self.max_attempts
            reason = gave_up_message(request.attempts) if gave_up else INTERRUPTED_RETRY
            settle_data_source(self.store, self.bus, source_id, gave_up, reason)
            if gave_up:
                return "given up"
        future = self.executors.process_data_source(source_id)
        while True:
            try:
                return str(future.get(timeout=self.poll_interval))
            except pykka.Timeout:
                if slot.released:
                    raise _Released from None

    def _run_plan(self, slot: _Slot, request: Claimed) -> str:
        project_id = request.project_id
        if request.attempts > 1 and self.executors.plans.is_running(project_id):
            # Our own claim was lost (the connection broke, the database was cut) while the
            # run goes on here: wait for that run rather than settle its nodes under it.
            log.warning(
                "worker %s: %s: the run is still in progress here; waiting for it",
                self.name,
                request.describe(),
            )
            return self._wait_for_run(slot, request)
        if request.attempts > 1 or request.stop_requested:
            gave_up = request.attempts > self.max_attempts
            if request.stop_requested:
                state, reason = "not_started", STOPPED
            elif gave_up:
                state, reason = "error", gave_up_message(request.attempts)
            else:
                state, reason = "not_started", INTERRUPTED_RETRY
            settled = settle_interrupted(
                self.store, self.bus, project_id, request.target, state, reason
            )
            if settled:
                log.warning(
                    "worker %s: %s: %d nodes left by a dead worker set to %s",
                    self.name,
                    request.describe(),
                    settled,
                    state,
                )
            if request.stop_requested or gave_up:
                return "stopped before it ran" if request.stop_requested else "given up"
        try:
            self.executors.run_plan(project_id, request.target)
        except PlanRefused as refused:
            return f"refused: {refused}"
        except queries.NotFound as missing:
            return f"nothing to run: {missing}"
        return self._wait_for_run(slot, request)

    def _wait_for_run(self, slot: _Slot, request: Claimed) -> str:
        project_id = request.project_id
        while True:
            try:
                outcomes = self.executors.plans.wait(project_id, timeout=self.poll_interval)
            except TimeoutError:
                if slot.released:
                    raise _Released from None
                if self._stop_asked(slot, request):
                    self.executors.stop_plan(project_id)
                continue
            counts: dict[str, int] = {}
            for outcome in outcomes.values():
                counts[outcome] = counts.get(outcome, 0) + 1
            return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))


# --- what a dead worker left behind -------------------------------------------------------


def settle_interrupted(
    store: StateStore,
    bus: Bus,
    project_id: int,
    target: str | None,
    state: str,
    reason: str,
) -> int:
    """Move the nodes of a run (or, if the plan no longer resolves, of the whole project)
    that are still `pending`/`processing` to `state`, publishing each change."""
    try:
        plan_nodes: Iterable[PlanNode] = plan_for(store, project_id, target).order
    except PlanRefused:
        with store.db.read() as s:
            plan_nodes = [
                PlanNode(n.id, n.node_type, dict(n.config or {}), ())
                for n in queries.list_nodes(s, project_id)
            ]
    except queries.NotFound:
        return 0
    states = NodeStates(store, bus, project_id)
    settled = 0
    for node in plan_nodes:
        if node.node_type == "DataSourceNode" and node.data_source_id is None:
            continue
        try:
            if states.set(node, state, expect=("pending", "processing"), error=reason):
                settled += 1
        except queries.NotFound:
            continue
    return settled


def settle_data_source(
    store: StateStore, bus: Bus, data_source_id: int, gave_up: bool, reason: str
) -> bool:
    """A data source a dead worker left `processing`: reset it (or end it in error)."""

    def change(source: DataSource) -> None:
        if source.execution_state not in ("pending", "processing"):
            raise Superseded(source.execution_state)
        if gave_up:
            source.status = "error"
            source.execution_state = "error"
        else:
            source.execution_state = "not_started"
        source.error_message = reason

    try:
        publish_committed(bus, store.data_source(data_source_id, change))
    except (Superseded, queries.NotFound):
        return False
    return True
