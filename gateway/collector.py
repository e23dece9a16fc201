"""The garbage collector's settings for a serving process.

CPython collects its youngest generation every 700 net new container objects, and the
oldest whenever enough have survived; each full collection walks every object the process
holds. A gateway holds ~100,000 of them from startup alone (graphql-core's schema,
SQLAlchemy's metadata, the modules) and makes container objects for every event
(deliveries, envelopes, event dicts), so under load the collector ran hundreds of young
collections per run, and full ones of ~115 ms of CPU each with the GIL held: a pause every
subscriber sees in its p99 (measured with a gc callback during `run.py loadtest
--connections 1000 --projects 100 --rate 4000`; bench/README.md, "Issue 16 item 1").

So, once the server has started: collect, then `gc.freeze()` what is left (it lives as
long as the process; frozen objects are never scanned again, and never freed, which is
what they would be anyway), and collect the young generation every 10,000 net new
objects instead of 700. Reference cycles made later are still collected, a little later.
"""

from __future__ import annotations

import gc

# (young, middle, old), CPython's default (700, 10, 10). PLANPULSE_GC_THRESHOLD overrides.
SERVING_THRESHOLD = (10_000, 20, 10)


def settle(threshold: tuple[int, ...] = SERVING_THRESHOLD) -> None:
    """Freeze what startup made and set the serving thresholds (call once started)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)


def gc_threshold(text: str) -> tuple[int, ...]:
    """'10000,20,10' → (10000, 20, 10); one to three non-negative integers."""
    parts = tuple(int(part) for part in text.split(","))
    if not 1 <= len(parts) <= 3 or any(part < 0 for part in parts):
        raise ValueError(f"GC threshold: one to three integers ≥ 0, got {text!r}")
    return parts
