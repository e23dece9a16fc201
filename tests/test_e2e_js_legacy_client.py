"""The real `subscriptions-transport-ws` client (Apollo 2/3's WebSocketLink transport, the
legacy `graphql-ws` subprotocol), unmodified, run by Node from tests/js-legacy/legacy.mjs.

Over one socket it creates a project and a data source (mutations over `start`) and watches
the frontend's verbatim `nodeExecutionStatusChanged` document take the badge from
processing to completed; then resumes with `afterSequence`, is refused a bad token, and
hits the depth and size limits, each as that client reports it.

Needs `node` (>= 18) and `npm`; without them these tests skip with a reason, except under
CI (CI=true), where a missing tool is a failure. The npm packages are installed from
tests/js-legacy/package-lock.json on first use.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.server import GatewayConfig
from storage import tokens
from tests.node_tools import node_with_packages

JS_DIR = Path(__file__).parent / "js-legacy"
SCRIPT = JS_DIR / "legacy.mjs"
MIN_NODE_MAJOR = 18
RUN_TIMEOUT = 40


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` executable, with tests/js-legacy's npm dependencies installed."""
    return node_with_packages(JS_DIR, ("subscriptions-transport-ws",), MIN_NODE_MAJOR)


def legacy_js(node: str, scenario: str, url: str, token: str | None, *args: Any) -> list[dict]:
    """Run one scenario of legacy.mjs to its end; its printed steps, `done` last."""
    try:
        done = subprocess.run(
            [node, str(SCRIPT), scenario, url, token or "-", *map(str, args)],
            cwd=JS_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(f"legacy.mjs {scenario} ran over {RUN_TIMEOUT}s: {expired}") from None
    assert done.returncode == 0, (
        f"legacy.mjs {scenario} exited {done.returncode}; stdout:\n{done.stdout}\n"
        f"stderr:\n{done.stderr}"
    )
    steps = [json.loads(line) for line in done.stdout.splitlines()]
    assert steps and steps[-1]["step"] == "done", steps
    return steps


def of(steps: list[dict], step: str) -> list[dict]:
    return [s for s in steps if s["step"] == step]


def admin_token(server: Any) -> str:
    with server.app.db.write() as s:
        return tokens.create_token(s, admin=True).raw


def test_script_sends_the_verbatim_document() -> None:
    from tests.helpers import VERBATIM_SUBSCRIPTION

    assert VERBATIM_SUBSCRIPTION in SCRIPT.read_text(encoding="utf-8")


def test_legacy_client_creates_watches_and_resumes(start_server: Any, node: str) -> None:
    server = start_server(gateway=GatewayConfig(port=0, auth=True))
    token = admin_token(server)

    steps = legacy_js(node, "badge", server.url, token)
    [project] = of(steps, "project")
    pid = int(project["project"]["id"])
    assert project["project"]["name"] == "legacy-client"
    [source] = of(steps, "source")
    assert source["source"]["status"] == "processing"
    events = [s["event"] for s in of(steps, "event")]
    states = [e["datasourceExecution"]["executionState"] for e in events]
    assert states == ["processing", "completed"]
    for event in events:
        assert event["projectId"] == pid
        assert event["nodeType"] == "DataSourceNode"
        assert event["graphExecution"] is None
        assert event["timestamp"].endswith("Z")
        assert event["datasourceExecution"]["filename"] == "services.csv"
        assert event["datasourceExecution"]["dataSourceId"] == int(source["source"]["id"])
    assert events[0]["nodeId"] == events[1]["nodeId"]
    assert events[1]["datasourceExecution"]["status"] == "active"
    assert events[1]["datasourceExecution"]["processedAt"].endswith("Z")
    received = steps[-1]["received"]
    assert received[:2] == ["connection_ack", "ka"], received
    assert set(received) <= {"connection_ack", "ka", "data", "complete"}, received

    # Resume: from the log, everything after a sequence, and only that.
    replay = [
        s["event"] for s in of(legacy_js(node, "resume", server.url, token, pid, 0, 2), "event")
    ]
    assert [e["datasourceExecution"]["executionState"] for e in replay] == states
    first, second = (e["sequence"] for e in replay)
    assert first < second
    after = legacy_js(node, "resume", server.url, token, pid, first, 1)
    assert [s["event"] for s in of(after, "event")] == [replay[1]]


def test_legacy_client_is_refused_a_bad_token(start_server: Any, node: str) -> None:
    server = start_server(gateway=GatewayConfig(port=0, auth=True))
    steps = legacy_js(node, "refused", server.url, "pp_not_a_token")
    assert of(steps, "connection_error") == [
        {"step": "connection_error", "payload": {"message": "Forbidden"}}
    ]
    assert of(steps, "closed") == [{"step": "closed", "code": 4403, "reason": "Forbidden"}]
    assert steps[-1]["received"] == ["connection_error"]


def test_legacy_client_hits_the_depth_and_size_limits(start_server: Any, node: str) -> None:
    server = start_server(gateway=GatewayConfig(port=0, max_message_bytes=4000, max_depth=3))
    steps = legacy_js(node, "limits", server.url, None, 5000)
    [depth] = of(steps, "depth")
    assert "depth 4 exceeds the limit of 3" in depth["error"]["message"], depth
    assert depth["error"]["extensions"]["code"] == "QUERY_TOO_DEEP"
    [closed] = of(steps, "closed")
    assert closed["code"] == 1009 and "exceeds limit of 4000 bytes" in closed["reason"], closed
