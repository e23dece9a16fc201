"""Node.js for the JavaScript-client tests: find `node`, check its version, and install a
test folder's npm packages from its lockfile (`npm ci`) when any of them is missing.

Without Node.js those tests skip with the reason; under CI (CI=true) that is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import IN_CI

NPM_CI_TIMEOUT = 300


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (under CI a missing tool is a failure, not a skip)")
    pytest.skip(message)


def node_with_packages(js_dir: Path, packages: Iterable[str], min_major: int) -> str:
    """The `node` executable, once `packages` are installed in `js_dir`/node_modules."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if node_bin is None or npm_bin is None:
        missing = " and ".join(n for n, b in (("node", node_bin), ("npm", npm_bin)) if b is None)
        unavailable(f"{missing} not found on PATH: install Node.js >= {min_major}")
    assert node_bin is not None and npm_bin is not None
    version = subprocess.run(
        [node_bin, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < min_major:
        unavailable(f"node {version} is too old: {js_dir.name}'s tests need Node >= {min_major}")
    modules = js_dir / "node_modules"
    if not all((modules / name / "package.json").exists() for name in packages):
        try:
            done = subprocess.run(
                [npm_bin, "ci", "--no-audit", "--no-fund"],
                cwd=js_dir,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci` in {js_dir} took longer than {NPM_CI_TIMEOUT}s")
        if done.returncode != 0:
            pytest.fail(
                f"`npm ci` in {js_dir} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
    return node_bin
