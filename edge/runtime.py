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
from edge.desired import DesiredChange, DesiredError, DesiredState, overlay_config
from edge.notify import Notifier, watchdog_loop
from edge.supervise import DeviceRunner
from edge.types import Channel, Reading

__all__ = ["Gateway", "PipelineCounters", "Reload", "StartError", "run_gateway"]

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


@dataclass(frozen=True)
class Reload:
    """A validated desired config (and policy) waiting to replace the running pipeline."""

    config: GatewayConfig
    policy: Any
    change: DesiredChange
    policy_toml: str | None


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
        policy: Any = None,
        desired: DesiredState | None = None,
        request_reload: Callable[[Reload], None] | None = None,
    ) -> None:
        self.config = config
        self.policy = policy  # None: load [privacy].policy at start
        self.desired = desired or DesiredState(config.gateway.state_dir, device_id=config.gateway.id)
        self._request_reload = request_reload
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
        self._notice_changed = asyncio.Event()
        self._notice_cache: tuple[bytes, dict[str, Any]] | None = None
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

        if self.policy is None:
            self.policy = load_policy(
                cfg.privacy.policy,
                governance_key=cfg.privacy.governance_key or None,
                require_signed=cfg.privacy.require_signed,
            )
        policy = self.policy

        self.spool = await Spool.open(state / "spool.db", max_bytes=cfg.spool.max_size, when_full=cfg.spool.when_full)
        self.boot = await self.spool.begin_boot()
        if self.boot.unclean_stop:
            log.warning("previous run did not stop cleanly", extra={"boot_epoch": self.boot.boot_epoch})

        self._build_devices()
        channels = [c for d in self.devices for c in d.channels]
        # The epsilon spent survives restarts and policy swaps: a restart must not refill the budget.
        self.privacy = PrivacyStage(
            policy, channels, clock_ms=self._clock_ms, budget_state=state / "privacy-budget.json"
        )
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
                on_desired=self._on_desired,
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
            self._service_tasks.append(asyncio.create_task(self._publish_notice(), name="notice"))
            self._notice_changed.set()
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

    def notice(self) -> dict[str, Any]:
        """The transparency notice for the policy in force now (rebuilt when the policy changes)."""
        from edge.privacy import build_notice

        if self._notice_cache is None or self._notice_cache[0] != self.policy.digest:
            channels = [c for d in self.devices for c in d.channels]
            self._notice_cache = (self.policy.digest, build_notice(self.policy, self.config, channels=channels))
        return self._notice_cache[1]

    async def _publish_notice(self) -> None:
        """Send the notice to the hub's public register at start and after each policy change, until it lands."""
        attempt = 0
        while True:
            await self._notice_changed.wait()
            if await self.uplink.send_notice(self.notice()):
                self._notice_changed.clear()
                attempt = 0
                continue
            attempt += 1
            await asyncio.sleep(min(300.0, 2.0 ** min(attempt, 9)))

    async def _start_local_api(self, policy: Any) -> None:
        from aiohttp import web

        from edge.localapi import create_app
        from edge.privacy import render_notice_html

        app = create_app(notice_html=lambda: render_notice_html(self.notice()), notice_json=self.notice, status=self.status)
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
            "config_digest": self.config.digest,
            "applied_etag": self.desired.applied_etag,
            "errors": [f"{d.config.name}: {d.runner.last_error}" for d in self.devices if d.runner and d.runner.failing]
            + ([self.desired.last_error] if self.desired.last_error else []),
        }

    # -- desired state from the hub ---------------------------------------------------------

    def _on_desired(self, signed: Any, etag: str) -> None:
        if signed is None or etag == self.desired.applied_etag or self._stopped:
            return
        task = asyncio.create_task(self._apply_desired(signed, etag), name="desired")
        self._service_tasks.append(task)

    async def _apply_desired(self, signed: Any, etag: str) -> None:
        """Verify and validate the hub's desired document, then apply it whole or not at all."""
        try:
            change = self.desired.verify(signed, etag, await self._hub_key())
            policy, policy_toml = self._desired_policy(change)
            config = self._desired_config(change)
        except DesiredError as exc:
            self.desired.record_failure(etag, str(exc))
            return
        if config is not None:
            if self._request_reload is None:
                self.desired.record_failure(etag, "this gateway cannot restart its pipeline in place")
                return
            self._request_reload(Reload(config, policy or self.policy, change, policy_toml))
            return
        if policy is not None:
            self.swap_policy(policy)
        self.desired.record_success(change, policy_toml=policy_toml, config=None)

    async def _hub_key(self) -> Any:
        key = self.desired.hub_key()
        if key is not None:
            return key
        import aiohttp

        from edge.uplink import tls_context

        url = self.config.uplink.hub.rstrip("/") + "/oxp/v1/hub-key"
        ssl = tls_context(self.config.uplink.ca or None) if url.startswith("https://") else False
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.uplink.timeout)) as http:
                async with http.get(url, ssl=ssl) as resp:
                    if resp.status != 200:
                        raise DesiredError(f"GET {url} answered {resp.status}; cannot pin the hub's key yet")
                    pem = await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DesiredError(f"cannot fetch the hub's key from {url}: {exc}") from None
        try:
            return self.desired.pin_hub_key(pem)
        except ValueError as exc:
            raise DesiredError(f"the hub's key from {url} is not a PEM public key: {exc}") from None

    def _desired_policy(self, change: DesiredChange) -> tuple[Any, str | None]:
        from edge.privacy import PolicyError, PrivacyStage, parse_policy
        from edge.schema import dumps_toml

        if change.policy is None:
            return None, None
        if self.config.privacy.require_signed:
            raise DesiredError(
                "privacy.require_signed = true: a policy must arrive as a file signed by the governance key, "
                "so the hub's policy was not applied"
            )
        text = dumps_toml(change.policy)
        try:
            policy = parse_policy(text, path="desired-policy.toml")
            # Validate against the channels the devices declare before anything changes.
            PrivacyStage(policy, [c for d in self.devices for c in d.channels], clock_ms=self._clock_ms)
        except PolicyError as exc:
            raise DesiredError("; ".join(exc.problems) if hasattr(exc, "problems") else str(exc)) from None
        return policy, text

    def _desired_config(self, change: DesiredChange) -> GatewayConfig | None:
        from edge.config import ConfigError, effective_toml, parse_config
        from edge.schema import dumps_toml

        if change.config is None:
            return None
        merged = overlay_config(effective_toml(self.config), change.config)
        try:
            return parse_config(dumps_toml(merged), path=self.config.path)
        except ConfigError as exc:
            raise DesiredError("; ".join(exc.problems)) from None

    def swap_policy(self, policy: Any) -> None:
        """Put a validated policy in force between two readings.

        Synchronous on purpose: nothing else runs on the loop meanwhile, so every
        reading is handled by exactly one of the two policies.  What the old policy
        released is handed to the batcher before the batch's policy digest changes.
        """
        from edge.privacy import PrivacyStage

        channels = [c for d in self.devices for c in d.channels]
        state = Path(self.config.gateway.state_dir)
        new = PrivacyStage(policy, channels, clock_ms=self._clock_ms, budget_state=state / "privacy-budget.json")
        old, self.privacy = self.privacy, new
        while not self.released.empty():
            self.batcher.add_nowait(self.released.get_nowait())
        for reading in old.flush(self._clock_ms()):
            self.counters.readings_released += 1
            self.batcher.add_nowait(reading)
        self.batcher.set_channels(new.output_channels())
        self.batcher.set_policy_digest(policy.digest)
        self.policy = policy
        self._notice_changed.set()
        log.info("policy swapped", extra={"policy": policy.digest.hex()[:16], "previous": old.policy.digest.hex()[:16]})

    # -- shutdown ---------------------------------------------------------------------------

    async def stop(self, *, drain_timeout_s: float = 0.0, reloading: bool = False) -> None:
        """Stop reading, push everything in memory through privacy and the batcher into the spool.

        With ``drain_timeout_s`` the uplink keeps sending for up to that long, until the
        spool is empty; what is left stays in the spool for the next start.  With
        ``reloading`` systemd hears RELOADING=1 instead of STOPPING=1.
        """
        if self._stopped:
            return
        self._stopped = True
        if reloading:
            self.notifier.send("RELOADING=1")
        else:
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


STOP_TIMEOUT_S = 10.0


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel tasks and wait for them, but never let one that ignores cancellation hang the shutdown."""
    for t in tasks:
        t.cancel()
    if tasks:
        _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        for task in stuck:
            log.error("task did not stop when cancelled; leaving it behind", extra={"task": task.get_name()})
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task ended with an error", extra={"task": task.get_name(), "error": repr(task.exception())[:300]})
    tasks.clear()


async def run_gateway(
    config: GatewayConfig,
    *,
    stop: asyncio.Event | None = None,
    started: Callable[[Gateway], None] | None = None,
    **kwargs: Any,
) -> Gateway:
    """Run until SIGTERM/SIGINT (or `stop` is set), then shut down cleanly. Returns the stopped gateway.

    A desired config from the hub restarts the pipeline in this process: the running one
    is stopped (memory flushed to the spool), the new one started; if it fails to start,
    the last good config is started again and the failure reported upstream.
    """
    from edge.enrol import EnrolError
    from edge.privacy import PolicyError
    from edge.spool import SpoolError

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    desired = DesiredState(config.gateway.state_dir, device_id=config.gateway.id)
    reloads: asyncio.Queue[Reload] = asyncio.Queue()
    config, policy = _last_applied(config, desired)

    def make(cfg: GatewayConfig, pol: Any) -> Gateway:
        return Gateway(cfg, policy=pol, desired=desired, request_reload=reloads.put_nowait, **kwargs)

    gateway = make(config, policy)
    try:
        try:
            await gateway.start()
        except (PolicyError, EnrolError, SpoolError) as exc:
            raise StartError(str(exc)) from None
        if started is not None:
            started(gateway)
        while True:
            stopping = asyncio.ensure_future(stop.wait())
            reloading = asyncio.ensure_future(reloads.get())
            done, _ = await asyncio.wait({stopping, reloading}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            reloading.cancel()
            if stopping in done:
                break
            request = reloading.result()
            log.info("applying the hub's desired config: restarting the pipeline", extra={"etag": request.change.etag})
            await gateway.stop(reloading=True)
            candidate = make(request.config, request.policy)
            try:
                await candidate.start()
            except Exception as exc:  # noqa: BLE001 - whatever broke, the last good config comes back
                await candidate.stop(reloading=True)
                desired.record_failure(request.change.etag, f"the new config did not start: {exc}")
                gateway = make(gateway.config, gateway.policy)
                await gateway.start()
            else:
                desired.record_success(request.change, policy_toml=request.policy_toml, config=request.change.config)
                gateway = candidate
            if started is not None:
                started(gateway)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await gateway.stop()
    return gateway


def _last_applied(config: GatewayConfig, desired: DesiredState) -> tuple[GatewayConfig, Any]:
    """The config and policy to start with: the hub's last applied ones when they still validate."""
    from edge.config import ConfigError, effective_toml, parse_config
    from edge.privacy import PolicyError, parse_policy
    from edge.schema import dumps_toml

    overlay = desired.saved_config_overlay()
    if overlay is not None:
        try:
            config = parse_config(dumps_toml(overlay_config(effective_toml(config), overlay)), path=config.path)
        except ConfigError as exc:
            desired.record_failure(desired.applied_etag, "the saved desired config no longer validates: " + "; ".join(exc.problems))
    policy = None
    saved = desired.saved_policy_path()
    if saved is not None and not config.privacy.require_signed:
        try:
            policy = parse_policy(saved.read_text(), path=str(saved))
        except PolicyError as exc:
            desired.record_failure(desired.applied_etag, f"the saved desired policy no longer validates: {exc}")
    return config, policy
