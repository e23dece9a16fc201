"""Transient database errors are retried with bounded backoff; bugs are not.

A database that is restarting, a dropped connection, a serialization failure or a pool
that is out of connections for a moment are not reasons for a state change to be lost or
a watcher to be left silent: the operation is run again, after 50 ms, 100 ms, 200 ms …
(at most `MAX_DELAY` apart) until it succeeds or `deadline` seconds have passed. Anything
else (an IntegrityError, a ProgrammingError, a bug in our code) is raised at once: running
it again would give the same answer.

`retrying` runs a whole transaction again, so the function it is given must open its own
(`with db.write() as s: …`) and must not have effects outside it. A write whose COMMIT was
cut may have committed: run again, it logs the change twice, which every reader of the log
handles (a second event with the same state), where not running it would lose it.

The counts (`RETRIES`, `GAVE_UP`) are process-wide: the gateway's /metrics shows them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY = 0.05
MAX_DELAY = 2.0
DEFAULT_DEADLINE = 30.0  # executors: the whole of a typical database restart
# PostgreSQL SQLSTATEs that mean "the same transaction may succeed if run again":
# serialization_failure, deadlock_detected, and the connection_exception class (08…),
# admin/crash shutdown (57P01..57P03: the server is going away or coming back).
_TRANSIENT_STATES = ("40001", "40P01", "57P01", "57P02", "57P03")


class _Counts:
    """Process-wide counters of retried and given-up operations (for /metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.retries = 0
        self.gave_up = 0

    def add(self, retries: int = 0, gave_up: int = 0) -> None:
        with self._lock:
            self.retries += retries
            self.gave_up += gave_up


COUNTS = _Counts()


def is_transient(error: BaseException) -> bool:
    """True when running the same transaction again may succeed."""
    if isinstance(error, exc.TimeoutError):  # the pool had no connection in time
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        state = getattr(error.orig, "sqlstate", None)
        if isinstance(state, str) and (state.startswith("08") or state in _TRANSIENT_STATES):
            return True
        if isinstance(error, exc.OperationalError):
            # psycopg: connection refused/reset (no SQLSTATE); SQLite: "database is locked".
            return state is None or state.startswith("08")
    return False


def retrying(
    operation: Callable[[], T],
    *,
    what: str,
    deadline: float = DEFAULT_DEADLINE,
    stop: threading.Event | None = None,
) -> T:
    """Run `operation`; on a transient error run it again with backoff, for up to
    `deadline` seconds (then the last error is raised). `what` names it in the log."""
    started = time.monotonic()
    delay = FIRST_DELAY
    attempt = 0
    while True:
        try:
            result = operation()
        except Exception as error:
            if not is_transient(error):
                raise
            attempt += 1
            elapsed = time.monotonic() - started
            if elapsed + delay > deadline or (stop is not None and stop.is_set()):
                COUNTS.add(gave_up=1)
                log.warning(
                    "database: %s failed %d times in %.1f s, giving up: %s",
                    what,
                    attempt,
                    elapsed,
                    reason(error),
                )
                raise
            COUNTS.add(retries=1)
            if attempt == 1:
                log.warning("database: %s failed, retrying: %s", what, reason(error))
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            continue
        if attempt:
            log.info("database: %s succeeded after %d retries", what, attempt)
        return result


def reason(error: BaseException) -> str:
    """The driver's first line, without SQL text or parameters (for logs and people)."""
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return lines[0] if lines else type(original).__name__
