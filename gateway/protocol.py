"""Sans-I/O core of the ``graphql-transport-ws`` protocol, server side.

One :class:`ServerProtocol` per WebSocket connection. It is a pure state machine in the
style of h11 and of the ``websockets`` library's core: the caller feeds it what the client
sent (:meth:`ServerProtocol.receive`) and what the server decided (:meth:`~ServerProtocol.accept`,
:meth:`~ServerProtocol.complete`, ...), and it answers with a list of *actions* that the
caller carries out in order (send a frame, close the socket, authenticate, start or stop an
operation).

Why this shape: every rule of the protocol (close codes, reason texts, id bookkeeping,
ordering of checks) lives here and nowhere else, so it is tested exhaustively without a
socket, an event loop, a clock or a GraphQL engine. Consequently this module has no I/O, no
asyncio, no timers (the caller's timer calls :meth:`~ServerProtocol.init_timeout`) and
imports nothing from the project; only the standard library and ``orjson``.

The rules follow the protocol document of enisdenjo/graphql-ws (``PROTOCOL.md``) and the
reason texts of its reference server (``src/server.ts``); where the reference only says
``Invalid message received`` for a 4400 close, this module appends what was wrong after a
colon, so that a client developer can see it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final, TypeAlias

import orjson

__all__ = [
    "SUBPROTOCOL",
    "MAX_CLOSE_REASON_BYTES",
    "Action",
    "Authenticate",
    "Close",
    "CloseCode",
    "Send",
    "ServerProtocol",
    "StartOperation",
    "State",
    "StopOperation",
]

SUBPROTOCOL: Final = "graphql-transport-ws"
"""The WebSocket subprotocol name the client must offer (``Sec-WebSocket-Protocol``)."""

MAX_CLOSE_REASON_BYTES: Final = 123
"""A close frame's payload is at most 125 bytes and 2 of them hold the code (RFC 6455, 5.5)."""


# --------------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send one text frame whose content is ``text``, as is (it is already JSON)."""

    text: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with ``code`` and ``reason``; the connection is over after this.

    The caller cancels every operation it still runs for this connection: no
    :class:`StopOperation` is emitted for them, because nothing may be sent after a close.
    ``reason`` is already at most :data:`MAX_CLOSE_REASON_BYTES` bytes of UTF-8.
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    """``connection_init`` arrived with ``payload``; the caller checks it (a token, ...).

    Then it calls :meth:`ServerProtocol.accept` or :meth:`ServerProtocol.reject`. Checking is
    the caller's job because it may need I/O (a database, a token service).
    """

    payload: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StartOperation:
    """A valid ``subscribe`` arrived on an acknowledged connection; run this operation.

    The id is active from now on: the caller sends results with :meth:`ServerProtocol.next_prefix`
    (or :meth:`ServerProtocol.next_text`) and ends it with :meth:`ServerProtocol.complete` or
    :meth:`ServerProtocol.error`. Parsing and validating the query is the caller's job: a
    GraphQL-level problem is reported with ``error``, not by closing the socket.
    """

    id: str
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    extensions: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class StopOperation:
    """The client sent ``complete`` for running operation ``id``: cancel it.

    The id is already freed, and the client may reuse it at once for a new operation. So the
    caller must not send ``complete`` back (the client already considers the operation over),
    and must not call :meth:`ServerProtocol.complete` or :meth:`ServerProtocol.error`, nor send
    ``next`` frames, for the stopped operation afterwards: by then the same id may name the
    client's next operation.
    """

    id: str


Action: TypeAlias = Send | Close | Authenticate | StartOperation | StopOperation


class CloseCode(IntEnum):
    """The close codes of graphql-transport-ws (graphql-ws ``CloseCode``, server side)."""

    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    SUBPROTOCOL_NOT_ACCEPTABLE = 4406
    CONNECTION_INIT_TIMEOUT = 4408
    SUBSCRIBER_ALREADY_EXISTS = 4409
    TOO_MANY_INIT_REQUESTS = 4429
    INTERNAL_ERROR = 4500


class State(StrEnum):
    """Where a connection is; a ``StrEnum``, so ``state == "acknowledged"`` holds too."""

    AWAITING_INIT = "awaiting_init"
    """Socket open, no ``connection_init`` yet; only ping/pong are served."""
    AUTHENTICATING = "authenticating"
    """``connection_init`` received, :class:`Authenticate` emitted, no verdict yet."""
    ACKNOWLEDGED = "acknowledged"
    """``connection_ack`` sent; operations may run."""
    CLOSED = "closed"
    """A :class:`Close` was emitted; nothing more is ever produced."""


# Reason texts, exactly as the reference server (graphql-ws src/server.ts) writes them.
_INVALID_MESSAGE: Final = "Invalid message received"
_TOO_MANY_INIT: Final = "Too many initialisation requests"
_UNAUTHORIZED: Final = "Unauthorized"
_FORBIDDEN: Final = "Forbidden"
_INIT_TIMEOUT: Final = "Connection initialisation timeout"
_INTERNAL_ERROR: Final = "Internal server error"

# Message types by direction (PROTOCOL.md, "Message types").
_SERVER_ONLY_TYPES: Final = frozenset({"connection_ack", "next", "error"})

# Close codes an endpoint may put in a close frame (RFC 6455 7.4 and the IANA registry);
# 1005, 1006 and 1015 are reserved for reporting and must never be sent.
_SENDABLE_STANDARD_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011})
_SENDABLE_STANDARD_CODES_EXTRA: Final = frozenset({1012, 1013, 1014})

# How much of a client-chosen string is quoted back in a 4400 reason.
_ECHO_CHARS: Final = 40

_NEXT_PREFIX_HEAD: Final = b'{"id":'
_NEXT_PREFIX_TAIL: Final = b',"type":"next","payload":'


def _limit_reason(reason: str) -> str:
    """Return ``reason`` cut to at most 123 bytes of UTF-8, never inside a character.

    The reference server falls back to a fixed text when a reason is too long; cutting keeps
    the useful start (e.g. the id in ``Subscriber for <id> already exists``). Lone surrogates
    (which UTF-8 cannot carry) become ``?`` so that the socket layer never fails on a reason.
    """
    encoded = reason.encode("utf-8", errors="replace")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return encoded.decode("utf-8")
    marker = "..."
    cut = encoded[: MAX_CLOSE_REASON_BYTES - len(marker)]
    # ``ignore`` drops the leading bytes of a character that the cut split in two.
    return cut.decode("utf-8", errors="ignore") + marker


def _quote(text: str) -> str:
    """Quote a client-chosen string for a reason text, shortened so the reason stays readable."""
    if len(text) > _ECHO_CHARS:
        text = text[:_ECHO_CHARS] + "..."
    return f'"{text}"'


def _json_type(value: object) -> str:
    """Name the JSON type of ``value`` for error texts (like graphql-ws ``extendedTypeof``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _dumps(message: dict[str, Any]) -> str:
    """Serialise one outgoing message to the text of a frame."""
    return orjson.dumps(message).decode("utf-8")


class _BadMessage(Exception):
    """A client message breaks the protocol; its text follows ``Invalid message received: ``."""


def _decode_object(data: str | bytes) -> dict[str, Any]:
    """One client message as a JSON object, or :class:`_BadMessage` saying why not (both
    cores: the subprotocols differ in what they do with a bad message, not in what is one)."""
    if not isinstance(data, str | bytes | bytearray | memoryview):
        raise _BadMessage("a message must be JSON text")
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _BadMessage("the message is not valid JSON") from None
    if not isinstance(message, dict):
        raise _BadMessage(f"a message must be a JSON object, not {_json_type(message)}")
    return message


class OperationCore:
    """What both subprotocol cores share: the connection's state, the operations it runs
    and the rules for ending them; each core adds its own wire format.

    ``ServerProtocol`` (graphql-transport-ws) and ``gateway.legacy_protocol.
    LegacyServerProtocol`` (graphql-ws) differ in their messages and in what a malformed
    message does, never in this bookkeeping: an id is active from its start until either
    side ends it, ``complete``/``error`` free it, ``close`` ends everything once.
    """

    __slots__ = ("_active", "_max_operations", "_state")

    # The bytes around an operation's id at the start of its result frames.
    _RESULT_PREFIX_HEAD: bytes
    _RESULT_PREFIX_TAIL: bytes

    def __init__(self, *, max_operations: int = 100) -> None:
        """``max_operations`` caps operations running at once on this connection.

        A cap protects the server from one client starting unbounded work; going over it
        fails just that operation with a GraphQL error, it does not drop the connection.
        """
        if isinstance(max_operations, bool) or not isinstance(max_operations, int):
            raise TypeError("max_operations must be an int")
        if max_operations < 1:
            raise ValueError("max_operations must be at least 1")
        self._max_operations: int = max_operations
        self._state: State = State.AWAITING_INIT
        # A dict keeps start order, which makes logs and tests deterministic.
        self._active: dict[str, None] = {}

    @property
    def state(self) -> State:
        """The connection's current :class:`State`."""
        return self._state

    @property
    def active_ids(self) -> frozenset[str]:
        """Ids of operations started and not yet finished (by either side); empty once closed."""
        return frozenset(self._active)

    @property
    def max_operations(self) -> int:
        """The cap on operations running at once, as given to the constructor."""
        return self._max_operations

    def _on_connection_init(self, payload: dict[str, Any] | None) -> list[Action]:
        if self._state is not State.AWAITING_INIT:
            return self._close(CloseCode.TOO_MANY_INIT_REQUESTS, _TOO_MANY_INIT)
        self._state = State.AUTHENTICATING
        return [Authenticate(payload)]

    def complete(self, id: str) -> list[Action]:
        """The server finished operation ``id``: send ``complete`` and free the id.

        Returns ``[]`` when ``id`` is not active, which is normal when the client completed
        it first (both protocols tolerate both sides completing at once).
        """
        if id not in self._active:
            return []
        del self._active[id]
        return [Send(self._complete_text(id))]

    def error(self, id: str, errors: list[dict[str, Any]]) -> list[Action]:
        """Operation ``id`` failed: send an ``error`` message and free the id.

        ``errors`` must be a non-empty list of GraphQL error objects, each with a string
        ``message``; anything else raises ``ValueError``, since sending it would make the
        client drop the connection. No ``complete`` follows an error, in either protocol.
        ``[]`` if ``id`` is not active.
        """
        if (
            not isinstance(errors, list)
            or not errors
            or not all(isinstance(e, dict) and isinstance(e.get("message"), str) for e in errors)
        ):
            raise ValueError(
                'errors must be a non-empty list of GraphQL error objects with a string "message"'
            )
        if id not in self._active:
            return []
        text = self._error_text(id, errors)
        del self._active[id]
        return [Send(text)]

    def close(self, code: int, reason: str) -> list[Action]:
        """The server wants to end the connection (slow consumer, shutdown, ...).

        ``code`` must be one an endpoint may send (1000-1003, 1007-1014, 3000-4999), else
        ``ValueError``. The reason is cut to 123 bytes. ``[]`` when already closed.
        """
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError("code must be an int")
        if not (
            code in _SENDABLE_STANDARD_CODES
            or code in _SENDABLE_STANDARD_CODES_EXTRA
            or 3000 <= code <= 4999
        ):
            raise ValueError(f"{code} is not a close code an endpoint may send")
        if not isinstance(reason, str):
            raise TypeError("reason must be a str")
        if self._state is State.CLOSED:
            return []
        return self._close(code, reason)

    def next_text(self, id: str, payload_json: str) -> str:
        """Return the text of a result frame for active operation ``id``.

        ``payload_json`` is the execution result, already serialised to JSON; it is inserted
        as is. For the rare path: the hot path caches :meth:`next_prefix` per operation and
        builds bytes itself. Raises ``KeyError`` if ``id`` is not active, because a result
        for a finished operation is a bug of the caller.
        """
        if id not in self._active:
            raise KeyError(f"operation {id!r} is not active")
        return self.next_prefix(id).decode("utf-8") + payload_json + "}"

    @classmethod
    def next_prefix(cls, id: str) -> bytes:
        """The bytes of a result frame before its payload, for operation ``id``.

        A fan-out to many subscribers serialises each event's payload once and then only
        concatenates ``prefix + payload + b"}"`` per subscriber. The id is escaped by orjson,
        so any id (quotes, backslashes, control characters, any Unicode) yields valid JSON;
        an id with a lone surrogate (which no client can send) is escaped as ``\\uXXXX``.
        """
        if not isinstance(id, str):
            raise TypeError("id must be a str")
        try:
            quoted = orjson.dumps(id)
        except orjson.JSONEncodeError:
            quoted = json.dumps(id, ensure_ascii=True).encode("ascii")
        return cls._RESULT_PREFIX_HEAD + quoted + cls._RESULT_PREFIX_TAIL

    def accept(self, payload: dict[str, Any] | None = None) -> list[Action]:
        """The caller accepted the ``connection_init`` it was asked about: send ``connection_ack``.

        ``payload`` (an object) goes in the ack's optional ``payload`` field; with ``None`` the
        field is absent. Outside ``authenticating`` (no :class:`Authenticate` pending, or the
        connection already closed, e.g. by the init timeout) this returns ``[]``. A payload
        that is not a JSON-serialisable object closes with 4500 instead of raising. What a
        core does once acknowledged follows the ack (:meth:`_acknowledged`).
        """
        if self._state is not State.AUTHENTICATING:
            return []
        ack: dict[str, Any] = {"type": "connection_ack"}
        if payload is not None:
            ack["payload"] = payload
        try:
            if payload is not None and not isinstance(payload, dict):
                raise TypeError("the connection_ack payload must be an object")
            text = _dumps(ack)
        except Exception:  # accept() must not raise
            return self._close(CloseCode.INTERNAL_ERROR, _INTERNAL_ERROR)
        self._state = State.ACKNOWLEDGED
        return [Send(text), *self._acknowledged()]

    def _acknowledged(self) -> list[Action]:
        """Actions right after ``connection_ack`` (none in graphql-transport-ws)."""
        return []

    def _complete_text(self, id: str) -> str:
        raise NotImplementedError

    def _error_text(self, id: str, errors: list[dict[str, Any]]) -> str:
        raise NotImplementedError

    def _close(self, code: int, reason: str) -> list[Action]:
        """Move to ``closed`` and emit the one :class:`Close` of this connection."""
        self._state = State.CLOSED
        self._active.clear()
        return [Close(code, _limit_reason(reason))]


class ServerProtocol(OperationCore):
    """The server side of one graphql-transport-ws connection, as a state machine.

    Every public method returns the actions to perform, in order; the caller performs them
    and feeds the outcome back. ``receive``, ``accept``, ``reject`` and ``init_timeout`` never
    raise, whatever they are given, because they face client input or timers and a raise
    there would tear down the server's connection task instead of closing cleanly. The other
    methods raise on programming errors (wrong types, invalid errors), which are bugs of the
    caller and should be loud.
    """

    __slots__ = ()

    _RESULT_PREFIX_HEAD = _NEXT_PREFIX_HEAD
    _RESULT_PREFIX_TAIL = _NEXT_PREFIX_TAIL

    # ----------------------------------------------------------------------------------------
    # Input from the client
    # ----------------------------------------------------------------------------------------

    def receive(self, data: str | bytes) -> list[Action]:
        """Take one message (a text frame, or a binary frame holding UTF-8 JSON) from the client.

        Never raises: anything malformed closes with 4400, and an unexpected failure inside
        closes with 4500 rather than escaping into the caller's connection loop.
        """
        if self._state is State.CLOSED:
            return []
        try:
            return self._receive(data)
        except _BadMessage as exc:
            return self._close(CloseCode.BAD_REQUEST, f"{_INVALID_MESSAGE}: {exc}")
        except Exception:  # the contract: never raise on client input
            return self._close(CloseCode.INTERNAL_ERROR, _INTERNAL_ERROR)

    def _receive(self, data: str | bytes) -> list[Action]:
        message = _decode_object(data)
        if "type" not in message or message["type"] is None:
            raise _BadMessage('the message has no "type"')
        kind = message["type"]
        if not isinstance(kind, str):
            raise _BadMessage(f'"type" must be a string, not {_json_type(kind)}')

        if kind == "subscribe":
            return self._on_subscribe(self._parse_subscribe(message))
        if kind == "complete":
            return self._on_complete(self._parse_id(message, kind))
        if kind == "ping":
            return self._on_ping(self._parse_optional_object_payload(message, kind))
        if kind == "pong":
            self._parse_optional_object_payload(message, kind)
            return []
        if kind == "connection_init":
            return self._on_connection_init(self._parse_optional_object_payload(message, kind))
        if kind in _SERVER_ONLY_TYPES:
            raise _BadMessage(f'"{kind}" messages are sent by the server only')
        raise _BadMessage(f"unknown message type {_quote(kind)}")

    # Parsing: validation comes before any state check, as in the reference server, so a
    # malformed message is always 4400 whatever the state.

    @staticmethod
    def _parse_id(message: dict[str, Any], kind: str) -> str:
        op_id = message.get("id")
        if not isinstance(op_id, str):
            raise _BadMessage(f'"{kind}" message requires a string "id"')
        if not op_id:
            raise _BadMessage(f'"{kind}" message requires a non-empty "id"')
        return op_id

    @staticmethod
    def _parse_optional_object_payload(message: dict[str, Any], kind: str) -> dict[str, Any] | None:
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            raise _BadMessage(
                f'"{kind}" payload must be an object or null, not {_json_type(payload)}'
            )
        return payload

    @classmethod
    def _parse_subscribe(cls, message: dict[str, Any]) -> StartOperation:
        op_id = cls._parse_id(message, "subscribe")
        payload = message.get("payload")
        if not isinstance(payload, dict):
            raise _BadMessage('"subscribe" message requires an object "payload"')
        query = payload.get("query")
        if not isinstance(query, str):
            raise _BadMessage('"subscribe" payload requires a string "query"')
        variables = payload.get("variables")
        if variables is not None and not isinstance(variables, dict):
            raise _BadMessage('"subscribe" payload "variables" must be an object or null')
        operation_name = payload.get("operationName")
        if operation_name is not None and not isinstance(operation_name, str):
            raise _BadMessage('"subscribe" payload "operationName" must be a string or null')
        extensions = payload.get("extensions")
        if extensions is not None and not isinstance(extensions, dict):
            raise _BadMessage('"subscribe" payload "extensions" must be an object or null')
        return StartOperation(op_id, query, variables, operation_name, extensions)

    # Handling.

    def _on_ping(self, payload: dict[str, Any] | None) -> list[Action]:
        # Allowed in any state ("at any time within the established socket"). The payload is
        # echoed when there is one; otherwise the key is absent, as in the reference server.
        pong: dict[str, Any] = {"type": "pong"}
        if payload is not None:
            pong["payload"] = payload
        return [Send(_dumps(pong))]

    def _on_subscribe(self, sub: StartOperation) -> list[Action]:
        if self._state is not State.ACKNOWLEDGED:
            return self._close(CloseCode.UNAUTHORIZED, _UNAUTHORIZED)
        if sub.id in self._active:
            return self._close(
                CloseCode.SUBSCRIBER_ALREADY_EXISTS, f"Subscriber for {sub.id} already exists"
            )
        if len(self._active) >= self._max_operations:
            # Not a protocol violation: the operation fails alone, the connection lives on.
            limit = self._max_operations
            error = {
                "message": (
                    f"Too many operations on this connection: the limit is {limit}; "
                    "complete one before starting another"
                ),
                "extensions": {"code": "TOO_MANY_OPERATIONS", "limit": limit},
            }
            return [Send(_dumps({"id": sub.id, "type": "error", "payload": [error]}))]
        self._active[sub.id] = None
        return [sub]

    def _on_complete(self, op_id: str) -> list[Action]:
        # Unknown ids are ignored: the server may have finished the operation while the
        # client's complete was in flight (PROTOCOL.md, "Complete" and "Invalid message").
        if op_id not in self._active:
            return []
        del self._active[op_id]
        return [StopOperation(op_id)]

    # ----------------------------------------------------------------------------------------
    # Decisions of the server
    # ----------------------------------------------------------------------------------------

    def reject(self, reason: str = _FORBIDDEN) -> list[Action]:
        """The caller refused the ``connection_init``: close with 4403 and ``reason``.

        Outside ``authenticating`` this returns ``[]``.
        """
        if self._state is not State.AUTHENTICATING:
            return []
        try:
            text = reason if isinstance(reason, str) else str(reason)
        except Exception:  # reject() must not raise
            text = _FORBIDDEN
        return self._close(CloseCode.FORBIDDEN, text or _FORBIDDEN)

    def keepalive(self) -> list[Action]:
        """Always ``[]``: graphql-transport-ws has no server keep-alive message (its client
        pings; WebSocket pings do the rest). Here so both cores have the same methods."""
        return []

    def init_timeout(self) -> list[Action]:
        """The caller's connection-init timer fired: close with 4408 unless acknowledged.

        This also closes a connection still ``authenticating``, so that an authentication
        that hangs cannot hold the socket open forever. Acknowledged or closed: ``[]``.
        """
        if self._state in (State.AWAITING_INIT, State.AUTHENTICATING):
            return self._close(CloseCode.CONNECTION_INIT_TIMEOUT, _INIT_TIMEOUT)
        return []

    def _complete_text(self, id: str) -> str:
        return _dumps({"id": id, "type": "complete"})

    def _error_text(self, id: str, errors: list[dict[str, Any]]) -> str:
        # PROTOCOL.md: ``payload: GraphQLError[]``.
        return _dumps({"id": id, "type": "error", "payload": errors})

    def __repr__(self) -> str:
        return (
            f"<ServerProtocol state={self._state.value} active={len(self._active)}"
            f"/{self._max_operations}>"
        )
