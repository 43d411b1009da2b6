"""Scenarios: load a TOML file of buses, devices, value models and fault timelines, and run it.

`run_scenario` starts every device, waits until each is ready, and yields a
:class:`Simulation` that tells a gateway (or a test) where everything is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import tomllib
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge.util.files import toml_problem
from hilsim.device import SimClock, SimDevice
from hilsim.durations import parse_duration
from hilsim.faults import FaultTimeline, parse_faults
from hilsim.ledger import Ledger
from hilsim.modbus_bus import RTU_LINE_FAULTS, TCP_FAULTS, RtuLine, TcpBus
from hilsim.modbus_devices import ModbusDevice, Sdm120, Sdm630, WaterLevel, WeatherStation
from hilsim.models import build_model
from hilsim.netproxy import ProxyStep, UplinkProxy
from hilsim.pedestrian import PedestrianCounter
from hilsim.serial_devices import NmeaGps, Pms5003, Sds011, SerialDevice

__all__ = ["DEVICE_KINDS", "SCENARIO_DIR", "Endpoint", "Scenario", "ScenarioError", "Simulation",
           "available_scenarios", "load_scenario", "run_scenario"]

log = logging.getLogger("hilsim")

SCENARIO_DIR = Path(__file__).parent / "scenarios"

DEVICE_KINDS: dict[str, type[SimDevice]] = {
    cls.kind: cls for cls in (Sds011, Pms5003, NmeaGps, PedestrianCounter, Sdm630, Sdm120, WeatherStation, WaterLevel)
}
BUS_TYPES = ("modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp")
TCP_BUSES = ("modbus-tcp", "modbus-rtu-over-tcp")
# The reply timeout of an RS-485 line in the gateway config `Simulation.gateway_config_toml` writes; the line
# marks a reply it put out well past that "overrun" in the ledger (hilsim.modbus_bus.RtuLine._overrun).
RTU_TIMEOUT_S = 0.5
PARITIES = ("N", "E", "O")


class ScenarioError(ValueError):
    """A scenario file is wrong: the message names the file, the field, the value and what is accepted."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed scenario file (raw tables kept; devices are built at run time with the run's seed)."""

    name: str
    path: Path
    description: str
    seed: int
    start: float | None
    latitude: float
    longitude: float
    buses: tuple[Mapping[str, Any], ...]
    devices: tuple[Mapping[str, Any], ...]
    uplink: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a gateway finds one simulated device."""

    device: str
    kind: str
    transport: str  # "serial" | "modbus-rtu" | "modbus-tcp" | "modbus-rtu-over-tcp"
    driver: str
    profile: str | None = None
    bus: str | None = None
    path: str | None = None  # the stable symlink a gateway opens
    tty: str | None = None  # the pty it points at now
    baudrate: int | None = None
    parity: str | None = None
    stopbits: int | None = None
    host: str | None = None
    port: int | None = None
    unit: int | None = None
    poll_interval: str = "10s"


def available_scenarios() -> list[str]:
    """The names of the scenarios that ship with hil-sim."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def _resolve(scenario: str | Path) -> Path:
    text = str(scenario)
    if "/" not in text and not text.endswith(".toml"):
        path = SCENARIO_DIR / f"{text}.toml"
        if not path.exists():
            raise ScenarioError(f"scenario {text!r}: no such scenario; expected a path to a .toml file or one of "
                                f"{', '.join(available_scenarios())}")
        return path
    path = Path(text)
    if not path.exists():
        raise ScenarioError(f"scenario file {text!r} does not exist")
    return path


def _check_keys(table: Mapping[str, Any], allowed: set[str], *, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ScenarioError(f"{where}.{key}: unknown field; expected one of {', '.join(sorted(allowed))}")


def load_scenario(scenario: str | Path) -> Scenario:
    """Read and check a scenario (a shipped name like "default", or a path)."""
    path = _resolve(scenario)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(toml_problem(str(path), exc)) from None
    _check_keys(data, {"scenario", "buses", "devices", "uplink"}, where=str(path))
    head = data.get("scenario", {})
    _check_keys(head, {"name", "description", "seed", "start", "latitude", "longitude"}, where=f"{path}: scenario")
    start = head.get("start")
    if start is not None:
        try:
            moment = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        except ValueError:
            raise ScenarioError(f"{path}: scenario.start = {start!r}: expected an ISO 8601 time like "
                                f"\"2026-03-02T07:00:00Z\"") from None
        start = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    buses = tuple(data.get("buses", ()))
    devices = tuple(data.get("devices", ()))
    names: set[str] = set()
    bus_names = {bus.get("name") for bus in buses}
    for index, bus in enumerate(buses):
        where = f"{path}: buses[{index}]"
        _check_keys(bus, {"name", "type", "baudrate", "parity", "stopbits", "frame_gap", "port", "faults"}, where=where)
        if bus.get("type") not in BUS_TYPES:
            raise ScenarioError(f"{where}.type = {bus.get('type')!r}: expected one of {', '.join(BUS_TYPES)}")
        try:
            parse_faults(bus.get("faults", ()), where=f"{where}.faults",
                         allowed=RTU_LINE_FAULTS if bus["type"] == "modbus-rtu" else ())
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        if bus.get("parity", "N") not in PARITIES:
            raise ScenarioError(f"{where}.parity = {bus.get('parity')!r}: expected one of {', '.join(PARITIES)}")
    for index, device in enumerate(devices):
        where = f"{path}: devices[{index}]"
        _check_keys(device, {"name", "kind", "baudrate", "bus", "unit", "response_delay", "poll_interval",
                             "options", "values", "faults"}, where=where)
        name = device.get("name")
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ScenarioError(f"{where}.name = {name!r}: expected letters, digits, '-' and '_'")
        if name in names:
            raise ScenarioError(f"{where}.name = {name!r}: used twice; device names must be unique")
        names.add(name)
        kind = device.get("kind")
        if kind not in DEVICE_KINDS:
            raise ScenarioError(f"{where}.kind = {kind!r}: expected one of {', '.join(DEVICE_KINDS)}")
        cls = DEVICE_KINDS[kind]
        if issubclass(cls, ModbusDevice):
            if device.get("bus") not in bus_names:
                raise ScenarioError(f"{where}.bus = {device.get('bus')!r}: expected the name of one of the "
                                    f"[[buses]] ({', '.join(sorted(map(str, bus_names))) or 'none defined'})")
            unit = device.get("unit")
            if not isinstance(unit, int) or not 1 <= unit <= 247:
                raise ScenarioError(f"{where}.unit = {unit!r}: expected a Modbus unit id from 1 to 247")
        try:
            cls.check_options(device.get("options", {}), where=f"{where}.options")
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        for quantity, model in device.get("values", {}).items():
            if quantity not in cls.modelled():
                raise ScenarioError(f"{where}.values.{quantity}: {kind} has no such quantity; expected one of "
                                    f"{', '.join(cls.modelled()) or 'none'}")
            if not isinstance(model, dict):
                raise ScenarioError(f"{where}.values.{quantity} = {model!r}: expected a table like "
                                    f"{{ value = 1.5 }} or {{ model = \"diurnal\", mean = 12 }}")
        bus_type = next((b.get("type") for b in buses if b.get("name") == device.get("bus")), None)
        allowed = TCP_FAULTS if bus_type in TCP_BUSES else cls.fault_kinds
        try:
            parse_faults(device.get("faults", ()), where=f"{where}.faults", allowed=allowed)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
    uplink = data.get("uplink", {})
    _check_keys(uplink, {"hub", "schedule"}, where=f"{path}: uplink")
    hub = uplink.get("hub", "")
    if hub and not (isinstance(hub, str) and hub.startswith("http://127.0.0.1:")):
        raise ScenarioError(f"{path}: uplink.hub = {hub!r}: expected a hub on this machine like "
                            f"\"http://127.0.0.1:8443/\"")
    for index, step in enumerate(uplink.get("schedule", ())):
        where = f"{path}: uplink.schedule[{index}]"
        _check_keys(step, {"at", "mode", "delay", "rate"}, where=where)
        try:
            _proxy_step(step, where=where)
        except (KeyError, TypeError, ValueError) as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    seed = head.get("seed", 0)
    if not isinstance(seed, int):
        raise ScenarioError(f"{path}: scenario.seed = {seed!r}: expected a whole number")
    return Scenario(
        name=str(head.get("name", path.stem)),
        path=path,
        description=str(head.get("description", "")),
        seed=seed,
        start=start,
        latitude=float(head.get("latitude", 43.6452)),
        longitude=float(head.get("longitude", -79.3957)),
        buses=buses,
        devices=devices,
        uplink=uplink,
    )


@dataclass
class Simulation:
    """A running scenario: its devices, buses, endpoints, and what it emitted."""

    scenario: Scenario
    seed: int
    run_dir: Path
    clock: SimClock
    devices: dict[str, SimDevice] = field(default_factory=dict)
    rtu_lines: dict[str, RtuLine] = field(default_factory=dict)
    tcp_buses: dict[str, TcpBus] = field(default_factory=dict)
    proxy: UplinkProxy | None = None
    poll_intervals: dict[str, str] = field(default_factory=dict)

    def device(self, name: str) -> SimDevice:
        return self.devices[name]

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """Where each device is now, by device name."""
        out = {}
        for name, device in self.devices.items():
            common = Endpoint(device=name, kind=device.kind, transport="", driver=device.driver, profile=device.profile,
                              poll_interval=self.poll_intervals[name])
            if isinstance(device, SerialDevice):
                out[name] = replace(common, transport="serial", path=str(device.port.link), tty=device.port.tty_path,
                                    baudrate=device.baudrate, parity="N", stopbits=1)
            else:
                assert isinstance(device, ModbusDevice)
                line = next((b for b in self.rtu_lines.values() if device.unit in b.units
                             and b.units[device.unit] is device), None)
                if line is not None:
                    out[name] = replace(common, transport="modbus-rtu", bus=line.name, path=str(line.port.link),
                                        tty=line.port.tty_path, baudrate=line.baudrate, parity=line.parity,
                                        stopbits=line.stopbits, unit=device.unit)
                else:
                    tcp = next(b for b in self.tcp_buses.values() if b.units.get(device.unit) is device)
                    out[name] = replace(common, transport=tcp.transport, bus=tcp.name, host=tcp.host,
                                        port=tcp.port, unit=device.unit)
        return out

    def emitted_macs(self) -> set[str]:
        """Every MAC address any simulated pedestrian counter wrote to its line (for privacy leak tests)."""
        macs: set[str] = set()
        for device in self.devices.values():
            if isinstance(device, PedestrianCounter):
                macs |= device.emitted
        return macs

    def fault_log(self) -> list[tuple[str, int, str]]:
        """Every fault that hit a frame so far: (device, frame number, kind)."""
        return sorted((name, frame, kind) for name, d in self.devices.items() for frame, kind in d.faults.log)

    def to_json(self) -> str:
        """The endpoints as one JSON object on one line."""
        return json.dumps({"scenario": self.scenario.name, "seed": self.seed, "run_dir": str(self.run_dir),
                           "uplink_proxy": self.proxy.url if self.proxy else None,
                           "devices": {n: {k: v for k, v in asdict(e).items() if v is not None}
                                       for n, e in self.endpoints.items()}}, separators=(",", ":"))

    def to_text(self) -> str:
        """The endpoints as aligned lines for a person."""
        lines = [f"hil-sim scenario {self.scenario.name!r} (seed {self.seed}) ready; run directory {self.run_dir}"]
        for e in self.endpoints.values():
            if e.transport in TCP_BUSES:
                where = f"{e.host}:{e.port} unit {e.unit}"
            else:
                where = f"{e.path} (-> {e.tty}) {e.baudrate} 8{e.parity}{e.stopbits}"
                if e.unit is not None:
                    where += f" unit {e.unit}"
            lines.append(f"  {e.device:<14} {e.kind:<20} {e.transport:<11} {where}")
        if self.proxy is not None:
            lines.append(f"  uplink proxy   {self.proxy.url} -> {self.proxy.upstream[0]}:{self.proxy.upstream[1]}")
        return "\n".join(lines)

    def gateway_config_toml(self, *, state_dir: str | Path, hub: str | None = None, gateway_id: str = "sim-gateway",
                            policy: str = "policy.toml", log_level: str = "info",
                            local_api_listen: str | None = None) -> str:
        """A gateway config (the shared format) with one bus per simulated line and one device per device."""
        if hub is None:
            hub = self.proxy.url if self.proxy else ""
        q = json.dumps  # a JSON string is a valid TOML basic string
        out = ["# Written by `ocn-edge sim` for scenario " + self.scenario.name + "; device paths are this run's.",
               "[gateway]", f"id = {q(gateway_id)}", f"site = {q('hil-sim ' + self.scenario.name)}",
               f"latitude = {self.scenario.latitude}", f"longitude = {self.scenario.longitude}",
               f"state_dir = {q(str(state_dir))}", f"log_level = {q(log_level)}", ""]
        written_buses: set[str] = set()
        devices: list[str] = []
        for e in self.endpoints.values():
            bus_name = e.bus or f"serial-{e.device}"
            if bus_name not in written_buses:
                written_buses.add(bus_name)
                out += ["[[buses]]", f"name = {q(bus_name)}", f"type = {q(e.transport)}"]
                if e.transport in TCP_BUSES:
                    out += [f"host = {q(e.host)}", f"tcp_port = {e.port}", 'timeout = "1s"']
                else:
                    out += [f"port = {q(e.path)}", f"baudrate = {e.baudrate}", f"parity = {q(e.parity)}",
                            f"stopbits = {e.stopbits}", "bytesize = 8", f'timeout = "{round(RTU_TIMEOUT_S * 1000)}ms"']
                    if e.transport == "modbus-rtu":
                        out.append('frame_gap = "5ms"')
                out.append("")
            devices += ["[[devices]]", f"name = {q(e.device)}", f"driver = {q(e.driver)}", f"bus = {q(bus_name)}"]
            if e.unit is not None:
                devices.append(f"address = {e.unit}")
            devices += [f"poll_interval = {q(e.poll_interval)}", "enabled = true"]
            if e.profile:
                devices += ["[devices.options]", f"profile = {q(e.profile)}"]
            devices.append("")
        out += devices
        out += ["[privacy]", f"policy = {q(policy)}", "require_signed = false", 'governance_key = ""', "",
                "[batch]", 'span = "5m"', 'flush_interval = "30s"', "max_readings = 20000", 'codec = "zstd"', "",
                "[spool]", 'max_size = "200MB"', 'when_full = "drop_oldest"', "",
                "[uplink]", f"hub = {q(hub)}", 'ca = ""', 'timeout = "30s"', 'daily_budget = "0"', 'key = ""', "",
                "[local_api]", f"enabled = {'true' if local_api_listen else 'false'}",
                f"listen = {q(local_api_listen or '127.0.0.1:8080')}", ""]
        return "\n".join(out)


def _proxy_step(step: Mapping[str, Any], *, where: str) -> ProxyStep:
    return ProxyStep(parse_duration(step.get("at", 0), field=f"{where}.at"), step.get("mode", "pass"),
                     parse_duration(step.get("delay", "500ms"), field=f"{where}.delay"), int(step.get("rate", 4096)))


def _build(scenario: Scenario, sim: Simulation) -> list[Any]:
    """Create buses and devices; returns what must be started, buses after their devices."""
    where = str(scenario.path)
    for bus in scenario.buses:
        if bus["type"] == "modbus-rtu":
            gap = bus.get("frame_gap")
            sim.rtu_lines[bus["name"]] = RtuLine(
                name=bus["name"], link=sim.run_dir / f"ttyRS485-{bus['name']}", baudrate=int(bus.get("baudrate", 9600)),
                parity=bus.get("parity", "N"), stopbits=int(bus.get("stopbits", 1)),
                frame_gap=None if gap is None else parse_duration(gap, field=f"{where}: buses.{bus['name']}.frame_gap"),
                faults=FaultTimeline(f"bus:{bus['name']}", parse_faults(bus.get("faults", ()), where="buses.faults",
                                                                         allowed=RTU_LINE_FAULTS), sim.seed),
                clock=sim.clock, answer_within=RTU_TIMEOUT_S)
        else:
            sim.tcp_buses[bus["name"]] = TcpBus(name=bus["name"], port=int(bus.get("port", 0)),
                                                rtu_framing=bus["type"] == "modbus-rtu-over-tcp")
    for index, spec in enumerate(scenario.devices):
        here = f"{where}: devices[{index}]"
        cls = DEVICE_KINDS[spec["kind"]]
        value_specs = {**cls.quantities, **spec.get("values", {})}
        models = {name: build_model(model, seed=sim.seed, name=f"{spec['name']}/{name}", where=f"{here}.values.{name}",
                                    base_dir=scenario.path.parent) for name, model in value_specs.items()}
        bus_type = next((b["type"] for b in scenario.buses if b["name"] == spec.get("bus")), None)
        faults = FaultTimeline(
            spec["name"],
            parse_faults(spec.get("faults", ()), where=f"{here}.faults",
                         allowed=TCP_FAULTS if bus_type in TCP_BUSES else cls.fault_kinds),
            sim.seed)
        options = spec.get("options", {})
        device: SimDevice
        if issubclass(cls, SerialDevice):
            device = cls(run_dir=sim.run_dir, baudrate=spec.get("baudrate"), name=spec["name"], models=models,
                         faults=faults, clock=sim.clock, seed=sim.seed, options=options)
        else:
            assert issubclass(cls, ModbusDevice)  # every device kind is a serial or a Modbus device
            modbus = cls(unit=spec["unit"], response_delay=parse_duration(
                spec.get("response_delay", "20ms"), field=f"{here}.response_delay"), name=spec["name"], models=models,
                faults=faults, clock=sim.clock, seed=sim.seed, options=options)
            (sim.rtu_lines.get(spec["bus"]) or sim.tcp_buses[spec["bus"]]).add(modbus)
            device = modbus
        sim.devices[spec["name"]] = device
        sim.poll_intervals[spec["name"]] = str(spec.get("poll_interval", "10s"))
    return [*sim.devices.values(), *sim.rtu_lines.values(), *sim.tcp_buses.values()]


@contextlib.asynccontextmanager
async def run_scenario(
    scenario: str | Path | Scenario, *, seed: int | None = None, run_dir: str | Path | None = None,
    start_wall: float | None = None, hub: str | None = None, ledger: str | Path | None = None,
) -> AsyncIterator[Simulation]:
    """Run `scenario` until the block exits; every device is ready when the block starts.

    `seed` overrides the scenario's seed; `run_dir` holds the device symlinks
    (a temporary directory by default); `hub` ("http://127.0.0.1:PORT/") puts
    the uplink proxy in front of that hub when the scenario has an [uplink]
    schedule or `hub` is given; `ledger` (a file path) is where every value a
    device serves is appended (`hilsim.ledger`), the ground truth of a soak.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hilsim-"))
        run_path = Path(run_dir)
        run_path.mkdir(parents=True, exist_ok=True)
        start = start_wall if start_wall is not None else scenario.start
        sim = Simulation(scenario=scenario, seed=scenario.seed if seed is None else seed, run_dir=run_path,
                         clock=SimClock.now(start_wall=start))
        try:
            parts = _build(scenario, sim)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        if ledger is not None:
            book = Ledger(ledger)
            stack.callback(book.close)
            for device in sim.devices.values():
                device.ledger = book
        upstream = hub or scenario.uplink.get("hub")
        if upstream:
            host_port = upstream.split("//", 1)[-1].rstrip("/")
            host, _, port = host_port.rpartition(":")
            if not port.isdigit():
                raise ScenarioError(f"hub = {upstream!r}: expected a hub URL with a port, like "
                                    f"\"http://127.0.0.1:8443/\"")
            schedule = [_proxy_step(step, where="uplink.schedule") for step in scenario.uplink.get("schedule", ())]
            sim.proxy = UplinkProxy(upstream_host=host or "127.0.0.1", upstream_port=int(port), schedule=schedule)
            parts.append(sim.proxy)
        started = []
        try:
            for part in parts:
                await part.start()
                started.append(part)
            log.info("hil-sim %s ready: %d devices", scenario.name, len(sim.devices))
            yield sim
        finally:
            for part in reversed(started):
                await part.stop()
