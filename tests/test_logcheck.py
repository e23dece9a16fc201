"""The checker that compares a subscriber's view with the event log (bench/logcheck.py)."""

from __future__ import annotations

from bench.logcheck import mismatch, snapshot_at

# a: sequences 1, 3, 6; b (added at 4, its source announced at 5): 5, 6; c removed at 7.
LOG = [
    (1, "a", "processing"),
    (2, "c", "completed"),
    (3, "a", "completed"),
    (5, "b", "completed"),
    (6, "a", "processing"),
    (6, "b", "processing"),
]
RESETS = [(7, "c")]


def test_snapshot_at_keeps_each_nodes_latest_and_drops_removed_nodes() -> None:
    assert snapshot_at(LOG, RESETS, 4) == [(2, "c", "completed"), (3, "a", "completed")]
    assert snapshot_at(LOG, RESETS, 7) == [(6, "a", "processing"), (6, "b", "processing")]
    assert snapshot_at(LOG, RESETS, 0) == []


def test_a_snapshot_then_live_equals_the_log() -> None:
    items = [(2, "c", "completed"), (3, "a", "completed"), (5, "b", "completed")]
    items += [(6, "a", "processing"), (6, "b", "processing")]
    assert mismatch(LOG, items, snapshot=True, resets=RESETS) is None


def test_the_issues_failures_are_caught() -> None:
    # Snapshot stamped 3 but its rows were newer: b's in-flight 5 arrives after it.
    stale = [(3, "a", "completed"), (3, "b", "processing"), (5, "b", "completed")]
    assert mismatch(LOG, stale, snapshot=True, resets=RESETS) is not None
    # A snapshot sent before a replay: sequences go down.
    down = [(6, "a", "processing"), (1, "a", "processing"), (3, "a", "completed")]
    assert "goes down" in (mismatch(LOG, down, snapshot=True, resets=RESETS) or "")
    # A live event lost (b at 6).
    lost = [(2, "c", "completed"), (3, "a", "completed"), (5, "b", "completed")]
    lost += [(6, "a", "processing")]
    assert mismatch(LOG, lost, snapshot=True, resets=RESETS) is not None


def test_replay_and_live_watchers() -> None:
    assert mismatch(LOG, LOG[2:], after=2) is None
    assert mismatch(LOG, LOG[3:], after=2) is not None  # 3 missing
    assert mismatch(LOG, LOG[3:]) is None  # live from 5 on
    assert mismatch(LOG, LOG[3:4]) is not None  # stopped before the end
    assert mismatch(LOG, []) is None
