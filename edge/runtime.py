"""One running pipeline: built from the gateway's config, started, and stopped without losing a reading.

    bus owners ─► drivers ─► [readings queue] ─► privacy ─► [released queue] ─► batcher ─► spool ─► uplink

This module assembles the stages and owns their start and stop; each job lives in its own
module: the queues and loops between drivers, privacy and batcher in `edge.flow`, delivery
in `edge.uplink` over a transport from `edge.transport`, the status report's fields in
`edge.statusreport`, the notice in `edge.notice`, the local API in `edge.localapi`, the hub's
desired state in `edge.desired`, and the process loop that replaces a pipeline for a new
config in `edge.service`.  Each bus owner, device, stage, the uplink, the local API and the
systemd watchdog is its own task; a failing driver is restarted by its DeviceRunner and never
takes another task down.  A stage task that dies is a bug: the gateway then stops cleanly and
exits non-zero so systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from drivers.registry import load_driver
from drivers.sdk import Driver, Emitter
from edge import __version__
from edge.batcher import Batcher
from edge.commissioning import Commissioning
from edge.config import GatewayConfig
from edge.desired import DesiredApplier, DesiredState, Reload, local_policy
from edge.devices import Devices
from edge.enrol import ensure_device_key, read_enrolment_record
from edge.flow import PipelineCounters, ReadingFlow
from edge.localapi import LocalApi, LocalApiError
from edge.logs import apply_levels
from edge.notice import NoticePublisher
from edge.notify import Notifier, watchdog_loop
from edge.privacy import Policy, PolicyError, PrivacyStage, build_notice, render_notice_html
from edge.private import private_directory
from edge.protocol import key_id, load_private_key
from edge.protocol.types import Channel, Reading
from edge.spool import BootInfo, Spool
from edge.statusreport import ReportFacts, status_report
from edge.transport import open_transport
from edge.update.report import last_update
from edge.update.updater import Updater, opt_path, release_key_path
from edge.uplink import Uplink
from edge.util.clock import now_ms

__all__ = ["Gateway", "PipelineCounters", "StartError"]

log = logging.getLogger("ocn.runtime")

STOP_TIMEOUT_S = 10.0  # for all tasks together: systemd's TimeoutStopSec is 30 s
STOP_GRACE_S = 2.0  # a poll under way at stop finishes and is emitted within this, or its driver is cancelled


class StartError(Exception):
    """The gateway cannot start: a file it needs is missing or invalid. The message says which and why."""


class Gateway:
    """One running pipeline: ``await start()``, then ``await stop()`` (which flushes memory to the spool)."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        driver_lookup: Callable[[str], type[Driver]] = load_driver,
        clock_ms: Callable[[], int] = now_ms,
        notifier: Notifier | None = None,
        policy: Policy | None = None,
        desired: DesiredState | None = None,
        base_config: GatewayConfig | None = None,
        request_reload: Callable[[Reload], None] | None = None,
        fallback_to_local_policy: bool = False,
    ) -> None:
        self.config = config
        self._policy = policy  # None: load [privacy].policy at start
        # True when `policy` is the hub's saved one: if it no longer fits the devices, run the local one.
        self._fallback_to_local_policy = fallback_to_local_policy
        self.desired = desired or DesiredState(config.gateway.state_dir, device_id=config.gateway.id)
        self._base_config = base_config or config
        self._request_reload = request_reload
        self._driver_lookup = driver_lookup
        self._clock_ms = clock_ms
        self.notifier = notifier or Notifier()
        self.counters = PipelineCounters()
        self.devices: Devices | None = None
        self._stage_tasks: list[asyncio.Task[None]] = []
        self._service_tasks: list[asyncio.Task[None]] = []
        # Built always, started only if [local_api] enabled: its address is known once it listens.
        self._local_api_runner = LocalApi(
            notice_html=lambda language: render_notice_html(self.notice(), language), notice_json=self.notice, status=self.status,
            latest=lambda: self.flow.latest if self.flow is not None else {}, state_dir=config.gateway.state_dir,
            public_notice=config.local_api.public_notice,
            commissioning=Commissioning(lambda: self.devices, lambda: self._policy),
        )
        self.spool: Spool | None = None
        self.flow: ReadingFlow | None = None
        self.batcher: Batcher | None = None
        self.uplink: Uplink | None = None
        self.applier: DesiredApplier | None = None
        self.updater: Updater | None = None
        self.boot: BootInfo | None = None
        self.notices = NoticePublisher(lambda: self.policy, self._build_notice, self._send_notice)
        self.key_id = b""
        self.spool_stats_at_stop: dict[str, Any] | None = None
        self.fatal = asyncio.Event()  # a pipeline task died: the service stops and exits non-zero
        self.stopped = False
        self.running = False  # true once start() has completed

    @property
    def policy(self) -> Policy:
        """The policy in force (after start; before it, the one start will use)."""
        if self._policy is None:
            raise RuntimeError("the gateway's policy is loaded at start")
        return self._policy

    @property
    def privacy(self) -> PrivacyStage | None:
        return self.flow.privacy if self.flow is not None else None

    @property
    def readings(self) -> asyncio.Queue[Reading]:
        """The drivers' queue into the privacy stage (exists once started)."""
        assert self.flow is not None, "the gateway is not started"
        return self.flow.readings

    # -- assembly ---------------------------------------------------------------------------

    def channels(self) -> list[Channel]:
        """Every channel the configured devices declare (what the privacy policy is checked against)."""
        return self.devices.channels() if self.devices is not None else []

    def _privacy_stage(self, policy: Policy, *, budget: bool = True) -> PrivacyStage:
        # The epsilon spent survives restarts and policy swaps: a restart must not refill the budget.
        state = Path(self.config.gateway.state_dir) / "privacy-budget.json"
        return PrivacyStage(policy, self.channels(), clock_ms=self._clock_ms, budget_state=state if budget else None)

    def check_policy(self, policy: Policy) -> None:
        """Raise PolicyError if ``policy`` does not fit this gateway's channels; changes nothing."""
        self._privacy_stage(policy, budget=False)

    def _first_privacy_stage(self) -> PrivacyStage:
        """The stage for the policy start was given, or the local one if the hub's saved policy no longer fits."""
        try:
            return self._privacy_stage(self.policy)
        except PolicyError as exc:
            if not self._fallback_to_local_policy:
                raise
            self.desired.record_failure(
                self.desired.applied_etag,
                f"the hub's policy ({self.desired.saved_policy_path()}) does not fit these devices: "
                + "; ".join(exc.problems) + f"; running {self.config.privacy.policy} instead",
            )
            self._policy = local_policy(self.config)
            return self._privacy_stage(self._policy)

    async def start(self) -> None:
        """Open the spool, load keys and policy, build every stage and start their tasks."""
        cfg = self.config
        state = private_directory(cfg.gateway.state_dir)

        key_path, created = ensure_device_key(Path(cfg.uplink.key))
        if created:
            log.info("created device key", extra={"path": str(key_path)})
        private_key = load_private_key(key_path)
        self.key_id = key_id(private_key.public_key())
        if self._policy is None:
            self._policy = local_policy(cfg)

        self.spool = await Spool.open(state / "spool.db", max_bytes=cfg.spool.max_size, when_full=cfg.spool.when_full)
        self.boot = await self.spool.begin_boot()
        if self.boot.unclean_stop:
            log.warning("previous run did not stop cleanly", extra={"boot_epoch": self.boot.boot_epoch})

        self.devices = Devices(cfg, driver_lookup=self._driver_lookup, clock_ms=self._clock_ms)
        privacy = self._first_privacy_stage()
        if cfg.uplink.hub:
            # An https hub's signed documents may have given a newer CA bundle (docs/updates.md, "The CA gateways trust").
            ca = (self.desired.hub_ca_path() if cfg.uplink.hub.startswith("https://") else None) or cfg.uplink.ca or None
            transport = open_transport(cfg.uplink.hub, ca=ca, timeout_s=cfg.uplink.timeout, broker=cfg.uplink.broker,
                                       device_id=cfg.gateway.id, broker_password=cfg.uplink.broker_password)
            self.updater = Updater(state_dir=state, hub_url=cfg.uplink.hub, release_key=release_key_path(), opt=opt_path(), ca=lambda: ca)
            self.applier = DesiredApplier(
                self, state=self.desired, base_config=self._base_config, request_reload=self._request_reload, hub=transport,
                on_software=self.updater.want,
            )
            self.uplink = Uplink(
                spool=self.spool,
                transport=transport,
                private_key=private_key,
                device_id=cfg.gateway.id,
                daily_budget=cfg.uplink.daily_budget,
                status_facts=self.report_facts,
                on_desired=self.applier.on_desired,
                clock_ms=self._clock_ms,
            )

        self.batcher = Batcher(
            device_id=cfg.gateway.id,
            private_key=private_key,
            spool=self.spool,
            boot_epoch=self.boot.boot_epoch,
            policy_digest=self.policy.digest,
            channels=privacy.output_channels(),
            span_s=cfg.batch.span,
            flush_interval_s=cfg.batch.flush_interval,
            max_readings=cfg.batch.max_readings,
            codec=cfg.batch.codec,
            clock_ms=self._clock_ms,
            on_stored=self.uplink.wake if self.uplink is not None else None,
        )
        self.flow = ReadingFlow(privacy, self.batcher, counters=self.counters, clock_ms=self._clock_ms)
        if cfg.local_api.enabled:
            await self._start_local_api()
        self.devices.start(Emitter(self.flow.emit_all))
        for coro, name in self.flow.loops():
            self._watch(asyncio.create_task(coro, name=name), self._stage_tasks)
        if self.uplink is not None:
            self._watch(asyncio.create_task(self.uplink.run(), name="uplink"), self._service_tasks)
        if self.updater is not None and self.uplink is not None:
            # The hub's software target fetched within what the uplink's daily budget leaves (docs/updates.md).
            spool = self.spool
            self.updater.bind_budget(self.uplink.budget_left, self.uplink.spent_elsewhere, lambda: spool.stats_record().batches)
            self.updater.want(self.desired.saved_software())
            self._watch(self.updater.start(), self._service_tasks)
            self._watch(asyncio.create_task(self.notices.run(), name="notice"), self._service_tasks)
        # Not tracked: without WATCHDOG_USEC the watchdog loop has nothing to do and returns.
        self._service_tasks.append(asyncio.create_task(watchdog_loop(self.notifier), name="watchdog"))

        log.info(
            "gateway running",
            extra={
                "device_id": cfg.gateway.id,
                "key_id": self.key_id.hex(),
                "boot_epoch": self.boot.boot_epoch,
                "devices": len(self.devices),
                "buses": len(self.devices.buses),
                "policy": self.policy.digest.hex()[:16],
            },
        )
        self.running = True
        self.notifier.ready(f"{len(self.devices)} devices running")

    def _watch(self, task: asyncio.Task[None], tasks: list[asyncio.Task[None]]) -> None:
        """Keep a task that must run until the gateway stops: if it ends before that, the gateway is failing."""
        task.add_done_callback(self._task_done)
        tasks.append(task)

    def keep_until_stop(self, task: asyncio.Task[None]) -> None:
        """A short-lived task (e.g. applying a desired document): cancelled at stop if still running."""
        self._service_tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stopped:
            return
        exc = task.exception()
        log.error(
            "pipeline task stopped; stopping the gateway so it is restarted",
            extra={"task": task.get_name(), "error": repr(exc)[:300] if exc else "returned"},
        )
        self.fatal.set()

    # -- the notice and the local API -------------------------------------------------------

    def _build_notice(self, policy: Policy) -> dict[str, Any]:
        return build_notice(policy, self.config, channels=self.channels())

    async def _send_notice(self, notice: Mapping[str, Any]) -> bool:
        assert self.uplink is not None
        return await self.uplink.send_notice(notice)

    def notice(self) -> dict[str, Any]:
        """The transparency notice for the policy in force now (rebuilt when the policy changes)."""
        return self.notices.notice()

    @property
    def local_page(self) -> str | None:
        """The local API's address as a program on this gateway reaches it (the port record names it); None when off."""
        return self._local_api_runner.url

    async def _start_local_api(self) -> None:
        listen = self.config.local_api.listen
        try:
            await self._local_api_runner.start(listen)
        except LocalApiError as exc:
            raise StartError(str(exc)) from None
        log.info("local API listening", extra={"listen": str(listen)})

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A snapshot for the status line and the local API."""
        uptime = time.monotonic() - self.counters.started_monotonic
        out: dict[str, Any] = {
            "device_id": self.config.gateway.id,
            "software_version": __version__,
            "uptime_s": round(uptime, 1),
            "boot_epoch": self.boot.boot_epoch if self.boot else None,
            "readings_read": self.counters.readings_read,
            "readings_released": self.counters.readings_released,
            "readings_failed": self.counters.readings_failed,
            "queues": self.flow.queued() if self.flow is not None else {"readings": 0, "released": 0},
            "released_by_device": dict(self.flow.released_by_device) if self.flow is not None else {},
            "last_reading_ms": dict(self.flow.last_read_ms) if self.flow is not None else {},
            **(self.devices.status() if self.devices is not None else {"devices": {}, "buses": {}}),
        }
        if self.privacy is not None:
            out["privacy"] = self.privacy.stats()
        if self.batcher is not None:
            out["batcher"] = self.batcher.stats()
        if self.spool is not None:
            out["spool"] = self.spool.stats()
        if self.uplink is not None:
            out["uplink"] = self.uplink.stats()
        # What first-boot enrolment came to (a refused token above all), for the technician on site.
        enrolment = read_enrolment_record(Path(self.config.gateway.state_dir))
        if enrolment:
            out["enrolment"] = enrolment
        update = last_update(Path(self.config.gateway.state_dir))  # a refused or rolled-back update, for the technician
        if update:
            out["software_update"] = update
        return out

    def report_facts(self) -> ReportFacts:
        """What only the running gateway knows for the status report: policy, config, desired state, what fails."""
        errors = self.devices.failing() if self.devices is not None else []
        if self.uplink is not None and not self.uplink.reachable and self.uplink.counters.last_error:
            errors.append(f"uplink: {self.uplink.counters.last_error}")
        errors += self.desired.errors()
        if self.counters.readings_failed:
            errors.append(f"privacy stage dropped {self.counters.readings_failed} readings it could not handle")
        return ReportFacts(
            policy_digest=self._policy.digest if self._policy is not None else b"",
            config_digest=self.config.digest,
            applied_etag=self.desired.applied_etag,
            errors=errors,
            device_health=self.devices.health_report() if self.devices is not None else {},
            software_update=last_update(Path(self.config.gateway.state_dir)),
        )

    def status_report(self) -> dict[str, Any]:
        """The fields of the signed status report as the uplink would send them now."""
        assert self.spool is not None, "the gateway is not started"
        return status_report(
            self.spool.stats_record(), device_id=self.config.gateway.id, ts_ms=self._clock_ms(),
            boot_epoch=self.spool.boot_epoch, facts=self.report_facts(),
        )

    # -- policy swap ------------------------------------------------------------------------

    def swap_policy(self, policy: Policy) -> None:
        """Put a validated policy in force between two readings (`ReadingFlow.swap` says how no reading is lost)."""
        assert self.flow is not None, "the gateway is not started"
        self.check_policy(policy)
        previous = self.policy
        self.flow.swap(lambda: self._privacy_stage(policy))
        self._policy = policy
        self.notices.changed()
        log.info("policy swapped", extra={"policy": policy.digest.hex()[:16], "previous": previous.digest.hex()[:16]})

    def take_log_levels(self, config: GatewayConfig) -> None:
        """Run under ``config``, the running config but for its log levels (edge.config.only_log_levels_differ): the
        levels apply at once and the status reports carry its digest; nothing restarts, no reading waits."""
        self.config = config
        apply_levels(config.gateway.log_level, config.gateway.log_levels)
        log.info("log levels changed", extra={"log_level": config.gateway.log_level,
                                              "log_levels": ",".join(f"{k}={v}" for k, v in config.gateway.log_levels.items()) or "-"})

    # -- shutdown ---------------------------------------------------------------------------

    async def stop(self, *, drain_timeout_s: float = 0.0, reloading: bool = False) -> None:
        """Stop reading, push everything in memory through privacy and the batcher into the spool.

        A driver that can (``Driver.stops_when_asked``, the Modbus driver) first finishes the poll
        under way and emits it, within ``STOP_GRACE_S``; the others are cancelled at once.  The uplink
        starts no new batch, and the batch on its way gets up to ``STOP_GRACE_S`` for its answer, so
        one the hub stored is not left in the spool to be sent again (Uplink.finish_sending).
        With ``drain_timeout_s`` the uplink keeps sending for up to that long, until the
        spool is empty (then up to ``STOP_GRACE_S`` more for the batch on its way); what is left stays in the
        spool for the next start.  With
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
        if self.devices is not None:
            with _step("finish the polls under way"):
                await _finish_polls(self.devices, STOP_GRACE_S)
            await _cancel(self.devices.device_tasks, deadline)
            await _cancel(self.devices.bus_tasks, deadline)
        await _cancel(self._stage_tasks, deadline)
        if self.uplink is not None and drain_timeout_s <= 0:
            with _step("let the batch on its way be answered"):
                await self.uplink.finish_sending(STOP_GRACE_S)
        if self.flow is not None:
            with _step("flush readings in memory to the spool"):
                await self.flow.flush()
        if self.uplink is not None and drain_timeout_s > 0:
            with _step("drain the spool to the hub"):
                await self._drain(self.uplink, drain_timeout_s)
                await self.uplink.finish_sending(STOP_GRACE_S)
        await _cancel(self._service_tasks, deadline)
        if self.uplink is not None:
            with _step("close the uplink"):
                await self.uplink.aclose()
        with _step("close the local API"):
            await self._local_api_runner.aclose()
        if self.spool is not None:
            with _step("close the spool"):
                self.spool_stats_at_stop = self.spool.stats()
                await self.spool.mark_clean_shutdown()
                await self.spool.close()
        for name, bus in self.devices.buses.items() if self.devices is not None else ():
            with _step(f"close bus {name}"):
                await bus.aclose()
        if self.running:
            log.info("stopped cleanly", extra=self._summary_fields())
        else:
            # A start that failed part-way: what it had opened is closed again, nothing ran.
            log.info("start abandoned; what it had opened is closed")

    async def _drain(self, uplink: Uplink, timeout_s: float) -> None:
        assert self.spool is not None
        deadline = time.monotonic() + timeout_s
        uplink.wake()
        while self.spool.stats()["batches"] > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _summary_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "readings_read": self.counters.readings_read,
            "readings_released": self.counters.readings_released,
        }
        if self.batcher is not None:
            fields["batches_sealed"] = self.batcher.stats().get("batches_sealed", 0)
        return fields


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """One shutdown step: a failure is logged and the next steps still run."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shutdown goes on whatever one step did
        log.error("shutdown step failed", extra={"step": what, "error": f"{type(exc).__name__}: {exc}"[:300]})


async def _finish_polls(devices: Devices, grace_s: float) -> None:
    """Ask every driver that can (``Driver.stops_when_asked``) to finish the poll under way, emit it and return.

    Waits for those at most ``grace_s``; their readings join the flow before its stages are
    stopped and flushed.  Whatever is still running afterwards is cancelled by the caller.
    """
    # device_tasks holds one task per device, in order, once started (none if a start failed before).
    asked = [task for dev, task in zip(devices.devices, devices.device_tasks, strict=False)
             if dev.runner is not None and dev.runner.request_stop()]
    if asked:
        await asyncio.wait(asked, timeout=grace_s)


async def _cancel(tasks: list[asyncio.Task[None]], deadline: float) -> None:
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
