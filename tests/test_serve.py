"""`python run.py serve` as a person runs it: logs its address, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.wsclient import RawClient

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_logs_its_address_and_closes_sockets_with_1001_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PLANPULSE_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "run.py", "--database-url", f"sqlite:///{tmp_path / 'p.db'}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                assert process.poll() is None, process.stdout.read()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.05)

        async def scenario() -> tuple[int | None, str]:
            client = await RawClient.open(f"ws://127.0.0.1:{port}/graphql")
            await client.init()
            process.send_signal(signal.SIGTERM)
            return await client.closed()

        assert asyncio.run(scenario()) == (1001, "server shutting down")
        assert process.wait(timeout=30) == 0
        output = process.stdout.read()  # type: ignore[union-attr]
        assert f"planpulse listening on ws://127.0.0.1:{port}/graphql" in output
        assert "stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_bad_configuration_is_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'p.db'}"
    cases = [
        (["--bus-url", "foo://x", "--database-url", database], "unknown bus URL 'foo://x'"),
        (["--database-url", "nonsense"], "Could not parse SQLAlchemy URL"),
    ]
    for flags, expected in cases:
        result = subprocess.run(
            [sys.executable, "run.py", "--port", str(free_port()), *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("error: planpulse cannot start:")
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
