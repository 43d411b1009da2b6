"""One MQTT connection's socket, read and written in large pieces under paho-mqtt, on the event loop: the hub's and the gateway's.

paho reads a packet in three system calls or more (its first byte, its length a byte at a time, the
rest) and writes each packet with a send of its own.  The hub takes a batch and sends its PUBACK
and its answer: about five system calls a batch on the event loop, a tenth of the hub's time at a
thousand gateways' batches a second (bench.mqtt_hub); a gateway reads its broker's PUBACK and the
hub's ack for each batch it sends.  :class:`BrokerSocket` stands in for paho's socket, as paho's own
websocket wrapper does: a read takes up to READ_BYTES at once and paho's reads are served from
them; what paho writes in one pass over its packets is gathered and sent at the end of the pass in
one call, the pass run at the loop's next turn (what the kernel does not take is sent when the socket
is writable again, before anything written later).  paho keeps the rest of MQTT: packet ids, its own
acks, keepalive.  aiomqtt drains paho while ``pending()`` says bytes are buffered (written for TLS), so
no byte waits in memory for a read the event loop would never signal.

The owner's own messages skip paho altogether when it gives a ``take``: each PUBLISH of QoS 0 or 1 read
is offered to it (topic, payload, correlation data, QoS) and one it takes is acknowledged here, its PUBACK
written after whatever paho has queued; what it does not take goes to paho as before, and after a QoS 1
message left to paho so does everything read behind it, so PUBACKs keep the order of their PUBLISHes
(paho sends that one's when it reads it).  :meth:`BrokerSocket.publish` writes a PUBLISH the same way
(the hub's answers at QoS 0, :meth:`BrokerSocket.answer`; the gateway's batches and reports at QoS 1,
whose PUBACKs the socket takes, handing each one's reason code to ``acked``: paho never knows those
messages).  paho's packet objects (a Properties decoded and a MQTTMessage a message read, a
MQTTMessageInfo with its Condition a message written, three log calls) were a fifth of the hub's
time a batch (bench.mqtt_hub).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

__all__ = ["Acked", "BrokerSocket", "READ_BYTES", "Take", "publish_properties"]

READ_BYTES = 64 * 1024  # one read: a burst of a few hundred small batches
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

Take = Callable[[str, bytes, "bytes | None", int], bool]
"""Offered each PUBLISH of QoS 0 or 1 read: its topic, payload, correlation data and QoS; True once taken, False to leave it to paho."""
Acked = Callable[[int, int], None]
"""Told of each PUBACK for a message :meth:`BrokerSocket.publish` wrote at QoS 1: its packet id and the reason code (0: Success)."""

_PUBLISH, _PUBACK = 0x30, 0x40
# MQTT 5 PUBLISH properties (§3.3.2.3) a message may carry to be taken here, by how their value is laid out.  Any other
# (a topic alias among them), or one given twice that may appear once, leaves the message to paho, which says what is wrong.
_BYTE, _FOUR, _STRING, _BINARY, _VARINT, _PAIR = range(6)
_PROPERTIES = {0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT, 0x26: _PAIR}
_REPEATABLE = {0x0B, 0x26}
_CORRELATION_DATA = 0x09


def _varint(value: int) -> bytes:
    """MQTT's variable byte integer (§1.5.5)."""
    out = bytearray()
    while True:
        value, digit = value >> 7, value & 0x7F
        out.append(digit | 0x80 if value else digit)
        if not value:
            return bytes(out)


def publish_properties(correlation: bytes | None = None, alias: int = 0) -> bytes:
    """A PUBLISH's MQTT 5 properties as :meth:`BrokerSocket.publish` takes them, packed with their length: its correlation
    data when given, its topic alias unless 0, in the order paho packs them (Correlation Data 0x09 before Topic Alias 0x23)."""
    body = b""
    if correlation is not None:
        body += b"\x09" + len(correlation).to_bytes(2, "big") + correlation
    if alias:
        body += b"\x23" + alias.to_bytes(2, "big")
    return _varint(len(body)) + body


def _read_varint(data: bytes, at: int, end: int) -> tuple[int, int] | None:
    """(value, position after it) of the variable byte integer at ``at``; None when it runs past ``end`` or over 4 bytes."""
    value = shift = 0
    while at < end and shift <= 21:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
    return None


def _correlation(data: bytes, at: int, end: int) -> tuple[bytes | None] | None:
    """The correlation data of the properties in ``data[at:end]`` (in a 1-tuple), or None for properties left to paho."""
    found: bytes | None = None
    seen: set[int] = set()
    try:
        while at < end:
            ident = data[at]
            kind = _PROPERTIES.get(ident)
            if kind is None or (ident in seen and ident not in _REPEATABLE):
                return None
            seen.add(ident)
            at += 1
            if kind == _BYTE:
                at += 1
            elif kind == _FOUR:
                at += 4
            elif kind == _VARINT:
                read = _read_varint(data, at, end)
                if read is None:
                    return None
                at = read[1]
            else:
                for _ in range(2 if kind == _PAIR else 1):
                    size = int.from_bytes(data[at : at + 2], "big")
                    if at + 2 + size > end:
                        return None
                    value = data[at + 2 : at + 2 + size]
                    if kind == _BINARY:
                        found = value
                    else:
                        value.decode()  # as paho does: a string that is not UTF-8 makes the packet malformed
                    at += 2 + size
    except (IndexError, UnicodeDecodeError):
        return None
    return (found,) if at == end else None


class BrokerSocket:
    """paho's socket of one connection, read ahead and written in one send a pass; it registers its own writer."""

    def __init__(self, client: aiomqtt.Client, *, take: Take | None = None, acked: Acked | None = None) -> None:
        self._client = client
        self._take = take
        self.acked = acked  # may be set once the socket exists (a callback that names it)
        self._partial = b""  # the start of a packet read but not whole yet (with ``take`` only: paho gets whole packets)
        self._paho = client._client
        sock = self._paho.socket()
        if sock is None:
            raise aiomqtt.MqttError("the broker connection closed before it was set up")
        self._sock: Any = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._read = b""
        self._at = 0
        self._out = bytearray()
        self._gathering = False
        self._writing = False  # watched for writing: the kernel did not take everything
        self._pass_due = False  # a write pass is due at the loop's next turn
        self._closed = False
        self._own: set[int] = set()  # packet ids of QoS 1 messages published here whose PUBACK has not come
        self._error: OSError | None = None

    def install(self) -> None:
        """Put this in place of paho's socket and take over the writer registration from aiomqtt."""
        self._paho._sock = self  # paho's SocketLike, as its websocket wrapper is
        self._paho.on_socket_register_write = self._register_write
        self._paho.on_socket_unregister_write = self._unregister_write
        # A writer aiomqtt registered is replaced by this one, which runs once at least: paho may have asked for it already.
        self._loop.remove_writer(self._fd)
        self._writer_on()

    # --- what paho calls ----------------------------------------------------------------

    def recv(self, size: int) -> bytes:
        if self._error is not None:
            raise self._error
        if self._at >= len(self._read):
            data = self._sock.recv(READ_BYTES)
            if data and self._take is not None:
                data = self._offer(bytes(data))
                if not data:
                    raise BlockingIOError  # all taken: paho waits for the next read
            if len(data) <= size:
                return bytes(data)
            self._read, self._at = data, 0
        end = self._at + size
        piece = self._read[self._at : end]
        self._at = min(end, len(self._read))
        return piece

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        if self._gathering or self._out:
            self._out += data  # sent at the end of the pass, after what is waiting
            self._writer_on()
            return len(data)
        return int(self._sock.send(data))

    def pending(self) -> int:
        """Bytes read but not yet handed to paho (and, under TLS, decrypted but not yet read)."""
        under = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._read) - self._at + int(under)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def close(self) -> None:
        self._take = None  # nothing more is taken from, or answered on, a connection that is gone
        self._closed = True
        self._flush()  # a DISCONNECT written in the last pass goes out before the socket closes
        self._writer_off()
        self._out.clear()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    # --- the hub's own messages --------------------------------------------------------

    def _offer(self, data: bytes) -> bytes:
        """The whole packets of ``data`` (after the partial one kept from the last read) that go on to paho; the PUBLISHes
        ``take`` takes are taken out and acknowledged.  A QoS 1 PUBLISH left to paho is acknowledged by paho when it reads
        it, so every packet after it goes to paho too: PUBACKs keep the order of their PUBLISHes."""
        assert self._take is not None
        if self._partial:
            data, self._partial = self._partial + data, b""
        at, end, acks = 0, len(data), bytearray()
        to_paho: list[bytes] = []
        blocked = False
        while at < end:
            read = _read_varint(data, at + 1, end)
            if read is None:
                if end - at > 5:  # a length over 4 bytes: malformed; paho says so
                    to_paho.append(data[at:])
                else:
                    self._partial = data[at:]
                break
            length, start = read
            if start + length > end:
                self._partial = data[at:]
                break
            first = data[at]
            if first == _PUBACK and length >= 2 and (mid := int.from_bytes(data[start : start + 2], "big")) in self._own:
                # The broker's answer to a message this socket published (publish): paho never knew it, and has nothing to do.
                # MQTT 5 (§3.4.2.1): no reason code is Success; 0x80 and above, the broker did not take the message.
                self._own.discard(mid)
                if self.acked is not None:
                    self.acked(mid, data[start + 2] if length > 2 else 0)
                at = start + length
                continue
            if blocked or first & 0xF0 != _PUBLISH or not self._taken(data, first, start, start + length, acks):
                to_paho.append(data[at : start + length])
                blocked = blocked or (first & 0xF0 == _PUBLISH and first & 0x06 == 0x02)
            at = start + length
        # paho's clock: what is read and written here counts for its keepalive as its own packets do.
        now = time.monotonic()
        self._paho._last_bytes_received = now
        if acks:
            self._write(bytes(acks))
            self._paho._last_msg_out = now
        return b"".join(to_paho)

    def _taken(self, data: bytes, first: int, start: int, end: int, acks: bytearray) -> bool:
        """Whether ``take`` took the PUBLISH in ``data[start:end]``; its PUBACK added to ``acks`` if it asked for one."""
        assert self._take is not None
        qos = (first >> 1) & 3
        size = int.from_bytes(data[start : start + 2], "big")
        at = start + 2 + size
        if qos > 1 or size == 0 or at + 2 * qos > end:
            return False
        try:
            topic = data[start + 2 : at].decode()
        except UnicodeDecodeError:
            return False
        mid = data[at : at + 2 * qos]
        if qos and mid == b"\0\0":
            return False
        read = _read_varint(data, at + 2 * qos, end)
        if read is None or read[1] + read[0] > end:
            return False
        properties = _correlation(data, read[1], read[1] + read[0])
        if properties is None or not self._take(topic, data[read[1] + read[0] : end], properties[0], qos):
            return False
        if qos:
            acks += b"\x40\x02" + mid
        return True

    def answer(self, topic: str, payload: bytes, correlation: bytes | None) -> bool:
        """Write a QoS 0 PUBLISH of ``payload`` on ``topic`` (with ``correlation`` as correlation data, when given) after
        whatever is written before it; False on a connection that is gone."""
        return self.publish(topic, payload, publish_properties(correlation), qos=0) is not None

    def publish(self, topic: str, payload: bytes, properties: bytes, *, qos: int) -> int | None:
        """Write a PUBLISH of ``payload`` on ``topic`` at QoS 0 or 1 after whatever is written before it; ``properties`` are
        MQTT 5's, packed with their length (:func:`publish_properties`; an empty ``topic`` with a Topic Alias among them).  A QoS 1
        message takes its packet id from paho's, so none of paho's own packets shares it, and its PUBACK is taken here: paho
        never knew the message (its packet objects, its in-flight bookkeeping and the PUBACK's decoding cost a gateway about
        a tenth of its CPU a batch, bench.mqtt_link), and nothing is sent again on a new connection: the sender decides.
        The PUBACK's reason code goes to ``acked`` with the packet id.  The packet id (0 at QoS 0); None on a connection that
        is gone."""
        if self._take is None or self._error is not None:
            return None
        name = topic.encode()
        mid = b""
        if qos:
            number = self._paho._mid_generate()
            self._own.add(number)
            mid = number.to_bytes(2, "big")
        length = 2 + len(name) + len(mid) + len(properties) + len(payload)
        self._write(b"".join((bytes((_PUBLISH | qos << 1,)), _varint(length), len(name).to_bytes(2, "big"), name, mid, properties, payload)))
        self._paho._last_msg_out = time.monotonic()  # paho's keepalive counts it as its own
        return int.from_bytes(mid, "big")

    def _write(self, packet: bytes) -> None:
        """``packet`` sent at the end of this pass of the loop, after the packets paho has queued (moved here first)."""
        if self._paho.want_write():
            self._gathering = True
            try:
                self._paho.loop_write()
            finally:
                self._gathering = False
        self._out += packet
        self._writer_on()

    # --- writing ------------------------------------------------------------------------

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            self._writer_on()
        else:  # paho is called from the event loop once connected; a call from another thread is handed to it
            self._loop.call_soon_threadsafe(self._writer_on)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if not self._out:
            self._writer_off()

    def _writer_on(self) -> None:
        """A write pass at the loop's next turn (what paho queued in this one goes out together): a callback, not a writer
        registration, which costs two epoll changes and a turn of its own a message."""
        if not self._pass_due and not self._writing and not self._closed:
            self._pass_due = True
            self._loop.call_soon(self._write_pass)

    def _write_pass(self) -> None:
        self._pass_due = False
        if not self._closed and not self._writing:
            self._writable()

    def _writer_off(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _writable(self) -> None:
        """paho's packets written in one pass, then sent in one call; the socket is watched for writing while anything is left."""
        self._gathering = True
        try:
            self._paho.loop_write()
        except Exception as exc:  # the connection broke: aiomqtt ends the session on this, as its own writer does
            disconnected = self._client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)
        finally:
            self._gathering = False
        self._flush()
        if not self._out and not self._paho.want_write():
            self._writer_off()
        elif not self._writing and not self._closed and self._fd >= 0:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True

    def _flush(self) -> None:
        while self._out and self._error is None:
            try:
                sent = self._sock.send(self._out)
            except _WOULD_BLOCK:
                return
            except OSError as exc:
                # Said by the next read, which paho takes as a lost connection (a broken socket reads as ready).
                self._error = exc
                self._out.clear()
                return
            del self._out[:sent]
