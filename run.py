"""planpulse: the one entry point.

    python run.py [serve]   the service (WebSocket GraphQL + HTTP) on 127.0.0.1:8765
    python run.py serve --processes N --database-url postgresql+psycopg://… --bus-url redis://…
                            N gateway processes on one port (all the cores)
    python run.py worker    executors only, fed by the work queue (PostgreSQL + Redis bus)
    python run.py --help    every command and flag

Each process is built by gateway/app.py (the composition root) for one deployment mode:
embedded (the default), gateway (with --bus-url) or worker.

Every flag of `serve` also reads an environment variable: --port reads PLANPULSE_PORT,
--database-url reads PLANPULSE_DATABASE_URL, and so on.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("planpulse")


def env_default(name: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(f"PLANPULSE_{name}")
    if raw is None:
        return default
    try:
        return cast(raw)
    except ValueError:
        sys.exit(f"PLANPULSE_{name}={raw!r} is not a valid {cast.__name__}")


def env_flag(name: str) -> bool:
    return os.environ.get(f"PLANPULSE_{name}", "").lower() in ("1", "true", "yes", "on")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from actors.state import DEFAULT_RETENTION

    parser.add_argument("--host", default=env_default("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=env_default("PORT", 8765, int))
    add_database_url(parser)
    add_bus_url(parser)
    parser.add_argument(
        "--init-timeout",
        type=float,
        default=env_default("INIT_TIMEOUT", 3.0, float),
        help="seconds a client has to send connection_init (closed with 4408 after)",
    )
    parser.add_argument(
        "--legacy-keepalive",
        type=float,
        default=env_default("LEGACY_KEEPALIVE", 10.0, float),
        help="seconds between `ka` messages to legacy graphql-ws clients (0: none; their "
        "client gives up after 30 s without one)",
    )
    parser.add_argument(
        "--retention",
        type=int,
        default=env_default("RETENTION", DEFAULT_RETENTION, int),
        help="events kept per project in the event log (older ones cannot be resumed from)",
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=env_default("IDLE_SECONDS", 30.0, float),
        help="a project actor with no subscriber and no traffic this long is stopped",
    )
    parser.add_argument(
        "--actor-threads",
        type=int,
        default=env_default("ACTOR_THREADS", 4, int),
        help="threads shared by all project actors (actors/runtime.py)",
    )
    parser.add_argument(
        "--mode",
        choices=("embedded", "gateway"),
        default=env_default("MODE", None),
        help="embedded: one process, in-process bus; gateway: shares projects with other "
        "processes over --bus-url (default: gateway with --bus-url, embedded without)",
    )
    parser.add_argument(
        "--no-executors",
        action="store_true",
        default=env_flag("NO_EXECUTORS"),
        help="run a gateway only: executions are left to `run.py worker` processes",
    )
    parser.add_argument(
        "--enable-loadgen",
        action="store_true",
        default=env_flag("ENABLE_LOADGEN"),
        help="add the prepareLoad/startLoad mutations (admin only when auth is on)",
    )
    parser.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=env_default("AUTH", None, _parse_bool),
        help="require a token in connection_init (default: on unless --host is loopback)",
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=env_default("ALLOWED_ORIGINS", [], lambda v: [o for o in v.split(",") if o]),
        help="a browser Origin allowed besides the page's own (repeatable)",
    )
    add_log_level(parser)


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default=env_default("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING"
    )


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def add_database_url(parser: argparse.ArgumentParser) -> None:
    from storage.db import DEFAULT_DATABASE_URL, DEFAULT_DATABASE_WAIT

    parser.add_argument(
        "--database-url",
        default=env_default("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="SQLAlchemy URL: sqlite:///file.db (default) or postgresql+psycopg://...",
    )
    parser.add_argument(
        "--database-wait",
        type=float,
        default=env_default("DATABASE_WAIT", DEFAULT_DATABASE_WAIT, float),
        metavar="SECONDS",
        help="at start, wait this long for a database that is not reachable yet "
        f"(default {DEFAULT_DATABASE_WAIT:.0f}; 0: fail at once)",
    )


def add_bus_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bus-url",
        default=env_default("BUS_URL", None),
        help="redis://host:6379/0[?prefix=name] to share projects between gateway and "
        "worker processes (default: in-process, one process)",
    )


def add_worker_command(commands: Any) -> None:
    from actors.state import DEFAULT_RETENTION

    worker = commands.add_parser(
        "worker", help="run executors only, taking work from the queue (no gateway)"
    )
    add_database_url(worker)
    add_bus_url(worker)
    worker.add_argument(
        "--workers",
        type=int,
        default=env_default("WORKERS", 2, int),
        help="executor actors of each kind; up to 2×N requests are in hand at once",
    )
    worker.add_argument(
        "--retention",
        type=int,
        default=env_default("RETENTION", DEFAULT_RETENTION, int),
        help="events kept per project in the event log (as the gateways' --retention)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=env_default("GRACE", 30.0, float),
        help="on SIGTERM, seconds to finish the requests in hand before giving them back",
    )
    add_log_level(worker)
    worker.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from actors.worker import run_worker
    from gateway.app import WorkerConfig, build_worker, hooks_from_test_env

    config = WorkerConfig(
        database_url=args.database_url,
        bus_url=args.bus_url,
        workers=args.workers,
        retention=args.retention,
        grace=args.grace,
        database_wait=args.database_wait,
    )
    try:
        worker = build_worker(config, **hooks_from_test_env())
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run_worker(worker)


def app_config(args: argparse.Namespace) -> Any:
    from gateway.app import AppConfig
    from gateway.server import GatewayConfig

    return AppConfig(
        database_url=args.database_url,
        executors=not args.no_executors,
        retention=args.retention,
        idle_seconds=args.idle_seconds,
        actor_threads=args.actor_threads,
        enable_loadgen=args.enable_loadgen,
        bus_url=args.bus_url,
        mode=args.mode,
        processes=getattr(args, "processes", 1),
        database_wait=args.database_wait,
        gateway=GatewayConfig(
            host=args.host,
            port=args.port,
            init_timeout=args.init_timeout,
            legacy_keepalive=args.legacy_keepalive or None,
            auth=args.auth,
            allowed_origins=args.allowed_origin,
        ),
    )


async def start_or_explain(factory: Callable[..., Any], config: Any) -> Any:
    """Build and start the app; a bad flag or an unreachable server ends the process with
    one sentence (what is wrong, from the library's own message), not a traceback."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    from storage.db import DatabaseUnavailable

    app = None
    try:
        app = factory(config)
        await app.start()
    except (ValueError, ArgumentError, OperationalError, OSError, DatabaseUnavailable) as error:
        if app is not None:
            await app.stop()  # its executor threads would keep the process alive
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise SystemExit(f"error: planpulse cannot start: {first_line}") from None
    return app


async def serve_until_signalled(config: Any, on_ready: Callable[[], None] | None = None) -> None:
    from gateway import collector
    from gateway.app import App, hooks_from_test_env

    threshold = env_default("GC_THRESHOLD", collector.SERVING_THRESHOLD, collector.gc_threshold)
    before_node = hooks_from_test_env().get("before_node")  # a test's pause, else None
    app = await start_or_explain(lambda c: App(c, before_node=before_node), config)
    collector.settle(threshold)
    if on_ready is not None:
        on_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: closing connections with 1001")
    await app.stop()
    log.info("stopped")


# The event loop releases the GIL at every socket syscall and must take it back from the
# actor and executor threads; with CPython's default 5 ms switch interval each
# re-acquisition can wait up to 5 ms (a convoy), while a very short interval spends the
# CPU on forced switches. Measured with `run.py loadtest --connections 1000 --projects 100
# --seconds 8` on the final write path (one run each, bench/README.md): at 6,000 events/s
# p99 1,830 ms at 0.1 ms, 387 ms at 1 ms, 613 ms at 5 ms; at 1,000 events/s p99 137 ms at
# 0.1 ms, 18 ms at 1 ms.
DEFAULT_SWITCH_INTERVAL = 0.001


def cmd_serve(args: argparse.Namespace) -> int:
    sys.setswitchinterval(env_default("SWITCH_INTERVAL", DEFAULT_SWITCH_INTERVAL, float))
    config = app_config(args)
    if config.processes == 1:
        asyncio.run(serve_until_signalled(config))
        return 0
    return serve_processes(config)


def serve_processes(config: Any) -> int:
    """`serve --processes N`: the deployment is checked here, once, before any child starts
    (gateway/supervisor.py starts, watches and stops them)."""
    from sqlalchemy.exc import ArgumentError

    from gateway.supervisor import Supervisor, reserve_port
    from storage.db import DatabaseUnavailable

    try:
        deployment = config.deployment()
        reserved = reserve_port(config.gateway.host, config.gateway.port)
    except (ValueError, ArgumentError, OSError, DatabaseUnavailable) as error:
        raise SystemExit(f"error: planpulse cannot start: {error}") from None
    config.gateway.port = reserved.getsockname()[1]
    config.gateway.reuse_port = True
    log.info(
        "%d gateway processes on ws://%s:%d/graphql (mode %s)",
        config.processes,
        config.gateway.host,
        config.gateway.port,
        deployment.describe(),
    )

    def child(_index: int, ready: Callable[[], None]) -> int:
        try:
            asyncio.run(serve_until_signalled(config, on_ready=ready))
        except SystemExit as error:  # start_or_explain's one sentence
            if error.code not in (None, 0):
                print(error.code, file=sys.stderr)
                return 1
        return 0

    try:
        return Supervisor(child, config.processes).run()
    finally:
        reserved.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)  # the demo's own table is the output
    try:
        return asyncio.run(run_demo(app_config(args), keep_serving=not args.exit))
    except KeyboardInterrupt:
        return 0


def cmd_token(args: argparse.Namespace) -> int:
    from storage import payloads, queries, tokens
    from storage.db import open_database

    db = open_database(args.database_url, wait=args.database_wait)
    try:
        if args.action == "create":
            with db.write() as s:
                token, raw = tokens.create_token(
                    s, project_ids=args.project or [], admin=args.admin, name=args.name
                )
                scope = "admin" if token.admin else f"projects {token.project_ids}"
            print(raw)
            print(f"token {token.id} ({scope}); shown once, stored hashed", file=sys.stderr)
        elif args.action == "list":
            with db.read() as s:
                print(f"{'id':>4}  {'scope':<24}  {'name':<20}  created")
                for t in tokens.list_tokens(s):
                    scope = "admin" if t.admin else ",".join(map(str, t.project_ids))
                    print(f"{t.id:>4}  {scope:<24}  {t.name:<20}  {payloads.rfc3339(t.created_at)}")
        else:
            with db.write() as s:
                if not tokens.revoke_token(s, args.id):
                    print(f"no token with id {args.id}", file=sys.stderr)
                    return 1
    except (queries.InvalidInput, queries.NotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        db.dispose()
    return 0


def add_token_command(commands: Any) -> None:
    token = commands.add_parser("token", help="create, list or revoke API tokens")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token (shown once)")
    create.add_argument("--project", type=int, action="append", help="project id (repeatable)")
    create.add_argument("--admin", action="store_true", help="every project, and loadgen")
    create.add_argument("--name", default="", help="a note to recognise it by")
    actions.add_parser("list", help="list tokens (never their values)")
    revoke = actions.add_parser("revoke", help="delete a token")
    revoke.add_argument("id", type=int)
    for sub in (create, actions.choices["list"], revoke):
        add_database_url(sub)
        add_log_level(sub)
    token.set_defaults(func=cmd_token)


def add_loadtest_command(commands: Any) -> None:
    from bench.loadtest import add_arguments

    loadtest = commands.add_parser(
        "loadtest",
        help="subscribers under a synthetic load: deliveries/s, latency, losses (bench/)",
    )
    add_arguments(loadtest)
    loadtest.set_defaults(func=cmd_loadtest)


def cmd_loadtest(args: argparse.Namespace) -> int:
    from bench.loadtest import main as loadtest_main

    return loadtest_main(args)


def add_faults_command(commands: Any) -> None:
    from bench.faults import add_arguments

    faults = commands.add_parser(
        "faults",
        help="the fault suite: kill the database, Redis, a worker, a gateway under traffic",
    )
    add_arguments(faults)
    faults.set_defaults(func=cmd_faults)


def cmd_faults(args: argparse.Namespace) -> int:
    from bench.faults import main as faults_main

    return faults_main(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the service (the default)")
    add_serve_arguments(serve)
    serve.add_argument(
        "--processes",
        type=int,
        default=env_default("PROCESSES", 1, int),
        help="gateway processes on one port (SO_REUSEPORT), to use several cores; above 1 "
        "needs --bus-url redis://… and a PostgreSQL --database-url",
    )
    serve.set_defaults(func=cmd_serve)
    add_token_command(commands)
    demo = commands.add_parser(
        "demo", help="load the sample service map into a new project, run it, watch it"
    )
    add_serve_arguments(demo)
    demo.add_argument("--exit", action="store_true", help="stop after the run")
    demo.set_defaults(func=cmd_demo)
    add_worker_command(commands)
    add_loadtest_command(commands)
    add_faults_command(commands)

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from storage.db import DatabaseUnavailable
    from storage.migrate import SchemaUpgradeError

    try:
        return args.func(args)
    except (SchemaUpgradeError, DatabaseUnavailable) as error:  # one sentence, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
