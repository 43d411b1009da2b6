"""Pytest fixtures that start hil-sim scenarios and uplink proxies and stop them after the test.

Use from a test package's conftest.py:
``from hilsim.pytest_plugin import hilsim_run, uplink_proxy  # noqa: F401``
(or ``pytest_plugins = ["hilsim.pytest_plugin"]`` in the root conftest).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from hilsim.netproxy import ProxyStep, UplinkProxy
from hilsim.scenario import Scenario, Simulation, run_scenario

__all__ = ["hilsim_run", "uplink_proxy"]


@pytest_asyncio.fixture
async def hilsim_run(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Simulation]]]:
    """`sim = await hilsim_run("default", seed=1)`: a running scenario, stopped when the test ends."""
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def start(scenario: str | Path | Scenario, **kwargs: Any) -> Simulation:
            nonlocal count
            count += 1
            kwargs.setdefault("run_dir", tmp_path / f"hilsim-{count}")
            return await stack.enter_async_context(run_scenario(scenario, **kwargs))

        yield start


@pytest_asyncio.fixture
async def uplink_proxy() -> AsyncIterator[Callable[..., Awaitable[UplinkProxy]]]:
    """`proxy = await uplink_proxy(hub_port)`: a proxy on 127.0.0.1 in front of the hub, stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(upstream_port: int, *, schedule: list[ProxyStep] | None = None) -> UplinkProxy:
            proxy = UplinkProxy(upstream_port=upstream_port, schedule=schedule or ())
            return await stack.enter_async_context(proxy)

        yield start
