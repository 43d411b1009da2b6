"""The uplink delivers spooled batches to a real OXP receiver on loopback and forgets each only on its ack."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl

import pytest

from edge.spool import Spool
from edge.statusreport import ReportFacts
from edge.transport import open_transport
from edge.uplink import Uplink, UplinkError
from tests.pipeline.conftest import seal_readings
from tests.pipeline.receiver import Receiver
from tests.pipeline.tlsca import make_ca


def make_uplink(spool, device_key, url, *, ca=None, timeout_s=10.0, **options) -> Uplink:
    settings = dict(
        spool=spool,
        transport=open_transport(url, ca=ca, timeout_s=timeout_s),
        private_key=device_key,
        device_id="pole-0042",
        status_interval_s=0,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        idle_poll_s=0.05,
    )
    settings.update(options)
    return Uplink(**settings)


def fill(spool, device_key, batches, readings=10):
    return [spool.put(seal_readings(device_key, spool, readings), readings=readings) for _ in range(batches)]


async def until(condition, *, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def deliver(uplink, spool, *, timeout=10.0):
    """Run the uplink until the spool is empty."""
    task = asyncio.create_task(uplink.run())
    try:
        async with asyncio.timeout(timeout):
            while spool.stats()["batches"]:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()


async def test_batches_are_delivered_oldest_first_and_forgotten_once_acked(spool, device_key, receiver):
    stored = fill(spool, device_key, 5)
    uplink = make_uplink(spool, device_key, receiver.url)
    await deliver(uplink, spool)
    assert list(receiver.batches) == [(b.id.key_id, b.id.boot_epoch, b.id.seq) for b in stored]
    assert (uplink.counters.batches_acked, uplink.counters.readings_acked) == (5, 50)
    assert uplink.counters.bytes_sent == sum(len(b.data) for b in stored)


def rows_on_disk(spool) -> set[int]:
    """The batches another reader of the spool's file sees: what the spool has committed."""
    with sqlite3.connect(spool.path) as reader:
        return {row for (row,) in reader.execute("SELECT row FROM batches")}


async def test_a_gateway_keeping_up_commits_a_deletion_with_the_next_batch_not_on_its_own(spool, device_key, receiver):
    """One commit (one fsync) per batch: the deletion of an acked batch rides on the next batch's commit."""
    uplink = make_uplink(spool, device_key, receiver.url, idle_poll_s=3600)
    task = asyncio.create_task(uplink.run())
    try:
        [first] = fill(spool, device_key, 1)
        uplink.wake()
        await until(lambda: uplink.counters.batches_acked == 1)
        await asyncio.sleep(0.3)  # the uplink has run out of batches and idles
        assert spool.acks_pending and spool.stats()["batches"] == 0
        assert rows_on_disk(spool) == {first.row}  # acked, its deletion not committed yet
        [second] = fill(spool, device_key, 1)  # this commit takes the deletion along
        assert rows_on_disk(spool) == {second.row}
        uplink.wake()
        await until(lambda: uplink.counters.batches_acked == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()


async def test_an_idle_uplink_commits_the_deletions_on_its_own_after_its_idle_poll(spool, device_key, receiver):
    uplink = make_uplink(spool, device_key, receiver.url, idle_poll_s=0.2)
    task = asyncio.create_task(uplink.run())
    try:
        fill(spool, device_key, 1)
        uplink.wake()
        await until(lambda: uplink.counters.batches_acked == 1)
        await until(lambda: not rows_on_disk(spool))
        assert not spool.acks_pending
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()


@pytest.mark.parametrize("fault", ["fail", "garbage", "wrong_ack", "reset", "busy", "rate"])
async def test_a_failed_delivery_keeps_the_batch_and_sends_it_again(spool, device_key, receiver, fault):
    receiver.schedule = [fault, fault]
    [batch] = fill(spool, device_key, 1)
    uplink = make_uplink(spool, device_key, receiver.url)
    await deliver(uplink, spool)
    assert receiver.behaviours == [fault, fault, "ok"]
    assert list(receiver.batches) == [(batch.id.key_id, batch.id.boot_epoch, batch.id.seq)]
    assert uplink.counters.retries == 2


async def test_a_batch_stored_but_not_acked_is_resent_and_stored_once(spool, device_key, receiver):
    receiver.schedule = ["store_then_garbage"]
    fill(spool, device_key, 1)
    uplink = make_uplink(spool, device_key, receiver.url)
    await deliver(uplink, spool)
    assert len(receiver.batches) == 1
    assert list(receiver.posts.values()) == [2]


async def test_a_stalled_hub_times_out_and_the_batch_is_sent_again(spool, device_key, receiver):
    receiver.schedule = ["stall"]
    fill(spool, device_key, 1)
    uplink = make_uplink(spool, device_key, receiver.url, timeout_s=0.3)
    await deliver(uplink, spool)
    assert receiver.behaviours == ["stall", "ok"]
    assert "timed out" in uplink.counters.last_error


async def test_retry_after_of_a_busy_hub_is_honoured(spool, device_key, receiver):
    receiver.schedule = ["busy"]
    receiver.retry_after = "1"
    fill(spool, device_key, 1)
    uplink = make_uplink(spool, device_key, receiver.url)
    await deliver(uplink, spool)
    assert receiver.times[1] - receiver.times[0] >= 1.0


@pytest.mark.parametrize(("rejection", "reason"), [("reject", "malformed"), ("too_large", "too_large")])
async def test_a_permanently_rejected_batch_is_quarantined_and_the_next_one_goes_out(
    spool, device_key, receiver, rejection, reason
):
    receiver.schedule = [rejection]
    rejected, accepted = fill(spool, device_key, 2)
    uplink = make_uplink(spool, device_key, receiver.url)
    await deliver(uplink, spool)
    assert list(receiver.batches) == [(accepted.id.key_id, accepted.id.boot_epoch, accepted.id.seq)]
    [(kept, kept_reason, _)] = spool.quarantined()
    assert (kept.data, kept_reason) == (rejected.data, reason)
    assert uplink.counters.batches_quarantined == 1
    assert spool.stats()["readings_quarantined"] == 10


async def test_a_batch_edited_in_the_spool_on_the_card_is_refused_for_its_signature_and_quarantined(spool, device_key, receiver):
    # threat model G5: someone with the SD card changes a stored batch (here one byte of its payload, in the spool's
    # own SQLite file).  The receiver verifies it against the device's key as the hub does, answers 401
    # bad_signature, and the gateway quarantines it (final) instead of retrying it forever; the next batch goes out.
    edited, accepted = fill(spool, device_key, 2)
    data = bytearray(edited.data)
    data[-80] ^= 0x01  # inside the payload, before the 64-byte signature
    with sqlite3.connect(spool.path) as card:
        card.execute("UPDATE batches SET data = ? WHERE row = ?", (bytes(data), edited.row))
    uplink = make_uplink(spool, device_key, receiver.url)
    await deliver(uplink, spool)
    assert list(receiver.batches) == [(accepted.id.key_id, accepted.id.boot_epoch, accepted.id.seq)]
    [(kept, kept_reason, _)] = spool.quarantined()
    assert (kept.data, kept_reason) == (bytes(data), "bad_signature")
    assert uplink.counters.batches_quarantined == 1


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(spool, device_key, receiver, caplog):
    receiver.schedule = ["fail"] * 6
    fill(spool, device_key, 3)
    uplink = make_uplink(spool, device_key, receiver.url)
    with caplog.at_level(logging.INFO, logger="ocn.uplink"):
        await deliver(uplink, spool)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert messages == ["hub unreachable; batches wait in the spool", "hub reachable again"]


async def test_a_flapping_hub_is_not_a_log_storm(spool, device_key, receiver, caplog):
    receiver.schedule = ["fail", "ok"] * 5
    fill(spool, device_key, 6)
    uplink = make_uplink(spool, device_key, receiver.url)
    with caplog.at_level(logging.INFO, logger="ocn.uplink"):
        await deliver(uplink, spool)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert messages == ["hub unreachable; batches wait in the spool", "hub reachable again"]
    assert uplink.counters.retries == 5


async def test_a_hub_that_is_down_for_a_while_gets_the_backlog_oldest_first(spool, device_key):
    receiver = Receiver()
    receiver.trust(device_key.public_key())
    url = await receiver.start()
    await receiver.stop()  # the port is now closed: connection refused
    stored = fill(spool, device_key, 4)
    uplink = make_uplink(spool, device_key, url)
    task = asyncio.create_task(uplink.run())
    await until(lambda: uplink.counters.retries >= 2)
    assert not uplink.reachable and spool.stats()["batches"] == 4
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await uplink.aclose()

    await receiver.start()
    await deliver(make_uplink(spool, device_key, receiver.url), spool)
    await receiver.stop()
    assert [seq for _, _, seq in receiver.batches] == [b.id.seq for b in stored]


async def test_the_daily_byte_budget_holds_batches_until_the_next_utc_day(spool, device_key, receiver):
    day_ms = 86_400_000
    now = [20_000 * day_ms + day_ms - 5_000]
    stored = fill(spool, device_key, 3)
    budget = len(stored[0].data) + len(stored[1].data) // 2
    uplink = make_uplink(spool, device_key, receiver.url, daily_budget=budget, clock_ms=lambda: now[0])
    task = asyncio.create_task(uplink.run())
    await until(lambda: len(receiver.batches) == 1)
    await asyncio.sleep(0.3)
    assert len(receiver.batches) == 1
    overhead_of_first = uplink.counters.overhead_bytes
    now[0] += 10_000  # past midnight
    await until(lambda: len(receiver.batches) == 2)
    await asyncio.sleep(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await uplink.aclose()
    assert len(receiver.batches) == 2
    # The second day paid for the second batch and the HTTP around it.
    assert spool.budget_used(20_001) == len(stored[1].data) + uplink.counters.overhead_bytes - overhead_of_first


async def test_the_daily_byte_budget_counts_every_byte_http_carried_both_ways(spool, device_key, receiver):
    from hilsim.netproxy import UplinkProxy

    day_ms = 86_400_000
    stored = fill(spool, device_key, 4)
    async with UplinkProxy(upstream_port=int(receiver.url.rstrip("/").rsplit(":", 1)[1])) as link:
        uplink = make_uplink(spool, device_key, link.url, daily_budget=10_000_000, clock_ms=lambda: 20_000 * day_ms)
        await deliver(uplink, spool)
        try:
            assert await uplink.send_status()
        finally:
            await uplink.aclose()
    batches = sum(len(b.data) for b in stored)
    # What the proxy forwarded is what a metered link bills (before TLS): batches, status report,
    # request headers and every answer. The budget counts exactly that, not only the batches.
    assert uplink._budget_used == link.bytes_up + link.bytes_down
    assert uplink.counters.bytes_sent == batches
    assert uplink.counters.overhead_bytes > 5 * 300  # headers and answers: a few hundred bytes an exchange
    # The two parts the local API shows add up to what the link carried: the status report is overhead.
    assert uplink.counters.bytes_sent + uplink.counters.overhead_bytes == link.bytes_up + link.bytes_down


async def test_the_status_report_is_signed_and_carries_backlog_loss_and_boot(spool, device_key, receiver):
    fill(spool, device_key, 2)
    desired = []
    uplink = make_uplink(
        spool,
        device_key,
        receiver.url,
        status_facts=lambda: ReportFacts(policy_digest=b"\x07" * 32),
        on_desired=lambda document, etag: desired.append((document, etag)),
    )
    assert await uplink.send_status() is True
    await uplink.aclose()
    [report] = receiver.status_reports
    assert report["device_id"] == "pole-0042"
    assert (report["spool_batches"], report["boot_epoch"], report["unclean_stops"]) == (2, 1, 0)
    assert report["readings_dropped"] == 0
    assert report["policy_digest"] == b"\x07" * 32
    assert uplink.counters.status_sent == 1
    assert desired == [(None, "e0")]


async def test_tls_with_the_configured_ca_delivers(spool, device_key, tmp_path):
    ca, cert, key = make_ca(tmp_path, "city")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    receiver = Receiver()
    receiver.trust(device_key.public_key())
    url = await receiver.start(ssl_context=server_tls)
    try:
        fill(spool, device_key, 2)
        await deliver(make_uplink(spool, device_key, url, ca=ca), spool)
    finally:
        await receiver.stop()
    assert url.startswith("https://") and len(receiver.batches) == 2


async def test_tls_with_a_hub_certificate_from_another_ca_is_refused_and_loses_nothing(spool, device_key, tmp_path):
    _, cert, key = make_ca(tmp_path, "impostor")
    city_ca, _, _ = make_ca(tmp_path, "city")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    receiver = Receiver()
    receiver.trust(device_key.public_key())
    url = await receiver.start(ssl_context=server_tls)
    [batch] = fill(spool, device_key, 1)
    uplink = make_uplink(spool, device_key, url, ca=city_ca)
    task = asyncio.create_task(uplink.run())
    try:
        await until(lambda: uplink.counters.retries >= 1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()
        await receiver.stop()
    assert receiver.batches == {}
    assert "certificate" in uplink.counters.last_error.lower()
    assert [b.data for b in spool.oldest(5)] == [batch.data]


async def test_a_missing_ca_file_is_named_in_the_error(spool, device_key, tmp_path):
    with pytest.raises(UplinkError, match="uplink ca = .*nowhere.pem"):
        make_uplink(spool, device_key, "https://127.0.0.1:1/", ca=tmp_path / "nowhere.pem")


async def test_a_hub_url_without_a_scheme_is_refused(spool, device_key):
    with pytest.raises(UplinkError, match="expected an http:// or https:// URL"):
        make_uplink(spool, device_key, "127.0.0.1:8443")


async def test_a_gateway_the_hub_does_not_know_keeps_its_batches_until_enrolled(spool, device_key):
    receiver = Receiver()
    url = await receiver.start()
    stored = fill(spool, device_key, 2)
    uplink = make_uplink(spool, device_key, url)
    task = asyncio.create_task(uplink.run())
    try:
        await until(lambda: uplink.counters.retries >= 2)
        assert spool.stats()["batches"] == 2 and spool.quarantined() == []
        assert "403 unknown_device" in uplink.counters.last_error
        receiver.trust(device_key.public_key())
        async with asyncio.timeout(10):
            while spool.stats()["batches"]:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()
        await receiver.stop()
    assert [seq for _, _, seq in receiver.batches] == [b.id.seq for b in stored]


async def test_the_bytes_sent_today_survive_a_restart(tmp_path, device_key, receiver):
    day_ms = 86_400_000
    now = 20_000 * day_ms + 3_600_000
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    await spool.begin_boot()
    [batch] = fill(spool, device_key, 1)
    uplink = make_uplink(spool, device_key, receiver.url, daily_budget=10_000, clock_ms=lambda: now)
    await deliver(uplink, spool)
    await spool.close()
    reopened = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    assert reopened.budget_used(20_000) == len(batch.data) + uplink.counters.overhead_bytes
    assert reopened.budget_used(20_001) == 0
    await reopened.close()


async def test_the_daily_byte_budget_counts_a_redirected_exchange_both_times(spool, device_key, receiver):
    # A hub moved behind a 308 (permanent, the body is sent again): each batch crosses the
    # link twice. The budget must count both legs, as the metered link bills them.
    from aiohttp import web

    from hilsim.netproxy import UplinkProxy

    day_ms = 86_400_000
    receiver_port = int(receiver.url.rstrip("/").rsplit(":", 1)[1])
    async with UplinkProxy(upstream_port=receiver_port) as new_home:

        async def moved(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(status=308, headers={"Location": f"{new_home.url.rstrip('/')}{request.path}"})

        app = web.Application()
        app.router.add_post("/oxp/v1/batches", moved)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        old_port = runner.addresses[0][1]
        try:
            async with UplinkProxy(upstream_port=old_port) as old_home:
                stored = fill(spool, device_key, 3)
                uplink = make_uplink(spool, device_key, old_home.url, daily_budget=10_000_000, clock_ms=lambda: 20_000 * day_ms)
                await deliver(uplink, spool)
        finally:
            await runner.cleanup()
    assert len(receiver.batches) == 3
    billed = old_home.bytes_up + old_home.bytes_down + new_home.bytes_up + new_home.bytes_down
    assert new_home.bytes_up > sum(len(b.data) for b in stored)  # every batch did travel twice
    assert uplink._budget_used == billed


async def test_a_hub_that_answers_busy_is_not_called_unreachable(spool, device_key, receiver, caplog):
    receiver.schedule = ["busy"] * 3
    receiver.retry_after = "0"
    fill(spool, device_key, 2)
    uplink = make_uplink(spool, device_key, receiver.url)
    with caplog.at_level(logging.INFO, logger="ocn.uplink"):
        await deliver(uplink, spool)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert messages == ["hub answers but takes no batches now; batches wait in the spool", "hub takes batches again"]
