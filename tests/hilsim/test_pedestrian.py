"""The pedestrian counter speaks its documented line protocol over a realistic, seeded population."""

from __future__ import annotations

import re

from tests.hilsim.helpers import RawPort, write_scenario

SEEN_RE = re.compile(rb"^SEEN (\d{13}) (wifi|ble) ((?:[0-9a-f]{2}:){5}[0-9a-f]{2}) (-\d{2})$")
HB_RE = re.compile(rb"^HB (\d{13}) (\d+) (\d+)$")
BUSY_STREET = """
[[devices]]
name = "ped"
kind = "pedestrian-counter"
[devices.options]
passers_per_minute = 240.0
hear_every = "1s"
regulars = 0
randomisers = 0
"""


async def test_lines_follow_the_documented_protocol(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, BUSY_STREET))
    port = RawPort(sim.endpoints["ped"].path)
    try:
        data = await port.read_for(2.5)
    finally:
        port.close()
    lines = [line for line in data.split(b"\r\n") if line]
    assert any(SEEN_RE.match(line) for line in lines)
    for line in lines:
        assert SEEN_RE.match(line) or HB_RE.match(line) or line.startswith(b"HELLO "), line
    seen = {m.group(3).decode() for m in map(SEEN_RE.match, lines) if m}
    assert seen <= sim.emitted_macs()


async def _sightings_over_days(hilsim_run, tmp_path, options: str, *, days: int) -> list[set[str]]:
    text = f'[[devices]]\nname = "ped"\nkind = "pedestrian-counter"\n[devices.options]\n{options}'
    sim = await hilsim_run(write_scenario(tmp_path, text))
    device = sim.device("ped")
    await device.stop()  # drive the population by hand, tick by tick
    per_day: list[set[str]] = [set() for _ in range(days)]
    for tick in range(days * 3600):
        device.compute(tick, {})
        for line in device.outbox:
            if line.startswith(b"SEEN"):
                per_day[tick // 3600].add(line.split(b" ")[3].decode())
        device.outbox.clear()
    return per_day


async def test_regulars_keep_their_mac_and_come_back_on_other_days(hilsim_run, tmp_path):
    per_day = await _sightings_over_days(
        hilsim_run, tmp_path, 'day_length = "1h"\nregulars = 10\nrandomisers = 0\npassers_per_minute = 0.0\n', days=3)
    assert all(per_day)
    assert len(per_day[0] & per_day[1] & per_day[2]) >= 5
    assert all(not int(mac[:2], 16) & 0x02 for day in per_day for mac in day)


async def test_randomising_phones_use_locally_administered_macs_that_change(hilsim_run, tmp_path):
    per_day = await _sightings_over_days(
        hilsim_run, tmp_path, 'day_length = "1h"\nregulars = 0\nrandomisers = 10\npassers_per_minute = 0.0\n', days=2)
    macs = per_day[0] | per_day[1]
    assert all(int(mac[:2], 16) & 0x02 for mac in macs)
    assert not per_day[0] & per_day[1]  # a new day, new addresses
    assert len(macs) > 20  # ten phones, each address lasting minutes


async def test_population_is_the_same_for_the_same_seed(hilsim_run, tmp_path):
    options = 'day_length = "1h"\nregulars = 5\nrandomisers = 5\npassers_per_minute = 3.0\n'
    first = await _sightings_over_days(hilsim_run, tmp_path / "a", options, days=1)
    second = await _sightings_over_days(hilsim_run, tmp_path / "b", options, days=1)
    assert first == second
