"""Engine and transaction setup, identical in spirit on SQLite and PostgreSQL.

SQLite is the embedded default: one file, WAL journal, and every writing transaction is
opened with ``BEGIN IMMEDIATE`` so that two threads that read-then-write never deadlock on
a lock upgrade (SQLite answers that case with an immediate "database is locked" instead of
waiting). PostgreSQL needs nothing special: row locks serialise what must be serialised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage.migrate import upgrade
from storage.models import Base
from storage.retry import is_transient, reason

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///planpulse.db"
DEFAULT_DATABASE_WAIT = 60.0  # seconds a starting process waits for its database
_WRITE = "planpulse_write"
# pg_advisory_lock key held while the schema is created or upgraded: any number of
# processes may start at once on an empty database ("planpulse" in ASCII, as a bigint).
SCHEMA_LOCK = 0x706C616E70756C73
# Errors that waiting does not cure: say so at once.
_PERMANENT = ("authentication failed", "does not exist", "pg_hba.conf", "permission denied")


class DatabaseUnavailable(RuntimeError):
    """The database cannot be used (bad URL, unreachable, refused); one sentence."""


def check_database_url(url: str) -> None:
    """DatabaseUnavailable, with what to give instead, if `url` is no URL at all."""
    try:
        make_url(url)
    except ArgumentError as error:
        raise _bad_url(url, error) from None


def _bad_url(url: str, error: Exception) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"--database-url {url!r} is not a database URL planpulse can use ({reason(error)}): "
        "give sqlite:///path.db or postgresql+psycopg://user@host:5432/name"
    )


def open_database(
    url: str, *, wait: float = DEFAULT_DATABASE_WAIT, pool_size: int = 10
) -> Database:
    """The Database of `url`, reachable and with its schema, for a process that starts.

    A database that is not reachable yet (starting, restarting, its host booting) is
    waited for up to `wait` seconds, with a log line; one that refuses us for good (a bad
    URL, a wrong password, a missing database) ends in a DatabaseUnavailable at once.
    """
    check_database_url(url)
    try:
        db = Database(url, pool_size=pool_size)
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise _bad_url(url, error) from None
    try:
        db.wait_until_reachable(wait)
        db.create_schema()
    except Exception:
        db.dispose()
        raise
    return db


class Database:
    """One engine and two kinds of transactions: ``read()`` and ``write()``."""

    def __init__(self, url: str = DEFAULT_DATABASE_URL, *, pool_size: int = 10) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine = self._sqlite_engine(url)
        else:
            self.engine = create_engine(
                url, pool_size=pool_size, max_overflow=2 * pool_size, pool_pre_ping=True
            )
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False
        )
        # One snapshot for the whole transaction (PostgreSQL's default, READ COMMITTED,
        # takes one per statement). SQLite's read transaction is one snapshot already.
        self._consistent = (
            self._reader
            if self.is_sqlite
            else sessionmaker(
                self.engine.execution_options(isolation_level="REPEATABLE READ"),
                expire_on_commit=False,
            )
        )

    @staticmethod
    def _sqlite_engine(url: str) -> Engine:
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=20,
            max_overflow=40,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # Take transaction control away from the driver so that BEGIN is ours.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
            write = conn.get_execution_options().get(_WRITE, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def wait_until_reachable(self, seconds: float) -> None:
        """Return once a connection opens; wait up to `seconds` for a database that is not
        reachable yet (one log line every few seconds), then DatabaseUnavailable."""
        started = time.monotonic()
        delay, next_log = 0.1, 0.0
        while True:
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except SQLAlchemyError as error:
                why = reason(error)
                waited = time.monotonic() - started
                permanent = any(word in why for word in _PERMANENT) or not (
                    is_transient(error) or "connect" in why.lower()
                )
                if permanent or waited + delay > seconds:
                    raise DatabaseUnavailable(
                        f"cannot use the database {self.describe()}: {why}"
                        + ("" if permanent else f" (waited {waited:.0f} s, --database-wait)")
                    ) from None
                if waited >= next_log:
                    log.warning(
                        "waiting for the database %s (%s): retrying for up to %.0f s more",
                        self.describe(),
                        why,
                        seconds - waited,
                    )
                    next_log = waited + 5.0
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if time.monotonic() - started > 1.0:
                log.info("the database %s is reachable", self.describe())
            return

    def create_schema(self) -> None:
        """Create what is missing, and upgrade an older schema, once however many processes
        start together: on PostgreSQL under an advisory lock (two concurrent CREATE TABLEs
        of one table break each other: UniqueViolation on pg_type), so the second process
        finds the tables made."""
        if self.is_sqlite:
            Base.metadata.create_all(self.engine)
            upgrade(self.engine)  # a database made by an earlier version: add what it lacks
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            conn.commit()
            try:
                Base.metadata.create_all(conn)
                conn.commit()
                upgrade(self.engine)
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
                conn.commit()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (rolled back at the end)."""
        with self._reader() as session, session.begin():
            yield session

    @contextmanager
    def consistent_read(self) -> Iterator[Session]:
        """A read-only transaction whose every query sees the same committed state."""
        with self._consistent() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A writing transaction: committed when the block ends, rolled back on error."""
        with self._writer() as session, session.begin():
            yield session

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - a health check reports, never raises
            return False

    def dispose(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        """The URL without its password, for logs and /healthz."""
        return self.url.render_as_string(hide_password=True)
