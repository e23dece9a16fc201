"""Real `run.py serve` / `run.py worker` processes for the multi-process tests.

Every process is started on a free loopback port with its output in a log file, and
killed when the test ends (`Cluster.close`, called by the fixtures), so that no test leaves
a process behind. Each cluster has its own Redis channel prefix: concurrent test sessions
(and their project ids, which start at 1 in every database) never hear each other.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import REDIS_URL

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())
    except OSError:
        return 0, {}


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.popen.wait(timeout)


class Cluster:
    def __init__(self, database_url: str, workdir: Path, redis_url: str = REDIS_URL) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.prefix = f"pptest{uuid.uuid4().hex[:10]}"
        sep = "&" if "?" in redis_url else "?"
        self.bus_url = f"{redis_url}{sep}prefix={self.prefix}"
        self.processes: list[Process] = []

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.workdir / f"{name}-{len(self.processes)}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PLANPULSE_")}
        environment.update(env or {})
        handle = log.open("wb")
        popen = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=self.workdir,
            env=environment,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def gateway(self, *, executors: bool = False) -> Process:
        port = free_port()
        args = [
            "serve",
            "--port",
            str(port),
            "--database-url",
            self.database_url,
            "--bus-url",
            self.bus_url,
        ]
        if not executors:
            args.append("--no-executors")
        process = self._spawn("gateway", args)
        process.port = port
        return process

    def worker(self, env: dict[str, str] | None = None, *args: str) -> Process:
        return self._spawn(
            "worker",
            [
                "worker",
                "--database-url",
                self.database_url,
                "--bus-url",
                self.bus_url,
                "--log-level",
                "INFO",
                *args,
            ],
            env,
        )

    def wait_ready(self, *processes: Process, timeout: float = 30.0) -> None:
        """Gateways answer /healthz with 200; workers have logged that they are ready."""
        deadline = time.monotonic() + timeout
        pending = list(processes)
        while pending:
            for process in list(pending):
                if not process.alive():
                    raise AssertionError(f"{process.name} exited:\n{process.output()}")
                if process.port is not None:
                    ready = healthz(process.port)[0] == 200
                else:
                    ready = "worker ready" in process.output()
                if ready:
                    pending.remove(process)
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise AssertionError(f"not ready after {timeout}s: {names}")
            time.sleep(0.02)

    def kill_pubsub_connections(self) -> int:
        """Drop this cluster's gateways' pub/sub connections, as a network blip would
        (what they would have received meanwhile is lost)."""
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            killed = 0
            for info in client.client_list(_type="pubsub"):
                if str(info.get("name", "")).startswith(f"{self.prefix}:"):
                    killed += client.client_kill_filter(_id=info["id"])
            return killed
        finally:
            client.close()

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.popen.send_signal(signal.SIGKILL)
        for process in self.processes:
            try:
                process.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
