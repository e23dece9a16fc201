"""`python run.py loadtest --compare planpulse,baseline,reference --rates 4000,6000`: several
servers measured by the same load client in one invocation, side by side (issue 16 item 5).

Rate by rate, each server is started fresh, sent `prepareLoad`, given the same connections
and subscriptions, driven at that rate for `--seconds`, measured and stopped, before the next
one: a server that fell behind at one rate leaves no backlog for the next, and the servers of
one rate are measured minutes apart at most, on a machine whose load varies (each row says
how much CPU other processes used meanwhile). One table (Markdown, the form bench/README.md
keeps), and with `--plot` p99 and server CPU against the offered deliveries/s, one line per
server. When planpulse and the baseline are both measured, issue 16 item 1's targets are
checked for each rate.

    python -m bench.compare saved.json     # the table again, from a saved `--compare --json`
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from bench.loadtest import FAILURES, LoadTest, format_stages


def cell_args(args: argparse.Namespace, server: str, rate: int) -> argparse.Namespace:
    """The arguments of one server at one rate: a single step, its own label."""
    cell = copy.copy(args)
    cell.server = server
    cell.compare = None
    cell.rate = rate
    cell.rates = None
    cell.sweep = False
    cell.plot = None
    cell.label = f"{server} @ {rate:,} ev/s"
    return cell


def row_of(report: dict[str, Any], quiet: dict[str, float] | None) -> dict[str, Any]:
    """The figures of one server at one rate, from its report (one step)."""
    (step,) = report["steps"]
    latency = step["latency_ms"]
    cpu = step["cpu"]
    return {
        "server": report["scenario"]["server"],
        "rate": step["rate"],
        "offered_deliveries_per_s": step["offered_deliveries_per_s"],
        "deliveries_per_s": step["deliveries_per_s"],
        "held": step["held"],
        "verdict": step["verdict"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "max_ms": latency["max"],
        "lost": step["lost"],
        "duplicates": step["duplicates"],
        "out_of_order": step["out_of_order"],
        "server_cpu_percent": cpu["server_percent"],
        "clients_cpu_percent": cpu["clients_percent"],
        "other_cpu_percent": cpu["other_percent"],
        "kib_per_connection": report.get("server", {}).get("kib_per_connection"),
        "connect_p99_ms": report.get("clients", {}).get("connect_ms", {}).get("p99"),
        "quiet_before": quiet,
    }


def failed_row(server: str, rate: int, offered: float, error: str) -> dict[str, Any]:
    return {"server": server, "rate": rate, "offered_deliveries_per_s": offered, "error": error}


def _f(value: Any, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The issue's table: one row per server per rate."""
    lines = [
        "| offered deliv/s | server | deliv/s | held | p50 ms | p99 ms | max ms | server CPU % "
        "| KiB/conn | lost/dup/ooo | client CPU % | other CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        offered = f"{r['offered_deliveries_per_s']:,.0f}"
        if "error" in r:
            lines.append(f"| {offered} | {r['server']} | failed: {r['error'][:160]} |" + " |" * 9)
            continue
        lines.append(
            f"| {offered} | {r['server']} | {r['deliveries_per_s']:,.0f} "
            f"| {'yes' if r['held'] else 'no'} | {_f(r['p50_ms'], '{:.1f}')} "
            f"| {_f(r['p99_ms'], '{:.1f}')} | {_f(r['max_ms'], '{:.0f}')} "
            f"| {_f(r['server_cpu_percent'], '{:.0f}')} | {_f(r['kib_per_connection'], '{:.1f}')} "
            f"| {r['lost']:,}/{r['duplicates']:,}/{r['out_of_order']:,} "
            f"| {_f(r['clients_cpu_percent'], '{:.0f}')} | {_f(r['other_cpu_percent'], '{:.0f}')} |"
        )
    return "\n".join(lines)


def _check(name: str, value: float | None, limit: float | None, unit: str) -> str:
    if value is None or limit is None:
        return f"{name} not measured"
    return f"{name} {value:,.1f} ≤ {limit:,.1f}{unit} {'✔' if value <= limit else '✘'}"


def _plus(value: float | None, extra: float, factor: float = 1.0) -> float | None:
    return None if value is None else value * factor + extra


def issue16_targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Issue 16 item 1, per rate where planpulse and the baseline were both measured: server
    CPU ≤ bare + 10 points, p99 ≤ 2 × bare + 20 ms, KiB/conn ≤ bare + 2; and at 60,000
    deliveries/s offered or more, p99 ≤ 150 ms with nothing lost."""
    by_rate: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            by_rate.setdefault(r["rate"], {})[r["server"]] = r
    out = []
    for servers in by_rate.values():
        pp, bare = servers.get("planpulse"), servers.get("baseline")
        if pp is None or bare is None:
            continue
        checks = [
            _check(
                "server CPU", pp["server_cpu_percent"], _plus(bare["server_cpu_percent"], 10), " %"
            ),
            _check("p99", pp["p99_ms"], _plus(bare["p99_ms"], 20, 2.0), " ms"),
            _check("KiB/conn", pp["kib_per_connection"], _plus(bare["kib_per_connection"], 2), ""),
        ]
        if pp["offered_deliveries_per_s"] >= 60_000:
            checks.append(_check("p99 (≥ 60k offered)", pp["p99_ms"], 150.0, " ms"))
            checks.append(f"lost {pp['lost']:,} {'✔' if pp['lost'] == 0 else '✘'}")
        offered = pp["offered_deliveries_per_s"]
        out.append(f"issue 16 item 1 at {offered:,.0f} offered: " + "; ".join(checks))
    return out


def compare(args: argparse.Namespace) -> int:
    """Run every server at every rate; print the table (or JSON); 0 if every cell held."""
    from bench.scenarios import wait_quiet

    rates = args.rates or [args.rate]
    servers: list[str] = args.compare
    subscriptions = args.subscriptions or args.connections
    cells = [(rate, server) for rate in rates for server in servers]
    rows: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    started = time.monotonic()

    def say(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    for n, (rate, server) in enumerate(cells, 1):
        offered = rate * subscriptions / args.projects
        quiet = None
        if args.quiet_wait > 0:
            try:
                quiet = wait_quiet(args.quiet_wait, 30.0, say)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130
        say(
            f"[{n}/{len(cells)}, {time.monotonic() - started:.0f} s] {server} at {rate:,} "
            f"events/s = {offered:,.0f} deliveries/s offered …"
        )
        test = LoadTest(cell_args(args, server, rate))
        try:
            report = asyncio.run(test.run())
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except FAILURES as error:
            test.progress.done()
            say(f"  {server} failed: {error}")
            rows.append(failed_row(server, rate, offered, str(error).splitlines()[0]))
            continue
        report["quiet"] = quiet
        reports.append(report)
        row = row_of(report, quiet)
        rows.append(row)
        say(
            f"  {row['deliveries_per_s']:,.0f} deliveries/s, p99 {_f(row['p99_ms'], '{:.1f}')} "
            f"ms, server CPU {_f(row['server_cpu_percent'], '{:.0f}')} %, lost {row['lost']:,}, "
            f"other CPU {_f(row['other_cpu_percent'], '{:.0f}')} %: {row['verdict']}"
        )
    targets = issue16_targets(rows)
    if args.plot and any("error" not in r for r in rows):
        from bench.plot import plot_compare

        plot_compare(rows, args.plot, title=scenario_title(args))
    if args.json:
        print(
            orjson.dumps(
                {"compare": {"rows": rows, "targets": targets, "reports": reports}},
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
    else:
        print(scenario_title(args))
        if reports:
            machine = reports[0]["scenario"]["machine"]
            print(
                f"machine: {machine['nproc']} × {machine['cpu']}, Python {machine['python']}, "
                f"websockets {machine['websockets']}; {time.monotonic() - started:.0f} s in all"
            )
        print()
        print(markdown(rows))
        print()
        for line in targets:
            print(line)
        for report in reports:
            stages = report["steps"][0].get("stages")
            if stages:
                print(f"{report['label']}, where the time goes: {format_stages(stages)}")
        if args.plot:
            print(f"plot: {args.plot}")
    return 0 if rows and all(r.get("held") for r in rows) else 1


def scenario_title(args: argparse.Namespace) -> str:
    subscriptions = args.subscriptions or args.connections
    return (
        f"{args.connections:,} connections, {args.projects:,} projects, "
        f"{subscriptions / args.projects:g} subscribers per project, {args.seconds:g} s per "
        f"server and rate, {args.client_procs} client processes"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the table of a saved `--compare --json` report")
    parser.add_argument("report", help="JSON written by loadtest --compare ... --json")
    args = parser.parse_args(argv)
    with open(args.report, "rb") as f:
        saved = orjson.loads(f.read())["compare"]
    print(markdown(saved["rows"]))
    for line in saved["targets"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
