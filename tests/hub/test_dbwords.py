"""A failure of the hub's database is said in our words, from real failures of SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.soak.evidence import LIBRARY_WORDS
from hub.database import open_store
from hub.dbwords import database_problem
from hub.models import StoreError
from tests.helpers.tools import require_postgres


def test_sqlite_is_said_by_its_own_words_and_code(tmp_path: Path) -> None:
    path = tmp_path / "not.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        sqlite3.connect(path).execute("SELECT 1 FROM sqlite_master")
    assert database_problem(caught.value) == "SQLite: file is not a database (SQLITE_NOTADB)"


async def test_postgresql_refusing_and_not_listening_are_said_in_our_words() -> None:
    dsn = require_postgres()
    parts = urlsplit(dsn)
    with pytest.raises(StoreError) as caught:
        await open_store(parts._replace(netloc=f"no_such_role@{parts.hostname}:{parts.port or 5432}").geturl())
    assert str(caught.value).endswith(': cannot connect: PostgreSQL: role "no_such_role" does not exist'), caught.value
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as caught:
        await open_store(f"postgresql://postgres@127.0.0.1:{port}/test")
    assert str(caught.value).endswith(": cannot connect: cannot reach the database: connection refused (nothing listens there: is it running?)")
    assert not LIBRARY_WORDS.search(str(caught.value))


def test_what_is_none_of_these_keeps_its_class_name_for_the_bug_report() -> None:
    assert database_problem(KeyError("x")) == "KeyError: 'x'"
