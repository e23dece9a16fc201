"""The graphql-ws reference server (bench/reference/server.mjs) and `loadtest --compare`.

The reference runs on Node.js: it must serve the very subscription the load client sends
(sequences 1, 2, 3 … per project, millisecond timestamps, the state alternating), answer the
load mutations and the tail query, and be measured by the harness with nothing lost; then
`--compare` must measure several servers in one invocation and put them in one table.
Small numbers, not timed: figures are for bench/README.md.

Needs `node` (>= 20) and `npm`; without them these tests skip with a reason, except under CI
(CI=true), where a missing tool is a failure. The npm packages are installed from
bench/reference/package-lock.json on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from bench import reference
from bench.client import SUBPROTOCOL, SUBSCRIPTION, TimestampParser
from bench.compare import failed_row, issue16_targets, markdown
from bench.loadtest import rate_list, server_list
from tests.node_tools import node_with_packages

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def node() -> str:
    """`node`, with bench/reference's npm packages installed."""
    return node_with_packages(reference.REFERENCE_DIR, reference.PACKAGES, reference.MIN_NODE_MAJOR)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def reference_url(node: str, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = tmp_path / "reference.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [node, str(reference.SERVER), "--port", str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"the reference exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the reference was not healthy in 30 s:\n{log.read_text()}")
                time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}/graphql"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def _operation(ws: Any, op_id: str, query: str, others: list[dict[str, Any]]) -> Any:
    """One query or mutation over graphql-transport-ws: its `data` (next, then complete).
    Messages of other operations that arrive meanwhile are kept in `others`."""
    payload = {"query": query, "variables": {}}
    await ws.send(orjson.dumps({"id": op_id, "type": "subscribe", "payload": payload}).decode())
    data = None
    while True:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if message.get("id") != op_id:
            others.append(message)
            continue
        assert message["type"] in ("next", "complete"), message
        if message["type"] == "complete":
            return data
        assert "errors" not in message["payload"], message
        data = message["payload"]["data"]


async def _watch_a_load(url: str) -> tuple[list[dict[str, Any]], Any, dict[str, Any]]:
    """Subscribe to project 1 as the load client does, run a small load, read the tail."""
    async with connect(url, subprotocols=[SUBPROTOCOL]) as ws:
        await ws.send('{"type":"connection_init"}')
        assert orjson.loads(await ws.recv())["type"] == "connection_ack"
        others: list[dict[str, Any]] = []
        prepared = await _operation(ws, "p", "mutation { prepareLoad(projects: 2) }", others)
        assert prepared == {"prepareLoad": True}
        subscribe = {"query": SUBSCRIPTION, "variables": {"p": 1}}
        await ws.send(
            orjson.dumps({"id": "s0", "type": "subscribe", "payload": subscribe}).decode()
        )
        await asyncio.sleep(0.2)  # subscribed before the load starts
        load = "mutation { startLoad(projects: 2, eventsPerSecond: 40, seconds: 0.5) }"
        assert await _operation(ws, "l", load, others) == {"startLoad": True}
        while len(others) < 10:
            others.append(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))
        assert {(m["id"], m["type"]) for m in others} == {("s0", "next")}, others
        events = [m["payload"]["data"]["nodeExecutionStatusChanged"] for m in others]
        tail_query = (
            "query { executionEvents(projectId: 1, afterSequence: 8, limit: 10) { sequence } }"
        )
        tail = await _operation(ws, "t", tail_query, others)
        await ws.send('{"id":"s0","type":"complete"}')
    return events, tail, _metrics(url)


def _metrics(url: str) -> dict[str, str]:
    http = url.replace("ws://", "http://").replace("/graphql", "")
    with urllib.request.urlopen(http + "/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return dict(line.split(" ", 1) for line in lines if line[:1] != "#")


def test_the_reference_serves_the_load_clients_subscription(reference_url: str) -> None:
    events, tail, metrics = asyncio.run(_watch_a_load(reference_url))
    # 40 changes/s for 0.5 s round-robin over 2 projects: project 1 gets 10, sequences 1..10
    assert [e["sequence"] for e in events] == list(range(1, 11))
    assert {e["projectId"] for e in events} == {1}
    assert {e["nodeId"] for e in events} == {"load_1"}
    states = [e["datasourceExecution"]["executionState"] for e in events]
    assert states == ["processing", "completed"] * 5
    parse = TimestampParser()
    stamps = [parse(e["timestamp"]) for e in events]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60
    assert tail == {"executionEvents": [{"sequence": 9}, {"sequence": 10}]}
    # project 1's 10th change is the load's 19th: the 20th (project 2's) may still be due
    assert float(metrics["planpulse_bus_changes_received_total"]) in (19, 20)
    deadline = time.monotonic() + 10
    while float(_metrics(reference_url)["planpulse_bus_changes_received_total"]) < 20:
        assert time.monotonic() < deadline, "the load did not publish its 20 changes"
        time.sleep(0.05)
    time.sleep(0.2)
    assert float(_metrics(reference_url)["planpulse_bus_changes_received_total"]) == 20  # no more


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", "loadtest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


SMALL = ("--connections", "20", "--projects", "5", "--subscriptions", "40", "--quiet")


def test_the_harness_starts_and_measures_the_reference_with_nothing_lost(node: str) -> None:
    result = _run("--server", "reference", *SMALL, "--rate", "200", "--seconds", "2", "--json")
    assert result.stdout.strip(), f"no report (exit {result.returncode}):\n{result.stderr}"
    report = orjson.loads(result.stdout)
    assert report["server"]["kind"] == "reference"
    assert "server.mjs" in report["server"]["command"]
    (step,) = report["steps"]
    # 200 events/s for 2 s over 5 projects, 8 subscribers each: 3,200 deliveries
    assert step["server_events"] == step["events"] == 400
    assert (step["lost"], step["duplicates"], step["out_of_order"]) == (0, 0, 0), step["notes"]
    assert step["deliveries"] == step["expected_deliveries"] == 3200
    assert step["closed_connections"] == 0 and step["subscription_errors"] == 0
    assert step["cpu"]["server_percent"] is not None and report["server"]["rss_mb"]["ready"] > 0
    assert result.returncode == 0


def test_compare_measures_the_servers_side_by_side_in_one_invocation(node: str) -> None:
    result = _run(
        "--compare", "baseline,reference", "--rates", "100,150", *SMALL, "--seconds", "1", "--json"
    )
    assert result.stdout.strip(), f"no report (exit {result.returncode}):\n{result.stderr}"
    rows = orjson.loads(result.stdout)["compare"]["rows"]
    # rate by rate, each server in the order asked
    assert [(r["rate"], r["server"]) for r in rows] == [
        (100, "baseline"),
        (100, "reference"),
        (150, "baseline"),
        (150, "reference"),
    ]
    for row in rows:
        assert row["held"], row
        assert (row["lost"], row["duplicates"], row["out_of_order"]) == (0, 0, 0)
        assert row["offered_deliveries_per_s"] == row["rate"] * 8
    assert result.returncode == 0
    table = markdown(rows)
    assert table.count("\n| 800 |") == 2 and "| reference |" in table


# --- pure -------------------------------------------------------------------------------------


def test_server_and_rate_lists_are_read_or_refused_with_the_choices() -> None:
    assert server_list("all") == ["planpulse", "baseline", "reference"]
    assert server_list("reference, planpulse") == ["reference", "planpulse"]
    with pytest.raises(argparse.ArgumentTypeError, match="choose from planpulse"):
        server_list("planpulse,graphql-yoga")
    assert rate_list("4000,6_000") == [4000, 6000]
    with pytest.raises(argparse.ArgumentTypeError, match="positive integers"):
        rate_list("4000,-1")


def _row(server: str, cpu: float, p99: float, kib: float, lost: int = 0) -> dict[str, Any]:
    return {
        "server": server,
        "rate": 6000,
        "offered_deliveries_per_s": 60_000.0,
        "server_cpu_percent": cpu,
        "p99_ms": p99,
        "kib_per_connection": kib,
        "lost": lost,
    }


def test_issue16_targets_are_judged_against_the_baseline_of_the_same_rate() -> None:
    (line,) = issue16_targets([_row("baseline", 80, 75, 16), _row("planpulse", 89, 169, 17.5)])
    assert "server CPU 89.0 ≤ 90.0 % ✔" in line
    assert "p99 169.0 ≤ 170.0 ms ✔" in line
    assert "KiB/conn 17.5 ≤ 18.0 ✔" in line
    assert "p99 (≥ 60k offered) 169.0 ≤ 150.0 ms ✘" in line
    (line,) = issue16_targets([_row("baseline", 80, 75, 16), _row("planpulse", 97, 513, 20, 3)])
    assert line.count("✘") == 5
    assert issue16_targets([_row("reference", 99, 900, 40)]) == []  # no pair to judge


def test_a_server_that_could_not_run_is_a_row_of_the_table_with_its_reason() -> None:
    measured = _row("baseline", 50, 100, 16) | {
        "deliveries_per_s": 60_000.0,
        "held": True,
        "duplicates": 0,
        "out_of_order": 0,
        "p50_ms": 20.0,
        "max_ms": 130.0,
        "clients_cpu_percent": 90.0,
        "other_cpu_percent": 5.0,
    }
    failed = failed_row("reference", 6000, 60_000.0, "node and npm not found on PATH")
    table = markdown([measured, failed]).splitlines()
    assert table[2].startswith("| 60,000 | baseline | 60,000 | yes | 20.0 | 100.0 | 130 | 50 |")
    assert table[3].startswith("| 60,000 | reference | failed: node and npm not found on PATH")
    assert table[3].count("|") == table[2].count("|")
