"""The load test's client: its accounting, and a short real run (small numbers, not timed).

The real run starts `run.py serve --enable-loadgen` as a separate process, as an operator
would, and points `run.py loadtest --url` at it: every delivery must arrive, once, in order.
The same client is run against the bare-websockets baseline, so a failure there is the
client's own. Figures (rates, latencies) are for bench/, never asserted here.
"""

from __future__ import annotations

import os
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

from bench.client import TimestampParser
from bench.loadtest import format_report, plan_subscriptions
from bench.stats import Histogram, Tally, account, bucket_of, bucket_value

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"

# --- accounting (pure) ------------------------------------------------------------------------


def test_a_clean_fan_out_counts_every_delivery_as_expected() -> None:
    tallies = [Tally(p, 1, 10, 10, 0, 0, 0) for p in (1, 2) for _ in range(3)]
    report = account(tallies, server_last={1: 10, 2: 10}, server_events=20)
    assert (report.lost, report.duplicates, report.out_of_order) == (0, 0, 0)
    assert report.expected == report.received == 60
    assert report.events == 20


def test_gaps_head_and_tail_are_lost() -> None:
    tallies = [
        Tally(1, 1, 10, 10, 0, 0, 0),  # complete
        Tally(1, 3, 10, 7, 0, 0, 1),  # missed 1 and 2 (head) and one in the middle
        Tally(1, 1, 8, 8, 0, 0, 0),  # missed 9 and 10 (tail)
        Tally(1, 0, 0, 0, 0, 0, 0),  # missed everything
    ]
    report = account(tallies)
    assert report.expected == 40
    assert report.lost == 0 + 3 + 2 + 10
    assert report.silent_subscriptions == 1


def test_the_servers_tail_and_count_catch_what_nobody_received() -> None:
    tallies = [Tally(1, 1, 10, 10, 0, 0, 0), Tally(1, 1, 10, 10, 0, 0, 0)]
    assert account(tallies, server_last={1: 12}).lost == 4  # 11 and 12, twice
    # 25 published, 10 seen: 15 events reached nobody, at a fan-out of 2
    assert account(tallies, server_events=25).lost == 30


def test_duplicates_and_late_arrivals_are_told_apart() -> None:
    report = account([Tally(1, 1, 10, 12, 1, 1, 0)])
    assert (report.lost, report.duplicates, report.out_of_order) == (0, 1, 1)


def test_the_histogram_reads_percentiles_back_within_a_bucket() -> None:
    hist = Histogram()
    for ms in range(1, 1001):
        hist.add(float(ms))
    assert hist.percentile(0.5) == pytest.approx(500, rel=0.06)
    assert hist.percentile(0.99) == pytest.approx(990, rel=0.06)
    assert hist.percentile(1.0) == 1000
    assert bucket_of(0.05) == 0
    assert bucket_value(bucket_of(42.0)) == pytest.approx(42.0, rel=0.06)


def test_timestamps_are_read_as_utc_with_milliseconds() -> None:
    parse = TimestampParser()
    assert parse("2026-11-29T17:01:12.123Z") == pytest.approx(1795971672.123)
    assert parse("2026-11-29T17:01:12.123Z") == parse("2026-11-29T17:01:12.123+00:00")


def test_subscriptions_spread_over_connections_and_projects() -> None:
    plans = plan_subscriptions(connections=4, projects=3, subscriptions=8, procs=2)
    connections = {j: subs for plan in plans for j, subs in plan}
    assert sorted(connections) == [0, 1, 2, 3]
    assert [j for j, _ in plans[0]] == [0, 2]
    assert connections[0] == [("s0", 1), ("s1", 2)]  # subscriptions 0 and 4
    projects = [p for subs in connections.values() for _, p in subs]
    assert sorted(projects) == [1, 1, 1, 2, 2, 2, 3, 3]


# --- a short real load --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"server not healthy within 60 s:\n{log.read_text()[-3000:]}")


def _loadgen_available() -> bool:
    help_text = subprocess.run(
        [sys.executable, "run.py", "serve", "--help"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return "--enable-loadgen" in help_text


@pytest.fixture(params=["planpulse", "baseline"])
def load_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = _free_port()
    if request.param == "planpulse":
        if not _loadgen_available():
            message = "run.py serve has no --enable-loadgen yet"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        command = [
            sys.executable,
            "run.py",
            "serve",
            "--enable-loadgen",
            "--port",
            str(port),
            "--database-url",
            f"sqlite:///{tmp_path / 'load.db'}",
            "--log-level",
            "WARNING",
        ]
    else:
        command = [sys.executable, "bench/baseline_server.py", "--port", str(port)]
    process = _start(command, port, tmp_path / "server.log")
    try:
        yield f"ws://127.0.0.1:{port}/graphql", process.pid
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _loadtest(url: str, pid: int, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            "loadtest",
            "--url",
            url,
            "--server-pid",
            str(pid),
            "--connections",
            "20",
            "--projects",
            "5",
            "--subscriptions",
            "40",
            "--rate",
            "200",
            "--seconds",
            "2",
            "--json",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.stdout.strip(), f"no report (exit {result.returncode}):\n{result.stderr}"
    return orjson.loads(result.stdout)


def test_a_short_load_loses_nothing_duplicates_nothing_and_keeps_order(
    load_server: tuple[str, int], request: pytest.FixtureRequest
) -> None:
    url, pid = load_server
    report = _loadtest(url, pid)
    assert report["clients"]["connections"] == 20
    assert report["clients"]["subscriptions"] == 40
    assert not report["clients"]["connect_failures"]
    (step,) = report["steps"]
    # 200 events/s for 2 s, round-robin over 5 projects with 8 subscribers each: every
    # subscriber gets its project's 80 changes, 3,200 deliveries in all.
    assert step["server_events"] in (None, 400)
    assert step["events"] == 400
    assert step["lost"] == 0, step["notes"]
    assert step["duplicates"] == 0
    assert step["out_of_order"] == 0
    assert step["subscription_errors"] == 0
    assert step["closed_connections"] == 0
    assert step["deliveries"] == step["expected_deliveries"] == 3200
    assert sum(point["deliveries"] for point in step["timeline"]) == 3200
    assert report["server"]["rss_mb"]["ready"] > 0
    if request.node.callspec.params["load_server"] == "baseline":
        assert step["stages"] == {}  # no stage metrics: nothing invented
        return
    # the server's own stage split of the step: every change persisted and published
    stages = step["stages"]
    assert stages["changes"] == 400
    assert stages["persist_us_per_change"] > 0 and stages["publish_us_per_change"] > 0
    assert stages["handover_ms_mean"] >= 0
    # the loop's share: every delivery went through a burst, each burst took some time
    assert stages["burst_deliveries_mean"] >= 1 and stages["burst_ms_mean"] > 0
    assert stages["loop_wait_ms_mean"] >= 0 and stages["burst_us_per_delivery"] > 0
    assert "persist" in format_report(report) and "µs/change" in format_report(report)
    assert "loop: wake-up wait" in format_report(report)
