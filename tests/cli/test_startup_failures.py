"""`ocn-edge run` that cannot start says why in one line naming the path and the fix: no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.starter import DEMO_POLICY


def gateway_toml(site: Path, *, state_dir: str = "state", policy: str = "policy.toml", key: str = "",
                 listen: str = "127.0.0.1:0") -> Path:
    config = site / "gateway.toml"
    config.write_text(f"""\
[gateway]
id = "pole-0042"
state_dir = "{state_dir}"

[privacy]
policy = "{policy}"

[uplink]
hub = ""
key = "{key}"

[local_api]
enabled = true
listen = "{listen}"
""", encoding="utf-8")
    return config


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(DEMO_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path


def run(config: Path) -> tuple[int, list[str]]:
    """Exit status and the lines on stderr that are not log records."""
    done = subprocess.run([sys.executable, "-m", "edge.cli", "run", str(config)], capture_output=True, text=True,
                          timeout=60, cwd=config.parent)
    assert "Traceback" not in done.stderr + done.stdout
    return done.returncode, [line for line in done.stderr.splitlines() if not line.startswith(("ts=", "<"))]


def test_a_state_directory_that_cannot_be_created_is_one_line(site: Path) -> None:
    (site / "afile").write_text("in the way\n")
    status, lines = run(gateway_toml(site, state_dir=str(site / "afile" / "state")))

    assert status == 2
    assert lines == [
        f'ocn-edge run: gateway.state_dir = "{site / "afile" / "state"}": cannot create it (Not a directory); '
        f"create it for the gateway's user (sudo install -d -o ocn-edge -m 0700 {site / 'afile' / 'state'}) "
        "or set state_dir to a directory it may write"]


def test_a_missing_policy_is_one_line_pointing_to_init(site: Path) -> None:
    status, lines = run(gateway_toml(site, policy="city-policy.toml"))

    assert status == 2
    [line] = lines
    assert line.startswith(f'{site / "gateway.toml"}: privacy.policy = "city-policy.toml": no such file')
    assert "`ocn-edge init DIR` writes a starter policy.toml" in line


def test_a_key_that_is_not_a_key_is_one_line_naming_it(site: Path) -> None:
    (site / "device.key").write_text("not a key\n")
    status, lines = run(gateway_toml(site, key="device.key"))

    assert status == 2
    [line] = lines
    assert line.startswith(f"ocn-edge run: {site / 'device.key'}: ")
    assert "ocn-edge keygen" in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_a_local_api_port_in_use_is_one_line_naming_the_setting(site: Path, taken_port: int) -> None:
    status, lines = run(gateway_toml(site, listen=f"127.0.0.1:{taken_port}"))

    assert status == 2
    [line] = lines
    # Not asyncio's "error while attempting to bind on address ('127.0.0.1', N): address already in use".
    assert line == (f"ocn-edge run: local_api.listen = '127.0.0.1:{taken_port}': cannot listen there (the address is in use (another "
                    "program listens there; `ss -ltnp` names it)); change [local_api] listen or set enabled = false")


def test_a_hub_port_in_use_is_one_line_in_our_words(tmp_path: Path, taken_port: int) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "edge.cli", "hub", "--listen", f"127.0.0.1:{taken_port}", "--db",
                           f"sqlite:///{tmp_path / 'hub.db'}", "--state-dir", str(tmp_path / "hub"), "--log-level", "warning"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (f"ocn-edge hub: cannot listen on 127.0.0.1:{taken_port}: the address is in use "
                                                    "(another program listens there; `ss -ltnp` names it)")
