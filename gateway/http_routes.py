"""The gateway's plain-HTTP routes: GraphQL over HTTP, graphql-sse, the page, GraphiQL,
/healthz and /metrics.

gateway/http.py parses each request with h11 and calls `HttpRoutes` with it; WebSocket
upgrades never come here (gateway/server.py and gateway/connection.py take those).
"""

from __future__ import annotations

import asyncio
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import orjson
from graphql import GraphQLError, OperationType
from websockets.datastructures import Headers
from websockets.http11 import Response

from gateway import graphql_http as gh
from gateway import pages, sse
from gateway.auth import origin_allowed
from gateway.errors import internal_error
from gateway.http import HttpReply, HttpRequest, HttpStream
from gateway.operations import error_dict, operation_of, subscription_request
from gateway.services import RequestContext

if TYPE_CHECKING:
    from gateway.server import Gateway

STREAM_PATH = "/graphql/stream"
GRAPHQL_HTTP_PATHS = ("/graphql", STREAM_PATH)


class HttpRoutes:
    """Every plain-HTTP request of one gateway, answered with what the gateway holds."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, request: HttpRequest) -> HttpReply:
        """Every plain-HTTP request (gateway/http.py parses them with h11)."""
        path = request.path
        if path in GRAPHQL_HTTP_PATHS:
            return await self._graphql_http(request)
        if request.method not in ("GET", "HEAD"):
            return HttpReply(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{request.method} {path} is not served: only GET (POST at /graphql)\n".encode(),
                [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")],
            )
        if path == "/healthz":  # it pings the database: not on the event loop
            loop = asyncio.get_running_loop()
            return _reply(await loop.run_in_executor(self.gateway.pool, self.healthz))
        if path == "/metrics":
            return HttpReply(
                HTTPStatus.OK,
                self.gateway.metrics.render(),
                [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
            )
        if path == "/" or path.startswith("/static/"):
            return _reply(pages.respond(path, request.headers))
        if path == GRAPHIQL_PATH:
            return _graphiql(pages.respond("/static/graphiql.html", request.headers))
        return HttpReply(
            HTTPStatus.NOT_FOUND, f"nothing at {path}\n".encode(), [("Content-Type", "text/plain")]
        )

    def _cors(self, request: HttpRequest) -> list[tuple[str, str]] | None:
        """CORS headers for an allowed Origin ([] without one), None for a refused Origin."""
        origin = request.headers.get("Origin")
        if origin is None:
            return []
        if not origin_allowed(
            origin, request.headers.get("Host"), self.gateway.config.allowed_origins
        ):
            return None
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

    async def _grant(self, request: HttpRequest) -> Any:
        """The request's token checked on a worker thread (it reads the database)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.gateway.pool,
            self.gateway.authenticate,
            {"authorization": request.headers.get("Authorization")},
        )

    async def _graphql_http(self, request: HttpRequest) -> HttpReply | HttpStream:
        """GraphQL over HTTP (gateway/graphql_http.py): same auth, limits, origins as WS.

        An error outside the resolvers (the token check meeting a database outage, a bug)
        is a GraphQL error with an id (503 when the database is unavailable), not a bare
        500: the same sentence the WebSocket gives."""
        try:
            return await self._graphql_http_unguarded(request)
        except Exception as error:  # noqa: BLE001 - answered with an id, logged with it
            public = internal_error(error, f"HTTP {request.method} {request.path}")
            status = (
                HTTPStatus.SERVICE_UNAVAILABLE
                if public["extensions"]["code"] == "DATABASE_UNAVAILABLE"
                else HTTPStatus.INTERNAL_SERVER_ERROR
            )
            headers = [("Content-Type", "application/json; charset=utf-8")]
            if status == HTTPStatus.SERVICE_UNAVAILABLE:
                headers.append(("Retry-After", "2"))
            return HttpReply(status, orjson.dumps({"errors": [public]}), headers)

    async def _graphql_http_unguarded(self, request: HttpRequest) -> HttpReply | HttpStream:
        cors = self._cors(request)
        if cors is None:
            origin = request.headers.get("Origin")
            return HttpReply(
                HTTPStatus.FORBIDDEN,
                f"Origin {origin} is not allowed: start the server with "
                f"--allowed-origin {origin} to accept it\n".encode(),
                [("Content-Type", "text/plain")],
            )
        if request.method == "OPTIONS":
            return HttpReply(
                HTTPStatus.NO_CONTENT,
                b"",
                cors
                + [
                    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Accept"),
                    ("Access-Control-Max-Age", "600"),
                ],
            )
        if request.path == STREAM_PATH or sse.wants_event_stream(request.headers.get("Accept")):
            return await self._graphql_sse(request, cors)
        answer = await self._graphql_answer(request)
        headers = cors + [("Content-Type", f"{answer.content_type}; charset=utf-8")]
        headers.extend(answer.extra_headers)
        return HttpReply(answer.status, answer.body, headers)

    async def _graphql_sse(
        self, request: HttpRequest, cors: list[tuple[str, str]]
    ) -> HttpReply | HttpStream:
        """graphql-sse, distinct connections: one operation, answered as an event stream."""

        def refuse(answer: gh.HttpAnswer) -> HttpReply:
            headers = cors + [("Content-Type", f"{answer.content_type}; charset=utf-8")]
            return HttpReply(answer.status, answer.body, headers + list(answer.extra_headers))

        if request.method == "GET":
            params = gh.params_from_get(request.query, gh.JSON)
        elif request.method == "POST":
            params = gh.params_from_post(request.headers.get("Content-Type"), request.body, gh.JSON)
        else:
            return HttpReply(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{request.method} {request.path}: GET or POST\n".encode(),
                cors + [("Allow", "GET, POST, OPTIONS"), ("Content-Type", "text/plain")],
            )
        if isinstance(params, gh.HttpAnswer):
            return refuse(params)
        loop = asyncio.get_running_loop()
        grant = await self._grant(request)
        if grant is None:
            return refuse(_unauthorized(gh.JSON))
        headers = cors + [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ]
        prepared = self.gateway.documents.get(params.query)
        if prepared.document is None:
            return refuse(gh.HttpAnswer(400, orjson.dumps({"errors": list(prepared.errors)})))
        try:
            operation = operation_of(prepared.document, params.operation_name)
        except GraphQLError as error:
            return refuse(gh.HttpAnswer(400, orjson.dumps({"errors": [error_dict(error)]})))
        context = RequestContext(self.gateway.services, scope=grant.projects, admin=grant.admin)
        if operation.operation != OperationType.SUBSCRIPTION:
            if request.method == "GET" and operation.operation != OperationType.QUERY:
                return refuse(
                    gh.HttpAnswer(
                        405,
                        orjson.dumps({"errors": [{"message": "a mutation over GET: use POST"}]}),
                        gh.JSON,
                        (("Allow", "POST"),),
                    )
                )
            answer = await loop.run_in_executor(
                self.gateway.pool,
                gh.run,
                self.gateway.schema,
                prepared.document,
                params,
                context,
                gh.JSON,
            )
            return sse.SseResult(headers, answer.body)
        try:
            subscription = subscription_request(self.gateway.schema, operation, params.variables)
            context.check_project(subscription.project_id)
        except GraphQLError as error:
            return refuse(gh.HttpAnswer(400, orjson.dumps({"errors": [error_dict(error)]})))
        after = subscription.after_sequence
        if after is None:
            after = sse.last_event_sequence(request.headers.get("Last-Event-ID"))
        selection = self.gateway.selections.get(
            self.gateway.schema,
            params.query,
            prepared.document,
            params.variables,
            params.operation_name,
        )
        return sse.SseSubscription(self.gateway, headers, subscription, selection, after)

    async def _graphql_answer(self, request: HttpRequest) -> gh.HttpAnswer:
        media = gh.answer_type(request.headers.get("Accept"))
        if media is None:
            return gh.HttpAnswer(
                HTTPStatus.NOT_ACCEPTABLE,
                orjson.dumps(
                    {
                        "errors": [
                            {
                                "message": "Accept names no type this endpoint answers: use "
                                "application/graphql-response+json or application/json"
                            }
                        ]
                    }
                ),
            )
        if request.method == "GET":
            params = gh.params_from_get(request.query, media)
        elif request.method == "POST":
            params = gh.params_from_post(request.headers.get("Content-Type"), request.body, media)
        else:
            return gh.HttpAnswer(
                HTTPStatus.METHOD_NOT_ALLOWED,
                orjson.dumps(
                    {"errors": [{"message": f"{request.method} /graphql: use GET or POST"}]}
                ),
                media,
                (("Allow", "GET, POST, OPTIONS"),),
            )
        if isinstance(params, gh.HttpAnswer):
            return params
        loop = asyncio.get_running_loop()
        grant = await self._grant(request)
        if grant is None:
            return _unauthorized(media)
        prepared = gh.prepare(self.gateway.documents, params, request.method, media)
        if isinstance(prepared, gh.HttpAnswer):
            return prepared
        document, _operation = prepared
        context = RequestContext(self.gateway.services, scope=grant.projects, admin=grant.admin)
        return await loop.run_in_executor(
            self.gateway.pool, gh.run, self.gateway.schema, document, params, context, media
        )

    def healthz(self) -> Response:
        database = self.gateway.services.db.ping()
        bus = self.gateway.services.bus.healthy()
        body = {
            "status": "ok" if database and bus else "degraded",
            "database": {"ok": database, "url": self.gateway.services.db.describe()},
            "bus": {"ok": bus},
            "connections": len(self.gateway.connections),
            "projectActors": self.gateway.services.hub.actor_count,
            "pid": os.getpid(),  # which process answered (`serve --processes N`)
        }
        status = HTTPStatus.OK if database and bus else HTTPStatus.SERVICE_UNAVAILABLE
        return _response(status, orjson.dumps(body), "application/json")


GRAPHIQL_PATH = "/graphiql"
# GraphiQL's editors set inline styles; everything else stays this origin's only.
GRAPHIQL_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def _graphiql(response: Response) -> HttpReply:
    """The GraphiQL page (gateway/static/graphiql.html and its vendored files)."""
    reply = _reply(response)
    reply.headers = [
        (k, GRAPHIQL_CSP if k.lower() == "content-security-policy" else v) for k, v in reply.headers
    ]
    return reply


def _unauthorized(media: str) -> gh.HttpAnswer:
    message = "this server needs a token: send Authorization: Bearer <token> (run.py token)"
    return gh.HttpAnswer(
        HTTPStatus.UNAUTHORIZED,
        orjson.dumps({"errors": [{"message": message, "extensions": {"code": "UNAUTHORIZED"}}]}),
        media,
        (("WWW-Authenticate", "Bearer"),),
    )


def _reply(response: Response) -> HttpReply:
    """A websockets `Response` (the pages and /healthz build those) as an h11 reply."""
    return HttpReply(response.status_code, response.body, list(response.headers.raw_items()))


def _response(status: HTTPStatus, body: bytes | str, content_type: str = "text/plain") -> Response:
    if isinstance(body, str):
        body = body.encode()
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)
