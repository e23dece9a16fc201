"""`python run.py demo`: a newcomer's first five seconds with planpulse.

Starts the service, loads the sample service map (samples/service-map) into a new project
through the public GraphQL API over a real WebSocket — the same path the editor uses —
runs the plan, and prints every event as it arrives, then a summary table and the address
of the live page.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from gateway.app import App, AppConfig

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "service-map"
FINAL = ("completed", "error", "not_started")
WATCH = """subscription($p: Int!) { nodeExecutionStatusChanged(projectId: $p) {
  nodeId nodeType sequence timestamp
  datasourceExecution { executionState status errorMessage }
  graphExecution { executionState nodeCount edgeCount errorMessage } } }"""


class DemoClient:
    """Just enough graphql-transport-ws to drive the demo (one socket, ids 1, 2, …)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.results: dict[str, asyncio.Future[Any]] = {}
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str) -> DemoClient:
        ws = await connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "connection_init"}).decode())
        ack = orjson.loads(await ws.recv())
        if ack.get("type") != "connection_ack":
            raise RuntimeError(f"the server did not acknowledge: {ack}")
        return cls(ws)

    async def _read(self) -> None:
        async for raw in self.ws:
            message = orjson.loads(raw)
            op_id, kind = message.get("id"), message.get("type")
            if op_id == "watch" and kind == "next":
                await self.events.put(message["payload"]["data"]["nodeExecutionStatusChanged"])
            elif op_id in self.results and kind in ("next", "error"):
                future = self.results.pop(op_id)
                payload = message["payload"]
                errors = payload if kind == "error" else payload.get("errors")
                if errors:
                    future.set_exception(RuntimeError(errors[0]["message"]))
                else:
                    future.set_result(payload["data"])

    async def send(self, op_id: str, query: str, variables: dict[str, Any]) -> None:
        message = {"id": op_id, "type": "subscribe", "payload": {"query": query}}
        message["payload"]["variables"] = variables
        await self.ws.send(orjson.dumps(message).decode())

    async def call(self, query: str, **variables: Any) -> Any:
        op_id = str(next(self.ids))
        future = self.results[op_id] = asyncio.get_running_loop().create_future()
        await self.send(op_id, query, variables)
        return await future

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


def _row(event: dict[str, Any]) -> str:
    execution = event["datasourceExecution"] or event["graphExecution"]
    detail = execution.get("errorMessage") or ""
    if event["graphExecution"] and execution["executionState"] == "completed":
        detail = f"{execution['nodeCount']} nodes, {execution['edgeCount']} edges"
    return (
        f"{event['sequence']:>4}  {event['timestamp'][11:23]}  {event['nodeId']:<18} "
        f"{event['nodeType']:<15} {execution['executionState']:<12} {detail[:60]}"
    )


async def load_and_run(url: str) -> int:
    """Create the sample project, run its plan, print the events; returns the project id."""
    client = await DemoClient.open(url)
    project = await client.call(
        "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
        i={"name": "Service map (demo)", "description": "samples/service-map"},
    )
    pid = project["createProject"]["id"]
    await client.send("watch", WATCH, {"p": pid})
    await client.call("{ projects { id } }")  # answered after the subscription is in place
    print(f"project {pid}: loading samples/service-map and running its plan\n")
    print(f"{'seq':>4}  {'time':<12}  {'node':<18} {'type':<15} {'state':<12} detail")
    latest: dict[str, str] = {}
    printer = asyncio.create_task(_print_events(client, latest))

    sources = {}
    for name, data_type in (("services", "nodes"), ("calls", "edges"), ("layers", "layers")):
        created = await client.call(
            "mutation($i: CreateDataSourceInput!) { createDataSource(input: $i) { id } }",
            i={
                "projectId": pid,
                "name": name,
                "filename": f"{name}.csv",
                "fileFormat": "csv",
                "dataType": data_type,
                "content": (SAMPLES / f"{name}.csv").read_text(),
            },
        )
        sources[name] = f"datasource_{created['createDataSource']['id']}"
    add_node = """mutation($p: Int!, $n: PlanDagNodeInput!) {
      addPlanDagNode(projectId: $p, node: $n) { id } }"""
    add_edge = """mutation($p: Int!, $e: PlanDagEdgeInput!) {
      addPlanDagEdge(projectId: $p, edge: $e) { id } }"""
    plan = [
        ("service_map", "GraphNode", {}, "service map", list(sources.values())),
        ("services_only", "TransformNode", _keep("app"), "services only", ["service_map"]),
        ("data_tier", "TransformNode", _keep("data"), "data tier", ["service_map"]),
        ("services_out", "OutputNode", {}, "services.svg", ["services_only"]),
        ("data_out", "OutputNode", {}, "data.svg", ["data_tier"]),
    ]
    for node_id, node_type, config, label, inputs in plan:
        node = {
            "id": node_id,
            "nodeType": node_type,
            "config": config,
            "metadata": {"label": label},
        }
        await client.call(add_node, p=pid, n=node)
        for source in inputs:
            edge = {"source": source, "target": node_id}
            await client.call(add_edge, p=pid, e=edge)
    await _until_final(latest, sources.values())
    latest.clear()
    await client.call("mutation($p: Int!) { executePlan(projectId: $p) }", p=pid)
    await _until_final(latest, [*sources.values(), *(node[0] for node in plan)])
    printer.cancel()
    dag = await client.call(
        "query($p: Int!) { planDag(projectId: $p) { nodes { id nodeType executionState } } "
        "graphs(projectId: $p) { nodeId nodeCount edgeCount } }",
        p=pid,
    )
    await client.close()
    counts = {g["nodeId"]: f"{g['nodeCount']} nodes, {g['edgeCount']} edges" for g in dag["graphs"]}
    print(f"\n{'node':<18} {'type':<15} {'state':<12} result")
    for node in dag["planDag"]["nodes"]:
        print(
            f"{node['id']:<18} {node['nodeType']:<15} {node['executionState']:<12} "
            f"{counts.get(node['id'], '')}"
        )
    return pid


def _keep(layer: str) -> dict[str, Any]:
    return {"transforms": [{"kind": "keep_layers", "params": {"layers": [layer]}}]}


async def _print_events(client: DemoClient, latest: dict[str, str]) -> None:
    while True:
        event = await client.events.get()
        execution = event["datasourceExecution"] or event["graphExecution"]
        latest[event["nodeId"]] = execution["executionState"]
        print(_row(event), flush=True)


async def _until_final(latest: dict[str, str], nodes: Any, timeout: float = 30) -> None:
    """Until every node has reported a final state (seen through the subscription)."""
    nodes = list(nodes)
    deadline = asyncio.get_running_loop().time() + timeout
    while not all(latest.get(node) in FINAL for node in nodes):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"the demo plan did not settle within {timeout}s")
        await asyncio.sleep(0.02)


async def run_demo(config: AppConfig, keep_serving: bool) -> int:
    app = App(config)
    await app.start()
    try:
        url = f"ws://{config.gateway.host}:{app.port}/graphql"
        pid = await load_and_run(url)
        page = f"http://{config.gateway.host}:{app.port}/"
        print(f"\nwatch it live: {page}#/project/{pid}   (GraphQL: {url})")
        if keep_serving:
            print("serving until Ctrl-C")
            await asyncio.Event().wait()
        return 0
    finally:
        await app.stop()
