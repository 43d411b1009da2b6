"""`ocn-edge check` warns about what a valid config still gets wrong on a pole: exit 0, or 2 with --strict."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.starter import DEMO_POLICY
from hub.app import run_hub

POLICY_FOR_METERS = """\
[policy]
name = "Meters only"
version = "1"
organisation = "City IT"
contact = "privacy@city.example"
purpose = "Energy"

[channels."meter-*/*"]
rule = "keep"
purpose = "Energy"
"""


def config_text(port: str, *, hub: str = "", device: str = "pm-1") -> str:
    return f"""\
[gateway]
id = "pole-0042"
state_dir = "state"

[[buses]]
name = "usb-dust"
type = "serial"
port = "{port}"

[[devices]]
name = "{device}"
driver = "sds011"
bus = "usb-dust"

[privacy]
policy = "policy.toml"

[uplink]
hub = "{hub}"
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "policy.toml").write_text(DEMO_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def warnings_of(err: str) -> list[str]:
    return [line.removeprefix("warning: ") for line in err.splitlines() if line.startswith("warning: ")]


def test_a_port_that_does_not_exist_is_a_warning_not_a_problem(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "gateway.toml").write_text(config_text("/dev/ttyUSB7"))

    assert main(["check", "gateway.toml"]) == 0
    err = capsys.readouterr().err
    assert warnings_of(err) == [
        'gateway.toml: buses[0].port = "/dev/ttyUSB7": no such port on this machine; plug the adapter in, '
        "or find its name with `ocn-edge ports`"]
    assert err.splitlines()[-1] == "gateway.toml: valid (1 buses, 1 of 1 devices enabled, 1 warning)"


def test_strict_refuses_warnings_with_exit_2(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "gateway.toml").write_text(config_text("/dev/ttyUSB7"))

    assert main(["check", "--strict", "--quiet", "gateway.toml"]) == 2
    err = capsys.readouterr().err
    assert len(warnings_of(err)) == 1
    assert err.splitlines()[-1] == "gateway.toml: 1 warning; --strict refuses them"


def test_quiet_keeps_quiet_about_warnings(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "gateway.toml").write_text(config_text("/dev/ttyUSB7"))

    assert main(["check", "--quiet", "gateway.toml"]) == 0
    assert capsys.readouterr() == ("", "")


def test_a_port_that_exists_draws_no_warning(site: Path, pty_port: str, capsys: pytest.CaptureFixture[str]) -> None:
    (site / "gateway.toml").write_text(config_text(pty_port))

    assert main(["check", "--strict", "gateway.toml"]) == 0
    assert warnings_of(capsys.readouterr().err) == []


def test_the_placeholders_init_writes_are_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path)]) == 0
    capsys.readouterr()

    assert main(["check", str(tmp_path / "gateway.toml")]) == 0
    warnings = warnings_of(capsys.readouterr().err)
    assert ('gateway.toml: buses[0].port = "/dev/ttyUSB0": the placeholder from `ocn-edge init`; put the adapter\'s '
            "stable name here (/dev/serial/by-id/..., listed by `ocn-edge ports`)") in warnings
    assert ('gateway.toml: uplink.hub = "https://hub.example.org/": the placeholder from `ocn-edge init`; put your '
            'city\'s hub URL here, or "" to keep batches on the gateway') in warnings


def test_a_device_the_policy_releases_nothing_of_is_warned_about(site: Path, pty_port: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (site / "policy.toml").write_text(POLICY_FOR_METERS)
    (site / "gateway.toml").write_text(config_text(pty_port))

    assert main(["check", "gateway.toml"]) == 0
    assert warnings_of(capsys.readouterr().err) == [
        'gateway.toml: devices[0] "pm-1": the policy (policy.toml) releases none of its channels (pm-1/pm2_5, '
        'pm-1/pm10), so everything it reads is dropped; add a rule for "pm-1/*" to the policy, or set enabled = false']


def test_a_missing_policy_file_points_to_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gateway.toml").write_text(config_text("/dev/ttyUSB7"))

    assert main(["check", "gateway.toml"]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith('gateway.toml: privacy.policy = "policy.toml": no such file')
    assert first.endswith("; `ocn-edge init DIR` writes a starter policy.toml (the demo policy) to begin from, "
                          "or copy your city's policy there")


def test_online_says_when_the_hubs_name_does_not_resolve(site: Path, pty_port: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (site / "gateway.toml").write_text(config_text(pty_port, hub="https://hub.city.invalid/"))

    assert main(["check", "gateway.toml"]) == 0  # offline: the name is not looked up
    assert warnings_of(capsys.readouterr().err) == []
    assert main(["check", "--online", "gateway.toml"]) == 0
    [warning] = warnings_of(capsys.readouterr().err)
    assert warning.startswith('gateway.toml: uplink.hub = "https://hub.city.invalid/": hub.city.invalid does not '
                              "resolve (")


async def test_online_asks_the_hub_for_its_key(site: Path, pty_port: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret") as hub:
        hub_url = hub.url.rstrip("/")
        (site / "gateway.toml").write_text(config_text(pty_port, hub=hub_url + "/"))
        # In a thread: check's request is answered by the hub on this test's event loop.
        assert await asyncio.to_thread(main, ["check", "--online", "--strict", "gateway.toml"]) == 0
        assert warnings_of(capsys.readouterr().err) == []

        (site / "gateway.toml").write_text(config_text(pty_port, hub=hub_url + "/not-the-hub/"))
        assert await asyncio.to_thread(main, ["check", "--online", "gateway.toml"]) == 0
        [warning] = warnings_of(capsys.readouterr().err)
    assert warning.startswith(f'gateway.toml: uplink.hub = "{hub_url}/not-the-hub/": '
                              f"{hub_url}/not-the-hub/oxp/v1/hub-key answered 404 ")
    assert warning.endswith("; is this the hub's address?")


def test_sim_write_config_writes_a_pair_that_passes_strict_check_with_the_local_api_on(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    sim = subprocess.Popen([sys.executable, "-m", "edge.cli", "sim", "default", "--write-config", str(config),
                            "--run-dir", str(tmp_path / "run"), "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        assert sim.stdout.readline(), "the simulator stopped before printing its endpoints"
        checked = subprocess.run([sys.executable, "-m", "edge.cli", "check", "--strict", str(config)],
                                 capture_output=True, text=True, timeout=60)
    finally:
        sim.terminate()
        sim.communicate(timeout=60)

    assert checked.returncode == 0, checked.stderr
    assert "warning" not in checked.stderr
    assert (tmp_path / "policy.toml").exists()
    assert '[local_api]\nenabled = true\nlisten = "127.0.0.1:8080"' in checked.stdout
