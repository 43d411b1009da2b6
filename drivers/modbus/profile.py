"""Declarative Modbus device profiles: load and check a profile TOML, decode its registers into values."""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.modbus.planner import BIT_FUNCTIONS, MAX_BITS, MAX_REGISTERS, Span
from edge.protocol.types import CHANNEL_ID_RE, Kind
from edge.util.files import toml_problem

__all__ = [
    "FUNCTIONS",
    "PROFILE_DIR",
    "TYPES",
    "BlockDecoder",
    "Profile",
    "ProfileError",
    "Register",
    "load_profile",
    "parse_profile",
    "shipped_profiles",
]

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"

FUNCTIONS = ("holding", "input", "coil", "discrete")
# data type -> (registers it occupies, struct format of its big-endian bytes)
TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, ">h"),
    "uint16": (1, ">H"),
    "int32": (2, ">i"),
    "uint32": (2, ">I"),
    "int64": (4, ">q"),
    "uint64": (4, ">Q"),
    "float32": (2, ">f"),
    "float64": (4, ">d"),
    "string": (0, ""),  # length given by the register's `length`
    "bool": (1, ""),  # a coil or discrete input
}
ORDERS = ("big", "little")

_PROFILE_KEYS = {"name", "manufacturer", "model", "description", "max_gap", "byte_order", "word_order"}
_REGISTER_KEYS = {
    "channel", "function", "address", "type", "unit", "resolution", "scale", "offset",
    "byte_order", "word_order", "bit", "bits", "length", "description", "missing",
}
_UNREADABLE_KEYS = {"function", "first", "last"}


class ProfileError(ValueError):
    """A profile is wrong: the message names the file, the register and the problem."""


@dataclass(frozen=True, slots=True)
class Register:
    """One value in a device's register map and how to turn its raw words into a reading."""

    channel: str
    function: str
    address: int
    type: str
    unit: str = ""
    resolution: float | None = None
    scale: float = 1.0
    offset: float = 0.0
    byte_order: str = "big"
    word_order: str = "big"
    bit: int | None = None
    bits: tuple[int, int] | None = None
    length: int = 0
    description: str = ""
    missing: tuple[int, ...] = ()  # raw register contents (unsigned) the device sends for "no value"

    @property
    def count(self) -> int:
        """How many addresses this value occupies."""
        return self.length if self.type == "string" else TYPES[self.type][0]

    @property
    def kind(self) -> Kind:
        if self.type == "string":
            return Kind.STRING
        if self.type == "bool" or self.bit is not None:
            return Kind.BOOL
        return Kind.NUMBER

    @property
    def span(self) -> Span:
        return Span(self.function, self.address, self.count)

    def decode(self, words: Sequence[int] | Sequence[bool]) -> int | float | str | bool | None:
        """The value of this register from its raw words (bits for coils); None if the device says "no value"."""
        if self.type == "bool":
            return bool(words[0])
        # Word order is how a number spreads over registers; text always runs in register order.
        in_order = self.word_order == "big" or self.type == "string"
        ordered = words if in_order else words[::-1]
        raw = struct.pack(f">{len(ordered)}H", *ordered)
        if self.byte_order == "little":
            raw = b"".join(raw[i + 1 : i + 2] + raw[i : i + 1] for i in range(0, len(raw), 2))
        if self.type == "string":
            return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()
        if self.missing and int.from_bytes(raw, "big") in self.missing:
            return None  # the device's "no value" (e.g. 0xFFFF, 0x8000): not a reading
        (value,) = struct.unpack(TYPES[self.type][1], raw)
        if self.bit is not None:
            return bool((value >> self.bit) & 1)
        if self.bits is not None:
            start, width = self.bits
            value = (value >> start) & ((1 << width) - 1)
        return self.finish(value)

    @property
    def plain(self) -> bool:
        """Whether the value is its words read as one big-endian number, then scaled: no bits, no "no value", no swap."""
        return (self.type not in ("string", "bool") and self.byte_order == "big" and self.word_order == "big"
                and self.bit is None and self.bits is None and not self.missing)

    def finish(self, value: int | float) -> int | float | None:
        """The number unpacked from the words, as a reading's value: None for NaN or infinity, else scaled."""
        if isinstance(value, float) and not math.isfinite(value):
            return None  # meters answer NaN for a quantity they do not measure
        if self.scale == 1.0 and self.offset == 0.0:
            return value
        scaled = value * self.scale + self.offset
        if not math.isfinite(scaled):
            return None  # a huge float64 times the scale overflows: no number to report
        # round away binary noise of the scaling (1012.8000000000001 -> 1012.8), far below any resolution
        return round(scaled, 9)


class BlockDecoder:
    """The values of a request's registers from its words in one unpack, when every one is `Register.plain`.

    Decoding register by register packs and unpacks each value's words on their own, with a
    format string built per value.  Here one precompiled format (pad bytes over the addresses
    no register uses) reads them all, and each value then goes through `Register.finish` as
    before: a 30-value SDM630 poll decodes into readings in about half the CPU time.
    """

    def __init__(self, registers: Sequence[tuple[Register, int]], words: int) -> None:
        """``registers``: each with its first word's index in the request, in increasing order, not overlapping."""
        fmt, at = [">"], 0
        for reg, start in registers:
            if start > at:
                fmt.append(f"{2 * (start - at)}x")
            fmt.append(TYPES[reg.type][1][1:])
            at = start + reg.count
        self._words = struct.Struct(f">{words}H")
        self._values = struct.Struct("".join(fmt))
        self._registers = tuple(reg for reg, _ in registers)
        # Unscaled registers need no call: only the NaN / infinity check (floats only) is left to do.
        self._scaled = tuple(not (reg.scale == 1.0 and reg.offset == 0.0) for reg in self._registers)

    @classmethod
    def build(cls, registers: Sequence[tuple[Register, int]], words: int) -> BlockDecoder | None:
        """The decoder for ``registers`` (each with its offset in the request), or None if one block cannot read them."""
        at = 0
        for reg, start in registers:
            if not reg.plain or start < at or start + reg.count > words:
                return None
            at = start + reg.count
        return cls(registers, words)

    def decode(self, words: Sequence[int]) -> list[int | float | None]:
        """Each register's value, in order, as `Register.decode` gives it."""
        isfinite = math.isfinite
        out: list[int | float | None] = []
        for reg, scaled, value in zip(self._registers, self._scaled, self._values.unpack_from(self._words.pack(*words)), strict=True):
            if scaled:
                out.append(reg.finish(value))
            elif isinstance(value, float) and not isfinite(value):
                out.append(None)
            else:
                out.append(value)
        return out


@dataclass(frozen=True, slots=True)
class Profile:
    """A device's register map: the values to read and the addresses that must never be read."""

    name: str
    source: str
    registers: tuple[Register, ...]
    manufacturer: str = ""
    model: str = ""
    description: str = ""
    max_gap: int = 0
    unreadable: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    def spans(self) -> list[Span]:
        return [r.span for r in self.registers]


def shipped_profiles() -> dict[str, Path]:
    """Profiles that ship with OCN Edge, by name."""
    return {p.stem: p for p in sorted(PROFILE_DIR.glob("*.toml"))}


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name (``eastron-sdm630``) or any profile TOML by path."""
    shipped = shipped_profiles()
    if isinstance(name_or_path, Path):
        path = name_or_path
        if not path.is_file():
            raise ProfileError(f"{path}: no such profile file")
    elif name_or_path in shipped:
        path = shipped[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.suffix == ".toml" or not path.is_file():
            import difflib  # only for a "did you mean" hint

            near = difflib.get_close_matches(str(name_or_path), shipped, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ProfileError(
                f"profile {str(name_or_path)!r}: not a shipped profile ({', '.join(shipped)}) "
                f"nor a readable .toml file{hint}"
            )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_profile(text, source=str(path))


def parse_profile(text: str, *, source: str) -> Profile:
    """Parse and check profile TOML ``text``; ``source`` names the file in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(toml_problem(source, exc)) from None
    _only(doc, {"profile", "registers", "unreadable"}, source, "")
    head = doc.get("profile")
    if not isinstance(head, dict):
        raise ProfileError(f"{source}: [profile]: missing; expected a table with at least name = \"...\"")
    _only(head, _PROFILE_KEYS, source, "profile.")
    name = _get(head, "name", str, source, "profile", required=True)
    max_gap = _get(head, "max_gap", int, source, "profile", default=0)
    if max_gap < 0 or max_gap > MAX_REGISTERS:
        raise ProfileError(f"{source}: profile.max_gap = {max_gap}: expected 0..{MAX_REGISTERS} unused registers")
    defaults = {
        "byte_order": _choice(head, "byte_order", ORDERS, source, "profile", "big"),
        "word_order": _choice(head, "word_order", ORDERS, source, "profile", "big"),
    }
    unreadable: dict[str, list[tuple[int, int]]] = {}
    for i, hole in enumerate(doc.get("unreadable", [])):
        where = f"unreadable[{i}]"
        _only(hole, _UNREADABLE_KEYS, source, where + ".")
        function = _choice(hole, "function", FUNCTIONS, source, where, None)
        first = _address(hole, "first", source, where)
        last = _address(hole, "last", source, where)
        if last < first:
            raise ProfileError(f"{source}: {where}.last = {last}: expected an address >= first ({first})")
        unreadable.setdefault(function, []).append((first, last))
    raw_registers = doc.get("registers")
    if not isinstance(raw_registers, list) or not raw_registers:
        raise ProfileError(f"{source}: [[registers]]: missing; a profile declares at least one register")
    registers: list[Register] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_registers):
        reg = _register(raw, i, source, defaults)
        where = f"registers[{i}] (channel {reg.channel!r})"
        if reg.channel in seen:
            raise ProfileError(f"{source}: {where}.channel: already used by registers[{seen[reg.channel]}]")
        seen[reg.channel] = i
        for first, last in unreadable.get(reg.function, ()):
            if reg.address <= last and reg.address + reg.count - 1 >= first:
                raise ProfileError(
                    f"{source}: {where}.address = {reg.address}: overlaps unreadable {reg.function} "
                    f"addresses {first}..{last}"
                )
        registers.append(reg)
    return Profile(
        name=name,
        source=source,
        registers=tuple(registers),
        manufacturer=_get(head, "manufacturer", str, source, "profile", default=""),
        model=_get(head, "model", str, source, "profile", default=""),
        description=_get(head, "description", str, source, "profile", default=""),
        max_gap=max_gap,
        unreadable={k: tuple(sorted(v)) for k, v in unreadable.items()},
    )


def _register(raw: Any, i: int, source: str, defaults: Mapping[str, str]) -> Register:
    if not isinstance(raw, dict):
        raise ProfileError(f"{source}: registers[{i}]: expected a table")
    channel = raw.get("channel")
    if not isinstance(channel, str) or not CHANNEL_ID_RE.match(channel) or "/" in channel:
        raise ProfileError(
            f"{source}: registers[{i}].channel = {channel!r}: expected a name of letters, digits, '_', '.', ':', '-'"
        )
    where = f"registers[{i}] (channel {channel!r})"
    _only(raw, _REGISTER_KEYS, source, where + ".")
    function = _choice(raw, "function", FUNCTIONS, source, where, None)
    address = _address(raw, "address", source, where)
    bit_table = function in BIT_FUNCTIONS
    type_ = _choice(raw, "type", tuple(TYPES), source, where, "bool" if bit_table else None)
    if bit_table != (type_ == "bool"):
        expected = "bool" if bit_table else "a register type (" + ", ".join(t for t in TYPES if t != "bool") + ")"
        raise ProfileError(f"{source}: {where}.type = {type_!r}: a {function} value must be {expected}")
    length = _get(raw, "length", int, source, where, default=0)
    if type_ == "string" and not 1 <= length <= MAX_REGISTERS:
        raise ProfileError(f"{source}: {where}.length = {length}: a string needs length = 1..{MAX_REGISTERS} registers")
    if type_ != "string" and "length" in raw:
        raise ProfileError(f"{source}: {where}.length: only a string has a length (type is {type_!r})")
    width = 16 * TYPES[type_][0]
    bit = _get(raw, "bit", int, source, where, default=None)
    if bit is not None and not (type_.startswith(("int", "uint")) and 0 <= bit < width):
        raise ProfileError(f"{source}: {where}.bit = {bit}: expected 0..{width - 1} on an integer register")
    bits_raw = raw.get("bits")
    bits = None
    if bits_raw is not None:
        ok = (isinstance(bits_raw, list) and len(bits_raw) == 2 and all(type(b) is int for b in bits_raw)
              and bits_raw[0] >= 0 and bits_raw[1] >= 1 and sum(bits_raw) <= width and type_.startswith(("int", "uint")))
        if not ok:
            raise ProfileError(
                f"{source}: {where}.bits = {bits_raw!r}: expected [first_bit, width] inside a {width}-bit integer register"
            )
        bits = (bits_raw[0], bits_raw[1])
    resolution = _get(raw, "resolution", float, source, where, default=None)
    if resolution is not None and not (resolution > 0 and math.isfinite(resolution)):
        raise ProfileError(f"{source}: {where}.resolution = {resolution}: expected a step > 0, e.g. 0.1")
    scale = _get(raw, "scale", float, source, where, default=1.0)
    if not (math.isfinite(scale) and scale != 0):
        raise ProfileError(f"{source}: {where}.scale = {scale}: expected a finite number other than 0, e.g. 0.1")
    offset = _get(raw, "offset", float, source, where, default=0.0)
    if not math.isfinite(offset):
        raise ProfileError(f"{source}: {where}.offset = {offset}: expected a finite number, e.g. -40.0")
    missing = _missing(raw, type_, width, source, where)
    reg = Register(
        channel=channel,
        function=function,
        address=address,
        type=type_,
        unit=_get(raw, "unit", str, source, where, default=""),
        resolution=resolution,
        scale=scale,
        offset=offset,
        byte_order=_choice(raw, "byte_order", ORDERS, source, where, defaults["byte_order"]),
        word_order=_choice(raw, "word_order", ORDERS, source, where, defaults["word_order"]),
        bit=bit,
        bits=bits,
        length=length,
        description=_get(raw, "description", str, source, where, default=""),
        missing=missing,
    )
    limit = MAX_BITS if bit_table else MAX_REGISTERS
    if reg.count > limit:
        raise ProfileError(f"{source}: {where}: occupies {reg.count} addresses, more than one request can read")
    if address + reg.count - 1 > 0xFFFF:
        raise ProfileError(f"{source}: {where}.address = {address}: a {type_} occupies {reg.count} addresses, "
                           f"so it must start at {0x10000 - reg.count} or below")
    if reg.kind is not Kind.NUMBER and resolution is not None:
        raise ProfileError(f"{source}: {where}.resolution: only number values have a resolution")
    return reg


def _missing(raw: Mapping[str, Any], type_: str, width: int, source: str, where: str) -> tuple[int, ...]:
    """The ``missing`` sentinel(s) as unsigned raw contents; -1 and 0xFFFF are the same int16 sentinel."""
    if "missing" not in raw:
        return ()
    value = raw["missing"]
    values = value if isinstance(value, list) else [value]
    ok = (type_.startswith(("int", "uint")) and values
          and all(type(v) is int and -(1 << (width - 1)) <= v < (1 << width) for v in values))
    if not ok:
        raise ProfileError(
            f"{source}: {where}.missing = {value!r}: expected the raw value (or a list of them) the device sends "
            f"for \"no value\", e.g. 0xFFFF, on an integer register (-{1 << (width - 1)}..{(1 << width) - 1} "
            f"for {type_})"
        )
    return tuple(sorted({v & ((1 << width) - 1) for v in values}))


def _only(table: Mapping[str, Any], known: set[str], source: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            import difflib  # only for a "did you mean" hint

            near = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(sorted(known))}"
            raise ProfileError(f"{source}: {prefix}{key}: unknown key{hint}")


def _get(table: Mapping[str, Any], key: str, kind: type, source: str, where: str, *,
         required: bool = False, default: Any = None) -> Any:
    if key not in table:
        if required:
            raise ProfileError(f"{source}: {where}.{key}: missing")
        return default
    value = table[key]
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise ProfileError(f"{source}: {where}.{key} = {value!r}: expected a {kind.__name__}")
    return value


def _choice(table: Mapping[str, Any], key: str, choices: Sequence[str], source: str, where: str,
            default: str | None) -> str:
    if key not in table:
        if default is None:
            raise ProfileError(f"{source}: {where}.{key}: missing; expected one of {', '.join(choices)}")
        return default
    value = table[key]
    if value not in choices:
        raise ProfileError(f"{source}: {where}.{key} = {value!r}: expected one of {', '.join(choices)}")
    return value


def _address(table: Mapping[str, Any], key: str, source: str, where: str) -> int:
    value = table.get(key)
    if type(value) is not int or not 0 <= value <= 0xFFFF:
        raise ProfileError(
            f"{source}: {where}.{key} = {value!r}: expected a 0-based protocol address 0..65535 "
            "(register 30001 is input address 0)"
        )
    return value
