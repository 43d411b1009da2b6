"""The hub's broker connection read and written in large pieces under paho-mqtt, on the event loop.

paho reads a packet in three system calls or more (its first byte, its length a byte at a time, the
rest) and writes each packet with a send of its own.  The hub takes a batch and sends its PUBACK
and its answer: about five system calls a batch on the event loop, a tenth of the hub's time at a
thousand gateways' batches a second (bench.mqtt_hub).  :class:`BrokerSocket` stands in for paho's
socket, as paho's own websocket wrapper does: a read takes up to READ_BYTES at once and paho's
reads are served from them; what paho writes in one pass over its packets is gathered and sent
at the end of the pass in one call (what the kernel does not take is sent when the socket is
writable again, before anything written later).  paho keeps all of MQTT: packets, ids, acks,
keepalive.  aiomqtt drains paho while ``pending()`` says bytes are buffered (written for TLS), so
no byte waits in memory for a read the event loop would never signal.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

__all__ = ["BrokerSocket", "READ_BYTES"]

READ_BYTES = 64 * 1024  # one read: a burst of a few hundred small batches
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class BrokerSocket:
    """paho's socket of one connection, read ahead and written in one send a pass; it registers its own writer."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
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
        self._writing = False
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
        self._flush()  # a DISCONNECT written in the last pass goes out before the socket closes
        self._writer_off()
        self._out.clear()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

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
        if not self._writing and self._fd >= 0:
            self._loop.add_writer(self._fd, self._writable)
            self._writing = True

    def _writer_off(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _writable(self) -> None:
        """paho's packets written in one pass, then sent in one call; the writer stays on while anything is left."""
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
