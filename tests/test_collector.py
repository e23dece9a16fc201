"""The serving process's garbage-collector settings (gateway/collector.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import collector

ROOT = Path(__file__).resolve().parent.parent


def test_threshold_is_parsed_and_bad_values_say_what_is_wanted() -> None:
    assert collector.gc_threshold("10000,20,10") == (10000, 20, 10)
    assert collector.gc_threshold("5000") == (5000,)
    for bad in ("", "a,b", "1,2,3,4", "-1"):
        with pytest.raises(ValueError):
            collector.gc_threshold(bad)


def test_settle_freezes_startup_objects_and_still_collects_new_cycles() -> None:
    before = gc.get_threshold()
    try:
        collector.settle((10_000, 20, 10))
        assert gc.get_threshold() == (10_000, 20, 10)
        assert gc.get_freeze_count() > 0

        class Node:
            pass

        node = Node()
        node.self = node  # type: ignore[attr-defined]  # a cycle made after settling
        del node
        assert gc.collect() >= 1  # still found and freed
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_serve_refuses_a_bad_threshold_before_starting() -> None:
    result = subprocess.run(
        [sys.executable, "run.py", "serve", "--port", "0", "--database-url", "sqlite://"],
        cwd=ROOT,
        env={**os.environ, "PLANPULSE_GC_THRESHOLD": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "PLANPULSE_GC_THRESHOLD='lots' is not a valid gc_threshold" in result.stderr
