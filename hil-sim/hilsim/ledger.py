"""The ledger: an append-only file of every value the simulator served, written as it answers.

It is the ground truth a soak reconciles the hub against (bench/soak.py): one line per value a
device put on the wire, in the device's own words (its quantity or register name), with the
scenario's wall clock in milliseconds and the faults that hit the frame carrying it::

    <t_ms> TAB <device> TAB <name> TAB <value> TAB <faults, comma-separated, or ->

A frame a fault corrupted, cut or withheld is still written (with its faults), so a reading the
gateway could not decode is accounted for by name.  Each frame's lines go to the file in one
``write`` on an ``O_APPEND`` descriptor, so a reader never sees half a frame.  A pedestrian
counter's MAC addresses are personal even when simulated: the ledger holds a digest of each
(enough to count distinct phones), never the address.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Ledger", "LedgerEntry", "Value", "mac_digest", "read_ledger"]

Value = float | int | bool | str


def mac_digest(mac: str) -> str:
    """What the ledger keeps of a MAC address: 16 hex digits of its SHA-256, one per phone, not reversible by reading."""
    return hashlib.sha256(f"hilsim-ledger:{mac}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One value served: when, by which device, under which name, and the faults on its frame."""

    t_ms: int
    device: str
    name: str
    value: Value
    faults: tuple[str, ...]


class Ledger:
    """Append-only; ``record`` writes one frame's values at once.  Open with a path, close when the run ends."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lines = 0

    def record(self, device: str, t_ms: int, values: Mapping[str, Value], faults: tuple[str, ...] = ()) -> None:
        if self._fd is None or not values:
            return
        hits = ",".join(sorted(faults)) or "-"
        text = "".join(f"{t_ms}\t{device}\t{name}\t{_text(value)}\t{hits}\n" for name, value in values.items())
        os.write(self._fd, text.encode())
        self.lines += len(values)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _value(text: str) -> Value:
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_ledger(path: str | os.PathLike[str]) -> Iterator[LedgerEntry]:
    """Every entry of a ledger file, in the order written (a last line cut short by a crash is skipped)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            t_ms, device, name, value, hits = line.rstrip("\n").split("\t")
            yield LedgerEntry(int(t_ms), device, name, _value(value), () if hits == "-" else tuple(hits.split(",")))
