"""`serve --processes N`: N gateway processes on one port, started, watched and stopped.

One gateway process uses one core (one event loop, and the GIL for its actor threads). To use
a machine's cores, this parent forks N children that each build a full gateway
(gateway/app.App, gateway mode) and listen on the same host:port with SO_REUSEPORT: the
kernel spreads new connections over them. They share the Redis bus, so each one's
subscribers see every project's events whichever process (or worker) produced them, and
the PostgreSQL work queue, so each request is claimed and run by exactly one of them.

The parent does no I/O besides this: it holds a bound, never-listening SO_REUSEPORT socket on
the port (so that `--port 0` names one port for all, and nobody else takes it between a
crash and a restart), and it opens no database, bus or thread before forking.

* A child that dies before it is ready (it could not start: a bad flag, a database that
  never came) stops them all: the parent exits 1 after its error, which the child printed.
* A child that dies after it was ready (killed, crashed) is logged with its pid and exit
  status and started again; more than `MAX_RESTARTS` within `RESTART_WINDOW` seconds and
  the parent gives up and stops them all (exit 1).
* SIGTERM or SIGINT to the parent: SIGTERM to every child (each drains its sockets and
  closes them with 1001), then up to `stop_timeout` seconds before SIGKILL; exit 0.
* Children get SIGTERM if the parent itself dies (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

log = logging.getLogger("planpulse.supervisor")

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0

# A child's body: serve until SIGTERM, calling `ready()` once it listens; its exit code.
ChildMain = Callable[[int, Callable[[], None]], int]


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on host:port (port 0: a free one). The
    children bind the same port beside it; it receives no connection itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class Child:
    index: int
    process: BaseProcess
    ready_pipe: Connection
    started: float = field(default_factory=time.monotonic)
    ready: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this child when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _child_entry(main: ChildMain, index: int, ready_pipe: Connection, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)  # the child's own loop installs its handlers

    def ready() -> None:
        with contextlib.suppress(OSError):
            ready_pipe.send(os.getpid())

    code = main(index, ready)
    logging.shutdown()
    os._exit(code)


class Supervisor:
    """The parent of N gateway processes (see the module docstring)."""

    def __init__(
        self,
        main: ChildMain,
        processes: int,
        *,
        stop_timeout: float = 30.0,
    ) -> None:
        self.main = main
        self.count = processes
        self.stop_timeout = stop_timeout
        self._context = multiprocessing.get_context("fork")
        self.children: list[Child] = []
        self._restarts: deque[float] = deque()
        self._stop_signal: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    def _start(self, index: int) -> Child:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child_entry,
            args=(self.main, index, send, os.getpid()),
            name=f"planpulse-gateway-{index}",
        )
        process.start()
        send.close()
        child = Child(index, process, receive)
        log.info("gateway process %d started (pid %d)", index, process.pid)
        return child

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def run(self) -> int:
        """Start the children, watch them until a signal, stop them; the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        self.children = [self._start(i) for i in range(self.count)]
        code = 0
        announced = False
        while self._stop_signal is None:
            waitables: list[object] = [self._wake_r]
            for child in self.children:
                waitables.append(child.process.sentinel)
                if not child.ready:
                    waitables.append(child.ready_pipe)
            wait(waitables, timeout=5.0)  # type: ignore[arg-type]
            failure = self._check_children()
            if failure is not None:
                log.error("%s: stopping every gateway process", failure)
                code = 1
                break
            if not announced and all(c.ready for c in self.children):
                announced = True
                log.info(
                    "all %d gateway processes ready: pids %s",
                    self.count,
                    ", ".join(str(c.pid) for c in self.children),
                )
        if self._stop_signal is not None:
            log.info(
                "%s received: stopping %d gateway processes",
                signal.Signals(self._stop_signal).name,
                len(self.children),
            )
        self.stop()
        return code

    def _check_children(self) -> str | None:
        """Note the ready ones, restart the dead ones; a reason to give up, or None."""
        for position, child in enumerate(self.children):
            # Alive or not, first; then the pipe: a child that said "ready" and died at once
            # has its message there, and is not taken for one that never came up.
            running = child.process.is_alive()
            if not child.ready and child.ready_pipe.poll():
                with contextlib.suppress(EOFError, OSError):
                    child.ready_pipe.recv()
                    child.ready = True
            if running:
                continue
            child.process.join()
            how = describe_exit(child.process.exitcode)
            if not child.ready:
                return (
                    f"gateway process {child.index} (pid {child.pid}) exited before it was "
                    f"ready ({how}); its error is above"
                )
            now = time.monotonic()
            self._restarts.append(now)
            while self._restarts and self._restarts[0] < now - RESTART_WINDOW:
                self._restarts.popleft()
            if len(self._restarts) > MAX_RESTARTS:
                return (
                    f"gateway process {child.index} (pid {child.pid}) died ({how}), the "
                    f"{len(self._restarts)}th death within {RESTART_WINDOW:.0f} s"
                )
            log.error(
                "gateway process %d (pid %s) died (%s): starting a new one",
                child.index,
                child.pid,
                how,
            )
            child.ready_pipe.close()
            self.children[position] = self._start(child.index)
        return None

    def stop(self) -> None:
        """SIGTERM to every child, then SIGKILL to those still running after the timeout."""
        for child in self.children:
            if child.process.is_alive() and child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.error(
                    "gateway process %d (pid %s) still running after %.0f s: SIGKILL",
                    child.index,
                    child.pid,
                    self.stop_timeout,
                )
                child.process.kill()
                child.process.join(5.0)
            log.info(
                "gateway process %d (pid %s) stopped (%s)",
                child.index,
                child.pid,
                describe_exit(child.process.exitcode),
            )
        self._wake_r.close()
        self._wake_w.close()
