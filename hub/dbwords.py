"""What went wrong with the hub's database, in our words: no driver's class name or Python's framing in the log.

asyncpg says ``ConnectionDoesNotExistError: connection was closed in the middle of operation`` or, connecting,
``[Errno 111] Connect call failed ('127.0.0.1', 5432)``; sqlite3 ``OperationalError: database is locked``.  An
operator reads what happened and what to check instead.  A message PostgreSQL itself sent (``role "x" does not
exist``, ``the database system is shutting down``) is the server's, about the operator's own database: it is
kept, said as PostgreSQL's.  An error that is none of these is a bug and keeps its class name, for the report.
"""

from __future__ import annotations

import sqlite3
import sys

from edge.util.linkwords import os_words
from hub.models import StoreError

__all__ = ["database_problem"]


def database_problem(exc: BaseException) -> str:
    """One line of our words for a failure of the database (connecting, or a query that met an outage)."""
    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        return f"SQLite: {exc}" + (f" ({name})" if name else "")
    asyncpg = sys.modules.get("asyncpg")  # loaded only by a hub on PostgreSQL
    if asyncpg is not None:
        if isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError):
            return "the connection to PostgreSQL was closed in the middle of a query (the server stopped or restarted?)"
        if isinstance(exc, asyncpg.exceptions.CannotConnectNowError):
            return "PostgreSQL is starting up or shutting down"
        if isinstance(exc, asyncpg.PostgresError):  # the server's own message
            return f"PostgreSQL: {exc}"
        if isinstance(exc, asyncpg.InterfaceError):
            return "the connection to PostgreSQL is not usable (closed, or in the middle of another operation)"
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    if isinstance(exc, OSError):
        return f"cannot reach the database: {os_words(exc)}"
    return f"{type(exc).__name__}: {exc}"[:300]
