"""Choosing MQTT in gateway.toml and on the hub's command line: one clear error naming the file or option, the field and the value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import ConfigError, parse_config
from edge.transport import UplinkError, open_transport
from edge.transport.mqtt import MqttTransport
from hub.mqtt import MqttSettings


def config(tmp_path: Path, uplink: str) -> str:
    (tmp_path / "policy.toml").write_text("")
    return f'[gateway]\nid = "pole-0042"\nstate_dir = "{tmp_path / "state"}"\n[privacy]\npolicy = "policy.toml"\n[uplink]\n{uplink}\n'


def problems(tmp_path: Path, uplink: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(tmp_path, uplink), path=tmp_path / "gateway.toml")
    return caught.value.problems


def test_a_broker_picks_the_mqtt_transport_and_the_password_beside_the_device_key(tmp_path):
    cfg = parse_config(config(tmp_path, 'hub = "https://hub.example.org/"\nbroker = "mqtts://broker.example.org:8883"'), path=tmp_path / "gateway.toml")
    assert cfg.uplink.broker_password == tmp_path / "state" / "broker.password"
    transport = open_transport(cfg.uplink.hub, broker=cfg.uplink.broker, device_id="pole-0042", broker_password=cfg.uplink.broker_password)
    assert isinstance(transport, MqttTransport) and transport.hub == "mqtts://broker.example.org:8883"


def test_without_a_broker_the_gateway_stays_on_http(tmp_path):
    cfg = parse_config(config(tmp_path, 'hub = "https://hub.example.org/"'), path=tmp_path / "gateway.toml")
    assert cfg.uplink.broker == "" and not isinstance(open_transport(cfg.uplink.hub), MqttTransport)


def test_a_broker_without_the_hubs_url_is_refused_naming_the_field(tmp_path):
    [problem] = problems(tmp_path, 'broker = "mqtt://127.0.0.1:1883"')
    assert 'uplink.broker = "mqtt://127.0.0.1:1883"' in problem and "needs [uplink] hub" in problem


def test_a_broker_url_of_another_scheme_is_refused_saying_what_is_accepted(tmp_path):
    [problem] = problems(tmp_path, 'hub = "https://hub.example.org/"\nbroker = "https://broker.example.org"')
    assert "uplink.broker" in problem and "mqtt/mqtts URL" in problem


def test_the_transport_refuses_a_broker_url_it_cannot_use():
    with pytest.raises(UplinkError, match="uplink broker = 'tcp://broker'"):
        open_transport("https://hub.example.org/", broker="tcp://broker", device_id="pole-0042")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"broker": "http://broker:1883"}, "--mqtt-broker 'http://broker:1883': expected mqtt://HOST[:PORT]"),
        ({"broker": "mqtt://hub:secret@broker"}, "put it in a file named by --mqtt-password-file"),
        ({"broker": "mqtt://broker", "password_file": "/nonexistent/pw"}, "--mqtt-password-file '/nonexistent/pw': no such file"),
    ],
)
def test_the_hubs_mqtt_options_are_checked_once_with_the_option_named(options, message):
    with pytest.raises(ValueError) as caught:
        MqttSettings(**options)
    assert message in str(caught.value)


def test_the_hub_command_says_what_is_wrong_with_its_broker_and_exits(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edge.cli", "hub", "--state-dir", str(tmp_path), "--mqtt-broker", "http://broker"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "ocn-edge hub: --mqtt-broker 'http://broker': expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. mqtts://broker.example.org:8883"
    )


def test_a_password_in_the_broker_url_is_never_shown():
    transport = open_transport("https://hub.example.org/", broker="mqtts://pole-0042:s3cret@broker.example.org:8883", device_id="pole-0042")
    assert transport.hub == "mqtts://pole-0042@broker.example.org:8883"
