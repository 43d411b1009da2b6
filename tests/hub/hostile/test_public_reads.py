"""Fair public reads: open-data and SensorThings queries run within a budget, a few per client, on a lane of their own.

The reproduction: four parallel ``Observations?$orderby=result desc,...`` on a large store held
the SQLite readers that ingest and the dashboard share, so ``Things?$top=1`` waited 87 s and the
admin ``/fleet`` page 20.7 s.  Here the public lane is held full (structurally, not by timing)
and devices, operators and the cheap public sets are still served.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from hub.app import IngestSettings, RunningHub, run_hub
from hub.budget import OverBudget, QueryBudget
from hub.publicreads import PUBLIC_READS, PublicReads, PublicReadSettings
from tests.hub.gateways import SimGateway, enrol, post_cose

STA = "/sta/v1.1"
HEAVY = f"{STA}/Observations?$top=10000&$orderby=result desc,phenomenonTime"
PROXY = IngestSettings(trusted_proxies=("127.0.0.1/32",))


async def hub_with_readings(
    tmp_path: Path, db_url: str, settings: PublicReadSettings, http: aiohttp.ClientSession
) -> AsyncIterator[tuple[RunningHub, SimGateway]]:
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret", public_reads=settings, ingest=PROXY) as hub:
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        for seq in range(1, 5):  # 120 readings
            status, _, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", gateway.batch(seq, n=30))
            assert status == 200
        yield hub, gateway


@pytest.fixture
async def small_budget(tmp_path: Path, db_url: str, http: aiohttp.ClientSession) -> AsyncIterator[tuple[RunningHub, SimGateway]]:
    """A hub with 120 stored readings where one public request may examine at most 50 of them."""
    async for running in hub_with_readings(tmp_path, db_url, PublicReadSettings(max_examined=50), http):
        yield running


@pytest.fixture
async def one_each(tmp_path: Path, db_url: str, http: aiohttp.ClientSession) -> AsyncIterator[tuple[RunningHub, SimGateway]]:
    """A hub where each client may run one public request and no store query may wait for the lane."""
    async for running in hub_with_readings(tmp_path, db_url, PublicReadSettings(per_client=1, queue=0), http):
        yield running


async def get(http: aiohttp.ClientSession, url: str, *, client: str | None = None) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    headers = {"X-Forwarded-For": client} if client else {}
    async with http.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None) if resp.content_type.endswith("json") else {}, resp.headers


async def hold_the_lane(hub: RunningHub, stack: AsyncExitStack) -> PublicReads:
    """Take every place on the public lane, as heavy queries running there would."""
    gate = hub_app_gate(hub)
    for _ in range(gate.lane):
        await stack.enter_async_context(gate.on_lane(QueryBudget(max_examined=1, seconds=60)))
    return gate


def hub_app_gate(hub: RunningHub) -> PublicReads:
    assert hub.app is not None
    return hub.app[PUBLIC_READS]


# --- the cost limit ------------------------------------------------------------------------


async def test_a_query_examining_more_readings_than_its_budget_is_refused_400_with_how_to_narrow_it(
    small_budget: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession
) -> None:
    hub, _ = small_budget
    status, body, _ = await get(http, hub.url + HEAVY)
    assert status == 400
    assert "more than 50 readings" in body["message"] and "phenomenonTime" in body["message"]

    status, body, _ = await get(http, f"{hub.url}/data/readings.senml.json?limit=100")
    assert (status, body["error"]) == (400, "too_costly")
    assert "more than 50 readings" in body["detail"] and "since and until" in body["detail"]


async def test_a_query_within_its_readings_budget_is_served(small_budget: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession) -> None:
    hub, _ = small_budget
    status, body, _ = await get(http, f"{hub.url}{STA}/Observations?$top=10&$orderby=phenomenonTime desc")
    assert status == 200 and len(body["value"]) == 10
    async with http.get(f"{hub.url}/data/readings.csv?limit=20") as resp:
        assert resp.status == 200
        assert len((await resp.text()).splitlines()) == 21


async def test_a_count_over_the_budget_is_refused_but_a_count_without_conditions_on_values_costs_nothing(
    small_budget: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession
) -> None:
    hub, _ = small_budget
    status, body, _ = await get(http, f"{hub.url}{STA}/Observations?$top=1&$count=true")
    assert (status, body["@iot.count"]) == (200, 120)
    status, body, _ = await get(http, f"{hub.url}{STA}/Observations?$top=1&$count=true&$filter=result gt 0")
    assert status == 400 and "more than 50 readings" in body["message"]


async def test_a_request_past_its_time_budget_is_answered_503_busy_with_retry_after(
    tmp_path: Path, db_url: str, http: aiohttp.ClientSession
) -> None:
    # A budget spent before the store is asked: the first check refuses, on either engine.
    async for hub, _ in hub_with_readings(tmp_path, db_url, PublicReadSettings(seconds=1e-9), http):
        status, body, headers = await get(http, hub.url + HEAVY)
        assert status == 503 and "time budget" in body["message"]
        assert int(headers["Retry-After"]) >= 1
        status, body, headers = await get(http, f"{hub.url}/data/readings.csv")
        assert (status, body["error"]) == (503, "busy") and int(headers["Retry-After"]) >= 1


# --- concurrency: per client, per hub, and a lane of its own --------------------------------


async def test_a_client_over_its_share_is_answered_429_while_another_client_is_served(
    one_each: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession
) -> None:
    hub, _ = one_each
    gate = hub_app_gate(hub)
    async with gate.turn("203.0.113.9"):  # that client's one request, still running
        status, body, headers = await get(http, hub.url + HEAVY, client="203.0.113.9")
        assert status == 429 and "the most one may" in body["message"]
        assert int(headers["Retry-After"]) >= 1
        status, body, headers = await get(http, f"{hub.url}/data/readings.csv", client="203.0.113.9")
        assert (status, body["error"]) == (429, "too_many_requests") and "Retry-After" in headers
        for register in ("/transparency", "/transparency.json"):  # each answer up to 128 KiB a gateway: public reads too
            status, body, headers = await get(http, hub.url + register, client="203.0.113.9")
            assert (status, body["error"]) == (429, "too_many_requests") and "Retry-After" in headers, register
            status, _, _ = await get(http, hub.url + register, client="198.51.100.7")
            assert status == 200, register

        status, body, _ = await get(http, f"{hub.url}{STA}/Observations?$top=5", client="198.51.100.7")
        assert status == 200 and len(body["value"]) == 5
    status, _, _ = await get(http, f"{hub.url}{STA}/Observations?$top=5", client="203.0.113.9")
    assert status == 200
    assert gate.by_client == {}


async def test_a_streamed_answer_ends_its_turn_before_its_last_bytes_so_the_client_may_ask_again_at_once(
    one_each: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession
) -> None:
    # One request a client: asking again as soon as the last answer is read is never refused 429.
    # The turn used to end after the last bytes were sent, and waiting for them to drain (a loaded
    # machine, a slow reader) let the client read them and ask again first; now the turn ends
    # before the last bytes are written, so a client holding them never finds its turn taken.
    hub, _ = one_each
    gate = hub_app_gate(hub)
    for path in ("/data/readings.csv", "/data/readings.senml.json", "/data/readings.senml.cbor") * 4:
        async with http.get(hub.url + path, headers={"X-Forwarded-For": "203.0.113.9"}) as resp:
            assert resp.status == 200, await resp.text()
            assert len(await resp.read()) > 1000
            assert gate.by_client == {}


async def test_with_the_public_lane_full_devices_operators_and_cheap_public_sets_are_served(
    one_each: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession
) -> None:
    hub, gateway = one_each
    async with AsyncExitStack() as stack:
        await hold_the_lane(hub, stack)
        # Another query of readings finds the lane and its queue (0) full: 503 busy at once, not a stall.
        status, body, headers = await get(http, hub.url + HEAVY, client="198.51.100.7")
        assert status == 503 and "public queries running" in body["message"] and int(headers["Retry-After"]) >= 1
        status, body, _ = await get(http, f"{hub.url}/data/readings.csv", client="198.51.100.8")
        assert (status, body["error"]) == (503, "busy")

        # A device, an operator and the public sets that read no readings never wait for the lane.
        status, ack, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", gateway.batch(5, n=30))
        assert (status, ack["status"]) == (200, "stored")
        async with http.get(f"{hub.url}/admin/api/devices", headers={"Authorization": "Bearer admin-secret"}) as resp:
            assert resp.status == 200
        status, body, _ = await get(http, f"{hub.url}{STA}/Things?$top=1", client="198.51.100.9")
        assert status == 200 and [t["name"] for t in body["value"]] == ["pole-0042"]
        async with http.get(f"{hub.url}/data", headers={"X-Forwarded-For": "198.51.100.10"}) as resp:
            assert resp.status == 200
    status, body, _ = await get(http, hub.url + HEAVY, client="198.51.100.7")
    assert status == 200 and len(body["value"]) == 150


async def test_public_queries_run_on_threads_of_their_own(small_budget: tuple[RunningHub, SimGateway]) -> None:
    hub, _ = small_budget
    threads: set[str] = set()

    def where(reading: object) -> bool:
        threads.add(threading.current_thread().name)
        return True

    budget = QueryBudget(max_examined=10_000, seconds=60)
    rows = await hub.store.readings(order="value", descending=True, limit=200, match=where, budget=budget)
    assert len(rows) == 120 and budget.examined == 120
    assert {name.rsplit("_", 1)[0] for name in threads} <= {"hub-sqlite-public", "hub-pg-public"} and threads

    threads.clear()
    await hub.store.readings(order="value", limit=200, match=where)
    assert not any("public" in name for name in threads)


async def test_a_public_request_keeps_its_place_on_the_lane_until_its_answer_is_sent() -> None:
    # The readings it holds and the answer it renders cost memory and loop time until sent.
    reads = PublicReads(PublicReadSettings(queue=0), lane=1)
    async with reads.turn("198.51.100.1") as budget:
        async with budget.on_lane():
            pass  # its query is done; rendering its answer still holds the place
        async with budget.on_lane():
            pass  # a second query of the same request (an expansion) needs no second place
        async with reads.turn("198.51.100.2") as other:
            with pytest.raises(OverBudget) as busy:
                async with other.on_lane():
                    pass
            assert busy.value.kind == "busy"
    async with reads.turn("198.51.100.2") as other, other.on_lane():
        pass


async def test_requests_whose_pages_do_not_fit_beside_each_other_take_turns() -> None:
    reads = PublicReads(PublicReadSettings(readings_in_flight=100, queue=4), lane=2)
    entered: list[str] = []

    async def request(client: str, readings: int, leave: asyncio.Event) -> None:
        async with reads.turn(client) as budget, budget.on_lane(readings):
            entered.append(client)
            await leave.wait()

    first_done, second_done = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(request("198.51.100.1", 80, first_done))
    second = asyncio.create_task(request("198.51.100.2", 50, second_done))
    for _ in range(10):
        await asyncio.sleep(0)
    assert entered == ["198.51.100.1"]  # a place is free, but 80 + 50 readings do not fit in 100
    first_done.set()
    await first
    for _ in range(10):
        await asyncio.sleep(0)
    assert entered == ["198.51.100.1", "198.51.100.2"]
    second_done.set()
    await second
    # One request alone always fits, however large its page.
    big = asyncio.Event()
    big.set()
    await request("198.51.100.3", 1_000, big)
