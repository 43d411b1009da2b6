"""The hub reads a gateway's sensor health from the errors of its status report (the gateway's health model)."""

from __future__ import annotations

from hub.dashboard import device_health, sensor_health
from hub.models import Device


def _gateway(errors: tuple[str, ...]) -> Device:
    return Device(device_id="pole-7", key_id=b"\x01" * 8, status="active", fleet="default", enrolled_ms=0,
                  last_seen_ms=1_000, software_version="0.1.0", boot_epoch=1, last_seq=0, unclean_stops=0,
                  readings_dropped=0, spool_batches=0, spool_bytes=0, policy_digest="", config_digest="",
                  applied_etag="", errors=errors, counters={}, readings_stored=0, batches_stored=0, duplicates=0,
                  status_ms=1_000)


def test_a_gateway_with_a_failing_sensor_is_degraded_and_its_sensors_are_counted_by_health() -> None:
    errors = ("weather-1 failing: unit 11 on rs485-1 (weather-1) has never answered: check the unit id",
              "meter-1 degraded: meter-1: unit 1 refuses input 0..37 (exception code 2): check the profile",
              "pm-1 failing: serial port /dev/ttyUSB1 (bus pm, pm-1) is not there (adapter unplugged?): plug it in",
              "uplink: hub unreachable")
    gateway = _gateway(errors)
    assert sensor_health(gateway) == {"failing": 2, "degraded": 1}
    assert device_health(gateway, now=2_000, stale_after_ms=60_000) == "degraded"
    healthy = _gateway(())
    assert sensor_health(healthy) == {"failing": 0, "degraded": 0}
    assert device_health(healthy, now=2_000, stale_after_ms=60_000) == "ok"
