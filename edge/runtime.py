"""The supervisor: builds the gateway's pipeline from its config and runs it until told to stop.

    bus owners ─► drivers ─► [readings queue] ─► privacy ─► [released queue] ─► batcher ─► spool ─► uplink

Every arrow out of a driver is a bounded queue, so a slow stage pushes back on the
drivers instead of growing memory.  Each bus owner, device, stage, the uplink, the
local API and the systemd watchdog is its own task; a failing driver is restarted
by its DeviceRunner and never takes another task down.  A stage task that dies is
a bug: the gateway then stops cleanly and exits non-zero so systemd restarts it.
"""

from __future__ import annotations

import asyncio
import collections
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
from edge.desired import DesiredApplier, DesiredState, Reload, overlay_config
from edge.notify import Notifier, watchdog_loop
from edge.private import private_directory
from edge.protocol.types import Channel, Reading
from edge.supervise import DeviceRunner

__all__ = ["Gateway", "PipelineCounters", "StartError", "run_gateway"]

log = logging.getLogger("ocn.runtime")

QUEUE_SIZE = 10_000
STOP_TIMEOUT_S = 10.0  # for all tasks together: systemd's TimeoutStopSec is 30 s


class StartError(Exception):
    """The gateway cannot start: a file it needs is missing or invalid. The message says which and why."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class PipelineCounters:
    """What moved through the pipeline since start (the demo summary and the status line read these)."""

    readings_read: int = 0
    readings_released: int = 0
    readings_failed: int = 0  # readings a stage could not handle (a bug or an impossible value), dropped
    started_monotonic: float = field(default_factory=time.monotonic)


@dataclass
class _Device:
    config: Any
    driver_cls: type[Driver]
    context: DeviceContext
    channels: list[Channel]
    runner: DeviceRunner | None = None


class Gateway:
    """One running pipeline: ``await start()``, then ``await stop()`` (which flushes memory to the spool)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        driver_lookup: Callable[[str], type[Driver]] = load_driver,
        clock_ms: Callable[[], int] = wall_clock_ms,
        notifier: Notifier | None = None,
        policy: Any = None,
        desired: DesiredState | None = None,
        base_config: GatewayConfig | None = None,
        request_reload: Callable[[Reload], None] | None = None,
        fallback_to_local_policy: bool = False,
    ) -> None:
        self.config = config
        self.policy = policy  # None: load [privacy].policy at start
        # True when `policy` is the hub's saved one: if it no longer fits the devices, run the local one.
        self._fallback_to_local_policy = fallback_to_local_policy
        self.desired = desired or DesiredState(config.gateway.state_dir, device_id=config.gateway.id)
        self.applier = DesiredApplier(
            self, state=self.desired, base_config=base_config or config, request_reload=request_reload
        )
        self._driver_lookup = driver_lookup
        self._clock_ms = clock_ms
        self.notifier = notifier or Notifier()
        self.counters = PipelineCounters()
        self.readings: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_SIZE)
        self.released: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_SIZE)
        # Released by the privacy stage but not yet in the released queue (it was full):
        # kept here so a cancel or a policy swap can never lose or mislabel them.
        self._unreleased: collections.deque[Reading] = collections.deque()
        self._release_lock = asyncio.Lock()
        self.buses: dict[str, Any] = {}
        self.devices: list[_Device] = []
        self._bus_tasks: list[asyncio.Task[None]] = []
        self._device_tasks: list[asyncio.Task[None]] = []
        self._stage_tasks: list[asyncio.Task[None]] = []
        self._service_tasks: list[asyncio.Task[None]] = []
        self._local_api_runner: Any = None
        self._notice_changed = asyncio.Event()
        self._notice_cache: tuple[bytes, dict[str, Any]] | None = None
        self._failed_channels: set[str] = set()
        self.spool: Any = None
        self.privacy: Any = None
        self.batcher: Any = None
        self.uplink: Any = None
        self.boot: Any = None
        self.key_id = b""
        self.spool_stats_at_stop: dict[str, Any] | None = None
        self.fatal = asyncio.Event()  # a pipeline task died: run_gateway stops and exits non-zero
        self.stopped = False
        self.running = False  # true once start() has completed

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

    def channels(self) -> list[Channel]:
        """Every channel the configured devices declare (what the privacy policy is checked against)."""
        return [c for d in self.devices for c in d.channels]

    def _privacy_stage(self, policy: Any, *, budget: bool = True) -> Any:
        from edge.privacy import PrivacyStage

        # The epsilon spent survives restarts and policy swaps: a restart must not refill the budget.
        state = Path(self.config.gateway.state_dir) / "privacy-budget.json"
        return PrivacyStage(policy, self.channels(), clock_ms=self._clock_ms, budget_state=state if budget else None)

    def check_policy(self, policy: Any) -> None:
        """Raise PolicyError if ``policy`` does not fit this gateway's channels; changes nothing."""
        self._privacy_stage(policy, budget=False)

    async def start(self) -> None:
        """Open the spool, load keys and policy, build every stage and start their tasks."""
        from edge.batcher import Batcher
        from edge.enrol import ensure_device_key
        from edge.privacy import PolicyError, load_policy
        from edge.protocol import key_id, load_private_key
        from edge.spool import Spool

        cfg = self.config
        state = private_directory(cfg.gateway.state_dir)

        key_path, created = ensure_device_key(Path(cfg.uplink.key))
        if created:
            log.info("created device key", extra={"path": str(key_path)})
        private_key = load_private_key(key_path)
        self.key_id = key_id(private_key.public_key())

        def local_policy() -> Any:
            return load_policy(
                cfg.privacy.policy,
                governance_key=cfg.privacy.governance_key or None,
                require_signed=cfg.privacy.require_signed,
            )

        if self.policy is None:
            self.policy = local_policy()

        self.spool = await Spool.open(state / "spool.db", max_bytes=cfg.spool.max_size, when_full=cfg.spool.when_full)
        self.boot = await self.spool.begin_boot()
        if self.boot.unclean_stop:
            log.warning("previous run did not stop cleanly", extra={"boot_epoch": self.boot.boot_epoch})

        self._build_devices()
        try:
            self.privacy = self._privacy_stage(self.policy)
        except PolicyError as exc:
            if not self._fallback_to_local_policy:
                raise
            self.desired.record_failure(
                self.desired.applied_etag,
                f"the hub's policy ({self.desired.saved_policy_path()}) does not fit these devices: "
                + "; ".join(exc.problems) + f"; running {cfg.privacy.policy} instead",
            )
            self.policy = local_policy()
            self.privacy = self._privacy_stage(self.policy)
        policy = self.policy
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
                on_desired=self.applier.on_desired,
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
        if cfg.local_api.enabled:
            await self._start_local_api()
        for name, bus in self.buses.items():
            self._bus_tasks.append(asyncio.create_task(bus.run(), name=f"bus:{name}"))
        for dev in self.devices:
            personal = any(c.personal for c in dev.channels)
            dev.runner = DeviceRunner(dev.config.name, self._driver_factory(dev), self._emit, personal=personal)
            self._device_tasks.append(asyncio.create_task(dev.runner.run(), name=f"device:{dev.config.name}"))
        for coro, name in (
            (self._privacy_loop(), "stage:privacy"),
            (self._privacy_ticks(), "stage:privacy-windows"),
            (self._batcher_loop(), "stage:batcher"),
            (self.batcher.run(), "stage:batcher-timer"),
        ):
            self._watch(asyncio.create_task(coro, name=name), self._stage_tasks)
        if self.uplink is not None:
            self._watch(asyncio.create_task(self.uplink.run(), name="uplink"), self._service_tasks)
            self._watch(asyncio.create_task(self._publish_notice(), name="notice"), self._service_tasks)
            self._notice_changed.set()
        # Not tracked: without WATCHDOG_USEC the watchdog loop has nothing to do and returns.
        self._service_tasks.append(asyncio.create_task(watchdog_loop(self.notifier), name="watchdog"))

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
        self.running = True
        self.notifier.ready(f"{len(self.devices)} devices running")

    def _watch(self, task: asyncio.Task[Any], tasks: list[asyncio.Task[Any]]) -> None:
        """Keep a task that must run until the gateway stops: if it ends before that, the gateway is failing."""
        task.add_done_callback(self._task_done)
        tasks.append(task)

    def keep_until_stop(self, task: asyncio.Task[Any]) -> None:
        """A short-lived task (e.g. applying a desired document): cancelled at stop if still running."""
        self._service_tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stopped:
            return
        exc = task.exception()
        log.error(
            "pipeline task stopped; stopping the gateway so it is restarted",
            extra={"task": task.get_name(), "error": repr(exc)[:300] if exc else "returned"},
        )
        self.fatal.set()

    def _driver_factory(self, dev: _Device) -> Callable[[], Driver]:
        return lambda: dev.driver_cls(dev.context)

    def notice(self) -> dict[str, Any]:
        """The transparency notice for the policy in force now (rebuilt when the policy changes)."""
        from edge.privacy import build_notice

        if self._notice_cache is None or self._notice_cache[0] != self.policy.digest:
            self._notice_cache = (self.policy.digest, build_notice(self.policy, self.config, channels=self.channels()))
        return self._notice_cache[1]

    async def _publish_notice(self) -> None:
        """Send the notice to the hub's public register at start and after each policy change, until it lands."""
        attempt = 0
        while True:
            await self._notice_changed.wait()
            digest = self.policy.digest
            # Cleared only if the policy did not change while the notice was on its way.
            if await self.uplink.send_notice(self.notice()) and self.policy.digest == digest:
                self._notice_changed.clear()
                attempt = 0
                continue
            attempt += 1
            await asyncio.sleep(min(300.0, 2.0 ** min(attempt, 9)))

    async def _start_local_api(self) -> None:
        from aiohttp import web

        from edge.localapi import create_app
        from edge.privacy import render_notice_html

        app = create_app(notice_html=lambda: render_notice_html(self.notice()), notice_json=self.notice, status=self.status)
        self._local_api_runner = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        listen = self.config.local_api.listen
        try:
            await web.TCPSite(runner, listen.host, listen.port).start()
        except OSError as exc:
            raise StartError(
                f"local_api.listen = {str(listen)!r}: cannot listen there ({exc.strerror or exc}); "
                "change [local_api] listen or set enabled = false"
            ) from None
        log.info("local API listening", extra={"listen": str(listen)})

    # -- the stages -------------------------------------------------------------------------

    async def _emit(self, reading: Reading) -> None:
        self.counters.readings_read += 1
        await self.readings.put(reading)

    async def _release(self, out: list[Reading]) -> None:
        self.counters.readings_released += len(out)
        self._unreleased.extend(out)
        async with self._release_lock:
            while self._unreleased:
                await self.released.put(self._unreleased[0])
                self._unreleased.popleft()

    def _process(self, reading: Reading) -> list[Reading]:
        """One reading through the privacy stage; a reading it cannot handle is dropped and counted, not fatal."""
        try:
            return self.privacy.process(reading)
        except Exception as exc:  # noqa: BLE001 - one bad value must not stop every other reading
            self.counters.readings_failed += 1
            if reading.channel not in self._failed_channels:  # once per channel; never the value
                self._failed_channels.add(reading.channel)
                log.error(
                    "privacy stage cannot handle a reading; dropped",
                    extra={"channel": reading.channel, "error": type(exc).__name__},
                )
            return []

    async def _privacy_loop(self) -> None:
        while True:
            reading = await self.readings.get()
            await self._release(self._process(reading))

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
            "readings_failed": self.counters.readings_failed,
            "queues": {"readings": self.readings.qsize(), "released": self.released.qsize() + len(self._unreleased)},
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
        from edge.enrol import read_enrolment_record

        # What first-boot enrolment came to (a refused token above all), for the technician on site.
        enrolment = read_enrolment_record(Path(self.config.gateway.state_dir))
        if enrolment:
            out["enrolment"] = enrolment
        return out

    def status_report(self) -> dict[str, Any]:
        """The fields of the signed status report the uplink sends to the hub."""
        spool = self.spool.stats() if self.spool else {}
        errors = [f"{d.config.name}: {d.runner.last_error}" for d in self.devices if d.runner and d.runner.failing]
        if self.uplink is not None and not self.uplink.reachable and self.uplink.counters.last_error:
            errors.append(f"uplink: {self.uplink.counters.last_error}")
        if self.desired.last_error:
            errors.append(self.desired.last_error)
        if self.counters.readings_failed:
            errors.append(f"privacy stage dropped {self.counters.readings_failed} readings it could not handle")
        return {
            "device_id": self.config.gateway.id,
            "ts_ms": self._clock_ms(),
            "software_version": __version__,
            "boot_epoch": self.boot.boot_epoch if self.boot else 0,
            "unclean_stops": getattr(self.boot, "unclean_stops_total", 0),
            "spool_batches": spool.get("batches", 0),
            "spool_bytes": spool.get("bytes", 0),
            "readings_dropped": spool.get("readings_dropped", 0),
            "policy_digest": self.policy.digest if self.policy is not None else b"",
            "config_digest": self.config.digest,
            "applied_etag": self.desired.applied_etag,
            "errors": errors,
        }

    # -- policy swap ------------------------------------------------------------------------

    def _hand_released_to_batcher(self) -> None:
        """Everything the privacy stage released so far, in order, straight into the batcher."""
        while not self.released.empty():
            self.batcher.add_nowait(self.released.get_nowait())
        while self._unreleased:
            self.batcher.add_nowait(self._unreleased.popleft())

    def swap_policy(self, policy: Any) -> None:
        """Put a validated policy in force between two readings.

        Synchronous on purpose: nothing else runs on the loop meanwhile, so every
        reading is handled by exactly one of the two policies.  What the old policy
        released (including its last, closing windows) reaches the batcher before the
        policy digest changes, and the old stage charges its last releases to the
        budget file before the new stage reads it.
        """
        self.check_policy(policy)
        self._hand_released_to_batcher()
        old = self.privacy
        closing = old.flush(self._clock_ms())
        self.counters.readings_released += len(closing)
        for reading in closing:
            self.batcher.add_nowait(reading)
        self.privacy = self._privacy_stage(policy)
        self.policy = policy
        self.batcher.set_policy(policy.digest, self.privacy.output_channels())
        self._notice_changed.set()
        log.info("policy swapped", extra={"policy": policy.digest.hex()[:16], "previous": old.policy.digest.hex()[:16]})

    # -- shutdown ---------------------------------------------------------------------------

    async def stop(self, *, drain_timeout_s: float = 0.0, reloading: bool = False) -> None:
        """Stop reading, push everything in memory through privacy and the batcher into the spool.

        With ``drain_timeout_s`` the uplink keeps sending for up to that long, until the
        spool is empty; what is left stays in the spool for the next start.  With
        ``reloading`` systemd hears RELOADING=1 instead of STOPPING=1.  Each step runs
        even when an earlier one failed, and waiting for tasks is bounded in total.
        """
        if self.stopped:
            return
        self.stopped = True
        self.notifier.send("RELOADING=1" if reloading else "STOPPING=1")
        if self.running:
            log.info("stopping: flushing readings in memory to the spool")
        deadline = time.monotonic() + STOP_TIMEOUT_S
        await _cancel(self._device_tasks, deadline)
        await _cancel(self._bus_tasks, deadline)
        await _cancel(self._stage_tasks, deadline)
        with _step("flush readings in memory to the spool"):
            await self._flush_memory()
        if self.uplink is not None and drain_timeout_s > 0:
            with _step("drain the spool to the hub"):
                await self._drain(drain_timeout_s)
        await _cancel(self._service_tasks, deadline)
        if self.uplink is not None:
            with _step("close the uplink"):
                await self.uplink.aclose()
        if self._local_api_runner is not None:
            with _step("close the local API"):
                await self._local_api_runner.cleanup()
        if self.spool is not None:
            with _step("close the spool"):
                self.spool_stats_at_stop = self.spool.stats()
                await self.spool.mark_clean_shutdown()
                await self.spool.close()
        for name, bus in self.buses.items():
            with _step(f"close bus {name}"):
                await bus.aclose()
        if self.running:
            log.info("stopped cleanly", extra=_summary_fields(self))
        else:
            # A start that failed part-way: what it had opened is closed again, nothing ran.
            log.info("start abandoned; what it had opened is closed")

    async def _flush_memory(self) -> None:
        # Oldest first: what was released, then what the privacy stage had not yet taken,
        # then the windows still open.  Nothing consumes the queues concurrently now.
        if self.batcher is None:
            return
        self._hand_released_to_batcher()
        if self.privacy is not None:
            while not self.readings.empty():
                out = self._process(self.readings.get_nowait())
                self.counters.readings_released += len(out)
                for r in out:
                    self.batcher.add_nowait(r)
            closing = self.privacy.flush(self._clock_ms())
            self.counters.readings_released += len(closing)
            for r in closing:
                self.batcher.add_nowait(r)
        await self.batcher.flush()
        left = self.batcher.unsealed
        if left:
            log.error("readings could not be stored in the spool at shutdown", extra={"readings": left})

    async def _drain(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.uplink.wake()
        while self.spool.stats()["batches"] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def _step(what: str):  # type: ignore[no-untyped-def]
    """One shutdown step: a failure is logged and the next steps still run."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shutdown goes on whatever one step did
        log.error("shutdown step failed", extra={"step": what, "error": f"{type(exc).__name__}: {exc}"[:300]})


def _summary_fields(gw: Gateway) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "readings_read": gw.counters.readings_read,
        "readings_released": gw.counters.readings_released,
    }
    if gw.batcher is not None:
        fields["batches_sealed"] = gw.batcher.stats().get("batches_sealed", 0)
    return fields


async def _cancel(tasks: list[asyncio.Task[Any]], deadline: float) -> None:
    """Cancel tasks and wait for them until ``deadline``: one that ignores cancellation cannot hang shutdown."""
    for t in tasks:
        t.cancel()
    if tasks:
        _, stuck = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
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

    ``config`` is the local file's config; the hub's last applied desired config and
    policy are laid over it (``<state_dir>/desired/``) when they still validate.  A new
    desired config restarts the pipeline in this process: the running one is stopped
    (memory flushed to the spool), the new one started; if it fails to start, the last
    good one is started again and the failure reported upstream.  If a pipeline task
    dies, the gateway stops cleanly and ``gateway.fatal`` is set (exit non-zero).
    """
    from edge.enrol import EnrolError
    from edge.privacy import PolicyError
    from edge.spool import SpoolError
    from edge.uplink import UplinkError

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = kwargs.pop("notifier", None) or Notifier()
    desired = DesiredState(config.gateway.state_dir, device_id=config.gateway.id)
    reloads: asyncio.Queue[Reload] = asyncio.Queue()
    running_config, policy = _last_applied(config, desired)

    def make(cfg: GatewayConfig, pol: Any, *, fallback: bool = False) -> Gateway:
        return Gateway(
            cfg, policy=pol, desired=desired, base_config=config, request_reload=reloads.put_nowait,
            notifier=notifier, fallback_to_local_policy=fallback, **kwargs,
        )

    gateway = make(running_config, policy, fallback=policy is not None)
    try:
        try:
            await gateway.start()
        except (PolicyError, EnrolError, SpoolError, UplinkError) as exc:
            raise StartError(str(exc)) from None
        if started is not None:
            started(gateway)
        while True:
            waits = {
                asyncio.ensure_future(stop.wait()): "stop",
                asyncio.ensure_future(gateway.fatal.wait()): "fatal",
                asyncio.ensure_future(reloads.get()): "reload",
            }
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for fut in pending:
                fut.cancel()
            outcome = {waits[f]: f for f in done}
            if "stop" in outcome or "fatal" in outcome:
                break
            request = outcome["reload"].result()
            gateway = await _reload(gateway, request, make, desired)
            if started is not None:
                started(gateway)
    finally:
        await gateway.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        notifier.close()
    return gateway


async def _reload(
    gateway: Gateway, request: Reload, make: Callable[[GatewayConfig, Any], Gateway], desired: DesiredState
) -> Gateway:
    """Replace the running pipeline with one for ``request``; on failure bring the last good one back."""
    log.info("applying the hub's desired config: restarting the pipeline", extra={"etag": request.change.etag or "(local)"})
    await gateway.stop(reloading=True)
    candidate = make(request.config, request.policy)
    try:
        await candidate.start()
    except Exception as exc:  # noqa: BLE001 - whatever broke, the last good config comes back
        await candidate.stop(reloading=True)
        desired.record_failure(request.change.etag, f"the new config did not start: {exc}")
        previous = make(gateway.config, gateway.policy)
        try:
            await previous.start()
        except BaseException:
            # Not even the last good pipeline starts: close what it opened (spool, local API)
            # before the error ends the gateway, so the spool is not taken for a crash.
            await previous.stop(reloading=True)
            raise
        return previous
    desired.record_success(request.change, policy_toml=request.policy_toml)
    if request.config.gateway.log_level != gateway.config.gateway.log_level:
        logging.getLogger().setLevel(request.config.gateway.log_level.upper())
    return candidate


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
            desired.record_failure(
                desired.applied_etag, "the saved desired config no longer validates: " + "; ".join(exc.problems)
            )
    policy = None
    saved = desired.saved_policy_path()
    if saved is not None and not config.privacy.require_signed:
        try:
            policy = parse_policy(saved.read_text(), path=str(saved))
        except PolicyError as exc:
            desired.record_failure(desired.applied_etag, f"the saved desired policy {saved} no longer validates: {exc}")
    return config, policy
