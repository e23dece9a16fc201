"""Engine and transaction setup, identical in spirit on SQLite and PostgreSQL.

SQLite is the embedded default: one file, WAL journal, and every writing transaction is
opened with ``BEGIN IMMEDIATE`` so that two threads that read-then-write never deadlock on
a lock upgrade (SQLite answers that case with an immediate "database is locked" instead of
waiting). PostgreSQL needs nothing special: row locks serialise what must be serialised.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from storage.migrate import upgrade
from storage.models import Base

DEFAULT_DATABASE_URL = "sqlite:///planpulse.db"
_WRITE = "planpulse_write"


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

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)
        upgrade(self.engine)  # a database made by an earlier version: add what it lacks

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
