"""hil-sim's ledger holds what a reader of the wire gets (and marks a reply sent too late), and the uplink proxy's 503 and garbage modes work."""

from __future__ import annotations

import asyncio
import os
import struct

from hilsim.ledger import read_ledger
from hilsim.modbus_adapter import crc16
from hilsim.netproxy import UplinkProxy
from hilsim.scenario import RTU_TIMEOUT_S, run_scenario
from tests.hilsim.helpers import write_scenario

SCENARIO = """
[[buses]]
name = "meters"
type = "modbus-tcp"

[[devices]]
name = "pm-1"
kind = "sds011"
[devices.options]
mode = "active"

[[devices]]
name = "meter-2"
kind = "eastron-sdm120"
bus = "meters"
unit = 1
response_delay = "0ms"
"""


async def _sds011_frame(path: str) -> tuple[float, float]:
    """The first whole SDS011 data frame read from the pty: (PM2.5, PM10)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    data = b""
    try:
        async with asyncio.timeout(10):
            while True:
                try:
                    data += os.read(fd, 256)
                except BlockingIOError:
                    await asyncio.sleep(0.02)
                start = data.find(b"\xaa\xc0")
                if start >= 0 and len(data) >= start + 10 and data[start + 9] == 0xAB:
                    frame = data[start : start + 10]
                    return int.from_bytes(frame[2:4], "little") / 10, int.from_bytes(frame[4:6], "little") / 10
    finally:
        os.close(fd)


async def _read_voltage(port: int) -> float:
    """Input registers 0-1 of unit 1 over Modbus TCP (function 04), decoded as the float32 the meter serves."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 0, 2))
    reply = await asyncio.wait_for(reader.readexactly(13), 10)
    writer.close()
    assert reply[7:9] == b"\x04\x04", reply
    value: float = struct.unpack(">f", reply[9:13])[0]
    return value


async def test_the_ledger_holds_every_value_a_reader_of_the_wire_got(tmp_path):
    ledger = tmp_path / "ledger.tsv"
    async with run_scenario(write_scenario(tmp_path, SCENARIO), run_dir=tmp_path / "run", ledger=ledger) as sim:
        pm = await _sds011_frame(str(sim.endpoints["pm-1"].path))
        port = sim.endpoints["meter-2"].port
        assert port is not None
        volts = await _read_voltage(port)
    entries = list(read_ledger(ledger))
    pm_entries = {(e.name, e.value) for e in entries if e.device == "pm-1" and not e.faults}
    assert {("pm2_5", pm[0]), ("pm10", pm[1])} <= pm_entries
    meter = [e for e in entries if e.device == "meter-2"]
    assert [(e.name, e.value) for e in meter] == [("voltage", volts)]  # one read, of one register: one entry
    assert all(e.t_ms > 0 for e in entries)


async def test_the_ledger_keeps_a_digest_of_a_mac_never_the_address(tmp_path):
    ledger = tmp_path / "ledger.tsv"
    text = '[[devices]]\nname = "ped-1"\nkind = "pedestrian-counter"\n[devices.options]\nhear_every = "1s"\npassers_per_minute = 120.0\n'
    async with run_scenario(write_scenario(tmp_path, text), run_dir=tmp_path / "run", ledger=ledger) as sim:
        async with asyncio.timeout(20):
            while "\tped-1\tmac\t" not in ledger.read_text():  # written once the SEEN line is on the wire
                await asyncio.sleep(0.05)
        macs = sim.emitted_macs()
    content = ledger.read_text()
    assert macs
    assert not any(mac in content for mac in macs)


async def _ask(proxy: UplinkProxy) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /oxp/v1/batches HTTP/1.1\r\nHost: hub\r\nContent-Length: 0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_the_uplink_proxy_answers_503_or_garbage_in_place_of_the_hub():
    async with UplinkProxy(upstream_port=9) as proxy:  # nothing listens upstream: the answers are the proxy's own
        proxy.set_mode("http503")
        assert (await _ask(proxy)).startswith(b"HTTP/1.1 503 ")
        proxy.set_mode("garbage")
        answer = await _ask(proxy)
        assert answer and not answer.startswith(b"HTTP/")


RTU_LINE = """
[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = 19200

[[devices]]
name = "prompt"
kind = "eastron-sdm120"
bus = "rs485-1"
unit = 1
response_delay = "0ms"

[[devices]]
name = "slow"
kind = "eastron-sdm120"
bus = "rs485-1"
unit = 2
response_delay = "900ms"
"""


async def _ask_rtu(fd: int, unit: int) -> bytes:
    """Read input registers 0-1 of ``unit`` on the line and wait for its whole reply (9 bytes)."""
    request = struct.pack(">BBHH", unit, 4, 0, 2)
    os.write(fd, request + crc16(request))
    reply = b""
    async with asyncio.timeout(10):
        while len(reply) < 9:
            try:
                reply += os.read(fd, 64)
            except BlockingIOError:
                await asyncio.sleep(0.01)
    return reply


async def test_a_reply_the_line_put_out_past_the_gateways_timeout_is_marked_overrun_in_the_ledger(tmp_path, caplog):
    # The simulator's reply to "slow" leaves 0.9 s after the request, past the 0.5 s timeout `ocn-edge sim` gives
    # the gateway (and the 0.25 s margin): a gateway cannot have taken it, so the ledger says so, and the soak does not
    # count it lost.
    ledger = tmp_path / "ledger.tsv"
    async with run_scenario(write_scenario(tmp_path, RTU_LINE), run_dir=tmp_path / "run", ledger=ledger) as sim:
        assert f'timeout = "{round(RTU_TIMEOUT_S * 1000)}ms"' in sim.gateway_config_toml(state_dir=tmp_path / "state")
        fd = os.open(str(sim.endpoints["prompt"].path), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            for unit in (1, 2, 1, 2):
                assert (await _ask_rtu(fd, unit))[0] == unit
        finally:
            os.close(fd)
    faults = {(e.device, e.faults) for e in read_ledger(ledger)}
    assert faults == {("prompt", ()), ("slow", ("overrun",))}, faults
    notes = [r.getMessage() for r in caplog.records if "past the gateway's deadline" in r.getMessage()]
    assert len(notes) == 1 and "unit 2" in notes[0], notes  # said once, not for every late reply
