"""The graphql-ws reference server (server.mjs): Node.js, found on PATH, with its npm packages
installed from package-lock.json (`npm ci`) into bench/reference/node_modules at first use.

The same steps as tests/node_tools.py, without pytest: the load test reports a missing
Node.js as an error to the person running it (tests skip or, under CI, fail).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REFERENCE_DIR = Path(__file__).resolve().parent
SERVER = REFERENCE_DIR / "server.mjs"
PACKAGES = ("graphql", "graphql-ws", "ws")
MIN_NODE_MAJOR = 20  # graphql-ws 6 needs Node 20
NPM_CI_TIMEOUT = 300


class NodeUnavailable(RuntimeError):
    """Node.js or npm is missing or too old: the reference server cannot run here."""


def installed() -> bool:
    modules = REFERENCE_DIR / "node_modules"
    return all((modules / name / "package.json").exists() for name in PACKAGES)


def node_executable() -> str:
    """`node`, once the reference's npm packages are installed (runs `npm ci` if needed)."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or (npm_bin is None and not installed()):
        raise NodeUnavailable(
            f"node{' and npm' if npm_bin is None else ''} not found on PATH: the graphql-ws "
            f"reference server needs Node.js >= {MIN_NODE_MAJOR} (--server reference)"
        )
    version = subprocess.run(
        [node_bin, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE_MAJOR:
        raise NodeUnavailable(
            f"node {version} is too old: the reference server needs Node >= {MIN_NODE_MAJOR}"
        )
    if not installed():
        assert npm_bin is not None
        try:
            done = subprocess.run(
                [npm_bin, "ci", "--no-audit", "--no-fund"],
                cwd=REFERENCE_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
            )
        except subprocess.TimeoutExpired as error:
            raise NodeUnavailable(
                f"`npm ci` in {REFERENCE_DIR} took longer than {NPM_CI_TIMEOUT} s"
            ) from error
        if done.returncode != 0:
            raise NodeUnavailable(
                f"`npm ci` in {REFERENCE_DIR} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
    return node_bin


def command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The command line that starts the reference server on `port`."""
    return [node_executable(), str(SERVER), "--host", host, "--port", str(port)]
