"""The hub's MQTT side reads the desired documents of every device it serves in one query a second (Store.desired_documents):
the same documents, by (scope, name), as one read each, on both engines."""

from __future__ import annotations

import pytest

from hub.database import open_store
from tests.hub.conftest import drop_schema


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_every_desired_document_is_read_at_once_as_each_reads_alone(engine, tmp_path, request):
    if engine == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path}/hub.db", None
    else:
        url, dsn, schema = request.getfixturevalue("postgres_url")
        cleanup = (dsn, schema)
    store = await open_store(url)
    try:
        assert await store.desired_documents() == {}
        await store.set_desired("fleet", "street", {"config": {"batch": {"span": "1m"}}}, now_ms=1, actor="cli:test")
        await store.set_desired("device", "pole-0042", {"config": {"batch": {"span": "5s"}}}, now_ms=2, actor="cli:test")
        await store.set_desired("device", "pole-0043", {"config": {"batch": {"span": "5s"}}}, now_ms=3, actor="cli:test")
        await store.set_desired("device", "pole-0043", None, now_ms=4, actor="cli:test")
        found = await store.desired_documents()
        assert found == {key: await store.desired(*key) for key in (("fleet", "street"), ("device", "pole-0042"))}
        assert found[("device", "pole-0042")] == ({"config": {"batch": {"span": "5s"}}}, 2)
    finally:
        await store.close()
        if cleanup is not None:
            await drop_schema(*cleanup)
