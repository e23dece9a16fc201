"""1 vs N gateway processes (`serve --processes N`), same load, alternating runs.

    python -m bench.processes --rates 1000 2000 --repeat 3

Each run: a fresh PostgreSQL database, a private Redis channel prefix, a server started as
`run.py serve --enable-loadgen [--processes N] --database-url … --bus-url …` (or embedded:
no bus), then `run.py loadtest --url … --json` against it (scenario F's shape: 1,000
connections, 100 projects, 10 subscribers per project), then SIGTERM. Configurations
alternate inside each repeat so that the machine's noise falls on all of them; the table
gives medians over the repeats.

Server CPU is summed over the gateway processes (the children, for --processes N), sampled
from /proc every 0.25 s, over the busiest --seconds window (the load step); the
load generator runs in the one process that received startLoad (every process's share of
the deliveries arrives over the Redis bus).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.databases import drop_database, fresh_database
from bench.loadtest import cpu_seconds, free_port, loadtest_command

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("PLANPULSE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("PLANPULSE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class Setup:
    name: str
    processes: int
    shared_bus: bool


SETUPS = {
    "embedded": Setup("embedded, 1 process (in-process bus)", 1, False),
    "gateway-1": Setup("gateway, 1 process (Redis bus)", 1, True),
    "gateway-2": Setup("gateway, 2 processes (Redis bus)", 2, True),
}


class CpuSampler(threading.Thread):
    """(time, CPU-seconds of the given pids) every 0.25 s."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            total = sum(cpu_seconds(p) or 0.0 for p in self.pids)
            self.samples.append((time.time(), total))

    def busiest(self, seconds: float) -> float | None:
        """CPU in cores (1.0: one core busy) over the busiest `seconds`-long window: the
        load step (its start is not visible from here; connecting and preparing cost less)."""
        best = None
        samples = self.samples
        j = 0
        for i, (t0, c0) in enumerate(samples):
            j = max(j, i)
            while j + 1 < len(samples) and samples[j + 1][0] - t0 <= seconds:
                j += 1
            t1, c1 = samples[j]
            if t1 - t0 >= seconds * 0.9:
                share = (c1 - c0) / (t1 - t0)
                best = share if best is None else max(best, share)
        return best


def start_server(setup: Setup, database: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        str(ROOT / "run.py"),
        "serve",
        "--enable-loadgen",
        "--port",
        str(port),
        "--database-url",
        database,
        "--processes",
        str(setup.processes),
    ]
    if setup.shared_bus:
        command += ["--bus-url", f"{REDIS}?prefix=ppbench{uuid.uuid4().hex[:8]}"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PLANPULSE_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )


def wait_ready(server: subprocess.Popen[bytes], port: int, setup: Setup, log: Path) -> list[int]:
    """The pids of the gateway processes, once the port answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        text = log.read_text(errors="replace")
        if setup.processes == 1 or "gateway processes ready" in text:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    pass
            except OSError:
                time.sleep(0.1)
                continue
            if setup.processes == 1:
                return [server.pid]
            return [int(p) for p in re.findall(r"started \(pid (\d+)\)", text)]
        time.sleep(0.1)
    raise RuntimeError(f"the server did not come up:\n{log.read_text()}")


def one_run(setup: Setup, rate: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    database, database_name = fresh_database(PG_ADMIN, "ppbench")
    port = free_port()
    log = workdir / f"server-{uuid.uuid4().hex[:6]}.log"
    server = start_server(setup, database, port, log)
    try:
        pids = wait_ready(server, port, setup, log)
        sampler = CpuSampler(pids)
        sampler.start()
        command = loadtest_command(
            ROOT / "run.py",
            connections=args.connections,
            projects=args.projects,
            subscriptions=args.subscriptions,
            rate=rate,
            seconds=args.seconds,
            extra=["--url", f"ws://127.0.0.1:{port}/graphql", "--json"],
        )
        done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600)
        sampler.stopping.set()
        report = orjson.loads(done.stdout)
        step = report["steps"][-1]
        cores = sampler.busiest(args.seconds)
        return {
            "setup": setup.name,
            "rate": rate,
            "offered": step["offered_deliveries_per_s"],
            "deliveries_per_s": step["deliveries_per_s"],
            "p50": step["latency_ms"]["p50"],
            "p99": step["latency_ms"]["p99"],
            "lost": step["lost"],
            "duplicates": step["duplicates"],
            "server_cores": cores,
            "verdict": step["verdict"],
            "notes": step["notes"],
            "closed_connections": step["closed_connections"],
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(40)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        drop_database(PG_ADMIN, database_name)


def median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--rates", nargs="+", type=int, default=[1000, 2000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="every run, as JSON lines")
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="planpulse-processes-") as tmp:
        for repeat in range(args.repeat):
            for rate in args.rates:
                order = args.setups if repeat % 2 == 0 else list(reversed(args.setups))
                for key in order:
                    result = one_run(SETUPS[key], rate, args, Path(tmp))
                    result["repeat"] = repeat
                    runs.append(result)
                    line = orjson.dumps(result).decode() if args.json else _line(result)
                    print(line, file=sys.stderr, flush=True)
    print(
        "| events/s | offered deliveries/s | setup | deliveries/s | p50 ms | p99 ms "
        "| server cores | lost | runs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rate in args.rates:
        for key in args.setups:
            mine = [r for r in runs if r["rate"] == rate and r["setup"] == SETUPS[key].name]
            cores = median([r["server_cores"] for r in mine])
            print(
                f"| {rate:,} | {mine[0]['offered']:,.0f} | {SETUPS[key].name} "
                f"| {median([r['deliveries_per_s'] for r in mine]):,.0f} "
                f"| {median([r['p50'] for r in mine]):.0f} "
                f"| {median([r['p99'] for r in mine]):.0f} "
                f"| {cores:.2f} | {sum(r['lost'] for r in mine)} | {len(mine)} |"
                if cores is not None
                else f"| {rate:,} | … | {SETUPS[key].name} | (no CPU samples) |"
            )
    return 0


def _line(result: dict[str, Any]) -> str:
    cores = result["server_cores"]
    return (
        f"{result['setup']:<36} rate {result['rate']:>6,}: {result['deliveries_per_s']:>9,.0f} "
        f"deliveries/s, p99 {result['p99']:>7.0f} ms, server "
        f"{'?' if cores is None else f'{cores:.2f}'} cores, lost {result['lost']}: "
        f"{result['verdict']}"
    )


if __name__ == "__main__":
    sys.exit(main())
