"""Servers measured in turn by the same load, repeated, medians: planpulse beside bare websockets.

    python -m bench.side_by_side --repeat 3 --rate 4000 \\
        bare=. before=/tmp/main-checkout after=.

Each `name=TREE[:ARG,ARG]` is a source tree whose `run.py loadtest` is run (with
`PYTHONPATH=TREE`, so "before" can be a `git archive` of another commit); the name `bare`
runs `--server baseline`, anything else planpulse with the ARGs as `--server-arg`s. The
servers alternate (bare, before, after, bare, …) so that a busy spell of this shared
machine falls on all of them alike; every run's row is printed as it ends, then the
medians. Scenario F by default (1,000 connections, 100 projects, 10 subscribers each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from typing import Any

from bench.loadtest import loadtest_command

FIELDS = ("p99", "server_cpu", "other_cpu", "kib_per_conn", "lost", "closed", "deliveries_per_s")


def run_once(tree: str, bare: bool, server_args: list[str], args: argparse.Namespace) -> dict:
    command = loadtest_command(
        "run.py",
        connections=args.connections,
        projects=args.projects,
        subscriptions=args.subscriptions,
        rate=args.rate,
        seconds=args.seconds,
        extra=["--json"],
    )
    if bare:
        command += ["--server", "baseline"]
    command += [f"--server-arg={arg}" for arg in server_args]
    done = subprocess.run(
        command,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": os.path.abspath(tree)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    step = report["steps"][0]
    return {
        "p99": step["latency_ms"]["p99"],
        "server_cpu": step["cpu"]["server_percent"],
        "other_cpu": step["cpu"]["other_percent"],
        "kib_per_conn": report["server"].get("kib_per_connection"),
        "lost": step["lost"],
        "closed": step["closed_connections"],
        "deliveries_per_s": step["deliveries_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="+", metavar="NAME=TREE[:ARG,ARG]")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=int, default=4000, help="events/s (×10 subscribers)")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--subscriptions", type=int, default=1000)
    args = parser.parse_args(argv)
    servers = []
    for spec in args.servers:
        name, _, rest = spec.partition("=")
        tree, _, extra = rest.partition(":")
        servers.append((name, tree or ".", extra.split(",") if extra else []))
    rows: dict[str, list[dict]] = {name: [] for name, _tree, _extra in servers}
    for turn in range(args.repeat):
        for name, tree, extra in servers:
            try:
                row = run_once(tree, name == "bare", extra, args)
            except (ValueError, KeyError, subprocess.TimeoutExpired) as error:
                print(f"{turn} {name}: failed ({error!r})", flush=True)
                continue
            rows[name].append(row)
            print(turn, name, json.dumps(row), flush=True)
    print(f"\nmedians ({args.rate * args.subscriptions // args.projects:,} deliveries/s offered)")
    print("| server | runs | " + " | ".join(FIELDS) + " |")
    print("|---" * (len(FIELDS) + 2) + "|")
    for name, found in rows.items():
        medians = [
            statistics.median([r[f] for r in found if r[f] is not None] or [0]) for f in FIELDS
        ]
        print(f"| {name} | {len(found)} | " + " | ".join(f"{m:,.1f}" for m in medians) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
