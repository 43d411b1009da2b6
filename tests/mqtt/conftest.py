"""A real Mosquitto for the MQTT tests: started on a free 127.0.0.1 port with its own config and dynamic-security file in tmp_path.

The broker's dynamic-security admin is the hub's user (``ocn-hub``), as docs/fleet.md sets a broker up; the hub makes
every other client.  Missing Mosquitto skips these tests, or fails them under OCN_REQUIRE_ALL=1.
"""

from __future__ import annotations

import asyncio
import getpass
import glob
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hub.mqtt import MqttSettings
from tests.helpers.tools import missing, require_postgres, require_tool

HUB_USER = "ocn-hub"
HUB_PASSWORD = "hub-secret-for-tests"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """One Mosquitto process on loopback; it can be killed and started again on the same port with the same state."""

    directory: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def hub_password_file(self) -> Path:
        return self.directory / "hub.password"

    def hub_settings(self, *, client_id: str = "") -> MqttSettings:
        return MqttSettings(f"mqtt://{HUB_USER}@127.0.0.1:{self.port}", client_id=client_id, password_file=str(self.hub_password_file))

    async def start(self) -> None:
        log = open(self.directory / "mosquitto.log", "ab")
        self.process = subprocess.Popen([require_tool("mosquitto"), "-c", str(self.directory / "mosquitto.conf")], stdout=log, stderr=log)
        log.close()
        async with asyncio.timeout(10):
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"mosquitto exited: {(self.directory / 'mosquitto.log').read_text()[-2000:]}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                return

    def kill(self) -> None:
        """SIGKILL: the broker dies without saving anything, as on a power cut."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def _dynsec_plugin() -> str:
    found = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
    if not found:
        missing("needs Mosquitto's dynamic-security plugin (apt-get install mosquitto)")
    return found[0]


@pytest.fixture
def postgres_url() -> tuple[str, str, str]:
    """A PostgreSQL URL with a fresh schema of its own, as tests/hub has it: (url, dsn, schema); the test drops the schema."""
    dsn = require_postgres()
    schema = f"mqtt_test_{secrets.token_hex(6)}"
    return f"{dsn}?schema={schema}", dsn, schema


@pytest.fixture
def broker_dir(tmp_path: Path) -> Iterator[Path]:
    require_tool("mosquitto")
    ctrl = require_tool("mosquitto_ctrl", package="mosquitto")
    directory = tmp_path / "broker"
    directory.mkdir()
    subprocess.run([ctrl, "dynsec", "init", str(directory / "dynsec.json"), HUB_USER, HUB_PASSWORD], check=True, capture_output=True)
    (directory / "hub.password").write_text(HUB_PASSWORD + "\n")
    yield directory


@pytest.fixture
async def broker(broker_dir: Path) -> AsyncIterator[Broker]:
    running = Broker(broker_dir)
    (broker_dir / "mosquitto.conf").write_text(
        f"listener {running.port} 127.0.0.1\n"
        # Run as root, Mosquitto would drop to user "mosquitto", who cannot read this test's files.
        f"user {getpass.getuser()}\n"
        "allow_anonymous false\n"
        f"plugin {_dynsec_plugin()}\n"
        f"plugin_opt_config_file {broker_dir / 'dynsec.json'}\n"
        "persistence true\n"
        f"persistence_location {broker_dir}/\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    os.chmod(broker_dir / "dynsec.json", 0o600)
    await running.start()
    try:
        yield running
    finally:
        running.stop()
