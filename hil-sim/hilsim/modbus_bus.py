"""Modbus buses: an RS-485 RTU line on a pty shared by several units, and a Modbus TCP server on 127.0.0.1
(speaking Modbus TCP, or RTU frames over TCP like an RS-485-to-Ethernet converter).

The RTU line behaves like a multi-drop wire: a frame ends after 3.5 character
times of silence; a frame with a bad CRC or for a unit nobody has gets no reply
at all; the addressed unit answers after its response delay and the line's
inter-frame gap, its bytes paced at the baud rate and passed through the unit's
fault timeline (bad CRC, split, partial, noise, late, dropped, exception).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from hilsim.device import SimClock
from hilsim.faults import FaultTimeline
from hilsim.modbus_adapter import NoReply, Read, TcpServer, answer_pdu, crc16, exception_pdu
from hilsim.modbus_devices import ModbusDevice
from hilsim.ports import VirtualPort

__all__ = ["RtuLine", "TcpBus", "RTU_LINE_FAULTS", "TCP_FAULTS", "bits_per_character"]

log = logging.getLogger("hilsim.modbus")

# How far past the gateway's deadline a reply must leave to be marked "overrun" (RtuLine._overrun).
OVERRUN_MARGIN_S = 0.25


def bits_per_character(*, parity: str, stopbits: int, bytesize: int = 8) -> int:
    """Bits one character takes on the wire: start + data + parity + stop."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


class RtuLine:
    """One RS-485 Modbus RTU line on a pty; `link` is the path a gateway opens."""

    def __init__(
        self, *, name: str, link: Path, baudrate: int, parity: str = "N", stopbits: int = 1,
        frame_gap: float | None = None, faults: FaultTimeline | None = None, clock: SimClock | None = None,
        answer_within: float | None = None,
    ) -> None:
        self.name = name
        # The gateway's timeout for a unit's answer (what `ocn-edge sim` writes in its config): a reply this
        # simulator puts out later than that, plus the request's and the reply's wire time and OVERRUN_MARGIN_S,
        # after the request ended is marked "overrun" in the ledger (see _overrun).
        self.answer_within = answer_within
        self.overruns = 0
        self._overrun_noted_at: float | None = None
        self.faults = faults
        self.clock = clock
        self.units: dict[int, ModbusDevice] = {}
        self.port = VirtualPort(link=link, baudrate=baudrate,
                                bits_per_byte=bits_per_character(parity=parity, stopbits=stopbits),
                                on_data=self._on_data)
        # Modbus over serial line v1.02 §2.5.1.1: t3.5 is fixed at 1.75 ms above 19200 baud.
        self.t35 = 3.5 * self.port.byte_time if baudrate <= 19200 else 0.00175
        self.frame_gap = self.t35 if frame_gap is None else frame_gap
        self.baudrate, self.parity, self.stopbits = baudrate, parity, stopbits
        self._rx = bytearray()
        self._end_of_frame: asyncio.TimerHandle | None = None
        self._frames: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        # Every well-formed request the line carried, in order: (unit id, whether a reply was sent).
        # What a test reads to check the gateway's scheduling without timing it.
        self.requests: deque[tuple[int, bool]] = deque(maxlen=100_000)

    def add(self, device: ModbusDevice) -> None:
        if device.unit in self.units:
            raise ValueError(f"bus {self.name!r}: unit {device.unit} is used by {self.units[device.unit].name!r} "
                             f"and {device.name!r}; expected one device per unit id")
        self.units[device.unit] = device

    async def start(self) -> None:
        self.port.plug()
        self._tasks = [asyncio.create_task(self._serve(), name=f"hilsim:rtu:{self.name}")]
        if self.faults is not None and self.faults.faults:
            self._tasks.append(asyncio.create_task(self._follow_faults(), name=f"hilsim:rtu:{self.name}:faults"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.port.unplug()

    async def _follow_faults(self) -> None:
        """Unplug the whole line (the USB RS-485 adapter) during `disconnect` windows of the bus."""
        assert self.faults is not None and self.clock is not None
        while True:
            down = self.faults.windows("disconnect", self.clock.t())
            if down and self.port.present:
                log.info("bus %s: adapter unplugged (fault)", self.name)
                self.port.unplug()
                self._rx.clear()
            elif not down and not self.port.present:
                log.info("bus %s: adapter plugged back in", self.name)
                self.port.plug()
            await asyncio.sleep(0.05)

    def _on_data(self, data: bytes) -> None:
        self._rx += data
        if self._end_of_frame is not None:
            self._end_of_frame.cancel()
        # The event loop cannot time below about a millisecond, so silence shorter than that is not a frame end.
        self._end_of_frame = asyncio.get_running_loop().call_later(max(self.t35, 0.002), self._frame_ended)

    def _frame_ended(self) -> None:
        self._end_of_frame = None
        frame, self._rx = bytes(self._rx), bytearray()
        self._frames.put_nowait((frame, asyncio.get_running_loop().time()))

    async def _serve(self) -> None:
        while True:
            frame, ended = await self._frames.get()
            try:
                await self._answer(frame, ended)
            except Exception:
                log.exception("bus %s: failed answering a frame", self.name)

    async def _answer(self, frame: bytes, ended: float) -> None:
        if len(frame) < 4 or crc16(frame[:-2]) != frame[-2:]:
            return  # a corrupted request is ignored by every slave on the line
        device = self.units.get(frame[0])
        if device is None or not device.present:
            self.requests.append((frame[0], False))
            return  # nobody has this unit id: the line stays silent
        device.advance()
        hits = device.faults.draw(device.clock.t(), device.next_frame())
        if "drop_reply" in hits:
            self.requests.append((frame[0], False))
            return
        pdu = frame[1:-2]
        response: bytes | None
        served: list[tuple[int, Sequence[int]]] = []

        async def read(function_code: int, address: int, count: int) -> Sequence[int] | int:
            result = await device.read(function_code, address, count)
            if not isinstance(result, int):
                served.append((address, result))
            return result

        if "exception" in hits:
            response = exception_pdu(pdu[0], hits["exception"].code)
        else:
            response = await answer_pdu(pdu, unit_id=device.unit, read=read)
        self.requests.append((frame[0], response is not None))
        if response is None:
            return
        # The request's own wire time: the pty delivered it at once, a wire would not have.
        delay = len(frame) * self.port.byte_time + device.response_delay
        if "late_reply" in hits:
            delay += hits["late_reply"].delay
        await asyncio.sleep(delay)
        await self.port.idle(self.frame_gap)
        reply = bytes([device.unit]) + response
        reply += crc16(reply)
        if "line_noise" in hits:
            await self.port.write(device.faults.randbytes(device.faults.randint(1, hits["line_noise"].burst)))
            await asyncio.sleep(self.t35)
        if "bad_checksum" in hits:
            reply = reply[:-2] + bytes([reply[-2] ^ 0xA5, reply[-1]])
        if "partial_frame" in hits:
            reply = reply[: device.faults.randint(1, len(reply) - 1)]
        if "split_frame" in hits:
            cut = device.faults.randint(1, len(reply) - 1)
            await self.port.write(reply[:cut])
            await asyncio.sleep(hits["split_frame"].gap)
            await self.port.write(reply[cut:])
        else:
            await self.port.write(reply)
        late = self._overrun(frame, reply, ended)
        for address, words in served:
            device.served_registers(address, words, {**hits, "overrun": late} if late is not None else hits)

    def _overrun(self, frame: bytes, reply: bytes, ended: float) -> float | None:
        """Seconds past the gateway's deadline (and a margin) that the reply's last byte went out, or None.

        The simulator shares the machine with the gateway and everything else a soak runs; held up (the
        machine busy), it can answer after the gateway gave up, which no fault planned.  The gateway
        rightly counts such a request as unanswered, and the ledger says so, so that the reading is not
        taken for one the gateway lost.  The deadline is the gateway's (drivers/modbus/bus.py): the
        timeout plus the request's and the whole reply's wire time, counted here from the request's end
        (the gateway counts from its send, earlier), and OVERRUN_MARGIN_S on top: a gateway whose own
        event loop is late may still take a reply a little past its deadline.  The soak counts the
        marked readings that reached the hub all the same (docs/soak.md).
        """
        if self.answer_within is None:
            return None
        now = asyncio.get_running_loop().time()
        function = frame[1] if len(frame) > 1 else 0
        count = int.from_bytes(frame[4:6], "big") if len(frame) >= 8 and function in (1, 2, 3, 4) else 0
        data = (count + 7) // 8 if function in (1, 2) else 2 * count
        wire = (8 + 5 + data) * self.port.byte_time  # as the gateway reckons it (bus._wire_time), exceptions too
        past = now - ended - (self.answer_within + wire + OVERRUN_MARGIN_S)
        if past <= 0:
            return None
        self.overruns += 1
        if self._overrun_noted_at is None or now - self._overrun_noted_at >= 60.0:  # a busy machine: a line a minute
            self._overrun_noted_at = now
            log.warning("bus %s: answered unit %d %.2f s past the gateway's deadline (the simulator was held up; "
                        "%d such replies so far, marked overrun in the ledger)", self.name, frame[0], past, self.overruns)
        return past


class TcpBus:
    """A Modbus TCP server on 127.0.0.1 serving several unit ids; a `disconnect` fault stops and restarts it.

    ``rtu_framing``: it speaks RTU frames over TCP (bus type ``modbus-rtu-over-tcp``), as a converter does.
    """

    def __init__(self, *, name: str, port: int = 0, rtu_framing: bool = False) -> None:
        self.name = name
        self.units: dict[int, ModbusDevice] = {}
        self.server = TcpServer(lookup=self._lookup, port=port, rtu_framing=rtu_framing)
        self._down: set[str] = set()

    @property
    def transport(self) -> str:
        """The gateway's bus type for this server."""
        return "modbus-rtu-over-tcp" if self.server.rtu_framing else "modbus-tcp"

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def add(self, device: ModbusDevice) -> None:
        if device.unit in self.units:
            raise ValueError(f"bus {self.name!r}: unit {device.unit} is used by {self.units[device.unit].name!r} "
                             f"and {device.name!r}; expected one device per unit id")
        self.units[device.unit] = device
        device.on_power = self._power_changed

    async def _power_changed(self, device: ModbusDevice) -> None:
        # A Modbus TCP device is its server: while any unit on it is down, nobody answers on the port.
        was_down = bool(self._down)
        (self._down.discard if device.present else self._down.add)(device.name)
        if was_down and not self._down:
            await self.server.start()
        elif not was_down and self._down:
            await self.server.stop()

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def _lookup(self, unit: int) -> Read | None:
        device = self.units.get(unit)
        if device is None or not device.present:
            return None

        async def read(function_code: int, address: int, count: int) -> Sequence[int] | int:
            device.advance()
            hits = device.faults.draw(device.clock.t(), device.next_frame())
            if "drop_reply" in hits:
                raise NoReply
            delay = device.response_delay + (hits["late_reply"].delay if "late_reply" in hits else 0.0)
            if delay:
                await asyncio.sleep(delay)
            if "exception" in hits:
                return hits["exception"].code
            result = await device.read(function_code, address, count)
            if not isinstance(result, int):
                device.served_registers(address, result, hits)
            return result

        return read


TCP_FAULTS = ("drop_reply", "late_reply", "exception", "disconnect", "stuck_value")
RTU_LINE_FAULTS = ("disconnect",)
