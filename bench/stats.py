"""What the load test counts, kept compact and mergeable across client processes (pure, no I/O).

Latencies go into fixed log-spaced buckets (40 per decade, from 0.1 ms to 100 s: each bucket
about 6 % wide), so a client process sends a few hundred integers per second however many
deliveries it saw, and the parent adds them up. Percentiles are read back as the geometric
middle of their bucket (never above the exact maximum, which is kept aside). The events'
timestamps have millisecond precision anyway.

Losses are counted per subscription from the per-project `sequence`, then completed with what
the server says it published: see `account`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOWEST_MS = 0.1
PER_DECADE = 40
BUCKETS = 2 + 6 * PER_DECADE  # <= 0.1 ms, ..., >= 100 s


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency in milliseconds (the client inlines the same)."""
    if ms <= LOWEST_MS:
        return 0
    return min(int(math.log10(ms / LOWEST_MS) * PER_DECADE) + 1, BUCKETS - 1)


def bucket_value(index: int) -> float:
    """A bucket's representative latency (its geometric middle), in milliseconds."""
    if index <= 0:
        return LOWEST_MS
    return LOWEST_MS * 10 ** ((index - 0.5) / PER_DECADE)


class Histogram:
    """Counts per latency bucket, plus the exact maximum."""

    __slots__ = ("counts", "total", "max_ms")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.total = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        self.counts[bucket_of(ms)] += 1
        self.total += 1
        if ms > self.max_ms:
            self.max_ms = ms

    def merge_sparse(self, sparse: Mapping[int, int], max_ms: float) -> None:
        """Add a client's report: {bucket: count} and its maximum."""
        for index, count in sparse.items():
            self.counts[index] += count
            self.total += count
        if max_ms > self.max_ms:
            self.max_ms = max_ms

    def merge(self, other: Histogram) -> None:
        for index, count in enumerate(other.counts):
            if count:
                self.counts[index] += count
        self.total += other.total
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, q: float) -> float | None:
        """The latency below which a fraction `q` of the deliveries fell; None if empty."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return min(bucket_value(index), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, float | None]:
        return {
            "p50": _round(self.percentile(0.50)),
            "p90": _round(self.percentile(0.90)),
            "p99": _round(self.percentile(0.99)),
            "max": _round(self.max_ms) if self.total else None,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def percentiles(values: Sequence[float], qs: Iterable[float] = (0.5, 0.99)) -> list[float | None]:
    """Exact percentiles (nearest rank) of a small list, e.g. connect times."""
    if not values:
        return [None for _ in qs]
    ordered = sorted(values)
    return [ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in qs]


# --- losses ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tally:
    """One subscription's stream during one load step, as its client process saw it.

    `first`/`last` are the first and highest sequence received (0: none); `gaps` is how many
    sequences between them never arrived; `received` counts every `next`, duplicates included.
    """

    project: int
    first: int
    last: int
    received: int
    duplicates: int
    out_of_order: int
    gaps: int
    errors: int = 0


@dataclass
class LossReport:
    expected: int = 0  # deliveries the subscriptions should have received
    received: int = 0  # deliveries received, duplicates included
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    errors: int = 0
    events: int = 0  # distinct (project, sequence) seen by at least one subscriber
    unseen_events: int = 0  # published by the server, received by no subscriber
    silent_subscriptions: int = 0  # received nothing although their project had events
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "received": self.received,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "errors": self.errors,
            "events": self.events,
            "unseen_events": self.unseen_events,
            "silent_subscriptions": self.silent_subscriptions,
            "notes": self.notes,
        }


def account(
    tallies: Sequence[Tally],
    server_last: Mapping[int, int] | None = None,
    server_events: int | None = None,
) -> LossReport:
    """Lost, duplicated and out-of-order deliveries of one load step.

    A project's stream during the step runs from the lowest first sequence any of its
    subscribers received to the highest sequence anyone received or the server reports
    (`server_last`, from the `executionEvents` query: the tail nobody got). Each subscription
    should hold that whole span: whatever it misses at the head, in gaps or at the tail is
    lost. `server_events` (the server's count of changes published during the step) catches
    events that no subscriber saw at all, in projects the tail check did not cover; those are
    charged at the average fan-out.
    """
    report = LossReport()
    server_last = server_last or {}
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t in tallies:
        if t.first:
            first[t.project] = min(first.get(t.project, t.first), t.first)
            last[t.project] = max(last.get(t.project, t.last), t.last)
    for project, top in server_last.items():
        if project in last and top > last[project]:
            last[project] = top
    span = {p: last[p] - first[p] + 1 for p in first}
    report.events = sum(span.values())
    for t in tallies:
        report.received += t.received
        report.duplicates += t.duplicates
        report.out_of_order += t.out_of_order
        report.errors += t.errors
        expected = span.get(t.project, 0)
        report.expected += expected
        if not t.first:
            report.lost += expected
            report.silent_subscriptions += 1 if expected else 0
            continue
        report.lost += (t.first - first[t.project]) + t.gaps + (last[t.project] - t.last)
    if server_events is not None and server_events > report.events:
        report.unseen_events = server_events - report.events
        subscribed = {t.project for t in tallies}
        fan_out = len(tallies) / max(1, len(subscribed))
        charged = round(report.unseen_events * fan_out)
        report.lost += charged
        report.expected += charged
        report.notes.append(
            f"the server published {server_events} changes, subscribers saw {report.events}: "
            f"{report.unseen_events} reached nobody (charged {charged} deliveries at the "
            f"average fan-out of {fan_out:.1f})"
        )
    return report
