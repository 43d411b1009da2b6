"""Fixtures for the hub tests: a store on each engine, keys, sealed batches and a running hub."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hub.app import RunningHub, run_hub
from hub.database import open_store
from hub.store import Store
from tests.helpers.tools import require_postgres
from tests.hub.gateways import SimGateway, enrol


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def postgres_url() -> tuple[str, str, str]:
    """A PostgreSQL URL with a fresh schema of its own: (url, dsn, schema)."""
    dsn = require_postgres()
    schema = f"hub_test_{secrets.token_hex(6)}"
    return f"{dsn}?schema={schema}", dsn, schema


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The same tests run on SQLite and on the machine's PostgreSQL (fresh schema, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
        return
    url, dsn, schema = request.getfixturevalue("postgres_url")
    try:
        yield url
    finally:
        await drop_schema(dsn, schema)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    opened = await open_store(db_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def running_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub on SQLite, listening on an ephemeral loopback port."""
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gateway(running_hub: RunningHub, http: aiohttp.ClientSession) -> SimGateway:
    """An enrolled, active gateway."""
    gw = SimGateway("pole-0042")
    await enrol(http, running_hub.url, gw, await running_hub.create_token())
    return gw
