"""A throwaway PostgreSQL database per benchmark run (bench/consistency.py, overload.py,
processes.py): made on the admin URL's server, dropped after, so runs never share state."""

from __future__ import annotations

import uuid


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def fresh_database(admin_url: str, prefix: str) -> tuple[str, str]:
    """A new database on `admin_url`'s server: (its SQLAlchemy URL, its name)."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _libpq(admin_url).rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{name}", name


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
