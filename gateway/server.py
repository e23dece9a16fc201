"""The websockets server: a thin adapter between sockets and the protocol core.

Each connection feeds received messages to its `ServerProtocol` and carries out the actions
it returns. Queries and mutations run on worker threads; subscriptions are handed to the
project's actor through the hub. The actor's deliveries reach the loop through the one
`Dispatcher`, which writes each connection's frames synchronously in one socket write per
burst (gateway/mailbox.py); only a connection whose socket is paused gets a task, to write
its backlog when the socket drains, so a slow socket never blocks anyone but itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from graphql import ExecutionResult, GraphQLError, GraphQLSchema, OperationType, execute
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from gateway import graphql_http as gh
from gateway import pages, sse, subprotocols
from gateway import protocol as p
from gateway.auth import Authenticator, auth_required, origin_allowed
from gateway.errors import internal_error, public_errors
from gateway.frames import text_frame_header
from gateway.http import HttpReply, HttpRequest, HttpStream, front_door
from gateway.mailbox import SLOW_CONSUMER_CODE, Dispatcher, Outbox, SubscriptionMailbox
from gateway.metrics import GatewayMetrics
from gateway.operations import (
    DocumentCache,
    SelectionCache,
    error_dict,
    operation_of,
    subscription_request,
)
from gateway.presence import ConnectionPresence
from gateway.schema import RequestContext, Services

log = logging.getLogger(__name__)

WEBSOCKET_PATHS = ("/graphql", "/graphql/ws")
STREAM_PATH = "/graphql/stream"
GRAPHQL_HTTP_PATHS = ("/graphql", STREAM_PATH)


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    init_timeout: float = 3.0
    max_message_bytes: int = 1_000_000
    max_operations: int = 100
    max_connections: int = 10_000
    max_depth: int = 10
    mailbox_capacity: int = 1000
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    # Seconds between `ka` messages on legacy graphql-ws connections (None: none); its
    # client (subscriptions-transport-ws) drops a connection after 30 s without one.
    legacy_keepalive: float | None = 10.0
    close_timeout: float = 10.0
    # Browser origins allowed besides the page's own (see gateway/auth.origin_allowed).
    allowed_origins: list[str] = field(default_factory=list)
    # None: on unless listening on loopback only.
    auth: bool | None = None
    worker_threads: int = 8
    open_timeout: float = 10.0


class Gateway:
    """Serves one process's sockets and HTTP endpoints on one port."""

    def __init__(
        self, services: Services, schema: GraphQLSchema, config: GatewayConfig | None = None
    ) -> None:
        self.services = services
        self.schema = schema
        self.config = config or GatewayConfig()
        self.documents = DocumentCache(schema, max_depth=self.config.max_depth)
        self.selections = SelectionCache()
        self.metrics = GatewayMetrics(
            lambda: services.hub.actor_count, lambda: services.hub.changes_routed
        )
        self.metrics.watch_hub(services.hub)
        self.pool = ThreadPoolExecutor(self.config.worker_threads, thread_name_prefix="graphql")
        self.connections: set[Connection] = set()
        self.server: Server | None = None
        self._dispatcher: Dispatcher | None = None
        pages.static_files()  # read the page's files now, not on the loop at first request
        self.authenticate = Authenticator(
            services.db, auth_required(self.config.host, self.config.auth)
        )

    def dispatcher(self, loop: asyncio.AbstractEventLoop) -> Dispatcher:
        """The one Dispatcher of this server's loop, shared by every connection's outbox."""
        if self._dispatcher is None:
            self._dispatcher = Dispatcher(loop)
        return self._dispatcher

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> Server:
        self._front_door = front_door(
            self._http_request, self.config.max_message_bytes, self.config.open_timeout
        )
        self.server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            subprotocols=list(subprotocols.PREFERENCE),
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            max_size=self.config.max_message_bytes,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            close_timeout=self.config.close_timeout,
            compression=None,
            write_limit=256 * 1024,
            # Plain HTTP (POST /graphql, pages, metrics) is routed off by the front door
            # before websockets reads it; it applies the WebSocket open timeout itself.
            create_connection=self._front_door,
            open_timeout=None,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self, drain_seconds: float = 2.0) -> None:
        """Stop accepting, let writers flush what is queued, then close with 1001."""
        if self.server is None:
            return
        self.server.close(close_connections=False)
        deadline = asyncio.get_running_loop().time() + drain_seconds
        while (self._dispatcher is not None and self._dispatcher.waiting) or any(
            c.outbox.waiting for c in self.connections
        ):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            await connection.ws.close(1001, "server shutting down")
        for http_connection in list(self._front_door.open_http):
            http_connection.close()
        await self.server.wait_closed()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- HTTP ---------------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """The WebSocket handshake's checks (plain HTTP never reaches here: gateway/http.py)."""
        path = request.path.split("?", 1)[0]
        if path not in WEBSOCKET_PATHS:
            return _response(
                HTTPStatus.NOT_FOUND,
                f"no WebSocket endpoint at {path}: use /graphql or /graphql/ws\n",
            )
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.headers.get("Host"), self.config.allowed_origins):
            return _response(
                HTTPStatus.FORBIDDEN,
                f"Origin {origin} is not allowed: start the server with "
                f"--allowed-origin {origin} to accept it\n",
            )
        if len(self.connections) >= self.config.max_connections:
            return _response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"connection limit of {self.config.max_connections} reached: retry later\n",
            )
        return None

    async def _http_request(self, request: HttpRequest) -> HttpReply:
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
            return _reply(await loop.run_in_executor(self.pool, self.healthz))
        if path == "/metrics":
            return HttpReply(
                HTTPStatus.OK,
                self.metrics.render(),
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
        if not origin_allowed(origin, request.headers.get("Host"), self.config.allowed_origins):
            return None
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]

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
        grant = await loop.run_in_executor(
            self.pool, self.authenticate, {"authorization": request.headers.get("Authorization")}
        )
        if grant is None:
            return refuse(_unauthorized(gh.JSON))
        headers = cors + [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ]
        prepared = self.documents.get(params.query)
        if prepared.document is None:
            return refuse(gh.HttpAnswer(400, orjson.dumps({"errors": list(prepared.errors)})))
        try:
            operation = operation_of(prepared.document, params.operation_name)
        except GraphQLError as error:
            return refuse(gh.HttpAnswer(400, orjson.dumps({"errors": [error_dict(error)]})))
        context = RequestContext(self.services, scope=grant.projects, admin=grant.admin)
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
                self.pool, gh.run, self.schema, prepared.document, params, context, gh.JSON
            )
            return sse.SseResult(headers, answer.body)
        try:
            subscription = subscription_request(self.schema, operation, params.variables)
            context.check_project(subscription.project_id)
        except GraphQLError as error:
            return refuse(gh.HttpAnswer(400, orjson.dumps({"errors": [error_dict(error)]})))
        after = subscription.after_sequence
        if after is None:
            after = sse.last_event_sequence(request.headers.get("Last-Event-ID"))
        selection = self.selections.get(
            self.schema, params.query, prepared.document, params.variables, params.operation_name
        )
        return sse.SseSubscription(self, headers, subscription, selection, after)

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
        grant = await loop.run_in_executor(
            self.pool, self.authenticate, {"authorization": request.headers.get("Authorization")}
        )
        if grant is None:
            return _unauthorized(media)
        prepared = gh.prepare(self.documents, params, request.method, media)
        if isinstance(prepared, gh.HttpAnswer):
            return prepared
        document, _operation = prepared
        context = RequestContext(self.services, scope=grant.projects, admin=grant.admin)
        return await loop.run_in_executor(
            self.pool, gh.run, self.schema, document, params, context, media
        )

    def healthz(self) -> Response:
        database = self.services.db.ping()
        bus = self.services.bus.healthy()
        body = {
            "status": "ok" if database and bus else "degraded",
            "database": {"ok": database, "url": self.services.db.describe()},
            "bus": {"ok": bus},
            "connections": len(self.connections),
            "projectActors": self.services.hub.actor_count,
        }
        status = HTTPStatus.OK if database and bus else HTTPStatus.SERVICE_UNAVAILABLE
        return _response(status, orjson.dumps(body), "application/json")

    # --- WebSocket ----------------------------------------------------------------------

    def _protocol_core(self, subprotocol: str | None) -> subprotocols.SelectedCore | None:
        """The protocol core for a connection, by the subprotocol it negotiated."""
        return subprotocols.core_for(
            subprotocol,
            max_operations=self.config.max_operations,
            keepalive_interval=self.config.legacy_keepalive,
        )

    async def _handle(self, ws: ServerConnection) -> None:
        selected = self._protocol_core(ws.subprotocol)
        if selected is None:
            await ws.close(p.CloseCode.SUBPROTOCOL_NOT_ACCEPTABLE, "Subprotocol not acceptable")
            return
        # The handshake's headers are not read again: drop them (a few KiB per socket).
        # websockets checks `request is not None` to know the handshake is done: keep one.
        if ws.request is not None:
            ws.request = Request(ws.request.path, Headers())
        ws.response = None
        connection = Connection(self, ws, selected)
        self.connections.add(connection)
        self.metrics.connections.inc()
        try:
            await connection.run()
        finally:
            self.connections.discard(connection)
            self.metrics.connections.dec()


def _select_subprotocol(
    _connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """graphql-transport-ws if offered, else the legacy graphql-ws (gateway/subprotocols.py).

    Accept the handshake even without either, so that the client is told why with the
    protocol's own close code (4406) instead of a bare HTTP 400."""
    chosen = subprotocols.select(offered)
    return Subprotocol(chosen) if chosen is not None else None


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


class SocketSink:
    """An outbox's way to the socket (`gateway.mailbox.FrameSink`), as `websockets.broadcast`
    writes: synchronously, all waiting frames in one transport write, no task or await.

    Text frames get their header from gateway/frames.py rather than from a `Frame` object
    per message (the fan-out's hottest step); the connection must be open, with no
    extension and no fragmented message in progress, exactly when `send_text` would
    accept the frame. Anything the library queued itself goes first.
    """

    __slots__ = ("ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        if ws.protocol.extensions:  # compression=None in Gateway.start: never the case
            raise ValueError("SocketSink frames by hand: WebSocket extensions must be off")

    def writable(self) -> bool:
        return self.ws.protocol.state is State.OPEN and not self.ws.paused

    def is_open(self) -> bool:
        return self.ws.protocol.state is State.OPEN

    def write(self, frames: list[bytes]) -> None:
        ws = self.ws
        protocol = ws.protocol
        if protocol.state is not State.OPEN or protocol.expect_continuation_frame:
            return  # closing: the close handshake is the last thing to send
        # Open state: the library's queued chunks (if any) are bytes, no end-of-stream.
        chunks = protocol.data_to_send()
        for frame in frames:
            chunks.append(text_frame_header(len(frame)))
            chunks.append(frame)
        ws.transport.write(b"".join(chunks))

    async def drained(self) -> None:
        with contextlib.suppress(Exception):  # a lost connection ends the wait too
            await self.ws.drain()


class Connection:
    """One socket: its protocol state, its outbox, its operations."""

    def __init__(
        self, gateway: Gateway, ws: ServerConnection, selected: subprotocols.SelectedCore
    ) -> None:
        self.gateway = gateway
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.protocol: subprotocols.ProtocolCore = selected.core
        self.keepalive_interval = selected.keepalive_interval
        self.outbox = Outbox(
            SocketSink(ws),
            gateway.dispatcher(self.loop),
            on_slow_consumer=self._on_slow_consumer,
            on_coalesced=gateway.metrics.frames_coalesced.inc,
            on_written=gateway.metrics.frames_delivered.inc,
        )
        self.presence = ConnectionPresence(gateway.services.hub, self.loop, gateway.pool)
        self.context = RequestContext(gateway.services, extras=self.presence.extras())
        self.subscriptions: dict[str, tuple[int, SubscriptionMailbox]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closing = False
        self._keepalive_timer: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        timer = self.loop.call_later(self.gateway.config.init_timeout, self._on_init_timeout)
        if self.keepalive_interval:
            self._keepalive_timer = self.loop.call_later(
                self.keepalive_interval, self._on_keepalive
            )
        try:
            async for message in self.ws:
                await self._apply(self.protocol.receive(message))
        except ConnectionClosed:
            pass
        finally:
            timer.cancel()
            if self._keepalive_timer is not None:
                self._keepalive_timer.cancel()
            self._end_everything()
            self.outbox.close()

    def _off_loop(self, call: Callable[..., Any], *args: Any) -> None:
        """Run a hub call on a worker thread: the hub's lock (held while it retires idle
        actors) and an actor's start (a thread and a database read) never block the loop."""
        try:
            self.loop.run_in_executor(self.gateway.pool, call, *args)
        except RuntimeError:  # the pool is shut down: the server is stopping
            call(*args)

    def _end_everything(self) -> None:
        hub = self.gateway.services.hub
        self.presence.end()  # an abrupt disconnect ends this connection's presence too
        for project_id, mailbox in self.subscriptions.values():
            self._off_loop(hub.unsubscribe, project_id, mailbox.key)
            self.outbox.drop(mailbox.serial)
        self.gateway.metrics.subscriptions.dec(len(self.subscriptions))
        self.subscriptions.clear()
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    # --- protocol actions ---------------------------------------------------------------

    async def _apply(self, actions: list[p.Action]) -> None:
        for action in actions:
            if isinstance(action, p.Send):
                self.outbox.put_control(action.text)
            elif isinstance(action, p.Close):
                await self._close(action.code, action.reason)
            elif isinstance(action, p.Authenticate):
                await self._authenticate(action.payload)
            elif isinstance(action, p.StartOperation):
                await self._start(action)
            elif isinstance(action, p.StopOperation):
                self._stop(action.id)

    async def _close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self._end_everything()
        # Let the Dispatcher write what the core sent just before closing (the legacy
        # protocol's connection_error): its loop callback is already scheduled.
        await asyncio.sleep(0)
        await self.ws.close(code, reason)

    def _on_init_timeout(self) -> None:
        asyncio.ensure_future(self._apply(self.protocol.init_timeout()))

    def _on_keepalive(self) -> None:
        """The legacy protocol's `ka`: a control frame, every `keepalive_interval`."""
        if self.keepalive_interval is None or self.closing:
            return
        for action in self.protocol.keepalive():
            if isinstance(action, p.Send):
                self.outbox.put_control(action.text)
        self._keepalive_timer = self.loop.call_later(self.keepalive_interval, self._on_keepalive)

    def _on_slow_consumer(self, reason: str) -> None:
        if self.closing:
            return
        self.gateway.metrics.slow_consumers_closed.inc()
        asyncio.ensure_future(self._close(SLOW_CONSUMER_CODE, reason))

    async def _authenticate(self, payload: dict[str, Any] | None) -> None:
        grant = await self.loop.run_in_executor(
            self.gateway.pool, self.gateway.authenticate, payload
        )
        if grant is None:
            await self._apply(self.protocol.reject("Forbidden"))
            return
        self.presence.name(grant.user, (payload or {}).get("userName"))
        self.context = RequestContext(
            self.gateway.services,
            scope=grant.projects,
            admin=grant.admin,
            extras=self.presence.extras(),
        )
        await self._apply(self.protocol.accept())

    async def _start(self, op: p.StartOperation) -> None:
        prepared = self.gateway.documents.get(op.query)
        if prepared.document is None:
            await self._apply(self.protocol.error(op.id, list(prepared.errors)))
            return
        try:
            operation = operation_of(prepared.document, op.operation_name)
        except GraphQLError as error:
            await self._apply(self.protocol.error(op.id, [error_dict(error)]))
            return
        if operation.operation == OperationType.SUBSCRIPTION:
            await self._subscribe(op, prepared.document, operation)
        else:
            task = asyncio.create_task(self._execute(op, prepared.document))
            self.tasks[op.id] = task

    async def _subscribe(self, op: p.StartOperation, document: Any, operation: Any) -> None:
        schema = self.gateway.schema
        try:
            request = subscription_request(schema, operation, op.variables)
            self.context.check_project(request.project_id)
        except GraphQLError as error:
            await self._apply(self.protocol.error(op.id, [error_dict(error)]))
            return
        selection = self.gateway.selections.get(
            schema, op.query, document, op.variables, op.operation_name
        )
        mailbox: SubscriptionMailbox

        def on_fail(errors: list[dict[str, Any]]) -> None:
            self.loop.call_soon_threadsafe(self._subscription_failed, op.id, mailbox, errors)

        mailbox = SubscriptionMailbox(
            self.outbox,
            self.protocol.next_prefix(op.id),
            selection,
            self.gateway.config.mailbox_capacity,
            on_fail,
        )
        self.subscriptions[op.id] = (request.project_id, mailbox)
        self.gateway.metrics.subscriptions.inc()
        # Awaited before the next message of this socket is read: anything the client does
        # after subscribing is ordered after the subscription in the actor. On a worker
        # thread, because starting a project's actor reads the database.
        try:
            await self.loop.run_in_executor(
                self.gateway.pool,
                functools.partial(
                    self.gateway.services.hub.subscribe,
                    request.project_id,
                    mailbox,
                    after_sequence=request.after_sequence,
                    snapshot=request.snapshot,
                ),
            )
        except Exception as error:  # noqa: BLE001 - the operation fails, not the connection
            self._subscription_failed(op.id, mailbox, [internal_error(error, "subscribe")])
            return
        current = self.subscriptions.get(op.id)
        if self.closing or current is None or current[1] is not mailbox:
            # Ended (connection closed) while the hub was subscribing it: undo.
            self._off_loop(self.gateway.services.hub.unsubscribe, request.project_id, mailbox.key)

    def _subscription_failed(
        self, op_id: str, mailbox: SubscriptionMailbox, errors: list[dict[str, Any]]
    ) -> None:
        current = self.subscriptions.get(op_id)
        if current is None or current[1] is not mailbox:
            return  # already completed by the client (and maybe the id reused)
        del self.subscriptions[op_id]
        self.gateway.metrics.subscriptions.dec()
        asyncio.ensure_future(self._apply(self.protocol.error(op_id, errors)))

    def _stop(self, op_id: str) -> None:
        entry = self.subscriptions.pop(op_id, None)
        if entry is not None:
            project_id, mailbox = entry
            self.outbox.drop(mailbox.serial)
            self._off_loop(self.gateway.services.hub.unsubscribe, project_id, mailbox.key)
            self.gateway.metrics.subscriptions.dec()
        task = self.tasks.pop(op_id, None)
        if task is not None:
            task.cancel()

    async def _execute(self, op: p.StartOperation, document: Any) -> None:
        """A query or mutation: one `next`, then `complete`."""
        task = asyncio.current_task()
        try:
            result = await self.loop.run_in_executor(
                self.gateway.pool, self._execute_sync, op, document
            )
            if self.tasks.get(op.id) is not task:
                return  # the client completed it meanwhile
            payload = orjson.dumps(result.formatted).decode()
            self.outbox.put_control(self.protocol.next_text(op.id, payload))
            await self._apply(self.protocol.complete(op.id))
        except asyncio.CancelledError:
            pass
        except Exception as error:  # noqa: BLE001 - an operation's failure is the client's answer
            public = internal_error(error, f"operation {op.id}")
            if self.tasks.get(op.id) is task:
                await self._apply(self.protocol.error(op.id, [public]))
        finally:
            if self.tasks.get(op.id) is task:
                del self.tasks[op.id]

    def _execute_sync(self, op: p.StartOperation, document: Any) -> ExecutionResult:
        result = execute(
            self.gateway.schema,
            document,
            context_value=self.context,
            variable_values=op.variables,
            operation_name=op.operation_name,
        )
        assert isinstance(result, ExecutionResult)
        return public_errors(result)
