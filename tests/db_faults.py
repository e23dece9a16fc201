"""Making chosen statements fail as a dropped database connection does (for tests).

The edge we cannot have on demand is a connection that breaks at one precise hop (the
actor's catch-up, a gap fill, an executor's write, a plan run's start): `DatabaseFault`
raises the driver's own OperationalError from SQLAlchemy's `do_execute` hook for the
statements it matches, so that everything above the driver (SQLAlchemy's wrapping, the
retries, the actors) runs for real. For whole-database cuts the tests use
bench/tcp_proxy.py instead.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event


class DatabaseFault:
    """While armed, statements for which `match(statement, parameters)` is true fail.

    `times`: fail that many matching statements, then let them through (None: until
    `disarm`). `hits` counts the failures raised.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._match: Callable[[str, Any], bool] | None = None
        self._left: int | None = None
        self.hits = 0
        self._driver_error = (
            sqlite3.OperationalError if engine.dialect.name == "sqlite" else _psycopg_error()
        )
        event.listen(engine, "do_execute", self._do_execute)
        event.listen(engine, "do_executemany", self._do_execute)
        event.listen(engine, "do_execute_no_params", self._no_params)

    def arm(self, match: Callable[[str, Any], bool], times: int | None = None) -> None:
        with self._lock:
            self._match, self._left, self.hits = match, times, 0

    def disarm(self) -> None:
        with self._lock:
            self._match = None

    def remove(self) -> None:
        self.disarm()
        event.remove(self.engine, "do_execute", self._do_execute)
        event.remove(self.engine, "do_executemany", self._do_execute)
        event.remove(self.engine, "do_execute_no_params", self._no_params)

    def _no_params(self, cursor: Any, statement: str, context: Any) -> None:
        self._do_execute(cursor, statement, (), context)

    def _do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        with self._lock:
            fire = self._match is not None and self._match(statement, parameters)
            if fire and self._left is not None:
                if self._left <= 0:
                    fire = False
                else:
                    self._left -= 1
            if fire:
                self.hits += 1
        if fire:
            raise self._driver_error("injected: server closed the connection unexpectedly")
        # Not handled: SQLAlchemy runs the statement itself.


def _psycopg_error() -> type[Exception]:
    import psycopg

    return psycopg.OperationalError


def reads_of_the_log(statement: str, _parameters: Any) -> bool:
    """A project actor's reads: the event log (catch-up, gap fill, last sequence)."""
    text = statement.lstrip().upper()
    reads = "EXECUTION_EVENTS" in text or "LAST_SEQUENCE" in text
    return text.startswith("SELECT") and reads and "FOR UPDATE" not in text


def writes_with(value: str) -> Callable[[str, Any], bool]:
    """UPDATEs that set some column to `value` (a state: 'pending', 'processing', …)."""

    def match(statement: str, parameters: Any) -> bool:
        if not statement.lstrip().upper().startswith("UPDATE"):
            return False
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        return value in tuple(values)

    return match
