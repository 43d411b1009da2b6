"""The OXP/2 payload: readings as columnar per-channel series, then compressed by the codec the header names (pure functions)."""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from itertools import accumulate, pairwise, repeat
from operator import attrgetter, mul, sub
from typing import Any

import cbor2

from edge.protocol.compression import CODECS, MAX_PAYLOAD_BYTES, ZSTD_LEVEL, compress, decompress
from edge.protocol.dictionary import UNIT_CODES, UNITS
from edge.protocol.errors import ProtocolError, show
from edge.protocol.types import Channel, Kind, Quality, Reading
from edge.protocol.varint import (
    INT64_MAX,
    INT64_MIN,
    delta,
    delta_of_delta,
    delta_of_steps,
    pack_uvarints,
    undelta,
    undelta_of_delta,
    unpack_uvarints,
    unzigzag,
    wrap64,
    zigzag,
)

__all__ = [
    "CODECS",
    "ZSTD_LEVEL",
    "MAX_PAYLOAD_BYTES",
    "MAX_READINGS",
    "encode_payload",
    "decode_payload",
    "declared_readings",
    "decode_weighed",
    "resolution_parts",
    "weigh_body",
]

# Readings in one batch (the sum of its series' counts). Without it a 32 MiB body of shared
# time columns and bool bits declares hundreds of millions of readings, gigabytes once decoded;
# a gateway seals at most [batch] max_readings = 1,000,000.
MAX_READINGS = 1_000_000
UINT64_MAX = (1 << 64) - 1

KIND_CODES = {Kind.NUMBER: 0, Kind.STRING: 1, Kind.BOOL: 2}
KINDS = {code: kind for kind, code in KIND_CODES.items()}
PERSONAL = 4  # added to the kind code of a channel marked personal

# Value encodings (docs/protocol.md §6.4); k are integers, value = k * scale.
ENC_RES_DELTA = 0  # [0, column]: scale = the channel's declared resolution; zigzag deltas of k
ENC_RES_DOD = 1  # [1, column]: the same with delta-of-delta, for smooth series (counters, tracks)
ENC_DEC_DELTA = 2  # [2, e, column]: scale = 10**e (exact decimals of a channel without resolution)
ENC_DEC_DOD = 3  # [3, e, column]: the same with delta-of-delta
ENC_FLOAT = 4  # [4, n x 8 bytes]: IEEE 754 binary64 bit patterns, each XORed with the previous one
ENC_STRING = 5  # [5, [dictionary...], index varints]
ENC_BOOL = 6  # [6, bit-packed, least significant bit first]

_MAX_PLACES = 9  # beyond nine decimals a float channel travels as binary64


def _series(name: object, part: str) -> Callable[[], str]:
    """The name of one of a series' columns for an error, built only if there is one (most batches have none)."""
    return lambda: f"series {show(name)} {part}"


@functools.lru_cache(maxsize=1024)
def resolution_parts(resolution: float) -> tuple[int, int]:
    """(mantissa, exponent) with mantissa * 10**exponent equal to the shortest decimal of ``resolution``."""
    sign, digits, exponent = Decimal(repr(resolution)).normalize().as_tuple()
    mantissa = int("".join(map(str, digits)))
    return mantissa, int(exponent)


def _scaled_value(mantissa: int, exponent: int, k: int) -> int | float:
    if exponent >= 0:
        scale: int = 10**exponent
        return k * mantissa * scale
    divisor: int = 10**-exponent
    return k * mantissa / divisor


def _quantize(values: Sequence[int | float], mantissa: int, exponent: int, channel: str, *, strict: bool = True) -> list[int] | None:
    """Integers k with k * mantissa * 10**exponent nearest each value.

    None if a value is not finite, or (unless ``strict``) if a k exceeds 64 bits.
    """
    try:
        if exponent >= 0:
            step = mantissa * 10**exponent
            ks = [round(v / step) for v in values]
        elif mantissa == 1:
            scale = 10**-exponent
            ks = [round(v * scale) for v in values]
        else:
            scale = 10**-exponent
            ks = [round(v * scale / mantissa) for v in values]
    except (OverflowError, ValueError):
        return None
    if ks and (max(ks) > INT64_MAX or min(ks) < INT64_MIN):
        if strict:
            raise ValueError(f"channel {channel!r}: a value scaled by its resolution exceeds 64 bits")
        return None
    return ks


def _places(value: float) -> int | None:
    for places in range(_MAX_PLACES + 1):
        p = 10**places
        if round(value * p) / p == value:
            return places
    return None


def _exact_decimals(values: list[float]) -> int | None:
    """Fewest decimal places at which every value round-trips exactly through k / 10**places."""
    places = 0
    try:
        while True:
            p = 10**places
            for v in values:
                if round(v * p) / p != v:
                    break
            else:
                return places
            needed = _places(v)
            if needed is None:
                return None
            places = max(places + 1, needed)
    except (OverflowError, ValueError):  # inf or nan
        return None


def _float_column(values: Sequence[float]) -> bytes:
    n = len(values)
    bits = struct.unpack(f">{n}Q", struct.pack(f">{n}d", *values))
    return struct.pack(f">{n}Q", *[b ^ a for a, b in pairwise((0, *bits))])


def _unfloat_column(data: bytes, count: int, channel: str) -> list[float]:
    if len(data) != 8 * count:
        raise ProtocolError("malformed", f"series {show(channel)}: float column is {len(data)} bytes, expected {8 * count}")
    xored = struct.unpack(f">{count}Q", data)
    bits = list(accumulate(xored, lambda a, b: a ^ b))
    return list(struct.unpack(f">{count}d", struct.pack(f">{count}Q", *bits)))


def _column(ks: Sequence[int]) -> tuple[bool, bytes]:
    """(smooth, column): ks as zigzag deltas, or delta-of-deltas when those leave smaller numbers to store."""
    n = len(ks)
    if n and -_SPREAD < min(ks) and max(ks) < _SPREAD:
        # Neither a difference nor a difference of differences can wrap at 64 bits here, so the
        # one-pass form equals delta / delta_of_steps exactly.
        first = ks[0]
        steps = list(map(sub, ks[1:], ks))
        if n > 2:
            curve = list(map(sub, steps[1:], steps))
            smooth = abs(steps[0]) + sum(map(abs, curve)) < sum(map(abs, steps))
            column = [first, steps[0], *curve] if smooth else [first, *steps]
        else:
            smooth = False
            column = [first, *steps]
        return smooth, pack_uvarints([(v << 1) ^ (v >> 63) for v in column])
    steps = delta(ks)
    curvature = delta_of_steps(steps)
    smooth = n > 2 and sum(map(abs, curvature)) < sum(map(abs, steps))
    return smooth, pack_uvarints(zigzag(curvature if smooth else steps))


# Within +-2**60 every difference stays within +-2**61, the range delta() never wraps.
_SPREAD = 1 << 60


def _scaled(ks: Sequence[int], exponent: int | None = None) -> list[Any]:
    """The column of k, delta or delta-of-delta, whichever leaves the smaller numbers to store.

    ``exponent`` None means the scale is the channel's declared resolution; else 10**exponent.
    """
    smooth, column = _column(ks)
    if exponent is None:
        return [ENC_RES_DOD if smooth else ENC_RES_DELTA, column]
    return [ENC_DEC_DOD if smooth else ENC_DEC_DELTA, exponent, column]


_NUMBER_TYPES = {int, float}


def _number_values(channel: Channel, values: Sequence[Any]) -> list[Any]:
    if not set(map(type, values)) <= _NUMBER_TYPES:
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"channel {channel.id!r}: value {v!r} is not a number (the channel kind is number)")
    if channel.resolution is not None:
        mantissa, exponent = resolution_parts(channel.resolution)
        ks = _quantize(values, mantissa, exponent, channel.id)
        if ks is None:  # a nan or infinity: keep it, but still quantize the finite values
            quantized = []
            for v in values:
                k = _quantize([v], mantissa, exponent, channel.id) if math.isfinite(v) else None
                if k is None and math.isfinite(v):  # v / step overflowed the float range
                    raise ValueError(f"channel {channel.id!r}: a value scaled by its resolution exceeds 64 bits")
                quantized.append(v if k is None else _scaled_value(mantissa, exponent, k[0]))
            return [ENC_FLOAT, _float_column(quantized)]
        return _scaled(ks)
    if not values or set(map(type, values)) == {int}:
        if values and (max(values) > INT64_MAX or min(values) < INT64_MIN):
            raise ValueError(f"channel {channel.id!r}: integer value outside the signed 64-bit range")
        return _scaled(values, 0)
    floats_only = [v for v in values if type(v) is not int]
    # -0.0 equals 0.0 but would lose its sign as a scaled integer; binary64 keeps it.
    negative_zero = 0 in floats_only and any(v == 0 and math.copysign(1.0, v) < 0 for v in floats_only)
    places = None if negative_zero else _exact_decimals(floats_only)
    if places == 0:
        # Integral floats among ints travel as integers, so big ints stay exact.
        ints = [int(v) for v in values]
        if max(ints) <= INT64_MAX and min(ints) >= INT64_MIN:
            return _scaled(ints, 0)
        places = None
    floats = [float(v) for v in values]
    if len(floats_only) != len(values) and any(type(v) is int and f != v for f, v in zip(floats, values, strict=True)):
        raise ValueError(
            f"channel {channel.id!r}: mixes integers beyond 2**53 with fractional values, which no single"
            " encoding carries exactly; declare a resolution for the channel"
        )
    if places is not None:
        ks = _quantize(values, 1, -places, channel.id, strict=False)
        if ks is not None:
            return _scaled(ks, -places)
    return [ENC_FLOAT, _float_column(floats)]


def _string_values(channel: Channel, values: Sequence[Any]) -> list[Any]:
    index: dict[str, int] = {}
    for v in values:
        if type(v) is not str:
            raise ValueError(f"channel {channel.id!r}: value {v!r} is not a string (the channel kind is string)")
        if v not in index:
            index[v] = len(index)
    return [ENC_STRING, list(index), pack_uvarints([index[v] for v in values])]


def _bool_values(channel: Channel, values: Sequence[Any]) -> list[Any]:
    bits = 0
    for i, v in enumerate(values):
        if type(v) is not bool:
            raise ValueError(f"channel {channel.id!r}: value {v!r} is not true or false (the channel kind is bool)")
        if v:
            bits |= 1 << i
    return [ENC_BOOL, bits.to_bytes((len(values) + 7) // 8, "little")]


_VALUE_ENCODERS = {Kind.NUMBER: _number_values, Kind.STRING: _string_values, Kind.BOOL: _bool_values}


def _quality_column(qualities: Sequence[Quality | None]) -> bytes:
    pairs: list[int] = []
    last = 0
    for i, q in enumerate(qualities):
        if q is not None:
            pairs += (i - last, int(q))
            last = i
    return pack_uvarints(pairs)


def _resolution_item(resolution: float | None) -> None | int | list[int]:
    """null, an exponent e for 10**e, or [mantissa, exponent] for any other decimal step."""
    if resolution is None:
        return None
    mantissa, exponent = resolution_parts(resolution)
    if not -30 <= exponent <= 30:
        raise ValueError(f"resolution {resolution!r}: OXP/2 carries steps from 1e-30 to 1e30")
    return exponent if mantissa == 1 else [mantissa, exponent]


def _times(times: Sequence[int], t0: int, index: int, sent: dict[tuple[int, ...], int]) -> bytes | int | list[Any]:
    """The series' time column, or the index of an earlier series with the very same times.

    Times that are all whole seconds (or tenths, hundredths) after t0 are stored in that unit,
    so a series with jitter of whole seconds costs one byte per reading, not two or three.
    """
    # Equal times give equal columns and a column decodes to one list of times, so looking
    # the times up first skips encoding the columns a meter's channels share.
    key = times if isinstance(times, tuple) else tuple(times)
    if key and key in sent:
        return sent[key]
    sent[key] = index
    relative = wrap64([t - t0 for t in times])
    exponent = 0
    # The largest unit of 1 s, 100 ms, 10 ms dividing every time (none when all are t0).
    common = math.gcd(*relative)
    if common:
        for candidate, time_unit in _TIME_UNITS:
            if not common % time_unit:
                exponent = candidate
                relative = [t // time_unit for t in relative]
                break
    if relative and -_SPREAD < min(relative) and max(relative) < _SPREAD:
        steps = list(map(sub, relative[1:], relative))
        if steps:
            relative = [relative[0], steps[0], *map(sub, steps[1:], steps)]
        column = pack_uvarints([(v << 1) ^ (v >> 63) for v in relative])
    else:
        column = pack_uvarints(zigzag(delta_of_delta(relative)))
    return [exponent, column] if exponent else column


_TIME_UNITS = ((3, 1000), (2, 100), (1, 10))


_unit_of = attrgetter("unit")
_time_of = attrgetter("ts_ms")
_value_of = attrgetter("value")
_quality_of = attrgetter("quality")


def _split_id(channel_id: str, devices: dict[str, int]) -> tuple[int, str]:
    """(device index, name) of a channel id "<device>/<name>"; an id without "/" goes under device ""."""
    device, slash, name = channel_id.partition("/")
    if not slash:
        device, name = "", channel_id
    return devices.setdefault(device, len(devices)), name


class _Table:
    """What a batch's channel declarations encode to, worked out once per distinct channel tuple."""

    __slots__ = ("channels", "ids", "devices", "series")

    def __init__(self, channels: Sequence[Channel]) -> None:
        ids: list[str] = []
        for channel in channels:
            if channel.id in ids:
                raise ValueError(f"channel {channel.id!r} is declared twice in one batch")
            ids.append(channel.id)
        devices: dict[str, int] = {}
        series = []
        for channel in channels:
            device, name = _split_id(channel.id, devices)
            try:
                resolution: object = _resolution_item(channel.resolution)
            except ValueError as exc:  # raised when the series is reached, as if worked out there
                resolution = exc
            parts = None
            if channel.kind is Kind.NUMBER and channel.resolution is not None and not isinstance(resolution, ValueError):
                parts = resolution_parts(channel.resolution)
            series.append((
                channel,
                device * 8 + KIND_CODES[channel.kind] + (PERSONAL if channel.personal else 0),
                name,
                UNIT_CODES.get(channel.unit, channel.unit),
                resolution,
                frozenset(("", channel.unit)),
                _VALUE_ENCODERS[channel.kind],
                parts,
            ))
        self.channels = tuple(channels)
        self.ids = tuple(ids)
        self.devices = list(devices)
        self.series = tuple(series)


_TABLES: dict[tuple[str, ...], _Table] = {}
_TABLES_MAX = 64  # a gateway has a handful of channel sets; a hub decoding many never encodes


def _table(channels: Sequence[Channel]) -> _Table:
    # Keyed by the ids (their hashes are cached), then checked against the very declarations:
    # the same ids may come with another unit or resolution after a configuration change.
    channels = tuple(channels)
    key = tuple(map(_id_of, channels))
    table = _TABLES.get(key)
    if table is None or table.channels != channels:
        table = _Table(channels)
        if len(_TABLES) >= _TABLES_MAX:
            _TABLES.clear()
        _TABLES[key] = table
    return table


_id_of = attrgetter("id")


_columns_of = attrgetter("ts_ms", "value", "quality", "unit")


def _resolution_values(channel: Channel, values: Sequence[Any], parts: tuple[int, int]) -> list[Any]:
    """_number_values for a channel with a resolution, with the usual case done in one pass."""
    mantissa, exponent = parts
    if exponent < 0 and mantissa == 1 and set(map(type, values)) <= _NUMBER_TYPES:
        scale = 10**-exponent
        try:
            ks = list(map(round, map(mul, values, repeat(scale))))
        except (OverflowError, ValueError):
            return _number_values(channel, values)
        if ks and INT64_MIN <= min(ks) and max(ks) <= INT64_MAX:
            smooth, column = _column(ks)
            return [ENC_RES_DOD if smooth else ENC_RES_DELTA, column]
    return _number_values(channel, values)


def encode_body(channels: Sequence[Channel], readings: Iterable[Reading]) -> bytes:
    """The uncompressed OXP/2 body (a CBOR array) for these channels and readings."""
    table = _table(channels)
    groups: list[list[Reading]] = [[] for _ in table.ids]
    add = dict(zip(table.ids, [group.append for group in groups], strict=True))
    try:
        for r in readings:
            add[r.channel](r)
    except KeyError as exc:
        raise ValueError(f"reading of channel {exc.args[0]!r}, which is not among the batch's channels") from None
    columns = []
    t0 = None
    for (channel, _, _, _, _, units_allowed, _, _), group in zip(table.series, groups, strict=True):
        if not group:
            columns.append(((), (), (), None))
            continue
        times, values, qualities, units = zip(*map(_columns_of, group), strict=True)
        unit_set = set(units)
        if not unit_set <= units_allowed:
            unit = (unit_set - units_allowed).pop()
            raise ValueError(f"channel {channel.id!r}: reading unit {unit!r} differs from the declared unit {channel.unit!r}")
        first = min(times)
        if t0 is None or first < t0:
            t0 = first
        columns.append((times, values, qualities, first))
    if t0 is None:
        t0 = 0
    body_series = []
    time_columns: dict[tuple[int, ...], int] = {}  # a column already sent -> the index of its series
    for index, ((channel, head, name, unit, resolution, _, encoder, parts), (times, values, qualities, first)) in enumerate(
        zip(table.series, columns, strict=True)
    ):
        if times and not (set(map(type, times)) == {int} and INT64_MIN <= first and max(times) <= INT64_MAX):
            bad = next(t for t in times if type(t) is not int or not INT64_MIN <= t <= INT64_MAX)
            raise ValueError(f"channel {channel.id!r}: ts_ms {bad!r} is not a signed 64-bit integer of milliseconds")
        if isinstance(resolution, ValueError):
            raise ValueError(*resolution.args)
        entry = [
            head,
            name,
            unit,
            resolution,
            len(times),
            _times(times, t0, index, time_columns),
            _resolution_values(channel, values, parts) if parts is not None else encoder(channel, list(values)),
        ]
        if qualities.count(None) != len(qualities):
            entry.append(_quality_column(qualities))
        body_series.append(entry)
    return cbor2.dumps([t0, table.devices, body_series])


def encode_payload(channels: Sequence[Channel], readings: Iterable[Reading], *, codec: str) -> bytes:
    """The compressed OXP/2 payload for these channels and readings."""
    return compress(encode_body(channels, readings), codec)


def _fail(detail: str) -> ProtocolError:
    return ProtocolError("malformed", detail)


def _decode_values(enc: object, kind: Kind, resolution: tuple[int, int] | None, count: int, name: str) -> list[Any]:
    if not isinstance(enc, list) or not enc or type(enc[0]) is not int:
        raise _fail(f"series {show(name)}: value column is not [encoding, ...]")
    code = enc[0]
    if kind is Kind.NUMBER and code in (ENC_RES_DELTA, ENC_RES_DOD, ENC_DEC_DELTA, ENC_DEC_DOD):
        if code in (ENC_RES_DELTA, ENC_RES_DOD):
            if resolution is None or len(enc) != 2:
                raise _fail(f"series {show(name)}: encoding {code} needs [{code}, bytes] and a declared resolution")
            mantissa, exponent = resolution
        else:
            if len(enc) != 3 or type(enc[1]) is not int or not -30 <= enc[1] <= 30:
                raise _fail(f"series {show(name)}: encoding {code} needs [{code}, exponent -30..30, bytes]")
            mantissa, exponent = 1, enc[1]
        column = enc[-1]
        if not isinstance(column, bytes):
            raise _fail(f"series {show(name)}: value column is not a byte string")
        ks = unzigzag(unpack_uvarints(column, count, what=_series(name, "values")))
        if count > 1:  # one value is its own delta (and delta of delta), and unzigzag keeps it within 64 bits
            ks = undelta(ks) if code in (ENC_RES_DELTA, ENC_DEC_DELTA) else undelta_of_delta(ks)
        if exponent >= 0:
            step = mantissa * 10**exponent
            return [k * step for k in ks]
        divisor = 10**-exponent
        if mantissa == 1:
            return [k / divisor for k in ks]
        return [k * mantissa / divisor for k in ks]
    if code == ENC_FLOAT and kind is Kind.NUMBER and len(enc) == 2 and isinstance(enc[1], bytes):
        return _unfloat_column(enc[1], count, name)
    if code == ENC_STRING and kind is Kind.STRING and len(enc) == 3:
        _, words, column = enc
        if not isinstance(words, list) or not all(type(w) is str for w in words) or not isinstance(column, bytes):
            raise _fail(f"series {show(name)}: string column needs [{ENC_STRING}, [text...], bytes]")
        indexes = unpack_uvarints(column, count, what=_series(name, "string indexes"))
        if indexes and max(indexes) >= len(words):
            raise _fail(f"series {show(name)}: string index {max(indexes)} beyond its {len(words)}-entry dictionary")
        return [words[i] for i in indexes]
    if code == ENC_BOOL and kind is Kind.BOOL and len(enc) == 2 and isinstance(enc[1], bytes):
        if len(enc[1]) != (count + 7) // 8:
            raise _fail(f"series {show(name)}: bool column is {len(enc[1])} bytes, expected {(count + 7) // 8}")
        bits = int.from_bytes(enc[1], "little")
        if bits >> count:
            raise _fail(f"series {show(name)}: bool column sets bits beyond its {count} readings")
        return [bool((bits >> i) & 1) for i in range(count)]
    raise _fail(f"series {show(name)}: value encoding {show(code)} is not valid for a {kind.value} channel")


def _decode_quality(column: bytes, count: int, name: str) -> list[Quality | None]:
    qualities: list[Quality | None] = [None] * count
    if not column:
        return qualities
    pairs = unpack_uvarints(column, _count_varints(column), what=_series(name, "quality"))
    if len(pairs) % 2:
        raise _fail(f"series {show(name)}: quality column has an odd number of varints")
    index = 0
    for n, (step, code) in enumerate(zip(pairs[::2], pairs[1::2], strict=True)):
        if n and not step:
            raise _fail(f"series {show(name)}: quality column flags reading {index} twice")
        index += step
        if index >= count:
            raise _fail(f"series {show(name)}: quality flag for reading {index} of {count}")
        try:
            qualities[index] = Quality(code)
        except ValueError:
            raise _fail(f"series {show(name)}: quality code {code} is not 0 (good), 1 (suspect) or 2 (bad)") from None
    return qualities


def _count_varints(column: bytes) -> int:
    return sum(1 for b in column if b < 0x80)


def _resolution_parts_of(item: object, name: str) -> tuple[int, int] | None:
    if item is None:
        return None
    if type(item) is int:
        mantissa, exponent = 1, item
    elif isinstance(item, list) and len(item) == 2 and all(type(x) is int for x in item):
        mantissa, exponent = item
    else:
        raise _fail(f"series {show(name)}: resolution is not null, an exponent or [mantissa, exponent]")
    if not 1 <= mantissa <= UINT64_MAX or not -30 <= exponent <= 30:
        raise _fail(f"series {show(name)}: resolution {show(item)} out of range")
    return mantissa, exponent


# A series' channel as decode_body made it, by what the series says of it: (device, name, kind code, unit as sent,
# resolution as sent) -> (channel id, unit, kind, resolution parts, Channel).  A gateway sends the same channels in
# every batch, so a hub makes each Channel (and checks its id) once, not once a batch.  Only units and resolutions of
# exact types (text or integer, integer or null) are looked up, so no True or 1.0 stands for a 1; a series that
# would be refused is never entered.  Emptied when full.
_CHANNELS: dict[tuple[str, str, int, int | str, int | None], tuple[str, str, Kind, tuple[int, int] | None, Channel]] = {}
_CHANNELS_MAX = 4096
_UNIT_TYPES = (int, str)


def decode_body(body: bytes) -> tuple[tuple[Channel, ...], tuple[Reading, ...]]:
    """Channels and readings from an uncompressed OXP/2 body; readings come grouped per channel."""
    return _decode_document(_load_body(body))


def decode_weighed(document: Any) -> tuple[tuple[Channel, ...], tuple[Reading, ...]]:
    """:func:`decode_body` of the document :func:`weigh_body` read from a body: the same checks and results, its CBOR
    not read again."""
    return _decode_document(document)


def _load_body(body: bytes) -> Any:
    try:
        return cbor2.loads(body)
    except cbor2.CBORDecodeEOF:
        raise ProtocolError("truncated", "payload body ends inside a CBOR item") from None
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise _fail(f"payload body is not CBOR ({exc})") from None


def _decode_document(doc: Any) -> tuple[tuple[Channel, ...], tuple[Reading, ...]]:
    if not (isinstance(doc, list) and len(doc) == 3 and type(doc[0]) is int and isinstance(doc[2], list)):
        raise _fail("payload body is not [base time, [device...], [series...]]")
    if not INT64_MIN <= doc[0] <= INT64_MAX:
        raise _fail(f"payload body base time {show(doc[0])} is not a signed 64-bit integer")
    t0, devices, raw_series = doc
    if not (isinstance(devices, list) and all(type(d) is str for d in devices)):
        raise _fail("payload body devices is not an array of text strings")
    channels: list[Channel] = []
    readings: list[Reading] = []
    all_stamps: list[list[int]] = []
    seen: set[str] = set()
    total = 0
    for s in raw_series:
        if not (isinstance(s, list) and len(s) in (7, 8)):
            raise _fail("a series is not an array of 7 or 8 items")
        head, short_name, unit, resolution, count, times, values = s[:7]
        quality = s[7] if len(s) == 8 else b""
        if type(head) is not int or head < 0 or head >> 3 >= len(devices) or type(short_name) is not str:
            raise _fail(f"series {show(short_name)}: head {show(head)} names no listed device, or the name is not text")
        device = devices[head >> 3]
        kind_code = head & 7
        key = (device, short_name, kind_code, unit, resolution) if type(unit) in _UNIT_TYPES and (resolution is None or type(resolution) is int) else None
        known = None if key is None else _CHANNELS.get(key)
        if known is not None:
            # The checks below that depend on this series' other items, with the same details.
            name, unit, kind, parts, channel = known
            if type(count) is not int or count < 0:
                raise _fail(f"series {show(name)}: unit {show(unit)} is not a registered code or text, or count has the wrong type")
            if not isinstance(quality, bytes):
                raise _fail(f"series {show(name)}: kind {kind_code!r} or quality has the wrong type")
        else:
            name = f"{device}/{short_name}" if device else short_name
            if type(unit) is int and 0 <= unit < len(UNITS):
                unit = UNITS[unit]
            if type(unit) is not str or type(count) is not int or count < 0:
                raise _fail(f"series {show(name)}: unit {show(unit)} is not a registered code or text, or count has the wrong type")
            if kind_code & ~PERSONAL not in KINDS or not isinstance(quality, bytes):
                raise _fail(f"series {show(name)}: kind {kind_code!r} or quality has the wrong type")
        total += count
        if total > MAX_READINGS:
            raise ProtocolError("too_large", f"payload body declares more than {MAX_READINGS} readings")
        if name in seen:
            raise _fail(f"series {show(name)} appears twice in one batch")
        seen.add(name)
        if known is None:
            kind = KINDS[kind_code & ~PERSONAL]
            parts = _resolution_parts_of(resolution, name)
            try:
                channel = Channel(
                    name, unit, kind, None if parts is None else float(_scaled_value(*parts, 1)), bool(kind_code & PERSONAL)
                )
            except ValueError as exc:
                raise _fail(str(exc)) from None
            if key is not None:
                if len(_CHANNELS) >= _CHANNELS_MAX:
                    _CHANNELS.clear()
                _CHANNELS[key] = (name, unit, kind, parts, channel)
        if isinstance(times, list) and len(times) == 2 and type(times[0]) is int and 1 <= times[0] <= 3 and isinstance(times[1], bytes):
            time_unit = 10 ** times[0]
            relative = undelta_of_delta(unzigzag(unpack_uvarints(times[1], count, what=_series(name, "times"))))
            stamps = wrap64([t0 + t * time_unit for t in relative])
        elif isinstance(times, bytes):
            relative = undelta_of_delta(unzigzag(unpack_uvarints(times, count, what=_series(name, "times"))))
            stamps = wrap64([t0 + t for t in relative])
        elif type(times) is int and 0 <= times < len(all_stamps) and len(all_stamps[times]) == count:
            stamps = all_stamps[times]
        else:
            raise _fail(f"series {show(name)}: times is neither a column nor the index of an earlier series of {count} readings")
        all_stamps.append(stamps)
        vals = _decode_values(values, kind, parts, count, name)
        channels.append(channel)
        if quality:
            quals = _decode_quality(quality, count, name)
            readings += map(Reading, [name] * count, stamps, vals, [unit] * count, quals)
        else:
            readings += map(Reading, [name] * count, stamps, vals, [unit] * count)
    return tuple(channels), tuple(readings)


def declared_readings(body: bytes) -> int:
    """How many readings an uncompressed OXP/2 body declares (the sum of its series' counts),
    read without decoding any column: what a receiver weighs a batch by before decoding it.
    A body too broken to say is malformed; :func:`decode_body` finds every other fault."""
    return weigh_body(body)[1]


def weigh_body(body: bytes) -> tuple[Any, int]:
    """:func:`declared_readings` of ``body`` and its CBOR document, read once: a receiver weighs the readings, then
    decodes the same document with :func:`decode_weighed`. The same refusals as declared_readings."""
    doc = _load_body(body)
    if not (isinstance(doc, list) and len(doc) == 3 and isinstance(doc[2], list)):
        raise _fail("payload body is not [base time, [device...], [series...]]")
    return doc, sum(s[4] for s in doc[2] if isinstance(s, list) and len(s) >= 5 and type(s[4]) is int and s[4] > 0)


def decode_payload(data: bytes, *, codec: str) -> tuple[tuple[Channel, ...], tuple[Reading, ...]]:
    """Inverse of :func:`encode_payload`."""
    return decode_body(decompress(data, codec))
