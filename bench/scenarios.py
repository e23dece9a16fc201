"""The scenarios of the load-testing issue, runnable by anyone, with medians of repeats.

    python -m bench.scenarios F                 # fan-out: sweep + 1,000 events/s, both servers
    python -m bench.scenarios P --server planpulse
    python -m bench.scenarios F P --small       # the same shapes at a tenth of the size
    python -m bench.scenarios F --repeat 1 --plot /tmp/f.png
    python -m bench.scenarios F --server all    # and the graphql-ws reference (Node.js)

Scenario F (fan-out): 1,000 connections, 100 projects, 10 subscribers per project, 10 s.
  F-sweep   the rate is raised ×1.5 (from 300 events/s for planpulse, 2,000 for the baseline),
            then bisected twice, until something is lost, p99 passes 1 s or the offered rate
            is not delivered; the last rate that held is the maximum sustainable rate.
                                                    target ≥ 60,000 deliveries/s
  F-1k      1,000 events/s = 10,000 deliveries/s.   target p99 ≤ 50 ms, ≤ 25 KiB/connection
Scenario P (many projects): 10,000 projects, one subscription each, over 1,000 connections,
  2,000 events/s spread over all projects, 30 s; then the clients leave and the project
  actors are watched until near zero.               target 0 lost, p99 ≤ 250 ms,
                                                    RSS ≤ 600 MB, actors ~0 within 60 s

Each run is `python run.py loadtest … --json` in a process of its own, started when the
machine is quiet (other processes would skew the figures; the wait is reported). Reports are
saved as JSON in --out; the medians of the repeats are printed as a Markdown table, the
form bench/README.md records them in.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    args: tuple[str, ...]
    servers: tuple[str, ...] = ("planpulse", "baseline")
    small_args: tuple[str, ...] = ()
    targets: tuple[tuple[str, str, float], ...] = field(default_factory=tuple)
    # per server, appended (a sweep starts where the server is expected to hold)
    server_args: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def args_for(self, server: str, small: bool) -> list[str]:
        extra = dict(self.server_args).get(server, ())
        return [*(self.small_args if small else self.args), *extra]


F_SHAPE = ("--connections", "1000", "--projects", "100", "--subscriptions", "1000")
F_SMALL = ("--connections", "100", "--projects", "10", "--subscriptions", "100")
P_SHAPE = ("--connections", "1000", "--projects", "10000", "--subscriptions", "10000")
P_SMALL = ("--connections", "100", "--projects", "1000", "--subscriptions", "1000")

SCENARIOS: dict[str, list[Scenario]] = {
    "F": [
        Scenario(
            "F-sweep",
            "fan-out: max sustainable deliveries/s (0 lost, p99 < 1 s)",
            (*F_SHAPE, "--seconds", "10", "--sweep", "--sweep-refine", "2"),
            small_args=(*F_SMALL, "--seconds", "5", "--sweep"),
            targets=(("held_deliveries_per_s", ">=", 60_000),),
            server_args=(
                ("planpulse", ("--rate", "300")),
                ("baseline", ("--rate", "2000")),
                ("reference", ("--rate", "300")),
            ),
        ),
        Scenario(
            "F-1k",
            "fan-out at 1,000 events/s = 10,000 deliveries/s",
            (*F_SHAPE, "--seconds", "10", "--rate", "1000"),
            small_args=(*F_SMALL, "--seconds", "5", "--rate", "1000"),
            targets=(("p99_ms", "<=", 50), ("lost", "<=", 0), ("kib_per_connection", "<=", 25)),
        ),
    ],
    "P": [
        Scenario(
            "P",
            "many projects: 2,000 events/s over 10,000 projects",
            (*P_SHAPE, "--seconds", "30", "--rate", "2000", "--linger", "120"),
            small_args=(*P_SMALL, "--seconds", "10", "--rate", "2000", "--linger", "120"),
            targets=(
                ("lost", "<=", 0),
                ("p99_ms", "<=", 250),
                ("rss_peak_mb", "<=", 600),
                ("actors_near_zero_s", "<=", 60),
            ),
        ),
    ],
}


# --- a quiet machine --------------------------------------------------------------------------


def machine_busy(seconds: float = 1.0) -> float:
    """Busy CPU over `seconds`, in % of one core, for the whole machine."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values[:8]) - idle, sum(values[:8])

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    cores = os.cpu_count() or 1
    return 100.0 * cores * (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(limit: float, threshold: float, log: Callable[[str], None]) -> dict[str, float]:
    """Wait until the machine uses less than `threshold` % of a core (at most `limit` s)."""
    started = time.monotonic()
    busy = machine_busy()
    while busy > threshold and time.monotonic() - started < limit:
        log(f"  waiting for a quiet machine: {busy:.0f}% of a core busy")
        busy = machine_busy(2.0)
    return {"busy_percent_before": round(busy, 1), "waited_s": round(time.monotonic() - started, 1)}


# --- running ------------------------------------------------------------------------------------


def run_once(args: Sequence[str], server: str, timeout: float) -> dict[str, Any]:
    command = [sys.executable, "run.py", "loadtest", "--server", server, "--json", *args]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if not result.stdout.strip():
        raise RuntimeError(f"{' '.join(command)} printed no report:\n{result.stderr[-3000:]}")
    report = orjson.loads(result.stdout)
    report["command"] = "python " + " ".join(command[1:])
    return report


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a scenario is judged on, from one report."""
    summary = report["summary"]
    steps = report["steps"]
    server = report.get("server", {})
    peak_rss = max((s["server_peak"]["rss_mb"] or 0 for s in steps), default=0) or None
    peak_threads = max((s["server_peak"]["threads"] or 0 for s in steps), default=0) or None
    chosen = next(
        (s for s in steps if s["rate"] == summary["rate"] and s["held"] == summary["held"]),
        steps[-1],
    )
    out: dict[str, Any] = {
        "rate": summary["rate"],
        "deliveries_per_s": summary["deliveries_per_s"],
        "p50_ms": summary["latency_ms"]["p50"],
        "p90_ms": summary["latency_ms"]["p90"],
        "p99_ms": summary["latency_ms"]["p99"],
        "max_ms": summary["latency_ms"]["max"],
        "lost": summary["lost"],
        "duplicates": summary["duplicates"],
        "out_of_order": summary["out_of_order"],
        "connect_p50_ms": report["clients"]["connect_ms"]["p50"],
        "connect_p99_ms": report["clients"]["connect_ms"]["p99"],
        "rss_ready_mb": server.get("rss_mb", {}).get("ready"),
        "rss_peak_mb": peak_rss,
        "kib_per_connection": server.get("kib_per_connection"),
        "threads_peak": peak_threads,
        "server_cpu_percent": chosen["cpu"]["server_percent"],
        "clients_cpu_percent": chosen["cpu"]["clients_percent"],
        "other_cpu_percent": chosen["cpu"]["other_percent"],
        "held": summary["held"],
    }
    if "sweep" in report:
        out["held_rate"] = report["sweep"]["held_rate"]
        out["held_deliveries_per_s"] = report["sweep"]["held_deliveries_per_s"]
        out["failed_rate"] = report["sweep"]["failed_rate"]
        out["failed_because"] = report["sweep"]["failed_because"]
    if "linger" in report and "note" not in report["linger"]:
        out["actors_at_leave"] = report["linger"]["actors_at_leave"]
        out["actors_near_zero_s"] = report["linger"]["seconds_to_near_zero"]
        out["threads_after_leave"] = report["linger"]["threads_end"]
    return out


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(numbers) == len(values) and numbers:
            merged[key] = statistics.median(numbers)
        else:
            merged[key] = values if len(set(map(str, values))) > 1 else values[0]
    return merged


def verdicts(scenario: Scenario, medians: dict[str, Any]) -> list[str]:
    out = []
    for key, op, target in scenario.targets:
        value = medians.get(key)
        if value is None or not isinstance(value, int | float):
            out.append(f"{key}: not measured")
            continue
        ok = value >= target if op == ">=" else value <= target
        out.append(f"{key} {value:,.1f} {op} {target:,} {'✔' if ok else '✘ MISSED'}")
    return out


def markdown(rows: list[tuple[str, str, int, dict[str, Any]]]) -> str:
    columns = [
        ("deliv/s", "deliveries_per_s", "{:,.0f}"),
        ("held deliv/s", "held_deliveries_per_s", "{:,.0f}"),
        ("p50 ms", "p50_ms", "{:.1f}"),
        ("p90 ms", "p90_ms", "{:.1f}"),
        ("p99 ms", "p99_ms", "{:.1f}"),
        ("max ms", "max_ms", "{:.0f}"),
        ("lost/dup/ooo", None, ""),
        ("connect p50/p99 ms", None, ""),
        ("RSS MB subscribed/peak", None, ""),
        ("KiB/conn", "kib_per_connection", "{:.1f}"),
        ("threads peak", "threads_peak", "{:,.0f}"),
        ("srv/cli/other cpu %", None, ""),
    ]
    head = "| scenario | server | runs | " + " | ".join(c[0] for c in columns) + " |"
    lines = [head, "|" + "---|" * (3 + len(columns))]

    def fmt(value: Any, pattern: str) -> str:
        if value is None or isinstance(value, list):
            return "–" if value is None else "/".join(map(str, value))
        return pattern.format(value)

    for name, server, runs, m in rows:
        cells = []
        for title, key, pattern in columns:
            if key is not None:
                cells.append(fmt(m.get(key), pattern))
            elif title.startswith("lost"):
                cells.append(f"{m['lost']:g}/{m['duplicates']:g}/{m['out_of_order']:g}")
            elif title.startswith("connect"):
                cells.append(
                    f"{fmt(m['connect_p50_ms'], '{:.0f}')}/{fmt(m['connect_p99_ms'], '{:.0f}')}"
                )
            elif title.startswith("RSS"):
                ready, peak = m["rss_ready_mb"], m["rss_peak_mb"]
                cells.append(f"{fmt(ready, '{:.0f}')}/{fmt(peak, '{:.0f}')}")
            else:
                cells.append(
                    "/".join(
                        fmt(m[k], "{:.0f}")
                        for k in ("server_cpu_percent", "clients_cpu_percent", "other_cpu_percent")
                    )
                )
        lines.append(f"| {name} | {server} | {runs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--server",
        choices=("planpulse", "baseline", "reference", "both", "all"),
        default="both",
        help="both: planpulse and the baseline; all: and the graphql-ws reference",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (medians)")
    parser.add_argument("--small", action="store_true", help="a tenth of the size, shorter")
    parser.add_argument("--out", default="/tmp/planpulse-bench", help="folder for the reports")
    parser.add_argument("--plot", help="PNG: the first run of each scenario, servers side by side")
    parser.add_argument("--quiet-below", type=float, default=30.0, help="%% of a core")
    parser.add_argument("--quiet-wait", type=float, default=120.0, help="seconds at most")
    parser.add_argument(
        "--extra", action="append", default=[], help="more loadtest arguments (repeatable)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows: list[tuple[str, str, int, dict[str, Any]]] = []
    judged: list[str] = []
    firsts: dict[str, list[dict[str, Any]]] = {}
    for key in args.scenarios:
        for scenario in SCENARIOS[key]:
            servers = scenario.servers
            if args.server == "all":
                servers = (*servers, "reference")
            elif args.server != "both":
                servers = tuple(s for s in (*servers, "reference") if s == args.server)
            for server in servers:
                loadtest_args = [*scenario.args_for(server, args.small), *args.extra]
                runs = []
                for i in range(args.repeat):
                    quiet = wait_quiet(args.quiet_wait, args.quiet_below, log)
                    log(f"{scenario.name} on {server}, run {i + 1}/{args.repeat} …")
                    started = time.monotonic()
                    report = run_once(loadtest_args, server, timeout=1800)
                    report["quiet"] = quiet
                    path = out / f"{stamp}-{scenario.name}-{server}-{i + 1}.json"
                    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
                    f = figures(report)
                    runs.append(f)
                    log(
                        f"  {time.monotonic() - started:.0f} s: {f['deliveries_per_s']:,.0f} "
                        f"deliveries/s, p99 {f['p99_ms']} ms, lost {f['lost']}"
                        + (
                            f", held {f['held_deliveries_per_s']} deliveries/s"
                            if "held_rate" in f
                            else ""
                        )
                        + f"; other CPU {f['other_cpu_percent']}% → {path}"
                    )
                    if i == 0:
                        report["label"] = f"{scenario.name} {server}"
                        firsts.setdefault(scenario.name, []).append(report)
                medians = median_of(runs)
                rows.append((scenario.name, server, len(runs), medians))
                if server == "planpulse":
                    judged.append(f"{scenario.name}: " + "; ".join(verdicts(scenario, medians)))
                else:
                    best = medians.get("held_deliveries_per_s") or medians["deliveries_per_s"]
                    judged.append(f"{scenario.name} ({server}): {best:,.0f} deliveries/s")
    print(markdown(rows))
    print()
    for line in judged:
        print(f"- {line}")
    if args.plot:
        from bench.plot import plot_report

        for name, reports in firsts.items():
            path = args.plot if len(firsts) == 1 else args.plot.replace(".png", f"-{name}.png")
            plot_report(reports, path)
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
