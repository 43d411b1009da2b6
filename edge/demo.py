"""`ocn-edge demo`: simulated devices -> gateway -> hub, all on this machine, with a live status line."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.config import ConfigError, load_config
from edge.enrol import enrol
from edge.logs import setup_logging
from edge.runtime import Gateway
from edge.starter import DEMO_POLICY
from hilsim import ScenarioError, run_scenario
from hub.app import RunningHub, run_hub

__all__ = ["run_demo", "DEMO_POLICY"]

log = logging.getLogger("ocn.demo")


# Short batches so readings reach the hub within seconds; a pole would use minutes.
DEMO_BATCH_SPAN_S = 10.0
DEMO_FLUSH_S = 5.0
DRAIN_TIMEOUT_S = 20.0


async def run_demo(
    *,
    duration: float | None = None,
    as_json: bool = False,
    scenario: str = "default",
    state_dir: str | None = None,
    seed: int = 1,
    log_format: str = "logfmt",
) -> int:
    # Warnings and errors go to stderr; stdout carries the status line and the summary.
    setup_logging("warning", stream=sys.stderr, fmt=log_format)
    if state_dir and Path(state_dir).exists() and any(Path(state_dir).iterdir()):
        # The summary counts what this run did at the hub: a hub from an earlier run would blur it.
        print(f"ocn-edge demo: --state-dir {state_dir} is not empty; give a new or empty directory", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        state = Path(state_dir) if state_dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ocn-demo-")))
        state.mkdir(parents=True, exist_ok=True)
        try:
            summary = await _run(state, duration=duration, scenario=scenario, seed=seed, live=not as_json)
        except (ScenarioError, ConfigError) as exc:
            # A scenario that cannot start (unknown name, bad field, a replay file not found) or a gateway
            # config it cannot load: say which file and field, without a traceback.
            print(f"ocn-edge demo: {exc}", file=sys.stderr)
            return 2
    if as_json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        print(_summary_text(summary))
    return 0 if summary["readings_lost"] == 0 and summary["duplicates"] == 0 else 1


async def _run(state: Path, *, duration: float | None, scenario: str, seed: int, live: bool) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    async with run_hub(listen="127.0.0.1:0", state_dir=state / "hub") as hub:
        token = await hub.create_token(approve=True, note="ocn-edge demo")
        async with run_scenario(scenario, seed=seed, run_dir=state / "sim") as sim:
            config_path = state / "gateway.toml"
            config_path.write_text(
                sim.gateway_config_toml(
                    state_dir=state / "gateway", hub=hub.url, gateway_id="demo-gateway", policy=str(DEMO_POLICY)
                )
            )
            config = load_config(config_path)
            config = dataclasses.replace(
                config, batch=dataclasses.replace(config.batch, span=DEMO_BATCH_SPAN_S, flush_interval=DEMO_FLUSH_S)
            )
            await enrol(hub_url=hub.url, token=token, device_id=config.gateway.id, key_path=Path(config.uplink.key))
            gateway = Gateway(config)
            await gateway.start()
            if live:
                print(f"demo: {len(gateway.devices or ())} simulated devices -> gateway -> hub at {hub.url} (Ctrl-C to stop)")
                print(f"      fleet dashboard (one-time login link, 10 minutes): {await hub.login_link()}")
                print(f"      public transparency register: {hub.url}/transparency")
            try:
                while not stop.is_set():
                    if duration is not None and time.monotonic() - started >= duration:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await stop.wait()
                    if live:
                        acked = (await hub.counters(config.gateway.id))["readings_stored"]
                        _status_line(gateway, acked, time.monotonic() - started)
            finally:
                if live:
                    print()
                await gateway.stop(drain_timeout_s=DRAIN_TIMEOUT_S)
        hub_counts = await hub.counters(config.gateway.id)
        unique = await _unique_readings(hub, config.gateway.id)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    return _summary(gateway, hub_counts, unique, time.monotonic() - started)


async def _unique_readings(hub: RunningHub, device_id: str) -> int:
    """Distinct (channel, time) pairs the hub stored: equal to the stored count when nothing is duplicated."""
    rows = await hub.store.readings(device_id=device_id, limit=1_000_000)
    return len({(r.channel, r.ts_ms) for r in rows})


def _status_line(gateway: Gateway, acked: int, elapsed: float) -> None:
    st = gateway.status()
    batch = st.get("batcher", {})
    spool = st.get("spool", {})
    failing = [name for name, d in st["devices"].items() if d["failing"]]
    line = (
        f"\r{elapsed:6.0f}s  read {st['readings_read']:>7}  released {st['readings_released']:>6}  "
        f"sealed {batch.get('batches_sealed', 0):>4} batches  spool {spool.get('batches', 0):>3}  "
        f"hub acked {acked:>6}" + (f"  failing: {','.join(failing)}" if failing else "")
    )
    sys.stdout.write(line.ljust(110))
    sys.stdout.flush()


def _summary(gateway: Gateway, hub_counts: dict[str, int], unique: int, elapsed: float) -> dict[str, Any]:
    batch = gateway.batcher.stats() if gateway.batcher else {}
    spool = gateway.spool_stats_at_stop or {}
    released = gateway.counters.readings_released
    acked = hub_counts["readings_stored"]
    in_spool = spool.get("readings", 0)
    return {
        "seconds": round(elapsed, 1),
        "devices": len(gateway.devices or ()),
        "readings_read": gateway.counters.readings_read,
        "readings_released": released,
        "batches_sealed": batch.get("batches_sealed", 0),
        "bytes_sealed": batch.get("bytes_sealed", 0),
        "readings_acknowledged": acked,
        "readings_in_spool": in_spool,
        "readings_lost": released - acked - in_spool,
        "duplicates": acked - unique,
        "batches_resent_to_hub": hub_counts["duplicates"],
    }


def _summary_text(s: dict[str, Any]) -> str:
    per = s["bytes_sealed"] / s["readings_released"] if s["readings_released"] else 0.0
    return "\n".join(
        [
            f"demo ran {s['seconds']} s with {s['devices']} simulated devices",
            f"  readings read from devices      {s['readings_read']}",
            f"  released by the privacy policy  {s['readings_released']}",
            f"  batches sealed                  {s['batches_sealed']} ({s['bytes_sealed']} bytes, {per:.2f} bytes/reading)",
            f"  acknowledged by the hub         {s['readings_acknowledged']}",
            f"  still in the spool              {s['readings_in_spool']}",
            f"  lost                            {s['readings_lost']}",
            f"  duplicates at the hub           {s['duplicates']}",
        ]
    )
