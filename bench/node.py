"""Node.js with a folder's npm packages: find `node`, check its version, and install the
folder's packages from its lockfile (`npm ci`) when any of them is missing.

One home for these steps: the graphql-ws reference server (bench/reference) reports a
problem to the person running the load test; the JavaScript-client tests
(tests/node_tools.py) skip, or under CI fail, with the same sentence.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

NPM_CI_TIMEOUT = 300


class NodeUnavailable(RuntimeError):
    """Node.js or npm is missing or too old here."""


class NpmInstallFailed(RuntimeError):
    """`npm ci` failed or took too long: the folder's packages are not installed."""


def packages_installed(js_dir: Path, packages: Iterable[str]) -> bool:
    modules = js_dir / "node_modules"
    return all((modules / name / "package.json").exists() for name in packages)


def node_with_packages(js_dir: Path, packages: Iterable[str], min_major: int) -> str:
    """The `node` executable, once `packages` are installed in `js_dir`/node_modules."""
    packages = tuple(packages)
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    installed = packages_installed(js_dir, packages)
    if node_bin is None or (npm_bin is None and not installed):
        missing = " and ".join(n for n, b in (("node", node_bin), ("npm", npm_bin)) if b is None)
        raise NodeUnavailable(
            f"{missing} not found on PATH: {js_dir.name} needs Node.js >= {min_major}"
        )
    version = subprocess.run(
        [node_bin, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < min_major:
        raise NodeUnavailable(f"node {version} is too old: {js_dir.name} needs Node >= {min_major}")
    if not installed:
        assert npm_bin is not None
        try:
            done = subprocess.run(
                [npm_bin, "ci", "--no-audit", "--no-fund"],
                cwd=js_dir,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
            )
        except subprocess.TimeoutExpired as error:
            raise NpmInstallFailed(
                f"`npm ci` in {js_dir} took longer than {NPM_CI_TIMEOUT} s"
            ) from error
        if done.returncode != 0:
            raise NpmInstallFailed(
                f"`npm ci` in {js_dir} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            )
    return node_bin
