"""GraphiQL at /graphiql, from vendored files only, in Debian's Chromium (as tests/test_browser.py):
a query runs over POST /graphql, and a subscription over the WebSocket shows a data source's
badge reach completed. Skips (fails under CI) without Chromium or playwright."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlencode

from tests.helpers import NODES_CSV, VERBATIM_SUBSCRIPTION, subscriber_count, wait_until
from tests.test_browser import browser  # noqa: F401 - the fixture
from tests.test_sse import CREATE_SOURCE, post

EXECUTE = ".graphiql-execute-button"
RESULT = ".result-window"


def test_graphiql_assets_are_local(server: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/graphiql")
        response = conn.getresponse()
        page = response.read().decode()
        assert response.status == 200
        assert "'unsafe-inline'" in response.getheader("Content-Security-Policy")
        assert "http" not in page.split("<body>", 1)[1]  # no CDN: every script is /static/
        for name in ("graphiql.umd.js", "graphiql.css", "graphql-ws.min.js", "graphiql-init.js"):
            conn.request("GET", f"/static/{name}")
            asset = conn.getresponse()
            assert asset.status == 200 and len(asset.read()) > 100, name
    finally:
        conn.close()


def test_graphiql_query_and_subscription(server: Any, browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    pid = post(server, 'mutation { createProject(input: {name: "giql"}) { id } }')
    pid = pid["createProject"]["id"]
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{server.http}/graphiql")
        page.click(EXECUTE, timeout=20_000)
        expect(page.locator(RESULT)).to_contain_text('"giql"', timeout=20_000)
        query = urlencode(
            {"query": VERBATIM_SUBSCRIPTION, "variables": json.dumps({"projectId": pid})}
        )
        page.goto(f"{server.http}/graphiql?{query}")
        page.click(EXECUTE, timeout=20_000)
        wait_until(lambda: subscriber_count(server, pid) == 1, what="GraphiQL subscribed")
        source = {
            "projectId": pid,
            "name": "Services",
            "filename": "services.csv",
            "fileFormat": "csv",
            "dataType": "nodes",
            "content": NODES_CSV,
        }
        post(server, CREATE_SOURCE, input=source)
        expect(page.locator(RESULT)).to_contain_text('"completed"', timeout=20_000)
        assert not errors, errors
    finally:
        context.close()
