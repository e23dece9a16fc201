"""Tests of the sans-I/O legacy graphql-ws core (gateway/legacy_protocol.py).

Message shapes follow subscriptions-transport-ws (PROTOCOL.md and its src/server.ts and
src/client.ts): what its client sends, and what it accepts back (its client throws on any
message type it does not know). The property tests check what the server relies on: the
core never raises on client input, every frame it sends is one the client understands, and
nothing follows a close.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.legacy_protocol import (
    KEEPALIVE_TEXT,
    SUBPROTOCOL,
    LegacyServerProtocol,
    error_payload,
)
from gateway.protocol import (
    MAX_CLOSE_REASON_BYTES,
    Action,
    Authenticate,
    Close,
    Send,
    ServerProtocol,
    StartOperation,
    State,
    StopOperation,
)
from gateway.subprotocols import PREFERENCE, core_for, select

QUERY = "subscription { nodeExecutionStatusChanged(projectId: 1) { nodeId } }"

# What the subscriptions-transport-ws client's processReceivedData accepts.
CLIENT_TYPES = {"connection_error", "connection_ack", "complete", "error", "data", "ka"}


def dumps(message: Any) -> str:
    return orjson.dumps(message).decode()


def start(op_id: Any, query: Any = QUERY, **payload: Any) -> str:
    return dumps({"id": op_id, "type": "start", "payload": {"query": query, **payload}})


def stop(op_id: Any) -> str:
    return dumps({"id": op_id, "type": "stop"})


def sent(actions: list[Action]) -> list[Any]:
    assert all(isinstance(a, Send) for a in actions), actions
    return [orjson.loads(a.text) for a in actions if isinstance(a, Send)]


def acked(max_operations: int = 100, keepalive: bool = True) -> LegacyServerProtocol:
    proto = LegacyServerProtocol(max_operations=max_operations, keepalive=keepalive)
    assert proto.receive(dumps({"type": "connection_init", "payload": {}})) == [Authenticate({})]
    expected = [{"type": "connection_ack"}] + ([{"type": "ka"}] if keepalive else [])
    assert sent(proto.accept()) == expected
    return proto


# --- selection ------------------------------------------------------------------------------


def test_selection_prefers_graphql_transport_ws() -> None:
    assert SUBPROTOCOL == "graphql-ws"
    assert PREFERENCE == ("graphql-transport-ws", "graphql-ws")
    assert select(["graphql-ws"]) == "graphql-ws"
    assert select(["graphql-ws", "graphql-transport-ws"]) == "graphql-transport-ws"
    assert select(["graphql-transport-ws", "graphql-ws"]) == "graphql-transport-ws"
    assert select(["mqtt"]) is None and select([]) is None


def test_core_for_each_subprotocol() -> None:
    current = core_for("graphql-transport-ws", max_operations=7, keepalive_interval=10)
    assert current is not None and isinstance(current.core, ServerProtocol)
    assert current.keepalive_interval is None  # no ka message in that protocol
    assert current.core.max_operations == 7 and current.core.keepalive() == []
    legacy = core_for("graphql-ws", max_operations=7, keepalive_interval=10)
    assert legacy is not None and isinstance(legacy.core, LegacyServerProtocol)
    assert legacy.keepalive_interval == 10 and legacy.core.max_operations == 7
    off = core_for("graphql-ws", max_operations=7, keepalive_interval=None)
    assert off is not None and off.keepalive_interval is None
    assert core_for("mqtt", max_operations=7, keepalive_interval=10) is None
    assert core_for(None, max_operations=7, keepalive_interval=10) is None


# --- happy path -----------------------------------------------------------------------------


def test_init_accept_sends_ack_then_ka() -> None:
    proto = LegacyServerProtocol()
    auth = {"authorization": "Bearer abc"}
    assert proto.receive(dumps({"type": "connection_init", "payload": auth})) == [
        Authenticate(auth)
    ]
    assert proto.state is State.AUTHENTICATING
    assert proto.accept() == [Send('{"type":"connection_ack"}'), Send(KEEPALIVE_TEXT)]
    assert proto.state == "acknowledged"
    assert proto.keepalive() == [Send('{"type":"ka"}')]
    assert proto.init_timeout() == []


def test_init_without_payload_and_without_keepalive() -> None:
    proto = LegacyServerProtocol(keepalive=False)
    assert proto.receive('{"type":"connection_init"}') == [Authenticate(None)]
    assert proto.keepalive() == []
    assert sent(proto.accept({"v": 1})) == [{"type": "connection_ack", "payload": {"v": 1}}]
    assert proto.keepalive() == []


def test_keepalive_only_once_acknowledged() -> None:
    proto = LegacyServerProtocol()
    assert proto.keepalive() == []
    proto.receive('{"type":"connection_init"}')
    assert proto.keepalive() == []
    proto.accept()
    assert proto.keepalive() == [Send(KEEPALIVE_TEXT)]
    proto.receive('{"type":"connection_terminate"}')
    assert proto.keepalive() == []


def test_start_is_an_operation() -> None:
    proto = acked()
    actions = proto.receive(start("1", variables={"projectId": 7}, operationName="Watch"))
    assert actions == [StartOperation("1", QUERY, {"projectId": 7}, "Watch", None)]
    assert proto.active_ids == {"1"}


def test_start_optional_fields_may_be_missing_or_null() -> None:
    proto = acked()
    assert proto.receive(start("a")) == [StartOperation("a", QUERY, None, None, None)]
    assert proto.receive(start("b", variables=None, operationName=None)) == [
        StartOperation("b", QUERY, None, None, None)
    ]


def test_what_the_reference_client_sends() -> None:
    """subscriptions-transport-ws's buildMessage: `id`, `type`, `payload` (query as text)."""
    proto = LegacyServerProtocol()
    # JSON.stringify drops `id: undefined`; the terminate's payload is null.
    assert proto.receive('{"type":"connection_init","payload":{}}') == [Authenticate({})]
    proto.accept()
    message = '{"id":"1","type":"start","payload":{"query":"{ projects { id } }","variables":{}}}'
    assert proto.receive(message) == [StartOperation("1", "{ projects { id } }", {}, None, None)]
    assert proto.receive('{"id":"1","type":"stop"}') == [
        StopOperation("1"),
        Send('{"type":"complete","id":"1"}'),
    ]
    assert proto.receive('{"type":"connection_terminate","payload":null}') == [
        Close(1000, "connection_terminate received")
    ]


def test_data_frames_and_complete() -> None:
    proto = acked()
    proto.receive(start("q"))
    assert proto.next_text("q", '{"data":{"x":1}}') == (
        '{"type":"data","id":"q","payload":{"data":{"x":1}}}'
    )
    assert proto.complete("q") == [Send('{"type":"complete","id":"q"}')]
    assert proto.complete("q") == []
    with pytest.raises(KeyError):
        proto.next_text("q", "{}")


def test_prefix_is_the_data_envelope() -> None:
    prefix = LegacyServerProtocol.next_prefix('a"b\\c')
    assert prefix == b'{"type":"data","id":"a\\"b\\\\c","payload":'
    frame = prefix + b'{"data":{"n":1}}' + b"}"
    assert orjson.loads(frame) == {"type": "data", "id": 'a"b\\c', "payload": {"data": {"n": 1}}}
    assert LegacyServerProtocol.next_prefix("\ud800") == b'{"type":"data","id":"\\ud800","payload":'
    with pytest.raises(TypeError):
        LegacyServerProtocol.next_prefix(1)  # type: ignore[arg-type]


@settings(max_examples=200, database=None)
@given(st.text(), st.dictionaries(st.text(), st.integers(-(2**53), 2**53) | st.text() | st.none()))
def test_prefix_property(op_id: str, data: dict[str, Any]) -> None:
    payload = orjson.dumps({"data": data})
    message = orjson.loads(LegacyServerProtocol.next_prefix(op_id) + payload + b"}")
    assert message["type"] == "data" and message["payload"] == {"data": data}


def test_stop_completes_and_frees_the_id() -> None:
    proto = acked()
    proto.receive(start("1"))
    assert proto.receive(stop("1")) == [StopOperation("1"), Send('{"type":"complete","id":"1"}')]
    assert proto.active_ids == frozenset()
    assert proto.receive(stop("1")) == []  # unknown: already done
    assert proto.receive(start("1")) == [StartOperation("1", QUERY, None, None, None)]


def test_start_with_a_running_id_replaces_it() -> None:
    proto = acked()
    proto.receive(start("1"))
    assert proto.receive(start("1", "{ projects { id } }")) == [
        StopOperation("1"),
        StartOperation("1", "{ projects { id } }", None, None, None),
    ]
    assert proto.active_ids == {"1"}


def test_error_payload_is_one_error_object() -> None:
    proto = acked()
    proto.receive(start("1"))
    assert sent(proto.error("1", [{"message": "boom", "extensions": {"code": "X"}}])) == [
        {"type": "error", "id": "1", "payload": {"message": "boom", "extensions": {"code": "X"}}}
    ]
    assert proto.active_ids == frozenset() and proto.error("1", [{"message": "x"}]) == []
    many = error_payload([{"message": "a"}, {"message": "b"}, {"message": "c"}])
    assert many == {
        "message": "a (and 2 more errors)",
        "errors": [{"message": "a"}, {"message": "b"}, {"message": "c"}],
    }


@pytest.mark.parametrize("errors", [[], [{}], [{"message": 1}], "x", None])
def test_error_requires_graphql_errors(errors: Any) -> None:
    proto = acked()
    proto.receive(start("1"))
    with pytest.raises(ValueError):
        proto.error("1", errors)


# --- operations sent before the ack ---------------------------------------------------------


def test_starts_while_authenticating_are_held_until_accept() -> None:
    proto = LegacyServerProtocol()
    proto.receive('{"type":"connection_init","payload":{}}')
    assert proto.receive(start("1")) == []
    assert proto.receive(start("2", "{ projects { id } }")) == []
    assert proto.receive(stop("2")) == [Send('{"type":"complete","id":"2"}')]
    assert proto.receive(start("3")) == []
    assert proto.held_ids == {"1", "3"} and proto.active_ids == frozenset()
    assert proto.accept() == [
        Send('{"type":"connection_ack"}'),
        Send(KEEPALIVE_TEXT),
        StartOperation("1", QUERY, None, None, None),
        StartOperation("3", QUERY, None, None, None),
    ]
    assert proto.active_ids == {"1", "3"} and proto.held_ids == frozenset()


def test_held_starts_are_dropped_on_reject() -> None:
    proto = LegacyServerProtocol()
    proto.receive('{"type":"connection_init","payload":{}}')
    proto.receive(start("1"))
    actions = proto.reject("Forbidden: unknown token")
    assert actions == [
        Send('{"type":"connection_error","payload":{"message":"Forbidden: unknown token"}}'),
        Close(4403, "Forbidden: unknown token"),
    ]
    assert proto.state is State.CLOSED and proto.held_ids == frozenset()
    assert proto.accept() == [] and proto.reject() == []


def test_held_starts_respect_the_operation_limit() -> None:
    proto = LegacyServerProtocol(max_operations=1)
    proto.receive('{"type":"connection_init"}')
    assert proto.receive(start("1")) == []
    too_many = sent(proto.receive(start("2")))
    assert too_many[0]["id"] == "2" and too_many[0]["type"] == "error"
    assert too_many[0]["payload"]["extensions"] == {"code": "TOO_MANY_OPERATIONS", "limit": 1}
    assert proto.held_ids == {"1"}


def test_start_before_init_is_an_error_for_that_operation() -> None:
    proto = LegacyServerProtocol()
    [error] = sent(proto.receive(start("1")))
    assert error["type"] == "error" and error["id"] == "1"
    assert error["payload"]["extensions"] == {"code": "UNAUTHENTICATED"}
    assert "send connection_init" in error["payload"]["message"]
    assert proto.state is State.AWAITING_INIT


# --- the connection's end ---------------------------------------------------------------


def test_init_timeout_explains_then_closes_4408() -> None:
    for authenticating in (False, True):
        proto = LegacyServerProtocol()
        if authenticating:
            proto.receive('{"type":"connection_init"}')
        actions = proto.init_timeout()
        assert sent(actions[:1])[0]["type"] == "connection_error"
        assert actions[1:] == [Close(4408, "Connection initialisation timeout")]


def test_second_init_closes_4429() -> None:
    proto = acked()
    assert proto.receive('{"type":"connection_init"}') == [
        Close(4429, "Too many initialisation requests")
    ]


def test_too_many_operations_is_an_error_not_a_close() -> None:
    proto = acked(max_operations=2)
    proto.receive(start("a"))
    proto.receive(start("b"))
    [error] = sent(proto.receive(start("c")))
    assert error["id"] == "c" and "the limit is 2" in error["payload"]["message"]
    assert proto.state is State.ACKNOWLEDGED and proto.active_ids == {"a", "b"}


def test_server_close_and_nothing_after() -> None:
    proto = acked()
    proto.receive(start("1"))
    assert proto.close(1013, "slow " * 40) == [Close(1013, ("slow " * 40)[:120] + "...")]
    assert proto.active_ids == frozenset()
    assert proto.receive(start("2")) == []
    assert proto.close(1000, "again") == []
    assert proto.complete("1") == [] and proto.keepalive() == []
    for code in (1005, 1006, 999, 5000):
        with pytest.raises(ValueError):
            LegacyServerProtocol().close(code, "")


def test_accept_with_a_bad_payload_closes_4500() -> None:
    proto = LegacyServerProtocol()
    proto.receive('{"type":"connection_init"}')
    assert proto.accept([1]) == [Close(4500, "Internal server error")]  # type: ignore[arg-type]


def test_constructor_checks_the_limit() -> None:
    with pytest.raises(TypeError):
        LegacyServerProtocol(max_operations=True)
    with pytest.raises(ValueError):
        LegacyServerProtocol(max_operations=0)


# --- malformed input keeps the connection ---------------------------------------------------


def conn_error(message: str) -> dict[str, Any]:
    return {"type": "connection_error", "payload": {"message": message}}


def op_error(op_id: str, message: str) -> dict[str, Any]:
    error = {"message": message, "extensions": {"code": "BAD_REQUEST"}}
    return {"type": "error", "id": op_id, "payload": error}


UNKNOWN = (
    'unknown message type "subscribe": this endpoint speaks the graphql-ws subprotocol '
    "(connection_init, start, stop, connection_terminate)"
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("not json", conn_error("the message is not valid JSON")),
        ("[1]", conn_error("a message must be a JSON object, not array")),
        ('{"id":"1"}', conn_error('a message needs a string "type", not null')),
        (
            '{"type":"start","payload":{"query":"x"}}',
            conn_error('"start" message requires a non-empty string "id"'),
        ),
        (
            '{"type":"start","id":"7"}',
            op_error("7", '"start" message requires an object "payload"'),
        ),
        (
            '{"type":"start","id":"7","payload":{"query":1}}',
            op_error("7", '"start" payload requires a string "query"'),
        ),
        (
            '{"type":"start","id":"7","payload":{"query":"x","variables":[]}}',
            op_error("7", '"start" payload "variables" must be an object or null'),
        ),
        ('{"type":"stop"}', conn_error('"stop" message requires a non-empty string "id"')),
        ('{"type":"data","id":"3"}', op_error("3", '"data" messages are sent by the server only')),
        ('{"type":"subscribe","id":"3"}', op_error("3", UNKNOWN)),
    ],
)
def test_malformed_messages_are_answered_not_closed(data: str, expected: Any) -> None:
    proto = acked()
    assert sent(proto.receive(data)) == [expected]
    assert proto.state is State.ACKNOWLEDGED


def test_bad_connection_init_payload_is_answered() -> None:
    proto = LegacyServerProtocol()
    [error] = sent(proto.receive('{"type":"connection_init","payload":"token"}'))
    assert error == {
        "type": "connection_error",
        "payload": {"message": '"connection_init" payload must be an object, not string'},
    }
    assert proto.state is State.AWAITING_INIT  # may still send a proper one


def test_binary_utf8_json_is_accepted() -> None:
    proto = LegacyServerProtocol()
    assert proto.receive(b'{"type":"connection_init"}') == [Authenticate(None)]
    assert sent(proto.receive(12)) == [  # type: ignore[arg-type]
        {"type": "connection_error", "payload": {"message": "a message must be JSON text"}}
    ]


# --- properties -----------------------------------------------------------------------------

ids = st.sampled_from(["1", "2", "3"])
small_ints = st.integers(-(2**53), 2**53)
CLIENT_SENDS = {"connection_init", "start", "stop", "connection_terminate"}
messages = st.one_of(
    ids.map(start),
    ids.map(stop),
    st.just('{"type":"connection_init","payload":{}}'),
    st.just('{"type":"connection_terminate"}'),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.builds(
        lambda t, i, p: dumps({"type": t, "id": i, "payload": p}),
        st.text(max_size=8) | st.sampled_from(sorted(CLIENT_TYPES | CLIENT_SENDS)),
        ids | st.none() | small_ints,
        st.none()
        | small_ints
        | st.dictionaries(st.sampled_from(["query", "variables", "x"]), small_ints | st.text()),
    ),
)
server_steps = st.sampled_from(["accept", "reject", "timeout", "keepalive", "complete", "error"])


@settings(max_examples=300, database=None)
@given(st.lists(messages | server_steps, max_size=30), st.integers(min_value=1, max_value=3))
def test_any_sequence_keeps_the_invariants(steps: list[Any], max_operations: int) -> None:
    proto = LegacyServerProtocol(max_operations=max_operations)
    closed = False
    for step in steps:
        if step == "accept":
            actions = proto.accept()
        elif step == "reject":
            actions = proto.reject()
        elif step == "timeout":
            actions = proto.init_timeout()
        elif step == "keepalive":
            actions = proto.keepalive()
        elif step == "complete":
            actions = [a for i in sorted(proto.active_ids) for a in proto.complete(i)]
        elif step == "error":
            actions = [
                a for i in sorted(proto.active_ids) for a in proto.error(i, [{"message": "x"}])
            ]
        else:
            actions = proto.receive(step)
        if closed:
            assert actions == []
        for action in actions:
            assert not closed, "nothing may follow a Close"
            if isinstance(action, Send):
                message = orjson.loads(action.text)
                assert message["type"] in CLIENT_TYPES  # the client throws on anything else
                if message["type"] in ("data", "error", "complete"):
                    assert isinstance(message["id"], str)
            elif isinstance(action, Close):
                closed = True
                assert len(action.reason.encode()) <= MAX_CLOSE_REASON_BYTES
        assert len(proto.active_ids) <= max_operations
        assert len(proto.held_ids) <= max_operations
        assert closed == (proto.state is State.CLOSED)
        if proto.state is not State.AUTHENTICATING:
            assert proto.held_ids == frozenset()
        if proto.state is not State.ACKNOWLEDGED:
            assert proto.active_ids == frozenset()
