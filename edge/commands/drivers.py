"""Technician and integrator commands: `drivers`, `driver new`, `ports`, `scan`, `read`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from drivers.buses import BusConfigLike, create_bus
from drivers.modbus.profile import ProfileError, load_profile, shipped_profiles
from drivers.registry import UnknownDriver, available, load_driver
from drivers.scaffold import KINDS, ScaffoldError, scaffold
from drivers.sdk import DeviceContext, Driver, OptionError, Options
from drivers.testing import BusSettings
from edge.commands import positive, shows_usage, whole
from edge.commands.through import Refused, Unreachable, api_off, default_token, post, ranges, through_line
from edge.commissioning import SCAN_MAX_UNITS, gather_frames, parse_register, parse_units, shown_value, stream_diagnosis
from edge.portlock import PortRecord, find_endpoint_holder, find_holder, held_message, probe_locked
from edge.protocol.types import Reading

__all__ = ["register"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
COMMON_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
MAX_BAUD = 4_000_000  # the fastest UARTs a Pi or a USB adapter drive
BY_ID = Path("/dev/serial/by-id")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("drivers", help="list the installed drivers and Modbus profiles", formatter_class=raw,
                       description="List the installed drivers (built in and pip-installed) and the shipped Modbus "
                                   "profiles.\nWith a NAME, show that driver's options, or that profile's registers.")
    p.add_argument("name", nargs="?", metavar="NAME", help="a driver name or a Modbus profile name")
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.set_defaults(func=cmd_drivers)

    p = sub.add_parser("driver", help="driver development: `ocn-edge driver new NAME`")
    driver_sub = p.add_subparsers(title="commands", metavar="COMMAND")
    new = driver_sub.add_parser("new", help="write a new driver package with a working test against hil-sim",
                                formatter_class=raw, description=(
                                    "Write ./ocn-edge-driver-NAME/: a pip-installable package registering driver NAME "
                                    "under the\nocn_edge.drivers entry-point group, and a test against hil-sim. "
                                    "See docs/drivers.md."))
    new.add_argument("name", metavar="NAME", help="the driver name, e.g. acme-flowmeter")
    new.add_argument("--kind", choices=sorted(KINDS), default="modbus",
                     help="modbus: a device on a Modbus bus (default); serial: a device streaming frames on "
                          "its own serial port")
    new.add_argument("--dir", default=".", help="where to create the package (default: the current directory)")
    new.set_defaults(func=cmd_driver_new)
    shows_usage(p)

    p = sub.add_parser("ports", help="list serial ports with their stable /dev/serial/by-id names",
                       formatter_class=raw, description=(
                           "List serial ports. Put the /dev/serial/by-id name in the gateway config: it stays the "
                           "same\nwhen adapters are replugged in another order, /dev/ttyUSB0 does not."))
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.set_defaults(func=cmd_ports)

    p = sub.add_parser("scan", help="probe a Modbus bus and report which unit ids answer", formatter_class=raw,
                       description=(
                           "Probe a Modbus bus: send one small read to each unit id and report who answers.\n"
                           "A unit answering with an exception is there too. Each silent unit costs one timeout.\n"
                           "When the running gateway holds the port, the scan goes through it (its local API), at\n"
                           f"its configured line settings, {SCAN_MAX_UNITS} ids per request, between its polls; --direct "
                           "does not.\n\n"
                           "  ocn-edge scan --port /dev/serial/by-id/usb-FTDI-if00-port0 --baud 9600,19200\n"
                           "  ocn-edge scan --tcp 192.0.2.10:502 --units 1-10\n"
                           "  ocn-edge scan --rtu-over-tcp 192.0.2.20:4196 --units 1-10\n\n"
                           "Exit status: 0 some unit answered, 1 none did or the bus cannot be opened, 2 bad options."))
    _bus_arguments(p, multi_baud=True)
    p.add_argument("--units", default="1-247", help="unit ids to try: '1-247', '1,2,10-20' (default 1-247)")
    p.add_argument("--register", default="holding:0",
                   help="what to read: FUNCTION:ADDRESS, function holding|input|coil|discrete (default holding:0)")
    _through_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("read", help="read one device once and print each channel, or a diagnosis",
                       formatter_class=raw, description=(
                           "Read one device once with its driver and print every channel with value and unit,\n"
                           "or say what is wrong: no reply, wrong baud rate (CRC errors), an exception code.\n"
                           "Personal values (MAC addresses, exact positions) are shown masked.\n"
                           "When the running gateway holds the port, --config DEVICE goes through it (its local API):\n"
                           "a fresh read between its polls, showing only what its policy releases; --direct does not.\n\n"
                           "  ocn-edge read --config /etc/ocn-edge/gateway.toml meter-1\n"
                           "  ocn-edge read --port /dev/ttyUSB0 --baud 9600 --unit 1 --profile eastron-sdm630\n"
                           "  ocn-edge read --tcp 127.0.0.1:5020 --unit 1 --profile eastron-sdm120\n"
                           "  ocn-edge read --port /dev/ttyUSB1 --driver sds011 --option mode=query\n\n"
                           "Exit status: 0 every channel read, 1 a diagnosis was printed, 2 bad options or config."))
    p.add_argument("device", nargs="?", metavar="DEVICE", help="a device name from --config")
    p.add_argument("--config", help="the gateway config to take DEVICE's driver, bus and options from")
    _bus_arguments(p, multi_baud=False)
    p.add_argument("--unit", type=whole(1, 247), help="Modbus unit id 1..247")
    p.add_argument("--profile", help="a shipped Modbus profile name or a profile TOML path (implies --driver modbus)")
    p.add_argument("--driver", help="a driver name (see `ocn-edge drivers`)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a driver option (repeatable)")
    p.add_argument("--wait", type=positive, default=5.0, help="seconds to wait for a streaming device (default 5)")
    _through_arguments(p)
    p.add_argument("--json", action="store_true", help="one JSON document instead of text")
    p.set_defaults(func=cmd_read)


def _bus_arguments(p: argparse.ArgumentParser, *, multi_baud: bool) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--port", help="serial port (RS-485 adapter), e.g. /dev/serial/by-id/...")
    where.add_argument("--tcp", metavar="HOST[:PORT]", help="Modbus TCP server or gateway (port 502 by default)")
    where.add_argument("--rtu-over-tcp", metavar="HOST[:PORT]",
                       help="an RS-485-to-Ethernet converter passing RTU frames over TCP (port 502 by default)")
    if multi_baud:
        p.add_argument("--baud",
                       help="baud rate(s) to try, comma-separated, or 'all' for " + ",".join(map(str, COMMON_BAUDS))
                            + " (default 9600)")
    else:
        p.add_argument("--baud", type=whole(1, MAX_BAUD), default=9600, help="baud rate (default 9600)")
    p.add_argument("--parity", choices=("N", "E", "O"), default="N", help="parity (default N)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=1, help="stop bits (default 1)")
    p.add_argument("--timeout", type=positive, default=0.5, help="seconds to wait for each reply (default 0.5)")


def _through_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--direct", action="store_true",
                   help="open the port itself even when the running gateway holds it (which then fails, naming it)")
    p.add_argument("--token", default=default_token(),
                   help="the running gateway's local API access token, if it listens beyond 127.0.0.1 (default: $OCN_EDGE_TOKEN)")


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"ocn-edge: {message}", file=sys.stderr)
    return status


def _tcp(value: str, *, option: str = "--tcp") -> tuple[str, int]:
    host, _, port = value.rpartition(":") if ":" in value else (value, "", "502")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{option} {value!r}: expected HOST or HOST:PORT with a port 1..65535")
    return host or "127.0.0.1", int(port)


# --- drivers -----------------------------------------------------------------------------------

def cmd_drivers(args: argparse.Namespace) -> int:
    installed: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for name in sorted(available()):
        try:
            installed[name] = load_driver(name)
        except Exception as exc:  # a broken third-party package must not hide the others
            broken[name] = f"{type(exc).__name__}: {exc}"
    profiles = shipped_profiles()
    if args.name:
        return _describe(args.name, installed, profiles, as_json=args.json)
    if args.json:
        print(json.dumps({
            "drivers": {n: _manifest_dict(c) for n, c in installed.items()},
            "broken": broken,
            "profiles": {n: load_profile(n).description for n in profiles},
        }, indent=2))
        return EXIT_OK
    print("Installed drivers:")
    for name, cls in installed.items():
        m = cls.manifest
        print(f"  {name:<20} {m.version:<8} {m.transport:<7} {m.summary}")
    for name, why in broken.items():
        print(f"  {name:<20} BROKEN   cannot load: {why}")
    print("\nModbus profiles (driver = \"modbus\", option profile = NAME):")
    for name in profiles:
        p = load_profile(name)
        print(f"  {name:<20} {len(p.registers):>3} values  {p.manufacturer} {p.model}".rstrip())
    print("\nDetails: ocn-edge drivers NAME")
    return EXIT_OK


def _manifest_dict(cls: type[Driver]) -> dict[str, Any]:
    m = cls.manifest
    return {"name": m.name, "version": m.version, "summary": m.summary, "hardware": list(m.hardware),
            "transport": m.transport,
            "options": {k: {"type": s.type.__name__, "default": None if s.default is None else str(s.default),
                            "required": s.required, "choices": [str(c) for c in s.choices], "help": s.help}
                        for k, s in m.options.items()}}


def _describe(name: str, installed: dict[str, Any], profiles: dict[str, Path], *, as_json: bool) -> int:
    if name in installed:
        info = _manifest_dict(installed[name])
        if as_json:
            print(json.dumps(info, indent=2))
            return EXIT_OK
        print(f"{info['name']} {info['version']}: {info['summary']}")
        print(f"  transport: {info['transport']}")
        if info["hardware"]:
            print(f"  hardware:  {', '.join(info['hardware'])}")
        print("  options:" if info["options"] else "  options:   none")
        for key, spec in info["options"].items():
            extra = f"one of {', '.join(spec['choices'])}; " if spec["choices"] else ""
            default = ("required" if spec["required"] else "optional" if spec["default"] is None
                       else f"default {spec['default']}")
            print(f"    {key} ({spec['type']}; {extra}{default}): {spec['help']}")
        return EXIT_OK
    if name in profiles:
        p = load_profile(name)
        if as_json:
            print(json.dumps({"name": p.name, "manufacturer": p.manufacturer, "model": p.model,
                              "registers": [{"channel": r.channel, "function": r.function, "address": r.address,
                                             "type": r.type, "unit": r.unit} for r in p.registers]}, indent=2))
            return EXIT_OK
        print(f"{p.name}: {p.manufacturer} {p.model} — {p.description}  ({p.source})")
        for r in p.registers:
            print(f"  {r.channel:<24} {r.function:<8} {r.address:>5} (0x{r.address:04X})  {r.type:<8} {r.unit}")
        return EXIT_OK
    return _fail(f"no installed driver or shipped profile named {name!r} "
                 f"(drivers: {', '.join(installed)}; profiles: {', '.join(profiles)})")


def cmd_driver_new(args: argparse.Namespace) -> int:
    try:
        root = scaffold(args.name, Path(args.dir), kind=args.kind)
    except ScaffoldError as exc:
        return _fail(str(exc))
    print(f"Wrote {root}\n\nNext:\n  cd {root}\n  pip install .\n"
          f"  ocn-edge drivers            # lists {args.name!r}\n  pytest tests                # runs against hil-sim")
    return EXIT_OK


# --- ports -------------------------------------------------------------------------------------

def cmd_ports(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    stable: dict[str, str] = {}
    if BY_ID.is_dir():
        for link in sorted(BY_ID.iterdir()):
            stable[os.path.realpath(link)] = str(link)
    ports = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        holder = find_holder(p.device)
        ports.append({
            "device": p.device,
            "by_id": stable.get(os.path.realpath(p.device)),
            "description": None if p.description in (None, "n/a") else p.description,
            "usb": f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None,
            "manufacturer": p.manufacturer,
            "serial_number": p.serial_number,
            "held_by": None if holder is None else {"pid": holder.pid, "unit": holder.unit,
                                                    "local_page": holder.local_page},
            "held": None if holder is None else held_message(holder),
        })
    if args.json:
        print(json.dumps({"ports": ports}, indent=2))
        return EXIT_OK
    if not ports:
        print("No serial ports found. Is the adapter plugged in? (`dmesg | tail` shows what the kernel saw.)")
        return EXIT_OK
    for p in ports:
        print(p["device"])
        print(f"  stable name: {p['by_id'] or '(none: not a USB adapter, or no udev by-id link)'}")
        details = [x for x in (p["description"], p["manufacturer"], p["usb"] and f"USB {p['usb']}",
                               p["serial_number"] and f"serial {p['serial_number']}") if x]
        if details:
            print(f"  {', '.join(details)}")
        if p["held"]:
            print(f"  {p['held']}")
    if any(p["by_id"] for p in ports):
        print("\nUse the stable name as `port` in the gateway config: it survives replugging in another order.")
    return EXIT_OK


# --- scan --------------------------------------------------------------------------------------

def _bauds(text: str) -> list[int]:
    if text == "all":
        return list(COMMON_BAUDS)
    bauds = [b.strip() for b in text.split(",") if b.strip()]
    if not bauds or not all(b.isdigit() and 0 < int(b) <= MAX_BAUD for b in bauds):
        raise ValueError(f"--baud {text!r}: expected baud rates like 9600 or 9600,19200 (1..{MAX_BAUD}), or 'all'")
    return [int(b) for b in bauds]


def _endpoint(args: argparse.Namespace) -> tuple[str, tuple[str, int]] | None:
    """("tcp" or "rtu-over-tcp", (host, port)) for a bus reached over TCP, None for a serial port."""
    if args.tcp:
        return "tcp", _tcp(args.tcp, option="--tcp")
    if args.rtu_over_tcp:
        return "rtu-over-tcp", _tcp(args.rtu_over_tcp, option="--rtu-over-tcp")
    return None


def cmd_scan(args: argparse.Namespace) -> int:
    try:
        units = parse_units(args.units)
        function, address = parse_register(args.register)
        tcp = _endpoint(args)
        if tcp is None and not args.port:
            raise ValueError("say which bus: --port DEVICE (Modbus RTU), --tcp HOST[:PORT] or --rtu-over-tcp HOST[:PORT]")
        bauds = [0] if tcp else _bauds(args.baud or "9600")
    except ValueError as exc:
        return _fail(str(exc))
    holder = _holder(args.port, tcp[1] if tcp else None)
    if holder is not None and args.port and args.direct:
        return _fail(f"cannot scan {args.port}: {held_message(holder)}", EXIT_FAILED)
    if holder is not None and not args.direct:
        found = _scan_through(holder, args, tcp[1] if tcp else None, units, bauds if args.baud else None)
    else:
        found = asyncio.run(_scan(tcp, args, bauds, units, function, address))
    if found is None:
        return EXIT_FAILED
    if args.json:
        print(json.dumps({"found": found}, indent=2))
    elif not found:
        print("No unit answered. Check power, A/B wiring (try swapping), termination, baud rate and parity.")
    return EXIT_OK if found else EXIT_FAILED


def _holder(port: str | None, endpoint: tuple[str, int] | None, state_dirs: list[str] | None = None) -> PortRecord | None:
    """The running gateway that owns the serial ``port`` or the Modbus TCP ``endpoint``, from its port record."""
    if port:
        return find_holder(port, state_dirs=state_dirs or [])
    if endpoint:
        return find_endpoint_holder(*endpoint, state_dirs=state_dirs or [])
    return None


def _scan_through(holder: PortRecord, args: argparse.Namespace, endpoint: tuple[str, int] | None, units: list[int],
                  bauds: list[int] | None) -> list[dict[str, Any]] | None:
    """Scan through the running gateway's bus owner, SCAN_MAX_UNITS ids per request; None when it cannot."""
    if args.port:
        where, bus = args.port, holder.bus_on(args.port)
    else:
        assert endpoint is not None
        where, bus = f"{endpoint[0]}:{endpoint[1]}", holder.bus_at(*endpoint)
    if holder.local_page is None or bus is None:
        _fail(f"cannot scan {where}: {api_off(holder) if holder.local_page is None else held_message(holder)}",
              EXIT_FAILED)
        return None
    print(through_line(holder), file=sys.stderr)
    found: list[dict[str, Any]] = []
    garbled = 0
    for first in range(0, len(units), SCAN_MAX_UNITS):
        part = units[first:first + SCAN_MAX_UNITS]
        try:
            answer = post(holder, f"buses/{quote(bus)}/scan", {"units": ranges(part), "register": args.register,
                                                          "timeout": args.timeout},
                          token=args.token, timeout=len(part) * args.timeout * 4 + 30)
        except Unreachable as exc:
            _fail(f"cannot scan {where}: {held_message(holder)}; {exc}", EXIT_FAILED)
            return None
        except Refused as exc:
            _fail(f"cannot scan {where} through the running gateway: {exc}", EXIT_FAILED)
            return None
        if first == 0 and not args.json:
            print(f"Scanning {answer['line']} (bus {bus}), units {units[0]}..{units[-1]} ({len(units)} ids, "
                  f"{answer['timeout_s']:g} s each):")
            baud = answer.get("baudrate")
            if bauds and baud and set(bauds) != {baud}:
                print(f"  note: the running gateway holds {where} at {baud} baud, so only that was scanned; "
                      "to try other rates, stop it and scan with --direct")
        for entry in answer["found"]:
            entry = {**entry, "baud": answer.get("baudrate")}
            found.append(entry)
            if not args.json:
                devices = f" ({', '.join(entry['devices'])})" if entry["devices"] else ""
                print(f"  unit {entry['unit']:>3}{devices} answers ({entry['reply_ms']} ms): {entry['answer']}")
        garbled += len(answer["garbled"])
        for problem in answer["problems"]:
            if "corrupt" not in problem:
                print(f"problem: {problem}", file=sys.stderr)
    if garbled and not args.json:
        print(f"  {garbled} replies were corrupt (CRC errors): devices are there but at another baud rate or parity "
              "than the gateway's bus; check its baudrate and parity")
    return found


async def _scan(tcp: tuple[str, tuple[str, int]] | None, args: argparse.Namespace, bauds: list[int], units: list[int],
                function: str, address: int) -> list[dict[str, Any]] | None:
    # The Modbus stack (pymodbus) loads here, not with this module: `ocn-edge ports`, `drivers` and a serial device's
    # `read` do without it.
    from drivers.modbus.adapter import ExceptionReply, GarbledReply, LinkDown, ModbusLink, NoReply

    found: list[dict[str, Any]] = []
    for baud in bauds:
        if tcp:
            kind, (host, tcp_port) = tcp
            link = ModbusLink(kind, host=host, tcp_port=tcp_port, timeout=args.timeout)
            where = f"{host}:{tcp_port}" + (" (RTU frames over TCP)" if kind == "rtu-over-tcp" else "")
        else:
            link = ModbusLink("rtu", port=args.port, baudrate=baud, parity=args.parity, stopbits=args.stopbits,
                              timeout=args.timeout)
            where = f"{args.port} at {baud} 8{args.parity}{args.stopbits}"
        try:
            await link.open()
        except LinkDown as exc:
            print(f"cannot open {where}: {(args.port and _locked_note(args.port)) or exc}", file=sys.stderr)
            return None
        garbled = 0
        if not args.json:
            print(f"Scanning {where}, units {units[0]}..{units[-1]} ({len(units)} ids, {args.timeout:g} s each):")
        try:
            for unit in units:
                began = time.monotonic()
                entry: dict[str, Any]
                try:
                    values = await link.read(function, unit, address, 1, timeout=args.timeout)
                except NoReply:
                    continue
                except GarbledReply:
                    garbled += 1
                    continue
                except ExceptionReply as exc:
                    entry = {"unit": unit, "baud": baud or None, "answer": f"exception {exc.code}: {exc.meaning}"}
                except LinkDown as exc:
                    print(f"lost {where}: {exc}", file=sys.stderr)
                    return None
                else:
                    entry = {"unit": unit, "baud": baud or None, "answer": f"{function} {address} = {values[0]}"}
                entry["reply_ms"] = round((time.monotonic() - began) * 1000, 1)
                found.append(entry)
                if not args.json:
                    print(f"  unit {unit:>3} answers ({entry['reply_ms']} ms): {entry['answer']}")
        finally:
            link.close()
        if garbled and not args.json:
            print(f"  {garbled} replies at {baud} baud were corrupt (CRC errors): devices are there but at another "
                  "baud rate or parity; try --baud all")
    return found


# --- read --------------------------------------------------------------------------------------

_NOT_THERE = "the port or server is not there (see `ocn-edge ports`)"


def _locked_note(port: str) -> str | None:
    """Said when ``port`` did not open because another process, not a recorded gateway, holds it."""
    if probe_locked(port):
        return f"another process holds it (not a gateway that left a record); `fuser -v {port}` names it"
    return None


def _held_elsewhere(port: str) -> str:
    """Why ``port`` did not open, once no gateway's record claims it: another process's lock, or absence."""
    locked = _locked_note(port)
    if locked:
        return locked
    if not os.path.exists(port):
        return _NOT_THERE
    return f"it exists but did not open; check that this user may use it (`ls -l {port}`, group dialout)"


def cmd_read(args: argparse.Namespace) -> int:
    try:
        plan = _read_plan(args)
    except (ValueError, OptionError, ProfileError, UnknownDriver) as exc:
        return _fail(str(exc))
    port: str | None = getattr(plan["bus"], "port", None) or None
    host: str | None = getattr(plan["bus"], "host", None) if port is None else None
    endpoint = (host, int(plan["bus"].tcp_port)) if host else None
    state_dirs = [plan["state_dir"]] if plan.get("state_dir") else []
    holder = _holder(port, endpoint, state_dirs)
    if holder is not None and port and (args.direct or not args.config):
        how = "" if args.direct else "; to read through it: ocn-edge read --config <its gateway.toml> DEVICE"
        return _fail(f"cannot open {port}: {held_message(holder)}{how}", EXIT_FAILED)
    if holder is not None and args.config and not args.direct:
        return _read_through(holder, port or f"{host}:{plan['bus'].tcp_port}", plan["device"], args)
    # The diagnosis printed at the end says it better than the runtime's fault log lines.
    ocn = logging.getLogger("ocn")
    level = ocn.level
    ocn.setLevel(logging.CRITICAL)  # a unit that never answered is an error line in the runtime
    try:
        return asyncio.run(_read(plan, as_json=args.json, wait=args.wait))
    finally:
        ocn.setLevel(level)


def _read_through(holder: PortRecord, port: str, device: str, args: argparse.Namespace) -> int:
    """Read ``device`` once through the running gateway's bus owner: only what its policy releases is shown."""
    if holder.local_page is None:
        return _fail(f"cannot open {port}: {api_off(holder)}", EXIT_FAILED)
    print(through_line(holder), file=sys.stderr)
    try:
        answer = post(holder, f"devices/{quote(device)}/read", {"wait": args.wait}, token=args.token, timeout=args.wait + 60)
    except Unreachable as exc:
        return _fail(f"cannot open {port}: {held_message(holder)}; {exc}", EXIT_FAILED)
    except Refused as exc:
        return _fail(f"cannot read {device} through the running gateway: {exc}", EXIT_FAILED)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        names = [v["channel"] for v in answer["values"]] + [w["channel"] for w in answer["withheld"]]
        width = max(map(len, names), default=0)
        for v in answer["values"]:
            print(f"{v['channel']:<{width}}  {v['text']} {v['unit']}".rstrip())
        for w in answer["withheld"]:
            print(f"{w['channel']:<{width}}  withheld ({w['why']})")
        for problem in answer["problems"]:
            print(f"problem: {problem}", file=sys.stderr)
    return EXIT_OK if answer.get("read") and not answer["problems"] else EXIT_FAILED


def _read_plan(args: argparse.Namespace) -> dict[str, Any]:
    if args.config:
        from edge.config import ConfigError, load_config

        if not args.device:
            raise ValueError("--config needs a DEVICE name from that file")
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        devices = {d.name: d for d in cfg.devices}
        if args.device not in devices:
            raise ValueError(f"{args.config}: no device named {args.device!r} (devices: {', '.join(devices)})")
        device = devices[args.device]
        bus: BusConfigLike | None = next((b for b in cfg.buses if b.name == device.bus), None)
        return {"driver": load_driver(device.driver), "bus": bus, "device": device.name,
                "options": device.options, "address": device.address, "state_dir": cfg.gateway.state_dir}
    if args.device:
        raise ValueError("a DEVICE name needs --config; otherwise give --port/--tcp/--rtu-over-tcp and --profile or --driver")
    options: dict[str, Any] = {}
    for item in args.option:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = _option_value(value)
    driver_name = args.driver or ("modbus" if args.profile else None)
    if driver_name is None:
        raise ValueError("say how to read the device: --profile NAME (Modbus) or --driver NAME")
    if args.profile in shipped_profiles():
        options["profile"] = args.profile
    elif args.profile:
        options["profile_file"] = Path(args.profile).resolve()
    cls = load_driver(driver_name)
    transport = cls.manifest.transport
    endpoint = _endpoint(args)
    if endpoint is not None:
        kind, (host, port) = endpoint
        if transport != "modbus":
            raise ValueError(f"--{'tcp' if kind == 'tcp' else 'rtu-over-tcp'} reaches a Modbus device; driver "
                             f"{driver_name!r} reads a {transport} device: give --port")
        bus = BusSettings(name="cli", type=f"modbus-{kind}", host=host, tcp_port=port, timeout=args.timeout)
    elif args.port:
        bus = BusSettings(name="cli", type="modbus-rtu" if transport == "modbus" else "serial", port=args.port,
                          baudrate=args.baud, parity=args.parity, stopbits=args.stopbits, timeout=args.timeout)
    else:
        raise ValueError("say which bus: --port DEVICE, --tcp HOST[:PORT] or --rtu-over-tcp HOST[:PORT]")
    if transport == "modbus" and args.unit is None:
        raise ValueError("a Modbus device needs --unit (1..247); `ocn-edge scan` finds it")
    try:
        checked = Options(cls.check_options(options), cls)
    except OptionError as exc:
        if exc.option != "profile_file":
            raise
        raise ValueError(f"--profile {args.profile!r}: expected {exc.expected}") from None
    return {"driver": cls, "bus": bus, "device": "device", "options": checked, "address": args.unit}


def _option_value(text: str) -> Any:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


async def _read(plan: dict[str, Any], *, as_json: bool, wait: float) -> int:
    cls: type[Driver] = plan["driver"]
    port: str | None = getattr(plan["bus"], "port", None)
    bus = create_bus(plan["bus"], reopen_max=1.0)
    ctx = DeviceContext(device_id=plan["device"], options=plan["options"], bus=bus, address=plan["address"],
                        poll_interval=1.0)
    driver = cls(ctx)
    channels = {c.id: c for c in driver.channels()}
    personal = {c.id for c in channels.values() if c.personal}
    owner = asyncio.create_task(bus.run())
    problems: list[str] = []
    readings: list[Reading] = []
    try:
        try:
            await asyncio.wait_for(bus.wait_open(), min(wait, 3.0))
        except TimeoutError:
            problems.append(f"cannot open {bus.what}: {_held_elsewhere(port) if port else _NOT_THERE}")
        else:
            modbus = sys.modules.get("drivers.modbus.driver")  # loaded if the driver is the Modbus one
            if modbus is not None and isinstance(driver, modbus.ModbusDriver):
                from drivers.modbus.diagnosis import diagnose

                result = await driver.poll()
                readings = result.readings
                problems = [diagnose(exc, driver.unit, req) for req, exc in result.failures]
                if result.skipped:
                    problems.append(f"{len(result.skipped)} more request(s) not sent after the unit went silent")
            else:
                readings = await _stream(driver, channels, wait)
                stats: dict[str, Any] = getattr(driver, "stats", dict)()
                if not readings:
                    problems.append(stream_diagnosis(bus.stats().get("bytes_in", 0), stats, wait))
                elif stats.get("bad_checksum") or stats.get("bad_frames"):
                    problems.append(f"some frames were bad: {stats}")
    finally:
        owner.cancel()
        await asyncio.gather(owner, return_exceptions=True)
    latest = {r.channel: r for r in readings}
    if as_json:
        print(json.dumps({"device": plan["device"], "driver": cls.manifest.name,
                          "readings": [{"channel": r.channel, "value": shown_value(r, channels.get(r.channel)) if r.channel in personal
                                        else r.value, "unit": r.unit} for r in latest.values()],
                          "problems": problems}, indent=2))
    else:
        width = max((len(c) for c in latest), default=0)
        for r in latest.values():
            print(f"{r.channel:<{width}}  {shown_value(r, channels.get(r.channel))} {r.unit}".rstrip())
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
    return EXIT_OK if latest and not problems else EXIT_FAILED


async def _stream(driver: Driver, channels: dict[str, Any], wait: float) -> list[Reading]:
    """Run a streaming driver until every channel was seen, or ~1 s of frames after the first, or ``wait`` s."""
    got: asyncio.Queue[Reading] = asyncio.Queue()

    async def emit(reading: Reading) -> None:
        got.put_nowait(reading)

    task = asyncio.create_task(driver.run(emit))
    try:
        return await gather_frames(got, channels, wait)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
