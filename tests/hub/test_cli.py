"""`ocn-edge hub` sub-commands, run as a person would type them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from edge.cli import main
from hub.database import open_store


def hub(tmp_path: Path, *args: str) -> int:
    return main(["hub", *args, "--state-dir", str(tmp_path)])


def test_token_create_prints_a_token_once_and_stores_only_its_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub(tmp_path, "token", "create", "--uses", "3", "--expires", "2d", "--fleet", "downtown", "--note", "batch A") == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ocnenrol_")
    assert token.encode() not in (tmp_path / "hub.db").read_bytes()

    async def stored() -> list:
        store = await open_store(f"sqlite:///{tmp_path / 'hub.db'}")
        try:
            return [(t.uses_left, t.fleet, t.note) for t in await store.tokens()]
        finally:
            await store.close()

    assert asyncio.run(stored()) == [(3, "downtown", "batch A")]


def test_token_list_shows_uses_left_but_never_the_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hub(tmp_path, "token", "create", "--approve")
    token = capsys.readouterr().out.strip()
    assert hub(tmp_path, "token", "list") == 0
    listing = capsys.readouterr().out
    assert "yes" in listing and token not in listing


def test_revoking_an_unknown_device_says_so_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub(tmp_path, "device", "revoke", "pole-9") == 1
    assert "no device 'pole-9' is enrolled" in capsys.readouterr().err


def test_device_list_as_json_is_empty_on_a_new_hub(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub(tmp_path, "device", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_desired_document_with_an_unknown_table_is_refused_naming_the_file_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "downtown.toml"
    doc.write_text('[confg.batch]\nspan = "1m"\n')
    assert hub(tmp_path, "desired", "set", "--fleet", "downtown", str(doc)) == 2
    err = capsys.readouterr().err
    assert str(doc) in err and "'confg'" in err and "'config'" in err


def test_a_desired_document_from_toml_is_set_for_a_fleet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "downtown.toml"
    doc.write_text('[config.batch]\nspan = "1m"\n')
    assert hub(tmp_path, "desired", "set", "--fleet", "downtown", "--allow-unknown", str(doc)) == 0
    assert "set for fleet 'downtown'" in capsys.readouterr().out


def test_a_bad_listen_address_is_refused_with_an_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub(tmp_path, "--listen", "localhost") == 2
    assert "expected HOST:PORT, e.g. 127.0.0.1:8443" in capsys.readouterr().err


def test_a_bad_duration_names_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        hub(tmp_path, "token", "create", "--expires", "soon")
    assert "--expires 'soon': expected a number and a unit, like 30s, 15m, 12h or 7d" in capsys.readouterr().err


def test_a_login_link_is_printed_for_the_given_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert hub(tmp_path, "login-link", "--url", "https://hub.city.example") == 0
    assert capsys.readouterr().out.startswith("https://hub.city.example/login/")
