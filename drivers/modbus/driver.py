"""The profile-based Modbus driver: polls a device's register map through its bus owner in the fewest requests."""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.health import DEGRADED, Health
from drivers.modbus.adapter import ExceptionReply, LinkError
from drivers.modbus.bus import FLAP_S
from drivers.modbus.planner import ReadRequest, plan_reads
from drivers.modbus.profile import BlockDecoder, Profile, ProfileError, load_profile, shipped_profiles
from drivers.sdk import DeviceContext, Driver, Emit, Manifest, ModbusBusLike, OptionError, OptionSpec, emit_all_of
from edge.protocol.types import Channel, Reading
from edge.util.logonce import LogOnce

__all__ = ["ModbusDriver", "Poll"]


class _Slots:
    """One timer per deadline for the Modbus devices due then, which wakes them in the order of their unit ids.

    Devices with one poll interval are due at the same slot times (ModbusDriver.run).  Each with its own timer,
    asyncio's timer heap, which keeps no order among equal deadlines, woke them in an order that changed from slot to
    slot: a device's place in its bus's cycle, and so its readings' times, jittered by up to a whole cycle (20 units
    at 9600 baud: over a second).  Woken here in unit order, each bus's devices take its lock in that order every slot.
    """

    def __init__(self) -> None:
        # No reference to the loop: the registry below holds its _Slots strongly, which would keep its loop key alive.
        self._due: dict[float, tuple[asyncio.TimerHandle, list[tuple[int, asyncio.Future[None]]]]] = {}

    def wake_at(self, when: float, unit: int, nap: asyncio.Future[None]) -> None:
        """Resolve ``nap`` at ``when`` (loop time), after the naps of lower unit ids due then."""
        due = self._due.get(when)
        if due is None:
            due = self._due[when] = (nap.get_loop().call_at(when, self._fire, when), [])
        due[1].append((unit, nap))

    def forget(self, when: float, nap: asyncio.Future[None]) -> None:
        """``nap`` is no longer waited for (its device stopped): the timer goes with the last nap due then."""
        due = self._due.get(when)
        if due is None:
            return
        timer, naps = due
        naps[:] = [entry for entry in naps if entry[1] is not nap]
        if not naps:
            timer.cancel()  # a device that stopped leaves nothing to wake the loop
            del self._due[when]

    def _fire(self, when: float) -> None:
        for _, nap in sorted(self._due.pop(when)[1], key=lambda entry: entry[0]):
            if not nap.done():  # resolved by the stop meanwhile
                nap.set_result(None)


US = 1_000_000  # the poll grid counts whole microseconds


def grid_step(interval: float) -> int:
    """A poll interval (seconds) as the step of its grid, in whole microseconds."""
    return max(1, round(interval * US))


def slot_time(slot: int, step: int) -> float:
    """The loop time of slot ``slot`` of a grid of ``step`` microseconds.

    Computed from the instant's whole microseconds (an integer divided once, correctly rounded), so one instant is
    one float whatever the grid: devices polled every 0.2 s and every 0.3 s meet every 0.6 s at one deadline, and
    so at one timer, one wake-up.  ``slot * interval`` in floats often missed by an ulp (0.2 s and 0.3 s: at 1,672
    of 3,000 common instants past 1,000 s of loop time; 0.7 s and 1 s: 551), a second timer an ulp later, and a
    second wake-up, each time they met.
    """
    return slot * step / US


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Slots] = weakref.WeakKeyDictionary()


def _slots_of(loop: asyncio.AbstractEventLoop) -> _Slots:
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = _Slots()
    return slots


@dataclass(slots=True)
class Poll:
    """What one poll cycle got: readings, and each request that failed with why."""

    readings: list[Reading] = field(default_factory=list)
    failures: list[tuple[ReadRequest, LinkError]] = field(default_factory=list)
    skipped: list[ReadRequest] = field(default_factory=list)


class ModbusDriver(Driver):
    """Reads any Modbus device described by a profile (a shipped name or a path to a profile TOML)."""

    stops_when_asked = True  # a poll under way when the gateway stops is finished and emitted (Driver.stops_when_asked)

    manifest = Manifest(
        name="modbus",
        version="1.0.0",
        summary="Modbus RTU/TCP devices described by a declarative register profile",
        hardware=tuple(shipped_profiles()),
        transport="modbus",
        options={
            "profile": OptionSpec(str, help="a shipped profile name (see `ocn-edge drivers modbus`) or an absolute "
                                            "path to a profile TOML"),
            "profile_file": OptionSpec(Path, help="your own profile TOML; a relative path is relative to the "
                                                  "gateway config file"),
            "max_gap": OptionSpec(int, help="unused registers a request may read to save a request "
                                            "(default: the profile's max_gap)"),
            "timeout": OptionSpec(float, help="seconds to wait for this unit's reply (default: the bus timeout)"),
        },
    )

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        out = super().validate_options(options)
        shipped = ", ".join(shipped_profiles())
        if (out["profile"] is None) == (out["profile_file"] is None):
            raise OptionError("profile", out["profile"],
                              f"either profile (a shipped profile: {shipped}) or profile_file, not both or neither")
        option = "profile" if out["profile"] is not None else "profile_file"
        value = out[option]
        if option == "profile" and value not in shipped_profiles() and not Path(value).is_file():
            import difflib  # only for a "did you mean" hint

            near = difflib.get_close_matches(value, shipped_profiles(), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise OptionError(option, value, f"a shipped profile: {shipped}{hint}; or an absolute path to a profile "
                                             "TOML (or use profile_file)")
        try:
            load_profile(value)
        except ProfileError as exc:
            raise OptionError(option, value, f"a valid profile; {exc}") from exc
        if out["max_gap"] is not None and not 0 <= out["max_gap"] <= 125:
            raise OptionError("max_gap", out["max_gap"], "0..125 registers")
        if out["timeout"] is not None and not out["timeout"] > 0:
            raise OptionError("timeout", out["timeout"], "seconds > 0, e.g. 0.5")
        return out

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        options = self.check_options(ctx.options)
        self.profile: Profile = load_profile(options["profile"] or options["profile_file"])
        self.timeout: float | None = options["timeout"]
        if not isinstance(ctx.address, int) or not 1 <= ctx.address <= 247:
            raise OptionError("address", ctx.address, "a Modbus unit id 1..247")
        self.unit = ctx.address
        max_gap = self.profile.max_gap if options["max_gap"] is None else options["max_gap"]
        self.plan = plan_reads(self.profile.spans(), max_gap=max_gap, unreadable=self.profile.unreadable)
        self._by_request = {
            req: [r for r in self.profile.registers if req.holds(r.function, r.address, r.count)]
            for req in self.plan
        }
        # Per request, each register with its channel's gateway-wide id and its words' slice, built once instead of every poll.
        self._named = {
            req: [(r, ctx.channel_id(r.channel), r.address - req.address, r.address - req.address + r.count) for r in regs]
            for req, regs in self._by_request.items()
        }
        # Per request, one unpack for every value when all are plain numbers (BlockDecoder), with each value's channel.
        self._blocks = {req: (block, [(r, channel) for r, channel, _, _ in named]) for req, named in self._named.items()
                        if (block := BlockDecoder.build([(r, start) for r, _, start, _ in named], req.count)) is not None}
        self._bus: ModbusBusLike | None = None  # the context's, type-checked at the first poll
        self._refusals = LogOnce(ctx.logger, flap_s=FLAP_S)
        self._refused: dict[ReadRequest, str] = {}

    def health(self) -> Health | None:
        """Degraded while the unit refuses some of the profile's requests (it answers, so readings still come)."""
        refused = [(req, why) for req, why in self._refused.items() if self._refusals.failing(req)]
        if not refused:
            return None
        spans = ", ".join(f"{req.function} {req.address}..{req.end - 1} ({why})" for req, why in refused)
        return Health(DEGRADED, f"{self.ctx.device_id}: unit {self.unit} refuses {spans}",
                      "check that the profile matches the device's model and firmware (ocn-edge read shows each block)")

    def channels(self) -> Sequence[Channel]:
        return [
            Channel(self.ctx.channel_id(r.channel), unit=r.unit, kind=r.kind, resolution=r.resolution,
                    description=r.description)
            for r in self.profile.registers
        ]

    async def poll(self) -> Poll:
        """Run the plan once.  After the unit fails to answer, the rest of the cycle is skipped:
        a silent unit costs the bus at most one timeout per cycle."""
        result = Poll()
        bus = self._bus
        if bus is None:  # a Protocol isinstance check costs microseconds: once, not every poll
            bus = self._bus = self.ctx.modbus_bus()
        for i, req in enumerate(self.plan):
            try:
                words = await bus.read(self.unit, req.function, req.address, req.count,
                                       timeout=self.timeout, used=req.used)
            except ExceptionReply as exc:
                result.failures.append((req, exc))
                continue
            except LinkError as exc:
                result.failures.append((req, exc))
                result.skipped.extend(self.plan[i + 1:])
                break
            ts = self.ctx.clock_ms()
            readings = result.readings
            block = self._blocks.get(req)
            if block is not None:
                decoder, named = block
                for (reg, channel), number in zip(named, decoder.decode(words), strict=True):
                    if number is not None:
                        readings.append(Reading(channel, ts, number, reg.unit))
                continue
            for reg, channel, start, end in self._named[req]:
                value = reg.decode(words[start:end])
                if value is not None:
                    readings.append(Reading(channel, ts, value, reg.unit))
        return result

    async def run(self, emit: Emit) -> None:
        interval = self.ctx.poll_interval
        emit_all = emit_all_of(emit)  # a poll's readings handed over at once, not one await per reading
        stopping = self.ctx.stopping  # set when the gateway stops: the poll under way is finished and emitted first
        # No "not open" warning for the moments before the line first opens; a line that never opens does not hold up a stop.
        opened = asyncio.ensure_future(self.ctx.modbus_bus().wait_open())
        stopped = asyncio.ensure_future(stopping.wait())
        # Between polls the task sleeps on a plain future that its slot's timer or the stop resolves: an
        # asyncio.timeout around stopping.wait() cost a cancellation, two exceptions and a waiter per poll.
        loop = asyncio.get_running_loop()
        nap: asyncio.Future[None] | None = None

        def wake(_: object = None) -> None:
            if nap is not None and not nap.done():
                nap.set_result(None)

        try:
            try:
                await asyncio.wait((opened, stopped), return_when=asyncio.FIRST_COMPLETED)
            finally:
                opened.cancel()
            if not opened.cancelled() and opened.done():
                opened.result()  # wait_open's own error, if it raised one
            stopped.add_done_callback(wake)
            # The first poll now; the next ones in the slots of the interval's grid on the loop's clock (slot k at
            # k * interval, in whole microseconds: slot_time), the same times for every device polled at this interval,
            # and one instant the same float for every interval that meets there: a bus's devices then wake
            # together, at one timer's wake-up, instead of one after another as far apart as their starts (a restart,
            # a late bus), which could cost a wake-up each.  A slot number, not a sum of intervals: no drift.
            # In each slot the devices due then are woken in the order of their unit ids, by one timer (_Slots).
            slots = _slots_of(loop)
            step = grid_step(interval)
            slot = math.floor(loop.time() * US / step)
            while not stopping.is_set():
                result = await self.poll()
                if result.failures or self._refused:
                    self._report(result)
                if result.readings:
                    await emit_all(result.readings)
                slot += 1
                next_at = slot_time(slot, step)
                now = loop.time()
                if next_at < now:  # a slow cycle skips the missed slots instead of bursting to catch up
                    slot = math.floor(now * US / step) + 1
                    next_at = slot_time(slot, step)
                if stopping.is_set():
                    break
                nap = loop.create_future()
                slots.wake_at(next_at, self.unit, nap)
                try:
                    await nap
                finally:
                    slots.forget(next_at, nap)
                    nap = None
        finally:
            stopped.cancel()

    def _report(self, result: Poll) -> None:
        """Log a request the unit refuses once when it starts and once when it recovers.

        Called only after a poll with a failure or once a request has been refused: until then there is
        nothing to say and no recovery to note, so a healthy unit's poll costs no bookkeeping here.

        A request refused again within FLAP_S of recovering (a busy unit: exception 06 now and
        then) is logged once as refused intermittently, and once more when steady for FLAP_S.
        A silent unit or a lost line is the bus owner's to log (once, for every device on it)."""
        failed = {req: str(exc) for req, exc in result.failures if isinstance(exc, ExceptionReply)}
        where = f"{self.ctx.device_id}: unit {self.unit}"
        for req, why in failed.items():
            self._refused[req] = why
            span = f"{req.function} {req.address}..{req.end - 1}"
            self._refusals.failure(req, "%s: %s: %s", where, span, why, reason=why,
                                   intermittent=("%s: %s is refused intermittently (%s); next note when steady for %gs",
                                                 where, span, why, FLAP_S))
        answered = set(self.plan) - {req for req, _ in result.failures} - set(result.skipped)
        for req in answered:
            span = f"{req.function} {req.address}..{req.end - 1}"
            self._refusals.recovered(req, "%s: %s answers again", where, span, steady=("%s: %s steady again", where, span))
