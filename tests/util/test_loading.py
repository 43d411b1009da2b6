"""Modules held back while `ocn-edge run` starts load when it lets them, and at once when nothing holds them."""

from __future__ import annotations

import asyncio

from edge.util.loading import hold_back, load_module


async def test_a_load_waits_while_held_back_and_goes_on_when_released() -> None:
    held = hold_back()
    load = asyncio.ensure_future(load_module("json"))
    await asyncio.sleep(0.05)
    assert not load.done()
    held.release()
    assert (await asyncio.wait_for(load, 5)).__name__ == "json"


async def test_without_a_hold_a_load_does_not_wait() -> None:
    hold_back().release(load=False)
    assert (await asyncio.wait_for(load_module("json"), 5)).__name__ == "json"
