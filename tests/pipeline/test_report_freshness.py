"""The uplink numbers its status reports and notices within each boot (OXP §7.2), so the hub can refuse replays."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.spool import Spool
from edge.transport import open_transport
from edge.uplink import Uplink
from hub.app import RunningHub, run_hub
from tests.hub.gateways import SimGateway, enrol

NOTICE = {"purpose": "Air quality on King St", "place": {"site": "King St W & Spadina Ave", "latitude": 43.6452, "longitude": -79.3957}}


def make_uplink(spool: Spool, device_key, url: str) -> Uplink:
    return Uplink(spool=spool, transport=open_transport(url, timeout_s=10.0), private_key=device_key, device_id="pole-0042", status_interval_s=0)


@pytest.fixture
async def hub(tmp_path: Path, device_key) -> AsyncIterator[RunningHub]:
    """A real hub on loopback with pole-0042 enrolled under the test's device key."""
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret") as running, aiohttp.ClientSession() as http:
        await enrol(http, running.url, SimGateway("pole-0042", private_key=device_key), await running.create_token())
        yield running


async def reboot(spool: Spool) -> Spool:
    """The same spool file opened again by the next run: a new boot epoch."""
    path = spool.path
    await spool.close()
    again = await Spool.open(path, max_bytes=50_000_000)
    await again.begin_boot()
    return again


async def send_statuses(spool: Spool, device_key, url: str, count: int) -> list[bool]:
    uplink = make_uplink(spool, device_key, url)
    try:
        return [await uplink.send_status() for _ in range(count)]
    finally:
        await uplink.aclose()


async def test_status_reports_carry_the_boot_epoch_and_a_number_that_grows_with_each(spool, device_key, receiver) -> None:
    assert await send_statuses(spool, device_key, receiver.url, 3) == [True, True, True]
    assert [(r["boot_epoch"], r["report_seq"]) for r in receiver.status_reports] == [(1, 0), (1, 1), (1, 2)]


async def test_the_hub_takes_every_report_and_notice_of_a_boot_even_when_sent_together(spool, device_key, hub) -> None:
    uplink = make_uplink(spool, device_key, hub.url)
    try:
        sent = await asyncio.gather(uplink.send_status(), uplink.send_notice(NOTICE), uplink.send_status(), uplink.send_notice(NOTICE))
    finally:
        await uplink.aclose()
    # One in flight at a time, numbered when sealed: none overtakes another and is refused as stale.
    assert list(sent) == [True, True, True, True]
    assert len(await hub.store.notices()) == 2


async def test_the_next_boot_numbers_its_reports_from_zero_again(spool, device_key, receiver) -> None:
    await send_statuses(spool, device_key, receiver.url, 2)
    spool = await reboot(spool)
    try:
        await send_statuses(spool, device_key, receiver.url, 1)
    finally:
        await spool.close()
    assert [(r["boot_epoch"], r["report_seq"]) for r in receiver.status_reports] == [(1, 0), (1, 1), (2, 0)]


async def test_the_hub_takes_the_first_report_of_the_next_boot(spool, device_key, hub) -> None:
    assert await send_statuses(spool, device_key, hub.url, 2) == [True, True]
    spool = await reboot(spool)
    try:
        assert await send_statuses(spool, device_key, hub.url, 1) == [True]
    finally:
        await spool.close()
    device = await hub.store.device("pole-0042")
    assert device is not None and device.boot_epoch == 2


async def test_a_gateway_whose_spool_was_replaced_under_the_same_key_is_told_once_its_reports_are_stale(tmp_path, spool, device_key, hub, caplog) -> None:
    spool = await reboot(spool)  # boot 2 reaches the hub
    uplink = make_uplink(spool, device_key, hub.url)
    try:
        assert await uplink.send_status()
    finally:
        await uplink.aclose()
    await spool.close()
    replaced = await Spool.open(tmp_path / "new-spool.db", max_bytes=50_000_000)
    await replaced.begin_boot()  # boot 1 again
    uplink = make_uplink(replaced, device_key, hub.url)
    try:
        with caplog.at_level(logging.WARNING, logger="ocn.uplink"):
            assert await uplink.send_status() is False
            assert await uplink.send_status() is False
    finally:
        await uplink.aclose()
        await replaced.close()
    stale = [r for r in caplog.records if "stale" in r.getMessage()]
    assert len(stale) == 1 and "boot 1, report 0" in stale[0].detail
