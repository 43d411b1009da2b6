"""A device task cancelled while its Modbus reply arrives stops, instead of going on polling.

On CPython 3.11 ``asyncio.wait_for``, which pymodbus awaits every reply with, returns the reply
when the cancellation and the reply arrive together (CPython gh-86296), and the cancellation is
lost: a stopping gateway waited its 10 s for the device task ("task did not stop when cancelled").
Here the race is made certain: the reading task is cancelled by the reply's own arrival, against
a real Modbus TCP server on loopback.
"""

from __future__ import annotations

import asyncio

import pytest
from pymodbus.pdu import ModbusPDU

from drivers.modbus.adapter import ModbusLink
from tests.drivers.loopback import RegisterStore, modbus_tcp_server


async def test_a_read_cancelled_as_its_reply_arrives_raises_cancelled_instead_of_answering() -> None:
    store = RegisterStore()
    store.set_words(1, "holding", 0, [7, 8])
    server, port = await modbus_tcp_server(store)
    link = ModbusLink("tcp", tcp_port=port, timeout=2.0)
    try:
        await link.open()
        assert await link.read("holding", 1, 0, 2, timeout=2.0) == [7, 8]  # the server answers
        protocol = link._client.ctx
        send = protocol.pdu_send
        reading: list[asyncio.Task[list[int] | list[bool]]] = []

        def send_then_cancel_on_reply(pdu: ModbusPDU, addr: tuple[str, int] | None = None) -> None:
            send(pdu, addr)
            # Runs as the reply completes the future, before wait_for's own wake-up: the cancellation meets the reply.
            protocol.response_future.add_done_callback(lambda _: reading[0].cancel())

        vars(protocol)["pdu_send"] = send_then_cancel_on_reply
        reading.append(asyncio.create_task(link.read("holding", 1, 0, 2, timeout=2.0)))
        with pytest.raises(asyncio.CancelledError):
            await reading[0]
    finally:
        link.close()
        await server.shutdown()
