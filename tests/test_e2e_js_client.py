"""The reference JavaScript client, end to end: `graphql-ws`'s `createClient` (the client the
Layercake frontend uses), run by Node from tests/js/watch.mjs, subscribes with the frontend's
verbatim document and sees a data source go processing → completed, exactly as the Python
`gql` client sees it.

Needs `node` (>= 20) and `npm`; without them these tests skip with a reason, except under CI
(CI=true), where a missing tool is a failure. The npm packages are installed from
tests/js/package-lock.json on first use.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    NODES_CSV,
    VERBATIM_SUBSCRIPTION,
    client,
    request,
    subscriber_count,
    wait_until,
)
from tests.node_tools import node_with_packages

JS_DIR = Path(__file__).parent / "js"
WATCH_SCRIPT = JS_DIR / "watch.mjs"
MIN_NODE_MAJOR = 20  # graphql-ws 6 needs Node 20

CREATE_PROJECT = "mutation($name: String!) { createProject(input: {name: $name}) { id name } }"
CREATE_SOURCE = """
mutation($input: CreateDataSourceInput!) {
  createDataSource(input: $input) { id status executionState }
}
"""


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` executable, with tests/js's npm dependencies installed."""
    return node_with_packages(JS_DIR, ("graphql-ws",), MIN_NODE_MAJOR)


class NodeWatcher:
    """tests/js/watch.mjs in a child process; its stdout is read on a thread, line by line."""

    _EOF = object()

    def __init__(self, node: str, url: str, project_id: int, count: int) -> None:
        self.proc = subprocess.Popen(
            [node, str(WATCH_SCRIPT), url, str(project_id), str(count)],
            cwd=JS_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        self._lines: queue.Queue[Any] = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(self._EOF)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _failure(self, what: str) -> str:
        return f"{what}; exit code {self.proc.poll()}; stderr:\n{self.stderr}"

    def wait_subscribed(self, timeout: float = 20) -> None:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(self._failure(f"no SUBSCRIBED within {timeout}s")) from None
        if line is self._EOF:
            self.proc.wait(timeout=5)
            raise AssertionError(self._failure("watch.mjs ended before SUBSCRIBED"))
        assert line == "SUBSCRIBED", self._failure(f"first line was {line!r}")

    def finish(self, timeout: float = 30) -> tuple[int, list[dict[str, Any]]]:
        """Wait for the script to exit: its exit code and the events it printed."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                self._failure(f"watch.mjs still running after {timeout}s")
            ) from None
        for thread in self._threads:
            thread.join(timeout=5)
        events = []
        while (line := self._lines.get(timeout=5)) is not self._EOF:
            events.append(json.loads(line))
        return code, events

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


async def _create_project(url: str) -> int:
    async with client(url) as admin:
        project = (await admin.execute(request(CREATE_PROJECT, name="js-client")))["createProject"]
    return int(project["id"])


async def _create_source(url: str, project_id: int) -> dict[str, Any]:
    async with client(url) as admin:
        created = await admin.execute(
            request(
                CREATE_SOURCE,
                input={
                    "projectId": project_id,
                    "name": "Services",
                    "filename": "services.csv",
                    "fileFormat": "csv",
                    "dataType": "nodes",
                    "content": NODES_CSV,
                },
            )
        )
    return created["createDataSource"]


async def _gql_watch(url: str, project_id: int, count: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with client(url) as session:
        async for result in session.subscribe(request(VERBATIM_SUBSCRIPTION, projectId=project_id)):
            seen.append(result["nodeExecutionStatusChanged"])
            if len(seen) == count:
                break
    return seen


def _assert_processing_then_completed(events: list[dict[str, Any]], project_id: int) -> None:
    states = [e["datasourceExecution"]["executionState"] for e in events]
    assert states == ["processing", "completed"]
    assert events[0]["datasourceExecution"]["status"] == "processing"
    assert events[0]["nodeId"] == events[1]["nodeId"]
    for event in events:
        assert event["projectId"] == project_id
        assert event["nodeType"] == "DataSourceNode"
        assert event["graphExecution"] is None
        assert event["timestamp"].endswith("Z")
        assert event["datasourceExecution"]["filename"] == "services.csv"
    done = events[1]
    assert done["nodeId"].startswith("datasource_")
    assert done["datasourceExecution"]["status"] == "active"
    assert done["datasourceExecution"]["processedAt"].endswith("Z")
    assert done["datasourceExecution"]["errorMessage"] is None


def test_watch_script_sends_the_verbatim_document() -> None:
    assert VERBATIM_SUBSCRIPTION in WATCH_SCRIPT.read_text(encoding="utf-8")


def test_js_client_sees_processing_then_completed(server: Any, node: str) -> None:
    pid = server.call(_create_project(server.url))
    watcher = NodeWatcher(node, server.url, pid, count=2)
    try:
        watcher.wait_subscribed()
        wait_until(lambda: subscriber_count(server, pid) == 1, what="the JS client subscribed")
        created = server.call(_create_source(server.url, pid))
        assert created["status"] == "processing"
        code, events = watcher.finish()
        assert code == 0, f"watch.mjs exited {code}; stderr:\n{watcher.stderr}"
        assert len(events) == 2, events
        _assert_processing_then_completed(events, pid)
        assert events[0]["datasourceExecution"]["dataSourceId"] == int(created["id"])
    finally:
        watcher.kill()


def test_js_and_python_clients_see_identical_events(server: Any, node: str) -> None:
    pid = server.call(_create_project(server.url))
    watcher = NodeWatcher(node, server.url, pid, count=2)
    python_watch = None
    try:
        watcher.wait_subscribed()
        wait_until(lambda: subscriber_count(server, pid) == 1, what="the JS client subscribed")
        python_watch = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(_gql_watch(server.url, pid, 2), 30), server.loop
        )
        wait_until(
            lambda: subscriber_count(server, pid) == 2 or python_watch.done(),
            what="the Python client subscribed",
        )
        assert not python_watch.done(), python_watch.exception()
        server.call(_create_source(server.url, pid))
        python_events = python_watch.result(timeout=40)
        code, js_events = watcher.finish()
        assert code == 0, f"watch.mjs exited {code}; stderr:\n{watcher.stderr}"
        assert js_events == python_events
        _assert_processing_then_completed(js_events, pid)
    finally:
        if python_watch is not None:
            python_watch.cancel()
        watcher.kill()


COLLAB_SCRIPT = JS_DIR / "collab.mjs"
PY_PLAN_CHANGED = """subscription($projectId: Int!) { planDagChanged(projectId: $projectId) {
  userId change { ... on PlanDagNodeChange { operation node { id } } } } }"""


def test_node_and_python_editors_see_each_others_edits_and_presence(node: str, server: Any) -> None:
    """Issue 15: the frontend's four documents, unmodified, from graphql-ws; a Python
    client edits and watches the same project; each sees the other's edit and presence."""
    project_id = asyncio.run(_create_project(server.url))
    proc = subprocess.Popen(
        [node, str(COLLAB_SCRIPT), server.url, str(project_id)],
        cwd=JS_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            if line.strip() == "READY":
                break
            lines.append(line)
        else:
            raise AssertionError(f"collab.mjs ended before READY: {proc.stderr.read()}")  # type: ignore[union-attr]
        wait_until(lambda: subscriber_count(server, project_id) == 4, what="Node's 4 streams")

        async def python_editor() -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            async with client(server.url, {"userName": "Python editor"}) as editor:
                await editor.execute(
                    request(
                        "mutation($p: Int!) { joinProjectCollaboration(projectId: $p) }",
                        p=project_id,
                    )
                )

                async def watch() -> None:
                    async with client(server.url) as watcher:
                        async for result in watcher.subscribe(
                            request(PY_PLAN_CHANGED, projectId=project_id)
                        ):
                            seen.append(result["planDagChanged"])
                            if len(seen) == 2:
                                return

                task = asyncio.create_task(watch())
                await asyncio.to_thread(
                    wait_until, lambda: subscriber_count(server, project_id) == 5
                )
                await editor.execute(
                    request(
                        "mutation($p: Int!, $n: PlanDagNodeInput!) "
                        "{ addPlanDagNode(projectId: $p, node: $n) { id } }",
                        p=project_id,
                        n={"id": "py", "nodeType": "GraphNode", "config": {}},
                    )
                )
                await asyncio.wait_for(task, 20)  # the Node client's "js" edit arrives
                code = await asyncio.to_thread(proc.wait, 30)
                assert code == 0, proc.stderr.read()  # type: ignore[union-attr]
            return seen

        seen = asyncio.run(python_editor())
        assert [e["change"]["node"]["id"] for e in seen] == ["py", "js"]
        assert seen[0]["userId"] != seen[1]["userId"]  # two connections, two users
        events = [json.loads(line) for line in [*lines, *proc.stdout]]
        plan = [e["event"] for e in events if e["kind"] == "plan"]
        assert [p["change"]["node"]["id"] for p in plan] == ["py", "js"]
        assert [p["userId"] for p in plan] == [e["userId"] for e in seen]
        deltas = [e["event"] for e in events if e["kind"] == "delta"]
        assert [d["version"] for d in deltas] == [int(p["changeId"]) for p in plan]
        assert deltas[0]["operations"][0]["op"] == "add"
        names = {e["event"]["userName"] for e in events if e["kind"] == "presence"}
        assert {"Node editor", "Python editor"} <= names
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
