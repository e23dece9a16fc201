"""Node.js for the JavaScript-client tests (bench/node.py finds it and installs a test
folder's npm packages from its lockfile).

Without Node.js those tests skip with the reason; under CI (CI=true) that is a failure.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from bench.node import NodeUnavailable, NpmInstallFailed
from bench.node import node_with_packages as find_node
from tests.conftest import IN_CI


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (under CI a missing tool is a failure, not a skip)")
    pytest.skip(message)


def node_with_packages(js_dir: Path, packages: Iterable[str], min_major: int) -> str:
    """The `node` executable, once `packages` are installed in `js_dir`/node_modules."""
    try:
        return find_node(js_dir, packages, min_major)
    except NodeUnavailable as error:
        unavailable(str(error))
    except NpmInstallFailed as error:
        pytest.fail(str(error))
    raise AssertionError("unreachable")
