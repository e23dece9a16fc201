"""The graphql-ws reference server (server.mjs): Node.js, found on PATH, with its npm packages
installed from package-lock.json (`npm ci`) into bench/reference/node_modules at first use
(bench/node.py). A missing Node.js is an error to the person running the load test (the
tests skip or, under CI, fail).
"""

from __future__ import annotations

from pathlib import Path

from bench.node import NodeUnavailable, NpmInstallFailed, node_with_packages

REFERENCE_DIR = Path(__file__).resolve().parent
SERVER = REFERENCE_DIR / "server.mjs"
PACKAGES = ("graphql", "graphql-ws", "ws")
MIN_NODE_MAJOR = 20  # graphql-ws 6 needs Node 20

__all__ = ["NodeUnavailable", "NpmInstallFailed", "command", "node_executable"]


def node_executable() -> str:
    """`node`, once the reference's npm packages are installed (runs `npm ci` if needed)."""
    return node_with_packages(REFERENCE_DIR, PACKAGES, MIN_NODE_MAJOR)


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line that starts the reference server on `port`."""
    return [node_executable(), str(SERVER), "--host", host, "--port", str(port)]
