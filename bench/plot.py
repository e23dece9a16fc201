"""Latency percentiles and deliveries per second over time, from a load-test report.

    python run.py loadtest ... --plot run.png              # while running
    python -m bench.plot report.json [more.json ...] -o run.png   # from saved --json reports
    python run.py loadtest --compare all --rates 4000,6000 --plot cmp.png   # p99 per server
    python -m bench.plot compare.json -o cmp.png   # from a saved `--compare --json` report

Several reports (planpulse and the baseline, say) are drawn side by side, one column each,
on the same axes' scales. Steps of a sweep follow each other on the time axis, separated by
a dotted line and labelled with their rate. Needs matplotlib (the dev extra).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import orjson


def _series(report: dict[str, Any]) -> tuple[list[float], dict[str, list[Any]], list[Any]]:
    """Concatenate the steps' timelines: x (seconds), the y series, and step boundaries."""
    xs: list[float] = []
    ys: dict[str, list[Any]] = {k: [] for k in ("deliveries", "p50", "p90", "p99", "max")}
    marks: list[tuple[float, str, float]] = []
    offset = 0.0
    for step in report.get("steps", []):
        timeline = step.get("timeline", [])
        marks.append((offset, f"{step['rate']:,} ev/s", step["offered_deliveries_per_s"]))
        for point in timeline:
            xs.append(offset + point["t"] + 0.5)
            for key in ys:
                ys[key].append(point.get(key))
        length = (max((p["t"] for p in timeline), default=0) + 1) if timeline else 1
        offset += length + 1
        xs.append(offset - 0.5)  # a gap: no line from one step to the next
        for key in ys:
            ys[key].append(float("nan"))
    return xs, ys, marks


def plot_report(reports: dict[str, Any] | Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(reports, dict):
        reports = [reports]
    columns = len(reports)
    fig, axes = plt.subplots(
        2, columns, figsize=(7 * columns, 7), sharex="col", squeeze=False, sharey="row"
    )
    for col, report in enumerate(reports):
        xs, ys, marks = _series(report)
        s = report["scenario"]
        title = report.get("label") or s["server"]
        lat = axes[0][col]
        for key, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("max", ":")):
            values = [float("nan") if y is None else y for y in ys[key]]
            if any(v == v for v in values):  # not all NaN
                lat.plot(xs, values, style, label=key, linewidth=1.4)
        lat.set_yscale("log")
        lat.set_ylabel("latency, ms (timestamp → receipt)")
        lat.axhline(1000, color="red", linewidth=0.8, alpha=0.5)
        lat.grid(True, which="both", alpha=0.3)
        lat.legend(loc="upper left", fontsize=8)
        lat.set_title(
            f"{title}: {s['connections']:,} conns, {s['projects']:,} projects, "
            f"{s['subscriptions']:,} subs",
            fontsize=10,
        )
        rate = axes[1][col]
        rate.plot(xs, ys["deliveries"], "-", color="tab:green", label="delivered")
        for i, (x, text, offered) in enumerate(marks):
            if i:
                lat.axvline(x, color="grey", linestyle=":", linewidth=0.8)
                rate.axvline(x, color="grey", linestyle=":", linewidth=0.8)
            end = marks[i + 1][0] - 1 if i + 1 < len(marks) else (max(xs) - 0.5 if xs else x + 1)
            rate.hlines(offered, x, end, colors="tab:orange", linestyles="--", linewidth=1)
            rate.annotate(text, (x, offered), fontsize=7, xytext=(2, 3), textcoords="offset points")
        rate.set_xlabel("seconds since startLoad (steps of a sweep one after the other)")
        rate.set_ylabel("deliveries per second")
        rate.grid(True, alpha=0.3)
        rate.plot([], [], "--", color="tab:orange", label="offered")
        rate.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(rows: Sequence[dict[str, Any]], path: str, title: str = "") -> None:
    """p99 and server CPU against the offered deliveries/s, one line per server (the rows of
    `loadtest --compare`; a row that failed or did not hold is drawn hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(12, 4.8))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    for server in servers:
        mine = sorted(
            (r for r in rows if r["server"] == server and "error" not in r),
            key=lambda r: r["offered_deliveries_per_s"],
        )
        if not mine:
            continue
        xs = [r["offered_deliveries_per_s"] for r in mine]
        for ax, key in ((lat, "p99_ms"), (cpu, "server_cpu_percent")):
            ys = [float("nan") if r[key] is None else r[key] for r in mine]
            (line,) = ax.plot(xs, ys, "-", label=server, linewidth=1.4)
            for x, y, r in zip(xs, ys, mine, strict=True):
                ax.plot(
                    [x],
                    [y],
                    "o",
                    color=line.get_color(),
                    markerfacecolor=line.get_color() if r["held"] else "white",
                )
        for x, r in zip(xs, mine, strict=True):
            lat.annotate(
                f"{r['deliveries_per_s']:,.0f}/s"
                + ("" if r["lost"] == 0 else f", {r['lost']:,} lost"),
                (x, r["p99_ms"] or 1),
                fontsize=7,
                xytext=(4, 2),
                textcoords="offset points",
            )
    lat.set_yscale("log")
    lat.set_ylabel("p99 latency, ms (timestamp → receipt)")
    lat.axhline(1000, color="red", linewidth=0.8, alpha=0.5)
    cpu.set_ylabel("server CPU, % of one core")
    cpu.set_ylim(bottom=0)
    for ax in (lat, cpu):
        ax.set_xlabel("deliveries/s offered")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    lat.set_title("p99 per server (hollow: the step did not hold; labels: delivered/s)", fontsize=9)
    cpu.set_title("server CPU per server", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plot saved load-test reports (--json)")
    parser.add_argument("reports", nargs="+", help="JSON files written by loadtest --json")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    reports = []
    for name in args.reports:
        with open(name, "rb") as f:
            reports.append(orjson.loads(f.read()))
    if len(reports) == 1 and "compare" in reports[0]:
        plot_compare(reports[0]["compare"]["rows"], args.output)
    else:
        plot_report(reports, args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
