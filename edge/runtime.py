"""The supervisor: builds the gateway's pipeline from its config and runs it until told to stop.

    bus owners ─► drivers ─► [readings queue] ─► privacy ─► [released queue] ─► batcher ─► spool ─► uplink

Every arrow out of a driver is a bounded queue, so a slow stage pushes back on the
drivers instead of growing memory.  Each bus owner, device, stage, the uplink, the
local API and the systemd watchdog is its own task; a failing driver is restarted
by its DeviceRunner and never takes another task down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.registry import load_driver
from drivers.sdk import DeviceContext, Driver
from edge import __version__
from edge.config import GatewayConfig
from edge.notify import Notifier, watchdog_loop
from edge.supervise import DeviceRunner
from edge.types import Channel, Reading

__all__ = ["Gateway", "PipelineCounters", "StartError", "run_gateway"]

log = logging.getLogger("ocn.runtime")

QUEUE_SIZE = 10_000


class StartError(Exception):
    """The gateway cannot start: a file it needs is missing or invalid. The message says which and why."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class PipelineCounters:
    """What moved through the pipeline since start (the demo summary and the status line read these)."""

    readings_read: int = 0
    readings_released: int = 0
    started_monotonic: float = field(default_factory=time.monotonic)


@dataclass
class _Device:
    config: Any
    driver_cls: type[Driver]
    context: DeviceContext
    channels: list[Channel]
    runner: DeviceRunner | None = None


class Gateway:
    """One running gateway: call ``await start()``, then ``await stop()`` (which flushes to the spool)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        driver_lookup: Callable[[str], type[Driver]] = load_driver,
        clock_ms: Callable[[], int] = wall_clock_ms,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self._driver_lookup = driver_lookup
        self._clock_ms = clock_ms
        self.notifier = notifier or Notifier()
        self.counters = PipelineCounters()
        self.readings: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_SIZE)
        self.released: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_SIZE)
        self.buses: dict[str, Any] = {}
        self.devices: list[_Device] = []
        self._bus_tasks: list[asyncio.Task[None]] = []
        self._device_tasks: list[asyncio.Task[None]] = []
        self._stage_tasks: list[asyncio.Task[None]] = []
        self._service_tasks: list[asyncio.Task[None]] = []
        self._local_api_runner: Any = None
        self.spool: Any = None
        self.privacy: Any = None
        self.batcher: Any = None
        self.uplink: Any = None
        self.boot: Any = None
        self.key_id = b""
        self.spool_stats_at_stop: dict[str, Any] | None = None
        self._stopped = False

    # -- assembly ---------------------------------------------------------------------------

    def _build_devices(self) -> None:
        from drivers.buses import create_bus

        cfg = self.config
        enabled = [d for d in cfg.devices if d.enabled]
        used_buses = {d.bus for d in enabled if d.bus}
        for bus_cfg in cfg.buses:
            if bus_cfg.name in used_buses:
                self.buses[bus_cfg.name] = create_bus(bus_cfg)
        for dev in enabled:
            cls = self._driver_lookup(dev.driver)
            ctx = DeviceContext(
                device_id=dev.name,
                options=cls.check_options(dev.options),
                bus=self.buses.get(dev.bus) if dev.bus else None,
                address=dev.address,
                poll_interval=dev.poll_interval,
                logger=logging.getLogger(f"ocn.driver.{dev.name}"),
                clock_ms=self._clock_ms,
            )
            channels = list(cls(ctx).channels())
            self.devices.append(_Device(dev, cls, ctx, channels))

    async def start(self) -> None:
        """Open the spool, load keys and policy, build every stage and start their tasks."""
        from edge.batcher import Batcher
        from edge.privacy import PrivacyStage, load_policy
        from edge.enrol import ensure_device_key
        from edge.protocol import key_id, load_private_key
        from edge.spool import Spool

        cfg = self.config
        state = Path(cfg.gateway.state_dir)
        state.mkdir(parents=True, exist_ok=True)

        key_path, created = ensure_device_key(Path(cfg.uplink.key))
        if created:
            log.info("created device key", extra={"path": str(key_path)})
        private_key = load_private_key(key_path)
        self.key_id = key_id(private_key.public_key())

        policy = load_policy(
            cfg.privacy.policy,
            governance_key=cfg.privacy.governance_key or None,
            require_signed=cfg.privacy.require_signed,
        )

        self.spool = await Spool.open(state / "spool.db", max_bytes=cfg.spool.max_size, when_full=cfg.spool.when_full)
        self.boot = await self.spool.begin_boot()
        if self.boot.unclean_stop:
            log.warning("previous run did not stop cleanly", extra={"boot_epoch": self.boot.boot_epoch})

        self._build_devices()
        channels = [c for d in self.devices for c in d.channels]
        self.privacy = PrivacyStage(policy, channels, clock_ms=self._clock_ms)
        if cfg.uplink.hub:
            from edge.uplink import Uplink

            self.uplink = Uplink(
                spool=self.spool,
                hub_url=cfg.uplink.hub,
                private_key=private_key,
                device_id=cfg.gateway.id,
                ca=cfg.uplink.ca or None,
                timeout_s=cfg.uplink.timeout,
                daily_budget=cfg.uplink.daily_budget,
                status_provider=self.status_report,
            )

        self.batcher = Batcher(
            device_id=cfg.gateway.id,
            private_key=private_key,
            spool=self.spool,
            boot_epoch=self.boot.boot_epoch,
            policy_digest=policy.digest,
            channels=self.privacy.output_channels(),
            span_s=cfg.batch.span,
            flush_interval_s=cfg.batch.flush_interval,
            max_readings=cfg.batch.max_readings,
            codec=cfg.batch.codec,
            clock_ms=self._clock_ms,
            on_stored=self.uplink.wake if self.uplink is not None else None,
        )
        for name, bus in self.buses.items():
            self._bus_tasks.append(asyncio.create_task(bus.run(), name=f"bus:{name}"))
        for dev in self.devices:
            dev.runner = DeviceRunner(dev.config.name, self._driver_factory(dev), self._emit)
            self._device_tasks.append(asyncio.create_task(dev.runner.run(), name=f"device:{dev.config.name}"))
        self._stage_tasks = [
            asyncio.create_task(self._privacy_loop(), name="stage:privacy"),
            asyncio.create_task(self._privacy_ticks(), name="stage:privacy-windows"),
            asyncio.create_task(self._batcher_loop(), name="stage:batcher"),
            asyncio.create_task(self.batcher.run(), name="stage:batcher-timer"),
        ]
        if self.uplink is not None:
            self._service_tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
        self._service_tasks.append(asyncio.create_task(watchdog_loop(self.notifier), name="watchdog"))
        if cfg.local_api.enabled:
            await self._start_local_api(policy)

        log.info(
            "gateway running",
            extra={
                "device_id": cfg.gateway.id,
                "key_id": self.key_id.hex(),
                "boot_epoch": self.boot.boot_epoch,
                "devices": len(self.devices),
                "buses": len(self.buses),
                "policy": policy.digest.hex()[:16],
            },
        )
        self.notifier.ready(f"{len(self.devices)} devices running")

    def _driver_factory(self, dev: _Device) -> Callable[[], Driver]:
        return lambda: dev.driver_cls(dev.context)

    async def _start_local_api(self, policy: Any) -> None:
        from aiohttp import web

        from edge.localapi import create_app
        from edge.privacy import build_notice, render_notice_html

        notice = build_notice(policy, self.config)
        app = create_app(notice_html=render_notice_html(notice), notice_json=notice, status=self.status)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        listen = self.config.local_api.listen
        site = web.TCPSite(runner, listen.host, listen.port)
        await site.start()
        self._local_api_runner = runner
        log.info("local API listening", extra={"listen": self.config.local_api.listen})

    # -- the stages -------------------------------------------------------------------------

    async def _emit(self, reading: Reading) -> None:
        self.counters.readings_read += 1
        await self.readings.put(reading)

    async def _release(self, out: list[Reading]) -> None:
        for r in out:
            self.counters.readings_released += 1
            await self.released.put(r)

    async def _privacy_loop(self) -> None:
        while True:
            reading = await self.readings.get()
            await self._release(self.privacy.process(reading))

    async def _privacy_ticks(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self._release(self.privacy.tick(self._clock_ms()))

    async def _batcher_loop(self) -> None:
        while True:
            reading = await self.released.get()
            await self.batcher.add(reading)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A snapshot for the status line, the local API and the status report."""
        uptime = time.monotonic() - self.counters.started_monotonic
        out: dict[str, Any] = {
            "device_id": self.config.gateway.id,
            "software_version": __version__,
            "uptime_s": round(uptime, 1),
            "boot_epoch": self.boot.boot_epoch if self.boot else None,
            "readings_read": self.counters.readings_read,
            "readings_released": self.counters.readings_released,
            "queues": {"readings": self.readings.qsize(), "released": self.released.qsize()},
            "devices": {
                d.config.name: {
                    "driver": d.config.driver,
                    "readings": d.runner.readings if d.runner else 0,
                    "failing": bool(d.runner and d.runner.failing),
                    "restarts": d.runner.restarts if d.runner else 0,
                    "last_error": d.runner.last_error if d.runner else "",
                }
                for d in self.devices
            },
            "buses": {name: bus.stats() for name, bus in self.buses.items()},
        }
        if self.privacy is not None:
            out["privacy"] = self.privacy.stats()
        if self.batcher is not None:
            out["batcher"] = self.batcher.stats()
        if self.spool is not None:
            out["spool"] = self.spool.stats()
        if self.uplink is not None:
            out["uplink"] = self.uplink.stats()
        return out

    def status_report(self) -> dict[str, Any]:
        """The fields of the signed status report the uplink sends to the hub."""
        spool = self.spool.stats() if self.spool else {}
        return {
            "device_id": self.config.gateway.id,
            "ts_ms": self._clock_ms(),
            "software_version": __version__,
            "boot_epoch": self.boot.boot_epoch if self.boot else 0,
            "unclean_stops": getattr(self.boot, "unclean_stops_total", 0),
            "spool_batches": spool.get("batches", 0),
            "spool_bytes": spool.get("bytes", 0),
            "readings_dropped": spool.get("readings_dropped", 0),
            "policy_digest": self.privacy.policy.digest if self.privacy else b"",
            "config_digest": getattr(self.config, "digest", b""),
            "errors": [f"{d.config.name}: {d.runner.last_error}" for d in self.devices if d.runner and d.runner.failing],
        }

    # -- shutdown ---------------------------------------------------------------------------

    async def stop(self, *, drain_timeout_s: float = 0.0) -> None:
        """Stop reading, push everything in memory through privacy and the batcher into the spool.

        With ``drain_timeout_s`` the uplink keeps sending for up to that long, until the
        spool is empty; what is left stays in the spool for the next start.
        """
        if self._stopped:
            return
        self._stopped = True
        self.notifier.stopping()
        log.info("stopping: flushing readings in memory to the spool")
        await _cancel(self._device_tasks)
        await _cancel(self._bus_tasks)
        await _cancel(self._stage_tasks)
        # The queues now hold what the drivers emitted but the stages had not yet taken.
        if self.privacy is not None:
            while not self.readings.empty():
                await self._release_nowait(self.privacy.process(self.readings.get_nowait()))
            await self._release_nowait(self.privacy.flush(self._clock_ms()))
        if self.batcher is not None:
            while not self.released.empty():
                await self.batcher.add(self.released.get_nowait())
            await self.batcher.flush()
        if self.uplink is not None and drain_timeout_s > 0:
            await self._drain(drain_timeout_s)
        await _cancel(self._service_tasks)
        if self.uplink is not None:
            await self.uplink.aclose()
        if self._local_api_runner is not None:
            await self._local_api_runner.cleanup()
        if self.spool is not None:
            self.spool_stats_at_stop = self.spool.stats()
            await self.spool.mark_clean_shutdown()
            await self.spool.close()
        for bus in self.buses.values():
            with contextlib.suppress(Exception):
                await bus.aclose()
        log.info("stopped cleanly", extra=_summary_fields(self))

    async def _drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.uplink.wake()
        while self.spool.stats()["batches"] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _release_nowait(self, out: list[Reading]) -> None:
        # During shutdown nothing consumes the released queue concurrently: hand straight to the batcher.
        for r in out:
            self.counters.readings_released += 1
            await self.batcher.add(r)


def _summary_fields(gw: Gateway) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "readings_read": gw.counters.readings_read,
        "readings_released": gw.counters.readings_released,
    }
    if gw.batcher is not None:
        stats = gw.batcher.stats()
        fields["batches_sealed"] = stats.get("batches_sealed", 0)
    return fields


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            log.error("task ended with an error", extra={"task": task.get_name(), "error": repr(result)[:300]})
    tasks.clear()


async def run_gateway(config: GatewayConfig, *, stop: asyncio.Event | None = None, **kwargs: Any) -> Gateway:
    """Run until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly. Returns the stopped gateway."""
    from edge.enrol import EnrolError
    from edge.privacy import PolicyError
    from edge.spool import SpoolError

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config, **kwargs)
    try:
        try:
            await gateway.start()
        except (PolicyError, EnrolError, SpoolError) as exc:
            raise StartError(str(exc)) from None
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await gateway.stop()
    return gateway
