"""`ocn-edge run` loads what a gateway needs and nothing it does not: the hub, the simulator and optional stacks stay out.

The gateway's start-up time and resident memory are targets (issue 17, measured by
bench/gateway_load.py): every module imported at start is paid for at every boot and restart
and stays resident for months.  This runs the real command, `ocn-edge run` with a gateway
that has a device, a hub to sync with and its local API on (the shipped default), under
``python -X importtime``, lets it start, stops it with SIGTERM and reads which modules it
imported.  Not timed: it checks names only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from edge.protocol.keys import write_keypair

ROOT = Path(__file__).resolve().parents[2]

# Imported only where used: the hub and the simulator are other programs; jinja2 renders the local
# pages when someone opens them; prometheus_client answers a scrape; aiomqtt is for a broker the
# config names; x509 checks a CA a desired document names; the other commands' modules are other commands.
# The local API runs on aiohttp's low-level server, not aiohttp.web's application and router (~1 MiB resident);
# drivers and the notice's words are found by reading files, not through importlib.metadata or importlib.resources
# (with zipfile, csv and the rest behind them: ~0.8 MiB).  edge.protocol hands out its parts when asked (PEP 562):
# the SenML view is for the hub and `ocn-edge oxp`.
NOT_AT_START = ("hub", "hilsim", "asyncpg", "jinja2", "prometheus_client", "aiomqtt", "edge.transport.mqtt", "cryptography.x509",
                "edge.commands.check", "edge.commands.drivers", "edge.commands.image", "edge.commands.release", "edge.demo",
                "aiohttp.web", "aiohttp.web_app", "aiohttp.web_runner", "aiohttp.web_urldispatcher",
                "importlib.metadata", "importlib.resources", "zipfile", "csv", "edge.protocol.senml",
                # "did you mean" hints and writing key files: a gateway whose key exists needs neither to run
                "difflib", "cryptography.hazmat.primitives.serialization",
                # the hub's signature verifier (libsodium, hub.signatures): a gateway signs with cryptography only
                "nacl",
                # ~0.2 s of CPU (it loads the system's CA store at import): the uplink and the local API load it once
                # the gateway has its first reading (edge.util.loading)
                "aiohttp", "edge.localapi.app", "edge.localapi.view")
# What the same run must import, so a run that never started cannot pass.  -X importtime lists what import statements
# load, not a module importlib.import_module loads (the driver registry's way): the driver's own imports stand for it.
AT_START = ("edge.runtime", "edge.uplink", "edge.spool", "drivers.modbus.adapter", "edge.localapi.server")

POLICY = """\
[policy]
name = "guard rail"
version = "1"
organisation = "OCN"
contact = "it@ocn.example"
purpose = "Test"
retention = "None"
access = "None"

[channels."meter-*/*"]
rule = "keep"
purpose = "Energy use"
"""


# Nothing listens on port 9 of loopback: the bus and the hub are refused, and the gateway runs on regardless.
MODBUS_METER = """\
[[buses]]
name = "meters"
type = "modbus-tcp"
host = "127.0.0.1"
tcp_port = 9

[[devices]]
name = "meter-1"
driver = "modbus"
bus = "meters"
address = 1
[devices.options]
profile = "eastron-sdm120"
"""
# A particulate sensor on a USB serial adapter that is not plugged in: the gateway runs on and says so.  It keeps the
# name "meter-1" so that POLICY's one channel glob covers it as it covers the meter.
SERIAL_SENSOR = """\
[[buses]]
name = "usb-dust"
type = "serial"
port = "/dev/ttyOCN-not-plugged-in"
baudrate = 9600

[[devices]]
name = "meter-1"
driver = "sds011"
bus = "usb-dust"
poll_interval = "1m"
"""


def _config(tmp_path: Path, devices: str = MODBUS_METER) -> Path:
    (tmp_path / "policy.toml").write_text(POLICY)
    # The device key exists, as on a commissioned gateway (a first start writes it, and imports what writing takes).
    write_keypair(tmp_path / "state")
    config = tmp_path / "gateway.toml"
    config.write_text(f"""\
[gateway]
id = "import-check"
site = "test"
latitude = 0.0
longitude = 0.0
state_dir = "{tmp_path / 'state'}"
log_level = "info"

{devices}
[privacy]
policy = "policy.toml"

[uplink]
hub = "http://127.0.0.1:9/"
key = "{tmp_path / 'state' / 'device.key'}"

[local_api]
listen = "127.0.0.1:0"
""")
    return config


def _imported_by_run(tmp_path: Path, devices: str = MODBUS_METER) -> set[str]:
    """The modules `ocn-edge run` had imported when the gateway said it was running.

    Import times (stderr) and the log (stdout) share one pipe, so the order of the lines is the order of
    the events: what the gateway loads after it has started (aiohttp, after its first reading) is not counted.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hil-sim")])}
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-c", "import sys; from edge.cli import main; sys.exit(main())",
                             "run", str(_config(tmp_path, devices))], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:  # ends when the process does: a failed start cannot hang the test
            lines.append(line)
            if "gateway running" in line or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert any("gateway running" in line for line in lines), "".join(lines[-40:])
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", "".join(lines), re.M))


def test_ocn_edge_run_imports_neither_the_hub_nor_the_simulator_nor_optional_stacks(tmp_path: Path) -> None:
    imported = _imported_by_run(tmp_path)
    missing = [name for name in AT_START if name not in imported]
    assert not missing, f"the run did not import what a gateway needs: {missing}"
    unwanted = sorted(name for name in imported if any(name == bad or name.startswith(bad + ".") for bad in NOT_AT_START))
    assert not unwanted, f"`ocn-edge run` imported modules it does not need at start: {unwanted}"


def test_a_gateway_whose_devices_are_all_on_serial_lines_does_not_load_the_modbus_stack(tmp_path: Path) -> None:
    # pymodbus and our Modbus drivers are about 2 MiB resident and 20 ms of every start: an optional stack (issue 17).
    imported = _imported_by_run(tmp_path, SERIAL_SENSOR)
    assert {"edge.runtime", "drivers.serial.stream", "edge.localapi.server"} <= imported  # the sds011 driver's base
    assert not sorted(name for name in imported if name.startswith(("pymodbus", "drivers.modbus"))), imported


def _imported_by(*argv: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hil-sim")])}
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| +(\S+)$", done.stderr, re.M))


def test_ocn_edge_version_imports_no_command() -> None:
    imported = _imported_by("-c", "import sys; from edge.cli import main; sys.exit(main())", "--version")
    assert "edge.cli" in imported
    assert not sorted(name for name in imported if name.startswith(("edge.commands.", "hub", "hilsim", "aiohttp"))), imported


def test_the_local_api_access_token_module_loads_without_the_server() -> None:
    # What the installer and `ocn-edge status` read: the token file's helpers, not the server behind them.
    imported = _imported_by("-c", "import edge.localapi.access")
    assert "edge.localapi.access" in imported
    assert not sorted(name for name in imported if name.startswith(("aiohttp", "edge.localapi.app", "edge.localapi.server", "edge.commissioning")))


def test_the_protocol_and_the_config_schema_load_without_cryptographys_key_serialization_or_difflib(tmp_path: Path) -> None:
    # A gateway reads its device key and the pinned hub key once; edge.protocol.keys takes the Ed25519 PEM apart itself,
    # so cryptography's serialization module (its SSH, RSA, DSA, EC and legacy-cipher modules with it, ~0.8 MiB
    # resident) is not imported for it; difflib is imported only to suggest a key for a misspelt one (issue 17).
    from edge.protocol.keys import write_keypair

    private_path, public_path = write_keypair(tmp_path)
    code = f"""
import sys
import edge.schema
from edge.protocol import load_private_key, load_public_key, seal_batch, MAX_STATUS_BYTES
from edge.protocol import hubtrust
key = load_private_key({str(private_path)!r})
assert load_public_key({str(public_path)!r}).public_bytes_raw() == key.public_key().public_bytes_raw()
assert hubtrust.load_pem(hubtrust.pem(key), where="test").public_bytes_raw() == key.public_key().public_bytes_raw()
loaded = sorted(m for m in sys.modules if m.startswith(("cryptography.hazmat.primitives.serialization", "difflib", "edge.protocol.senml")))
assert edge.schema.closest("gatway", ["gateway"]) == "gateway"  # what difflib is for: imported there
print(loaded, "difflib" in sys.modules)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hil-sim")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[] True", done.stdout


def test_the_varint_column_writer_holds_no_table() -> None:
    # A table of the 16,384 one- and two-byte encodings once held 0.8 MiB for the gateway's life (issue 17).
    code = """
import tracemalloc
tracemalloc.start()
import edge.protocol.varint
kept = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, edge.protocol.varint.__file__)])
print(sum(stat.size for stat in kept.statistics("filename")))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) < 16 * 1024, f"edge.protocol.varint's own code keeps {int(done.stdout):,} bytes"
