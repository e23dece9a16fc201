"""Fixtures: real SQLite files, a real PostgreSQL database, real servers on loopback.

PostgreSQL (127.0.0.1:5432, database `test`, trust auth) and Redis (127.0.0.1:6379) are
used where a feature needs them. Without them those tests skip with a reason, except under
CI (CI=true), where a missing server is a failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from gateway.app import App, AppConfig
from gateway.server import GatewayConfig

PG_ADMIN_URL = os.environ.get(
    "PLANPULSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("PLANPULSE_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def server_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need_server(name: str, host: str, port: int) -> None:
    if server_reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if IN_CI:
        pytest.fail(f"{message} (under CI a missing server is a failure, not a skip)")
    pytest.skip(f"{message}: start it to run this test")


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'planpulse.db'}"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    need_server("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    name = f"planpulse_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied before each test."""
    from sqlalchemy import create_engine

    from storage.models import Base

    engine = create_engine(pg_server_url)
    Base.metadata.drop_all(engine)
    engine.dispose()
    yield pg_server_url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'planpulse.db'}"
    return request.getfixturevalue("pg_url")


class RunningServer:
    """An App on a free loopback port, on its own event loop in a background thread."""

    def __init__(self, config: AppConfig, **app_kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="test-server", daemon=True
        )
        self.thread.start()
        self.app = self.call(self._create(config, app_kwargs))
        self.port = self.app.port
        self.url = f"ws://127.0.0.1:{self.port}/graphql"
        self.http = f"http://127.0.0.1:{self.port}"

    @staticmethod
    async def _create(config: AppConfig, app_kwargs: dict[str, Any]) -> App:
        app = App(config, **app_kwargs)
        await app.start()
        return app

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return  # a test stopped it already
        try:
            self.call(self.app.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def start_server(sqlite_url: str) -> Iterator[Callable[..., RunningServer]]:
    """Start servers (port 0) with any config; all are stopped after the test."""
    servers: list[RunningServer] = []

    def start(
        database_url: str | None = None,
        gateway: GatewayConfig | None = None,
        before_node: Any = None,
        **kwargs: Any,
    ) -> RunningServer:
        """`kwargs` are AppConfig fields; `before_node` is the executors' test hook."""
        gateway = gateway or GatewayConfig(port=0)
        gateway.port = 0 if gateway.port == 8765 else gateway.port
        config = AppConfig(database_url=database_url or sqlite_url, gateway=gateway, **kwargs)
        server = RunningServer(config, before_node=before_node)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server()
