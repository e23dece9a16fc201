"""`forget_handshake` (gateway/websockets_internals.py) on a real websockets connection: once
it has run, nothing in the process still holds the handshake's headers."""

from __future__ import annotations

import asyncio
import gc

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers

from gateway.websockets_internals import forget_handshake

PROBE = "probe-value-that-only-this-handshake-sends"


def _headers_with_probe() -> int:
    gc.collect()
    return sum(
        1
        for obj in gc.get_objects()
        if isinstance(obj, Headers) and PROBE in obj.get_all("X-Probe")
    )


def test_no_header_of_the_handshake_stays_reachable() -> None:
    async def main() -> tuple[int, int, str]:
        counts: list[int] = []
        path: list[str] = []

        async def handler(ws: ServerConnection) -> None:
            counts.append(_headers_with_probe())
            forget_handshake(ws)
            counts.append(_headers_with_probe())
            assert ws.request is not None
            path.append(ws.request.path)
            await ws.send("ok")
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            # A hand-written handshake: the only Headers with the probe are the server's.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\nX-Probe: " + PROBE.encode() + b"\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            assert await reader.readexactly(4) == b"\x81\x02ok"  # still a working connection
            writer.close()
        return counts[0], counts[1], path[0]

    before, after, path = asyncio.run(main())
    assert before >= 1  # the probe is found while the handshake is kept...
    assert after == 0  # ...and nowhere once forgotten
    assert path == "/graphql"
