"""What every streaming serial driver shares: configure on each new port session, read, decode, count bad frames."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from drivers.health import FAILING, Health
from drivers.sdk import BusDown, DeviceContext, Driver, Emit
from edge.protocol.types import Reading
from edge.util.logonce import LogOnce

__all__ = ["Decoder", "DecoderStats", "StreamDriver"]

Frame = TypeVar("Frame")


@dataclass(slots=True)
class DecoderStats:
    """Counters a decoder keeps; none of them holds a decoded value."""

    frames: int = 0
    bad_checksum: int = 0
    bad_frames: int = 0  # framed correctly but not understood (wrong length, unknown sentence, bad or impossible field)
    garbage_bytes: int = 0  # bytes skipped while looking for the start of a frame


class Decoder(abc.ABC, Generic[Frame]):
    """Turns a byte stream into frames, resynchronising after garbage and rejecting bad checksums."""

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        """Bytes of a frame not yet complete are held (more must come before it can be decoded)."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes from the port; returns the complete, valid frames now available, in order."""
        self._buffer += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    @abc.abstractmethod
    def _next(self) -> Frame | None:
        """Take one valid frame off the front of ``self._buffer``, or None when more bytes are needed."""

    def _skip(self, n: int) -> None:
        self.stats.garbage_bytes += n
        del self._buffer[:n]


class StreamDriver(Driver, Generic[Frame]):
    """A device on its own serial bus that streams frames (or answers queries) which a Decoder understands.

    Subclasses provide the decoder, the readings of one frame and, optionally,
    the setup commands sent after every (re)open and the query sent each poll.
    """

    RECOVERY_S = 60.0  # bad frames are "over" after this long with only good ones
    SILENCE_S = 30.0  # no valid frame for this long (at least three polls of a queried device) is logged once
    watches_silence = True  # a heartbeat is a valid frame: silence is judged by frames, not readings (health below)
    _FLAP_S = 60.0  # silent again this soon after frames returned: intermittent, logged once until steady this long
    QUIET_S = 0.25  # at a stop: nothing sent or received this long and no frame half-read, so nothing is under way
    stops_when_asked = True  # at a stop, a frame under way (or the reply to a query just sent) is read and emitted first

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.options = self.check_options(ctx.options)
        self.decoder = self.make_decoder()
        self._configured_session = 0
        self._bad = LogOnce(ctx.logger)
        self._bad_since = 0  # bad-frame count when the current fault began
        self._last_bad_at = 0.0
        self._last_frame_at = time.monotonic()
        self._bytes_at_last_frame = 0
        self._silence = LogOnce(ctx.logger, flap_s=self._FLAP_S)
        self._silent_since = 0.0  # when the last frame came before the current silence
        self._traffic_at = 0.0  # when a query was last sent or bytes last came (a stop waits until QUIET_S after it)

    @property
    def FLAP_S(self) -> float:
        """The flapping window of the silence note; a property so that shortening it (tests do) takes effect."""
        return self._silence.flap_s

    @FLAP_S.setter
    def FLAP_S(self, seconds: float) -> None:
        self._silence.flap_s = seconds

    @abc.abstractmethod
    def make_decoder(self) -> Decoder[Frame]: ...

    @abc.abstractmethod
    def readings(self, frame: Frame, ts_ms: int) -> Sequence[Reading]:
        """The readings one valid frame carries."""

    def setup_commands(self) -> Sequence[bytes]:
        """Commands sent after every open of the port (a replugged sensor forgets its mode)."""
        return ()

    def query_command(self) -> bytes | None:
        """A command sent every poll interval to ask for a frame, or None for a device that streams by itself."""
        return None

    async def run(self, emit: Emit) -> None:
        async with asyncio.TaskGroup() as tasks:
            drive = tasks.create_task(self._drive())
            watch = tasks.create_task(self._watch())
            reader = tasks.create_task(self._read(emit))
            await self.ctx.stopping.wait()
            drive.cancel()  # no new query
            watch.cancel()
            await self._until_quiet()  # the frame under way is read and emitted (the runtime's grace bounds this)
            reader.cancel()

    async def _until_quiet(self) -> None:
        """Return once nothing was sent or received for QUIET_S and no frame is half-read.

        A port that never falls quiet (a stream of garbage) keeps this waiting: the runtime's grace
        (STOP_GRACE_S) then cancels the driver.
        """
        while True:
            quiet_for = time.monotonic() - self._traffic_at
            if quiet_for >= self.QUIET_S and not self.decoder.pending:
                return
            await asyncio.sleep(max(self.QUIET_S - quiet_for, 0.02))

    async def _drive(self) -> None:
        bus = self.ctx.serial_bus()
        query = self.query_command()
        tick = self.ctx.poll_interval if query is not None else 1.0
        while True:
            session = await bus.wait_open()
            with contextlib.suppress(BusDown):
                if session != self._configured_session:
                    for command in self.setup_commands():
                        await bus.write(command)
                        await asyncio.sleep(0.05)  # sensors need a moment between commands
                    self._configured_session = session
                if query is not None:
                    await bus.write(query)
                    self._traffic_at = time.monotonic()
            await asyncio.sleep(tick)

    async def _watch(self) -> None:
        """Log once when the open port has delivered no valid frame for a while, and once when frames return.

        Pure garbage (a wrong baud rate, swapped wires) or silence (a dead sensor) would otherwise
        go unreported: neither ever makes a frame with a bad checksum.  A closed port is the bus
        owner's to report, so time with the port closed does not count.
        """
        bus = self.ctx.serial_bus()
        polls = 3 * self.ctx.poll_interval if self.query_command() is not None else 0.0
        while True:
            limit = max(self.SILENCE_S, polls)
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            if not bus.is_open:
                self._last_frame_at = now
                self._bytes_at_last_frame = bus.bytes_in
            elif not self._silence.failing("silence") and now - self._last_frame_at >= limit:
                self._silent_since = self._last_frame_at
                received = bus.bytes_in - self._bytes_at_last_frame
                hint = "garbage: check the baud rate and wiring" if received else "check power, wiring and the port"
                self._silence.failure(
                    "silence", "%s: no valid frame for %gs (%d bytes received, %s)", self.ctx.device_id,
                    round(now - self._last_frame_at, 1), received, hint,
                    intermittent=("%s: valid frames come only intermittently (%d bytes received, %s); "
                                  "next note when steady for %gs", self.ctx.device_id, received, hint, self.FLAP_S))

    def health(self) -> Health | None:
        """Failing while the open port delivers no valid frame (the silence :meth:`_watch` logs), with the same hint."""
        if not self._silence.failing("silence"):
            return None
        received = self.ctx.serial_bus().bytes_in - self._bytes_at_last_frame
        hint = "garbage: check the baud rate and wiring" if received else "check power, wiring and the port"
        return Health(FAILING, f"{self.ctx.device_id}: no valid frame for {time.monotonic() - self._last_frame_at:.0f} s "
                               f"({received} bytes received)", f"{hint}; try ocn-edge read {self.ctx.device_id}")

    def _framed(self) -> None:
        now = time.monotonic()
        self._silence.recovered("silence", "%s: valid frames again after %.0fs", self.ctx.device_id,
                                now - self._silent_since, steady=("%s: valid frames steady again", self.ctx.device_id))
        self._last_frame_at = now
        self._bytes_at_last_frame = self.ctx.serial_bus().bytes_in

    async def _read(self, emit: Emit) -> None:
        bus = self.ctx.serial_bus()
        while True:
            data = await bus.receive()
            self._traffic_at = time.monotonic()
            bad_before = self._bad_count()
            frames_before = self.decoder.stats.frames
            frames = self.decoder.feed(data)
            if self.decoder.stats.frames > frames_before:
                self._framed()
            self._report(bad_before, good=bool(frames))
            for frame in frames:
                for reading in self.readings(frame, self.ctx.clock_ms()):
                    await emit(reading)

    def _bad_count(self) -> int:
        s = self.decoder.stats
        return s.bad_checksum + s.bad_frames

    def _report(self, bad_before: int, *, good: bool) -> None:
        """Log once when bad frames start and once when only good frames came for RECOVERY_S; never content.

        The quiet period keeps a line with intermittent noise from logging every time a good
        frame slips between two bad ones.
        """
        bad_now = self._bad_count()
        now = time.monotonic()
        s = self.decoder.stats
        if bad_now > bad_before:
            self._last_bad_at = now
            if not self._bad.failing("bad frames"):
                self._bad_since = bad_before
            self._bad.failure("bad frames", "%s: bad frames from the device (checksum errors %d, unreadable frames %d)",
                              self.ctx.device_id, s.bad_checksum, s.bad_frames)
        elif good and now - self._last_bad_at >= self.RECOVERY_S:
            self._bad.recovered("bad frames", "%s: only good frames for %gs, after %d bad ones", self.ctx.device_id,
                                self.RECOVERY_S, bad_now - self._bad_since)

    def stats(self) -> dict[str, int]:
        s = self.decoder.stats
        return {"frames": s.frames, "bad_checksum": s.bad_checksum, "bad_frames": s.bad_frames,
                "garbage_bytes": s.garbage_bytes}
