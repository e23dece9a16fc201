"""`text_frame_header` (gateway/websockets_internals.py) writes the same bytes as websockets' own
serialisation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway.websockets_internals import text_frame_header


def library_frame(payload: bytes) -> bytes:
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def test_header_lengths_at_every_boundary() -> None:
    for length in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        payload = b"x" * length
        assert text_frame_header(length) + payload == library_frame(payload), length


@given(st.binary(max_size=300))
def test_any_payload_frames_like_the_library(payload: bytes) -> None:
    assert text_frame_header(len(payload)) + payload == library_frame(payload)
