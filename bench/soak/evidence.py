"""Reading a soak's run directory back and reconciling it: the ledger, the hub's database, the spool, soak.json.

Works on a finished run only (every process stopped), so ``python -m bench.soak --reconcile DIR``
can check a kept run again, and tests/soak can check a short real run.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import json
import re
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bench.soak.reconcile import Channelled, Events, Outcome, channelled, reconcile, table
from bench.soak.run import FILLER, GATEWAY_ID, filler_readings
from drivers.modbus.profile import load_profile
from drivers.registry import load_driver
from edge.config import load_config
from edge.devices import Devices
from edge.privacy.policy import parse_policy
from edge.protocol import load_public_key, open_batch
from edge.spool import Spool
from edge.util.clock import now_ms
from hilsim.ledger import read_ledger
from hilsim.modbus_devices import ModbusDevice
from hilsim.scenario import DEVICE_KINDS, load_scenario

__all__ = ["Evidence", "library_words", "load_evidence", "log_lines_near", "summary", "update_problems"]

NEAR_MS = 3000  # the gateway's log lines this close to an unexplained reading's time are shown beside it
NEAR_LINES = 12  # at most this many of them a reading, the closest first
# A library's words in the gateway's log: its exception class names, an OSError printed raw, the library named. Only our
# words may reach the operator (the house rules), and the soak's faults are where a library's would come through.
LIBRARY_WORDS = re.compile(r"\b(?:Client\w*Error|Server\w*Error|Mqtt\w*Error|Modbus\w*Exception|ConnectionException|Traceback)\b"
                           r"|\[Errno [-\w ]+\]|\[code:-?\d+\]|\[SSL: |Cannot connect to host|Can not write request|Modbus Error:"
                           r"|\b(?:pymodbus|aiohttp|aiomqtt|paho)\b")
_TS = re.compile(r"ts=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


@dataclass
class Evidence:
    directory: Path
    outcome: Outcome
    events: Events
    spool: dict[str, int]
    run: dict[str, Any]
    overruns: int = 0  # replies hil-sim put out past the gateway's deadline, held up by the machine (ledger fault "overrun")
    delivered_unacked: int = 0  # batches left in the spool that the hub had stored: their ack was cut off by the last stop


def ledger_names(scenario: Path) -> dict[tuple[str, str], list[tuple[str, int | None]]]:
    """(device, ledger name) -> the gateway channels it feeds: a Modbus register by the gateway's profile (same address)."""
    names: dict[tuple[str, str], list[tuple[str, int | None]]] = defaultdict(list)
    for spec in load_scenario(scenario).devices:
        cls = DEVICE_KINDS[spec["kind"]]
        if not issubclass(cls, ModbusDevice) or cls.profile is None:
            continue
        by_address = {r.address: r.name for r in cls.register_map.registers}
        for register in load_profile(cls.profile).registers:
            if register.address in by_address:
                names[(spec["name"], by_address[register.address])].append((register.channel, register.bit))
    return names


async def hub_readings(db: str) -> dict[str, list[tuple[int, object]]]:
    """Every reading the hub stored for the soak's gateway, by channel (personal channels included)."""
    from hub.database import open_store  # only the reconciliation reads the hub's database

    store = await open_store(db)
    try:
        out: dict[str, list[tuple[int, object]]] = {}
        for channel in await store.channels(device_id=GATEWAY_ID, include_personal=True):
            rows = await store.readings(device_id=GATEWAY_ID, channel=channel.channel, include_personal=True, limit=1_000_000)
            out[channel.channel] = [(r.ts_ms, r.value) for r in rows]
        return out
    finally:
        await store.close()


def hub_batch_ids(db: Path, device_id: str) -> set[tuple[bytes, int, int]]:
    """The identities (key id, boot epoch, seq) of the batches the hub stored for ``device_id``.

    Read from the soak's SQLite file directly: the store has no query for them, and only this check needs one.
    """
    from hub.engines.sql import from_uint_column  # only the reconciliation reads the hub's database

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT key_id, boot_epoch, seq FROM batches WHERE device_id = ?", (device_id,)).fetchall()
    return {(bytes(key), from_uint_column(epoch), from_uint_column(seq)) for key, epoch, seq in rows}


async def spool_leftovers(spool_path: Path, quota: int, public_key: Ed25519PublicKey,
                          delivered: set[tuple[bytes, int, int]]) -> tuple[dict[str, list[tuple[int, object]]], int, dict[str, int]]:
    """What the gateway's spool still holds after the last stop, by channel; how many of its batches the hub already
    stored; and the spool's counters.

    A batch on its way when the stop came can reach the hub after the gateway stopped waiting for the answer: the hub
    stored it, the spool kept it.  The next start sends it again and the hub answers "duplicate" (it deduplicates on
    the batch's identity), so its readings are counted once, as stored, and not again as waiting in the spool.
    """
    spool = await Spool.open(spool_path, max_bytes=quota)
    try:
        counters = spool.counters()
        waiting: dict[str, list[tuple[int, object]]] = defaultdict(list)
        already = 0
        for batch in spool.oldest(limit=1_000_000):
            if (batch.id.key_id, batch.id.boot_epoch, batch.id.seq) in delivered:
                already += 1
                continue
            for reading in open_batch(batch.data, public_key).readings:
                waiting[reading.channel].append((reading.ts_ms, reading.value))
        return waiting, already, counters
    finally:
        await spool.close()


def _events(raw: dict[str, Any]) -> Events:
    return Events(
        runs=[(start, end) for start, end in raw["runs"]],
        kills=list(raw["kills"]),
        stops=list(raw.get("stops", ())),
        restarts=[(term, back) for term, back in raw.get("restarts", ())],
        unplugged={device: [(a, b) for a, b in windows] for device, windows in raw["unplugged"].items()},
        quota=[(a, b) for a, b in raw["quota"]],
        flush_ms=raw["flush_ms"], slack_ms=raw["slack_ms"], reopen_ms=raw["reopen_ms"], unplug_lead_ms=raw["unplug_lead_ms"],
        stop_lead_ms=raw.get("stop_lead_ms", 2_000),
    )


async def load_evidence(directory: Path, scenario: Path) -> Evidence:
    """Reconcile the finished run in ``directory`` (whose devices came from ``scenario``)."""
    run = json.loads((directory / "soak.json").read_text())
    events = _events(run["events"])
    config = load_config(directory / "gateway.toml")
    channels = Devices(config, driver_lookup=load_driver, clock_ms=now_ms).channels()
    policy = parse_policy((directory / "policy.toml").read_text())
    units = {c.id: c.unit for c in channels}
    ledger = list(read_ledger(directory / "ledger.tsv"))
    served = channelled(ledger, ledger_names(scenario), units)
    overruns = len({(entry.device, entry.t_ms) for entry in ledger if "overrun" in entry.faults})
    stored = await hub_readings(f"sqlite:///{directory / 'hub.db'}")
    state = Path(run.get("state_dir", directory / "state"))
    delivered = hub_batch_ids(directory / "hub.db", GATEWAY_ID)
    spooled, delivered_unacked, counters = await spool_leftovers(state / "spool.db", run["quota_bytes"], load_public_key(state / "device.pub"),
                                                                delivered)
    filler = [Channelled(r, ()) for r in filler_readings(run["filler"]["start_ms"], run["filler"]["counts"])]
    outcome = reconcile(policy=policy, channels=channels, served=served, stored=stored, events=events,
                        counted_quota_drops=counters["readings_dropped"], presealed={FILLER.id: filler}, spooled=spooled)
    if not events.quota:
        outcome.problems.append("the spool never refused a batch: the timeline did not reach the quota, so its count went untested")
    kills = len(events.kills)
    outcome.problems += [f"{exit}: only a kill -9, the last SIGTERM or the installer's restart may end a run" for exit in run.get("unexpected_exits", ())]
    outcome.problems += update_problems(run.get("updates"))
    outcome.problems += [f"a library's words, not ours, in the gateway's log: {line}" for line in library_words(directory / "root" / "logs")]
    if counters["unclean_stops"] != kills:
        outcome.problems.append(f"the gateway counted {counters['unclean_stops']} unclean stops; the soak killed it {kills} times")
    lost = int(run["metrics"][-1].get("ocn_edge_readings_lost_total", 0)) if run["metrics"] else -1
    if lost != counters["readings_dropped"]:
        outcome.problems.append(f"the gateway's /metrics said {lost} readings lost before its last stop; its spool's quota counted "
                                f"{counters['readings_dropped']}, and nothing else may lose a reading")
    return Evidence(directory, outcome, events, counters, run, overruns, delivered_unacked)


def update_problems(steps: list[dict[str, Any]] | None) -> list[str]:
    """What the two rollouts must have done: 2.0.0 installed and proven; 3.0.0 rolled back to 2.0.0 and its rollout halted."""
    if steps is None:
        return []  # a run from before the timeline had updates
    want = [("installed", "done"), ("rolled_back", "halted")]
    problems = []
    if len(steps) != len(want):
        problems.append(f"the timeline rolled out {len(steps)} releases; expected {len(want)} (an update, then a bad release)")
    for step, (state, rollout) in zip(steps, want, strict=False):
        outcome = step["outcome"]
        if outcome.get("state") != state or step["rollout"] != rollout or len(step["restarts"]) != len(step["labels"]):
            problems.append(f"the rollout of {step['version']}: installer {outcome.get('state')} ({outcome.get('reason') or 'no reason'}), "
                            f"rollout {step['rollout']}, {len(step['restarts'])} restarts; expected {state}, {rollout}, {len(step['labels'])}")
    return problems


def update_lines(steps: list[dict[str, Any]], outcome: Outcome, events: Events) -> list[str]:
    """One line per rollout: what the installer did and each restart's window; then the cause's bound and count."""
    lines = []
    for step in steps:
        o = step["outcome"]
        windows = ", ".join(f"{label} {((back or term) - term) / 1000:.1f} s" for label, (term, back) in zip(step["labels"], step["restarts"], strict=False))
        lines.append(f"update       rollout of {step['version']} ({step['seconds']:.0f} s): {o.get('state')}, running {o.get('running')}, "
                     f"rollout {step['rollout']}; restarts: {windows or 'none'}")
    lines.append(f"update       {len(events.restarts)} restarts by the installer; bound from its SIGTERM to the new slot running + "
                 f"{events.slack_ms} ms, nothing before the SIGTERM: {outcome.missing('update')} readings")
    return lines


def log_lines_near(logs: Path, times_ms: list[int], *, within_ms: int = NEAR_MS, limit: int = NEAR_LINES) -> dict[int, list[str]]:
    """For each of ``times_ms``, the lines of the gateway's logs (``gateway-N.log`` in ``logs``) logged within
    ``within_ms`` of it: the ``limit`` closest, in the order they were logged, each as ``gateway-N.log: line``."""
    stamped: list[tuple[int, str]] = []
    for path in sorted(logs.glob("gateway-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if (match := _TS.match(line)) is not None:
                when = datetime.datetime.fromisoformat(match.group(1)).replace(tzinfo=datetime.UTC)
                stamped.append((int(when.timestamp() * 1000), f"{path.name}: {line}"))
    stamped.sort(key=lambda item: item[0])  # stable: lines of one millisecond keep their order
    at = [ms for ms, _ in stamped]
    near: dict[int, list[str]] = {}
    for t in times_ms:
        span = range(bisect.bisect_left(at, t - within_ms), bisect.bisect_right(at, t + within_ms))
        closest = sorted(sorted(span, key=lambda i: abs(at[i] - t))[:limit])
        near[t] = [stamped[i][1] for i in closest]
    return near


def library_words(logs: Path) -> list[str]:
    """The lines of the gateway's logs (``gateway-N.log`` in ``logs``) that carry a library's words, not ours."""
    return [f"{path.name}: {line}" for path in sorted(logs.glob("gateway-*.log"))
            for line in path.read_text(errors="replace").splitlines() if LIBRARY_WORDS.search(line)]


def unexplained_context(evidence: Evidence, *, shown: int = 20) -> list[str]:
    """Beside the first ``shown`` times an unexplained reading was served, what the gateway logged around each
    (its debug lines of ocn.bus included: the soak sets that logger to debug, so each failure of a unit is there
    with its reason)."""
    times = sorted({reading.ts_ms for row in evidence.outcome.rows for reading in row.unexplained})
    lines = []
    for t, near in log_lines_near(evidence.directory / "root" / "logs", times[:shown]).items():  # where the supervisor writes them
        when = datetime.datetime.fromtimestamp(t / 1000, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines.append(f"UNEXPLAINED {when}: the gateway's log within {NEAR_MS / 1000:g} s" + ("" if near else ": nothing"))
        lines += [f"  {line}" for line in near]
    if len(times) > shown:
        lines.append(f"UNEXPLAINED: {len(times) - shown} more times, not shown")
    return lines


def summary(evidence: Evidence) -> str:
    """The table, then each cause with its bound and the gateway's own count beside it."""
    outcome, events, spool, run = evidence.outcome, evidence.events, evidence.spool, evidence.run
    kills = len(events.kills)
    quota = ", ".join(f"{(b - a) / 1000:.1f} s" for a, b in events.quota) or "none"
    unplugs = ", ".join(f"{device} x{len(windows)}" for device, windows in sorted(events.unplugged.items())) or "none"
    errors: Counter[str] = Counter()
    for metrics in run["metrics"]:  # each run's counters start at zero: the sum is the whole soak's
        errors.update({k.split('"')[1]: int(v) for k, v in metrics.items() if k.startswith("ocn_edge_errors_total{")})
    lines = [
        table(outcome),
        *unexplained_context(evidence),
        "",
        f"fault        frames a device fault hit: {outcome.missing('fault')} readings; hil-sim's replies past the gateway's "
        f"deadline (overrun, the simulator held up): {evidence.overruns} frames, {outcome.overrun_taken} of their readings reached the hub "
        f"all the same; the gateway's errors over its {len(run['metrics'])} runs: "
        + ", ".join(f"{kind}={n}" for kind, n in errors.items()),
        f"unplugged    USB unplugs: {unplugs}; bound {events.reopen_ms} ms after the port is back: {outcome.missing('unplugged')} readings",
        f"at_risk      kill -9: {kills}, the gateway counted unclean_stops={spool['unclean_stops']}; bound flush interval "
        f"{events.flush_ms} ms + {events.slack_ms} ms a kill: {outcome.missing('at_risk')} readings, the earliest served "
        f"{outcome.at_risk_lead_ms} ms before its kill",
        *update_lines(run.get("updates") or [], outcome, events),
        f"not_running  {run['gateway_runs']} gateway runs; served while none ran (start-up bound {events.slack_ms} ms): "
        f"{outcome.missing('not_running')} readings",
        f"quota        spool quota {run['quota_bytes']} bytes, refuse_newest, windows {quota}; the gateway counted "
        f"readings_dropped={spool['readings_dropped']} (batches {spool['batches_dropped']}); explained by the quota alone: "
        f"{outcome.missing('quota')}, missing in its windows: {outcome.quota_could}",
        f"lost         the gateway's /metrics ocn_edge_readings_lost_total before its last stop: "
        f"{int(run['metrics'][-1].get('ocn_edge_readings_lost_total', 0)) if run['metrics'] else 'not scraped'}",
        f"link         {run.get('transport', 'http')}: {run['link_bytes']['up']} bytes up, {run['link_bytes']['down']} down through the uplink proxy",
        f"clean stop   {run['summaries'][-1] if run['summaries'] else '-'}",
        f"in flight    batches left in the spool that the hub had stored (the last stop cut off their ack; the next start sends them "
        f"again and the hub answers duplicate): {evidence.delivered_unacked}",
    ]
    lines.append("soak: " + ("OK: every released reading reached the hub exactly once or has a named cause within its bound"
                             if outcome.ok else "FAILED: see the rows marked FAIL and the problems above"))
    return "\n".join(lines)
