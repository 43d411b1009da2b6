"""The one module that talks to pymodbus: open a Modbus TCP, RTU or RTU-over-TCP link and read from it.

pymodbus changes its API between minor versions; it is pinned exactly in
pyproject.toml and every other module goes through this one, so an upgrade
touches this file only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import cast

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest
from pymodbus.pdu.decoders import DecodePDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
)

from edge.util.linkwords import os_words

__all__ = [
    "EXCEPTION_MEANINGS",
    "ExceptionReply",
    "GarbledReply",
    "LinkDown",
    "LinkError",
    "ModbusLink",
    "NoReply",
    "UnitUnreachable",
    "crc16",
    "reply_data_bytes",
]

# Modbus application protocol v1.1b3, section 7.
EXCEPTION_MEANINGS = {
    1: "illegal function: the device does not support this read",
    2: "illegal data address: the device has no register at this address",
    3: "illegal data value: the request is malformed (e.g. too many registers at once)",
    4: "server device failure: the device failed while answering",
    5: "acknowledge: the device accepted a long-running request",
    6: "server device busy: retry later",
    8: "memory parity error",
    10: "gateway path unavailable: the Modbus gateway cannot reach that unit",
    11: "gateway target device failed to respond: the unit behind the gateway is silent",
}

# The request each function sends: what pymodbus's read_holding_registers etc. build.
_REQUESTS: dict[str, type[ModbusPDU]] = {
    "holding": ReadHoldingRegistersRequest,
    "input": ReadInputRegistersRequest,
    "coil": ReadCoilsRequest,
    "discrete": ReadDiscreteInputsRequest,
}
_FUNCTION_CODES = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

# pymodbus logs every timeout at ERROR and traces frames at DEBUG, in its own words, on every poll.
# None of it reaches the operator: its logger is cut off from ours (a later logging setup that sets
# levels cannot bring it back), and the bus owner says each fault once in its own words.  Raw frames
# are on "ocn.modbus.frames" at debug, labelled.
_library_log = logging.getLogger("pymodbus")
_library_log.setLevel(logging.CRITICAL + 1)
_library_log.propagate = False
_library_log.handlers[:] = [logging.NullHandler()]
frames_log = logging.getLogger("ocn.modbus.frames")

RTU_RECEIVE_BUFFER = 4096  # bytes an RTU link holds before a reply's frame is found (see ModbusLink)


class LinkError(Exception):
    """A read failed; subclasses say how."""


class LinkDown(LinkError):
    """The port or TCP connection is not open."""


class NoReply(LinkError):
    """The unit sent nothing before the timeout."""


class GarbledReply(LinkError):
    """Bytes came back but no valid frame (bad CRC, wrong baud rate, or line noise)."""


class UnitUnreachable(NoReply):
    """A Modbus gateway answered for the unit that it cannot reach it (exception 0A or 0B): a silent unit."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.meaning = EXCEPTION_MEANINGS[code]
        super().__init__(f"exception code {code}: {self.meaning}")


class ExceptionReply(LinkError):
    """The unit answered with a Modbus exception code."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
        super().__init__(f"exception code {code}: {self.meaning}")


def crc16(frame: bytes) -> bytes:
    """The Modbus RTU CRC of ``frame`` as the two bytes sent on the wire."""
    return FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def _crc_holds(frame: bytes) -> bool:
    """Whether the last two bytes of ``frame`` are the CRC of the rest."""
    return FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big"))


def reply_data_bytes(function: str, count: int) -> int:
    """The data bytes of a reply to a read of ``count`` registers (or bits, for coil and discrete) of ``function``."""
    return (count + 7) // 8 if function in ("coil", "discrete") else 2 * count


_REGISTER_REPLIES = (ReadHoldingRegistersResponse, ReadInputRegistersResponse)


class _QuietDecodePDU(DecodePDU):
    """pymodbus's reply decoder without its debug line, which it builds even with its logger off.

    pymodbus 3.16's ``DecodePDU.decode`` passes ``str(pdu)`` (the reply with every register as
    text) to a ``Log.debug`` that is never enabled here: a float32 meter's 40 registers cost more
    to format than to decode.  A register reply's words are read in one unpack, where pymodbus
    slices and unpacks each word (the same words, and the same refusal of a byte count the frame
    does not hold).  Otherwise the same steps; an undecodable frame gives None, as there.
    """

    def decode(self, frame: bytes) -> ModbusPDU | None:
        try:
            if (function_code := int(frame[0])) > 0x80:
                exception = ExceptionResponse(function_code & 0x7F)
                exception.decode(frame[1:])
                return exception
            pdu_class = self.pdu_table.get(function_code, (None, None))[self.pdu_inx]
            if not pdu_class:
                return None
            pdu = pdu_class()
            if pdu_class in _REGISTER_REPLIES:
                byte_count = frame[1]
                if byte_count >= len(frame) - 1:
                    return None  # pymodbus: "byte_count > length of packet"
                pdu.registers = list(struct.unpack_from(f">{byte_count // 2}H", frame, 2))
                return pdu
            pdu.decode(frame[1:])
            if pdu.sub_function_code >= 0:
                sub_class = self.pdu_sub_table.get(pdu.function_code, {}).get(pdu.sub_function_code, (None, None))[self.pdu_inx]
                if sub_class:
                    pdu = sub_class()
                    pdu.decode(frame[1:])
            return pdu
        except (ModbusException, ValueError, IndexError, struct.error):
            return None


class _HuntingFramerRTU(FramerRTU):
    """pymodbus's RTU framer, but hunting through noise for the one reply the request can have.

    pymodbus 3.16 takes the first byte pair that looks like a unit id and a function code
    as a frame start and, when that "frame" fails its CRC, drops everything received.  On a
    noisy line the byte before a real reply usually looks like a start (the reply's unit id,
    1..24, reads as a function code), so one stray byte of noise cost the whole reply.

    Hunting for *any* frame whose CRC holds is not the answer either: a reply arrives a few
    bytes at a time (paced at the baud rate, or in a USB adapter's chunks), and until it is
    whole, every position inside its data that reads as a unit id and a function code is a
    candidate; a CRC of two bytes holds by chance once in 65,536 tries.  A frame found so
    inside the reply took the reply's first bytes with it, and the request waited for its
    timeout: about one 30-value (60-register) reply in 1,500 (13 of 20,000 replies of random
    float32 values fed a few bytes at a time; 4 of the 2,000 behind a little noise in
    ``tests/drivers/test_modbus.py``), and once in a few 10-minute soaks an unexplained poll.

    So the link says what it expects before each request (:meth:`expect`): the unit, the
    function and the byte count of its reply.  A frame is taken only where those bytes stand
    (or the unit and the function's exception code, a 5-byte frame, but not inside a reply
    still arriving) and the CRC holds; a false match now needs three bytes and the CRC to
    agree by chance (one in 2**40 a position), or an exception frame in the noise before it.
    The bytes kept are those from the earliest such start still waiting for the rest of its
    frame.  Anything else is noise, a stray frame or another unit's late reply, and is dropped;
    before the first request, everything is.
    """

    def __init__(self, decoder: DecodePDU) -> None:
        super().__init__(decoder)
        self._unit = -1
        self._head = b""  # unit id and function code of the expected reply
        self._refusal = b""  # unit id and function code | 0x80 of its exception reply
        self._size = 0  # its whole frame, CRC included
        self._count = -1  # its byte count (the third byte), -1 when it has none
        self.other_length: int | None = None  # the byte count of a whole frame of the unit's that was not the reply

    def expect(self, unit: int, function_code: int, byte_count: int) -> None:
        """The reply the next frame must be: ``unit``'s to ``function_code``, carrying ``byte_count`` data bytes."""
        self._unit = unit
        self._head = bytes((unit, function_code))
        self._refusal = bytes((unit, function_code | 0x80))
        self._size = byte_count + 5
        self._count = byte_count
        self.other_length = None

    def decode(self, data: bytes) -> tuple[int, int, int, bytes]:
        if not self._head:
            return len(data), 0, 0, self.EMPTY  # nothing asked yet
        pending: int | None = None
        # The reply, then an exception reply (unit id, function code | 0x80, exception code, CRC), but
        # not one inside a reply still arriving: that would be its data, matching by chance.
        for head, size, count in ((self._head, self._size, self._count),
                                  (self._refusal, 5, -1)):
            start = data.find(head)
            while start >= 0:
                if pending is not None and start > pending:
                    break
                if count >= 0 and len(data) > start + 2 and data[start + 2] != count:
                    # Another length: not this request's reply; if whole, likely the unit's late reply to
                    # an earlier request, which the error says when this request's reply never comes.
                    other = data[start : start + data[start + 2] + 5]
                    if len(other) == data[start + 2] + 5 and _crc_holds(other):
                        self.other_length = data[start + 2]
                elif start + size > len(data):
                    if pending is None or start < pending:
                        pending = start  # may be the reply, still arriving
                    if count < 0:
                        break  # an exception frame still arriving: none after it can come first
                elif _crc_holds(frame := data[start : start + size]):
                    return start + size, self._unit, 0, frame[1:-2]
                start = data.find(head, start + 1)
        if pending is None:
            # Nothing to wait for but a reply whose first byte may be the last one here.
            pending = len(data) - 1 if data[-1:] == self._head[:1] else len(data)
        return pending, 0, 0, self.EMPTY


class ModbusLink:
    """One open Modbus connection, with byte counters.

    ``kind`` is ``"tcp"`` (Modbus TCP), ``"rtu"`` (RTU on a serial port) or ``"rtu-over-tcp"``:
    RTU frames, CRC included, on a TCP socket, as cheap RS-485-to-Ethernet converters pass
    the line through without translating it to Modbus TCP.
    """

    def __init__(
        self,
        kind: str,
        *,
        port: str = "",
        host: str = "127.0.0.1",
        tcp_port: int = 502,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: float = 1,
        bytesize: int = 8,
        timeout: float = 1.0,
    ) -> None:
        if kind not in ("tcp", "rtu", "rtu-over-tcp"):
            raise ValueError(f"kind = {kind!r}: expected 'tcp', 'rtu' or 'rtu-over-tcp'")
        self.kind = kind
        self._where = port if kind == "rtu" else f"{host}:{tcp_port}"
        self.bytes_out = 0
        self.bytes_in = 0
        self._received_during_request = 0
        self._lost = asyncio.Event()
        # retries = 0 and reconnect_delay = 0: the bus owner decides about retries, and reopens
        # with its own backoff and logging.
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if kind != "rtu":
            # pymodbus 3.16 frames a TCP socket with the RTU framer when asked (FramerType.RTU).
            framer = FramerType.RTU if kind == "rtu-over-tcp" else FramerType.SOCKET
            self._client = AsyncModbusTcpClient(host, port=tcp_port, framer=framer, timeout=timeout, retries=0,
                                                reconnect_delay=0, trace_packet=self._count,
                                                trace_connect=self._connected)
        else:
            self._client = AsyncModbusSerialClient(
                # pymodbus annotates stopbits as int but hands it to pyserial, which takes 1.5 as well.
                port, framer=FramerType.RTU, baudrate=baudrate, parity=parity, stopbits=cast(int, stopbits),
                bytesize=bytesize, timeout=timeout, retries=0, reconnect_delay=0,
                trace_packet=self._count, trace_connect=self._connected,
            )
        self._client.ctx.framer.decoder = _QuietDecodePDU(is_server=False)
        self._hunter: _HuntingFramerRTU | None = None
        if kind != "tcp":
            # A converter passes the line's noise and stray frames through just as a serial port does.
            self._hunter = self._client.ctx.framer = _HuntingFramerRTU(self._client.ctx.framer.decoder)
            # pymodbus wipes its receive buffer, unread, once it holds more than the largest frame (264
            # bytes): a 255-byte reply arriving with 10 bytes of noise before it in one read was lost.
            # The framer drops noise as it comes and keeps at most one reply's start, so the buffer
            # holds that and one read (a serial port's reads are at most 1024 bytes).
            self._client.ctx.max_buffer_size = RTU_RECEIVE_BUFFER
        # A silent unit must never make pymodbus drop a healthy shared connection.
        self._client.set_max_no_responses(2**31)
        # pymodbus traces its whole receive buffer on every arrival, so incoming bytes are
        # counted where they arrive instead.
        protocol = self._client.ctx
        arrive = protocol.datagram_received

        def received(data: bytes, addr: tuple[str, int] | None) -> None:
            self.bytes_in += len(data)
            if frames_log.isEnabledFor(logging.DEBUG):
                frames_log.debug("received bytes", extra={"link": self._where, "hex": data.hex(" ")})
            self._received_during_request += len(data)
            arrive(data, addr)

        # An instance attribute shadows the method: pymodbus calls self.datagram_received.
        vars(protocol)["datagram_received"] = received

    def _count(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.bytes_out += len(data)
            if frames_log.isEnabledFor(logging.DEBUG):
                frames_log.debug("sent frame", extra={"link": self._where, "hex": data.hex(" ")})
        return data

    def _connected(self, up: bool) -> None:
        if not up:
            self._lost.set()

    @property
    def connected(self) -> bool:
        return self._client.connected

    async def wait_lost(self) -> None:
        """Return when the connection drops."""
        await self._lost.wait()

    async def open(self) -> None:
        """Open the port or connection; raises LinkDown with the reason."""
        self._lost.clear()
        if self.kind == "rtu" and not os.path.exists(self._client.comm_params.host):
            raise LinkDown(f"{self._client.comm_params.host}: no such device (adapter unplugged?)")
        try:
            ok = await self._client.connect()
        except OSError as exc:  # the port or the connection, said in our words (not pymodbus's)
            raise LinkDown(("cannot open the port: " if self.kind == "rtu" else "cannot connect: ") + os_words(exc)) from exc
        except ModbusException as exc:
            raise LinkDown("cannot open the port" if self.kind == "rtu" else "connection refused or timed out") from exc
        raise_if_cancelled()
        if not ok:
            raise LinkDown("cannot open the port" if self.kind == "rtu" else "connection refused or timed out")

    def close(self) -> None:
        self._client.close()
        self._lost.set()

    async def read(self, function: str, unit: int, address: int, count: int, *,
                   timeout: float) -> list[int] | list[bool]:
        """Read ``count`` registers (or bits) from ``address`` of ``unit``; raises a LinkError subclass."""
        if not self._client.connected:
            raise LinkDown("not open")
        self._received_during_request = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._hunter is not None:
            self._hunter.expect(unit, _FUNCTION_CODES[function], reply_data_bytes(function, count))
        try:
            reply = await self._execute(_REQUESTS[function](address=address, count=count, dev_id=unit), deadline)
            if (why := _mismatch(reply, function, count)) is not None:
                # RTU frames carry no transaction id, and pymodbus checks only the unit id: the RTU framer
                # takes only a frame of this request's function and length, so a unit's late reply to an
                # earlier request never gets here.  On Modbus TCP the transaction id matched: a device
                # that answers a read with another function or length is broken, not late.
                raise GarbledReply(why)
        except ConnectionException as exc:
            raise LinkDown("not connected") from exc  # _execute's: the connection is gone
        except ModbusException as exc:
            if not self._client.connected:
                raise LinkDown("connection lost") from exc
            if self._hunter is not None and self._hunter.other_length is not None:
                raise GarbledReply(f"no reply within {timeout:.3g} s, only one with {self._hunter.other_length} "
                                   "data bytes (to an earlier request?)") from exc
            if self._received_during_request:
                raise GarbledReply(f"{self._received_during_request} bytes but no valid reply frame") from exc
            raise NoReply(f"no reply within {timeout:.3g} s") from exc
        if reply.isError():
            if reply.exception_code in (10, 11):
                raise UnitUnreachable(reply.exception_code)
            raise ExceptionReply(reply.exception_code)
        if function in ("coil", "discrete"):
            return list(reply.bits[:count])
        return list(reply.registers)

    async def _execute(self, request: ModbusPDU, deadline: float) -> ModbusPDU:
        """Send ``request`` and await its reply until ``deadline`` (loop time): one try of pymodbus 3.16's
        ``TransactionManager.execute``, with its checks and errors, but without its lock and ``wait_for``.

        The bus owner already holds the line's lock and never retries here (retries = 0), and
        ``wait_for`` cost a second future, a timer, two callbacks and an extra turn of the event loop
        per request, a visible share of a busy bus's CPU.  A reply the framer accepts resolves
        ``response_future`` (``callback_data``), as there; at the deadline it fails as pymodbus's
        "no response" does (a ``ModbusIOException``).  Cancelled, the future is cancelled, and a
        late reply is ignored, as with ``wait_for``.

        Each request has its own deadline timer, cancelled when its reply comes, so a link with no
        request out leaves nothing to wake the loop.  One timer per link, set again only when it
        fired (4a65298), saved a call_at and a cancel per request on a busy bus but woke the loop for
        nothing whenever the link fell idle before the timer's time: once a poll for a device polled
        at intervals longer than its timeout (the defaults: every 10 s, a 0.5 s timeout), and for a
        meter polled every second with a 1 s timeout, at about every other poll, just after the next
        request went out.  A cancelled timer at the heap's head is dropped before the loop sleeps, never
        woken for.
        """
        protocol = self._client.ctx
        if not protocol.transport:
            raise ConnectionException(f"Not connected[{self._client!s}]")
        request.transaction_id = protocol.getNextTID()
        protocol.recv_buffer = b""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ModbusPDU] = loop.create_future()
        protocol.response_future = future
        protocol.pdu_send(request)
        timer = loop.call_at(deadline, _expire, future, request)
        try:
            reply = await future
        finally:
            timer.cancel()
        if request.dev_id and reply.dev_id != request.dev_id:
            raise _io_error(f"request uses device id={request.dev_id} but received {reply.dev_id}", request)
        if reply.transaction_id and reply.transaction_id != request.transaction_id:
            raise _io_error(f"request uses transaction id={request.transaction_id} but received {reply.transaction_id}",
                            request)
        return reply


def _io_error(message: str, request: ModbusPDU) -> ModbusIOException:
    return ModbusIOException(message, function_code=request.function_code, transaction_id=request.transaction_id,
                             dev_id=request.dev_id)


def _expire(future: asyncio.Future[ModbusPDU], request: ModbusPDU) -> None:
    """The request's deadline passed without a reply: fail it as pymodbus's execute does."""
    if not future.done():
        future.set_exception(_io_error("no response received", request))


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled and the cancellation got lost on the way.

    On CPython 3.11, ``asyncio.wait_for`` (pymodbus awaits every reply and connection with it)
    returns the result instead of raising when the cancellation arrives as the awaited future
    completes (CPython gh-86296, fixed in 3.12).  A stopping gateway then waited its 10 s for a
    device task that went on polling ("task did not stop when cancelled").  A task cancelled
    meanwhile still counts the request (``Task.cancelling``), so it is raised again here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _mismatch(reply: ModbusPDU, function: str, count: int) -> str | None:
    """Why ``reply`` cannot be the answer to a read of ``count`` of ``function``, or None if it can be."""
    code = _FUNCTION_CODES[function]
    got = getattr(reply, "function_code", None)
    if got is None or got & 0x7F != code:
        return f"a reply to function {got} instead of function {code}"
    if reply.isError():
        return None
    if function in ("coil", "discrete"):
        if len(reply.bits) != 8 * reply_data_bytes(function, count):
            return f"a reply with {len(reply.bits) // 8} data bytes to a read of {count} bits"
        return None
    registers = len(reply.registers)
    if registers != count:
        return f"a reply with {registers} registers to a read of {count}"
    return None
