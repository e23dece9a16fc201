"""graphql-sse, distinct-connections mode (gateway/sse.py), with a raw HTTP client: the
frontend's document watches a data source go processing → completed over an event stream,
each event carrying `id: <sequence>`; a reconnect with Last-Event-ID resumes after it."""

from __future__ import annotations

import http.client
import queue
import socket
import threading
from typing import Any

import orjson

from tests.helpers import NODES_CSV, VERBATIM_SUBSCRIPTION, subscriber_count, wait_until

CREATE_SOURCE = """
mutation($input: CreateDataSourceInput!) { createDataSource(input: $input) { id status } }
"""


def post(server: Any, query: str, **variables: Any) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = orjson.dumps({"query": query, "variables": variables})
        conn.request("POST", "/graphql", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        result = orjson.loads(response.read())
        assert response.status == 200 and "errors" not in result, result
        return result["data"]
    finally:
        conn.close()


def create_project_and_source(server: Any, subscribed: Any) -> tuple[int, Any]:
    pid = post(server, 'mutation { createProject(input: {name: "sse"}) { id } }')
    return pid["createProject"]["id"], subscribed


class SseReader:
    """Reads one event stream on a thread; `events` gets (event, id, data) tuples."""

    def __init__(self, server: Any, path: str, payload: dict[str, Any], **headers: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.conn.request(
            "POST",
            path,
            orjson.dumps(payload),
            {"Content-Type": "application/json", **headers},
        )
        self.response = self.conn.getresponse()
        self.events: queue.Queue[tuple[str, str | None, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        event, ident, data = None, None, None
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif line == "" and event is not None:
                    self.events.put((event, ident, orjson.loads(data) if data else None))
                    event, ident, data = None, None, None
        except (OSError, ValueError, AttributeError):  # closed by close()
            pass

    def next(self) -> tuple[str, str | None, Any]:
        return self.events.get(timeout=30)

    def close(self) -> None:
        """Go away as a browser does: the socket shuts down now (not when GC'd)."""
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def test_sse_watch_processing_to_completed_and_resume(server: Any) -> None:
    pid = post(server, 'mutation { createProject(input: {name: "sse"}) { id } }')
    pid = pid["createProject"]["id"]
    watch = {"query": VERBATIM_SUBSCRIPTION, "variables": {"projectId": pid}}
    reader = SseReader(server, "/graphql/stream", watch, Accept="text/event-stream")
    try:
        assert reader.response.status == 200
        assert reader.response.getheader("Content-Type").startswith("text/event-stream")
        wait_until(lambda: subscriber_count(server, pid) == 1, what="the SSE client subscribed")
        source = {
            "projectId": pid,
            "name": "Services",
            "filename": "services.csv",
            "fileFormat": "csv",
            "dataType": "nodes",
            "content": NODES_CSV,
        }
        post(server, CREATE_SOURCE, input=source)
        first, second = reader.next(), reader.next()
    finally:
        reader.close()
    wait_until(
        lambda: subscriber_count(server, pid) == 0, what="the SSE client's subscription ended"
    )
    assert first[0] == second[0] == "next"
    states = [
        e[2]["data"]["nodeExecutionStatusChanged"]["datasourceExecution"]["executionState"]
        for e in (first, second)
    ]
    assert states == ["processing", "completed"]
    assert first[1] is not None and second[1] is not None and int(first[1]) < int(second[1])

    # A reconnect with Last-Event-ID (at /graphql, by Accept) resumes after that event.
    again = SseReader(
        server, "/graphql", watch, Accept="text/event-stream", **{"Last-Event-ID": first[1]}
    )
    try:
        event, ident, data = again.next()
    finally:
        again.close()
    assert (event, ident) == ("next", second[1])
    assert data == second[2]


def test_sse_query_and_refusals(server: Any) -> None:
    reader = SseReader(server, "/graphql/stream", {"query": "{ projects { id } }"})
    try:
        assert reader.next() == ("next", None, {"data": {"projects": []}})
        assert reader.next() == ("complete", None, None)
    finally:
        reader.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/graphql/stream",
            b'{"query": "{ nope }"}',
            {"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        response = conn.getresponse()
        assert response.status == 400
        assert b"nope" in response.read()
    finally:
        conn.close()


def test_stop_ends_open_streams(start_server: Any) -> None:
    server = start_server()
    pid = post(server, 'mutation { createProject(input: {name: "stop"}) { id } }')
    watch = {"query": VERBATIM_SUBSCRIPTION, "variables": {"projectId": pid["createProject"]["id"]}}
    reader = SseReader(server, "/graphql/stream", watch)
    try:
        wait_until(
            lambda: subscriber_count(server, pid["createProject"]["id"]) == 1, what="subscribed"
        )
        server.stop()  # would hang on the open stream if stop did not end it
        reader.thread.join(10)
        assert not reader.thread.is_alive()
    finally:
        reader.close()
