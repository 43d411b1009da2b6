"""The gateway's TOML config file: its schema and cross-field rules, loading it, and printing the effective config.

One file describes one gateway (see docs/configuration.md).  `load_config` checks
everything once, at start-up, and raises :class:`ConfigError` listing every problem;
what it returns is frozen and complete: every default filled in, every relative path
resolved against the config file's directory, every device's driver options checked
by its driver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

from drivers.registry import UnknownDriver, load_driver
from drivers.sdk import Driver, OptionError, Options
from edge.logs import DRIVER_LOGGER, LEVELS, logger_problem
from edge.protocol import CODECS
from edge.schema import (
    INVALID,
    Address,
    AnyTable,
    ArrayOf,
    Bool,
    Choice,
    Context,
    Duration,
    Field,
    FilePath,
    Float,
    HostPort,
    Int,
    Size,
    Str,
    Table,
    Type,
    Url,
    closest,
    dumps_toml,
    join,
    value_of,
)
from edge.util.files import toml_problem

__all__ = [
    "BUS_TYPES",
    "BatchConfig",
    "BusConfig",
    "ConfigError",
    "DeviceConfig",
    "DriverLookup",
    "GatewayConfig",
    "GatewaySection",
    "LocalApiConfig",
    "PrivacyConfig",
    "SpoolConfig",
    "UplinkConfig",
    "config_digest",
    "only_log_levels_differ",
    "effective_toml",
    "gateway_schema",
    "load_config",
    "parse_config",
]

DriverLookup = Callable[[str], type[Driver]]

BUS_TYPES = ("serial", "modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp")
SERIAL_BUSES = ("serial", "modbus-rtu")  # buses on a local serial port; the others have a host and tcp_port
# Which bus types a driver's Manifest.transport can work over.
TRANSPORT_BUSES: Mapping[str, tuple[str, ...]] = {
    "serial": ("serial",),
    "modbus": ("modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp"),
    "none": (),
}


class ConfigError(Exception):
    """The config file has problems; ``problems`` holds one line per problem, ``str()`` all of them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """[gateway]: who this gateway is and where it stands."""

    id: str
    site: str
    latitude: float | None
    longitude: float | None
    state_dir: Path
    log_level: str
    log_levels: Mapping[str, str]  # a logger's own level, apart from log_level: {"ocn.bus": "debug"}


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One [[buses]] entry: a serial port, a Modbus RTU line, a Modbus TCP endpoint, or an RTU-over-TCP converter."""

    name: str
    type: str
    port: str | None
    baudrate: int
    parity: str
    stopbits: float
    bytesize: int
    host: str | None
    tcp_port: int
    timeout: float
    frame_gap: float  # the schema gives None where the file sets none: then the bus type's default

    def __post_init__(self) -> None:
        if self.frame_gap is None:
            object.__setattr__(self, "frame_gap", default_frame_gap(self.type))


def default_frame_gap(bus_type: str) -> float:
    """Silence between frames when the config sets none: Modbus TCP frames carry their length (MBAP header), so
    none is needed there; a serial line or an RTU-over-TCP converter's line needs its frames kept apart."""
    return 0.0 if bus_type == "modbus-tcp" else 0.005


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One [[devices]] entry; ``options`` are checked by the device's driver, with its defaults filled in.

    Options the driver leaves unset (default None) are not listed, so the effective config
    writes them back as TOML; the driver's ``check_options`` completes them without checking again.
    """

    name: str
    driver: str
    bus: str | None
    address: int | None
    poll_interval: float
    enabled: bool
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """[privacy]: the policy file and whether it must carry the city's governance signature."""

    policy: Path
    require_signed: bool
    governance_key: Path | None


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """[batch]: how readings are cut into sealed batches."""

    span: float
    flush_interval: float
    max_readings: int
    codec: str


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """[spool]: how much disk the store-and-forward spool may use and what happens when it is full."""

    max_size: int
    when_full: str


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """[uplink]: the hub to sync with ("" = store only), TLS trust, timeouts, the data budget and the device key."""

    hub: str
    ca: Path | None
    timeout: float
    daily_budget: int
    key: Path
    broker: str = ""  # mqtt:// or mqtts://: OXP over MQTT through this broker ("" = over HTTP to the hub)
    broker_password: Path | None = None  # the file holding the broker password enrolment gave this gateway


@dataclass(frozen=True, slots=True)
class LocalApiConfig:
    """[local_api]: the technician's HTTP API on the gateway itself."""

    enabled: bool
    listen: HostPort
    public_notice: bool  # beyond loopback, the notice needs no access token (everything else does)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole, validated config of one gateway; ``path`` is the file it came from, as the user named it."""

    path: Path
    gateway: GatewaySection
    buses: tuple[BusConfig, ...]
    devices: tuple[DeviceConfig, ...]
    privacy: PrivacyConfig
    batch: BatchConfig
    spool: SpoolConfig
    uplink: UplinkConfig
    local_api: LocalApiConfig

    def bus_named(self, name: str) -> BusConfig | None:
        """The bus called ``name``, or None."""
        return next((bus for bus in self.buses if bus.name == name), None)

    @property
    def digest(self) -> bytes:
        """:func:`config_digest` of this config: the ``config_digest`` of status reports."""
        return config_digest(self)


# -- the pieces ---------------------------------------------------------------

_DEVICE_ID = Str(
    expected='a device id like "pole-0042"',
    pattern=r"[a-z0-9][a-z0-9-]*",
    rule="lowercase letters, digits and '-', at most 63",
    max_length=63,
)
# A device name starts its channels' ids ("meter-1/voltage_l1"), so it follows edge.protocol.types.CHANNEL_ID_RE.
_NAME_RULE = "letters, digits, '_', '.', ':' and '-', starting with a letter or digit"
_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"


def _name(example: str, noun: str) -> Str:
    return Str(expected=f'a {noun} like "{example}"', pattern=_NAME_PATTERN, rule=_NAME_RULE, max_length=64)


_DEVICE_KEYS = ("name", "driver", "bus", "address", "poll_interval", "enabled")

# -- cross-field rules ----------------------------------------------------------


class LogLevels(Type):
    """``[gateway] log_levels``: a level of its own for some of the gateway's loggers, by the name its lines carry.

    A name written bare in a ``[gateway.log_levels]`` table (``ocn.bus = "debug"``) is a dotted key, which
    TOML reads as nested tables; it is read back as the one name, as is a quoted one (``"ocn.bus" = "debug"``).
    """

    expected = 'a table of logger names and levels like { "ocn.bus" = "debug" }'

    def convert(self, raw: Any, ctx: Context, path: str) -> Any:
        if not isinstance(raw, dict):
            ctx.invalid(path, raw, self.expected)
            return INVALID
        before = len(ctx.problems)
        levels: dict[str, str] = {}
        for name, level in _dotted(raw):
            where = f'{path}."{name}"'
            problem = logger_problem(name)
            if name in levels:
                ctx.report(where, "set twice (written once bare, once quoted?); set it once")
            elif problem is not None:
                ctx.report(where, problem)
            elif level not in LEVELS:
                ctx.invalid(where, level, "one of " + ", ".join(f'"{v}"' for v in LEVELS))
            else:
                levels[name] = level
        return INVALID if len(ctx.problems) != before else MappingProxyType(levels)  # read-only, as the whole config

    def dump(self, value: Any) -> Any:
        return dict(sorted(value.items())) or None  # in one order, so the same levels give the same config digest


def _dotted(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The (dotted name, value) pairs of a table whose dotted keys TOML nested."""
    out: list[tuple[str, Any]] = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        out += _dotted(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return out


def _position_complete(values: dict[str, Any], ctx: Context, path: str) -> None:
    lat, lon = values["latitude"], values["longitude"]
    if (lat is None) != (lon is None):
        unset = "longitude" if lon is None else "latitude"
        ctx.report(join(path, unset), "missing; set both latitude and longitude, or neither")


def _bus_connection(values: dict[str, Any], ctx: Context, path: str) -> None:
    kind = values["type"]
    if kind is INVALID:
        return
    if kind in SERIAL_BUSES:
        if values["port"] is None:
            ctx.report(join(path, "port"), f'missing; a "{kind}" bus needs a serial port like "/dev/ttyUSB0"')
        if values["host"] not in (None, INVALID):
            ctx.report_value(
                join(path, "host"), values["host"],
                f'only "modbus-tcp" and "modbus-rtu-over-tcp" buses have a host; this bus is "{kind}"'
            )
    else:
        if values["host"] is None:
            ctx.report(join(path, "host"), f'missing; a "{kind}" bus needs a host like "192.168.1.20"')
        if values["port"] not in (None, INVALID):
            ctx.report_value(
                join(path, "port"),
                values["port"],
                f'only "serial" and "modbus-rtu" buses have a serial port; a "{kind}" bus uses host and tcp_port',
            )


def _bus_unused_keys(bus: BusConfig) -> tuple[str, ...]:
    if bus.type not in SERIAL_BUSES:
        # An RTU-over-TCP converter's serial settings are set on the converter, not by us.
        return ("port", "baudrate", "parity", "stopbits", "bytesize")
    return ("host", "tcp_port")


def _signature_needs_key(values: dict[str, Any], ctx: Context, path: str) -> None:
    if values["require_signed"] is True and values["governance_key"] is None:
        ctx.report(join(path, "governance_key"), "missing; require_signed = true needs the governance public key")


def _ca_needs_https(values: dict[str, Any], ctx: Context, path: str) -> None:
    hub, ca, broker = values["hub"], values["ca"], values["broker"]
    if broker and isinstance(broker, str):
        if ca not in (None, INVALID) and not (broker.startswith("mqtts://") or (isinstance(hub, str) and hub.startswith("https://"))):
            ctx.report_value(join(path, "ca"), str(ca), f'a CA bundle applies only to an mqtts broker or an https hub; broker is "{broker}"')
        return
    if ca not in (None, INVALID) and isinstance(hub, str) and not hub.startswith("https://"):
        ctx.report_value(join(path, "ca"), str(ca), f'a CA bundle applies only to an https hub; hub is "{hub}"')


def _broker_needs_hub(values: dict[str, Any], ctx: Context, path: str) -> None:
    # Enrolment and the hub's signing key stay on HTTP (OXP §8.6): a broker alone cannot enrol or pin.
    broker, hub = values["broker"], values["hub"]
    if isinstance(broker, str) and broker and hub == "":
        ctx.report_value(join(path, "broker"), broker, 'needs [uplink] hub too, the hub\'s https URL, for enrolment and the hub\'s signing key')


def _unique_names(section: str) -> Callable[[dict[str, Any], Context, str], None]:
    def rule(values: dict[str, Any], ctx: Context, path: str) -> None:
        items = values[section]
        if items is INVALID:
            return
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            name = value_of(item, "name")
            if not isinstance(name, str):
                continue
            if name in first:
                ctx.report_value(
                    join(join(section, i), "name"),
                    name,
                    f"already the name of {section}[{first[name]}]; names must be unique",
                )
            else:
                first[name] = i

    return rule


def _driver_loggers_name_devices(values: dict[str, Any], ctx: Context, path: str) -> None:
    """A level for ``ocn.driver.<device>`` names a device of this file: a misspelt one would change nothing."""
    gateway, devices = values["gateway"], values["devices"]
    levels = value_of(gateway, "log_levels")
    if not isinstance(levels, Mapping) or devices is INVALID:
        return
    names = [n for n in (value_of(d, "name") for d in devices) if isinstance(n, str)]
    for logger in levels:
        device = logger.removeprefix(DRIVER_LOGGER + ".")
        if device != logger and device not in names:
            guess = closest(device, names)
            hint = f'did you mean "{DRIVER_LOGGER}.{guess}"?' if guess else "the devices are " + (_quoted_list(names) or "none")
            ctx.report(f'gateway.log_levels."{logger}"', f'no device named "{device}" in [[devices]]; {hint}')


def _key_default(values: dict[str, Any], ctx: Context, path: str) -> None:
    # The device key lives in the state directory unless the file says otherwise.
    uplink, gateway = values["uplink"], values["gateway"]
    if isinstance(uplink, UplinkConfig) and uplink.key is None and isinstance(gateway, GatewaySection):
        values["uplink"] = uplink = dataclasses.replace(uplink, key=gateway.state_dir / "device.key")
    # Enrolment writes the broker password beside the device key (edge.enrol) unless the file names another place.
    if isinstance(uplink, UplinkConfig) and uplink.broker and uplink.broker_password is None and isinstance(gateway, GatewaySection):
        values["uplink"] = dataclasses.replace(uplink, broker_password=uplink.key.parent / "broker.password")


def _quoted_list(names: list[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


def _devices_fit(driver_lookup: DriverLookup) -> Callable[[dict[str, Any], Context, str], None]:
    """Each device's driver is installed, fits its bus, gets the options it accepts; buses are not double-booked."""

    def rule(values: dict[str, Any], ctx: Context, path: str) -> None:
        devices = values["devices"]
        if devices is INVALID:
            return
        buses: dict[str, Any] = {}
        if values["buses"] is not INVALID:
            for bus in values["buses"]:
                name = value_of(bus, "name")
                if isinstance(name, str):
                    buses.setdefault(name, bus)
        checked = list(devices)
        users: dict[str, list[tuple[int, Any]]] = {}
        for i, device in enumerate(devices):
            where = join("devices", i)
            bus_name = value_of(device, "bus")
            if isinstance(bus_name, str) and bus_name not in buses:
                _no_such_bus(ctx, join(where, "bus"), bus_name, list(buses))
            driver_cls = _lookup(driver_lookup, value_of(device, "driver"), ctx, join(where, "driver"))
            if driver_cls is not None:
                _device_fits_driver(ctx, where, device, driver_cls, buses)
                options = value_of(device, "options")
                if isinstance(options, dict):
                    completed = _check_options(driver_cls, options, ctx, join(where, "options"))
                    if completed is not INVALID and isinstance(device, DeviceConfig):
                        # Checked here, once: the runtime and the driver take these as they are.
                        checked[i] = dataclasses.replace(device, options=Options(completed, driver_cls))
            if value_of(device, "enabled") is not False and isinstance(bus_name, str) and bus_name in buses:
                users.setdefault(bus_name, []).append((i, device))
        for bus_name, on_bus in users.items():
            _bus_not_double_booked(ctx, bus_name, buses[bus_name], on_bus)
        values["devices"] = tuple(checked)

    return rule


def _no_such_bus(ctx: Context, where: str, name: str, defined: list[str]) -> None:
    if not defined:
        ctx.report_value(where, name, "no such bus; no buses are defined (add a [[buses]] table)")
        return
    guess = closest(name, defined)
    hint = f'did you mean "{guess}"?' if guess else f"defined buses: {_quoted_list(defined)}"
    ctx.report_value(where, name, f"no such bus; {hint}")


def _lookup(driver_lookup: DriverLookup, name: Any, ctx: Context, where: str) -> type[Driver] | None:
    if not isinstance(name, str):
        return None
    try:
        return driver_lookup(name)
    except UnknownDriver as err:
        guess = closest(name, err.known)
        hint = f'did you mean "{guess}"? ' if guess else ""
        installed = _quoted_list(err.known) if err.known else "none"
        ctx.report_value(where, name, f"no such driver is installed; {hint}installed drivers: {installed}")
    except Exception as err:  # a broken driver package must not crash the check of everything else
        ctx.report_value(where, name, f"the driver is installed but failed to load: {err}")
    return None


def _needs_text(buses: tuple[str, ...]) -> str:
    quoted = [f'"{b}"' for b in buses]
    return (", ".join(quoted[:-1]) + " or " if len(quoted) > 1 else "") + quoted[-1] + " bus"


def _device_fits_driver(ctx: Context, where: str, device: Any, driver_cls: type[Driver], buses: dict[str, Any]) -> None:
    driver = driver_cls.manifest.name
    transport = driver_cls.manifest.transport
    bus_name, address = value_of(device, "bus"), value_of(device, "address")
    if transport not in TRANSPORT_BUSES:
        known = _quoted_list(list(TRANSPORT_BUSES))
        ctx.report(
            join(where, "driver"), f'driver "{driver}" declares transport "{transport}"; this gateway knows {known}'
        )
        return
    fitting = TRANSPORT_BUSES[transport]
    if not fitting:
        if isinstance(bus_name, str):
            ctx.report_value(join(where, "bus"), bus_name, f'driver "{driver}" does not use a bus; remove this key')
    elif bus_name is None:
        ctx.report(join(where, "bus"), f'missing; driver "{driver}" needs a {_needs_text(fitting)}')
    elif bus_name in buses:
        bus_type = value_of(buses[bus_name], "type")
        if isinstance(bus_type, str) and bus_type not in fitting:
            ctx.report_value(
                join(where, "bus"),
                bus_name,
                f'driver "{driver}" needs a {_needs_text(fitting)}, but this is a "{bus_type}" bus',
            )
    if transport == "modbus":
        if address is None:
            ctx.report(join(where, "address"), f'missing; driver "{driver}" needs a Modbus unit id from 1 to 247')
    elif isinstance(address, int):
        ctx.report_value(
            join(where, "address"), address, f'only Modbus devices have an address; driver "{driver}" is not one'
        )


def _is_path_option(kind: object) -> bool:
    return isinstance(kind, type) and issubclass(kind, PurePath)


def _check_options(driver_cls: type[Driver], options: dict[str, Any], ctx: Context, where: str) -> Any:
    """The driver's completed options, or INVALID after reporting every problem the driver lets us find."""
    specs = driver_cls.manifest.options
    known: dict[str, Any] = {}
    for key, value in options.items():
        if key not in specs and key in _DEVICE_KEYS:
            # TOML puts every key after [devices.options] into the options table: a classic slip.
            ctx.report(
                join(where, key), f'unknown option; "{key}" is a device setting: move it above [devices.options]'
            )
        elif not specs:
            ctx.report(join(where, key), f'unknown option; driver "{driver_cls.manifest.name}" takes no options')
        elif key not in specs:
            ctx.unknown(join(where, key), key, specs)
        elif _is_path_option(specs[key].type) and isinstance(value, str) and value:
            # A path option means a file next to the config, like every other path in it.
            known[key] = Path(os.path.normpath(ctx.base_dir / Path(value).expanduser()))
        else:
            known[key] = value
    clean = len(known) == len(options)
    reported: set[str] = set()
    # Driver.check_options stops at the first bad option: set it aside and ask again, to report them all.
    for _ in range(len(specs) + 1):
        try:
            completed = driver_cls.check_options(known)
        except OptionError as err:
            if err.option in reported:
                break
            reported.add(err.option)
            if err.option not in known:
                ctx.report(join(where, err.option), f"missing; expected {err.expected}")
                break
            ctx.report_value(join(where, err.option), err.value, f"expected {err.expected}")
            del known[err.option]
        except Exception as err:  # a driver's own check may raise anything; it is still one problem to show
            ctx.report(where, f'driver "{driver_cls.manifest.name}" rejected the options: {err}')
            break
        else:
            return completed if clean and not reported else INVALID
    return INVALID


def _bus_not_double_booked(ctx: Context, bus_name: str, bus: Any, on_bus: list[tuple[int, Any]]) -> None:
    if value_of(bus, "type") == "serial" and len(on_bus) > 1:
        first = on_bus[0][0]
        for i, _ in on_bus[1:]:
            ctx.report_value(
                join(join("devices", i), "bus"),
                bus_name,
                f"serial bus already carries devices[{first}]; "
                "a serial bus carries one device (use enabled = false for spares)",
            )
        return
    seen: dict[int, int] = {}
    for i, device in on_bus:
        address = value_of(device, "address")
        if not isinstance(address, int):
            continue
        if address in seen:
            ctx.report_value(
                join(join("devices", i), "address"),
                address,
                f'already used on bus "{bus_name}" by devices[{seen[address]}]',
            )
        else:
            seen[address] = i


# -- the schema -------------------------------------------------------------------


def gateway_schema(*, driver_lookup: DriverLookup = load_driver) -> Table:
    """The schema of the gateway config file; ``driver_lookup`` finds a device's driver class by name."""
    gateway = Table(
        {
            "id": Field(_DEVICE_ID),
            "site": Field(Str(expected='a place description like "King St W & Spadina Ave"'), ""),
            "latitude": Field(Float(minimum=-90, maximum=90), None),
            "longitude": Field(Float(minimum=-180, maximum=180), None),
            "state_dir": Field(FilePath(example="/var/lib/ocn-edge", noun="a directory"), "/var/lib/ocn-edge"),
            "log_level": Field(Choice(*LEVELS), "info"),
            "log_levels": Field(LogLevels(), {}),
        },
        into=GatewaySection,
        rules=(_position_complete,),
        expected='a [gateway] table with an id like "pole-0042"',
    )
    bus = Table(
        {
            "name": Field(_name("rs485-1", "bus name")),
            "type": Field(Choice(*BUS_TYPES)),
            "port": Field(Str(expected='a serial port like "/dev/ttyUSB0"', pattern=r"\S+"), None),
            "baudrate": Field(Int(minimum=50, maximum=4_000_000), 9600),
            "parity": Field(Choice("N", "E", "O"), "N"),
            "stopbits": Field(Choice(1, 1.5, 2), 1),
            "bytesize": Field(Int(minimum=5, maximum=8), 8),
            "host": Field(
                Str(expected='a host name or IP address like "192.168.1.20"', pattern=r"[A-Za-z0-9.:-]+"), None
            ),
            "tcp_port": Field(Int(minimum=1, maximum=65535), 502),
            "timeout": Field(Duration(at_least="1ms"), "500ms"),
            "frame_gap": Field(Duration(), None),  # default_frame_gap: by the bus type
        },
        into=BusConfig,
        rules=(_bus_connection,),
        unused=_bus_unused_keys,
    )
    device = Table(
        {
            "name": Field(_name("meter-1", "device name")),
            "driver": Field(Str(expected='a driver name like "modbus"')),
            "bus": Field(Str(expected='the name of a bus like "rs485-1"'), None),
            "address": Field(Int(minimum=1, maximum=247, expected="a Modbus unit id from 1 to 247"), None),
            "poll_interval": Field(Duration(at_least="10ms"), "10s"),
            "enabled": Field(Bool(), True),
            "options": Field(AnyTable(), {}),
        },
        into=DeviceConfig,
    )
    privacy = Table(
        {
            "policy": Field(FilePath(example="policy.toml", must_exist=True, noun="a policy file"), "policy.toml"),
            "require_signed": Field(Bool(), False),
            "governance_key": Field(
                FilePath(example="governance.pub", optional=True, must_exist=True, noun="a public key file"), ""
            ),
        },
        into=PrivacyConfig,
        expected="a [privacy] table",
        rules=(_signature_needs_key,),
    )
    batch = Table(
        {
            "span": Field(Duration(at_least="1s"), "5m"),
            "flush_interval": Field(Duration(at_least="100ms"), "30s"),
            "max_readings": Field(Int(minimum=1, maximum=1_000_000), 20000),
            "codec": Field(Choice(*CODECS), "zstd"),
        },
        into=BatchConfig,
        expected="a [batch] table",
    )
    spool = Table(
        {
            "max_size": Field(Size(at_least="1MB"), "200MB"),
            "when_full": Field(Choice("drop_oldest", "refuse_newest"), "drop_oldest"),
        },
        into=SpoolConfig,
        expected="a [spool] table",
    )
    uplink = Table(
        {
            "hub": Field(Url(schemes=("http", "https"), example="https://hub.example.org/", optional=True), ""),
            "ca": Field(FilePath(example="city-ca.pem", optional=True, must_exist=True, noun="a PEM file"), ""),
            "timeout": Field(Duration(at_least="1s"), "30s"),
            "daily_budget": Field(Size(), "0"),
            "key": Field(FilePath(example="device.key", optional=True, noun="a key file"), ""),
            "broker": Field(Url(schemes=("mqtt", "mqtts"), example="mqtts://broker.example.org:8883", optional=True), ""),
            "broker_password": Field(FilePath(example="broker.password", optional=True, noun="a password file"), ""),
        },
        into=UplinkConfig,
        expected="a [uplink] table",
        rules=(_ca_needs_https, _broker_needs_hub),
    )
    local_api = Table(
        {"enabled": Field(Bool(), True), "listen": Field(Address(), "127.0.0.1:8080"), "public_notice": Field(Bool(), True)},
        into=LocalApiConfig,
        expected="a [local_api] table",
    )
    return Table(
        {
            "gateway": Field(gateway),
            "buses": Field(ArrayOf(bus, expected="an array of tables written [[buses]]"), []),
            "devices": Field(ArrayOf(device, expected="an array of tables written [[devices]]"), []),
            "privacy": Field(privacy, {}),
            "batch": Field(batch, {}),
            "spool": Field(spool, {}),
            "uplink": Field(uplink, {}),
            "local_api": Field(local_api, {}),
        },
        rules=(_unique_names("buses"), _unique_names("devices"), _devices_fit(driver_lookup), _driver_loggers_name_devices,
               _key_default),
    )



def parse_config(
    text: str, *, path: str | os.PathLike[str], driver_lookup: DriverLookup = load_driver
) -> GatewayConfig:
    """Validate config ``text`` as if read from ``path`` (relative paths resolve next to it); raise ConfigError."""
    source = str(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([toml_problem(source, err)]) from None
    ctx = Context(source=source, base_dir=Path(os.path.abspath(Path(path).parent)))
    values = gateway_schema(driver_lookup=driver_lookup).convert(document, ctx, "")
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return GatewayConfig(path=Path(path), **values)


def load_config(path: str | os.PathLike[str], *, driver_lookup: DriverLookup = load_driver) -> GatewayConfig:
    """Read and validate the gateway config at ``path``; raise ConfigError listing every problem."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{source}: is a directory; expected a TOML config file"]) from None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)
        raise ConfigError([f"{source}: line {line}, column {column}: not UTF-8 text; save the file as UTF-8"]) from None
    except OSError as err:
        raise ConfigError([f"{source}: cannot read: {err.strerror}"]) from None
    return parse_config(text, path=path, driver_lookup=driver_lookup)


def effective_toml(cfg: GatewayConfig) -> str:
    """The effective config as TOML: every default filled in, every path absolute; it loads back equal."""
    document = gateway_schema().dump(cfg)  # dumping reads converted values only: no driver is looked up
    header = f"# Effective configuration of {cfg.path}: every default filled in, every path absolute.\n\n"
    return header + dumps_toml(document)


def only_log_levels_differ(running: GatewayConfig, new: GatewayConfig) -> bool:
    """Whether ``new`` is ``running`` but for ``log_level`` and ``log_levels``, which apply without a restart."""
    if (running.gateway.log_level, running.gateway.log_levels) == (new.gateway.log_level, new.gateway.log_levels):
        return False
    gateway = dataclasses.replace(running.gateway, log_level=new.gateway.log_level, log_levels=new.gateway.log_levels)
    return dataclasses.replace(running, gateway=gateway) == new


def config_digest(cfg: GatewayConfig) -> bytes:
    """SHA-256 of the effective config: changes exactly when what the gateway does could change."""
    return hashlib.sha256(effective_toml(cfg).encode("utf-8")).digest()
