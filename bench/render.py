"""Cost of rendering one event for one distinct subscription selection.

    python -m bench.render [--number 2000] [--repeat 7]

Compares the compiled projection (gateway/projection.py, the hot path) with graphql-core's
`execute` (the fallback) on the frontend's verbatim subscription document, and prints a
table of medians in microseconds per event.
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from graphql import parse

from gateway.operations import SubscriptionSelection
from gateway.schema import make_schema

VERBATIM = """subscription NodeExecutionStatusChanged($projectId: Int!) {
  nodeExecutionStatusChanged(projectId: $projectId) {
    projectId nodeId nodeType
    datasourceExecution { dataSourceId filename status processedAt executionState errorMessage }
    graphExecution { graphId nodeCount edgeCount executionState computedDate errorMessage }
    timestamp
  }
}"""
EVENT = {
    "projectId": 3,
    "nodeId": "datasource_1",
    "nodeType": "DataSourceNode",
    "datasourceExecution": {
        "dataSourceId": 1,
        "filename": "a.csv",
        "status": "active",
        "processedAt": "2026-11-29T17:00:00.000Z",
        "executionState": "completed",
        "errorMessage": None,
    },
    "graphExecution": None,
    "timestamp": "2026-11-29T17:00:00.001Z",
    "sequence": 9,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=2000, help="renders per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings (the median is shown)")
    args = parser.parse_args()
    selection = SubscriptionSelection(
        make_schema(), VERBATIM, parse(VERBATIM), {"projectId": 3}, None
    )
    assert selection.render(EVENT) == selection.execute(EVENT)
    rows = []
    for name, render in (
        ("projection", selection.render),
        ("graphql-core execute", selection.execute),
    ):
        times = timeit.repeat(lambda r=render: r(EVENT), number=args.number, repeat=args.repeat)
        per_event = [t / args.number * 1e6 for t in times]
        rows.append((name, statistics.median(per_event), min(per_event), max(per_event)))
    print(f"{'renderer':<22} {'median µs':>10} {'min µs':>8} {'max µs':>8}")
    for name, median, low, high in rows:
        print(f"{name:<22} {median:>10.1f} {low:>8.1f} {high:>8.1f}")
    print(
        f"ratio: {rows[1][1] / rows[0][1]:.0f}x  ({args.repeat} timings of {args.number} renders)"
    )


if __name__ == "__main__":
    main()
