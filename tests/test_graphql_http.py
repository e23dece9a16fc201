"""GraphQL over HTTP on the WebSocket's port (gateway/http.py, gateway/graphql_http.py):
status codes of the GraphQL-over-HTTP spec, GET without mutations, token auth, limits,
CORS, keep-alive, and the WebSocket path still working beside it."""

from __future__ import annotations

import asyncio
import http.client
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from gateway.server import GatewayConfig
from storage import queries, tokens
from tests.wsclient import RawClient

GRAPHQL_RESPONSE = "application/graphql-response+json"


def request(
    server: Any,
    method: str,
    target: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], Any]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    raw = body if isinstance(body, bytes | None) else orjson.dumps(body)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, target, body=raw, headers=all_headers)
    response = conn.getresponse()
    data = response.read()
    result = dict(response.getheaders())
    if own:
        conn.close()
    try:
        parsed = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        parsed = data
    return response.status, result, parsed


def test_post_query_and_mutation(server: Any) -> None:
    status, headers, body = request(
        server,
        "POST",
        "/graphql",
        {"query": 'mutation { createProject(input: {name: "h"}) { id name } }'},
    )
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    project = body["data"]["createProject"]
    assert project["name"] == "h"
    status, _, body = request(
        server,
        "POST",
        "/graphql",
        {"query": "query Q { projects { id } }", "operationName": "Q"},
        {"Accept": GRAPHQL_RESPONSE},
    )
    assert status == 200
    assert {"id": project["id"]} in body["data"]["projects"]


def test_get_query_and_no_mutation_by_get(server: Any) -> None:
    status, _, body = request(
        server, "GET", "/graphql?" + urlencode({"query": "{ projects { id } }"})
    )
    assert status == 200 and body == {"data": {"projects": []}}
    mutation = 'mutation { createProject(input: {name: "x"}) { id } }'
    status, headers, body = request(server, "GET", "/graphql?" + urlencode({"query": mutation}))
    assert status == 405
    assert headers["Allow"] == "POST"
    assert "POST" in body["errors"][0]["message"]


def test_spec_status_codes(server: Any) -> None:
    accept = {"Accept": GRAPHQL_RESPONSE}
    # unparseable document: 400 with graphql-response+json, 200 with application/json
    assert request(server, "POST", "/graphql", {"query": "{"}, accept)[0] == 400
    assert request(server, "POST", "/graphql", {"query": "{"})[0] == 200
    # invalid document (unknown field)
    status, _, body = request(server, "POST", "/graphql", {"query": "{ nope }"}, accept)
    assert status == 400 and "nope" in body["errors"][0]["message"]
    # not JSON, no query, wrong content type, unacceptable Accept
    assert request(server, "POST", "/graphql", b"{not json", accept)[0] == 400
    assert request(server, "POST", "/graphql", {"variables": {}}, accept)[0] == 400
    status, _, body = request(server, "POST", "/graphql", b"x", {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["errors"][0]["message"]
    assert (
        request(
            server, "POST", "/graphql", {"query": "{ projects { id } }"}, {"Accept": "text/html"}
        )[0]
        == 406
    )
    # bad variables: 400 with graphql-response+json
    q = "query($id: Int!) { project(id: $id) { id } }"
    status, _, body = request(
        server, "POST", "/graphql", {"query": q, "variables": {"id": "x"}}, accept
    )
    assert status == 400, body


def test_depth_and_size_limits(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, max_depth=2, max_message_bytes=2000))
    deep = "{ planDag(projectId: 1) { nodes { id } } }"
    status, _, body = request(
        server, "POST", "/graphql", {"query": deep}, {"Accept": GRAPHQL_RESPONSE}
    )
    assert status == 400 and "depth 3 exceeds the limit of 2" in body["errors"][0]["message"]
    status, _, body = request(
        server, "POST", "/graphql", {"query": "{ projects { id } }" + " " * 3000}
    )
    assert status == 413 and b"2000" in body


def test_token_auth(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, auth=True))
    with server.app.db.write() as s:
        mine = queries.create_project(s, "mine").id
        other = queries.create_project(s, "other").id
        raw = tokens.create_token(s, project_ids=[mine]).raw
    q = {"query": "query($id: Int!) { project(id: $id) { id } }"}
    status, headers, body = request(server, "POST", "/graphql", {**q, "variables": {"id": mine}})
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in body["errors"][0]["message"]
    auth = {"Authorization": f"Bearer {raw}"}
    status, _, body = request(server, "POST", "/graphql", {**q, "variables": {"id": mine}}, auth)
    assert status == 200 and body["data"]["project"]["id"] == mine
    status, _, body = request(server, "POST", "/graphql", {**q, "variables": {"id": other}}, auth)
    assert "not allowed" in body["errors"][0]["message"]
    bad = {"Authorization": "Bearer wrong"}
    assert request(server, "POST", "/graphql", {**q, "variables": {"id": mine}}, bad)[0] == 401


def test_cors(start_server: Any) -> None:
    server = start_server(gateway=GatewayConfig(port=0, allowed_origins=["http://app.example"]))
    status, headers, _ = request(
        server,
        "OPTIONS",
        "/graphql",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert "POST" in headers["Access-Control-Allow-Methods"]
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    q = {"query": "{ projects { id } }"}
    status, headers, _ = request(server, "POST", "/graphql", q, {"Origin": "http://app.example"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://app.example"
    status, _, body = request(server, "POST", "/graphql", q, {"Origin": "http://evil.example"})
    assert status == 403 and b"--allowed-origin http://evil.example" in body


def test_keep_alive_and_websocket_beside(server: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            status, _, body = request(
                server, "POST", "/graphql", {"query": "{ projects { id } }"}, conn=conn
            )
            assert status == 200
        assert request(server, "GET", "/healthz", conn=conn)[0] == 200
        assert request(server, "GET", "/metrics", conn=conn)[0] == 200
        assert request(server, "GET", "/", conn=conn)[0] == 200
    finally:
        conn.close()

    async def ws() -> None:
        client = await RawClient.open(server.url)
        await client.init()
        await client.close()

    asyncio.run(asyncio.wait_for(ws(), 10))


def test_malformed_request_is_400(server: Any) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"BLAH\r\n\r\n")
        data = sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("path", ["/nothing", "/graphql/nope"])
def test_unknown_path_404(server: Any, path: str) -> None:
    assert request(server, "GET", path)[0] == 404


def test_an_unexpected_resolver_error_over_http_is_generic_with_an_id(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import IntegrityError

    def broken(_s: Any) -> Any:
        raise IntegrityError("SELECT secret FROM projects", {"p": "parameter-value-xyz"}, None)

    monkeypatch.setattr(queries, "list_projects", broken)
    status, _, body = request(server, "POST", "/graphql", {"query": "{ projects { id } }"})
    assert status == 200, body
    (error,) = body["errors"]
    assert "SELECT" not in str(error) and "parameter-value-xyz" not in str(error)
    assert error["message"].startswith("internal server error (id ")
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"


def test_a_request_trickled_or_left_idle_is_closed_after_the_open_timeout(
    start_server: Any,
) -> None:
    """Slowloris: a body that never completes gets a 408 naming the limit; an idle
    kept-alive connection is closed; a whole request on time is answered as before."""
    import socket
    import time

    server = start_server(gateway=GatewayConfig(port=0, open_timeout=0.5))

    def read_all(sock: socket.socket) -> bytes:
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data

    with socket.create_connection(("127.0.0.1", server.port)) as slow:
        slow.sendall(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        began = time.monotonic()
        answer = read_all(slow)  # returns once the server closes
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"not complete within 0.5 s" in answer
        assert time.monotonic() - began < 5

    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(idle)  # 200, then closed once idle for 0.5 s
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.count(b"HTTP/1.1") == 1


def test_a_database_outage_in_the_token_check_is_a_503_with_an_id(
    server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    def outage(_headers: Any) -> Any:
        raise OperationalError("SELECT * FROM tokens", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(server.app.gateway, "authenticate", outage)
    status, headers, body = request(server, "POST", "/graphql", {"query": "{ projects { id } }"})
    assert status == 503, body
    assert headers["Retry-After"] == "2"
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "DATABASE_UNAVAILABLE"
    assert error["message"].startswith("the database is unavailable right now (id ")
    assert "SELECT" not in str(body)
