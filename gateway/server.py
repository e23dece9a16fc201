"""The gateway: one process's port, its connections and their shared parts.

`Gateway` owns what every connection shares (the document and selection caches, the
Dispatcher, the worker threads, the metrics) and the lifecycle (start, drain, stop). On its
one port, gateway/websockets_internals.FrontDoor sends plain HTTP to `HttpRoutes`
(gateway/http_routes.py) and WebSocket upgrades through the handshake checks here to a
`Connection` (gateway/connection.py).

The event path out of a process: project actor -> `SubscriptionMailbox.deliver`
(gateway/subscriber.py) -> `Dispatcher` (gateway/dispatcher.py, one loop wake-up per burst)
-> `Outbox` (gateway/outbox.py, backpressure) -> `SocketSink`
(gateway/websockets_internals.py, one socket write per connection per burst).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus

from graphql import GraphQLSchema
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway import pages, subprotocols
from gateway import protocol as p
from gateway.auth import Authenticator, auth_required, origin_allowed
from gateway.connection import Connection
from gateway.dispatcher import Dispatcher
from gateway.http_routes import HttpRoutes, _response
from gateway.metrics import GatewayMetrics
from gateway.operations import DocumentCache, SelectionCache
from gateway.services import Services
from gateway.websockets_internals import forget_handshake, front_door

log = logging.getLogger(__name__)

WEBSOCKET_PATHS = ("/graphql", "/graphql/ws")


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
    # SO_REUSEPORT: several processes listen on one port (`serve --processes N`).
    reuse_port: bool = False


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
        self.metrics.watch_delivery_queues(services.hub)
        self.pool = ThreadPoolExecutor(self.config.worker_threads, thread_name_prefix="graphql")
        self.connections: set[Connection] = set()
        self.server: Server | None = None
        self._dispatcher: Dispatcher | None = None
        pages.static_files()  # read the page's files now, not on the loop at first request
        self.routes = HttpRoutes(self)
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
            self.routes, self.config.max_message_bytes, self.config.open_timeout
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
            reuse_port=self.config.reuse_port,
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
        forget_handshake(ws)  # the handshake's headers are not read again
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
