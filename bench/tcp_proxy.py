"""A TCP proxy on loopback that a fault test can cut: the database "goes away".

    proxy = TcpProxy("127.0.0.1", 5432)   # listens on a free port
    proxy.start()
    ... point the processes at 127.0.0.1:proxy.port ...
    proxy.cut(4.0)                        # drop every open connection, refuse new ones 4 s

While cut, every open connection is reset (both sides see it at once, as when a database
host restarts) and new connections are accepted and closed straight away (a refused
connection, as the client sees it). When one side of a connection closes, the other is
closed too: a client killed with -9 ends its server session at once, so the server
releases what the session held (PostgreSQL advisory locks: the work queue's claims).

Threads, not asyncio: it is used from tests and from bench/faults.py, whatever loop they
run, and carries little traffic (a few processes' database connections).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

log = logging.getLogger(__name__)

_BUFFER = 65536


class TcpProxy:
    """Forwards connections from 127.0.0.1:`port` to `target_host`:`target_port`."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._cut_until = 0.0
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.accepted = 0
        self.refused = 0
        self.cuts = 0

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    @property
    def is_cut(self) -> bool:
        return time.monotonic() < self._cut_until

    def cut(self, seconds: float) -> int:
        """Reset every open connection and refuse new ones for `seconds`; returns how many
        connections were dropped. Returns at once (the cut ends by itself)."""
        with self._lock:
            self._cut_until = time.monotonic() + seconds
            pairs = list(self._pairs)
            self._pairs.clear()
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        log.debug(
            "tcp proxy :%d: cut for %.1f s (%d connections dropped)", self.port, seconds, len(pairs)
        )
        return len(pairs)

    def heal(self) -> None:
        """End a cut now."""
        self._cut_until = 0.0

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def close(self) -> None:
        self._closed.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            for sock in pair:
                _reset(sock)
        if self._thread is not None:
            self._thread.join(timeout=2)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the threads ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.is_cut:
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError as error:
                log.debug("tcp proxy :%d: target unreachable: %s", self.port, error)
                _reset(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                if self.is_cut:  # cut while we connected
                    _reset(client)
                    _reset(upstream)
                    continue
                self._pairs.add(pair)
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(pair, source, sink), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(
        self, pair: tuple[socket.socket, socket.socket], source: socket.socket, sink: socket.socket
    ) -> None:
        try:
            while True:
                data = source.recv(_BUFFER)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        # One side is gone: so is the other (the server must see a dead client at once).
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the peer's next read fails at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes a thread blocked in recv() on it (close() alone would not, on Linux).
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
