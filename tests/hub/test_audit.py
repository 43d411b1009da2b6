"""The audit log: append-only in the database itself (both engines), shown on /audit, exported as CSV and JSON, and the CLI's part."""

from __future__ import annotations

import csv
import getpass
import io
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.cli import main
from edge.util.clock import now_ms
from hub.app import RunningHub, run_hub
from hub.audit import AuditEntry, csv_lines
from hub.auth import add_account
from hub.dashboard import AUDIT_PAGE
from hub.database import postgres_schema, sqlite_path
from hub.store import Store
from tests.helpers.tools import require_tool
from tests.hub.test_browser import ARTIFACTS, chromium

ADMIN = {"Authorization": "Bearer admin-secret"}


async def test_the_database_refuses_to_change_or_delete_an_audit_entry(store: Store) -> None:
    await store.set_desired("fleet", "street", {"config": {"batch": {"span": "1m"}}}, now_ms=1, actor="cli:test")
    if store.url.startswith("sqlite:"):
        conn = sqlite3.connect(sqlite_path(store.url))
        try:
            for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    conn.execute(statement)
        finally:
            conn.close()
    else:
        import asyncpg

        dsn, schema = postgres_schema(store.url)
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema or "public"})
        try:
            for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit", "TRUNCATE audit"):
                with pytest.raises(asyncpg.RaiseError, match="append-only"):
                    await conn.execute(statement)
        finally:
            await conn.close()
    assert [(e.actor, e.action, e.target) for e in await store.audit_log()] == [("cli:test", "desired.set", "fleet:street")]


async def test_audit_pages_go_newest_first_without_gaps(store: Store) -> None:
    for i in range(7):
        await store.append_audit(AuditEntry(at_ms=i, actor="hub", action="retention.run", target="retention", detail=str(i)))
    first = await store.audit_log(limit=3)
    second = await store.audit_log(limit=3, before_id=first[-1].id)
    third = await store.audit_log(limit=3, before_id=second[-1].id)
    assert [e.detail for e in first + second + third] == ["6", "5", "4", "3", "2", "1", "0"] and await store.audit_count() == 7


def test_a_csv_cell_a_spreadsheet_would_run_is_neutralised() -> None:
    entry = AuditEntry(id=1, at_ms=0, actor="cli:ops", action="token.create", target="token:1", detail="=HYPERLINK(\"http://x\")")
    rows = list(csv.reader(io.StringIO("".join(csv_lines([entry])))))
    assert rows[0][:5] == ["id", "time", "at_ms", "actor", "action"] and rows[1][-1] == "'=HYPERLINK(\"http://x\")"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        yield running


async def test_the_audit_api_exports_csv_and_json_and_the_page_shows_the_entries(hub: RunningHub) -> None:
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        async with http.put(f"{hub.url}/admin/api/desired/fleet/street", json={"config": {"batch": {"span": "1m"}}}) as resp:
            assert resp.status == 200
        async with http.post(f"{hub.url}/admin/api/tokens", json={"note": "King St"}) as resp:
            assert resp.status == 201
        async with http.get(f"{hub.url}/admin/api/audit?format=json") as resp:
            entries = (await resp.json())["entries"]
        async with http.get(f"{hub.url}/admin/api/audit?format=csv") as resp:
            assert resp.headers["Content-Type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(await resp.text())))
        async with http.get(f"{hub.url}/admin/api/audit?format=xml") as resp:
            assert resp.status == 400 and "format='xml'" in (await resp.json())["detail"]
        async with http.get(f"{hub.url}/audit", headers={"Accept": "text/html"}) as resp:
            page = await resp.text()
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [("admin", "token.create", "token:1"), ("admin", "desired.set", "fleet:street")]
    assert [r["action"] for r in rows] == ["token.create", "desired.set"] and rows[1]["after_sha256"] == entries[1]["after_sha256"]
    assert len(entries[1]["after_sha256"]) == 64 and entries[1]["before_sha256"] == ""
    assert "token.create" in page and "fleet:street" in page and "King St" in page


async def test_the_audit_page_needs_a_sign_in(hub: RunningHub) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/audit", headers={"Accept": "text/html"}, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/login?next=/audit"
        async with http.get(f"{hub.url}/admin/api/audit") as resp:
            assert resp.status == 401


def hub_cli(tmp_path: Path, *args: str) -> int:
    return main(["hub", *args, "--state-dir", str(tmp_path)])


def test_user_commands_manage_accounts_and_the_export_names_the_os_user(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub_cli(tmp_path, "user", "add", "olga", "--role", "operator") == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ocnuser_") and token.encode() not in (tmp_path / "hub.db").read_bytes()
    assert hub_cli(tmp_path, "user", "add", "olga", "--role", "viewer") == 2
    assert "exists already" in capsys.readouterr().err
    assert hub_cli(tmp_path, "user", "add", "pat", "--role", "privacy-oficer") == 2
    assert "'privacy-oficer': expected one or more of viewer, operator, privacy-officer, admin" in capsys.readouterr().err
    assert hub_cli(tmp_path, "user", "add", "admin", "--role", "viewer") == 2
    assert "reserved" in capsys.readouterr().err
    assert hub_cli(tmp_path, "user", "role", "olga", "operator,privacy-officer") == 0
    assert hub_cli(tmp_path, "login-link", "--user", "olga", "--url", "https://hub.city.example") == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("https://hub.city.example/login/")
    assert hub_cli(tmp_path, "user", "disable", "olga") == 0
    assert hub_cli(tmp_path, "login-link", "--user", "olga") == 2
    assert "is disabled" in capsys.readouterr().err
    assert hub_cli(tmp_path, "user", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0] | {"created_ms": 0, "updated_ms": 0} == {
        "name": "olga", "roles": ["operator", "privacy-officer"], "disabled": True, "created_ms": 0, "updated_ms": 0}
    assert hub_cli(tmp_path, "audit", "export", "--format", "json") == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    me = f"cli:{getpass.getuser()}"
    assert [(e["actor"], e["action"], e["target"]) for e in reversed(entries)] == [
        (me, "account.add", "account:olga"), (me, "account.roles", "account:olga"), (me, "account.login_link", "account:olga"),
        (me, "account.disable", "account:olga")]
    out = tmp_path / "audit.csv"
    assert hub_cli(tmp_path, "audit", "export", "--output", str(out)) == 0
    assert len(list(csv.DictReader(out.open()))) == 4


async def test_the_audit_page_renders_in_chromium_for_a_viewer(hub: RunningHub, tmp_path: Path) -> None:
    binary = require_tool("chromium")
    await add_account(hub.store, "vic", "viewer", actor="cli:test")
    for i in range(AUDIT_PAGE + 2):  # more than a page: the link to older entries shows
        await hub.store.set_desired("fleet", "street", {"config": {"batch": {"span": f"{i + 1}m"}}}, now_ms=now_ms(), actor="cli:ops")
    link = await hub.hub.admin.login_link(hub.url, next_path="/audit", account="vic")
    dom = await chromium(binary, tmp_path / "profile", "--dump-dom", link)
    rows = re.findall(r'<tr id="audit-(\d+)">', dom)
    assert len(rows) == AUDIT_PAGE and rows[0] == str(AUDIT_PAGE + 3)  # newest first: the sets after the account
    assert "desired.set" in dom and "fleet:street" in dom and "cli:ops" in dom and 'rel="next"' in dom
    assert '<span class="who">vic <span class="roles">(viewer)</span></span>' in dom  # who is signed in, in the header
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "hub-audit.png"
    await chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", await hub.hub.admin.login_link(hub.url, next_path="/audit", account="vic"))
    assert shot.stat().st_size > 10_000
