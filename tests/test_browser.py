"""The live Plan DAG page in a real browser: Debian's Chromium, driven by Playwright.

Two people watch one project: one uploads a data source and executes the plan, and both
pages show every node reach the state the event log ends with. Then the server drops the
page's connection in the middle of a run, and the page resumes (afterSequence) and ends
with the same states, and the same history per node, as the event log.

Chromium is Debian's (`bash .ci/browser` installs it; Playwright's own browser download is
not used). Without it, or without the playwright package, these tests skip with a reason,
except under CI (CI=true), where that is a failure. Screenshots go to test-artifacts/: each
page's last look at the end of every test (pass or fail), and a few taken mid-run.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import AppConfig
from gateway.server import GatewayConfig
from storage import queries
from storage.db import Database
from tests.conftest import IN_CI, RunningServer
from tests.plan_helpers import CALLS, SERVICES, Gate, add_source, assert_legal, states_by_node

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1366, "height": 800}  # a laptop screen
TIMEOUT_MS = 20_000


def _need_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"Chromium is not installed at {CHROMIUM} (`bash .ci/browser` installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package is not installed (pip install -e '.[dev]')")
    if not missing:
        return
    message = "; ".join(missing)
    if IN_CI:
        pytest.fail(f"{message} (under CI a missing browser is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def app_server(sqlite_url: str) -> Iterator[Callable[..., RunningServer]]:
    """A real server on a free port; keyword arguments go to App (e.g. before_node)."""
    servers: list[RunningServer] = []

    def start(**app_kwargs: Any) -> RunningServer:
        config = AppConfig(database_url=sqlite_url, gateway=GatewayConfig(port=0))
        server = RunningServer(config, **app_kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Watcher:
    """One person with the page open: a browser context of their own, one tab."""

    def __init__(self, browser: Any, server: RunningServer, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(f"{server.http}/")
        self.expect_connection("live")

    def expect_connection(self, status: str) -> None:
        from playwright.sync_api import expect

        expect(self.page.locator("#connection")).to_have_attribute(
            "data-status", status, timeout=TIMEOUT_MS
        )

    def open_project(self, name: str) -> None:
        from playwright.sync_api import expect

        self.page.locator(".project-link", has_text=name).click()
        expect(self.page.locator("#project-name")).to_have_text(name)

    def node(self, node_id: str) -> Any:
        return self.page.locator(f'.node[data-node-id="{node_id}"]')

    def expect_states(self, expected: dict[str, str]) -> None:
        from playwright.sync_api import expect

        for node_id, state in expected.items():
            expect(self.node(node_id)).to_have_attribute("data-state", state, timeout=TIMEOUT_MS)

    def shown_states(self) -> dict[str, str]:
        return self.page.eval_on_selector_all(
            ".node",
            "cards => Object.fromEntries(cards.map(c => [c.dataset.nodeId, c.dataset.state]))",
        )

    def feed_history(self) -> dict[str, list[str]]:
        """Each node's state changes as the activity feed shows them, oldest first."""
        items = self.page.eval_on_selector_all(
            "#feed .feed-item",
            "items => items.map(i => [+i.dataset.sequence, i.dataset.nodeId, i.dataset.state])",
        )
        history: dict[str, list[str]] = {}
        for _sequence, node_id, state in sorted(items, key=lambda item: item[0]):
            history.setdefault(node_id, []).append(state)
        return history

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled")

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"{self.name}'s page threw: {self.errors}"


@pytest.fixture
def watchers(
    browser: Any, request: pytest.FixtureRequest
) -> Iterator[Callable[[RunningServer, str], Watcher]]:
    """Open the page as someone; at the end, each page's last look is saved, pass or fail."""
    opened: list[Watcher] = []

    def open_page(server: RunningServer, name: str) -> Watcher:
        watcher = Watcher(browser, server, name)
        opened.append(watcher)
        return watcher

    yield open_page
    test_name = request.node.name.removeprefix("test_")
    for watcher in opened:
        try:
            watcher.screenshot(f"{test_name}-{watcher.name}")
        finally:
            watcher.close()


# --- plans -----------------------------------------------------------------------------


def _node(
    db: Database, pid: int, node_id: str, node_type: str, label: str, *inputs: str, **config: Any
) -> str:
    with db.write() as s:
        queries.add_node(
            s, pid, node_type=node_type, node_id=node_id, config=config, metadata={"label": label}
        )
        for source in inputs:
            queries.add_edge(s, pid, source=source, target=node_id, edge_id=f"{source}->{node_id}")
    return node_id


def _service_map(
    db: Database, name: str, *, with_services: bool = True
) -> tuple[int, dict[str, str]]:
    """A plan with a healthy branch and a broken one; returns the project and node ids.

    Without `with_services` the graph has only the calls (edges): it needs the services
    file (nodes) fed into it to complete, which the first test uploads from the page.
    """
    with db.write() as s:
        pid = queries.create_project(s, name, "calls between services, and a broken export").id
    calls = add_source(db, pid, "calls", CALLS, data_type="edges")
    inputs = [calls]
    if with_services:
        inputs.append(add_source(db, pid, "services", SERVICES))
    graph = _node(db, pid, "graph", "GraphNode", "Service graph", *inputs)
    apps = _node(
        db,
        pid,
        "apps",
        "TransformNode",
        "App layer only",
        graph,
        transforms=[{"kind": "keep_layers", "params": {"layers": ["app"]}}],
    )
    out = _node(db, pid, "out", "OutputNode", "Published map", apps)
    broken = add_source(db, pid, "broken export", "id,name\nx,y\n")
    graph_b = _node(db, pid, "graphB", "GraphNode", "Export graph", broken)
    ids = {
        "calls": calls,
        "graph": graph,
        "apps": apps,
        "out": out,
        "broken": broken,
        "graphB": graph_b,
    }
    if with_services:
        ids["services"] = inputs[1]
    return pid, ids


def _final_states(db: Database, pid: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    history = states_by_node(db, pid)
    return history, {node_id: states[-1] for node_id, states in history.items()}


# --- tests -----------------------------------------------------------------------------


def test_two_people_watch_an_upload_and_a_plan_run(
    app_server: Callable[..., RunningServer], watchers: Callable[..., Watcher]
) -> None:
    from playwright.sync_api import expect

    server = app_server()
    db = server.app.db
    pid, ids = _service_map(db, "Service map", with_services=False)
    alice = watchers(server, "alice")
    bob = watchers(server, "bob")
    for person in (alice, bob):
        person.open_project("Service map")
        person.expect_states({node_id: "not_started" for node_id in ids.values()})

    # Alice uploads the services file and feeds it into the graph.
    page = alice.page
    page.click("#upload")
    page.set_input_files(
        "#upload-file",
        files=[{"name": "services.csv", "mimeType": "text/csv", "buffer": SERVICES.encode()}],
    )
    expect(page.locator("#upload-name")).to_have_value("services")
    expect(page.locator("#upload-type")).to_have_value("nodes")
    page.select_option("#upload-target", "graph")
    page.click("#upload-submit")
    expect(page.locator("#upload-dialog")).not_to_be_visible()
    with db.read() as s:
        (source,) = [d for d in queries.list_data_sources(s, pid) if d.name == "services"]
        (services,) = queries.data_source_node_ids(s, pid, source.id)
    for person in (alice, bob):  # the new node appears for both, and its badge runs
        expect(person.node(services)).to_contain_text("services")
        person.expect_states({services: "completed"})
        expect(person.node(services)).to_contain_text("processed")
    expect(page.locator(f'path.edge[data-source="{services}"][data-target="graph"]')).to_have_count(
        1
    )

    # Alice executes the plan; both watch every node reach its final state.
    page.click("#execute-plan")
    expect(page.locator(".message-info")).to_contain_text("running")
    server.app.executors.plans.wait(pid)
    history, final = _final_states(db, pid)
    assert set(final) == {*ids.values(), services}
    assert {final[ids[n]] for n in ("calls", "graph", "apps", "out")} == {"completed"}
    assert final[services] == "completed"
    assert (final[ids["broken"]], final["graphB"]) == ("error", "not_started")
    for person in (alice, bob):
        person.expect_states(final)
        expect(person.node("graph")).to_contain_text("4 nodes · 3 edges")
        expect(person.node(ids["broken"])).to_have_attribute("title", re.compile("label"))
        expect(person.page.locator("#summary .chip[data-state='completed'] b")).to_have_text("5")
        assert person.shown_states() == final
        assert person.feed_history() == history, f"{person.name} missed or repeated a change"

    # Bob clicks the failed node: its error is there in words.
    bob.node(ids["broken"]).click()
    expect(bob.page.locator("#details .error-box")).to_contain_text("label")
    alice.node("graph").click()


def test_page_resumes_after_the_server_drops_its_connection_mid_run(
    app_server: Callable[..., RunningServer], watchers: Callable[..., Watcher]
) -> None:
    from playwright.sync_api import expect

    gate = Gate("apps")
    server = app_server(before_node=gate)
    db = server.app.db
    pid, ids = _service_map(db, "Resume")
    viewer = watchers(server, "viewer")
    viewer.open_project("Resume")
    viewer.page.click("#execute-plan")
    assert gate.reached.wait(20), "the run reached the held node"
    viewer.expect_states({"apps": "processing", "graph": "completed"})
    viewer.screenshot("page_resumes-1-held")

    gateway = server.app.gateway

    def drop_every_connection() -> None:
        gateway.config.max_connections = 0  # refuse reconnects until the run is over
        for connection in list(gateway.connections):
            connection.ws.transport.abort()

    server.loop.call_soon_threadsafe(drop_every_connection)
    viewer.expect_connection("reconnecting")
    expect(viewer.page.locator("#connection")).to_contain_text("Reconnecting")
    viewer.screenshot("page_resumes-2-reconnecting")

    # The rest of the run happens while the page is away.
    gate.release.set()
    server.app.executors.plans.wait(pid)
    history, final = _final_states(db, pid)
    assert_legal(history)
    assert final["apps"] == final["out"] == "completed"
    assert viewer.shown_states()["out"] == "pending", "the page cannot have seen the end yet"

    def accept_again() -> None:
        gateway.config.max_connections = GatewayConfig().max_connections

    server.loop.call_soon_threadsafe(accept_again)
    viewer.expect_connection("live")
    viewer.expect_states(final)
    assert viewer.shown_states() == final
    assert viewer.feed_history() == history, "the page missed or repeated a change"
    expect(viewer.page.locator("#feed .feed-note")).to_contain_text("catching up")


def test_stop_run_node_and_refusals_are_told_in_words(
    app_server: Callable[..., RunningServer], watchers: Callable[..., Watcher]
) -> None:
    from playwright.sync_api import expect

    gate = Gate("apps")
    server = app_server(before_node=gate)
    db = server.app.db
    pid, _ids = _service_map(db, "Stop")
    viewer = watchers(server, "viewer")
    viewer.open_project("Stop")
    page = viewer.page
    page.click("#execute-plan")
    assert gate.reached.wait(20), "the run reached the held node"
    viewer.expect_states({"apps": "processing", "out": "pending"})

    page.click("#execute-plan")  # a second run while one is going: the server says no
    expect(page.locator(".message-error")).to_contain_text("already has a plan run in progress")
    page.click("#stop-plan")
    expect(page.locator(".message-info")).to_contain_text("Stopping")
    viewer.expect_states({"apps": "not_started", "out": "not_started"})
    gate.release.set()
    server.app.executors.plans.wait(pid)
    viewer.node("apps").click()
    expect(page.locator("#details .note-box")).to_contain_text("Execution stopped by user")

    page.click("#run-node")  # the stopped node, and what it depends on, run again
    expect(page.locator(".message-info")).to_contain_text("Running App layer only")
    viewer.expect_states({"apps": "completed"})
    server.app.executors.plans.wait(pid)
    history, final = _final_states(db, pid)
    assert_legal(history)
    assert (final["apps"], final["out"]) == ("completed", "not_started")
    viewer.expect_states(final)
    assert viewer.feed_history() == history
    expect(page.locator("#details")).to_contain_text("2 nodes · 1 edge")


# --- the page's files over HTTP (no browser needed) -------------------------------------


def _get(server: RunningServer, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
    """A GET with the path sent exactly as given (no client-side normalisation)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def test_the_page_and_its_modules_are_served_with_types_and_caching(server: RunningServer) -> None:
    status, headers, body = _get(server, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert '<script type="module" src="/static/app.js">' in body

    # Every module the page imports, and every file it links, is there with its type.
    wanted = {"app.js", "styles.css", "favicon.svg"}
    seen: set[str] = set()
    while wanted - seen:
        name = sorted(wanted - seen)[0]
        seen.add(name)
        status, headers, text = _get(server, f"/static/{name}")
        assert status == 200, f"/static/{name}: {status} {text}"
        suffix = name.rsplit(".", 1)[1]
        assert headers["content-type"].startswith(
            {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[suffix]
        )
        if suffix == "js":
            wanted |= set(re.findall(r'from "\./([\w-]+\.js)"', text))
    assert {"gqlws.js", "layout.js", "model.js", "dag.js"} <= seen

    status, headers, _ = _get(server, "/static/app.js")
    etag = headers["etag"]
    status, headers, body = _get(server, "/static/app.js", **{"If-None-Match": etag})
    assert (status, body) == (304, "")
    assert _get(server, "/healthz")[0] == 200


def test_page_paths_outside_the_static_files_are_refused_in_words(server: RunningServer) -> None:
    for path in (
        "/static/../server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e/pages.py",
        "/static/sub/app.js",
        "/static/.hidden",
    ):
        status, headers, body = _get(server, path)
        assert status == 400, path
        assert headers["content-type"].startswith("text/plain")
        assert "no directories" in body and "'..'" in body
    status, _, body = _get(server, "/static/nothing.js")
    assert status == 404
    assert "no page file 'nothing.js'" in body and "app.js" in body
    status, _, body = _get(server, "/nowhere")
    assert (status, body) == (404, "nothing at /nowhere\n")


def test_two_pages_show_each_others_plan_edits_and_presence(
    app_server: Callable[..., RunningServer], watchers: Callable[..., Watcher]
) -> None:
    """Issue 15: an edit made on one page appears on the other without reload, and each
    page shows who else is editing (and what they selected)."""
    from playwright.sync_api import expect

    server = app_server()
    db = server.app.db
    pid, ids = _service_map(db, "Collab map", with_services=False)
    alice = watchers(server, "alice")
    bob = watchers(server, "bob")
    for person in (alice, bob):
        person.open_project("Collab map")
        person.expect_states({node_id: "not_started" for node_id in ids.values()})
    # Both are here: each page lists two editors.
    for person in (alice, bob):
        expect(person.page.locator("#presence .presence-user")).to_have_count(2)

    # Alice adds a node from her page's own connection: Bob's page draws it.
    alice.page.evaluate(
        """pid => window.planpulse.api.client.request(
          `mutation($p: Int!, $n: PlanDagNodeInput!) {
            addPlanDagNode(projectId: $p, node: $n) { id } }`,
          { p: pid, n: { id: "shared", nodeType: "GraphNode", config: {},
                         metadata: { label: "Shared" } } })""",
        pid,
    )
    expect(bob.node("shared")).to_have_count(1)
    # Alice moves it: Bob's page has the new position.
    alice.page.evaluate(
        'pid => window.planpulse.api.moveNode(pid, "shared", { x: 321, y: 123 })', pid
    )
    bob.page.wait_for_function(
        'window.planpulse.current().model.byId.get("shared")?.positionX === 321'
    )
    # Bob selects it: Alice sees Bob's selection in his presence.
    bob.node("shared").click()
    expect(alice.page.locator("#presence .presence-user", has_text="shared")).to_have_count(1)
    # Bob deletes it: it disappears from Alice's page.
    bob.page.evaluate('pid => window.planpulse.api.deleteNode(pid, "shared")', pid)
    expect(alice.node("shared")).to_have_count(0)

    # Bob's cursor over the service graph's card: Alice's page draws Bob's labelled marker
    # there, in plan coordinates (on her own drawing of that card); Bob's page draws none.
    bob_id = bob.page.wait_for_function("window.planpulse.current().collab.selfId").json_value()
    box = bob.node(ids["graph"]).bounding_box()
    assert box is not None
    bob.page.mouse.move(box["x"] + 10, box["y"] + 10)
    bob.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    marker = alice.page.locator(f'.cursor-marker[data-user-id="{bob_id}"]')
    expect(marker).to_have_count(1)
    bob_user = alice.page.locator(f'#presence .presence-user[data-user-id="{bob_id}"]')
    label = marker.locator(".cursor-label").inner_text().strip()
    assert label.startswith("Anonymous ") and bob_user.inner_text().startswith(label)
    sent = bob.page.evaluate(
        "([x, y]) => window.planpulse.dag.toPlan(x, y)",
        [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2],
    )
    alice.page.wait_for_function(
        """([id, x, y]) => {
          const m = document.querySelector(`.cursor-marker[data-user-id="${id}"]`);
          // MouseEvent.clientX/Y are whole pixels: within 2 plan pixels at any fit zoom
          return m && Math.abs(m.dataset.x - x) < 2 && Math.abs(m.dataset.y - y) < 2;
        }""",
        arg=[bob_id, sent["x"], sent["y"]],
    )
    card = alice.node(ids["graph"]).bounding_box()
    assert card is not None
    alice.page.wait_for_function(
        """([id, c]) => {
          const r = document.querySelector(`.cursor-marker[data-user-id="${id}"]`)
            .getBoundingClientRect();
          return r.left >= c.x && r.left <= c.x + c.width && r.top >= c.y
            && r.top <= c.y + c.height;
        }""",
        arg=[bob_id, card],
    )
    expect(bob.page.locator(".cursor-marker")).to_have_count(0)

    # Bob leaves the page (its socket goes with it): Alice's page shows one editor again,
    # and Bob's cursor marker is gone.
    bob.page.goto("about:blank")
    expect(alice.page.locator("#presence .presence-user")).to_have_count(1)
    expect(alice.page.locator(".cursor-marker")).to_have_count(0)
    assert alice.errors == [] and bob.errors == []
