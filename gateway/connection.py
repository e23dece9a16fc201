"""One WebSocket connection: its protocol core, its outbox, its operations.

Each received message goes to the connection's protocol core (gateway/protocol.py or
gateway/legacy_protocol.py, no I/O); the connection carries out the actions it returns.
Queries and mutations run on the gateway's worker threads; subscriptions are handed to the
project's actor through the hub with a `SubscriptionMailbox` (gateway/subscriber.py), whose
deliveries reach this connection's `Outbox` (gateway/outbox.py) through the Dispatcher.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from graphql import ExecutionResult, GraphQLError, OperationType, execute
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway import protocol as p
from gateway import subprotocols
from gateway.errors import internal_error, public_errors
from gateway.operations import error_dict, operation_of, subscription_request
from gateway.outbox import SLOW_CONSUMER_CODE, Outbox, lagging_error
from gateway.presence import ConnectionPresence
from gateway.services import RequestContext
from gateway.subscriber import SubscriptionMailbox
from gateway.websockets_internals import SocketSink

if TYPE_CHECKING:
    from gateway.server import Gateway


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
            on_lagging=self._on_lagging,
            on_coalesced=gateway.metrics.frames_coalesced.inc,
            on_written=gateway.metrics.frames_delivered.inc,
        )
        gateway.metrics.outboxes.add(self.outbox)
        self.presence = ConnectionPresence(gateway.services.hub, self.loop, gateway.pool)
        self.context = RequestContext(gateway.services, presence=self.presence)
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

    def _on_lagging(self, serial: int, after: int, capacity: int) -> None:
        """One subscription could not keep up (gateway/outbox.py): it alone ends, with a
        protocol `error` that names the afterSequence to resume from without a gap. Its
        frames already on the socket arrive first; the connection's other operations are
        untouched. (Called inside the outbox's flush: the error is queued synchronously,
        behind everything of the subscription that was written.)"""
        if self.closing:
            return
        found = [
            (op_id, project_id, mailbox)
            for op_id, (project_id, mailbox) in self.subscriptions.items()
            if mailbox.serial == serial
        ]
        if not found:
            return  # already ended
        op_id, project_id, mailbox = found[0]
        del self.subscriptions[op_id]
        self.gateway.metrics.subscriptions.dec()
        self.gateway.metrics.subscriptions_shed.inc()
        self._off_loop(self.gateway.services.hub.unsubscribe, project_id, mailbox.key)
        for action in self.protocol.error(op_id, [lagging_error(after, capacity)]):
            if isinstance(action, p.Send):
                self.outbox.put_control(action.text)

    def _on_slow_consumer(self, reason: str) -> None:
        """The connection as a whole cannot keep up (its protocol messages pile up behind
        a paused socket, see gateway/outbox.py): close it with 1013 and `reason`."""
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
            presence=self.presence,
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
