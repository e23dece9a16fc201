"""Issue 15: plan edits live (planDagChanged), deltas (planDagDeltaChanged), planId,
presence: two real clients editing and watching the same project."""

from __future__ import annotations

import asyncio
from typing import Any

import jsonpatch
import pytest
from gql.transport.exceptions import TransportQueryError

from tests.helpers import async_wait_until, client, request, subscriber_count
from tests.wsclient import RawClient

PLAN_DAG_CHANGED = """
subscription PlanDagChanged($projectId: Int!, $planId: Int) {
  planDagChanged(projectId: $projectId, planId: $planId) { type projectId changeId timestamp userId
    change {
      ... on PlanDagNodeChange { node { id nodeType position { x y } metadata { label description }
        config } operation }
      ... on PlanDagEdgeChange { edge { id source target metadata { label dataType } } operation }
      ... on PlanDagMetadataChange { metadata { version name description created lastModified
        author } } } } }
"""
PLAN_DAG_DELTA = """
subscription PlanDagDeltaChanged($projectId: Int!, $planId: Int) {
  planDagDeltaChanged(projectId: $projectId, planId: $planId) { projectId planId version userId
    clientId timestamp
    operations { op path value from } } }
"""
USER_PRESENCE = """
subscription UserPresenceChanged($planId: ID!) {
  userPresenceChanged(planId: $planId) { userId userName avatarColor cursorPosition { x y }
    selectedNodeId isActive lastSeen } }
"""
PLAN_DAG = """query($p: Int!, $plan: Int) { planDag(projectId: $p, planId: $plan) { version
  nodes { id nodeType config metadata positionX positionY position { x y } executionState }
  edges { id source target metadata }
  metadata { version name description created lastModified author } } }"""
ADD_NODE = """mutation($p: Int!, $n: PlanDagNodeInput!) { addPlanDagNode(projectId: $p, node: $n)
  { id } }"""
ADD_EDGE = """mutation($p: Int!, $e: PlanDagEdgeInput!) { addPlanDagEdge(projectId: $p, edge: $e)
  { id } }"""
MOVE = """mutation($p: Int!, $n: String!, $x: Float!, $y: Float!) {
  movePlanDagNode(projectId: $p, planId: $p, nodeId: $n, position: {x: $x, y: $y}) {
    id position { x y } } }"""
UPDATE_METADATA = """mutation($p: Int!, $m: PlanMetadataInput!) {
  updatePlanDagMetadata(projectId: $p, planId: $p, metadata: $m) {
    version name description created lastModified author } }"""
BATCH_MOVE = """mutation($p: Int!, $m: [NodePositionInput!]!) {
  batchMovePlanDagNodes(projectId: $p, nodePositions: $m) { id positionX } }"""


class Stream:
    """One subscription on its own connection, collecting what it receives."""

    def __init__(self, url: str, document: str, field: str, **variables: Any) -> None:
        self.url, self.document, self.field, self.variables = url, document, field, variables
        self.items: list[dict[str, Any]] = []
        self.errors: list[Exception] = []
        self.task: asyncio.Task[None] | None = None
        self.init: dict[str, Any] = {}

    async def run(self) -> None:
        try:
            async with client(self.url, self.init) as session:
                async for result in session.subscribe(request(self.document, **self.variables)):
                    self.items.append(result[self.field])
        except Exception as error:  # noqa: BLE001 - the test reads it
            self.errors.append(error)

    def start(self) -> Stream:
        self.task = asyncio.create_task(self.run())
        return self

    def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()


async def _project(session: Any) -> int:
    made = await session.execute(request('mutation { createProject(input: {name: "p"}) { id } }'))
    return made["createProject"]["id"]


def users_of_first_edit(changes: Stream) -> str:
    """Alice's userId: she made the first edit (and the metadata edit)."""
    return changes.items[0]["userId"]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_server(request: pytest.FixtureRequest, start_server: Any) -> Any:
    if request.param == "sqlite":
        return start_server()
    return start_server(database_url=request.getfixturevalue("pg_url"))


def test_two_editors_see_each_others_edits_and_deltas_rebuild_the_plan(any_server: Any) -> None:
    server = any_server

    async def scenario() -> None:
        async with (
            client(server.url, {"userName": "Alice"}) as alice,
            client(server.url, {"userName": "Bob"}) as bob,
        ):
            pid = await _project(alice)
            first = (await bob.execute(request(PLAN_DAG, p=pid)))["planDag"]
            changes = Stream(server.url, PLAN_DAG_CHANGED, "planDagChanged", projectId=pid)
            deltas = Stream(
                server.url, PLAN_DAG_DELTA, "planDagDeltaChanged", projectId=pid, planId=pid
            )
            changes.start(), deltas.start()
            await async_wait_until(lambda: subscriber_count(server, pid) == 2)
            for name in ("a", "b", "c"):
                await alice.execute(
                    request(ADD_NODE, p=pid, n={"id": name, "nodeType": "GraphNode", "config": {}})
                )
            await bob.execute(
                request(ADD_EDGE, p=pid, e={"id": "ab", "source": "a", "target": "b"})
            )
            await bob.execute(
                request(ADD_EDGE, p=pid, e={"id": "bc", "source": "b", "target": "c"})
            )
            await bob.execute(request(MOVE, p=pid, n="b", x=10.5, y=20))
            moves = [
                {"nodeId": "a", "position": {"x": 1, "y": 2}},
                {"nodeId": "c", "position": {"x": 3, "y": 4}},
            ]
            await alice.execute(request(BATCH_MOVE, p=pid, m=moves))
            await alice.execute(
                request(
                    'mutation($p: Int!) { updatePlanDagNode(projectId: $p, nodeId: "c", node: '
                    '{nodeType: GraphNode, config: {x: 1}, metadata: {label: "C"}}) { id } }',
                    p=pid,
                )
            )
            await bob.execute(
                request(
                    'mutation($p: Int!) { deletePlanDagNode(projectId: $p, nodeId: "b") }', p=pid
                )
            )
            renamed = (
                await alice.execute(
                    request(UPDATE_METADATA, p=pid, m={"name": "Q3 plan", "description": "d"})
                )
            )["updatePlanDagMetadata"]
            last = (await alice.execute(request(PLAN_DAG, p=pid, plan=pid)))["planDag"]
            # 3 nodes + 2 edges + 1 move + 2 moves + 1 update + 2 edge removals + 1 removal
            # + 1 metadata edit
            total = 13
            await async_wait_until(lambda: len(changes.items) == total, what="13 plan edits")
            await async_wait_until(lambda: len(deltas.items) == total, what="13 deltas")

            ops = [(c["type"], c["change"].get("operation")) for c in changes.items]
            assert ops[:5] == [("NODE_CHANGED", "added")] * 3 + [("EDGE_CHANGED", "added")] * 2
            assert ops[5:8] == [("NODE_CHANGED", "moved")] * 3
            assert ops[8:] == [
                ("NODE_CHANGED", "updated"),
                ("EDGE_CHANGED", "removed"),
                ("EDGE_CHANGED", "removed"),
                ("NODE_CHANGED", "removed"),
                ("METADATA_CHANGED", None),
            ]
            assert first["metadata"]["name"] == "p" and first["metadata"]["version"] == "1"
            assert first["metadata"]["author"] is None
            meta = changes.items[12]
            assert meta["change"]["metadata"] == renamed == last["metadata"]
            assert renamed["name"] == "Q3 plan" and renamed["description"] == "d"
            assert renamed["version"] == "2" and renamed["created"] == first["metadata"]["created"]
            assert renamed["author"] == meta["userId"] == users_of_first_edit(changes)
            assert renamed["lastModified"] >= renamed["created"]
            moved = changes.items[5]["change"]["node"]
            assert moved["id"] == "b" and moved["position"] == {"x": 10.5, "y": 20.0}
            assert changes.items[8]["change"]["node"]["metadata"] == {
                "label": "C",
                "description": None,
            }
            users = [c["userId"] for c in changes.items]
            assert len(set(users[:3])) == 1 and users[3] != users[0]  # each connection a user
            sequences = [int(c["changeId"]) for c in changes.items]
            assert sequences == sorted(sequences) and len(set(sequences)) == total
            assert [d["version"] for d in deltas.items] == sequences

            # Applying every delta, in version order, to the first state gives the last.
            state = {k: first[k] for k in ("nodes", "edges", "metadata")}
            for delta in deltas.items:
                ops = [
                    {k: v for k, v in op.items() if v is not None or k == "value"}
                    for op in delta["operations"]
                ]
                ops = [
                    op if op["op"] != "remove" else {"op": "remove", "path": op["path"]}
                    for op in ops
                ]
                state = jsonpatch.apply_patch(state, ops)
            assert state == {k: last[k] for k in ("nodes", "edges", "metadata")}
            assert last["version"] == sequences[-1]

            # Resumable: afterSequence replays the edits after it, then live.
            resumed = Stream(
                server.url,
                PLAN_DAG_CHANGED.replace("$planId: Int)", "$planId: Int, $after: Int)").replace(
                    "planId: $planId)", "planId: $planId, afterSequence: $after)"
                ),
                "planDagChanged",
                projectId=pid,
                after=sequences[7],
            ).start()
            await async_wait_until(lambda: len(resumed.items) == 5, what="replay of 5 edits")
            assert [int(c["changeId"]) for c in resumed.items] == sequences[8:]
            for stream in (changes, deltas, resumed):
                stream.stop()

    asyncio.run(scenario())


def test_a_plan_id_other_than_the_project_id_is_a_clear_error(server: Any) -> None:
    async def scenario() -> None:
        async with client(server.url) as session:
            pid = await _project(session)
            with pytest.raises(TransportQueryError, match="PLAN_NOT_FOUND|is not a plan of"):
                await session.execute(request(PLAN_DAG, p=pid, plan=pid + 1))
            wrong = Stream(
                server.url, PLAN_DAG_DELTA, "planDagDeltaChanged", projectId=pid, planId=pid + 7
            ).start()
            await async_wait_until(lambda: wrong.errors, what="the subscription refused")
            assert f"planId {pid + 7} is not a plan of project {pid}" in str(wrong.errors[0])

    asyncio.run(scenario())


def test_plan_metadata_with_an_empty_name_is_refused_naming_the_field(server: Any) -> None:
    async def scenario() -> None:
        async with client(server.url) as session:
            pid = await _project(session)
            for name in ("", "   "):
                with pytest.raises(TransportQueryError) as refused:
                    await session.execute(request(UPDATE_METADATA, p=pid, m={"name": name}))
                assert "metadata.name must not be empty" in str(refused.value)
                assert "BAD_USER_INPUT" in str(refused.value)
            with pytest.raises(TransportQueryError, match="is not a plan of"):
                await session.execute(
                    request(
                        UPDATE_METADATA.replace("planId: $p", "planId: 999999"),
                        p=pid,
                        m={"name": "x"},
                    )
                )
            # Nothing was logged, nothing changed.
            plan = (await session.execute(request(PLAN_DAG, p=pid)))["planDag"]
            assert plan["metadata"]["name"] == "p" and plan["metadata"]["version"] == "1"
            with server.app.db.read() as s:
                from storage import queries

                assert list(queries.events_after(s, pid, 0)) == []

    asyncio.run(scenario())


def test_presence_join_cursor_rate_limit_and_abrupt_disconnect(server: Any) -> None:
    async def scenario() -> None:
        async with client(server.url) as admin:
            pid = await _project(admin)
        watcher = Stream(server.url, USER_PRESENCE, "userPresenceChanged", planId=str(pid))
        watcher.start()
        await async_wait_until(lambda: subscriber_count(server, pid) == 1)
        editor = await RawClient.open(server.url)
        await editor.init({"userName": "Carol"})
        await editor.execute(
            "mutation($p: Int!) { joinProjectCollaboration(projectId: $p) }", {"p": pid}
        )
        await async_wait_until(lambda: watcher.items, what="Carol's join")
        carol = watcher.items[0]
        assert carol["userName"] == "Carol" and carol["isActive"] is True
        assert carol["cursorPosition"] is None
        # 60 updates as fast as the socket takes them: coalesced, and the latest wins.
        for i in range(60):
            await editor.execute(
                "mutation($p: Int!, $x: Float!) { updateCursorPosition(projectId: $p, "
                'position: {x: $x, y: 1}, selectedNodeId: "n1") }',
                {"p": pid, "x": float(i)},
            )
        await async_wait_until(
            lambda: watcher.items[-1]["cursorPosition"] == {"x": 59.0, "y": 1.0},
            what="the latest cursor",
        )
        assert watcher.items[-1]["selectedNodeId"] == "n1"
        assert len(watcher.items) < 30, f"60 cursor updates gave {len(watcher.items)} events"
        # Abrupt: the TCP connection is cut, no leave, no close frame.
        editor.ws.transport.abort()
        await async_wait_until(
            lambda: watcher.items[-1]["isActive"] is False, what="Carol gone on disconnect"
        )
        assert watcher.items[-1]["userId"] == carol["userId"]
        watcher.stop()

    asyncio.run(scenario())


def test_with_auth_the_token_names_the_editor(start_server: Any) -> None:
    from gateway.server import GatewayConfig
    from storage import queries, tokens

    server = start_server(gateway=GatewayConfig(port=0, auth=True))
    with server.app.db.write() as s:
        pid = queries.create_project(s, "p").id
        token = tokens.create_token(s, project_ids=[pid], name="alice@example.com").raw

    async def scenario() -> None:
        editor = await RawClient.open(server.url)
        await editor.init({"Authorization": f"Bearer {token}", "userName": "Alice"})
        watcher = Stream(server.url, USER_PRESENCE, "userPresenceChanged", planId=str(pid))
        watcher.init = {"Authorization": f"Bearer {token}"}
        watcher.start()
        await async_wait_until(lambda: subscriber_count(server, pid) == 1)
        await editor.execute(
            "mutation($p: Int!) { joinProjectCollaboration(projectId: $p) }", {"p": pid}
        )
        await async_wait_until(lambda: watcher.items, what="the join")
        assert watcher.items[0]["userId"] == "alice@example.com"
        me = await editor.execute("{ viewerUserId }")
        assert me["data"] == {"viewerUserId": "alice@example.com"}
        assert watcher.items[0]["userName"] == "Alice"
        await editor.execute(
            "mutation($p: Int!, $n: PlanDagNodeInput!) { addPlanDagNode(projectId: $p, node: $n)"
            " { id } }",
            {"p": pid, "n": {"id": "a", "nodeType": "GraphNode", "config": {}}},
        )
        with server.app.db.read() as s:
            (row,) = queries.events_after(s, pid, 0)
        assert row.payload["userId"] == "alice@example.com"
        await editor.close()
        await async_wait_until(lambda: watcher.items[-1]["isActive"] is False, what="leave")
        watcher.stop()

    asyncio.run(scenario())
