"""A status report of hundreds of failing devices still fits a signed message (OXP §7): shortened, saying so, and taken by the hub.

Each device not ok costs a report about 350 bytes (its health, and a line in ``errors``): some 185 of
them failing at once (a bus converter down) made a report over 64 KiB, which the gateway could not
seal, so the hub heard nothing from it exactly when it had most to say.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import cbor2
import pytest

from edge.protocol import MAX_STATUS_BYTES
from edge.spool import SpoolStats
from edge.statusreport import REPORT_BYTES, ReportFacts, status_report
from hub.app import run_hub
from hub.reports import check_status_report
from tests.hub.gateways import SimGateway, enrol, post_cose

SPOOL = SpoolStats(batches=3, bytes=4096, readings=90, oldest_age_s=12.0, max_bytes=1 << 20, when_full="drop_oldest", batches_dropped=0,
                   readings_dropped=0, batches_quarantined=0, readings_quarantined=0, quarantine_batches=0, unclean_stops=0)


def failing(devices: int) -> ReportFacts:
    """``devices`` SDM630s behind one Modbus TCP converter that is down, as the gateway's health model says it."""
    health, errors = {}, []
    for i in range(1, devices + 1):
        cause = f"Modbus TCP bus 'meters' (192.168.10.20:502) for meter-{i} is not open: connection refused"
        step = "check the converter's address, power and network"
        health[f"meter-{i}"] = {"health": "failing", "diagnosis": cause, "next_step": step}
        errors.append(f"meter-{i} failing: {cause}: {step}")
    return ReportFacts(policy_digest=b"\x01" * 32, config_digest=b"\x02" * 32, applied_etag="etag", errors=errors, device_health=health)


def report(devices: int, device_id: str = "d" * 64) -> dict[str, Any]:
    return status_report(SPOOL, device_id=device_id, ts_ms=1_795_737_600_000, boot_epoch=2**64 - 1, facts=failing(devices))


def test_a_report_that_fits_is_sent_whole() -> None:
    whole = report(28)  # 1,008 SDM630 channels
    assert "abridged" not in whole and len(whole["errors"]) == 28 and whole["device_health"]["meter-1"]["next_step"]


@pytest.mark.parametrize(
    ("devices", "left_out"),
    [
        (200, ["device diagnoses"]),
        (1_000, ["device diagnoses", "errors"]),
        (5_000, ["device diagnoses", "errors", "device health"]),
    ],
)
def test_a_report_of_many_failing_devices_is_shortened_to_fit_and_says_what_it_left_out(devices: int, left_out: list[str]) -> None:
    shorter = report(devices)
    size = len(cbor2.dumps(shorter, canonical=True))
    print(f"{devices} failing devices: {size:,} bytes of {REPORT_BYTES:,}, {len(shorter['errors'])} errors listed")
    assert size <= REPORT_BYTES
    assert shorter["abridged"] == {"left_out": left_out, "errors": devices, "devices": devices}
    check_status_report(shorter)
    if "device health" not in left_out:
        assert shorter["device_health"]["meter-1"] == {"health": "failing"} and len(shorter["device_health"]) == devices
    if "errors" in left_out:
        listed = shorter["errors"][:-1]
        assert listed == failing(devices).errors[: len(listed)], "the first errors, whole"
        assert shorter["errors"][-1] == (f"... and {devices - len(listed):,} more: a status report holds at most {MAX_STATUS_BYTES:,} bytes; "
                                         "the gateway's local status page lists them all")
    else:
        assert shorter["errors"] == failing(devices).errors


async def test_the_hub_takes_the_shortened_report_of_a_thousand_failing_devices(tmp_path) -> None:
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub") as hub, aiohttp.ClientSession() as http:
        gateway = SimGateway("e" * 64)
        await enrol(http, hub.url, gateway, await hub.create_token())
        shorter = report(1_000, gateway.device_id)
        status, body, _ = await post_cose(http, f"{hub.url}/oxp/v1/status", gateway.status(**{**shorter, "report_seq": 2**64 - 1}))
        assert status == 200, body
        device = await hub.hub.store.device(gateway.device_id)
    assert device is not None and device.status_ms is not None, "the hub heard from the gateway"
    assert device.errors[0] == failing(1).errors[0], "the failing devices are named (the reference hub keeps the first 50 errors)"
