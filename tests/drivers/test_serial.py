"""Serial drivers on real ptys: datasheet frames, commands, resync after garbage, bad checksums, unplug and replug."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import serial

from drivers.buses import SerialBus, create_bus
from drivers.sdk import DeviceContext, OptionError
from drivers.serial import pms5003, sds011
from drivers.serial.nmea import Fix, NmeaDecoder, NmeaDriver
from drivers.serial.pedestrian import PedestrianCounterDriver, PedestrianDecoder
from tests.drivers.loopback import BusConfig, SerialPeer
from tests.helpers.datasets import dataset

# Datasheet example (Laser Dust Sensor Control Protocol V1.3, "query data command"), device id A1 60.
SDS011_QUERY = bytes.fromhex("AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB")
SDS011_REPLY = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")  # PM2.5 123.6, PM10 261.8


def pms_frame(values: list[int]) -> bytes:
    body = b"\x42\x4d\x00\x1c" + b"".join(v.to_bytes(2, "big") for v in [*values, 0])
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


def nmea(body: str) -> bytes:
    checksum = 0
    for ch in body.encode():
        checksum ^= ch
    return f"${body}*{checksum:02X}\r\n".encode()


@contextlib.asynccontextmanager
async def serial_device(tmp_path, driver_cls, *, options=None, poll_interval=0.1, baudrate=9600, reopen_max=0.2):
    """Run a bus owner and a driver on a pty, as the runtime does; yields (peer, bus, driver, readings)."""
    peer = SerialPeer(tmp_path)
    bus = create_bus(BusConfig(type="serial", port=peer.path, baudrate=baudrate), reopen_max=reopen_max)
    ctx = DeviceContext(device_id="dev-1", options=options or {}, bus=bus, poll_interval=poll_interval)
    driver = driver_cls(ctx)
    readings: list = []

    async def emit(reading):
        readings.append(reading)

    tasks = [asyncio.create_task(bus.run()), asyncio.create_task(driver.run(emit))]
    try:
        await asyncio.wait_for(bus.wait_open(), 3)
        yield peer, bus, driver, readings
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        peer.unplug()


async def wait_for(condition, timeout=3.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def values(readings) -> dict:
    return {r.channel: r.value for r in readings}


# --- SDS011 -------------------------------------------------------------------------------------

def test_sds011_query_command_matches_the_datasheet_bytes():
    assert sds011.command(4) == SDS011_QUERY
    assert sds011.SET_QUERY == bytes.fromhex("AA B4 02 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB")


async def test_sds011_in_query_mode_sets_query_mode_then_asks_each_poll_and_decodes_the_reply(tmp_path):
    async with serial_device(tmp_path, sds011.Sds011Driver, options={"mode": "query"}) as (peer, _, _, readings):
        await peer.wait_received(sds011.SET_QUERY)
        await wait_for(lambda: peer.received.count(SDS011_QUERY) >= 2)
        peer.write(SDS011_REPLY)
        await wait_for(lambda: len(readings) == 2)
    assert values(readings) == {"dev-1/pm2_5": 123.6, "dev-1/pm10": 261.8}
    assert {r.unit for r in readings} == {"ug/m3"}


async def test_sds011_in_active_mode_sets_active_mode_and_never_queries(tmp_path):
    async with serial_device(tmp_path, sds011.Sds011Driver, options={"mode": "active"}) as (peer, _, _, readings):
        await peer.wait_received(sds011.SET_ACTIVE)
        peer.write(SDS011_REPLY)
        await wait_for(lambda: len(readings) == 2)
        await asyncio.sleep(0.3)
    assert SDS011_QUERY not in peer.received


def test_sds011_resyncs_after_garbage_and_counts_bad_checksums():
    decoder = sds011.Sds011Decoder()
    corrupt = bytearray(SDS011_REPLY)
    corrupt[3] ^= 0x01
    ack = bytes.fromhex("AA C5 02 01 01 00 A1 60 05 AB")
    stream = b"\x00\xff\xaa\x13" + bytes(corrupt) + ack + SDS011_REPLY[:4] + b""
    frames = decoder.feed(stream) + decoder.feed(SDS011_REPLY[4:] + b"\xaa\xaa" + SDS011_REPLY)
    assert [(f.pm2_5, f.pm10) for f in frames] == [(123.6, 261.8), (123.6, 261.8)]
    assert decoder.stats.bad_checksum == 1
    assert decoder.stats.frames == 2
    assert decoder.stats.garbage_bytes > 0


def test_sds011_rejects_an_unknown_mode_naming_the_choices():
    with pytest.raises(OptionError, match=r"mode = 'turbo': expected one of 'query', 'active'"):
        sds011.Sds011Driver.check_options({"mode": "turbo"})


# --- PMS5003 ------------------------------------------------------------------------------------

def test_pms5003_commands_match_the_datasheet():
    assert pms5003.SET_PASSIVE == bytes.fromhex("42 4D E1 00 00 01 70")
    assert pms5003.READ == bytes.fromhex("42 4D E2 00 00 01 71")
    assert pms5003.SET_ACTIVE == bytes.fromhex("42 4D E1 00 01 01 71")


async def test_pms5003_in_passive_mode_reads_on_request_and_decodes_all_twelve_values(tmp_path):
    frame = pms_frame([5, 8, 11, 4, 7, 10, 1200, 350, 60, 9, 2, 1])
    async with serial_device(tmp_path, pms5003.Pms5003Driver) as (peer, _, driver, readings):
        await peer.wait_received(pms5003.SET_PASSIVE)
        await peer.wait_received(pms5003.READ)
        peer.write(bytes.fromhex("42 4D 00 04 E1 00 01 74") + frame)  # mode acknowledgement, then data
        await wait_for(lambda: len(readings) == 12)
    got = values(readings)
    assert got["dev-1/pm2_5"] == 7 and got["dev-1/pm10_cf1"] == 11 and got["dev-1/particles_0_3um"] == 1200
    assert {c.id for c in driver.channels()} == set(got)


def test_pms5003_resyncs_after_garbage_and_a_bad_checksum():
    good = pms_frame([1] * 12)
    bad = bytearray(good)
    bad[10] ^= 0x40
    decoder = pms5003.Pms5003Decoder()
    frames = decoder.feed(b"\x42\x42\x4d\xff\xff" + bytes(bad) + b"junk\x42")
    frames += decoder.feed(b"\x4d" + good[2:])
    assert len(frames) == 1
    assert decoder.stats.bad_checksum == 1


# --- NMEA GPS -----------------------------------------------------------------------------------

async def test_nmea_gga_and_rmc_give_position_altitude_fix_satellites_and_speed(tmp_path):
    gga = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    rmc = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
    async with serial_device(tmp_path, NmeaDriver) as (peer, _, driver, readings):
        peer.write(gga + rmc)
        await wait_for(lambda: len(readings) == 6)
    got = values(readings)
    assert got["dev-1/latitude"] == pytest.approx(48.1173)
    assert got["dev-1/longitude"] == pytest.approx(11.516667, abs=1e-6)
    assert got["dev-1/altitude"] == 545.4
    assert got["dev-1/fix_quality"] == 1
    assert got["dev-1/satellites"] == 8
    assert got["dev-1/speed"] == pytest.approx(22.4 * 1852 / 3600)
    personal = {c.id for c in driver.channels() if c.personal}
    assert personal == {"dev-1/latitude", "dev-1/longitude"}


def test_nmea_without_a_fix_emits_no_position():
    decoder = NmeaDecoder()
    [fix] = decoder.feed(nmea("GPGGA,123519,,,,,0,00,,,M,,M,,"))
    assert isinstance(fix, Fix) and fix.quality == 0 and fix.latitude is None


def test_nmea_counts_bad_checksums_and_resyncs_after_a_cut_sentence():
    decoder = NmeaDecoder()
    good = nmea("GPGGA,123519,4807.038,S,01131.000,W,1,08,0.9,545.4,M,46.9,M,,")
    bad = good.replace(b"545.4", b"545.5")
    frames = decoder.feed(b"\x00garbage$GPGGA,12" + bad + b"$GPRMC,1" + good)
    [fix] = frames
    assert fix.latitude is not None and fix.latitude < 0 and fix.longitude is not None and fix.longitude < 0
    assert decoder.stats.bad_checksum == 1


@pytest.mark.parametrize("body", [
    "GPGGA,123519,9907.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # latitude 99 degrees
    "GPGGA,123519,4807.038,N,19131.000,E,1,08,0.9,545.4,M,46.9,M,,",  # longitude 191 degrees
    "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,nan,M,46.9,M,,",  # altitude not a number
    "GPRMC,123519,A,4807.038,N,01131.000,E,inf,084.4,230394,003.1,W",  # speed infinite
])
def test_nmea_a_sentence_with_a_valid_checksum_but_an_impossible_value_is_a_bad_frame(body):
    # The 8-bit XOR checksum passes one corrupted sentence in 256: what no receiver can mean is refused.
    decoder = NmeaDecoder()
    assert decoder.feed(nmea(body)) == []
    assert decoder.stats.bad_frames == 1 and decoder.stats.frames == 0


def test_nmea_decodes_a_real_receiver_log_without_a_single_bad_frame():
    decoder = NmeaDecoder()
    data = dataset("gpsd_quectel-l76k-nmea.log").read_bytes()
    frames = []
    for i in range(0, len(data), 61):  # odd-sized reads split sentences everywhere
        frames += decoder.feed(data[i : i + 61])
    assert decoder.stats.frames == 300  # 150 GGA + 150 RMC in the capture
    assert decoder.stats.bad_checksum == decoder.stats.bad_frames == 0
    assert all(abs(f.latitude - 47.66) < 0.02 for f in frames if f.latitude is not None)


# --- pedestrian counter -------------------------------------------------------------------------

MACS = ["3c:22:fb:10:4e:a1", "da:a1:19:00:00:02"]


async def test_pedestrian_counter_emits_mac_rssi_and_radio_per_sighting_and_skips_noise(tmp_path):
    lines = (b"HELLO ocn-pedsim 1.2.0 1\r\n"
             + f"SEEN 1764205200123 wifi {MACS[0]} -67\r\n".encode()
             + b"\x00\x13garbled line\r\n"
             + f"SEEN 1764205200456 ble {MACS[1]} -80\r\n".encode()
             + b"HB 1764205210000 42 10\r\n")
    async with serial_device(tmp_path, PedestrianCounterDriver, baudrate=115200) as (peer, _, driver, readings):
        peer.write(lines)
        await wait_for(lambda: len(readings) == 6)
        assert driver.stats()["bad_frames"] == 1
        assert driver.decoder.hello == ("ocn-pedsim", "1.2.0", 1)
    assert [r.value for r in readings if r.channel == "dev-1/mac"] == MACS
    assert [r.value for r in readings if r.channel == "dev-1/rssi"] == [-67, -80]
    assert [r.value for r in readings if r.channel == "dev-1/radio"] == ["wifi", "ble"]
    assert [c.id for c in driver.channels() if c.personal] == ["dev-1/mac"]


async def test_pedestrian_counter_keeps_a_sighting_that_follows_noise_or_a_cut_line_on_the_same_line(tmp_path):
    # Line noise has no line end of its own, and a line cut short loses its CRLF: either runs into the
    # next line.  The intact line at the end is still a sighting (a count of people must not drop).
    noise = bytes([0x00, 0x8F, 0xAA, 0x53, 0x45, 0xFF, 0x0D])  # binary junk, a stray "SE" and a CR
    lines = (noise + f"SEEN 1764205200123 wifi {MACS[0]} -67\r\n".encode()
             + f"SEEN 1764205200200 wifi {MACS[0][:8]}".encode()  # cut off mid-MAC
             + f"SEEN 1764205200456 ble {MACS[1]} -80\r\n".encode()
             + b"\x13\x37HB 1764205210000 42 10\r\n")
    async with serial_device(tmp_path, PedestrianCounterDriver, baudrate=115200) as (peer, _, driver, readings):
        peer.write(lines)
        await wait_for(lambda: driver.stats()["frames"] == 3)
        await asyncio.sleep(0.05)
    assert [r.value for r in readings if r.channel == "dev-1/mac"] == MACS
    assert [r.value for r in readings if r.channel == "dev-1/rssi"] == [-67, -80]
    assert driver.stats()["bad_frames"] == 3


async def test_no_personal_value_reaches_a_log_even_at_debug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    bad_checksum_gga = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,").replace(b"4807", b"4808")
    async with serial_device(tmp_path, PedestrianCounterDriver, baudrate=115200) as (peer, _, _, readings):
        peer.write(f"SEEN 1 wifi {MACS[0]} -67\r\nSEEN x wifi {MACS[1]} -67\r\n".encode())
        await wait_for(lambda: len(readings) == 3)
    async with serial_device(tmp_path, NmeaDriver) as (peer, _, _, readings):
        peer.write(bad_checksum_gga + nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))
        await wait_for(lambda: len(readings) >= 3)
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert caplog.records, "the bad frames were logged"
    for secret in [*MACS, MACS[0].replace(":", ""), "4807", "48.11", "01131", "11.51"]:
        assert secret not in text


def test_a_sighting_never_shows_its_mac_in_a_repr():
    [sighting] = PedestrianDecoder().feed(f"SEEN 5 wifi {MACS[0]} -50\r\n".encode())
    assert MACS[0] not in repr(sighting) and MACS[0] not in str(sighting)


# --- a port that disappears and comes back --------------------------------------------------------

async def test_a_port_that_disappears_and_comes_back_is_reopened_reconfigured_and_read_again(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with serial_device(tmp_path, sds011.Sds011Driver) as (peer, bus, _, readings):
        await peer.wait_received(sds011.SET_QUERY)
        peer.write(SDS011_REPLY)
        await wait_for(lambda: len(readings) == 2)
        peer.unplug()
        await wait_for(lambda: not bus.is_open)
        await asyncio.sleep(0.5)  # a few reopen attempts fail while the adapter is away
        peer.received.clear()
        peer.replug()
        await wait_for(lambda: bus.is_open)
        await peer.wait_received(sds011.SET_QUERY)  # the replugged sensor is put back in query mode
        await peer.wait_received(SDS011_QUERY)
        peer.write(SDS011_REPLY)
        await wait_for(lambda: len(readings) == 4)
        assert bus.stats()["losses"] == 1 and bus.session == 2
    lost = [r for r in caplog.records if "unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "back after" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1


async def test_a_serial_bus_waits_for_a_port_that_is_not_there_yet_and_says_so_in_our_words(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    bus = SerialBus(BusConfig(type="serial", port=str(tmp_path / "ttyLATE")), reopen_max=0.1)
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.sleep(0.3)
        assert not bus.is_open
        peer = SerialPeer(tmp_path, "ttyLATE")
        await asyncio.wait_for(bus.wait_open(), 2)
        peer.unplug()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # pyserial says "could not open port …: [Errno 2] No such file or directory: '…'" (the soak's check found it)
    [said] = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert said.endswith("unavailable: the port is not there (adapter unplugged?); reopening with backoff up to 0.1s"), said


async def test_a_port_another_program_holds_is_said_to_be_in_use(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    peer = SerialPeer(tmp_path, "ttyHELD")
    holder = serial.Serial(str(tmp_path / "ttyHELD"), exclusive=True)  # pyserial's lock: another program has the port
    bus = SerialBus(BusConfig(type="serial", port=str(tmp_path / "ttyHELD")), reopen_max=0.1)
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.sleep(0.3)
        assert not bus.is_open
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        holder.close()
        peer.unplug()
    [said] = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert said.endswith("unavailable: the port is in use by another program; reopening with backoff up to 0.1s"), said


async def test_intermittent_bad_frames_are_logged_once_not_each_time_a_good_frame_slips_between(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    corrupt = bytearray(SDS011_REPLY)
    corrupt[3] ^= 0x01
    async with serial_device(tmp_path, sds011.Sds011Driver, options={"mode": "active"}) as (peer, _, driver, readings):
        for n in range(1, 21):
            peer.write(bytes(corrupt))
            peer.write(SDS011_REPLY)
            await wait_for(lambda n=n: len(readings) == 2 * n)
        assert driver.stats()["bad_checksum"] == 20
    bad_frame_lines = [r for r in caplog.records if r.name == "ocn.driver"]
    assert len(bad_frame_lines) == 1
    assert "bad frames" in bad_frame_lines[0].getMessage()


async def test_a_line_of_only_garbage_or_silence_is_logged_once_and_its_end_once(tmp_path, caplog):
    # A wrong baud rate gives bytes that never frame (no bad checksum either); a dead sensor gives nothing.
    # Either is said once, however long it lasts, and the return of valid frames once.
    caplog.set_level(logging.INFO)
    async with serial_device(tmp_path, sds011.Sds011Driver, options={"mode": "active"}) as (peer, bus, driver, readings):
        driver.SILENCE_S = 0.3
        driver.FLAP_S = 0.2  # the second silence is a new outage, not the line flapping
        peer.write(SDS011_REPLY)
        await wait_for(lambda: len(readings) == 2)
        for _ in range(12):  # 1.2 s of garbage: four silence periods
            peer.write(bytes(range(0x10, 0x30)))
            await asyncio.sleep(0.1)
        await wait_for(lambda: bus.stats()["bytes_in"] >= 10 + 12 * 32)
        garbage = driver.health()  # the driver's own opinion, which the health model takes instead of "no reading"
        peer.write(SDS011_REPLY)
        await wait_for(lambda: len(readings) == 4)
        healthy = driver.health()
        await asyncio.sleep(1.2)  # silence: said once more
        quiet = driver.health()
        peer.write(SDS011_REPLY)
        await wait_for(lambda: len(readings) == 6)
    assert garbage is not None and garbage.state == "failing" and "garbage: check the baud rate" in garbage.next_step, garbage
    assert healthy is None
    assert quiet is not None and "(0 bytes received)" in quiet.cause and "check power, wiring" in quiet.next_step, quiet
    assert "no valid frame for" in quiet.cause and "ocn-edge read" in quiet.next_step
    lines = [r.getMessage() for r in caplog.records if r.name == "ocn.driver"]
    silent = [m for m in lines if "no valid frame" in m]
    again = [m for m in lines if "valid frames again" in m]
    assert len(silent) == 2 and len(again) == 2, lines
    assert "bytes received, garbage" in silent[0] and "(0 bytes received" in silent[1], silent


async def test_bytes_a_stalled_driver_cannot_take_are_counted_and_said_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    peer = SerialPeer(tmp_path)
    bus = SerialBus(BusConfig(type="serial", port=peer.path, baudrate=115200))
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.wait_for(bus.wait_open(), 3)
        chunk = b"SEEN 1 wifi 3c:22:fb:10:4e:a1 -67\r\n"
        async with asyncio.timeout(10):  # nobody receives: the bus's queue fills, then it drops
            while bus.stats()["dropped_bytes"] < 200 * len(chunk):
                peer.write(chunk)
                await asyncio.sleep(0.0005)
        for _ in range(800):  # the driver catches up
            await bus.receive()
        peer.write(chunk)
        await wait_for(lambda: any("keeps up again" in r.getMessage() for r in caplog.records))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        peer.unplug()
    messages = [r.getMessage() for r in caplog.records if r.name == "ocn.bus"]
    assert len([m for m in messages if "not keeping up" in m]) == 1, messages
    assert len([m for m in messages if "keeps up again" in m]) == 1, messages


async def test_a_sensor_that_falls_silent_again_and_again_is_logged_once_as_intermittent(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with serial_device(tmp_path, sds011.Sds011Driver, options={"mode": "active"}) as (peer, _, driver, readings):
        driver.SILENCE_S, driver.FLAP_S = 0.2, 0.8
        for n in range(1, 6):  # a frame, then silence well past SILENCE_S, five times
            peer.write(SDS011_REPLY)
            await wait_for(lambda n=n: len(readings) == 2 * n)
            await asyncio.sleep(1.1 if n == 1 else 0.4)
        for n in range(6, 20):  # then steady: a frame every 0.1 s for longer than FLAP_S
            peer.write(SDS011_REPLY)
            await wait_for(lambda n=n: len(readings) == 2 * n)
            await asyncio.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "ocn.driver"]
    assert len(lines) == 4, lines
    assert "no valid frame" in lines[0] and "valid frames again" in lines[1]
    assert "only intermittently" in lines[2] and "steady again" in lines[3]
