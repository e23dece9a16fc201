"""Does a subscriber's view equal the event log? (pure: no I/O)

The log is the project's node events in log order, (sequence, node id, state), as
`executionEvents` gives them (sorted by sequence, then node id), plus the "resets": a node
removed, or re-pointed, at a sequence (a plan edit), after which it has no state until its
next event. A watcher's items are what its subscription delivered, in order. Its view
equals the log when the items are exactly:

* `afterSequence: n` (resumable): every node event after n;
* `snapshot: true`: for some stamp S, the latest state up to S of every node that has one,
  in (sequence, node id) order, then every node event after S;
* neither: every node event from its first item's sequence on.

That one equality is the issue's "done when": every item is the log's state of that node
at the item's sequence, sequences never go down, nothing after the start is missed, and
the watcher ends current on every node (it is compared with the whole log, to its end).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Any

NodeEvent = tuple[int, str, Any]  # (sequence, node id, state)
Reset = tuple[int, str]  # (sequence, node id): the node has no state from then on


def snapshots(log: Sequence[NodeEvent], resets: Sequence[Reset]) -> Iterator[tuple[int, list]]:
    """(S, the latest state up to S of every node that has one) for every S where it
    changes, from S = 0 on, each in (sequence, node id) order. One pass over the log."""
    changes = sorted(
        [(event[0], 1, event[1], event) for event in log]
        + [(seq, 0, node, None) for seq, node in resets]
    )
    latest: dict[str, NodeEvent] = {}
    yield 0, []
    for index, (seq, _order, node, event) in enumerate(changes):
        if event is None:
            latest.pop(node, None)
        else:
            latest[node] = event
        if index + 1 == len(changes) or changes[index + 1][0] != seq:
            yield seq, sorted(latest.values(), key=lambda e: (e[0], e[1]))


def snapshot_at(log: Sequence[NodeEvent], resets: Sequence[Reset], stamp: int) -> list[NodeEvent]:
    """The latest state of every node up to `stamp`, in (sequence, node id) order."""
    head: list[NodeEvent] = []
    for seq, state in snapshots(log, resets):
        if seq > stamp:
            break
        head = state
    return head


def mismatch(
    log: Sequence[NodeEvent],
    items: Sequence[NodeEvent],
    *,
    after: int | None = None,
    snapshot: bool = False,
    resets: Sequence[Reset] = (),
) -> str | None:
    """None when the watcher's items equal the log; else what differs, for a person."""
    items = list(items)
    sequences = [event[0] for event in log]
    if after is not None:
        return _compare(items, list(log[bisect_right(sequences, after) :]), f"after {after}")
    if not snapshot:
        if not items:
            return None
        start = bisect_right(sequences, items[0][0] - 1)
        return _compare(items, list(log[start:]), f"live from {items[0][0]}")
    # A snapshot: find the stamp S that explains the items (there is at most one split).
    last_stamp = 0
    for stamp, head in snapshots(log, resets):
        last_stamp = stamp
        if items[: len(head)] != head:
            continue
        if items[len(head) :] == list(log[bisect_right(sequences, stamp) :]):
            return None
    # No stamp fits: describe the difference against the likeliest one.
    down = next((i for i in range(1, len(items)) if items[i][0] < items[i - 1][0]), None)
    if down is not None:
        return f"sequence goes down at item {down}: {items[down - 1][0]} then {items[down][0]}"
    known = {(seq, node): state for seq, node, state in log}
    for index, (seq, node, state) in enumerate(items):
        if known.get((seq, node), _MISSING) != state:
            return f"item {index} ({node} at {seq}) is not the log's state of {node} at {seq}"
    final = {event[1]: event for event in snapshot_at(log, resets, last_stamp)}
    last = {item[1]: item for item in items}
    stale = sorted(node for node, event in final.items() if last.get(node) != event)
    if stale:
        return f"not current at the end on {', '.join(stale)}"
    return "some event of the log after the snapshot is missing or repeated"


def _compare(items: list[NodeEvent], expected: list[NodeEvent], what: str) -> str | None:
    if items == expected:
        return None
    for index, (got, want) in enumerate(zip(items, expected, strict=False)):
        if got != want:
            return f"{what}: item {index} is {got[:2]}, the log says {want[:2]}"
    return f"{what}: {len(items)} items, the log has {len(expected)}"


_MISSING = object()
