"""Sub-commands for device keys and OXP batch files: `keygen`, `oxp encode|inspect|senml`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from edge.commands import file_problem, make_directory, shows_usage
from edge.protocol import (
    CODECS,
    MAX_BATCH_BYTES,
    OXP_VERSION,
    Batch,
    BatchHeader,
    BatchTooLarge,
    KeyFileError,
    ProtocolError,
    decode_unverified,
    key_id,
    load_private_key,
    load_public_key,
    open_batch,
    seal_batch,
    senml_cbor,
    senml_json,
    write_keypair,
)
from edge.protocol.csvinput import CsvError, read_csv
from edge.protocol.types import Channel, Reading

__all__ = ["register", "split_into_batches"]

EXIT_OK = 0
EXIT_INVALID = 1  # the batch is not valid (bad signature, malformed, ...)
EXIT_USAGE = 2  # the command could not run: missing file, bad CSV, bad option
EXIT_UNVERIFIED = 3  # decoded, but no public key was given to verify it

ENCODE_HELP = """\
Turn a CSV of readings into sealed OXP batch files, one per batch span.

The CSV has the columns time,channel,value[,unit] (a header row is optional):
  time     ISO-8601 (2026-01-01T00:00:00Z; no zone means UTC) or epoch seconds,
           from 1970-01-01 to 9999-12-31
  channel  e.g. pm-1/pm2_5
  value    a number (a whole one within signed 64 bits), true/false, or text
  unit     a SenML unit, e.g. ug/m3 (optional; one unit per channel)

A number channel's resolution is inferred from the most decimals written in it
(12.30 means 0.01), or declared with --resolution CHANNEL=STEP; values are
carried as integer multiples of it. Rows with an empty value are skipped and
counted. Batches are aligned to multiples of the span since the Unix epoch and
written as OUTDIR/<device>-<boot epoch>-<seq>.oxp.
"""

INSPECT_HELP = """\
Decode a batch file: print its header and one line per series, and verify its
signature with --pub. Exit status: 0 valid and verified, 1 invalid (the reason
is printed), 2 the file cannot be read, 3 decoded but not verified (no --pub).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = sub.add_parser(
        "keygen",
        help="create a device key pair (device.key mode 0600, device.pub) and print its key id",
        description=(
            "Create the gateway's Ed25519 device key: DIR/device.key (private, mode 0600) and DIR/device.pub. "
            "Refuses to replace an existing key, since a new key means enrolling the gateway again."
        ),
    )
    keygen.add_argument("--out", required=True, metavar="DIR", help="directory for device.key and device.pub")
    keygen.set_defaults(func=_keygen)

    oxp = sub.add_parser(
        "oxp",
        help="encode, inspect or view OXP batch files",
        description="Work with batches of the open exchange protocol (docs/protocol.md).",
    )
    actions = oxp.add_subparsers(title="actions", metavar="ACTION")
    shows_usage(oxp)

    encode = actions.add_parser(
        "encode",
        help="seal a CSV of readings into batch files",
        description=ENCODE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    encode.add_argument("input", metavar="INPUT.csv")
    encode.add_argument("--key", required=True, metavar="PRIVATE_KEY", help="the device private key (PEM)")
    encode.add_argument("--batch-seconds", required=True, type=_positive_int, metavar="N", help="batch span in seconds")
    encode.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="directory for the batch files")
    encode.add_argument(
        "--resolution",
        action="append",
        default=[],
        metavar="CHANNEL=STEP",
        help="declare a number channel's resolution, e.g. pm-1/pm2_5=0.1 (repeatable)",
    )
    encode.add_argument("--device-id", default="gateway", help="device id in the header (default: gateway)")
    encode.add_argument("--boot-epoch", type=int, default=1, help="boot epoch in the header (default: 1)")
    encode.add_argument("--first-seq", type=int, default=1, help="sequence number of the first batch (default: 1)")
    encode.add_argument("--codec", choices=CODECS, default="zstd")
    encode.add_argument("--max-readings", type=_positive_int, default=20_000, help="split batches above this (default 20000)")
    encode.set_defaults(func=_encode)

    inspect = actions.add_parser(
        "inspect",
        help="print a batch's header and series and verify its signature",
        description=INSPECT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("file", metavar="FILE")
    inspect.add_argument("--pub", metavar="PUBLIC_KEY", help="the device public key (PEM) to verify with")
    inspect.add_argument("--readings", action="store_true", help="also print every reading")
    inspect.add_argument("--json", action="store_true", help="print the header and series as JSON")
    inspect.set_defaults(func=_inspect)

    senml = actions.add_parser(
        "senml",
        help="print the SenML (RFC 8428) JSON view of a batch",
        description=(
            "Print a batch as SenML JSON (or write SenML CBOR with --cbor). Give --pub to verify the signature "
            "first; without it the view is printed with a warning that it is unverified."
        ),
    )
    senml.add_argument("file", metavar="FILE")
    senml.add_argument("--pub", metavar="PUBLIC_KEY", help="the device public key (PEM) to verify with")
    senml.add_argument("--cbor", action="store_true", help="write SenML CBOR bytes to standard output")
    senml.set_defaults(func=_senml)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number above 0")
    return value


def _fail(message: str) -> int:
    print(f"ocn-edge: {message}", file=sys.stderr)
    return EXIT_USAGE


def _keygen(args: argparse.Namespace) -> int:
    try:
        private_path, public_path = write_keypair(args.out)
    except FileExistsError as exc:
        if exc.filename is not None:  # from mkdir: not a key, a file where the directory should be
            return _fail(f"--out {args.out}: a file is in the way; expected a directory for the key files")
        return _fail(f"{exc}. Delete it first only if the device is to be enrolled again.")
    except OSError as exc:
        return _fail(f"--out {args.out}: cannot write the key files ({file_problem(exc)})")
    print(f"private key  {private_path}  (mode 0600: keep it on the device)")
    print(f"public key   {public_path}")
    print(f"key id       {key_id(load_public_key(public_path)).hex()}")
    return EXIT_OK


def split_into_batches(
    readings: Sequence[Reading], *, span_ms: int, max_readings: int
) -> list[list[Reading]]:
    """Readings grouped into windows [k*span, (k+1)*span) in time order, each cut at ``max_readings``."""
    windows: dict[int, list[Reading]] = {}
    for r in readings:
        windows.setdefault(r.ts_ms // span_ms, []).append(r)
    batches: list[list[Reading]] = []
    for start in sorted(windows):
        group = windows[start]
        batches += [group[i : i + max_readings] for i in range(0, len(group), max_readings)]
    return batches


def _encode(args: argparse.Namespace) -> int:
    try:
        key = load_private_key(args.key)
    except KeyFileError as exc:
        return _fail(str(exc))
    try:
        BatchHeader(args.device_id, key_id(key), args.boot_epoch, args.first_seq, b"", args.codec, 0)
    except ValueError as exc:
        return _fail(f"{exc} (check --device-id, --boot-epoch and --first-seq)")
    resolutions: dict[str, float] = {}
    for item in args.resolution:
        channel, _, step = item.partition("=")
        try:
            resolutions[channel] = float(step)
            if not resolutions[channel] > 0:
                raise ValueError
        except ValueError:
            return _fail(f"--resolution {item!r}: expected CHANNEL=STEP with STEP a number above 0, e.g. pm-1/pm2_5=0.1")
    try:
        with open(args.input, encoding="utf-8", newline="") as handle:
            table = read_csv(handle, filename=args.input, resolutions=resolutions)
    except OSError as exc:
        return _fail(f"{args.input}: cannot read ({exc.strerror})")
    except UnicodeDecodeError as exc:
        return _fail(f"{args.input}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    except CsvError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    if not table.readings:
        return _fail(f"{args.input}: no readings to encode")
    out = make_directory(args.out, option="-o")
    seq = args.first_seq
    total_bytes = 0
    pending = split_into_batches(table.readings, span_ms=args.batch_seconds * 1000, max_readings=args.max_readings)
    files = 0
    while pending:
        group = pending.pop(0)
        header = BatchHeader(
            device_id=args.device_id,
            key_id=key_id(key),
            boot_epoch=args.boot_epoch,
            seq=seq,
            policy_digest=b"",
            codec=args.codec,
            created_ms=max(r.ts_ms for r in group),
        )
        try:
            sealed = _seal_group(header, table.channels, group, key)
        except _Split as split:
            pending[:0] = [group[: split.at], group[split.at :]]
            continue
        except ValueError as exc:
            return _fail(f"{args.input}: {exc}")
        path = out / f"{args.device_id}-{args.boot_epoch}-{seq:06d}.oxp"
        path.write_bytes(sealed)
        print(f"{path}  {len(group)} readings  {len(sealed)} bytes  {len(sealed) / len(group):.2f} bytes/reading")
        total_bytes += len(sealed)
        seq += 1
        files += 1
    count = len(table.readings)
    print(f"{files} batches, {count} readings, {total_bytes} bytes, {total_bytes / count:.2f} bytes/reading")
    if table.empty_values:
        print(f"skipped {table.empty_values} rows with an empty value", file=sys.stderr)
    return EXIT_OK


class _Split(Exception):
    def __init__(self, at: int) -> None:
        self.at = at


def _seal_group(header: BatchHeader, channels: tuple[Channel, ...], group: list[Reading], key) -> bytes:
    used = {r.channel for r in group}
    try:
        return seal_batch(header, tuple(c for c in channels if c.id in used), group, key)
    except BatchTooLarge:
        if len(group) == 1:
            raise ValueError(f"one reading alone exceeds the {MAX_BATCH_BYTES}-byte batch limit") from None
        raise _Split(len(group) // 2) from None


def _load(args: argparse.Namespace) -> tuple[Batch | None, int]:
    """The batch in args.file, verified when args.pub is given, and the exit status so far."""
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"ocn-edge: {args.file}: cannot read ({exc.strerror})", file=sys.stderr)
        return None, EXIT_USAGE
    try:
        if args.pub:
            try:
                public_key = load_public_key(args.pub)
            except KeyFileError as exc:
                print(f"ocn-edge: {exc}", file=sys.stderr)
                return None, EXIT_USAGE
            return open_batch(data, public_key), EXIT_OK
        return decode_unverified(data), EXIT_UNVERIFIED
    except ProtocolError as exc:
        print(f"INVALID {args.file}: {exc.reason}: {exc.detail}", file=sys.stderr)
        return None, EXIT_INVALID


def _iso(ts_ms: int) -> str:
    try:
        return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{ts_ms} ms"


def _series(batch: Batch) -> list[dict]:
    series = []
    for channel in batch.channels:
        own = [r for r in batch.readings if r.channel == channel.id]
        entry: dict = {
            "channel": channel.id,
            "unit": channel.unit,
            "kind": channel.kind.value,
            "resolution": channel.resolution,
            "personal": channel.personal,
            "count": len(own),
        }
        if own:
            entry["first"] = _iso(min(r.ts_ms for r in own))
            entry["last"] = _iso(max(r.ts_ms for r in own))
            numbers = [r.value for r in own if type(r.value) in (int, float)]
            if numbers:
                entry["min"] = min(numbers)
                entry["max"] = max(numbers)
            entry["flagged"] = sum(1 for r in own if r.quality is not None and r.quality != 0)
        series.append(entry)
    return series


def _inspect(args: argparse.Namespace) -> int:
    batch, status = _load(args)
    if batch is None:
        return status
    h = batch.header
    header = {
        "device_id": h.device_id,
        "key_id": h.key_id.hex(),
        "boot_epoch": h.boot_epoch,
        "seq": h.seq,
        "policy_digest": h.policy_digest.hex() or "(none)",
        "codec": h.codec,
        "created": _iso(h.created_ms),
        "counters": dict(h.counters),
    }
    verdict = "signature valid" if status == EXIT_OK else "signature NOT verified (give --pub PUBLIC_KEY)"
    if args.json:
        doc = {"file": args.file, "verified": status == EXIT_OK, "header": header, "series": _series(batch)}
        if args.readings:
            doc["readings"] = [
                {"channel": r.channel, "ts_ms": r.ts_ms, "value": r.value, "quality": None if r.quality is None else int(r.quality)}
                for r in batch.readings
            ]
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(f"{args.file}: OXP/{OXP_VERSION} batch, {len(batch.readings)} readings in {len(batch.channels)} series, {verdict}")
        for name, value in header.items():
            print(f"  {name:14} {value}")
        for s in _series(batch):
            span = f"{s['first']} .. {s['last']}" if s["count"] else "-"
            extra = f"  min {s['min']} max {s['max']}" if "min" in s else ""
            res = f" res {s['resolution']:g}" if s["resolution"] else ""
            print(f"  series {s['channel']} [{s['unit'] or '-'}] {s['kind']}{res}: {s['count']} readings {span}{extra}")
        if args.readings:
            for r in batch.readings:
                flag = f" quality={r.quality.name.lower()}" if r.quality is not None else ""
                print(f"  {_iso(r.ts_ms)} {r.channel} = {r.value!r} {r.unit}{flag}".rstrip())
    if status == EXIT_UNVERIFIED:
        print(f"warning: {args.file}: signature not verified; give --pub PUBLIC_KEY", file=sys.stderr)
    return status


def _senml(args: argparse.Namespace) -> int:
    batch, status = _load(args)
    if batch is None:
        return status
    if status == EXIT_UNVERIFIED:
        print(f"warning: {args.file}: signature not verified; give --pub PUBLIC_KEY", file=sys.stderr)
    if args.cbor:
        sys.stdout.buffer.write(senml_cbor(batch))
        sys.stdout.flush()
    else:
        print(senml_json(batch, indent=1))
    return EXIT_OK
