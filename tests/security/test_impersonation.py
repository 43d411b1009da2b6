"""Threat model (docs/threat-model.md, H14): a hostile enrolled device signs, with its own key, messages naming another gateway.

The hub takes the device from the key id, never from what the message says: a batch, a status report or a notice that
names another device is refused, and neither device's record changes. Both engines, a real hub on loopback.
"""

from __future__ import annotations

import aiohttp

from edge.protocol import BatchHeader, seal_batch
from edge.protocol.envelope import seal_status
from hub.app import run_hub
from tests.hub.gateways import CHANNELS, T0, SimGateway, enrol, post_cose
from tests.hub.test_dashboard import NOTICE


async def test_a_device_signing_messages_that_name_another_gateway_is_refused_and_changes_neither(db_url, tmp_path) -> None:
    async with run_hub(db=db_url, state_dir=tmp_path / "hub") as hub, aiohttp.ClientSession() as http:
        hostile, victim = SimGateway("pole-0001"), SimGateway("pole-0002")
        for gateway in (hostile, victim):
            await enrol(http, hub.url, gateway, await hub.create_token())
        before = await hub.store.device("pole-0002")

        # A batch under the hostile device's key id and signature, its header naming the victim.
        header = BatchHeader(device_id="pole-0002", key_id=hostile.key_id, boot_epoch=1, seq=1, policy_digest=b"\x07" * 32, codec="zstd",
                             created_ms=T0, counters={})
        batch = seal_batch(header, CHANNELS, hostile.readings(1, 30), hostile.private_key)
        status, answer, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", batch)
        assert (status, answer["error"]) == (400, "malformed"), answer
        assert "'pole-0002'" in answer["detail"] and "'pole-0001'" in answer["detail"]

        # A status report claiming the victim is tampered, and a notice moving the victim's public position.
        report = seal_status({"ts_ms": T0, "boot_epoch": 1, "report_seq": 0, "errors": ["tampered"]}, device_id="pole-0002",
                             private_key=hostile.private_key)
        place = {**NOTICE["place"], "gateway_id": "pole-0002"}
        notice = seal_status({"ts_ms": T0, "boot_epoch": 1, "report_seq": 1, "notice": {**NOTICE, "place": place}}, device_id="pole-0002",
                             private_key=hostile.private_key)
        for route, data in (("status", report), ("notice", notice)):
            status, answer, _ = await post_cose(http, f"{hub.url}/oxp/v1/{route}", data)
            assert (status, answer["error"]) == (400, "malformed"), (route, answer)
            assert "'pole-0002'" in answer["detail"] and "'pole-0001'" in answer["detail"], (route, answer)

        for device_id in ("pole-0001", "pole-0002"):
            assert (await hub.counters(device_id))["batches_stored"] == 0
        assert await hub.store.notices(device_id="pole-0002") == []
        assert await hub.store.device("pole-0002") == before, "the victim's record is as it was"
