"""Processes start in any order and exit when they should (issue 12, items 5-7).

Real processes (`run.py serve`, `run.py worker`, `run.py token`) on a real PostgreSQL and
Redis; the database that is not there yet is bench/tcp_proxy.py, cut.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from bench.tcp_proxy import TcpProxy
from storage import queries
from tests.conftest import REDIS_URL, need_server
from tests.helpers import wait_until
from tests.test_serve import free_port
from tests.wsclient import RawClient

ROOT = Path(__file__).resolve().parent.parent


def healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as error:  # 503: up, but not healthy
        return error.code
    except OSError:
        return None


def stop(process: subprocess.Popen[Any]) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(120)
def test_gateways_and_a_worker_started_at_once_on_an_empty_database_all_come_up(
    pg_url: str, tmp_path: Path
) -> None:
    need_server("Redis", "127.0.0.1", 6379)
    bus = f"{REDIS_URL}?prefix=start{uuid.uuid4().hex[:8]}"
    ports = [free_port(), free_port()]
    common = ["--database-url", pg_url, "--bus-url", bus, "--log-level", "info"]
    commands = [
        [sys.executable, "run.py", "serve", "--no-executors", "--port", str(p), *common]
        for p in ports
    ] + [[sys.executable, "run.py", "worker", *common]]
    logs = [tmp_path / f"p{i}.log" for i in range(len(commands))]
    processes: list[subprocess.Popen[Any]] = []
    try:
        for command, path in zip(commands, logs, strict=True):
            with path.open("w") as out:
                processes.append(subprocess.Popen(command, cwd=ROOT, stderr=out, stdout=out))
        for port in ports:
            wait_until(lambda p=port: healthz(p) == 200, 60, f"gateway :{port} healthy")
        wait_until(lambda: "worker ready" in logs[2].read_text(), 60, "the worker ready")
        assert all(process.poll() is None for process in processes)
    finally:
        codes = [stop(process) for process in processes]
    for path in logs:
        assert "Traceback" not in path.read_text(), path.read_text()[-3000:]
    assert codes == [0, 0, 0]


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_a_process_started_before_its_database_waits_for_it(pg_url: str, tmp_path: Path) -> None:
    host_port = pg_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    with TcpProxy(host, int(port)) as proxy:
        proxy.cut(3600)  # not there yet: connections refused
        url = pg_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        log = tmp_path / "token.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "run.py", "token", "list", "--database-url", url],
                cwd=ROOT,
                stdout=out,
                stderr=out,
            )
        try:
            wait_until(lambda: "waiting for the database" in log.read_text(), 30, "the log line")
            assert process.poll() is None
            proxy.heal()
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    assert "retrying for up to" in text and "Traceback" not in text


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["worker", "--bus-url", REDIS_URL, "--database-url", "nonsense"], "not a database URL"),
        (["token", "list", "--database-url", "nonsense"], "not a database URL"),
        (
            [
                "worker",
                "--bus-url",
                REDIS_URL,
                "--database-url",
                "postgresql+psycopg://x@127.0.0.1:1/x",
            ],
            "Connection refused",
        ),
        (["token", "list", "--database-url", "postgresql+psycopg://x@127.0.0.1:1/x"], "refused"),
    ],
)
def test_a_bad_or_unreachable_database_url_is_one_sentence_and_a_failure(
    command: list[str], expected: str
) -> None:
    done = subprocess.run(
        [sys.executable, "run.py", *command, "--database-wait", "0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert done.stderr.strip().splitlines()[-1] == errors[0]


def test_an_unreachable_bus_is_a_clear_warning_at_start(sqlite_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "run.py", "serve", "--port", str(port), "--database-url", sqlite_url]
            + ["--bus-url", f"redis://127.0.0.1:{free_port()}/0"],
            cwd=ROOT,
            stderr=out,
            stdout=out,
        )
    try:
        wait_until(lambda: healthz(port) is not None, 60, "the gateway listening")
    finally:
        assert stop(process) == 0
    text = log.read_text()
    warning = next(line for line in text.splitlines() if "is not reachable" in line)
    assert "WARNING" in warning and "starting anyway" in warning and "--bus-url" in warning


EXITS = """
import asyncio, sys
sys.path.insert(0, {root!r})
from gateway.app import App, AppConfig
from gateway.server import GatewayConfig
from storage import queries

async def main():
    app = App(AppConfig(database_url={url!r}, gateway=GatewayConfig(port=0)))
    await app.start()
    with app.db.write() as s:
        pid = queries.create_project(s, "p").id
        source, _ = queries.create_data_source(
            s, pid, name="a", filename="a.csv", file_format="csv", data_type="nodes",
            content="id,label\\na,A\\n")
    app.executors.process_data_source(source.id).get(timeout=30)
    app.executors.run_plan(pid)
    app.executors.plans.wait(pid)
    app.hub.subscribe(pid, Nobody())
    print("running", flush=True)
    raise RuntimeError("a failure nobody cleans up after")

class Nobody:
    key = "k"
    selection = None
    def deliver(self, items, *, replay=False): pass
    def fail(self, errors): pass

asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_a_process_that_fails_without_stopping_its_actors_still_exits(
    sqlite_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "fails.py"
    script.write_text(textwrap.dedent(EXITS.format(root=str(ROOT), url=sqlite_url)))
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=45)
    assert "running" in done.stdout, done.stderr[-3000:]
    assert done.returncode == 1 and "a failure nobody cleans up after" in done.stderr
    assert time.monotonic() - began < 40


def test_an_unexpected_resolver_error_is_a_generic_message_with_a_logged_id(
    server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_s: Any) -> Any:
        raise IntegrityError(
            "SELECT secret FROM projects WHERE x = %(p)s", {"p": "parameter-value-xyz"}, None
        )

    monkeypatch.setattr(queries, "list_projects", broken)

    async def scenario() -> dict[str, Any]:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("q", "{ projects { id } }")
        answer = await client.recv()
        await client.close()
        return answer

    import asyncio

    with caplog.at_level(logging.ERROR):
        answer = asyncio.run(scenario())
    assert answer["type"] == "next", answer
    (error,) = answer["payload"]["errors"]
    assert "SELECT" not in error["message"] and "parameter-value-xyz" not in str(error)
    assert error["message"].startswith("internal server error (id ")
    error_id = error["extensions"]["errorId"]
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    assert f"internal error {error_id}" in caplog.text and "SELECT secret" in caplog.text


def test_a_database_outage_in_a_resolver_says_so_with_an_id(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(_s: Any) -> Any:
        raise OperationalError("SELECT 1", {}, ConnectionError("connection refused"))

    monkeypatch.setattr(queries, "list_projects", unreachable)

    async def scenario() -> dict[str, Any]:
        client = await RawClient.open(server.url)
        await client.init()
        await client.subscribe("q", "{ projects { id } }")
        answer = await client.recv()
        await client.close()
        return answer

    import asyncio

    (error,) = asyncio.run(scenario())["payload"]["errors"]
    assert error["message"].startswith("the database is unavailable right now (id ")
    assert error["extensions"]["code"] == "DATABASE_UNAVAILABLE" and "SELECT" not in str(error)
