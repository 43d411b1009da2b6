"""The hub under hostile load (issue 11): legitimate ingest, loop lag, memory and answers while attackers replay each class.

    .venv/bin/python -m bench.hostile                          # SQLite and PostgreSQL, 1,000,000 readings, 60 s phases
    .venv/bin/python -m bench.hostile --quick                  # about a minute per engine
    .venv/bin/python -m bench.hostile --engine sqlite --readings 200000 --duration 30

For each engine a hub is pre-filled with ``--readings`` stored readings (through the store API,
not HTTP), then runs as its own process (``ocn-edge hub`` with its default limits, exactly as
deployed) while two load generators, each a process of its own (the gateways, and the attackers, as
they would be different machines), drive two phases on 127.0.0.1:

- unloaded: 100 simulated gateways each send one normal batch a second;
- attack: the same gateways, and at the same time
  - 4 connections sending 1 MiB slow-to-decode bodies back to back (map keys that are big
    integers with one hash, CBOR tag-30 rationals of huge integers; bare and inside a
    COSE_Sign1) to the batch, status and notice endpoints in turn,
  - 2 enrolled devices sending, as fast as they are answered, validly signed batches of a few
    hundred bytes that declare 1,000,000 readings,
  - 4 clients running heavy public queries back to back
    (``/sta/v1.1/Observations?$top=10000&$orderby=result desc``, ``/data/readings.csv`` over everything),
  - 1,000 slow clients that start a request and send a byte every few seconds (reconnecting when dropped).

The attackers' generator runs at niceness 10 (``--attackers-nice``): on the internet their CPU is
not the hub's, and on this machine the gateways' latencies should measure the hub, not the
attackers' share of its cores.  Each class of client sends from its own loopback source address (127.0.1.x gateways,
127.0.2.x-127.0.5.x attackers), as clients on the internet would: a per-address limit then
sees them apart.  Nothing listens beyond 127.0.0.1, and everything stops by itself.

Prints legitimate ingest p50/p99 in each phase, the hub event loop's worst lag (measured inside
the hub by hub/looplag.py), the hub's RSS (start of the attack, peak, growth), answers by status
per client class, and the CPU time of the hub and of each load generator, beside the issue's
targets: p99 under attack <= 2x unloaded, loop lag <= 100 ms, RSS growth <= 64 MiB, no 5xx.
A figure is printed, never judged by the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.hub import drop_schema
from edge.protocol import MEDIA_TYPE, BatchHeader, key_id, raw_public_key, seal_batch
from edge.protocol.compression import compress
from edge.protocol.preauth import ALG, EDDSA, KID, OXP_BATCH
from edge.protocol.types import Channel, Reading
from hub.auth import secret_hash
from hub.database import open_store
from hub.models import IncomingBatch
from hub.tokens import create_token

GATEWAYS = 100
READINGS_PER_BATCH = 10
BODY_CONNECTIONS = 4
DECLARING_DEVICES = 2
QUERY_CLIENTS = 4
SLOW_CLIENTS = 1000
SLOW_BYTE_EVERY_S = 3.0
DECLARED = 1_000_000
BODY_BYTES = 1024 * 1024 - 512  # under the batch limit, so the hub reads each body whole
HEAVY_QUERIES = ("/sta/v1.1/Observations?$top=10000&$orderby=result%20desc", "/data/readings.csv?limit=100000")
ENDPOINTS = ("/oxp/v1/batches", "/oxp/v1/status", "/oxp/v1/notice")
CHANNELS = (
    Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1),
    Channel("pm-1/pm10", unit="ug/m3", resolution=0.1),
    Channel("meter-1/power", unit="W", resolution=1.0),
    Channel("meter-1/voltage_l1", unit="V", resolution=0.1),
    Channel("door-1/open", unit="", resolution=1.0),
)
PREFILL_BATCH = 10_000
WARM_UP_S = 5.0
GENERATOR_START_S = 3.0  # for both load generators to start and build their bodies before the timeline begins
SERVING = re.compile(r"OCN hub serving on (http://\S+)")
ATTACKS = ("bodies", "declared", "queries", "slow")
TARGETS = {"p99_ratio": 2.0, "lag_ms": 100.0, "rss_growth_mib": 64.0}
# The attackers are other machines on the internet: here they share the hub's two cores, so their
# generator runs at a lower priority and its CPU (reported) is not taken from the hub.  Measured on
# the quiet machine, bodies alone, SQLite, --quick: p99 ratio 2.3x and 2.7x at niceness 0, 1.8x and
# 1.3x at 10; the hub's own CPU and loop lag alike.  --attackers-nice 0 measures the shared machine.
ATTACKERS_NICE = 10


def device_key(name: str) -> Ed25519PrivateKey:
    """A key derived from the device's name: the prefill and the load generator agree without passing secrets."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"bench.hostile/{name}".encode()).digest())


def gateway_names() -> list[str]:
    return [f"gw-{i:03d}" for i in range(GATEWAYS)]


def declaring_names() -> list[str]:
    return [f"declares-{i}" for i in range(DECLARING_DEVICES)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def readings_at(ts_ms: int, n: int, step_ms: int = 100) -> list[Reading]:
    """``n`` readings over the channels, ``step_ms`` apart, the last just before ``ts_ms``."""
    return [Reading(CHANNELS[i % len(CHANNELS)].id, ts_ms - (n - i) * step_ms, float((i * 37) % 500) / 10, CHANNELS[i % len(CHANNELS)].unit)
            for i in range(n)]


# --- the store, filled through its API ------------------------------------------------------------

async def prefill(db: str, readings: int) -> float:
    """Enrol every device the bench uses and store ``readings`` readings under the gateways (the last hours); seconds taken."""
    started = time.perf_counter()
    store = await open_store(db)
    try:
        names = gateway_names() + declaring_names()
        token = await create_token(store, uses=len(names), approve=True, note="bench.hostile")
        for name in names:
            key = device_key(name)
            await store.enrol(secret_hash(token), device_id=name, public_key=raw_public_key(key), key_id=key_id(key),
                              software_version="bench", now_ms=now_ms())
        batches = (readings + PREFILL_BATCH - 1) // PREFILL_BATCH
        end = now_ms() - 60_000
        for b in range(batches):
            name = gateway_names()[b % GATEWAYS]
            n = min(PREFILL_BATCH, readings - b * PREFILL_BATCH)
            created = end - (batches - b) * PREFILL_BATCH * 10
            await store.store_batch(IncomingBatch(
                device_id=name, key_id=key_id(device_key(name)), boot_epoch=1, seq=b // GATEWAYS, created_ms=created, received_ms=created,
                policy_digest=b"\x01" * 32, codec="zstd", counters={}, channels=CHANNELS, readings=readings_at(created, n, 10), size=0,
            ))
    finally:
        await store.close()
    return time.perf_counter() - started


# --- what the attackers send ----------------------------------------------------------------------

def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError(n)


def _bignum(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\xc2" + _head(2, len(raw)) + raw


def colliding_keys_map(size: int) -> bytes:
    """A CBOR map of big-integer keys that share one hash (Python hashes ints modulo 2**61 - 1), about ``size`` bytes."""
    entries = []
    total, i = 0, 0
    while total < size - 16:
        entry = _bignum((2**61 - 1) * (2**64 + i)) + b"\x00"
        entries.append(entry)
        total += len(entry)
        i += 1
    return _head(5, len(entries)) + b"".join(entries)


def rationals_array(size: int) -> bytes:
    """A CBOR array of tag-30 rationals of 2000-bit integers, about ``size`` bytes."""
    entries = []
    total, i = 0, 0
    while total < size - 600:
        entry = b"\xd8\x1e\x82" + _bignum(2**2000 + i) + _bignum(2**1999 + 1)
        entries.append(entry)
        total += len(entry)
        i += 1
    return _head(4, len(entries)) + b"".join(entries)


def in_cose(hostile: bytes, size: int) -> bytes:
    """A COSE_Sign1 shape whose unprotected header is the hostile item, padded with payload to ``size`` bytes."""
    protected = cbor2.dumps({ALG: EDDSA, KID: b"\x00" * 8})
    room = size - len(hostile) - len(protected) - 90
    return b"\xd2\x84" + _head(2, len(protected)) + protected + hostile + _head(2, max(room, 0)) + b"\x00" * max(room, 0) + b"\x58\x40" + b"\x00" * 64


def slow_bodies() -> list[bytes]:
    keys, rationals = colliding_keys_map(BODY_BYTES), rationals_array(BODY_BYTES)
    return [keys, rationals, in_cose(colliding_keys_map(BODY_BYTES // 2), BODY_BYTES), in_cose(rationals_array(BODY_BYTES // 2), BODY_BYTES)]


def declaring_batch(name: str, seq: int) -> bytes:
    """A validly signed batch of a few hundred bytes whose body declares a million boolean readings."""
    key = device_key(name)
    body = cbor2.dumps([now_ms(), [""], [[2, "door", 0, None, DECLARED, bytes(DECLARED), [6, bytes(DECLARED // 8)]]]])
    header = {0: 2, 1: name, 2: 1, 3: seq, 4: b"", 5: 1, 6: now_ms()}
    protected = cbor2.dumps({ALG: EDDSA, KID: key_id(key), OXP_BATCH: header}, canonical=True)
    payload = compress(body, "zstd")
    signature = key.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))


def gateway_batch(name: str, seq: int) -> bytes:
    key = device_key(name)
    created = now_ms()
    header = BatchHeader(device_id=name, key_id=key_id(key), boot_epoch=2, seq=seq, policy_digest=b"\x01" * 32, codec="zstd", created_ms=created)
    return seal_batch(header, CHANNELS, readings_at(created, READINGS_PER_BATCH), key)


# --- the load generators (processes of their own) --------------------------------------------------

@dataclass
class Tally:
    """Answers by status (or by error) per client class, and the legitimate latencies per phase."""

    answers: dict[str, Counter[str]]
    latencies: dict[str, list[float]]

    def count(self, who: str, told: str) -> None:
        self.answers.setdefault(who, Counter())[told] += 1


async def outcome(resp: aiohttp.ClientResponse) -> str:
    """The status, and for a refusal the hub's error code (``503 busy``, ``429 readings_budget``): what the class was told."""
    body = await resp.read()
    if resp.status < 400:
        return str(resp.status)
    try:
        said = json.loads(body)
        code = said.get("error") or said.get("message", "")[:48]  # OXP errors name a code; SensorThings ones a message
    except (ValueError, AttributeError):
        code = ""
    return f"{resp.status} {code}".strip()


def session(address: str, limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, local_addr=(address, 0), force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


async def gateways(url: str, tally: Tally, phase: list[str], stop: asyncio.Event) -> None:
    """Each gateway sends one batch a second (staggered over the second), one at a time, as a gateway does."""
    async with session("127.0.1.1", GATEWAYS) as http:
        async def one(index: int, name: str) -> None:
            seq = 0
            due = time.monotonic() + index / GATEWAYS
            while not stop.is_set():
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if stop.is_set():
                    break
                due = max(due + 1.0, time.monotonic())
                data = gateway_batch(name, seq)
                seq += 1
                who = phase[0]
                started = time.perf_counter()
                try:
                    async with http.post(f"{url}/oxp/v1/batches", data=data, headers={"Content-Type": MEDIA_TYPE}) as resp:
                        told = await outcome(resp)
                    tally.latencies.setdefault(who, []).append(time.perf_counter() - started)
                    tally.count(f"gateways ({who})", told)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    tally.count(f"gateways ({who})", type(exc).__name__)

        await asyncio.gather(*(one(i, name) for i, name in enumerate(gateway_names())))


async def back_to_back(who: str, address: str, tally: Tally, stop: asyncio.Event, request: Any) -> None:
    """One client sending request after request on its connection until ``stop``."""
    async with session(address, 1) as http:
        turn = 0
        while not stop.is_set():
            try:
                tally.count(who, await request(http, turn))
            except (TimeoutError, aiohttp.ClientError) as exc:
                tally.count(who, type(exc).__name__)
                await asyncio.sleep(0.1)
            turn += 1


async def slow_client(index: int, host: str, port: int, tally: Tally, stop: asyncio.Event) -> None:
    """Start a request and send a byte every few seconds; when the hub answers or drops it, note how and start again."""
    await asyncio.sleep(index * 2.0 / SLOW_CLIENTS)  # connect over two seconds, not all in one burst
    address = f"127.0.5.{index % 200 + 1}"
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port, local_addr=(address, 0))
        except OSError as exc:
            tally.count("slow clients", f"could not connect ({type(exc).__name__})")
            await asyncio.sleep(1.0)
            continue
        try:
            writer.write(b"POST /oxp/v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            ended = None
            while ended is None and not stop.is_set():
                try:
                    answer = await asyncio.wait_for(reader.read(1024), SLOW_BYTE_EVERY_S)
                except TimeoutError:
                    writer.write(b"a")
                    continue
                except OSError:
                    ended = "reset by the hub"
                    break
                match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
                ended = f"{match.group(1).decode()} from the hub" if match else "closed by the hub"
            tally.count("slow clients", ended or "still open at the end")
        finally:
            writer.close()
        await asyncio.sleep(SLOW_BYTE_EVERY_S)  # slow in coming back too: a slow client, not a connection flood


async def until(unix_time: float) -> None:
    await asyncio.sleep(max(0.0, unix_time - time.time()))


async def load(config: dict[str, Any]) -> dict[str, Any]:
    """One side of the load, by ``config["role"]``: the legitimate gateways, or the attackers.

    They run as two processes, as they would be two sets of machines on the internet: the
    gateways' latencies then measure the hub, not the attackers' share of one event loop.
    Both keep to the same wall-clock timeline from ``config["start_at"]``: warm-up, unloaded,
    attack."""
    url, duration, start_at = config["url"], config["duration"], config["start_at"]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    tally = Tally({}, {})
    phase = ["warm-up"]
    attack_start, attack_end = start_at + WARM_UP_S + duration, start_at + WARM_UP_S + 2 * duration
    times = {"unloaded_start": start_at + WARM_UP_S, "attack_start": attack_start, "attack_end": attack_end}
    stop = asyncio.Event()
    if config["role"] == "gateways":
        await until(start_at)
        cpu0 = time.process_time()
        legit = asyncio.create_task(gateways(url, tally, phase, stop))
        # The first seconds open connections and fill the hub's key cache: not counted in either phase.
        await until(times["unloaded_start"])
        phase[0] = "unloaded"
        await until(attack_start)
        phase[0] = "attack"
        await until(attack_end)
        stop.set()
        await legit
        return {"times": times, "answers": {k: dict(v) for k, v in tally.answers.items()}, "latencies": tally.latencies,
                "cpu_s": time.process_time() - cpu0}

    bodies = slow_bodies()
    seqs = {name: 0 for name in declaring_names()}

    async def send_body(http: aiohttp.ClientSession, turn: int) -> str:
        async with http.post(url + ENDPOINTS[turn % 3], data=bodies[turn % len(bodies)], headers={"Content-Type": MEDIA_TYPE}) as resp:
            return await outcome(resp)

    def declare(name: str) -> Any:
        async def send(http: aiohttp.ClientSession, turn: int) -> str:
            seqs[name] += 1
            async with http.post(f"{url}/oxp/v1/batches", data=declaring_batch(name, seqs[name]), headers={"Content-Type": MEDIA_TYPE}) as resp:
                return await outcome(resp)
        return send

    async def query(http: aiohttp.ClientSession, turn: int) -> str:
        async with http.get(url + HEAVY_QUERIES[turn % 2]) as resp:
            return await outcome(resp)

    await until(attack_start)
    cpu0 = time.process_time()
    chosen = config["attacks"]
    attackers = []
    if "bodies" in chosen:
        attackers += [back_to_back("1 MiB slow-to-decode bodies", f"127.0.2.{i + 1}", tally, stop, send_body) for i in range(BODY_CONNECTIONS)]
    if "declared" in chosen:
        attackers += [back_to_back("huge declared batches", f"127.0.3.{i + 1}", tally, stop, declare(name)) for i, name in enumerate(declaring_names())]
    if "queries" in chosen:
        attackers += [back_to_back("heavy public queries", f"127.0.4.{i + 1}", tally, stop, query) for i in range(QUERY_CLIENTS)]
    if "slow" in chosen:
        attackers += [slow_client(i, host, int(port), tally, stop) for i in range(SLOW_CLIENTS)]
    attack = asyncio.gather(*attackers)
    await until(attack_end)
    stop.set()
    await attack
    return {"times": times, "answers": {k: dict(v) for k, v in tally.answers.items()}, "latencies": {}, "cpu_s": time.process_time() - cpu0}


def load_generator(config_path: str) -> None:
    """A load generator's entry point: read the run's settings, drive its side of the phases, print its tally as JSON."""
    config = json.loads(Path(config_path).read_text())
    print(json.dumps(asyncio.run(load(config))))


# --- one engine ------------------------------------------------------------------------------------

def ocn_edge() -> str:
    return str(Path(sys.executable).with_name("ocn-edge"))


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (the hub and its public reads process), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def rss_mib(pid: int, *, tree: bool = True) -> float:
    """The RSS of the hub's whole process tree (pages two processes share count twice: an upper bound), or of ``pid`` alone."""
    total = 0.0
    for member in process_tree(pid) if tree else [pid]:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            if member == pid:
                raise
    return total


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """CPU time of the hub's whole process tree (a child that exits takes its time along), or of ``pid`` alone."""
    total = 0.0
    for member in process_tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class RssWatch:
    """The hub's RSS sampled four times a second, with the time of each sample; and the CPU time of its main
    process and of its whole tree, so each phase's CPU can be told apart (the main process, the public one)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.stopped = pid, threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.main: list[tuple[float, float]] = []  # the main process's RSS alone
        self.cpu: list[tuple[float, float, float]] = []  # time, main process's CPU seconds, the tree's
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(0.25):
            try:
                self.samples.append((time.time(), rss_mib(self.pid)))
                self.main.append((time.time(), rss_mib(self.pid, tree=False)))
                self.cpu.append((time.time(), cpu_seconds(self.pid, tree=False), cpu_seconds(self.pid)))
            except OSError:
                return

    def cpu_share(self, start: float, end: float) -> tuple[float, float]:
        """The main process's and the rest of the tree's CPU over [start, end], as shares of one core."""
        inside = [c for c in self.cpu if start <= c[0] <= end]
        if len(inside) < 2:
            return float("nan"), float("nan")
        (t0, main0, all0), (t1, main1, all1) = inside[0], inside[-1]
        return (main1 - main0) / (t1 - t0), ((all1 - all0) - (main1 - main0)) / (t1 - t0)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


def run_engine(engine: str, db: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    filled_s = asyncio.run(prefill(db, args.readings))
    print(f"{engine}: {args.readings:,} readings stored through the store API in {filled_s:.1f} s", flush=True)
    lag_file = work / f"{engine}-loop-lag.jsonl"
    env = dict(os.environ, OCN_HUB_LOOP_LAG_FILE=str(lag_file))
    hub = subprocess.Popen([ocn_edge(), "hub", "--listen", "127.0.0.1:0", "--db", db, "--state-dir", str(work / engine), "--log-level", "warning",
                            *args.hub_arg], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert hub.stderr is not None
    url: str | None = None
    said: list[str] = []
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = hub.stderr.readline()
        if not line:
            raise SystemExit(f"{engine}: the hub exited ({hub.wait()}): {''.join(said)[-2000:]}")
        said.append(line)
        match = SERVING.search(line)
        url = match.group(1) if match else None
    if url is None:
        hub.kill()
        raise SystemExit(f"{engine}: the hub did not say where it serves within 120 s")
    # Keep reading what the hub says, so a full pipe can never stall it; its last lines are shown.
    logged: deque[str] = deque(maxlen=5)
    threading.Thread(target=logged.extend, args=(hub.stderr,), daemon=True).start()
    watch = RssWatch(hub.pid)
    start_at = time.time() + GENERATOR_START_S
    generators = {}
    for role in ("gateways", "attackers"):
        config = work / f"{engine}-{role}.json"
        config.write_text(json.dumps({"url": url, "duration": args.duration, "attacks": args.attacks, "role": role, "start_at": start_at}))
        niceness = args.attackers_nice if role == "attackers" else 0
        generators[role] = subprocess.Popen([sys.executable, "-m", "bench.hostile", "--load-generator", str(config)],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                            preexec_fn=functools.partial(os.nice, niceness) if niceness else None)
    rss_start_hub = rss_mib(hub.pid)
    hub_cpu0 = cpu_seconds(hub.pid)
    outputs = {}
    try:
        for role, process in generators.items():
            outputs[role] = process.communicate(timeout=GENERATOR_START_S + WARM_UP_S + args.duration * 2 + 300)
        hub_cpu = cpu_seconds(hub.pid) - hub_cpu0
    finally:
        for process in generators.values():
            if process.poll() is None:
                process.kill()
        watch.stop()
        hub.terminate()
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait()
    for role, process in generators.items():
        if process.returncode != 0:
            raise SystemExit(f"{engine}: the {role}' load generator failed ({process.returncode}):\n{outputs[role][1][-3000:]}")
    legit, attackers = (json.loads(outputs[role][0]) for role in ("gateways", "attackers"))
    result = {"answers": {**legit["answers"], **attackers["answers"]}, "latencies": legit["latencies"]}
    times = legit["times"]
    lags = [json.loads(line) for line in lag_file.read_text().splitlines()] if lag_file.exists() else []

    def worst_lag(start: float, end: float) -> float:
        return max((s["max_lag_ms"] for s in lags if start <= s["t"] <= end + 1.0), default=float("nan"))

    def typical_lag(start: float, end: float) -> float:
        """The median over the phase's seconds of each second's worst lag: what one descheduling of the hub does not move."""
        return percentile([s["max_lag_ms"] for s in lags if start <= s["t"] <= end + 1.0], 0.5)

    def rss_at(start: float, end: float) -> list[float]:
        return [mib for t, mib in watch.samples if start <= t <= end]

    before_attack = rss_at(times["attack_start"] - 1.0, times["attack_start"]) or [rss_start_hub]
    during = rss_at(times["attack_start"], times["attack_end"]) or before_attack
    latencies = result["latencies"]
    return {
        "engine": engine, "answers": result["answers"], "gateways_cpu_s": legit["cpu_s"], "attackers_cpu_s": attackers["cpu_s"], "hub_cpu_s": hub_cpu,
        "stored_s_unloaded": result["answers"].get("gateways (unloaded)", {}).get("200", 0) / args.duration,
        "stored_s_attack": result["answers"].get("gateways (attack)", {}).get("200", 0) / args.duration,
        "p50_unloaded": percentile(latencies.get("unloaded", []), 0.5) * 1000, "p99_unloaded": percentile(latencies.get("unloaded", []), 0.99) * 1000,
        "p50_attack": percentile(latencies.get("attack", []), 0.5) * 1000, "p99_attack": percentile(latencies.get("attack", []), 0.99) * 1000,
        "lag_unloaded": worst_lag(times["unloaded_start"], times["attack_start"]), "lag_attack": worst_lag(times["attack_start"], times["attack_end"]),
        "lag_typical_unloaded": typical_lag(times["unloaded_start"], times["attack_start"]),
        "lag_typical_attack": typical_lag(times["attack_start"], times["attack_end"]),
        "rss_hub_start": rss_start_hub, "rss_start": before_attack[-1], "rss_peak": max(during), "elapsed_s": times["attack_end"] - times["unloaded_start"],
        "main_rss_growth": max((m for t, m in watch.main if times["attack_start"] <= t <= times["attack_end"]), default=float("nan"))
        - max((m for t, m in watch.main if times["attack_start"] - 1.0 <= t <= times["attack_start"]), default=float("nan")),
        "cpu_unloaded": watch.cpu_share(times["unloaded_start"], times["attack_start"]),
        "cpu_attack": watch.cpu_share(times["attack_start"], times["attack_end"]),
        "hub_log": [line.rstrip() for line in logged], "attacks": args.attacks,
    }


def report(r: dict[str, Any], duration: float) -> None:
    def answered(status: str, legitimate: bool) -> int:
        return sum(n for who, answers in r["answers"].items() if who.startswith("gateways") == legitimate
                   for told, n in answers.items() if told[:3].isdigit() and told.startswith(status))

    # 503 is a designed answer (ingest queue full, connection cap, a public query past its time budget), with
    # Retry-After; any other 5xx is a failure.  The target counts both; they are shown apart.
    failures = answered("5", True) + answered("5", False) - answered("503", True) - answered("503", False)
    unavailable_legit, unavailable_attack = answered("503", True), answered("503", False)
    fives = failures + unavailable_legit + unavailable_attack
    growth = r["rss_peak"] - r["rss_start"]
    ratio = r["p99_attack"] / r["p99_unloaded"] if r["p99_unloaded"] else float("nan")
    rows = [
        ("legitimate batches stored, unloaded", f"{r['stored_s_unloaded']:.0f}/s of {GATEWAYS}/s sent", ""),
        ("legitimate batches stored, under attack", f"{r['stored_s_attack']:.0f}/s of {GATEWAYS}/s sent", ""),
        ("legitimate ingest p50, unloaded", f"{r['p50_unloaded']:.1f} ms", ""),
        ("legitimate ingest p99, unloaded", f"{r['p99_unloaded']:.1f} ms", ""),
        ("legitimate ingest p50, under attack", f"{r['p50_attack']:.1f} ms", ""),
        ("legitimate ingest p99, under attack", f"{r['p99_attack']:.1f} ms ({ratio:.1f}x)", f"<= {TARGETS['p99_ratio']:.0f}x unloaded",
         ratio <= TARGETS["p99_ratio"]),
        ("hub loop lag, worst, unloaded", f"{r['lag_unloaded']:.0f} ms (typical second {r['lag_typical_unloaded']:.0f} ms)", ""),
        ("hub loop lag, worst, under attack", f"{r['lag_attack']:.0f} ms (typical second {r['lag_typical_attack']:.0f} ms)",
         f"<= {TARGETS['lag_ms']:.0f} ms", r["lag_attack"] <= TARGETS["lag_ms"]),
        ("hub RSS (its processes) at start / attack start / peak", f"{r['rss_hub_start']:.0f} / {r['rss_start']:.0f} / {r['rss_peak']:.0f} MiB", ""),
        ("hub RSS growth under attack (its processes)", f"{growth:.0f} MiB (the main process {r['main_rss_growth']:.0f} MiB)",
         f"<= {TARGETS['rss_growth_mib']:.0f} MiB", growth <= TARGETS["rss_growth_mib"]),
        ("5xx answers", f"{fives}: {failures} failures, 503 to gateways {unavailable_legit}, to attackers {unavailable_attack}", "0", fives == 0),
        ("hub CPU, main / other processes, unloaded", f"{r['cpu_unloaded'][0]:.0%} / {r['cpu_unloaded'][1]:.0%} of a core", ""),
        ("hub CPU, main / other processes, attack", f"{r['cpu_attack'][0]:.0%} / {r['cpu_attack'][1]:.0%} of a core", ""),
        ("CPU: hub (its processes) / gateways / attackers", f"{r['hub_cpu_s']:.1f} s / {r['gateways_cpu_s']:.1f} s / "
         f"{r['attackers_cpu_s']:.1f} s over {r['elapsed_s']:.0f} s", ""),
    ]
    print(f"\n{r['engine']}: {WARM_UP_S:.0f} s warm-up, {duration:.0f} s unloaded, then {duration:.0f} s under attack ({', '.join(r['attacks'])})")
    print(f"  {'figure':<40} {'measured':<62} {'target':<18} meets")
    for name, value, target, *met in rows:
        print(f"  {name:<40} {value:<62} {target:<18} {('yes' if met[0] else 'NO') if met else ''}")
    print("  answers by client class:")
    for who, answers in sorted(r["answers"].items()):
        shown = ", ".join(f"{status}: {n}" for status, n in sorted(answers.items(), key=lambda kv: -kv[1]))
        print(f"    {who:<36} {shown}")
    if r["hub_log"]:
        print("  the hub's last log lines (warnings and errors):")
        for line in r["hub_log"]:
            print(f"    {line[:200]}")


def raise_file_limit(needed: int) -> int:
    """1,000 slow clients are 1,000 sockets in the attackers' load generator and 1,000 in the hub: raise the soft limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def attack_classes(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [c for c in chosen if c not in ATTACKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"--attacks {text!r}: unknown {', '.join(unknown)}; expected some of {','.join(ATTACKS)}")
    return chosen


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--postgres", default=os.environ.get("OCN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--readings", type=int, default=None, help="readings stored before the run (default 1,000,000)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of each phase, unloaded and under attack (default 60)")
    parser.add_argument("--quick", action="store_true", help="20 s phases (and the default 1,000,000 readings): about a minute per engine")
    parser.add_argument("--attacks", type=attack_classes, default=ATTACKS, metavar="CLASSES",
                        help=f"the attack classes to run, comma-separated (default all: {','.join(ATTACKS)}); one alone shows its share")
    parser.add_argument("--attackers-nice", type=int, default=ATTACKERS_NICE, metavar="N",
                        help=f"the attackers' load generator's niceness (default {ATTACKERS_NICE}; 0: the same priority as the hub)")
    parser.add_argument("--hub-arg", action="append", default=[], metavar="ARG", help="an option passed to `ocn-edge hub` (repeat for each)")
    parser.add_argument("--load-generator", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_generator:
        load_generator(args.load_generator)
        return 0
    args.readings = 1_000_000 if args.readings is None else args.readings
    args.duration = (20.0 if args.quick else 60.0) if args.duration is None else args.duration
    files = raise_file_limit(4 * SLOW_CLIENTS + 1024)
    print(f"file descriptors per process: {files}; {GATEWAYS} gateways, {BODY_CONNECTIONS} body connections, {DECLARING_DEVICES} declaring "
          f"devices, {QUERY_CLIENTS} query clients, {SLOW_CLIENTS} slow clients", flush=True)
    results = []
    for engine in ("sqlite", "postgresql"):
        if args.engine not in (engine, "both"):
            continue
        with tempfile.TemporaryDirectory(prefix="bench-hostile-") as d:
            work = Path(d)
            if engine == "sqlite":
                results.append(run_engine(engine, f"sqlite:///{work / 'hub.db'}", args, work))
                continue
            schema = f"bench_hostile_{secrets.token_hex(4)}"
            try:
                results.append(run_engine(engine, f"{args.postgres}?schema={schema}", args, work))
            finally:
                asyncio.run(drop_schema(args.postgres, schema))
    for r in results:
        report(r, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
