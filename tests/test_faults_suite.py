"""The fault suite (bench/faults.py) end to end, in a short version: it runs, it cleans
up, its JSON has the promised shape, and the faults this branch handles lose nothing.

One run of `python run.py faults` (every fault, small numbers) for the module; each
fault's row is then checked on its own, the database cut as strictly as the others (issue
12: transient errors retried, project actors that wait for the log and catch up, a failed
actor replaced, publishing that never fails a committed change).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import IN_CI, PG_ADMIN_URL, need_server

# The run takes about a minute on a quiet 2-core machine; the margin is for a busy one.
pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["redis", "worker", "gateway", "storm", "db"]  # the cut last: see the docstring
STORM = 200
WATCHERS = 10
ROW_KEYS = {
    "fault",
    "description",
    "events_in_log",
    "watchers",
    "delivered",
    "missing",
    "duplicates",
    "out_of_order",
    "unexpected",
    "recover_seconds",
    "stuck",
    "healthz",
    "traffic",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_server("PostgreSQL", "127.0.0.1", 5432)
    if shutil.which("redis-server") is None:
        message = "the fault suite starts a redis-server of its own: none is installed"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    path = tmp_path_factory.mktemp("faults") / "faults.json"
    command = [
        sys.executable,
        str(ROOT / "run.py"),
        "faults",
        "--faults",
        ",".join(ORDER),
        "--watchers",
        str(WATCHERS),
        "--storm",
        str(STORM),
        "--rows",
        "500",
        "--cut-seconds",
        "3",
        "--redis-down-seconds",
        "1",
        "--warmup-seconds",
        "0.5",
        "--after-seconds",
        "1",
        "--settle-timeout",
        "10",
        "--pg-admin-url",
        PG_ADMIN_URL,
        "--json",
        str(path),
    ]
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-4000:]
    data = orjson.loads(path.read_bytes())
    data["_stdout"] = done.stdout
    data["_seconds"] = time.monotonic() - began
    return data


def test_the_report_has_every_fault_in_order_and_a_table(report: dict[str, Any]) -> None:
    assert [row["fault"] for row in report["faults"]] == ORDER
    for row in report["faults"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["events_in_log"] > 0
        assert set(row["delivered"]) == {"min", "max", "total"}
        assert len(row["healthz"]) == 2
    storm = report["faults"][ORDER.index("storm")]
    assert storm["watchers"] == WATCHERS + STORM and storm["storm_watchers"] == STORM
    assert report["config"]["faults"] == ",".join(ORDER)
    table = report["_stdout"]
    assert "events in log" in table and "out of order" in table and "stuck" in table
    for name in ORDER:
        assert f"\n{name} " in table


def test_the_suite_leaves_no_database_behind(report: dict[str, Any]) -> None:
    import psycopg

    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    assert report["database"].startswith("planpulse_faults_")
    with psycopg.connect(admin, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (report["database"],)
        ).fetchone()
    assert left == (0,)


@pytest.mark.parametrize("fault", ORDER)
def test_every_watcher_holds_the_whole_log_and_nothing_is_stuck(
    report: dict[str, Any], fault: str
) -> None:
    row = next(r for r in report["faults"] if r["fault"] == fault)
    lost = {k: row[k]["total"] for k in ("missing", "duplicates", "out_of_order", "unexpected")}
    assert lost == {"missing": 0, "duplicates": 0, "out_of_order": 0, "unexpected": 0}, row
    assert row["delivered"]["min"] > 0
    assert row["watchers_caught_up"], row
    assert row["stuck"] == [], row
    assert row["quiet"], row
    assert row["recover_seconds"] is not None, row
    assert all(h["status"] == 200 for h in row["healthz"]), row["healthz"]
    if fault == "redis":
        assert row["healthz_ok_after_seconds"] is not None
        assert row["healthz_ok_after_seconds"] < 5.0
    if fault == "gateway":
        assert row["moves"] >= 1 and row["resumes"] >= 1
