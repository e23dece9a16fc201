"""Where the server's time goes under load: py-spy on planpulse while `loadtest` drives it.

    python -m bench.profile --rate 4000 --seconds 10 --name before

starts planpulse (`serve --enable-loadgen`, a fresh SQLite file, as `loadtest` does), runs
`run.py loadtest --url … --server-pid …` against it (scenario F by default: 1,000
connections, 100 projects, 10 subscribers per project), and once the load generator has
started (its `planpulse_loadgen_changes_total` moves) records the server with
`py-spy record --gil --nonblocking` (samples only while a thread holds the GIL: what costs
the one core the process can use). It writes, under `bench/figures/`:

* `profile-<name>.txt` — the collapsed stacks (py-spy's `raw` format; speedscope.app and
  flamegraph.pl read it);
* `profile-<name>.svg` — a flame graph of them (rendered here, no other tool needed);
* `profile-<name>.md` — the share of GIL samples by stage of the event path (`STAGES`).

py-spy comes with the `dev` extras (pyproject.toml); it needs ptrace rights on the server
(root, or `kernel.yama.ptrace_scope` 0).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from bench.loadtest import ROOT, ServerUnderTest, loadtest_command

FIGURES = Path(__file__).resolve().parent / "figures"

# Stages of the event path, in priority order: a sample belongs to the first stage with a
# frame anywhere in its stack that matches one of the stage's markers (so a socket write
# made by the outbox counts as the write, the render inside the project actor as the
# render). A marker is (path fragment, function name or None for any function there).
STAGES: list[tuple[str, list[tuple[str, str | None]]]] = [
    ("persist: StateStore.data_source_states (group commit)", [("actors/state.py", None)]),
    (
        "metrics: counters, latency histogram",
        [("gateway/metrics.py", None), ("prometheus_client/", None)],
    ),
    (
        "render: selection.render (projection + orjson)",
        [("gateway/operations.py", "render"), ("gateway/projection.py", None)],
    ),
    (
        "socket write: SocketSink (frame headers, transport.write)",
        [
            ("gateway/websockets_internals.py", "write"),
            ("gateway/websockets_internals.py", "writable"),
            ("gateway/websockets_internals.py", "text_frame_header"),
        ],
    ),
    ("outbox: Outbox.put / flush", [("gateway/outbox.py", None)]),
    ("dispatcher: submit (actor threads) / _run (loop)", [("gateway/dispatcher.py", None)]),
    ("deliver: SubscriptionMailbox.deliver", [("gateway/subscriber.py", None)]),
    (
        "publish + route: bus, Hub.route, actor tell",
        [("actors/hub.py", None), ("actors/bus.py", None)],
    ),
    ("project actor: _publish, events, sequence", [("actors/project.py", None)]),
    ("loadgen: driver, batch building", [("/loadgen.py", None)]),
    ("actor runtime: inbox, turns", [("actors/runtime.py", None), ("pykka/", None)]),
    ("websockets: receive, keepalive, handshake", [("websockets/", None)]),
    ("gateway: connection, protocol", [("gateway/", None)]),
    (
        "event loop: select, callbacks, self-pipe wake-ups",
        [("asyncio/", None), ("selectors.py", None)],
    ),
]
OTHER = "other"


def stage_of(frames: list[str]) -> str:
    """The stage of one sample; `frames` outermost first, each 'function (file:line)'."""
    parsed = []
    for frame in frames:
        function, _, where = frame.partition(" (")
        parsed.append((function, where.rsplit(":", 1)[0]))
    for stage, markers in STAGES:
        for fragment, name in markers:
            for function, path in parsed:
                if fragment in path and (name is None or function.split(".")[-1] == name):
                    return stage
    return OTHER


THREADS = [
    ("event loop", "BaseEventLoop.run_forever"),
    ("project actors (shared threads)", "actors/runtime.py"),
    ("load generator (persist, publish, route)", "/loadgen.py"),
    ("graphql worker pool", "concurrent/futures/thread.py"),
]


def thread_of(stack: tuple[str, ...]) -> str:
    """Which of the server's threads a sample was taken in, from its outer frames."""
    for name, marker in THREADS:
        if any(marker in frame for frame in stack):
            return name
    return OTHER


def read_collapsed(path: Path) -> Counter[tuple[str, ...]]:
    """py-spy's raw output: 'frame;frame;… count' per line, the thread's name first."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[tuple(stack.split(";"))] += int(count)
    return stacks


def stage_table(stacks: Counter[tuple[str, ...]], possible: int | None = None) -> str:
    """A Markdown table: share of samples by stage, and by thread; with `possible` (the
    samples a thread holding the GIL all the time would give: rate × seconds), also the
    share of one core, which compares across runs where the shares do not."""
    by_stage: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    for stack, count in stacks.items():
        by_stage[stage_of(list(stack))] += count
        by_thread[thread_of(stack)] += count
    total = sum(by_stage.values()) or 1

    def row(name: str, count: int) -> str:
        core = f" {100 * count / possible:.1f} % |" if possible else ""
        return f"| {name} | {100 * count / total:.1f} % |{core}"

    head = "| share | of one core |\n|---|---|---|" if possible else "| share |\n|---|---|"
    held = f" (the GIL held {100 * total / possible:.0f} % of the time)" if possible else ""
    lines = [f"{total:,} GIL samples{held}", "", f"| stage {head}"]
    lines += [row(stage, count) for stage, count in by_stage.most_common()]
    lines += ["", f"| thread {head}"]
    lines += [row(thread, count) for thread, count in by_thread.most_common(8)]
    return "\n".join(lines) + "\n"


def flame_svg(stacks: Counter[tuple[str, ...]], title: str, width: int = 1600) -> str:
    """A flame graph (root at the bottom) of collapsed stacks; hover a box for its frame."""
    tree: dict[str, object] = {}
    counts: dict[int, int] = defaultdict(int)  # id(node dict) -> samples through it

    def child(node: dict[str, object], name: str) -> dict[str, object]:
        found = node.get(name)
        if found is None:
            found = node[name] = {}
        return found  # type: ignore[return-value]

    total = 0
    for stack, count in stacks.items():
        total += count
        node = tree
        for frame in stack:
            node = child(node, frame)
            counts[id(node)] += count
    if not total:
        return "<svg xmlns='http://www.w3.org/2000/svg'/>"
    row, top = 16, 40
    boxes: list[tuple[str, float, int, float, int]] = []  # name, x, depth, width, samples

    def walk(node: dict[str, object], x: float, depth: int) -> None:
        for name, sub in sorted(node.items()):
            assert isinstance(sub, dict)
            n = counts[id(sub)]
            w = width * n / total
            if w >= 0.5:
                boxes.append((name, x, depth, w, n))
                walk(sub, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    depth_max = max(depth for _name, _x, depth, _w, _n in boxes)
    height = top + (depth_max + 1) * row + 10
    rendered = [
        _box(name, x, height - 10 - (depth + 1) * row, w, n, total)  # root at the bottom
        for name, x, depth, w, n in boxes
    ]
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"font-family='monospace' font-size='10'>\n"
        f"<text x='4' y='20' font-size='14'>{html.escape(title)} — {total:,} GIL samples"
        "</text>\n" + "\n".join(rendered) + "\n</svg>\n"
    )


def _box(name: str, x: float, y: int, w: float, n: int, total: int) -> str:
    hue = (sum(name.encode()) * 7) % 60
    label = name if len(name) * 6 < w else name[: max(0, int(w / 6) - 1)]
    tip = html.escape(f"{name} — {n:,} samples, {100 * n / total:.2f} %")
    text = f"<text x='{x + 2:.1f}' y='{y + 11}'>{html.escape(label)}</text>" if w > 18 else ""
    return (
        f"<g><title>{tip}</title><rect x='{x:.1f}' y='{y}' width='{w:.1f}' height='15' "
        f"fill='hsl({hue},80%,60%)' stroke='white' stroke-width='0.3'/>{text}</g>"
    )


def _wait_for_load(server: ServerUnderTest, loadtest: subprocess.Popen[bytes]) -> bool:
    """True once the load generator has persisted its first changes."""
    first = server.metric("planpulse_loadgen_changes_total") or 0.0
    while loadtest.poll() is None:
        now = server.metric("planpulse_loadgen_changes_total") or 0.0
        if now > first:
            return True
        time.sleep(0.2)
    return False


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="profile", help="figures/profile-<name>.*")
    parser.add_argument("--rate", type=int, default=4000, help="events/s (×10 subscribers)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the load")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--subscriptions", type=int, default=1000)
    parser.add_argument("--samples-per-second", type=int, default=200)
    parser.add_argument("--server-arg", action="append", default=[])
    parser.add_argument("--out", type=Path, default=FIGURES)
    parser.add_argument(
        "--render-only", action="store_true", help="redo the SVG and table from profile-<name>.txt"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    raw = args.out / f"profile-{args.name}.txt"
    title = f"planpulse, {args.rate * args.subscriptions // args.projects:,} deliveries/s offered"
    if not args.render_only:
        code = record(args, raw)
        if code:
            return code
    stacks = read_collapsed(raw)
    meta = raw.with_suffix(".meta.json")
    possible = json.loads(meta.read_text())["possible_samples"] if meta.exists() else None
    (args.out / f"profile-{args.name}.svg").write_text(flame_svg(stacks, f"{args.name}: {title}"))
    table = stage_table(stacks, possible)
    load = raw.with_suffix(".load.txt")
    run = (
        f"The load test's report of the run:\n\n```\n{load.read_text()}```\n"
        if load.exists()
        else ""
    )
    (args.out / f"profile-{args.name}.md").write_text(f"# {args.name}: {title}\n\n{table}\n{run}")
    print(table)
    return 0


def record(args: argparse.Namespace, raw: Path) -> int:
    """Start the server, drive the load, write py-spy's collapsed stacks to `raw`."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed: pip install py-spy (in the dev extras)", file=sys.stderr)
        return 2
    server_args = argparse.Namespace(
        server="planpulse", database_url=None, server_arg=args.server_arg
    )
    server = ServerUnderTest.start(server_args)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        assert server.pid is not None
        loadtest = subprocess.Popen(
            loadtest_command(
                ROOT / "run.py",
                connections=args.connections,
                projects=args.projects,
                subscriptions=args.subscriptions,
                rate=args.rate,
                seconds=args.seconds,
                extra=["--url", server.url, "--server-pid", str(server.pid)],
            ),
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            text=True,
        )
        if not _wait_for_load(server, loadtest):
            print("the load never started", file=sys.stderr)
            return 1
        duration = max(1, int(args.seconds) - 2)
        meta = {"possible_samples": duration * args.samples_per_second, "seconds": duration}
        raw.with_suffix(".meta.json").write_text(json.dumps(meta) + "\n")
        subprocess.run(
            [
                py_spy,
                "record",
                "--gil",
                "--nonblocking",
                "-r",
                str(args.samples_per_second),
                "-d",
                str(duration),
                "-p",
                str(server.pid),
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        report, _ = loadtest.communicate()
        print(report)
        (raw.with_suffix(".load.txt")).write_text(report)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
