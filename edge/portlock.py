"""The record of the serial ports a running gateway holds, so `read`, `scan` and `ports` can name the holder.

The bus owners open every serial port exclusively (a ``flock`` through pyserial), so a second
opener only learns "cannot open".  The gateway therefore writes a small JSON record (pid, unit,
ports and the bus on each, start time, local page) that `read` and `scan` use to go through
the running gateway's local API instead, and that a technician who is not root can read: 0644 in the runtime
directory (``RuntimeDirectory=ocn-edge`` under systemd, ``/run/ocn-edge``; ``OCN_EDGE_RUN_DIR``
overrides), and 0600 in the state directory like every file there, for a gateway run by hand
where no runtime directory exists (`read --config` looks there too).
A record whose pid is gone is stale and ignored: a killed gateway cannot remove it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.config import GatewayConfig

__all__ = ["PortRecord", "find_endpoint_holder", "find_holder", "held_message", "probe_locked", "remove_record", "write_record"]

RUN_DIR_ENV = "OCN_EDGE_RUN_DIR"
DEFAULT_RUN_DIR = Path("/run/ocn-edge")
STATE_FILE = "ports.json"
SHARED_MODE = 0o644
PRIVATE_MODE = 0o600


@dataclass(frozen=True, slots=True)
class PortRecord:
    """One running gateway and the serial ports it holds (as configured and as resolved device paths)."""

    pid: int
    unit: str | None
    ports: tuple[str, ...]
    started: str
    state_dir: str
    local_page: str | None = None
    buses: tuple[tuple[str, str], ...] = ()  # (bus name, port) for each port held
    endpoints: tuple[tuple[str, str], ...] = ()  # (bus name, "host:port") for each Modbus bus reached over TCP

    def holds(self, port: str) -> bool:
        wanted = os.path.realpath(port)
        return any(p == port or os.path.realpath(p) == wanted for p in self.ports)

    def bus_on(self, port: str) -> str | None:
        """The name of the gateway's bus on ``port`` (by name or resolved path), if the record says."""
        wanted = os.path.realpath(port)
        return next((name for name, p in self.buses if p == port or os.path.realpath(p) == wanted), None)

    def bus_at(self, host: str, tcp_port: int) -> str | None:
        """The name of the gateway's Modbus bus on ``host:tcp_port``, if the record says."""
        return next((name for name, e in self.endpoints if e.lower() == f"{host}:{tcp_port}".lower()), None)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process (the service's): it exists
            return True
        return True


def run_dir() -> Path:
    """Where records are shared with technicians: systemd's RuntimeDirectory, or the override, or /run/ocn-edge."""
    given = os.environ.get(RUN_DIR_ENV) or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(given) if given else DEFAULT_RUN_DIR


def serial_buses(config: GatewayConfig) -> dict[str, str]:
    """The ports the gateway's bus owners open, by bus name: serial and Modbus RTU buses some enabled device uses."""
    used = {d.bus for d in config.devices if d.enabled and d.bus}
    return {b.name: b.port for b in config.buses if b.name in used and b.port and b.type in ("serial", "modbus-rtu")}


def tcp_buses(config: GatewayConfig) -> dict[str, str]:
    """The Modbus buses the gateway reaches over TCP, as ``host:port`` by bus name: a second master there would
    share the converter's RS-485 line (RTU over TCP) or the server's attention with the gateway's polls."""
    used = {d.bus for d in config.devices if d.enabled and d.bus}
    return {b.name: f"{b.host}:{b.tcp_port}" for b in config.buses
            if b.name in used and b.host and b.type in ("modbus-tcp", "modbus-rtu-over-tcp")}


def serial_ports(config: GatewayConfig) -> tuple[str, ...]:
    """The ports the gateway's bus owners open: serial and Modbus RTU buses some enabled device uses."""
    return tuple(serial_buses(config).values())


def _unit_name() -> str | None:
    """The systemd unit this process runs in (from its cgroup), or None outside systemd."""
    if "INVOCATION_ID" not in os.environ:
        return None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines():
            for part in reversed(line.rpartition(":")[2].split("/")):
                if part.endswith(".service"):
                    return part
    return None


def write_record(config: GatewayConfig, *, local_page: str | None = None) -> list[Path]:
    """Write this process's record where technicians look; returns the files written (for :func:`remove_record`).

    A place that cannot be written (no /run/ocn-edge outside systemd) is skipped: the record
    helps the technician, it is never a reason for the gateway not to run.
    """
    pid = os.getpid()
    record = {
        "pid": pid, "unit": _unit_name(), "ports": list(serial_ports(config)), "buses": serial_buses(config),
        "endpoints": tcp_buses(config),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "state_dir": str(config.gateway.state_dir), "local_page": local_page,
    }
    text = json.dumps(record, indent=2) + "\n"
    targets = [(run_dir() / f"gateway-{pid}.json", SHARED_MODE), (Path(config.gateway.state_dir) / STATE_FILE, PRIVATE_MODE)]
    written: list[Path] = []
    for path, mode in targets:
        try:
            _drop_stale(path.parent)
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, mode)  # the umask (0077 under systemd) would hide the shared one from the technician
            os.replace(tmp, path)
        except OSError:
            continue
        written.append(path)
    return written


def remove_record(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _drop_stale(directory: Path) -> None:
    for path, record in _records_in(directory):
        if not record.alive():
            with contextlib.suppress(OSError):
                path.unlink()


def _records_in(directory: Path) -> list[tuple[Path, PortRecord]]:
    found: list[tuple[Path, PortRecord]] = []
    with contextlib.suppress(OSError):
        for path in sorted([*directory.glob("gateway-*.json"), directory / STATE_FILE]):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                found.append((path, PortRecord(
                    pid=int(data["pid"]), unit=data.get("unit"), ports=tuple(map(str, data["ports"])),
                    started=str(data.get("started", "")), state_dir=str(data.get("state_dir", "")),
                    local_page=data.get("local_page"),
                    buses=tuple((str(k), str(v)) for k, v in dict(data.get("buses") or {}).items()),
                    endpoints=tuple((str(k), str(v)) for k, v in dict(data.get("endpoints") or {}).items()),
                )))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written, foreign or unreadable: not a record to act on
    return found


def find_holder(port: str, *, state_dirs: Sequence[str | os.PathLike[str]] = ()) -> PortRecord | None:
    """The running gateway whose record lists ``port`` (by name or resolved path), if any; stale records are ignored."""
    for directory in [run_dir(), *map(Path, state_dirs)]:
        for _, record in _records_in(directory):
            if record.holds(port) and record.alive():
                return record
    return None


def find_endpoint_holder(host: str, tcp_port: int, *, state_dirs: Sequence[str | os.PathLike[str]] = ()) -> PortRecord | None:
    """The running gateway whose record lists a Modbus bus on ``host:tcp_port``, if any; stale records are ignored."""
    for directory in [run_dir(), *map(Path, state_dirs)]:
        for _, record in _records_in(directory):
            if record.bus_at(host, tcp_port) is not None and record.alive():
                return record
    return None


def held_message(record: PortRecord) -> str:
    """What a technician reads: who holds the port and the ways that do not fight it for it."""
    who = f"{record.unit}, pid {record.pid}" if record.unit else f"pid {record.pid}"
    stop = f"stop the service (sudo systemctl stop {record.unit})" if record.unit else "stop it"
    if record.local_page:
        return (f"held by the running gateway ({who}): read and scan go through it (`ocn-edge read --config`, "
                f"`ocn-edge scan`, or its local page {record.local_page}), or {stop}")
    return f"held by the running gateway ({who}); to open the port yourself, {stop}"


def probe_locked(port: str) -> bool:
    """True when another process holds ``port`` exclusively (the flock pyserial's ``exclusive=True`` takes).

    Called only after an open failed: opening a port can toggle its modem lines.
    """
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
