"""planpulse: the one entry point.

    python run.py [serve]   the service (WebSocket GraphQL + HTTP) on 127.0.0.1:8765
    python run.py --help    every command and flag

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
    from storage.db import DEFAULT_DATABASE_URL

    parser.add_argument("--host", default=env_default("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=env_default("PORT", 8765, int))
    parser.add_argument(
        "--database-url",
        default=env_default("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="SQLAlchemy URL: sqlite:///file.db (default) or postgresql+psycopg://...",
    )
    parser.add_argument(
        "--init-timeout",
        type=float,
        default=env_default("INIT_TIMEOUT", 3.0, float),
        help="seconds a client has to send connection_init (closed with 4408 after)",
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
        default=env_default("IDLE_SECONDS", 60.0, float),
        help="a project actor with no subscriber and no traffic this long is stopped",
    )
    parser.add_argument(
        "--no-executors",
        action="store_true",
        default=env_flag("NO_EXECUTORS"),
        help="run a gateway only: executions are left to `run.py worker` processes",
    )
    parser.add_argument(
        "--log-level", default=env_default("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING"
    )


def app_config(args: argparse.Namespace) -> Any:
    from gateway.app import AppConfig
    from gateway.server import GatewayConfig

    return AppConfig(
        database_url=args.database_url,
        executors=not args.no_executors,
        retention=args.retention,
        idle_seconds=args.idle_seconds,
        gateway=GatewayConfig(host=args.host, port=args.port, init_timeout=args.init_timeout),
    )


async def serve_until_signalled(config: Any) -> None:
    from gateway.app import App

    app = App(config)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: closing connections with 1001")
    await app.stop()
    log.info("stopped")


def cmd_serve(args: argparse.Namespace) -> int:
    asyncio.run(serve_until_signalled(app_config(args)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the service (the default)")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
