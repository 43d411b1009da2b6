"""The shipped systemd unit is valid and runs the gateway the way the runtime expects (Type=notify + watchdog)."""

import configparser
import subprocess
import sys
from pathlib import Path

from tests.helpers.tools import require_tool

UNIT = Path(__file__).resolve().parents[2] / "images" / "systemd" / "ocn-edge.service"


def _service_section() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT)
    return dict(parser["Service"])


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require_tool("systemd-analyze", package="systemd")
    ocn_edge = Path(sys.executable).with_name("ocn-edge")
    unit = tmp_path / "ocn-edge.service"
    unit.write_text(UNIT.read_text().replace("/opt/ocn-edge/bin/ocn-edge", str(ocn_edge)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ocn-edge.service" not in result.stderr, result.stderr


def test_unit_uses_notify_and_a_watchdog_the_gateway_pings():
    service = _service_section()
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) >= 10
    assert service["ExecStart"].endswith("ocn-edge run /etc/ocn-edge/gateway.toml")
    assert "check" in service["ExecStartPre"], "a broken config fails before the service starts, with the reason"
    assert service["KillSignal"] == "SIGTERM", "SIGTERM is what makes the gateway flush memory into the spool"
