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
import getpass
import glob
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.pipeline import child_env, hub_command
from bench.releases import BASE_PYTHON, NEVER_DELIVERS, Releases, Supervisor, build_releases, install_sh
from bench.soak.reconcile import Events
from edge.config import load_config
from edge.enrol import enrol
from edge.privacy.policy import parse_policy
from edge.protocol import BatchHeader, key_id, load_private_key, seal_batch
from edge.protocol.types import Channel, Reading
from edge.spool import Spool
from edge.update.fetch import INSTALLED_FILE
from edge.uplink import BACKOFF_INITIAL_S, BACKOFF_MAX_S
from edge.util.backoff import Backoff
from edge.util.clock import now_ms
from hilsim.modbus_devices import ModbusDevice
from hilsim.scenario import Simulation, load_scenario, run_scenario
from hilsim.serial_devices import SerialDevice

__all__ = ["FILLER", "GATEWAY_ID", "POLICY", "SCENARIO", "filler_readings", "run_soak"]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_ID = "soak-gw"
FLUSH_S = 2.0  # the batch flush interval: the documented at-risk window of a kill -9
DRAIN_S = 10.0  # the backlog drains within this after the link is back, when the gateway tries again at once
SPOOL_QUOTA = "1MB"  # the smallest quota the config accepts
HEADROOM = 3_000  # at most this many bytes left free by the pre-sealed backlog: a few seconds of real readings
BROKER_ADMIN = "ocn-hub"  # the broker's dynamic-security admin: the hub's own user
TRANSPORTS = ("http", "mqtt")
FLEET = "soak"  # the gateway's fleet at the hub, which rollouts target
VERSIONS = ("1.0.0", "2.0.0")  # installed first, then rolled out through the hub
BAD = "3.0.0"  # rolled out next: its uplink never delivers (bench/releases NEVER_DELIVERS), so its probation fails
GOOD_DEADLINE_S = 120.0  # 2.0.0's probation ends as soon as it has proven itself; a loaded machine is slow to prove
BAD_DEADLINE_S = 6.0  # 3.0.0 fails by running out of it: time to read, seal and find no batch acknowledged
UPDATE_TIMEOUT_S = 300.0  # a rollout, the download, a slot built with pip, the probation and the hub's next look at the rollout
START_LIMIT = 5  # StartLimitBurst= of images/systemd/ocn-edge.service.d/rollback.conf: the timeline's four kill -9s stay under it
RESTART_S = 1.5  # RestartSec= (5 s on a device): the time between a kill -9 and the next start
FILLER = Channel("filler-0/noise", unit="", description="incompressible pre-sealed backlog that brings the spool to its quota")

HERE = Path(__file__).resolve().parent
SCENARIO = HERE / "scenario.toml"
POLICY = HERE / "policy.toml"

def free_port() -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range, for a server that is stopped and started again.

    A port from the ephemeral range may be taken, while its server is down, as the local end of some
    outgoing connection (even one to that very port): the restarted server then cannot bind it.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit(f"soak: no free port on 127.0.0.1 below {low} (the ephemeral range starts there)")


def wall_ms() -> int:
    return now_ms()


class Hub:
    """The hub as a process on a fixed port, so it can go down and come back where the proxy expects it."""

    def __init__(self, directory: Path, *, mqtt: list[str] | None = None) -> None:
        self.mqtt = mqtt or []  # --mqtt-* arguments: the hub also takes OXP from the broker
        self.db = f"sqlite:///{directory / 'hub.db'}"
        self.state = directory / "hub"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "hub.log"
        self.proc: asyncio.subprocess.Process | None = None

    def token(self) -> str:
        return self.cli("token", "create", "--uses", "1", "--approve", "--fleet", FLEET).strip()

    def cli(self, *arguments: str) -> str:
        """`ocn-edge hub ...` as city IT runs it beside the running hub, on its database and state directory; its output."""
        done = subprocess.run(hub_command(*arguments, "--db", self.db, "--state-dir", str(self.state)), capture_output=True, text=True,
                              env=child_env(), cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"soak: ocn-edge hub {' '.join(arguments)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    async def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *hub_command("--listen", f"127.0.0.1:{self.port}", "--db", self.db, "--state-dir", str(self.state),
                         "--admin-token", "soak-admin-token", "--rate", "100000", "--burst", "1000000", "--readings-rate", "0",
                         "--log-level", "info", *self.mqtt),
            stdout=log, stderr=log, env=child_env(), cwd=ROOT)
        log.close()
        async with asyncio.timeout(60):
            while True:
                if self.proc.returncode is not None:
                    tail = self.log.read_text(errors="replace").splitlines()[-8:]
                    raise SystemExit(f"soak: the hub exited with {self.proc.returncode} as it started; the end of {self.log}:\n" + "\n".join(tail))
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


class Broker:
    """Mosquitto on loopback with dynamic security, as docs/fleet.md sets one up: the hub is its admin and makes each gateway's client."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "broker"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password_file = self.directory / "hub.password"
        self.proc: subprocess.Popen[bytes] | None = None

    def hub_arguments(self) -> list[str]:
        password = secrets.token_urlsafe(16)
        self.password_file.write_text(password + "\n")
        dynsec = self.directory / "dynsec.json"
        subprocess.run([_tool("mosquitto_ctrl"), "dynsec", "init", str(dynsec), BROKER_ADMIN, password], check=True, capture_output=True)
        os.chmod(dynsec, 0o600)
        plugins = sorted(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob("/usr/lib/mosquitto_dynamic_security.so"))
        if not plugins:
            raise SystemExit("soak --transport mqtt: needs Mosquitto's dynamic-security plugin (apt-get install mosquitto)")
        (self.directory / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nuser {getpass.getuser()}\nallow_anonymous false\nplugin {plugins[0]}\n"
            f"plugin_opt_config_file {dynsec}\npersistence true\npersistence_location {self.directory}/\n"
            "log_type error\nlog_type warning\nlog_type notice\n")
        return ["--mqtt-broker", f"mqtt://{BROKER_ADMIN}@127.0.0.1:{self.port}", "--mqtt-password-file", str(self.password_file),
                "--mqtt-client-id", "ocn-hub-soak"]

    async def start(self) -> None:
        with open(self.directory / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([_tool("mosquitto"), "-c", str(self.directory / "mosquitto.conf")], stdout=log, stderr=log)
        async with asyncio.timeout(20):
            while True:
                if self.proc.poll() is not None:
                    raise SystemExit(f"soak: mosquitto exited; see {self.directory / 'mosquitto.log'}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.close()
                    return
                except OSError:
                    await asyncio.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"soak --transport mqtt: needs {name} on PATH (apt-get install mosquitto)")
    return path


class Gateway:
    """`ocn-edge run` from the installed slot, started and restarted by the supervisor as systemd runs it on a device
    (bench/releases); its log lines are watched for the moments the reconciliation needs.

    A run ends in one of three ways, each recorded as it happens: a kill -9 by the soak, the last SIGTERM by the soak,
    or a SIGTERM by the installer, which restarts the gateway into a new slot (an update, a rollback): the moment that
    SIGTERM is sent is noted by the installer's restart command (``run/restarts``). Any other end is unexpected.
    """

    def __init__(self, directory: Path, supervisor: Supervisor, events: Events, api: str) -> None:
        self.directory = directory
        self.supervisor = supervisor
        self.api = api
        self.metrics: list[dict[str, float]] = []  # /metrics just before each kill and the last stop
        self.events = events
        self.proc: subprocess.Popen[bytes] | None = None
        self.full_since: int | None = None
        self.summaries: list[str] = []
        self.unexpected: list[str] = []  # runs that ended by themselves
        self.restarts_file = supervisor.root / "run" / "restarts"
        self._restarts_seen = 0
        self._asked: set[int] = set()  # pids the soak killed or stopped itself
        self._follows: list[asyncio.Task[None]] = []
        self._watch: asyncio.Task[None] | None = None

    @property
    def runs(self) -> int:
        return self.supervisor.gateway_starts

    async def start(self) -> None:
        """The supervisor starts the installed version; returns when it says it is running."""
        self.supervisor.start()
        self._watch = asyncio.create_task(self._supervise())
        await self.running(1)

    async def running(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` runs have said "gateway running"."""
        async with asyncio.timeout(timeout):
            while len(self.events.runs) < count:
                if self._watch is not None and self._watch.done():
                    await self._watch  # raises what stopped it
                    raise SystemExit("soak: the supervisor's watch ended while the soak waited for the gateway")
                await asyncio.sleep(0.05)

    async def _supervise(self) -> None:
        while True:
            proc = self.proc
            if proc is not None and proc.poll() is not None and proc.pid not in self._asked:
                self._asked.add(proc.pid)  # handled once
                self._ended_by_itself(proc)
            latest = self.supervisor.gateway
            if latest is not None and latest is not self.proc and (proc is None or proc.poll() is not None):
                self.proc = latest
                path = self.supervisor.root / "logs" / f"gateway-{self.supervisor.gateway_starts}.log"
                self._follows.append(asyncio.create_task(self._follow(path, latest)))
            await asyncio.sleep(0.05)

    def _ended_by_itself(self, proc: subprocess.Popen[bytes]) -> None:
        """A run the soak did not end: the installer's restart (it noted the moment first), or an unexpected exit."""
        noted = self.restarts_file.read_text().split() if self.restarts_file.exists() else []
        if len(noted) > self._restarts_seen:
            at = int(noted[-1])
            self._restarts_seen = len(noted)
            self.events.restarts.append((at, None))
            self._ended(at)
        else:
            self.unexpected.append(f"gateway run {self.runs} exited {proc.returncode} by itself")
            self._ended(wall_ms())
        self._close_quota(wall_ms())

    async def _follow(self, path: Path, proc: subprocess.Popen[bytes]) -> None:
        while not path.exists():
            await asyncio.sleep(0.05)
        with open(path, encoding="utf-8", errors="replace") as f:
            while True:
                line = f.readline()
                if not line:
                    if proc.poll() is not None:
                        return
                    await asyncio.sleep(0.05)
                    continue
                if "gateway running" in line:
                    now = wall_ms()
                    self.events.runs.append((now, None))
                    if self.events.restarts and self.events.restarts[-1][1] is None:  # the new slot runs: its restart window closes
                        self.events.restarts[-1] = (self.events.restarts[-1][0], now)
                elif "spool full" in line and self.full_since is None:
                    self.full_since = wall_ms()
                elif "spool has room again" in line and self.full_since is not None:
                    self.events.quota.append((self.full_since, wall_ms()))
                    self.full_since = None
                elif "stopped cleanly" in line:
                    self.summaries.append(line.strip())

    def _ended(self, at: int) -> None:
        if self.events.runs and self.events.runs[-1][1] is None:
            start, _ = self.events.runs[-1]
            self.events.runs[-1] = (start, at)

    def _close_quota(self, at: int) -> None:
        if self.full_since is not None:  # ended while the spool refused batches: the window ends with the run
            self.events.quota.append((self.full_since, at))
            self.full_since = None

    async def scrape(self) -> None:
        """Keep the gateway's own counters of this run (they live in its memory and end with it)."""
        with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
            self.metrics.append(await scrape(self.api))

    async def kill(self) -> None:
        """kill -9; the supervisor starts it again after its RestartSec (``restart_s``); returns when it runs again."""
        proc = self.proc
        assert proc is not None and proc.poll() is None, "kill -9: no gateway runs"
        await self.scrape()
        self._asked.add(proc.pid)
        self.events.kills.append(wall_ms())
        self._ended(wall_ms())
        proc.send_signal(signal.SIGKILL)
        while proc.poll() is None:
            await asyncio.sleep(0.02)
        self._close_quota(wall_ms())
        await self.running(len(self.events.runs) + 1)

    async def stop(self) -> int:
        """SIGTERM, and no restart: the gateway reads nothing more, seals what it holds into its spool and exits."""
        proc = self.proc
        assert proc is not None
        await self.scrape()
        self._asked.add(proc.pid)
        self._ended(wall_ms())
        self.events.stops.append(wall_ms())
        await asyncio.to_thread(self.supervisor.stop)  # no restart, then SIGTERM and wait
        code = proc.wait()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await asyncio.wait_for(asyncio.gather(*self._follows), 10)
        return code


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
    """Record when each device goes and comes back: a serial device's pty, an RS-485 line's pty or a unit's power,
    a Modbus TCP server (down while any unit on it is: hil-sim stops the server); one still away at ``stop``, until then."""
    lines = {dev: line for line in sim.rtu_lines.values() for dev, unit in sim.devices.items() if unit in line.units.values()}
    servers = {dev: bus for bus in sim.tcp_buses.values() for dev, unit in sim.devices.items() if unit in bus.units.values()}
    gone: dict[str, int] = {}
    while not stop.is_set():
        now = wall_ms()
        for name, device in sim.devices.items():
            if isinstance(device, SerialDevice):
                present = device.port.present
            elif name in lines:
                present = lines[name].port.present and isinstance(device, ModbusDevice) and device.present
            elif name in servers:
                present = all(unit.present for unit in servers[name].units.values())
            else:
                continue
            if not present and name not in gone:
                gone[name] = now
            elif present and name in gone:
                events.unplugged.setdefault(name, []).append((gone.pop(name), now))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    # Still away when the soak stops (the last SIGTERM came during an unplug): gone until the end, so a value served
    # just before it went, whose reply the gateway never read, is explained like any other unplug's.
    end = wall_ms()
    for name, at in gone.items():
        events.unplugged.setdefault(name, []).append((at, end))


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


async def prepare_root(directory: Path) -> tuple[Releases, Path]:
    """Releases 1.0.0, 2.0.0 and the bad 3.0.0 (bench/releases), and 1.0.0 installed by images/install.sh in ``directory/root``."""
    releases = await asyncio.to_thread(build_releases, directory / "releases", (*VERSIONS, BAD), defects={BAD: {"edge/uplink.py": NEVER_DELIVERS}})
    root = directory / "root"
    await asyncio.to_thread(install_sh, root, releases, VERSIONS[0])
    (root / "var/lib/ocn-edge").mkdir(parents=True, mode=0o700)  # StateDirectory= makes it on a device
    return releases, root


class Updates:
    """Software updates through the hub, as city IT runs them (docs/updates.md): a rollout, then what the gateway's installer did."""

    def __init__(self, hub: Hub, releases: Releases, supervisor: Supervisor, gateway: Gateway) -> None:
        self.hub = hub
        self.releases = releases
        self.supervisor = supervisor
        self.gateway = gateway
        self.steps: list[dict[str, Any]] = []  # what each rollout did, for soak.json

    def register(self) -> None:
        for bundle in self.releases.bundles.values():
            self.hub.cli("release", "add", str(bundle), "--key", str(self.releases.public_key))

    def outcome(self) -> dict[str, Any]:
        path = self.supervisor.state / "update" / INSTALLED_FILE
        try:
            value: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return value

    def rollout_state(self, version: str) -> str:
        rollouts = json.loads(self.hub.cli("rollout", "status", "--json"))
        return next((r["state"] for r in rollouts if r["version"] == version), "")

    async def roll_out(self, version: str, arguments: Sequence[str], *, deadline_s: float, restarts: int, labels: Sequence[str], until: str) -> None:
        """Start a rollout of ``version`` to the gateway's fleet and wait until its installer records the outcome, the gateway
        has come back from ``restarts`` restarts (the update, a rollback) and the rollout is in state ``until``."""
        began = time.monotonic()
        self.supervisor.deadline_s = deadline_s  # the probation's deadline, read when the installer starts
        first = len(self.gateway.events.restarts)
        await asyncio.to_thread(self.hub.cli, "rollout", "start", version, "--fleet", FLEET, *arguments)
        async with asyncio.timeout(UPDATE_TIMEOUT_S):
            while self.outcome().get("version") != version:
                await asyncio.sleep(0.2)
            while len(self.gateway.events.restarts) < first + restarts or self.gateway.events.restarts[-1][1] is None:
                await asyncio.sleep(0.2)
            while (state := await asyncio.to_thread(self.rollout_state, version)) != until:
                await asyncio.sleep(1.0)
        outcome = self.outcome()
        windows = self.gateway.events.restarts[first:]
        self.steps.append({"version": version, "labels": list(labels), "restarts": windows, "outcome": outcome, "rollout": state,
                           "seconds": round(time.monotonic() - began, 1)})


async def run_soak(minutes: float, directory: Path, seed: int, *, transport: str = "http") -> bool:
    """Run the timeline in ``directory``; True if the gateway stopped cleanly at the end (evidence in soak.json).

    ``transport`` "mqtt": the gateway sends through a Mosquitto broker (which the timeline kills and
    restarts) instead of HTTP; the uplink proxy then sits between the gateway and the broker.
    """
    duration = minutes * 60.0
    events = Events(flush_ms=int(FLUSH_S * 1000))
    note_setup = time.monotonic()
    releases, root = await prepare_root(directory)
    print(f"soak: releases {', '.join(releases.bundles)} built, {VERSIONS[0]} installed in {root} ({time.monotonic() - note_setup:.0f} s)", flush=True)
    broker = Broker(directory) if transport == "mqtt" else None
    hub = Hub(directory, mqtt=broker.hub_arguments() if broker else None)
    token = hub.token()
    if broker:
        await broker.start()
    await hub.start()
    ledger = directory / "ledger.tsv"
    upstream = f"http://127.0.0.1:{broker.port}/" if broker else hub.url + "/"  # what the uplink proxy forwards to
    supervisor: Supervisor | None = None
    try:
        async with run_scenario(load_scenario(SCENARIO), seed=seed, run_dir=directory / "sim", ledger=ledger, hub=upstream) as sim:
            assert sim.proxy is not None
            proxy = sim.proxy
            (directory / "policy.toml").write_text(POLICY.read_text())
            state = root / "var/lib/ocn-edge"
            api = free_port()
            text = sim.gateway_config_toml(state_dir=state, gateway_id=GATEWAY_ID, policy="policy.toml", local_api_listen=f"127.0.0.1:{api}",
                                           hub=hub.url if broker else proxy.url)
            if broker:  # enrolment and the hub's key stay on HTTP; batches, reports and acks go through the broker
                text = text.replace("[uplink]\n", f'[uplink]\nbroker = "mqtt://127.0.0.1:{proxy.port}"\n')
            text = (text.replace('span = "5m"', 'span = "1m"').replace('flush_interval = "30s"', f'flush_interval = "{FLUSH_S:g}s"')
                    .replace('max_size = "200MB"', f'max_size = "{SPOOL_QUOTA}"').replace('when_full = "drop_oldest"', 'when_full = "refuse_newest"')
                    .replace('timeout = "30s"', 'timeout = "5s"'))
            # Each failure of a unit is in the gateway's log with its reason and time (the lines' logger at debug, not the
            # frames' hex): a reading the reconciliation cannot explain can be laid beside them.
            text += '\n[gateway.log_levels]\n"ocn.bus" = "debug"\n'
            config_path = directory / "gateway.toml"
            config_path.write_text(text)
            quota = load_config(config_path).spool.max_size
            await enrol(hub_url=hub.url, token=token, device_id=GATEWAY_ID, key_path=state / "device.key")
            filler_start, filler_counts = await prefill(state, parse_policy(POLICY.read_text()).digest, quota)
            restarts = root / "run" / "restarts"
            supervisor = Supervisor(
                root, config_path, status_url=f"http://127.0.0.1:{api}/status", python=BASE_PYTHON, start_limit=START_LIMIT, restart_s=RESTART_S,
                restart_command=f'date +%s%3N >> {restarts} && kill -TERM "$(cat {root / "run" / "gateway.pid"})"',
                # The gateway checks the hub's software targets with this root's release key and builds this root's slots; it runs
                # the slot's code only (not this tree's, which a PYTHONPATH would put first).
                env={"OCN_EDGE_RELEASE_KEY": str(root / "etc/ocn-edge/release.pub"), "OCN_EDGE_OPT": str(root / "opt/ocn-edge"), "PYTHONPATH": ""})
            gateway = Gateway(directory, supervisor, events, f"http://127.0.0.1:{api}/metrics")
            updates = Updates(hub, releases, supervisor, gateway)
            await asyncio.to_thread(updates.register)
            stop_watch = asyncio.Event()
            watcher = asyncio.create_task(watch_unplugs(sim, events, stop_watch))
            t0 = time.monotonic()
            proxy.set_mode("cut")  # the link is down from the start: the backlog cannot drain and the quota is reached

            async def restart_gateway() -> None:
                await gateway.kill()  # the supervisor starts it again after RESTART_S

            async def hub_down() -> None:
                await hub.stop(signal.SIGTERM)

            async def hub_restart() -> None:
                await hub.stop(signal.SIGKILL)
                await hub.start()

            def mode(name: str, **kw: int) -> Callable[[], Awaitable[None]]:
                async def switch() -> None:
                    proxy.set_mode(name, **kw)
                return switch

            async def broker_restart() -> None:
                assert broker is not None
                broker.stop(signal.SIGKILL)  # nothing saved since its last autosave: sessions and queued messages may be gone
                await broker.start()

            async def broker_down() -> None:
                assert broker is not None
                broker.stop(signal.SIGTERM)

            async def broker_up() -> None:
                assert broker is not None
                await broker.start()

            async def update() -> None:  # the gateway fetches 2.0.0 by itself, the installer builds slot b and restarts into it
                await updates.roll_out(VERSIONS[1], ["--stages", "100%", "--wait", "1s"], deadline_s=GOOD_DEADLINE_S, restarts=1,
                                       labels=[f"update {VERSIONS[0]} -> {VERSIONS[1]}"], until="done")

            async def bad_update() -> None:  # 3.0.0 never delivers: its probation fails, the installer rolls back, the hub halts
                await updates.roll_out(BAD, ["--stages", "100%", "--wait", "1h", "--max-failures", "0%"], deadline_s=BAD_DEADLINE_S, restarts=2,
                                       labels=[f"update {VERSIONS[1]} -> {BAD}", f"rollback {BAD} -> {VERSIONS[1]}"], until="halted")

            # The rest of the timeline starts once the quota window has closed, so no reading's cause is ambiguous. A step that
            # waits for what it started (an update) moves the later ones by as long as it took: no other fault meets it.
            steps: list[Step] = [
                (0.00, "kill -9 the gateway, restart it", restart_gateway),
                (0.07, "the hub answers 503", mode("http503")),
                (0.13, "link back", mode("pass")),
                (0.18, "garbage instead of the hub's answers", mode("garbage")),
                (0.23, "link back", mode("pass")),
                (0.28, "hub down (SIGTERM)", hub_down),
                (0.35, "hub up", hub.start),
                (0.37, f"roll out {VERSIONS[1]}: the gateway fetches it, its installer restarts it into slot b", update),
                (0.37, f"roll out {BAD}, which never delivers: its probation fails, rolled back, the hub halts the rollout", bad_update),
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
            if broker:  # the same moments, with the broker's faults where HTTP has the hub's answers
                steps[1:5] = [(0.07, "broker killed (SIGKILL) and restarted", broker_restart), (0.13, "broker down (SIGTERM)", broker_down),
                              (0.18, "broker up", broker_up), (0.23, "broker killed (SIGKILL) and restarted", broker_restart)]
            print(f"soak: {minutes:g} min over {transport} in {directory}; hub {hub.url}, uplink proxy {proxy.url}, {len(sim.devices)} devices",
                  flush=True)

            def note(what: str) -> None:
                print(f"  {time.monotonic() - t0:6.1f} s  {what}", flush=True)

            note("gateway started with its spool nearly full, the link cut")
            await gateway.start()
            cut_s = max(20.0, 0.12 * duration)
            await asyncio.sleep(cut_s)
            note("link back (the backlog drains, then the spool has room again)")
            proxy.set_mode("pass")
            # The gateway tries again when its backoff says, not when the link comes back: after n failures in a row it
            # may wait up to min(300 s, 2**(n-1) s) (full jitter), so a 20 s cut can leave it 64 s away from its next try
            # (about one run in fifty).  The wait allows for one more step than the failures counted so far: the
            # uplink's own backoff, without its jitter.
            failures = int((await scrape(gateway.api)).get("ocn_edge_uplink_failures_total", 0.0))
            longest_wait = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S, jitter=0).delay(failures)
            async with asyncio.timeout(max(60.0, 0.3 * duration) + longest_wait):
                while gateway.full_since is not None or (await scrape(gateway.api)).get("ocn_edge_spool_bytes", quota) > quota / 2:
                    await asyncio.sleep(0.5)  # the backlog drains; the quota window closes with it
            await asyncio.sleep(FLUSH_S + 4.0)
            base = time.monotonic() - t0
            # The faults' timeline keeps at least the length it has when the backlog drains within DRAIN_S: a late first
            # try makes the run longer, not the faults closer together.
            span = max(0.96 * duration - base, 0.96 * duration - (cut_s + DRAIN_S + FLUSH_S + 4.0))
            moved = 0.0  # how much later than planned the steps run: as long as the updates took
            for fraction, what, action in steps:
                await asyncio.sleep(max(0.0, t0 + base + fraction * span + moved - time.monotonic()))
                note(what)
                began = time.monotonic()
                await action()
                if action in (update, bad_update):
                    moved += time.monotonic() - began
                    note(f"  done in {time.monotonic() - began:.0f} s: {updates.steps[-1]['outcome'].get('state')} "
                         f"{updates.steps[-1]['outcome'].get('version')}, running {updates.steps[-1]['outcome'].get('running')}, "
                         f"rollout {updates.steps[-1]['rollout']}")
            await asyncio.sleep(max(0.0, t0 + base + span + moved - time.monotonic()))
            note("SIGTERM the gateway (it seals what memory holds into its spool)")
            code = await gateway.stop()
            stop_watch.set()
            await watcher
    finally:  # whatever failed, nothing of the soak is left running
        if supervisor is not None:
            await asyncio.to_thread(supervisor.stop)
        await hub.stop()
        if broker:
            broker.stop()
    evidence = {
        "minutes": minutes, "seed": seed, "transport": transport, "gateway_exit": code, "events": dataclasses.asdict(events), "metrics": gateway.metrics,
        "quota_bytes": quota, "filler": {"start_ms": filler_start, "counts": filler_counts},
        "link_bytes": {"up": proxy.bytes_up, "down": proxy.bytes_down}, "summaries": gateway.summaries, "gateway_runs": gateway.runs,
        "state_dir": str(state), "updates": updates.steps, "unexpected_exits": gateway.unexpected, "supervisor": supervisor.log,
    }
    (directory / "soak.json").write_text(json.dumps(evidence, indent=1))
    if code != 0:
        print(f"soak: the gateway's clean stop exited {code}; see {root}/logs/gateway-{gateway.runs}.log", file=sys.stderr)
    return code == 0
