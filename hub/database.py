"""Open the store a ``--db`` URL names: ``sqlite:///path.db`` or ``postgresql://user@host/db[?schema=s]``.

The one place that knows which engine a URL means; the engines take what it parsed.
"""

from __future__ import annotations

import sqlite3
from urllib.parse import parse_qs, urlsplit

from hub.engines.postgres import PostgresStore
from hub.engines.sqlite import SQLiteStore
from hub.models import StoreError
from hub.store import Store

__all__ = ["UNAVAILABLE", "open_store", "postgres_schema", "sqlite_path"]


def _unavailable_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.OperationalError, StoreError, ConnectionError]
    try:
        import asyncpg

        errors += [
            asyncpg.PostgresConnectionError,  # the connection broke
            asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError,  # server shutting down or restarting
            asyncpg.exceptions.InsufficientResourcesError,  # disk full, too many connections
        ]
    except ImportError:
        pass
    return tuple(errors)


# Errors that mean the database is out of reach (answered 503 with Retry-After), not that a request was wrong.
UNAVAILABLE = _unavailable_errors()


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL (SQLAlchemy's spelling)."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"--db {url!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        raise StoreError(f"--db {url!r}: expected a file path; the hub must keep what it acknowledges")
    return path


def postgres_schema(url: str) -> tuple[str, str | None]:
    """Split an optional ``?schema=NAME`` off a PostgreSQL URL (the rest goes to asyncpg as is)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", [None])[0]
    rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
    dsn = parts._replace(query=rest).geturl()
    if schema is not None and not schema.replace("_", "").isalnum():
        raise StoreError(f"--db {url!r}: schema {schema!r} must be letters, digits and '_'")
    return dsn, schema


async def open_store(url: str) -> Store:
    """Open (and migrate) the store a URL names: ``sqlite:///path.db`` or ``postgresql://user@host/db[?schema=s]``."""
    if url.startswith("sqlite:"):
        return await SQLiteStore.open(sqlite_path(url), url=url)
    if url.startswith(("postgresql:", "postgres:")):
        dsn, schema = postgres_schema(url)
        return await PostgresStore.open(dsn, schema=schema, url=url)
    raise StoreError(f"--db {url!r}: expected a sqlite:///path.db or postgresql://user@host/database URL")
