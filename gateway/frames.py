"""The header of a server-to-client WebSocket text frame (RFC 6455 §5.2), by hand.

The fan-out writes tens of thousands of frames a second from one thread; going through
`websockets`' `Protocol.send_text` builds a `Frame` object and serialises it generically
(masking, extensions, checks) for every one, about 4 µs. A server frame without extensions
is a fixed header followed by the payload, so the hot path writes exactly that.
`tests/test_frames.py` checks these bytes against `websockets`' own serialisation.
Everything else (handshake, control frames, closing, our non-hot-path sends) stays with
the library.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text); server frames are never masked
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def text_frame_header(length: int) -> bytes:
    """The header of one unfragmented, unmasked text frame of `length` payload bytes."""
    if length < 126:
        return bytes((_FIN_TEXT, length))
    if length < 65536:
        return _HEAD_16.pack(_FIN_TEXT, 126, length)
    return _HEAD_64.pack(_FIN_TEXT, 127, length)
