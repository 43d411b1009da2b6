from __future__ import annotations

from hilsim.pytest_plugin import hilsim_run
from tests.hub.conftest import db_url, postgres_url
from tests.mqtt.conftest import broker, broker_dir

# Fixtures of hil-sim, of the hub's two engines and of a real Mosquitto, offered to these tests by name.
__all__ = ["broker", "broker_dir", "db_url", "hilsim_run", "postgres_url"]
