"""The broker socket of the hub and the gateway (edge.util.mqttsocket): paho's packets read ahead and written in one send a pass, nothing lost or reordered."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from edge.util.mqttsocket import BrokerSocket

from .conftest import Broker

RESPONSES = "$CONTROL/dynamic-security/v1/response"


class Counted:
    """The real socket, with its system calls counted."""

    def __init__(self, sock: Any) -> None:
        self.sock, self.recvs, self.sends = sock, 0, 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        return bytes(self.sock.recv(size))

    def send(self, data: bytes | bytearray) -> int:
        self.sends += 1
        return int(self.sock.send(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def test_a_burst_of_packets_both_ways_arrives_whole_and_in_order_through_the_broker_socket(broker: Broker) -> None:
    async with broker.hub_settings(client_id="socket-test").client() as client:
        sock = BrokerSocket(client)
        sock.install()
        assert client._client.socket() is sock
        counted = sock._sock = Counted(sock._sock)
        await client.subscribe(RESPONSES, qos=1)
        # 200 commands handed to paho in one go: written in a few passes, each pass one send; the answers come back as
        # a burst that the socket reads ahead and paho takes from memory.
        for n in range(200):
            command = {"commands": [{"command": "getClient", "username": f"nobody-{n}", "correlationData": str(n)}]}
            client._client.publish("$CONTROL/dynamic-security/v1", json.dumps(command), qos=1)
        seen: list[int] = []
        async with asyncio.timeout(20):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                for response in json.loads(message.payload)["responses"]:
                    seen.append(int(response["correlationData"]))
                if len(seen) == 200:
                    break
        assert seen == list(range(200))
        # paho alone: 200 sends and at least 3 reads a packet (first byte, length, rest) for 200 PUBACKs and 200 answers.
        assert counted.sends < 50 and counted.recvs < 200, (counted.sends, counted.recvs)
    # The session closed cleanly: the DISCONNECT written in the last pass went out before the socket closed.
    assert client._client.socket() is None
