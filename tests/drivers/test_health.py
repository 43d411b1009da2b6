"""The device health model on real bus owners: a unit that never answered, one that stopped, a refused block, a lost port."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from drivers.buses import ModbusBus, SerialBus, create_bus
from drivers.health import DEGRADED, FAILING, OK, Health, assess, worst
from drivers.modbus.adapter import NoReply
from drivers.modbus.profile import load_profile
from tests.drivers.loopback import BusConfig, RegisterStore, SerialPeer, serve_profile
from tests.drivers.test_modbus import driver_for


def test_the_worst_opinion_wins_and_the_bus_explains_before_the_supervisor() -> None:
    gone = Health(FAILING, "port gone", "plug it in")
    assert worst([None, Health(), Health(DEGRADED, "x"), gone]) is gone
    assert assess("d", bus=gone, crashing="OSError: EIO", silent_s=100, poll_interval=1) is gone
    silent = assess("d", silent_s=31, poll_interval=10)
    assert silent.state == FAILING and "no reading for 31 s" in silent.cause
    assert assess("d", silent_s=29, poll_interval=10).state == OK
    crashing = assess("d", crashing="DriverError: bad frame")
    assert crashing.state == FAILING and "keeps failing (DriverError: bad frame)" in crashing.cause
    assert crashing.as_dict() == {"health": FAILING, "diagnosis": crashing.cause, "next_step": crashing.next_step}


async def test_never_answered_and_stopped_answering_are_different_diagnoses(store: RegisterStore, tcp_bus: ModbusBus,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tcp_bus.name_unit(11, "weather-1")
    tcp_bus.name_unit(1, "meter-1")
    assert tcp_bus.health_of("weather-1", 11) is None  # not asked yet: no opinion
    with pytest.raises(NoReply):
        await tcp_bus.read(11, "holding", 0, 1)
    never = tcp_bus.health_of("weather-1", 11)
    assert never is not None and never.state == FAILING
    assert never.cause.startswith("unit 11 on bus-1 (weather-1) has never answered (no reply within 0.3 s)")
    assert "check the unit id with ocn-edge scan" in never.next_step

    serve_profile(store, 1, load_profile("hilsim-water-level"), {"level": 1.0})
    await tcp_bus.read(1, "holding", 0, 1)
    assert tcp_bus.health_of("meter-1", 1) == Health()
    store.dead.add(1)
    with pytest.raises(NoReply):
        await tcp_bus.read(1, "holding", 0, 1)
    stopped = tcp_bus.health_of("meter-1", 1)
    assert stopped is not None and stopped.state == FAILING
    assert stopped.cause.startswith("unit 1 on bus-1 (meter-1) stopped answering")
    assert "power" in stopped.next_step

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "ocn.bus"]
    assert len(errors) == 2, errors
    assert errors[0].startswith("unit 11 on bus-1 (weather-1) has never answered")
    assert errors[1].startswith("unit 1 on bus-1 (meter-1) stopped answering")


async def test_a_block_the_unit_refuses_makes_the_device_degraded(store: RegisterStore, tcp_bus: ModbusBus) -> None:
    serve_profile(store, 1, load_profile("eastron-sdm120"), {"voltage": 230.0})
    store.readable[1] = {"input": range(0x40, 0x200)}  # the first block is refused with exception 02
    driver = driver_for(tcp_bus, 1, "eastron-sdm120")
    driver._report(await driver.poll())
    health = driver.health()
    assert health is not None and health.state == DEGRADED
    assert "meter-1: unit 1 refuses input 0..37 (exception code 2" in health.cause
    assert assess("meter-1", bus=tcp_bus.health_of("meter-1", 1), driver=health) is health
    store.readable[1] = {}
    driver._report(await driver.poll())
    assert driver.health() is None


async def test_an_rtu_line_whose_adapter_is_gone_is_failing_with_the_way_to_find_it(tmp_path: Path) -> None:
    bus = create_bus(BusConfig(name="rs485-1", type="modbus-rtu", port=str(tmp_path / "ttyUSB7")))
    assert isinstance(bus, ModbusBus)
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.sleep(0.2)
        health = bus.health_of("weather-1", 11)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert health is not None and health.state == FAILING
    assert "not open: " in health.cause and "no such device" in health.cause
    assert "ocn-edge ports" in health.next_step


async def test_an_unplugged_serial_sensor_is_failing(tmp_path: Path) -> None:
    peer = SerialPeer(tmp_path)
    bus = create_bus(BusConfig(name="pm", type="serial", port=peer.path, baudrate=9600))
    assert isinstance(bus, SerialBus)
    task = asyncio.create_task(bus.run())
    try:
        async with asyncio.timeout(3):
            await bus.wait_open()
        assert bus.health_of("pm-1", None) is None
        peer.unplug()
        async with asyncio.timeout(3):
            while bus.is_open:
                await asyncio.sleep(0.02)
        health = bus.health_of("pm-1", None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        peer.unplug()
    assert health is not None and health.state == FAILING
    assert health.cause == f"serial port {peer.path} (bus pm, pm-1) is not there (adapter unplugged?)"


async def test_a_unit_that_answers_intermittently_is_degraded_not_failing(store: RegisterStore, tcp_bus: ModbusBus) -> None:
    serve_profile(store, 1, load_profile("hilsim-water-level"), {"level": 1.0})
    tcp_bus.name_unit(1, "level-1")
    driver = driver_for(tcp_bus, 1, "hilsim-water-level")
    for _ in range(2):
        store.dead.add(1)
        assert (await driver.poll()).failures
        store.dead.discard(1)
        await asyncio.sleep(0.35)  # past the backoff after one failure (one timeout, 0.3 s)
        assert (await driver.poll()).readings
    store.dead.add(1)
    assert (await driver.poll()).failures
    health = tcp_bus.health_of("level-1", 1)
    assert health is not None and health.state == DEGRADED
    assert health.cause.startswith("unit 1 on bus-1 (level-1) answers only intermittently")
