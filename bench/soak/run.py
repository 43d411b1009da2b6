"""Running the soak: hil-sim, a real `ocn-edge run` process and a real hub process, through a timeline of faults.

Everything the reconciliation needs is left in the run directory: hil-sim's ledger
(``ledger.tsv``), the hub's database (``hub.db``), the gateway's state and spool (``state/``),
its config and logs, and ``soak.json`` (when each kill, unplug and quota window happened, the
gateway's own counters from its ``/metrics`` before the last stop, the pre-sealed backlog).
See docs/soak.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aiohttp

from bench.pipeline import child_env, hub_command
from bench.soak.reconcile import Events
from edge.config import load_config
from edge.enrol import enrol
from edge.privacy.policy import parse_policy
from edge.protocol import BatchHeader, key_id, load_private_key, seal_batch
from edge.protocol.types import Channel, Reading
from edge.spool import Spool
from edge.util.clock import now_ms
from hilsim.scenario import Simulation, load_scenario, run_scenario
from hilsim.serial_devices import SerialDevice

__all__ = ["FILLER", "GATEWAY_ID", "POLICY", "SCENARIO", "filler_readings", "run_soak"]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_ID = "soak-gw"
FLUSH_S = 2.0  # the batch flush interval: the documented at-risk window of a kill -9
SPOOL_QUOTA = "1MB"  # the smallest quota the config accepts
HEADROOM = 3_000  # at most this many bytes left free by the pre-sealed backlog: a few seconds of real readings
FILLER = Channel("filler-0/noise", unit="", description="incompressible pre-sealed backlog that brings the spool to its quota")

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.toml"
POLICY = HERE / "policy.toml"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wall_ms() -> int:
    return now_ms()


class Hub:
    """The hub as a process on a fixed port, so it can go down and come back where the proxy expects it."""

    def __init__(self, directory: Path) -> None:
        self.db = f"sqlite:///{directory / 'hub.db'}"
        self.state = directory / "hub"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "hub.log"
        self.proc: asyncio.subprocess.Process | None = None

    def token(self) -> str:
        return subprocess.run(hub_command("token", "create", "--db", self.db, "--state-dir", str(self.state), "--uses", "1", "--approve"),
                              check=True, capture_output=True, text=True, env=child_env(), cwd=ROOT).stdout.strip()

    async def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *hub_command("--listen", f"127.0.0.1:{self.port}", "--db", self.db, "--state-dir", str(self.state),
                         "--admin-token", "soak-admin-token", "--rate", "100000", "--burst", "1000000", "--readings-rate", "0",
                         "--log-level", "info"),
            stdout=log, stderr=log, env=child_env(), cwd=ROOT)
        log.close()
        async with asyncio.timeout(60):
            while True:
                if self.proc.returncode is not None:
                    raise SystemExit(f"soak: the hub exited with {self.proc.returncode}; see {self.log}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                except OSError:
                    await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            async with asyncio.timeout(60):
                await self.proc.wait()
        self.proc = None


class Gateway:
    """`ocn-edge run` as a process; its log lines are watched for the moments the reconciliation needs."""

    def __init__(self, directory: Path, config: Path, events: Events, api: str) -> None:
        self.directory = directory
        self.api = api
        self.metrics: list[dict[str, float]] = []  # /metrics just before each kill and the last stop
        self.config = config
        self.events = events
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.full_since: int | None = None
        self.summaries: list[str] = []
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.runs += 1
        path = self.directory / f"gateway-{self.runs}.log"
        out = open(path, "wb")
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edge.cli", "run", str(self.config),
                                                         stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT)
        out.close()
        running = asyncio.get_running_loop().create_future()
        self._watch = asyncio.create_task(self._follow(path, running))
        async with asyncio.timeout(60):
            await running
        self.events.runs.append((wall_ms(), None))

    async def _follow(self, path: Path, running: asyncio.Future[None]) -> None:
        with open(path, encoding="utf-8", errors="replace") as f:
            while True:
                line = f.readline()
                if not line:
                    if self.proc is None or self.proc.returncode is not None:
                        return
                    await asyncio.sleep(0.05)
                    continue
                if "gateway running" in line and not running.done():
                    running.set_result(None)
                elif "spool full" in line and self.full_since is None:
                    self.full_since = wall_ms()
                elif "spool has room again" in line and self.full_since is not None:
                    self.events.quota.append((self.full_since, wall_ms()))
                    self.full_since = None
                elif "stopped cleanly" in line:
                    self.summaries.append(line.strip())

    def _ended(self) -> None:
        start, _ = self.events.runs[-1]
        self.events.runs[-1] = (start, wall_ms())

    async def scrape(self) -> None:
        """Keep the gateway's own counters of this run (they live in its memory and end with it)."""
        with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
            self.metrics.append(await scrape(self.api))

    async def kill(self) -> None:
        assert self.proc is not None
        await self.scrape()
        self.events.kills.append(wall_ms())
        self._ended()
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self.full_since is not None:  # killed while the spool refused batches: the window ends with the run
            self.events.quota.append((self.full_since, wall_ms()))
            self.full_since = None
        await self._finish_watch()

    async def stop(self) -> int:
        """SIGTERM: the gateway reads nothing more, flushes what it holds and drains its spool before it exits."""
        assert self.proc is not None
        await self.scrape()
        self._ended()
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(120):
            code = await self.proc.wait()
        await self._finish_watch()
        return code

    async def _finish_watch(self) -> None:
        if self._watch is not None:
            await asyncio.wait_for(self._watch, 10)


FILLER_BATCH = 1500  # readings in a full pre-sealed batch (about 12 kB sealed: random doubles do not compress)


def filler_readings(start_ms: int, counts: Sequence[int]) -> list[Reading]:
    """The readings of pre-sealed batches of ``counts`` readings each: the same every time, so the reconciliation can rebuild them."""
    out: list[Reading] = []
    for batch, count in enumerate(counts):
        out += _filler_batch(start_ms + len(out), batch, count)
    return out


def _filler_batch(first_ms: int, batch: int, count: int) -> list[Reading]:
    rng = random.Random(f"soak-filler:{batch}")
    return [Reading(FILLER.id, first_ms + i, rng.random() * 1e6, "") for i in range(count)]


async def prefill(state: Path, policy_digest: bytes, quota: int) -> tuple[int, list[int]]:
    """Seal filler batches into the gateway's spool until at most HEADROOM bytes are left under the quota.

    Returns the first timestamp and each batch's reading count.
    """
    key = load_private_key(state / "device.key")
    spool = await Spool.open(state / "spool.db", max_bytes=quota)
    boot = await spool.begin_boot()
    start = wall_ms() - 600_000
    counts: list[int] = []
    count = FILLER_BATCH
    while count >= 8 and quota - spool.stats()["bytes"] > HEADROOM:
        readings = _filler_batch(start + sum(counts), len(counts), count)
        header = BatchHeader(device_id=GATEWAY_ID, key_id=key_id(key), boot_epoch=boot.boot_epoch, seq=spool.allocate_seq(),
                             policy_digest=policy_digest, codec="zstd", created_ms=readings[0].ts_ms, counters=spool.counters())
        data = seal_batch(header, (FILLER,), readings, key)
        if spool.stats()["bytes"] + len(data) > quota:
            count //= 2  # too big for what is left: a smaller batch comes closer to the quota
            continue
        spool.put(data, readings=len(readings))
        counts.append(count)
    await spool.mark_clean_shutdown()
    await spool.close()
    return start, counts


async def watch_unplugs(sim: Simulation, events: Events, stop: asyncio.Event) -> None:
    """Record when each serial device's pty (and each RS-485 line's) goes and comes back."""
    lines = {dev: line for line in sim.rtu_lines.values() for dev, unit in sim.devices.items() if unit in line.units.values()}
    gone: dict[str, int] = {}
    while not stop.is_set():
        now = wall_ms()
        for name, device in sim.devices.items():
            if isinstance(device, SerialDevice):
                present = device.port.present
            elif name in lines:
                present = lines[name].port.present
            else:
                continue
            if not present and name not in gone:
                gone[name] = now
            elif present and name in gone:
                events.unplugged.setdefault(name, []).append((gone.pop(name), now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def scrape(url: str) -> dict[str, float]:
    """The gateway's own counters from its /metrics (ocn_edge_* samples, labels folded into the name)."""
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith("ocn_edge_"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
    return out


Step = tuple[float, str, Callable[[], Awaitable[None]]]


async def run_soak(minutes: float, directory: Path, seed: int) -> bool:
    """Run the timeline in ``directory``; True if the gateway stopped cleanly at the end (evidence in soak.json)."""
    duration = minutes * 60.0
    events = Events(flush_ms=int(FLUSH_S * 1000))
    hub = Hub(directory)
    token = hub.token()
    await hub.start()
    ledger = directory / "ledger.tsv"
    async with run_scenario(load_scenario(SCENARIO), seed=seed, run_dir=directory / "sim", ledger=ledger, hub=hub.url + "/") as sim:
        assert sim.proxy is not None
        proxy = sim.proxy
        (directory / "policy.toml").write_text(POLICY.read_text())
        state = directory / "state"
        api = free_port()
        text = sim.gateway_config_toml(state_dir=state, gateway_id=GATEWAY_ID, policy="policy.toml", local_api_listen=f"127.0.0.1:{api}")
        text = (text.replace('span = "5m"', 'span = "1m"').replace('flush_interval = "30s"', f'flush_interval = "{FLUSH_S:g}s"')
                .replace('max_size = "200MB"', f'max_size = "{SPOOL_QUOTA}"').replace('when_full = "drop_oldest"', 'when_full = "refuse_newest"')
                .replace('timeout = "30s"', 'timeout = "5s"'))
        config_path = directory / "gateway.toml"
        config_path.write_text(text)
        quota = load_config(config_path).spool.max_size
        await enrol(hub_url=hub.url, token=token, device_id=GATEWAY_ID, key_path=state / "device.key")
        filler_start, filler_counts = await prefill(state, parse_policy(POLICY.read_text()).digest, quota)
        gateway = Gateway(directory, config_path, events, f"http://127.0.0.1:{api}/metrics")
        stop_watch = asyncio.Event()
        watcher = asyncio.create_task(watch_unplugs(sim, events, stop_watch))
        t0 = time.monotonic()
        proxy.set_mode("cut")  # the link is down from the start: the backlog cannot drain and the quota is reached

        async def restart_gateway() -> None:
            await gateway.kill()
            await asyncio.sleep(1.5)
            await gateway.start()

        async def hub_down() -> None:
            await hub.stop(signal.SIGTERM)

        async def hub_restart() -> None:
            await hub.stop(signal.SIGKILL)
            await hub.start()

        def mode(name: str, **kw: int) -> Callable[[], Awaitable[None]]:
            async def switch() -> None:
                proxy.set_mode(name, **kw)
            return switch

        # The rest of the timeline starts once the quota window has closed, so no reading's cause is ambiguous.
        steps: list[Step] = [
            (0.00, "kill -9 the gateway, restart it", restart_gateway),
            (0.07, "the hub answers 503", mode("http503")),
            (0.13, "link back", mode("pass")),
            (0.18, "garbage instead of the hub's answers", mode("garbage")),
            (0.23, "link back", mode("pass")),
            (0.28, "hub down (SIGTERM)", hub_down),
            (0.35, "hub up", hub.start),
            (0.41, "kill -9 the gateway, restart it", restart_gateway),
            (0.46, "link throttled to 2 kB/s", mode("throttle", rate=2048)),
            (0.54, "link back", mode("pass")),
            (0.58, "link cut", mode("cut")),
            (0.63, "link back", mode("pass")),
            (0.67, "hub restart (SIGKILL)", hub_restart),
            (0.73, "kill -9 the gateway, restart it", restart_gateway),
            (0.78, "link black-holed", mode("blackhole")),
            (0.84, "link back", mode("pass")),
            (0.90, "kill -9 the gateway, restart it", restart_gateway),
        ]
        print(f"soak: {minutes:g} min in {directory}; hub {hub.url}, uplink proxy {proxy.url}, {len(sim.devices)} devices", flush=True)

        def note(what: str) -> None:
            print(f"  {time.monotonic() - t0:6.1f} s  {what}", flush=True)

        note("gateway started with its spool nearly full, the link cut")
        await gateway.start()
        await asyncio.sleep(max(20.0, 0.12 * duration))
        note("link back (the backlog drains, then the spool has room again)")
        proxy.set_mode("pass")
        async with asyncio.timeout(max(60.0, 0.3 * duration)):
            while gateway.full_since is not None or (await scrape(gateway.api)).get("ocn_edge_spool_bytes", quota) > quota / 2:
                await asyncio.sleep(0.5)  # the backlog drains; the quota window closes with it
        await asyncio.sleep(FLUSH_S + 4.0)
        base = time.monotonic() - t0
        span = 0.96 * duration - base
        for fraction, what, action in steps:
            await asyncio.sleep(max(0.0, t0 + base + fraction * span - time.monotonic()))
            note(what)
            await action()
        await asyncio.sleep(max(0.0, t0 + 0.96 * duration - time.monotonic()))
        note("SIGTERM the gateway (it seals what memory holds into its spool)")
        code = await gateway.stop()
        stop_watch.set()
        await watcher
    await hub.stop()
    evidence = {
        "minutes": minutes, "seed": seed, "gateway_exit": code, "events": dataclasses.asdict(events), "metrics": gateway.metrics,
        "quota_bytes": quota, "filler": {"start_ms": filler_start, "counts": filler_counts},
        "link_bytes": {"up": proxy.bytes_up, "down": proxy.bytes_down}, "summaries": gateway.summaries, "gateway_runs": gateway.runs,
    }
    (directory / "soak.json").write_text(json.dumps(evidence, indent=1))
    if code != 0:
        print(f"soak: the gateway's clean stop exited {code}; see {directory}/gateway-{gateway.runs}.log", file=sys.stderr)
    return code == 0
