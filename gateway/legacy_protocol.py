"""Sans-I/O core of the legacy ``graphql-ws`` subprotocol (subscriptions-transport-ws), server side.

Apollo Client 2/3's ``WebSocketLink`` and every app still on ``subscriptions-transport-ws``
speak this older protocol: ``connection_init`` / ``connection_ack`` / ``ka``, then ``start``
and ``stop`` per operation, results in ``data`` frames, and ``complete``. It behaves exactly
like :class:`gateway.protocol.ServerProtocol` towards the server: the same methods, the same
actions (:class:`~gateway.protocol.Send`, :class:`~gateway.protocol.Close`, ...), so the
server picks one core or the other by the subprotocol the client asked for and the rest of
the connection (auth, limits, delivery) is shared. Only the wire format differs, and that
lives here; like the other core this module has no I/O, no clock and no asyncio.

Where the two protocols differ in substance, this core follows the legacy one
(``PROTOCOL.md`` of apollographql/subscriptions-transport-ws, and its reference
``src/server.ts`` where the document is silent):

- The client sends ``start`` right after ``connection_init`` without waiting for the ack
  (its ``flushUnsentMessagesQueue``). Operations that arrive while the connection is being
  authenticated are held and started by :meth:`accept` (dropped by :meth:`reject`).
- A malformed message does not close the socket: the server answers ``connection_error``
  (or ``error`` for an operation it can name) and carries on, as ``PROTOCOL.md`` says.
- ``stop`` is answered with ``complete`` ("When client unsubscribe, the server ... sends
  ``GQL_COMPLETE``"); a ``start`` that reuses a running id replaces that operation, as the
  reference server does.
- A refused ``connection_init`` gets ``connection_error`` with the reason, then the close
  (4403 here; the reference closes with 1011, which the client treats the same).
- ``ka`` right after ``connection_ack`` and then every interval (the caller's timer calls
  :meth:`LegacyServerProtocol.keepalive`). The client counts a connection as dead when no
  ``ka`` arrives within its ``timeout`` (30 s by default) once it has seen the first one.

The one thing the reference allows that this core does not: operations without any
``connection_init``. Every client sends one, and the token it carries is how auth works.
"""

from __future__ import annotations

from typing import Any, Final

from gateway.protocol import (
    _FORBIDDEN,
    _INIT_TIMEOUT,
    _INTERNAL_ERROR,
    Action,
    CloseCode,
    OperationCore,
    Send,
    StartOperation,
    State,
    StopOperation,
    _decode_object,
    _dumps,
    _json_type,
    _quote,
)
from gateway.protocol import (
    _BadMessage as MalformedMessage,
)

__all__ = ["SUBPROTOCOL", "KEEPALIVE_TEXT", "LegacyServerProtocol"]

SUBPROTOCOL: Final = "graphql-ws"
"""The subprotocol name subscriptions-transport-ws offers (its ``GRAPHQL_WS``)."""

KEEPALIVE_TEXT: Final = '{"type":"ka"}'

_NORMAL: Final = "connection_terminate received"

# Message types the server sends; a client sending one is confused, not malicious.
_SERVER_ONLY_TYPES: Final = frozenset(
    {"connection_ack", "connection_error", "data", "error", "complete", "ka"}
)

_DATA_PREFIX_HEAD: Final = b'{"type":"data","id":'
_DATA_PREFIX_TAIL: Final = b',"payload":'


def _connection_error(message: str) -> Send:
    return Send(_dumps({"type": "connection_error", "payload": {"message": message}}))


def _operation_error(op_id: str, message: str, code: str | None = None) -> Send:
    error: dict[str, Any] = {"message": message}
    if code is not None:
        error["extensions"] = {"code": code}
    return Send(_dumps({"type": "error", "id": op_id, "payload": error}))


def error_payload(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``error`` message's payload: one GraphQL error object (``PROTOCOL.md``: ``Error``).

    With several errors, the first one's message leads and all of them are under ``errors``;
    the client's ``formatErrors`` reads ``payload.errors`` first, so it sees every one.
    """
    if len(errors) == 1:
        return errors[0]
    first = errors[0]["message"]
    return {"message": f"{first} (and {len(errors) - 1} more errors)", "errors": errors}


class _BadMessage(MalformedMessage):
    """A client message the server cannot use; ``op_id`` set when it names an operation."""

    def __init__(self, text: str, op_id: str | None = None) -> None:
        super().__init__(text)
        self.op_id = op_id


class LegacyServerProtocol(OperationCore):
    """The server side of one legacy ``graphql-ws`` connection, as a state machine.

    Same contract as :class:`gateway.protocol.ServerProtocol`: public methods return actions
    to perform in order; ``receive``, ``accept``, ``reject``, ``init_timeout`` and
    ``keepalive`` never raise; the others raise on the caller's programming errors.
    """

    __slots__ = ("_held", "_keepalive")

    _RESULT_PREFIX_HEAD = _DATA_PREFIX_HEAD
    _RESULT_PREFIX_TAIL = _DATA_PREFIX_TAIL

    def __init__(self, *, max_operations: int = 100, keepalive: bool = True) -> None:
        """``max_operations`` caps operations at once, as in the other core; ``keepalive``
        says whether the server sends ``ka`` (right after the ack, and on each
        :meth:`keepalive`)."""
        super().__init__(max_operations=max_operations)
        self._keepalive = bool(keepalive)
        # Operations started while authenticating, in arrival order, by id.
        self._held: dict[str, StartOperation] = {}

    @property
    def held_ids(self) -> frozenset[str]:
        """Ids of operations waiting for the connection to be accepted."""
        return frozenset(self._held)

    # ----------------------------------------------------------------------------------------
    # Input from the client
    # ----------------------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> list[Action]:
        """Take one message from the client. Never raises.

        A message the server cannot use is answered (``error`` for the operation it names,
        else ``connection_error``) and otherwise ignored: the legacy protocol keeps the
        connection. An unexpected failure inside closes with 4500.
        """
        if self._state is State.CLOSED:
            return []
        try:
            return self._receive(data)
        except MalformedMessage as exc:
            op_id = getattr(exc, "op_id", None)
            if op_id is not None:
                return [_operation_error(op_id, str(exc), "BAD_REQUEST")]
            return [_connection_error(str(exc))]
        except Exception:  # the contract: never raise on client input
            return self._close(CloseCode.INTERNAL_ERROR, _INTERNAL_ERROR)

    def _receive(self, data: str | bytes) -> list[Action]:
        message = _decode_object(data)
        kind = message.get("type")
        if not isinstance(kind, str):
            raise _BadMessage(f'a message needs a string "type", not {_json_type(kind)}')
        if kind == "start":
            return self._on_start(self._parse_start(message))
        if kind == "stop":
            return self._on_stop(self._parse_id(message, kind))
        if kind == "connection_init":
            payload = message.get("payload")
            if payload is not None and not isinstance(payload, dict):
                raise _BadMessage(
                    f'"connection_init" payload must be an object, not {_json_type(payload)}'
                )
            return self._on_connection_init(payload)
        if kind == "connection_terminate":
            return self._close(1000, _NORMAL)
        op_id = message.get("id")
        named = op_id if isinstance(op_id, str) and op_id else None
        if kind in _SERVER_ONLY_TYPES:
            raise _BadMessage(f'"{kind}" messages are sent by the server only', named)
        raise _BadMessage(
            f"unknown message type {_quote(kind)}: this endpoint speaks the graphql-ws "
            "subprotocol (connection_init, start, stop, connection_terminate)",
            named,
        )

    @staticmethod
    def _parse_id(message: dict[str, Any], kind: str) -> str:
        op_id = message.get("id")
        if not isinstance(op_id, str) or not op_id:
            raise _BadMessage(f'"{kind}" message requires a non-empty string "id"')
        return op_id

    @classmethod
    def _parse_start(cls, message: dict[str, Any]) -> StartOperation:
        op_id = cls._parse_id(message, "start")
        payload = message.get("payload")
        if not isinstance(payload, dict):
            raise _BadMessage('"start" message requires an object "payload"', op_id)
        query = payload.get("query")
        if not isinstance(query, str):
            raise _BadMessage('"start" payload requires a string "query"', op_id)
        variables = payload.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise _BadMessage('"start" payload "variables" must be an object or null', op_id)
        operation_name = payload.get("operationName")
        if operation_name is not None and not isinstance(operation_name, str):
            raise _BadMessage('"start" payload "operationName" must be a string or null', op_id)
        extensions = payload.get("extensions")
        if not isinstance(extensions, dict):
            extensions = None
        return StartOperation(op_id, query, variables, operation_name, extensions)

    def _too_many(self, op_id: str) -> Send:
        limit = self._max_operations
        error = {
            "message": (
                f"Too many operations on this connection: the limit is {limit}; "
                "stop one before starting another"
            ),
            "extensions": {"code": "TOO_MANY_OPERATIONS", "limit": limit},
        }
        return Send(_dumps({"type": "error", "id": op_id, "payload": error}))

    def _on_start(self, op: StartOperation) -> list[Action]:
        if self._state is State.AWAITING_INIT:
            return [
                _operation_error(
                    op.id,
                    "send connection_init (with your token) before start",
                    "UNAUTHENTICATED",
                )
            ]
        if self._state is State.AUTHENTICATING:
            self._held.pop(op.id, None)  # a reused id replaces the held operation
            if len(self._held) >= self._max_operations:
                return [self._too_many(op.id)]
            self._held[op.id] = op
            return []
        actions: list[Action] = []
        if op.id in self._active:
            # The reference server unsubscribes the running operation first; no complete
            # for it, since the client's handler for this id is now the new operation's.
            del self._active[op.id]
            actions.append(StopOperation(op.id))
        if len(self._active) >= self._max_operations:
            actions.append(self._too_many(op.id))
            return actions
        self._active[op.id] = None
        actions.append(op)
        return actions

    def _on_stop(self, op_id: str) -> list[Action]:
        if self._held.pop(op_id, None) is not None:
            return [Send(_dumps({"type": "complete", "id": op_id}))]
        if op_id not in self._active:
            return []  # already finished by the server: the client ignores it either way
        del self._active[op_id]
        return [StopOperation(op_id), Send(_dumps({"type": "complete", "id": op_id}))]

    # ----------------------------------------------------------------------------------------
    # Decisions of the server
    # ----------------------------------------------------------------------------------------

    def _acknowledged(self) -> list[Action]:
        """After ``connection_ack``: the first ``ka``, then the operations held meanwhile."""
        actions: list[Action] = [Send(KEEPALIVE_TEXT)] if self._keepalive else []
        held, self._held = self._held, {}
        for op in held.values():
            actions.extend(self._on_start(op))
        return actions

    def reject(self, reason: str = _FORBIDDEN) -> list[Action]:
        """Refuse the ``connection_init``: ``connection_error`` with ``reason``, close 4403."""
        if self._state is not State.AUTHENTICATING:
            return []
        try:
            text = (reason if isinstance(reason, str) else str(reason)) or _FORBIDDEN
        except Exception:  # reject() must not raise
            text = _FORBIDDEN
        return [_connection_error(text), *self._close(CloseCode.FORBIDDEN, text)]

    def init_timeout(self) -> list[Action]:
        """The init timer fired: ``connection_error`` and close 4408 unless acknowledged."""
        if self._state in (State.AWAITING_INIT, State.AUTHENTICATING):
            return [
                _connection_error(f"{_INIT_TIMEOUT}: send connection_init first"),
                *self._close(CloseCode.CONNECTION_INIT_TIMEOUT, _INIT_TIMEOUT),
            ]
        return []

    def keepalive(self) -> list[Action]:
        """The caller's keep-alive timer fired: a ``ka`` on an acknowledged connection."""
        if self._keepalive and self._state is State.ACKNOWLEDGED:
            return [Send(KEEPALIVE_TEXT)]
        return []

    def _complete_text(self, id: str) -> str:
        return _dumps({"type": "complete", "id": id})

    def _error_text(self, id: str, errors: list[dict[str, Any]]) -> str:
        # No ``complete`` follows: the client drops the operation on ``error``.
        return _dumps({"type": "error", "id": id, "payload": error_payload(errors)})

    def _close(self, code: int, reason: str) -> list[Action]:
        self._held.clear()
        return super()._close(code, reason)

    def __repr__(self) -> str:
        return (
            f"<LegacyServerProtocol state={self._state.value} active={len(self._active)}"
            f"/{self._max_operations} held={len(self._held)}>"
        )
