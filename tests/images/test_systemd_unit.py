"""The shipped systemd units are valid, hardened, and still allow what the programs need.

`systemd-analyze verify` checks every unit inside a root where the command they run
exists; `systemd-analyze security --offline=yes` rates the gateway and hub units at 2.5 or
below; and, because a low score alone could come from taking away something the gateway
needs, the unit files are read back and what each program needs is asserted to be there.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.tools import require_tool

UNITS = Path(__file__).resolve().parents[2] / "images" / "systemd"
GATEWAY, HUB, ENROL = "ocn-edge.service", "ocn-hub.service", "ocn-edge-enrol.service"
UPDATE_UNITS = ["ocn-edge-update.service", "ocn-edge-rollback.service"]  # verified in tests/update/test_units.py
MAX_EXPOSURE = 2.5
OCN_EDGE = "/opt/ocn-edge/current/bin/ocn-edge"


def _directives(unit: str) -> dict[str, list[str]]:
    """Every `Key=value` of the unit's [Service] and [Unit] sections, values of repeated keys in order."""
    found: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / unit).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section in ("[Unit]", "[Service]"):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def _words(directives: dict[str, list[str]], key: str) -> set[str]:
    return {word for value in directives.get(key, []) for word in value.split()}


def test_every_unit_is_listed_here():
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted([GATEWAY, HUB, ENROL, *UPDATE_UNITS])


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory) -> Path:
    """A root with systemd's own units, the A/B layout with an executable ocn-edge, and our units."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    slot = root / "opt/ocn-edge/a/bin"
    slot.mkdir(parents=True)
    (slot / "ocn-edge").write_text("#!/bin/sh\n")
    (slot / "ocn-edge").chmod(0o755)
    (root / "opt/ocn-edge/current").symlink_to("a")
    shutil.copytree(UNITS, root / "etc/systemd/system")
    return root


@pytest.mark.parametrize("unit", [GATEWAY, HUB, ENROL])
def test_unit_passes_systemd_analyze_verify(unit_root, unit):
    analyze = require_tool("systemd-analyze", package="systemd")
    result = subprocess.run([analyze, "verify", f"--root={unit_root}", unit], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert unit not in result.stderr, result.stderr


@pytest.mark.parametrize("unit", [GATEWAY, HUB])
def test_unit_exposure_is_at_most_2_5(unit):
    analyze = require_tool("systemd-analyze", package="systemd")
    result = subprocess.run([analyze, "security", "--offline=yes", str(UNITS / unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_gateway_runs_from_the_current_slot_as_a_notify_service_with_a_watchdog():
    service = _directives(GATEWAY)
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"], "the watchdog pings come from the gateway's main process"
    assert int(service["WatchdogSec"][0]) >= 10
    assert service["ExecStart"] == [f"{OCN_EDGE} run /etc/ocn-edge/gateway.toml"]
    assert service["ExecStartPre"] == [f"{OCN_EDGE} check --quiet /etc/ocn-edge/gateway.toml"], \
        "a broken config fails before the service starts, with the reason"
    assert service["KillSignal"] == ["SIGTERM"], "SIGTERM is what makes the gateway flush memory into the spool"


def test_gateway_still_allows_what_it_needs():
    service = _directives(GATEWAY)
    assert service["User"] == ["ocn-edge"] and "DynamicUser" not in service
    assert service["StateDirectory"] == ["ocn-edge"], "spool, device key and boot counter live in /var/lib/ocn-edge"
    assert service["ProtectSystem"] == ["strict"]
    assert "ReadOnlyPaths" not in service and "InaccessiblePaths" not in service
    # Serial sensors: the device list is closed, except the serial classes, read and write.
    assert service["DevicePolicy"] == ["closed"]
    assert "PrivateDevices" not in service or service["PrivateDevices"] == ["no"], "PrivateDevices hides /dev/tty*"
    allowed = dict(value.split() for value in service["DeviceAllow"])
    assert allowed == {"char-ttyUSB": "rw", "char-ttyACM": "rw", "char-ttyAMA": "rw", "char-ttyS": "rw"}
    # The hub and Modbus TCP over IPv4 and IPv6, the notify/watchdog socket over AF_UNIX.
    assert _words(service, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "PrivateNetwork" not in service and "IPAddressDeny" not in service
    assert service["CapabilityBoundingSet"] == [""]
    assert service["UMask"] == ["0077"]
    assert service["ProtectProc"] == ["invisible"]
    assert "@system-service" in _words(service, "SystemCallFilter")


def test_gateway_waits_for_the_clock_and_first_boot_enrolment():
    unit = _directives(GATEWAY)
    assert {"time-sync.target", "network-online.target", ENROL} <= _words(unit, "After")
    assert ENROL in _words(unit, "Wants"), "a refused enrolment must not stop the gateway (Wants, not Requires)"
    assert ENROL not in _words(unit, "Requires")
    assert "time-sync.target" not in _words(unit, "Wants"), "ordered after it only; systemd-time-wait-sync pulls it in"


def test_enrolment_runs_once_per_seeded_token():
    unit = _directives(ENROL)
    assert unit["Type"] == ["oneshot"]
    assert unit["ExecStart"] == [f"{OCN_EDGE} enrol --first-boot /etc/ocn-edge/gateway.toml"]
    assert unit["ConditionPathExists"] == ["/etc/ocn-edge/enrol-token"], "no token, nothing to do"
    assert unit["User"] == ["ocn-edge"] and unit["StateDirectory"] == ["ocn-edge"], "the device key is the gateway's"
    assert unit["ReadWritePaths"] == ["/etc/ocn-edge"], "the token is deleted there once accepted"
    assert {"time-sync.target", "network-online.target"} <= _words(unit, "After")
    assert GATEWAY in _words(unit, "Before")
    assert unit["TimeoutStartSec"] == ["infinity"], "the command gives up by itself after --retry-for"


def test_hub_still_allows_what_it_needs():
    service = _directives(HUB)
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert int(service["WatchdogSec"][0]) >= 10
    assert service["ExecStart"][0].startswith(f"{OCN_EDGE} hub --listen ${{OCN_HUB_LISTEN}}")
    assert service["User"] == ["ocn-hub"]
    assert service["StateDirectory"] == ["ocn-hub"], "hub.key and hub.db live in /var/lib/ocn-hub"
    assert "OCN_HUB_STATE_DIR=/var/lib/ocn-hub" in service["Environment"]
    assert _words(service, "RestrictAddressFamilies") == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "PrivateNetwork" not in service and "IPAddressDeny" not in service
    assert service["CapabilityBoundingSet"] == [""]
    assert service["UMask"] == ["0077"]
    assert service["ProtectSystem"] == ["strict"]
    assert "~@privileged @resources" in service["SystemCallFilter"]
    assert int(service["LimitNOFILE"][0]) >= 1024 + 128, \
        "--max-connections 1024 and the hub's own files fit, so the hub need not call setrlimit (in @resources)"
