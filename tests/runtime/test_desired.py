"""The hub's desired policy and config reach a running gateway: applied whole, or refused with the last good kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from edge.config import load_config
from edge.enrol import enrol
from edge.logs import set_logger_levels
from edge.runtime import Gateway
from edge.service import run_gateway
from hub.app import RunningHub, run_hub
from tests.helpers.pole import sds011_policy, sds011_scenario


async def unchecked_desired(hub: RunningHub, document: dict) -> None:
    """Store a document the hub itself would refuse (as a hub of another version might send): the gateway's own checks are under test."""
    await hub.hub.store.set_desired("device", "pole-7", document, now_ms=time.time_ns() // 1_000_000)

SCENARIO = sds011_scenario("desired-test", seed=3)
POLICY = sds011_policy("air quality, kept", purpose="testing desired state")

QUANTIZED = tomllib.loads(
    POLICY.replace('version = "1"', 'version = "2"').replace('rule = "keep"', 'rule = "quantize"\nstep = 5.0')
)


@pytest.fixture
async def setup(hilsim_run, tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    sim = await hilsim_run(scenario)
    (tmp_path / "policy.toml").write_text(POLICY)
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub") as hub:
        text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub=hub.url, gateway_id="pole-7", policy="policy.toml")
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(text.replace('flush_interval = "30s"', 'flush_interval = "1s"'))
        config = load_config(config_path)
        await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="pole-7", key_path=Path(config.uplink.key))
        yield hub, config


async def report(gateway: Gateway) -> None:
    """A status report now: the hub answers it with its desired document."""
    assert gateway.uplink is not None
    await gateway.uplink.send_status()


async def _until(predicate, timeout=20.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_gateway(config, *, drain_timeout_s: float = 0.0) -> AsyncIterator[Gateway]:
    """One pipeline, started and (whatever the test did) stopped."""
    gateway = Gateway(config)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(drain_timeout_s=drain_timeout_s)


@contextlib.asynccontextmanager
async def supervised(config) -> AsyncIterator[list[Gateway]]:
    """`ocn-edge run` in-process: yields every pipeline it starts, in order (a reload appends one)."""
    stop = asyncio.Event()
    running: list[Gateway] = []
    task = asyncio.create_task(run_gateway(config, stop=stop, started=running.append))
    try:
        await _until(lambda: running)
        yield running
    finally:
        stop.set()
        await task


async def test_a_desired_policy_is_swapped_in_and_reported_back(setup):
    hub, config = setup
    async with running_gateway(config, drain_timeout_s=10) as gateway:
        old_digest = gateway.policy.digest
        await hub.set_desired("device", "pole-7", {"policy": QUANTIZED})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag != "")
        swapped_ms = gateway._clock_ms()
        assert gateway.policy.digest != old_digest
        batcher = gateway.batcher
        assert batcher is not None
        await _until(lambda: batcher.stats()["batches_sealed"] >= 2)
        await report(gateway)
        device = await hub.store.device("pole-7")
        assert device.policy_digest == gateway.policy.digest.hex(), "the hub sees the policy now in force"
        assert device.applied_etag == gateway.desired.applied_etag
        assert device.errors == ()
    stored = await hub.store.readings(device_id="pole-7", channel="pm-1/pm2_5", limit=100_000)
    after = [r.value for r in stored if r.ts_ms > swapped_ms]
    assert len(after) >= 2, "readings kept flowing after the swap"
    assert all(float(v) % 5 == 0 for v in after), f"released under the new policy: quantized to 5 ({after})"


async def test_a_policy_that_does_not_validate_is_refused_and_the_old_one_stays(setup, tmp_path):
    hub, config = setup
    async with running_gateway(config) as gateway:
        good = gateway.policy.digest
        bad = dict(QUANTIZED)
        bad["channels"] = {"pm-1/*": {"rule": "quantize", "step": -1.0, "purpose": "x"}}
        await unchecked_desired(hub, {"policy": bad})
        await report(gateway)
        await _until(lambda: gateway.desired.last_error != "")
        assert gateway.policy.digest == good
        assert "step" in gateway.desired.last_error
        await report(gateway)
        device = await hub.store.device("pole-7")
        assert any("not applied" in e for e in device.errors), device.errors
        assert device.policy_digest == good.hex()


async def test_a_document_not_signed_by_the_pinned_hub_key_is_not_applied(setup):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    hub, config = setup
    async with running_gateway(config) as gateway:
        impostor = Ed25519PrivateKey.generate().public_key()
        gateway.desired.pin_hub_key(
            impostor.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        good = gateway.policy.digest
        await hub.set_desired("device", "pole-7", {"policy": QUANTIZED})
        await report(gateway)
        await _until(lambda: gateway.desired.ignored != "")
        assert "signature" in gateway.desired.ignored and gateway.desired.last_error == ""
        assert gateway.policy.digest == good
        # Not held against the ETag (whoever sent it): with the hub's key pinned again, its next answer applies.
        assert gateway.desired.refused_etag == ""
        gateway.desired.pin_hub_key(
            hub.hub.ingest.signer.key().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        await report(gateway)
        await _until(lambda: gateway.policy.digest != good)


async def test_a_desired_config_restarts_the_pipeline_without_losing_readings(setup):
    hub, config = setup
    async with supervised(config) as running:
        first = running[0]
        assert first.config.batch.max_readings == 20000
        await hub.set_desired("device", "pole-7", {"config": {"batch": {"max_readings": 7}}})
        await report(first)
        await _until(lambda: len(running) == 2)
        second = running[1]
        assert second.config.batch.max_readings == 7
        assert second.desired.applied_etag
        assert second.boot is not None and first.boot is not None
        assert second.boot.boot_epoch == first.boot.boot_epoch + 1
        await asyncio.sleep(2)
    last = running[-1]  # the pipeline that ran last, now stopped
    released = running[0].counters.readings_released + running[1].counters.readings_released
    spooled = (last.spool_stats_at_stop or {}).get("readings", 0)
    stored = (await hub.counters("pole-7"))["readings_stored"]
    assert stored + spooled == released, "every reading is at the hub or in the spool, once"


@pytest.fixture
def levels_restored() -> Iterator[None]:
    """The root logger's level as it was, and no logger's own level left set, after the test (a reload sets them)."""
    root = logging.getLogger().level
    yield
    set_logger_levels({})
    logging.getLogger().setLevel(root)


@pytest.mark.usefixtures("levels_restored")
async def test_a_desired_configs_log_levels_apply_without_a_restart_and_again_when_the_gateway_starts_with_it(setup):
    hub, config = setup
    bus = logging.getLogger("ocn.bus")
    async with supervised(config) as running:
        gateway = running[0]
        assert bus.level == logging.NOTSET
        # Written bare in TOML, a dotted name arrives nested: the hub stores it as the one name.
        await hub.set_desired("device", "pole-7", {"config": {"gateway": {"log_levels": {"ocn": {"bus": "debug"}}}}})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag != "")
        assert len(running) == 1, "a log level restarts nothing"
        assert dict(gateway.config.gateway.log_levels) == {"ocn.bus": "debug"}
        assert bus.level == logging.DEBUG and logging.getLogger("ocn.uplink").level == logging.NOTSET
        await report(gateway)
        device = await hub.store.device("pole-7")
        assert device.config_digest == gateway.config.digest.hex() and device.errors == (), "the hub sees the config in force"
    set_logger_levels({})  # as a new process starts: nothing set
    async with supervised(config) as running:  # the hub's config in force from the start, before the hub is asked
        assert dict(running[0].config.gateway.log_levels) == {"ocn.bus": "debug"}
        assert bus.level == logging.DEBUG


@pytest.mark.usefixtures("levels_restored")
async def test_log_levels_with_a_policy_that_does_not_fit_are_refused_with_it_and_change_nothing(setup):
    hub, config = setup
    root = logging.getLogger().level
    async with supervised(config) as running:
        gateway = running[0]
        before = gateway.config
        misfit = tomllib.loads(POLICY.replace('rule = "keep"', 'rule = "generalize_location"\ngrid = "100m"'))
        await unchecked_desired(hub, {"config": {"gateway": {"log_level": "debug"}}, "policy": misfit})
        await report(gateway)
        await _until(lambda: gateway.desired.last_error != "")
        assert "desired policy" in gateway.desired.last_error, gateway.desired.last_error
        assert gateway.config == before and gateway.desired.applied_etag == "" and len(running) == 1
        assert logging.getLogger().level == root, "the refused document's level is not in force"


@pytest.mark.usefixtures("levels_restored")
async def test_a_desired_config_changing_log_levels_and_more_restarts_the_pipeline_with_both(setup):
    hub, config = setup
    async with supervised(config) as running:
        await hub.set_desired("device", "pole-7", {"config": {"gateway": {"log_levels": {"ocn.spool": "warning"}},
                                                              "batch": {"max_readings": 7}}})
        await report(running[0])
        await _until(lambda: len(running) == 2)
        assert running[1].config.batch.max_readings == 7
        assert logging.getLogger("ocn.spool").level == logging.WARNING
        await report(running[1])
        await _until(lambda: running[1].desired.applied_etag != "")
        assert len(running) == 2, "restarted once"


async def test_a_desired_config_that_does_not_validate_keeps_the_running_pipeline(setup):
    hub, config = setup
    async with supervised(config) as running:
        await unchecked_desired(hub, {"config": {"batch": {"span": "soon"}}})
        await report(running[0])
        await _until(lambda: running[0].desired.last_error != "")
        assert 'batch.span = "soon"' in running[0].desired.last_error
        assert len(running) == 1, "nothing was restarted"


async def test_the_transparency_notice_reaches_the_hub_register_and_follows_a_policy_swap(setup):
    hub, config = setup
    async with running_gateway(config) as gateway:
        await _until(lambda: not gateway.notices.pending)
        notices = await hub.store.notices(device_id="pole-7")
        assert len(notices) == 1
        first = notices[0].notice
        assert first["place"]["gateway_id"] == "pole-7"
        assert first["policy"]["digest"] == gateway.policy.digest.hex()
        await hub.set_desired("device", "pole-7", {"policy": QUANTIZED})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag != "")
        await _until(lambda: not gateway.notices.pending)
        notices = await hub.store.notices(device_id="pole-7")
        assert len(notices) == 2, "a new policy publishes a new notice"
        digests = {n.notice["policy"]["digest"] for n in notices}
        assert digests == {first["policy"]["digest"], gateway.policy.digest.hex()}


async def test_a_desired_config_that_fails_to_start_is_tried_once_and_the_last_good_one_runs(setup, tmp_path):
    import socket

    hub, config = setup
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        async with supervised(config) as running:
            await hub.set_desired(
                "device", "pole-7", {"config": {"local_api": {"enabled": True, "listen": f"127.0.0.1:{port}"}}}
            )
            await report(running[0])
            await _until(lambda: len(running) == 2)
            restored = running[1]
            assert restored.config.digest == config.digest, "the last good config runs again"
            assert "cannot listen there" in restored.desired.last_error
            for _ in range(3):  # the hub keeps answering with the same document
                await report(restored)
                await asyncio.sleep(0.3)
            assert len(running) == 2, "a refused document is not tried again"
            device = await hub.store.device("pole-7")
            assert any("cannot listen there" in e for e in device.errors)
    finally:
        taken.close()


async def test_clearing_the_desired_config_at_the_hub_returns_the_gateway_to_its_local_config(setup):
    hub, config = setup
    async with supervised(config) as running:
        await hub.set_desired("device", "pole-7", {"config": {"batch": {"max_readings": 7}}})
        await report(running[0])
        await _until(lambda: len(running) == 2)
        assert running[1].config.batch.max_readings == 7
        await hub.set_desired("device", "pole-7", None)
        await report(running[1])
        await _until(lambda: len(running) == 3)
        assert running[2].config.batch.max_readings == 20000
        assert running[2].desired.applied_etag == ""
        assert running[2].desired.saved_config_overlay() is None


async def test_a_restart_keeps_the_hubs_last_applied_config(setup):
    hub, config = setup
    async with supervised(config) as running:
        await hub.set_desired("device", "pole-7", {"config": {"batch": {"max_readings": 9}}})
        await report(running[0])
        await _until(lambda: len(running) == 2)
    async with supervised(config) as again:
        assert again[0].config.batch.max_readings == 9, "the hub's config is in force from the first second"


async def test_a_desired_config_may_not_change_the_gateway_identity(setup):
    hub, config = setup
    async with running_gateway(config) as gateway:
        await unchecked_desired(hub, {"config": {"gateway": {"id": "pole-8"}}})
        await report(gateway)
        await _until(lambda: gateway.desired.last_error != "")
        assert "may not change gateway.id" in gateway.desired.last_error


async def test_a_reading_the_privacy_stage_cannot_handle_is_dropped_and_counted_not_fatal(setup):
    from edge.privacy import parse_policy
    from edge.protocol.types import Reading
    from edge.schema import dumps_toml

    hub, config = setup
    async with running_gateway(config) as gateway:
        fine = dict(QUANTIZED, channels={"pm-1/*": {"rule": "quantize", "step": 0.001, "purpose": "air quality"}})
        gateway.swap_policy(parse_policy(dumps_toml(fine)))
        # 1e308 / 0.001 overflows a float: the kind of value a broken sensor sends once.
        await gateway.readings.put(Reading("pm-1/pm2_5", gateway._clock_ms(), 1e308, "ug/m3"))
        await _until(lambda: gateway.counters.readings_failed == 1)
        before = gateway.counters.readings_released
        await _until(lambda: gateway.counters.readings_released > before)
        assert not gateway.fatal.is_set()
        assert any("could not handle" in e for e in gateway.status_report()["errors"])



STEP_10 = tomllib.loads(POLICY.replace('version = "1"', 'version = "3"').replace('rule = "keep"', 'rule = "quantize"\nstep = 10.0'))


def offer(gateway: Gateway, signed: object, etag: str) -> None:
    """An offer as the transport hands it on, from whoever answers in the hub's place (a broker, a plain-http path)."""
    from edge.transport.contract import DesiredOffer

    assert gateway.uplink is not None
    gateway.uplink._desired_offered(DesiredOffer(signed, etag))


def ignored(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [str(getattr(r, "reason", "")) for r in caplog.records if r.getMessage() == "desired state ignored; the one in force stays"]


async def test_an_older_document_played_again_is_ignored_said_once_and_applied_when_the_hub_issues_it_anew(setup, caplog):
    hub, config = setup
    async with running_gateway(config) as gateway:
        assert gateway.uplink is not None and gateway.applier is not None
        await hub.set_desired("device", "pole-7", {"policy": QUANTIZED})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag != "")
        # The copy last offered: the hub signs the document in each answer, so it may be later than the one applied.
        old_signed, old_etag = gateway.uplink.desired, gateway.desired.applied_etag
        assert isinstance(old_signed, dict) and old_signed["document"]["issued_ms"] >= gateway.desired.applied_issued_ms
        await hub.set_desired("device", "pole-7", {"policy": STEP_10})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag not in ("", old_etag))
        in_force, etag = gateway.policy.digest, gateway.desired.applied_etag
        for _ in range(3):  # straight to the applier: each is looked at, said once
            gateway.applier.on_desired(old_signed, old_etag)
            await asyncio.sleep(0.2)
        assert (gateway.policy.digest, gateway.desired.applied_etag) == (in_force, etag)
        assert gateway.desired.refused_etag == "", "ignored, not refused: the ETag is not held against the hub"
        assert gateway.desired.ignored.startswith(f"desired {old_etag} ignored: it was issued at ")
        assert len(ignored(caplog)) == 1 and "not after the document in force" in ignored(caplog)[0]
        # The same document again at the hub: the same ETag, signed anew, later: applied.
        await hub.set_desired("device", "pole-7", {"policy": QUANTIZED})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag == old_etag)
        assert gateway.desired.applied_issued_ms > old_signed["document"]["issued_ms"]
        assert gateway.policy.digest != in_force and gateway.desired.errors() == []


async def test_an_unsigned_clear_is_ignored_once_the_hub_dates_its_documents_and_its_signed_clear_returns_to_the_local_config(setup):
    hub, config = setup
    async with running_gateway(config) as gateway:
        assert gateway.uplink is not None
        local = gateway.policy.digest
        await hub.set_desired("device", "pole-7", {"policy": QUANTIZED})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag != "")
        etag, signed = gateway.desired.applied_etag, gateway.uplink.desired
        assert isinstance(signed, dict)
        offer(gateway, None, "")
        await _until(lambda: "unsigned clear" in gateway.desired.ignored)
        assert gateway.desired.applied_etag == etag and gateway.policy.digest != local
        # Nor is a document of the hub's sent as a clear, nor the signed clear of another gateway; none is held against an ETag.
        offer(gateway, signed, "")
        await _until(lambda: "only a signed clear has" in gateway.desired.ignored)
        offer(gateway, hub.hub.ingest.signer.sign_clear("pole-8"), "")
        await _until(lambda: "not 'pole-7'" in gateway.desired.ignored)
        assert gateway.desired.last_error == "" and gateway.desired.errors() == [gateway.desired.ignored], "reported, not a refusal"
        assert gateway.desired.applied_etag == etag and gateway.desired.refused_etag == ""
        await hub.set_desired("device", "pole-7", None)
        await report(gateway)  # the hub answers the gateway's report of a document in force with its signed clear
        await _until(lambda: gateway.desired.applied_etag == "")
        assert gateway.policy.digest == local
        cleared_ms = gateway.desired.applied_issued_ms
        assert cleared_ms is not None and cleared_ms > signed["document"]["issued_ms"], "the clear, dated after the document"
    # After a restart the clear's date is still in force: the hub's document played again is ignored.
    async with running_gateway(config) as gateway:
        assert gateway.applier is not None
        assert gateway.desired.applied_issued_ms == cleared_ms
        gateway.applier.on_desired(signed, etag)
        await _until(lambda: "ignored" in gateway.desired.ignored)
        assert gateway.desired.applied_etag == "" and gateway.policy.digest == local


async def test_a_gateway_takes_an_undated_hubs_documents_and_unsigned_clear_then_keeps_the_date_once_its_hub_dates_them(
        setup, monkeypatch, caplog):
    """A hub from before issue times and signed clears (OXP §8.4): its documents carry neither, and it clears with null. Once
    that hub is upgraded, the document in force comes back dated, and the gateway keeps its date without applying it again."""
    from edge.protocol.desired import sign_document

    hub, config = setup
    signer = hub.hub.ingest.signer
    dated_sign, dated_clear = signer.sign, signer.sign_clear
    monkeypatch.setattr(signer, "sign", lambda document: sign_document(document, signer.key()))
    monkeypatch.setattr(signer, "sign_clear", lambda device_id: None)
    async with running_gateway(config) as gateway:
        assert gateway.uplink is not None and gateway.applier is not None
        local = gateway.policy.digest
        await hub.set_desired("device", "pole-7", {"policy": QUANTIZED})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag != "")
        assert gateway.policy.digest != local and gateway.desired.applied_issued_ms is None
        undated, undated_etag = gateway.uplink.desired, gateway.desired.applied_etag
        await hub.set_desired("device", "pole-7", None)
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag == "")
        assert gateway.policy.digest == local
        await hub.set_desired("device", "pole-7", {"policy": STEP_10})
        await report(gateway)
        await _until(lambda: gateway.desired.applied_etag not in ("", undated_etag))
        etag, in_force = gateway.desired.applied_etag, gateway.policy.digest
        applied = len([r for r in caplog.records if r.getMessage() == "desired state applied"])
        # The hub upgraded while the gateway runs its document: the same ETag comes back dated.
        monkeypatch.setattr(signer, "sign", dated_sign)
        monkeypatch.setattr(signer, "sign_clear", dated_clear)
        await report(gateway)
        await _until(lambda: gateway.desired.applied_issued_ms is not None)
        assert (gateway.desired.applied_etag, gateway.policy.digest, gateway.desired.last_error) == (etag, in_force, "")
        assert len([r for r in caplog.records if r.getMessage() == "desired state applied"]) == applied, "its date kept, not applied again"
        gateway.applier.on_desired(undated, undated_etag)  # the undated hub's older document played again: ignored now
        await _until(lambda: "carries no issue time" in gateway.desired.ignored)
        offer(gateway, None, "")
        await _until(lambda: "unsigned clear" in gateway.desired.ignored)
        assert (gateway.desired.applied_etag, gateway.policy.digest) == (etag, in_force)
