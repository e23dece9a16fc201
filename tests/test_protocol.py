"""Tests of the sans-I/O graphql-transport-ws core (gateway/protocol.py).

The exact close codes and reason texts are those of graphql-ws (PROTOCOL.md and the reference
server's src/server.ts); the property tests check the invariants the server relies on.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import (
    MAX_CLOSE_REASON_BYTES,
    SUBPROTOCOL,
    Action,
    Authenticate,
    Close,
    CloseCode,
    Send,
    ServerProtocol,
    StartOperation,
    State,
    StopOperation,
)

QUERY = "subscription { nodeStatus(planId: 1) { id status } }"


def dumps(message: Any) -> str:
    return orjson.dumps(message).decode()


def subscribe(op_id: Any, query: Any = QUERY, **payload_fields: Any) -> str:
    return dumps({"id": op_id, "type": "subscribe", "payload": {"query": query, **payload_fields}})


def complete_msg(op_id: Any) -> str:
    return dumps({"id": op_id, "type": "complete"})


def sent(actions: list[Action]) -> list[Any]:
    """The JSON of every Send action, parsed (and asserting there is nothing else)."""
    assert all(isinstance(a, Send) for a in actions), actions
    return [orjson.loads(a.text) for a in actions if isinstance(a, Send)]


def acked(max_operations: int = 100) -> ServerProtocol:
    proto = ServerProtocol(max_operations=max_operations)
    assert proto.receive(dumps({"type": "connection_init"})) == [Authenticate(None)]
    assert sent(proto.accept()) == [{"type": "connection_ack"}]
    return proto


def invalid(detail: str) -> Close:
    return Close(4400, f"Invalid message received: {detail}")


# ----------------------------------------------------------------------------------------------
# Happy path
# ----------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert SUBPROTOCOL == "graphql-transport-ws"
    assert MAX_CLOSE_REASON_BYTES == 123
    assert {c.name: int(c) for c in CloseCode} == {
        "BAD_REQUEST": 4400,
        "UNAUTHORIZED": 4401,
        "FORBIDDEN": 4403,
        "SUBPROTOCOL_NOT_ACCEPTABLE": 4406,
        "CONNECTION_INIT_TIMEOUT": 4408,
        "SUBSCRIBER_ALREADY_EXISTS": 4409,
        "TOO_MANY_INIT_REQUESTS": 4429,
        "INTERNAL_ERROR": 4500,
    }


def test_init_authenticate_accept_ack() -> None:
    proto = ServerProtocol()
    assert proto.state == "awaiting_init"
    auth = {"authorization": "Bearer abc"}
    assert proto.receive(dumps({"type": "connection_init", "payload": auth})) == [
        Authenticate(auth)
    ]
    assert proto.state == State.AUTHENTICATING
    assert proto.accept() == [Send('{"type":"connection_ack"}')]
    assert proto.state == "acknowledged"
    assert proto.init_timeout() == []


def test_init_with_null_payload_and_ack_with_payload() -> None:
    proto = ServerProtocol()
    assert proto.receive('{"type":"connection_init","payload":null}') == [Authenticate(None)]
    assert sent(proto.accept({"projects": [1, 2]})) == [
        {"type": "connection_ack", "payload": {"projects": [1, 2]}}
    ]


def test_ack_with_empty_payload_keeps_the_field() -> None:
    proto = ServerProtocol()
    proto.receive('{"type":"connection_init"}')
    assert sent(proto.accept({})) == [{"type": "connection_ack", "payload": {}}]


def test_subscribe_starts_an_operation() -> None:
    proto = acked()
    actions = proto.receive(
        subscribe(
            "op-1",
            variables={"planId": 7},
            operationName="Watch",
            extensions={"persistedQuery": {"version": 1}},
        )
    )
    assert actions == [
        StartOperation(
            id="op-1",
            query=QUERY,
            variables={"planId": 7},
            operation_name="Watch",
            extensions={"persistedQuery": {"version": 1}},
        )
    ]
    assert proto.active_ids == frozenset({"op-1"})


def test_subscribe_optional_fields_may_be_missing_or_null() -> None:
    proto = acked()
    assert proto.receive(subscribe("a")) == [StartOperation("a", QUERY, None, None, None)]
    assert proto.receive(subscribe("b", variables=None, operationName=None, extensions=None)) == [
        StartOperation("b", QUERY, None, None, None)
    ]


def test_binary_frame_with_utf8_json_is_accepted() -> None:
    proto = acked()
    assert proto.receive(subscribe("é").encode()) == [StartOperation("é", QUERY, None, None, None)]


def test_server_completes_then_id_is_reusable() -> None:
    proto = acked()
    proto.receive(subscribe("1"))
    assert sent(proto.complete("1")) == [{"id": "1", "type": "complete"}]
    assert proto.active_ids == frozenset()
    assert proto.complete("1") == []
    assert proto.receive(subscribe("1")) == [StartOperation("1", QUERY, None, None, None)]


def test_client_completes_then_id_is_reusable() -> None:
    proto = acked()
    proto.receive(subscribe("1"))
    assert proto.receive(complete_msg("1")) == [StopOperation("1")]
    assert proto.active_ids == frozenset()
    # The server's own completion racing with the client's: nothing is sent.
    assert proto.complete("1") == []
    assert proto.receive(subscribe("1")) == [StartOperation("1", QUERY, None, None, None)]


def test_client_complete_for_unknown_id_is_ignored() -> None:
    proto = acked()
    assert proto.receive(complete_msg("never-started")) == []
    assert proto.state == "acknowledged"


def test_complete_before_ack_is_ignored() -> None:
    proto = ServerProtocol()
    assert proto.receive(complete_msg("x")) == []
    assert proto.state == "awaiting_init"


def test_error_sends_errors_and_frees_id() -> None:
    proto = acked()
    proto.receive(subscribe("1"))
    errors = [{"message": "Cannot query field", "locations": [{"line": 1, "column": 3}]}]
    assert sent(proto.error("1", errors)) == [{"id": "1", "type": "error", "payload": errors}]
    assert proto.active_ids == frozenset()
    assert proto.error("1", errors) == []
    assert proto.receive(subscribe("1")) == [StartOperation("1", QUERY, None, None, None)]


@pytest.mark.parametrize(
    "errors",
    [[], None, {"message": "x"}, [{"msg": "x"}], [{"message": 1}], ["boom"], [{"message": "a"}, 3]],
)
def test_error_requires_a_non_empty_list_of_graphql_errors(errors: Any) -> None:
    proto = acked()
    proto.receive(subscribe("1"))
    with pytest.raises(ValueError):
        proto.error("1", errors)
    assert proto.active_ids == frozenset({"1"})


def test_ping_before_init_is_answered() -> None:
    proto = ServerProtocol()
    assert proto.receive('{"type":"ping"}') == [Send('{"type":"pong"}')]
    assert proto.state == "awaiting_init"


@pytest.mark.parametrize("payload", [{"t": 1}, {}, {"nested": {"a": [1, "é"]}}])
def test_ping_payload_is_echoed(payload: dict[str, Any]) -> None:
    proto = ServerProtocol()
    assert sent(proto.receive(dumps({"type": "ping", "payload": payload}))) == [
        {"type": "pong", "payload": payload}
    ]


def test_ping_with_null_payload_gets_pong_without_payload_key() -> None:
    proto = acked()
    assert proto.receive('{"type":"ping","payload":null}') == [Send('{"type":"pong"}')]


@pytest.mark.parametrize("state", ["awaiting_init", "authenticating", "acknowledged"])
def test_pong_is_not_answered(state: str) -> None:
    proto = ServerProtocol()
    if state != "awaiting_init":
        proto.receive('{"type":"connection_init"}')
    if state == "acknowledged":
        proto.accept()
    assert proto.receive('{"type":"pong"}') == []
    assert proto.receive('{"type":"pong","payload":{"x":1}}') == []
    assert proto.state == state


@pytest.mark.parametrize(
    "op_id", ['a"b', "back\\slash", "ünïcødé ✓ 🚀", "\n\t\x00", "</script>", "'", "1" * 500]
)
def test_next_prefix_makes_valid_json(op_id: str) -> None:
    payload = {"data": {"nodeStatus": {"id": op_id, "status": "RUNNING"}}}
    frame = ServerProtocol.next_prefix(op_id) + orjson.dumps(payload) + b"}"
    assert orjson.loads(frame) == {"id": op_id, "type": "next", "payload": payload}
    assert ServerProtocol.next_prefix(op_id).startswith(b'{"id":')
    assert ServerProtocol.next_prefix(op_id).endswith(b',"type":"next","payload":')


def test_next_prefix_escapes_lone_surrogates() -> None:
    frame = ServerProtocol.next_prefix("a\ud800b") + b'{"data":null}}'
    assert json.loads(frame) == {"id": "a\ud800b", "type": "next", "payload": {"data": None}}


@settings(database=None)
@given(
    st.text(),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(), max_size=3),
)
def test_next_prefix_property(op_id: str, data: dict[str, Any]) -> None:
    payload = orjson.dumps({"data": data}, option=orjson.OPT_NON_STR_KEYS)
    parsed = orjson.loads(ServerProtocol.next_prefix(op_id) + payload + b"}")
    assert parsed == {"id": op_id, "type": "next", "payload": {"data": data}}


def test_next_text() -> None:
    proto = acked()
    proto.receive(subscribe('q"1'))
    text = proto.next_text('q"1', '{"data":{"x":1}}')
    assert orjson.loads(text) == {"id": 'q"1', "type": "next", "payload": {"data": {"x": 1}}}
    with pytest.raises(KeyError):
        proto.next_text("not-active", "{}")
    proto.complete('q"1')
    with pytest.raises(KeyError):
        proto.next_text('q"1', "{}")


# ----------------------------------------------------------------------------------------------
# Rules: closes with exact codes and reasons
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("not json", invalid("the message is not valid JSON")),
        ("", invalid("the message is not valid JSON")),
        (b"\xff\xfe", invalid("the message is not valid JSON")),
        ('{"type":"ping"', invalid("the message is not valid JSON")),
        ("NaN", invalid("the message is not valid JSON")),
        ("[]", invalid("a message must be a JSON object, not array")),
        ('"ping"', invalid("a message must be a JSON object, not string")),
        ("null", invalid("a message must be a JSON object, not null")),
        ("42", invalid("a message must be a JSON object, not number")),
        ("{}", invalid('the message has no "type"')),
        ('{"type":null}', invalid('the message has no "type"')),
        ('{"type":1}', invalid('"type" must be a string, not number')),
        ('{"type":["ping"]}', invalid('"type" must be a string, not array')),
        ('{"type":"foo"}', invalid('unknown message type "foo"')),
        ('{"type":"PING"}', invalid('unknown message type "PING"')),
        ('{"type":"start"}', invalid('unknown message type "start"')),
        (
            '{"type":"connection_ack"}',
            invalid('"connection_ack" messages are sent by the server only'),
        ),
        (
            '{"id":"1","type":"next","payload":{"data":null}}',
            invalid('"next" messages are sent by the server only'),
        ),
        (
            '{"id":"1","type":"error","payload":[{"message":"x"}]}',
            invalid('"error" messages are sent by the server only'),
        ),
        (
            '{"type":"connection_init","payload":"token"}',
            invalid('"connection_init" payload must be an object or null, not string'),
        ),
        (
            '{"type":"connection_init","payload":[]}',
            invalid('"connection_init" payload must be an object or null, not array'),
        ),
        (
            '{"type":"ping","payload":1}',
            invalid('"ping" payload must be an object or null, not number'),
        ),
        (
            '{"type":"pong","payload":true}',
            invalid('"pong" payload must be an object or null, not boolean'),
        ),
        (
            '{"type":"subscribe","payload":{"query":"{a}"}}',
            invalid('"subscribe" message requires a string "id"'),
        ),
        (subscribe(1), invalid('"subscribe" message requires a string "id"')),
        (subscribe(None), invalid('"subscribe" message requires a string "id"')),
        (subscribe(""), invalid('"subscribe" message requires a non-empty "id"')),
        (
            '{"id":"1","type":"subscribe"}',
            invalid('"subscribe" message requires an object "payload"'),
        ),
        (
            '{"id":"1","type":"subscribe","payload":"{a}"}',
            invalid('"subscribe" message requires an object "payload"'),
        ),
        (
            '{"id":"1","type":"subscribe","payload":{}}',
            invalid('"subscribe" payload requires a string "query"'),
        ),
        (subscribe("1", query=None), invalid('"subscribe" payload requires a string "query"')),
        (
            subscribe("1", query={"kind": "Document"}),
            invalid('"subscribe" payload requires a string "query"'),
        ),
        (
            subscribe("1", variables=[1]),
            invalid('"subscribe" payload "variables" must be an object or null'),
        ),
        (
            subscribe("1", variables="{}"),
            invalid('"subscribe" payload "variables" must be an object or null'),
        ),
        (
            subscribe("1", operationName=3),
            invalid('"subscribe" payload "operationName" must be a string or null'),
        ),
        (
            subscribe("1", extensions=True),
            invalid('"subscribe" payload "extensions" must be an object or null'),
        ),
        ('{"type":"complete"}', invalid('"complete" message requires a string "id"')),
        (complete_msg(7), invalid('"complete" message requires a string "id"')),
        (complete_msg(""), invalid('"complete" message requires a non-empty "id"')),
    ],
)
@pytest.mark.parametrize("state", ["awaiting_init", "authenticating", "acknowledged"])
def test_malformed_message_closes_4400(data: str | bytes, expected: Close, state: str) -> None:
    proto = ServerProtocol()
    if state != "awaiting_init":
        proto.receive('{"type":"connection_init"}')
    if state == "acknowledged":
        proto.accept()
    assert proto.receive(data) == [expected]
    assert proto.state == "closed"
    assert proto.receive('{"type":"ping"}') == []


def test_unknown_type_is_quoted_shortly() -> None:
    proto = ServerProtocol()
    [close] = proto.receive(dumps({"type": "x" * 1000}))
    assert close == invalid(f'unknown message type "{"x" * 40}..."')


def test_non_text_input_closes_4400() -> None:
    proto = ServerProtocol()
    assert proto.receive(123) == [invalid("a message must be JSON text")]  # type: ignore[arg-type]


@pytest.mark.parametrize("ack", [False, True])
def test_second_connection_init_closes_4429(ack: bool) -> None:
    proto = ServerProtocol()
    proto.receive('{"type":"connection_init"}')
    if ack:
        proto.accept()
    assert proto.receive('{"type":"connection_init"}') == [
        Close(4429, "Too many initialisation requests")
    ]
    assert proto.state == "closed"


@pytest.mark.parametrize("init", [False, True])
def test_subscribe_before_ack_closes_4401(init: bool) -> None:
    proto = ServerProtocol()
    if init:
        proto.receive('{"type":"connection_init"}')
    assert proto.receive(subscribe("1")) == [Close(4401, "Unauthorized")]
    assert proto.state == "closed"
    assert proto.accept() == []


def test_malformed_subscribe_before_ack_is_4400_not_4401() -> None:
    proto = ServerProtocol()
    assert proto.receive(subscribe(1)) == [invalid('"subscribe" message requires a string "id"')]


def test_duplicate_subscribe_closes_4409() -> None:
    proto = acked()
    proto.receive(subscribe("abc"))
    assert proto.receive(subscribe("abc")) == [Close(4409, "Subscriber for abc already exists")]
    assert proto.state == "closed"
    assert proto.active_ids == frozenset()


def test_duplicate_with_long_id_reason_is_truncated_on_a_character_boundary() -> None:
    proto = acked()
    op_id = "é" * 100 + "🚀" * 50
    proto.receive(subscribe(op_id))
    [close] = proto.receive(subscribe(op_id))
    assert isinstance(close, Close) and close.code == 4409
    encoded = close.reason.encode("utf-8")
    assert len(encoded) <= 123
    assert close.reason.startswith("Subscriber for éé")
    assert close.reason.endswith("...")


@pytest.mark.parametrize("pad", range(4))
def test_reject_reason_truncation_never_splits_a_character(pad: int) -> None:
    proto = ServerProtocol()
    proto.receive('{"type":"connection_init"}')
    [close] = proto.reject("x" * pad + "🚀" * 60)
    assert isinstance(close, Close) and close.code == 4403
    assert len(close.reason.encode("utf-8")) <= 123
    assert "\ufffd" not in close.reason


def test_too_many_operations_sends_error_and_keeps_the_connection() -> None:
    proto = acked(max_operations=2)
    proto.receive(subscribe("a"))
    proto.receive(subscribe("b"))
    assert sent(proto.receive(subscribe("c"))) == [
        {
            "id": "c",
            "type": "error",
            "payload": [
                {
                    "message": "Too many operations on this connection: the limit is 2; "
                    "complete one before starting another",
                    "extensions": {"code": "TOO_MANY_OPERATIONS", "limit": 2},
                }
            ],
        }
    ]
    assert proto.active_ids == frozenset({"a", "b"})
    assert proto.state == "acknowledged"
    # A duplicate is still a protocol violation, even at the limit.
    proto2 = acked(max_operations=1)
    proto2.receive(subscribe("a"))
    assert proto2.receive(subscribe("a")) == [Close(4409, "Subscriber for a already exists")]
    # Freeing a slot lets the refused id start.
    assert proto.receive(complete_msg("a")) == [StopOperation("a")]
    assert proto.receive(subscribe("c")) == [StartOperation("c", QUERY, None, None, None)]


def test_max_operations_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ServerProtocol(max_operations=0)
    with pytest.raises(TypeError):
        ServerProtocol(max_operations=1.5)  # type: ignore[arg-type]


def test_reject_closes_4403() -> None:
    proto = ServerProtocol()
    proto.receive('{"type":"connection_init","payload":{"authorization":"Bearer bad"}}')
    assert proto.reject() == [Close(4403, "Forbidden")]
    assert proto.state == "closed"
    assert proto.accept() == []


def test_reject_with_custom_reason() -> None:
    proto = ServerProtocol()
    proto.receive('{"type":"connection_init"}')
    assert proto.reject("Token expired") == [Close(4403, "Token expired")]


def test_accept_and_reject_outside_authenticating_do_nothing() -> None:
    proto = ServerProtocol()
    assert proto.accept() == []
    assert proto.reject() == []
    assert proto.state == "awaiting_init"
    proto = acked()
    assert proto.accept() == []
    assert proto.reject() == []
    assert proto.state == "acknowledged"


@pytest.mark.parametrize("payload", [["not", "an", "object"], {"x": object()}, "s", 3])
def test_accept_with_bad_payload_closes_4500_without_raising(payload: Any) -> None:
    proto = ServerProtocol()
    proto.receive('{"type":"connection_init"}')
    assert proto.accept(payload) == [Close(4500, "Internal server error")]
    assert proto.state == "closed"


def test_init_timeout_closes_4408_before_ack() -> None:
    proto = ServerProtocol()
    assert proto.init_timeout() == [Close(4408, "Connection initialisation timeout")]
    assert proto.state == "closed"
    assert proto.init_timeout() == []


def test_init_timeout_closes_4408_while_authenticating() -> None:
    proto = ServerProtocol()
    proto.receive('{"type":"connection_init"}')
    assert proto.init_timeout() == [Close(4408, "Connection initialisation timeout")]
    # The late verdict of the authenticator is then a no-op.
    assert proto.accept() == []


def test_server_close() -> None:
    proto = acked()
    proto.receive(subscribe("1"))
    assert proto.close(4500, "slow consumer") == [Close(4500, "slow consumer")]
    assert proto.state == "closed"
    assert proto.active_ids == frozenset()
    assert proto.close(1000, "again") == []
    assert proto.complete("1") == []
    assert proto.receive(subscribe("2")) == []


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2000, 5000])
def test_server_close_rejects_unsendable_codes(code: int) -> None:
    with pytest.raises(ValueError):
        ServerProtocol().close(code, "x")


def test_server_close_long_reason_is_cut() -> None:
    [close] = ServerProtocol().close(1001, "going away " * 30)
    assert isinstance(close, Close) and len(close.reason.encode()) <= 123


def test_nothing_after_close() -> None:
    proto = acked()
    proto.receive("garbage")
    for data in ['{"type":"ping"}', subscribe("1"), '{"type":"connection_init"}', "garbage"]:
        assert proto.receive(data) == []
    assert proto.init_timeout() == []
    assert proto.accept() == []
    assert proto.reject() == []


# ----------------------------------------------------------------------------------------------
# Property tests
# ----------------------------------------------------------------------------------------------

IDS = ["1", "2", "3", 'q"\\é']
OK_PAYLOADS = st.one_of(st.none(), st.just({}), st.just({"authorization": "Bearer t"}))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def _message(kind: str, op_id: str | None, payload: Any, *, with_payload: bool = True) -> str:
    message: dict[str, Any] = {"type": kind}
    if op_id is not None:
        message["id"] = op_id
    if with_payload:
        message["payload"] = payload
    return dumps(message)


# Well-formed client messages and server decisions, each as ("kind", args...).
valid_events = st.one_of(
    st.tuples(st.just("recv_init"), OK_PAYLOADS),
    st.tuples(st.just("recv_ping"), OK_PAYLOADS),
    st.tuples(st.just("recv_pong"), OK_PAYLOADS),
    st.tuples(st.just("recv_subscribe"), st.sampled_from(IDS)),
    st.tuples(st.just("recv_subscribe"), st.sampled_from(IDS)),
    st.tuples(st.just("recv_complete"), st.sampled_from(IDS)),
    st.tuples(st.just("accept"), st.sampled_from([None, {"ok": True}])),
    st.tuples(st.just("accept"), st.sampled_from([None, {"ok": True}])),
    st.tuples(st.just("reject")),
    st.tuples(st.just("init_timeout")),
    st.tuples(st.just("complete"), st.sampled_from(IDS)),
    st.tuples(st.just("error"), st.sampled_from(IDS)),
    st.tuples(st.just("close")),
)

random_dicts = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["connection_init", "connection_ack", "ping", "pong", "subscribe", "next", "error"]
            + ["complete", "start", "stop", "", "Ping"]
        )
        | json_values,
        "id": st.sampled_from(IDS) | json_values,
        "payload": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "query": st.just(QUERY) | json_values,
                "variables": json_values,
                "operationName": json_values,
                "extensions": json_values,
            },
        ),
    },
)

garbage = st.one_of(
    st.binary(max_size=30),
    st.text(max_size=30),
    json_values.map(dumps),
    random_dicts.map(dumps),
    random_dicts.map(lambda d: dumps(d).encode()),
)

events = st.one_of(valid_events, valid_events, st.tuples(st.just("recv_raw"), garbage))

PROTOCOL_CODES = {4400, 4401, 4403, 4408, 4409, 4429, 4500}
SERVER_CLOSE = (4000, "server closes")


def apply(proto: ServerProtocol, event: tuple[Any, ...]) -> list[Action]:
    kind, *args = event
    match kind:
        case "recv_init":
            return proto.receive(_message("connection_init", None, args[0]))
        case "recv_ping":
            return proto.receive(_message("ping", None, args[0], with_payload=args[0] is not None))
        case "recv_pong":
            return proto.receive(_message("pong", None, args[0]))
        case "recv_subscribe":
            return proto.receive(subscribe(args[0]))
        case "recv_complete":
            return proto.receive(complete_msg(args[0]))
        case "recv_raw":
            return proto.receive(args[0])
        case "accept":
            return proto.accept(args[0])
        case "reject":
            return proto.reject()
        case "init_timeout":
            return proto.init_timeout()
        case "complete":
            return proto.complete(args[0])
        case "error":
            return proto.error(args[0], [{"message": "boom"}])
        case "close":
            return proto.close(*SERVER_CLOSE)
    raise AssertionError(kind)


class Model:
    """An independent, deliberately naive model of what the protocol must answer."""

    def __init__(self, max_operations: int) -> None:
        self.state = "awaiting_init"
        self.active: set[str] = set()
        self.max_operations = max_operations

    def close(self, code: int) -> list[tuple[Any, ...]]:
        self.state = "closed"
        self.active.clear()
        return [("close", code)]

    def expect(self, event: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        kind, *args = event
        if self.state == "closed":
            return []
        if kind == "recv_init":
            if self.state != "awaiting_init":
                return self.close(4429)
            self.state = "authenticating"
            return [("auth", args[0])]
        if kind == "recv_ping":
            pong: dict[str, Any] = {"type": "pong"}
            if args[0] is not None:
                pong["payload"] = args[0]
            return [("send", pong)]
        if kind == "recv_pong":
            return []
        if kind == "recv_subscribe":
            op_id = args[0]
            if self.state != "acknowledged":
                return self.close(4401)
            if op_id in self.active:
                return self.close(4409)
            if len(self.active) >= self.max_operations:
                return [("send_error", op_id, "TOO_MANY_OPERATIONS")]
            self.active.add(op_id)
            return [("start", op_id)]
        if kind == "recv_complete":
            if args[0] in self.active:
                self.active.discard(args[0])
                return [("stop", args[0])]
            return []
        if kind == "accept":
            if self.state != "authenticating":
                return []
            self.state = "acknowledged"
            ack: dict[str, Any] = {"type": "connection_ack"}
            if args[0] is not None:
                ack["payload"] = args[0]
            return [("send", ack)]
        if kind == "reject":
            return self.close(4403) if self.state == "authenticating" else []
        if kind == "init_timeout":
            return self.close(4408) if self.state != "acknowledged" else []
        if kind == "complete":
            if args[0] not in self.active:
                return []
            self.active.discard(args[0])
            return [("send", {"id": args[0], "type": "complete"})]
        if kind == "error":
            if args[0] not in self.active:
                return []
            self.active.discard(args[0])
            return [("send", {"id": args[0], "type": "error", "payload": [{"message": "boom"}]})]
        if kind == "close":
            return self.close(SERVER_CLOSE[0])
        raise AssertionError(kind)


def observe(actions: list[Action]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for action in actions:
        match action:
            case Send(text):
                frame = orjson.loads(text)
                if frame["type"] == "error" and frame["payload"][0].get("extensions"):
                    code = frame["payload"][0]["extensions"]["code"]
                    out.append(("send_error", frame["id"], code))
                else:
                    out.append(("send", frame))
            case Close(code, _):
                out.append(("close", code))
            case Authenticate(payload):
                out.append(("auth", payload))
            case StartOperation(op_id, query, None, None, None):
                assert query == QUERY
                out.append(("start", op_id))
            case StopOperation(op_id):
                out.append(("stop", op_id))
            case _:
                raise AssertionError(action)
    return out


EXPECTED_REASONS = {
    4401: "Unauthorized",
    4403: "Forbidden",
    4408: "Connection initialisation timeout",
    4429: "Too many initialisation requests",
}


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(valid_events, max_size=25), st.integers(min_value=1, max_value=3))
def test_well_formed_sequences_follow_the_model(
    sequence: list[tuple[Any, ...]], max_operations: int
) -> None:
    proto = ServerProtocol(max_operations=max_operations)
    model = Model(max_operations)
    for event in sequence:
        actions = apply(proto, event)
        assert observe(actions) == model.expect(event), event
        for action in actions:
            if isinstance(action, Close) and action.code in EXPECTED_REASONS:
                assert action.reason == EXPECTED_REASONS[action.code]
            if isinstance(action, Close) and action.code == 4409:
                assert action.reason == f"Subscriber for {event[1]} already exists"
        assert proto.state == model.state
        assert proto.active_ids == frozenset(model.active)


_STATE_ORDER = ["awaiting_init", "authenticating", "acknowledged", "closed"]


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(events, max_size=30), st.integers(min_value=1, max_value=4))
def test_any_sequence_keeps_the_invariants(
    sequence: list[tuple[Any, ...]], max_operations: int
) -> None:
    proto = ServerProtocol(max_operations=max_operations)
    started_minus_finished: set[str] = set()
    closed = False
    authenticated = False
    for event in sequence:
        before = proto.state
        actions = apply(proto, event)  # never raises
        after = proto.state
        assert _STATE_ORDER.index(after) >= _STATE_ORDER.index(before)

        if closed:
            assert actions == [], (event, actions)
            continue

        for i, action in enumerate(actions):
            if isinstance(action, Close):
                assert i == len(actions) - 1, "Close is the last action"
                expected_codes = PROTOCOL_CODES | {SERVER_CLOSE[0]}
                assert action.code in expected_codes
                if event[0].startswith("recv"):
                    assert action.code in PROTOCOL_CODES
                assert len(action.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
                closed = True
                started_minus_finished.clear()
            elif isinstance(action, Send):
                frame = orjson.loads(action.text)
                assert isinstance(frame, dict)
                assert frame["type"] in {"connection_ack", "pong", "complete", "error", "next"}
                if before != "acknowledged":
                    assert frame["type"] in {"pong", "connection_ack"}
                    assert frame["type"] == "pong" or event[0] == "accept"
                if frame["type"] in {"complete", "error"}:
                    started_minus_finished.discard(frame["id"])
            elif isinstance(action, Authenticate):
                assert not authenticated, "Authenticate happens at most once"
                authenticated = True
                assert before == "awaiting_init"
            elif isinstance(action, StartOperation):
                assert before == "acknowledged"
                assert action.id not in started_minus_finished
                started_minus_finished.add(action.id)
            elif isinstance(action, StopOperation):
                assert action.id in started_minus_finished
                started_minus_finished.discard(action.id)
            else:
                raise AssertionError(action)

        assert proto.active_ids == frozenset(started_minus_finished)
        assert len(proto.active_ids) <= max_operations
        assert (proto.state == "closed") == closed


@settings(max_examples=300, deadline=None, database=None)
@given(garbage, st.sampled_from(["awaiting_init", "authenticating", "acknowledged"]))
def test_garbage_is_4400_in_every_state(data: str | bytes, state: str) -> None:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    known = {"connection_init", "ping", "pong", "subscribe", "complete"}
    if isinstance(parsed, dict) and isinstance(parsed.get("type"), str) and parsed["type"] in known:
        return  # possibly a well-formed message; covered by the model test
    proto = ServerProtocol()
    if state != "awaiting_init":
        proto.receive('{"type":"connection_init"}')
    if state == "acknowledged":
        proto.accept()
    [close] = proto.receive(data)
    assert isinstance(close, Close) and close.code == 4400
    assert close.reason.startswith("Invalid message received: ")
    assert len(close.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    assert proto.state == "closed"


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1), st.text())
def test_close_reasons_stay_within_the_websocket_limit(op_id: str, reason: str) -> None:
    proto = acked()
    proto.receive(subscribe(op_id))
    [close] = proto.receive(subscribe(op_id))
    assert isinstance(close, Close) and close.code == 4409
    assert len(close.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    full = f"Subscriber for {op_id} already exists"
    assert close.reason == full or full.startswith(close.reason.removesuffix("..."))

    proto = ServerProtocol()
    proto.receive('{"type":"connection_init"}')
    [close] = proto.reject(reason)
    assert isinstance(close, Close) and close.code == 4403
    assert len(close.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
