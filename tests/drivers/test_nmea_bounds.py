"""NMEA sentences with a right checksum but a value no receiver can measure: refused whole, counted, logged once."""

from __future__ import annotations

import logging

import pytest

from drivers.serial.nmea import KNOT_M_S, Fix, Motion, NmeaDecoder, NmeaDriver
from tests.drivers.test_serial import nmea, serial_device, wait_for
from tests.helpers.datasets import dataset

# The NMEA 0183 standard's own GGA example (48°07.038' N, 11°31.000' E) and an RMC for it.
GGA = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
RMC = "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"


def gga(**fields: str) -> str:
    """The example GGA with some fields replaced (by name: quality, satellites, hdop, altitude, ...)."""
    names = ("talker", "time", "lat", "ns", "lon", "ew", "quality", "satellites", "hdop", "altitude")
    parts = GGA.split(",")
    for name, value in fields.items():
        parts[names.index(name)] = value
    return ",".join(parts)


def rmc(**fields: str) -> str:
    names = ("talker", "time", "status", "lat", "ns", "lon", "ew", "knots")
    parts = RMC.split(",")
    for name, value in fields.items():
        parts[names.index(name)] = value
    return ",".join(parts)


def refused(body: str) -> bool:
    decoder = NmeaDecoder()
    frames = decoder.feed(nmea(body))
    assert decoder.stats.bad_checksum == 0  # the checksum is right: only the value is wrong
    return frames == [] and decoder.stats.bad_frames == 1 and decoder.stats.frames == 0


# --- the reproductions from issue 11 -----------------------------------------------------------

def test_a_fix_quality_of_twenty_digits_is_refused():
    assert refused(gga(quality="99999999999999999999"))


def test_an_altitude_of_1e308_metres_is_refused_however_it_is_written():
    assert refused(gga(altitude="1" + "0" * 308))
    assert refused(gga(altitude="1e308"))


def test_a_negative_speed_is_refused():
    assert refused(rmc(knots="-5.0"))


# --- every field's bound -----------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    gga(quality="9"),  # NMEA defines 0..8
    gga(quality="-1"),
    gga(quality="+1"),  # Python's int() would take these three; NMEA has no such numbers
    gga(quality=" 1"),
    gga(satellites="1_2"),
    gga(satellites="100"),
    gga(satellites="-1"),
    gga(hdop="0"),  # a dilution of precision is never 0 ...
    gga(hdop="-0.9"),
    gga(hdop="100.1"),  # ... and receivers write 99.99 when they have no geometry at all
    gga(hdop="inf"),
    gga(altitude="-1000.1"),  # lower than any place a receiver gets a fix
    gga(altitude="50000.1"),  # higher than any civil receiver gives one
    gga(altitude="nan"),
    gga(altitude="5.4e2"),  # NMEA numbers have no exponent
    gga(lat="4807.038", ns="E"),  # a latitude's hemisphere is N or S
    gga(lon="01131.000", ew="N"),
    gga(lat="4860.000"),  # 60 minutes
    gga(lat="9000.001"),
    gga(lon="18000.001", ew="W"),
    gga(lat="-407.038"),
    gga(lat="4807.038", ns=""),
    "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9",  # fields missing
    rmc(knots="1000.1"),  # civil receivers stop reporting at 1,000 knots
    rmc(knots="nan"),
    rmc(status="X"),
    rmc(lat="9100.000"),
])
def test_a_value_no_receiver_can_measure_refuses_the_whole_sentence(body):
    assert refused(body)


@pytest.mark.parametrize("body", [
    *(gga(quality=str(q)) for q in range(9)),
    gga(satellites="99"),
    gga(hdop="99.99"),
    gga(hdop=".5"),
    gga(altitude="-1000"),
    gga(altitude="50000"),
    gga(lat="9000.000", ns="S"),
    gga(lon="18000.000", ew="W"),
    rmc(knots="1000"),
    rmc(knots="0.00"),
])
def test_values_at_the_bounds_are_accepted(body):
    decoder = NmeaDecoder()
    assert len(decoder.feed(nmea(body))) == 1
    assert decoder.stats.bad_frames == 0


def test_the_standard_example_decodes_to_its_values():
    fix, motion = NmeaDecoder().feed(nmea(GGA) + nmea(RMC))
    assert isinstance(fix, Fix) and isinstance(motion, Motion)
    assert (fix.latitude, fix.longitude) == pytest.approx((48.1173, 11.5166667))
    assert fix == Fix(latitude=fix.latitude, longitude=fix.longitude, altitude=545.4, quality=1, satellites=8, hdop=0.9)
    assert (motion.latitude, motion.longitude, motion.speed) == pytest.approx((48.1173, 11.5166667, 22.4 * KNOT_M_S))
    assert motion == Motion(latitude=motion.latitude, longitude=motion.longitude, speed=motion.speed, valid=True)


def test_a_receiver_without_a_fix_still_reports_quality_zero():
    # What u-blox receivers (and hil-sim's no_fix fault) send before the first fix: DOP 99.99, no position.
    decoder = NmeaDecoder()
    fix, motion = decoder.feed(nmea("GPGGA,123519,,,,,0,00,99.99,,,,,,") + nmea("GPRMC,123519,V,,,,,,,230394,,,N"))
    assert isinstance(fix, Fix) and isinstance(motion, Motion)
    assert (fix.quality, fix.satellites, fix.latitude, fix.altitude) == (0, 0, None, None)
    assert motion.valid is False and motion.speed is None


def test_every_fix_of_a_real_receivers_capture_is_within_bounds_and_kept():
    decoder = NmeaDecoder()
    frames = decoder.feed(dataset("gpsd_quectel-l76k-nmea.log").read_bytes())
    fixes = [f for f in frames if isinstance(f, Fix)]
    assert len(fixes) == 150 and decoder.stats.bad_frames == 0
    assert {f.quality for f in fixes} == {1}
    for f in fixes:
        assert f.satellites is not None and f.hdop is not None and f.altitude is not None, f
        assert f.satellites > 4 and 0 < f.hdop < 5 and 70 < f.altitude < 85, f


# --- what the driver releases and logs ---------------------------------------------------------

async def test_a_refused_fix_releases_no_position_and_is_logged_once_without_it(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    impossible = [
        gga(quality="99999999999999999999"),
        gga(altitude="1" + "0" * 308),
        gga(satellites="100"),
        rmc(knots="-5.0"),
    ]
    async with serial_device(tmp_path, NmeaDriver) as (peer, _, driver, readings):
        # The RMC after each bad GGA carries the same position: it must not release it either.
        peer.write(b"".join(nmea(body) + nmea(RMC) for body in impossible))
        await wait_for(lambda: driver.stats()["bad_frames"] == 4 and driver.stats()["frames"] == 4)
    assert {r.channel for r in readings} == {"dev-1/speed"}
    assert len(readings) == 4
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unreadable frames" in warnings[0].getMessage()
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    for secret in ("4807", "48.11", "01131", "11.51", "99999999999999999999"):
        assert secret not in text


async def test_good_fixes_around_a_refused_one_still_give_their_position(tmp_path):
    async with serial_device(tmp_path, NmeaDriver) as (peer, _, driver, readings):
        peer.write(nmea(GGA) + nmea(gga(lat="9100.000")) + nmea(gga(lat="4808.000")))
        await wait_for(lambda: driver.stats()["frames"] == 2 and driver.stats()["bad_frames"] == 1)
    latitudes = [r.value for r in readings if r.channel == "dev-1/latitude"]
    assert latitudes == [pytest.approx(48.1173), pytest.approx(48 + 8 / 60)]
