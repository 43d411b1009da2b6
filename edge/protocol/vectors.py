"""The OXP/2 test vectors: built from fixed inputs and a fixed key seed; ``python -m edge.protocol.vectors DIR`` writes them."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol.codec import encode_body
from edge.protocol.compression import ZSTD_LEVEL, decompress
from edge.protocol.dictionary import DICTIONARY, DICTIONARY_SHA256, UNITS
from edge.protocol.envelope import OXP_VERSION, Batch, BatchHeader, open_batch, seal_batch, seal_status
from edge.protocol.keys import key_id, raw_public_key
from edge.protocol.senml import to_senml
from edge.protocol.types import Channel, Kind, Quality, Reading

__all__ = ["VECTOR_SEED", "OTHER_SEED", "build_vectors", "write_vectors", "reading_from_json", "channel_from_json"]

# Fixed Ed25519 seeds: test keys only, published on purpose, never used by a real device.
VECTOR_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
OTHER_SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
POLICY = bytes.fromhex("5f1c0e2a9b3d4c6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6")


def _header(key: Ed25519PrivateKey, *, seq: int, codec: str = "zstd", counters: dict[str, int] | None = None) -> BatchHeader:
    return BatchHeader(
        device_id="pole-0042",
        key_id=key_id(key),
        boot_epoch=7,
        seq=seq,
        policy_digest=POLICY,
        codec=codec,
        created_ms=T0 + 300_000,
        counters=counters or {},
    )


def _minimal() -> tuple[str, tuple[Channel, ...], list[Reading]]:
    return (
        "One number channel with a declared resolution, one reading.",
        (Channel("pm-1/pm2_5", "ug/m3", resolution=0.1),),
        [Reading("pm-1/pm2_5", T0 + 1_000, 12.3, "ug/m3")],
    )


def _reference_station() -> tuple[str, tuple[Channel, ...], list[Reading]]:
    channels = (
        Channel("meter-1/voltage_l1", "V", resolution=0.1),
        Channel("meter-1/current_l1", "A", resolution=0.01),
        Channel("meter-1/import_energy", "Wh", resolution=1.0),
        Channel("pm-1/pm2_5", "ug/m3", resolution=0.1),
        Channel("pm-1/pm10", "ug/m3", resolution=0.1),
        Channel("weather-1/temperature", "Cel", resolution=0.1),
        Channel("gps-1/lat", "lat"),
        Channel("gps-1/lon", "lon"),
    )
    readings: list[Reading] = []
    for i in range(30):  # five minutes of a 10 s meter poll
        t = T0 + i * 10_000 + (i % 3)  # a little jitter, as on a real bus
        readings.append(Reading("meter-1/voltage_l1", t, 230.0 + (i * 7 % 11 - 5) / 10, "V"))
        readings.append(Reading("meter-1/current_l1", t + 2, 1.5 + (i * 3 % 7) / 100, "A"))
        readings.append(Reading("meter-1/import_energy", t + 4, 1_234_567 + i * 4, "Wh"))
    for i in range(2):  # the SDS011 every 150 s
        t = T0 + 1_000 + i * 150_000
        readings.append(Reading("pm-1/pm2_5", t, 8.4 + i, "ug/m3"))
        readings.append(Reading("pm-1/pm10", t, 13.1 + i / 2, "ug/m3"))
    for i in range(5):  # weather once a minute
        readings.append(Reading("weather-1/temperature", T0 + 59_000 + i * 60_000, -1.5 + i / 10, "Cel"))
    readings.append(Reading("gps-1/lat", T0 + 200, 43.64521, "lat"))
    readings.append(Reading("gps-1/lon", T0 + 200, -79.39571, "lon"))
    return "Five minutes of a reference station: meter, particulate sensor, weather, pole position.", channels, readings


def _every_kind() -> tuple[str, tuple[Channel, ...], list[Reading]]:
    channels = (
        Channel("counter-1/visitor", kind=Kind.STRING, personal=True),
        Channel("door-1/open", kind=Kind.BOOL),
        Channel("lab-1/ratio"),
        Channel("lab-1/count"),
        Channel("lab-1/step", "m", resolution=0.25),
        Channel("idle-1/silent"),
    )
    readings = [
        Reading("counter-1/visitor", T0 + 5, "p:9f2c41"),
        Reading("counter-1/visitor", T0 + 9, "p:9f2c41"),
        Reading("counter-1/visitor", T0 + 4, "p:77aa03"),
        Reading("door-1/open", T0, True, quality=Quality.GOOD),
        Reading("door-1/open", T0 + 60_000, False),
        Reading("door-1/open", T0 + 61_000, True, quality=Quality.BAD),
        Reading("lab-1/ratio", T0 + 10, 0.1 + 0.2),
        Reading("lab-1/ratio", T0 + 20, -0.0),
        Reading("lab-1/ratio", T0 + 30, 6.02214076e23),
        Reading("lab-1/count", T0 + 10, -(2**63)),
        Reading("lab-1/count", T0 + 20, 2**63 - 1),
        Reading("lab-1/count", T0 + 30, 0, quality=Quality.SUSPECT),
        Reading("lab-1/step", T0 + 100, 1.75, "m"),
        Reading("lab-1/step", T0 + 50, -2.5, "m"),
    ]
    return (
        "Strings (dictionary), booleans (bit-packed), binary64 floats, 64-bit integer extremes, a 0.25 resolution,"
        " quality flags, time going backwards within a channel, a channel without readings; deflate codec.",
        channels,
        readings,
    )


def _empty() -> tuple[str, tuple[Channel, ...], list[Reading]]:
    return "No readings: a batch that only carries loss counters upstream.", (), []


CASES = {
    "minimal": (_minimal, 1, "zstd", None),
    "reference-station-5min": (_reference_station, 2, "zstd", {"readings_dropped": 0, "unclean_stops": 1}),
    "every-kind-deflate": (_every_kind, 3, "deflate", None),
    "empty-with-counters": (_empty, 4, "zstd", {"readings_dropped": 1250}),
}


def reading_to_json(r: Reading) -> dict[str, Any]:
    doc: dict[str, Any] = {"channel": r.channel, "ts_ms": r.ts_ms, "value": r.value}
    if r.unit:
        doc["unit"] = r.unit
    if r.quality is not None:
        doc["quality"] = int(r.quality)
    return doc


def reading_from_json(doc: dict[str, Any]) -> Reading:
    """A Reading from its vector JSON form."""
    quality = doc.get("quality")
    return Reading(doc["channel"], doc["ts_ms"], doc["value"], doc.get("unit", ""), None if quality is None else Quality(quality))


def channel_to_json(c: Channel) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": c.id, "unit": c.unit, "kind": c.kind.value, "resolution": c.resolution}
    if c.personal:
        doc["personal"] = True
    return doc


def channel_from_json(doc: dict[str, Any]) -> Channel:
    """A Channel from its vector JSON form."""
    return Channel(doc["id"], doc["unit"], Kind(doc["kind"]), doc["resolution"], doc.get("personal", False))


def _header_to_json(h: BatchHeader) -> dict[str, Any]:
    return {
        "device_id": h.device_id,
        "key_id": h.key_id.hex(),
        "boot_epoch": h.boot_epoch,
        "seq": h.seq,
        "policy_digest": h.policy_digest.hex(),
        "codec": h.codec,
        "created_ms": h.created_ms,
        "counters": dict(sorted(h.counters.items())),
    }


def _key_json(key: Ed25519PrivateKey) -> dict[str, Any]:
    return {
        "seed_hex": key.private_bytes_raw().hex(),
        "public_key_hex": raw_public_key(key).hex(),
        "key_id": key_id(key).hex(),
        "private_key_pem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "public_key_pem": key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    }


def _batch_vector(name: str, key: Ed25519PrivateKey) -> tuple[dict[str, Any], bytes]:
    make, seq, codec, counters = CASES[name]
    description, channels, readings = make()
    header = _header(key, seq=seq, codec=codec, counters=counters)
    sealed = seal_batch(header, channels, readings, key)
    protected, _, payload, signature = cbor2.loads(sealed).value
    batch: Batch = open_batch(sealed, key.public_key())
    doc: dict[str, Any] = {
        "name": name,
        "description": description,
        "oxp_version": OXP_VERSION,
        "key": _key_json(key),
        "input": {
            "header": _header_to_json(header),
            "channels": [channel_to_json(c) for c in channels],
            "readings": [reading_to_json(r) for r in readings],
        },
        "zstd_level": ZSTD_LEVEL if codec == "zstd" else None,
        "expected": {
            "batch_hex": sealed.hex(),
            "batch_bytes": len(sealed),
            "protected_hex": protected.hex(),
            "body_hex": encode_body(channels, readings).hex(),
            "signature_hex": signature.hex(),
            "decoded": {
                "header": _header_to_json(batch.header),
                "channels": [channel_to_json(c) for c in batch.channels],
                "readings": [reading_to_json(r) for r in batch.readings],
            },
            "senml": to_senml(batch),
        },
    }
    assert decompress(payload, codec) == bytes.fromhex(doc["expected"]["body_hex"])
    return doc, sealed


def _flip(data: bytes, index: int) -> bytes:
    tampered = bytearray(data)
    tampered[index] ^= 0x01
    return bytes(tampered)


def _rejections(key: Ed25519PrivateKey, other: Ed25519PrivateKey, sealed: bytes, status: bytes) -> dict[str, Any]:
    cases = [
        ("tampered-payload-byte", "one bit flipped in the payload", _flip(sealed, len(sealed) - 80), key, "bad_signature"),
        ("tampered-signature-byte", "one bit flipped in the signature", _flip(sealed, len(sealed) - 1), key, "bad_signature"),
        ("wrong-key", "a valid batch checked against another device's key", sealed, other, "bad_signature"),
        ("truncated", "the last 10 bytes cut off", sealed[:-10], key, "truncated"),
        ("status-as-batch", "a valid status report offered as a batch", status, key, "wrong_type"),
    ]
    return {
        "description": "Bytes a receiver MUST reject, with the reason code it raises. Derived from reference-station-5min.",
        "keys": {"device": _key_json(key), "other": _key_json(other)},
        "cases": [
            {"name": n, "description": d, "data_hex": data.hex(), "verify_with": "device" if k is key else "other", "reason": r}
            for n, d, data, k, r in cases
        ],
    }


def _status_vector(key: Ed25519PrivateKey) -> tuple[dict[str, Any], bytes]:
    report = {
        "ts_ms": T0 + 300_000,
        "software_version": "0.1.0",
        "boot_epoch": 7,
        "unclean_stops": 1,
        "spool_batches": 3,
        "spool_bytes": 4096,
        "readings_dropped": 0,
        "policy_digest": POLICY,
        "config_digest": bytes(32),
        "errors": ["pm-1: no reply since 2026-01-01T00:03:00Z"],
    }
    sealed = seal_status(report, device_id="pole-0042", private_key=key)
    as_json = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in {**report, "device_id": "pole-0042"}.items()}
    return {
        "name": "status-report",
        "description": "A signed status report; byte-string fields are shown here as hex.",
        "oxp_version": OXP_VERSION,
        "key": _key_json(key),
        "input": {"device_id": "pole-0042", "report": as_json},
        "expected": {"status_hex": sealed.hex(), "status_bytes": len(sealed)},
    }, sealed


def build_vectors() -> dict[str, str]:
    """File name -> exact file text of every vector (deterministic: same inputs, same bytes)."""
    key = Ed25519PrivateKey.from_private_bytes(VECTOR_SEED)
    other = Ed25519PrivateKey.from_private_bytes(OTHER_SEED)
    files: dict[str, str] = {}
    sealed_by_name = {}
    for name in CASES:
        doc, sealed = _batch_vector(name, key)
        sealed_by_name[name] = sealed
        files[f"{name}.json"] = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    status_doc, status = _status_vector(key)
    files["status-report.json"] = json.dumps(status_doc, indent=2, ensure_ascii=False) + "\n"
    rejections = _rejections(key, other, sealed_by_name["reference-station-5min"], status)
    files["rejections.json"] = json.dumps(rejections, indent=2, ensure_ascii=False) + "\n"
    files["oxp-dictionary.json"] = json.dumps(_dictionary_doc(), indent=2, ensure_ascii=False) + "\n"
    return files


def _dictionary_doc() -> dict[str, Any]:
    return {
        "name": "oxp-dictionary",
        "description": "The OXP/2 compression dictionary (docs/protocol.md Appendix B) and the unit codes (Appendix A).",
        "oxp_version": OXP_VERSION,
        "dictionary_bytes": len(DICTIONARY),
        "dictionary_sha256": DICTIONARY_SHA256,
        "dictionary_base64": base64.b64encode(DICTIONARY).decode(),
        "unit_codes": {str(code): unit for code, unit in enumerate(UNITS)},
    }


def write_vectors(directory: Path) -> list[Path]:
    """Write every vector file into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in build_vectors().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the OXP/2 test vectors (docs/protocol/vectors/).")
    parser.add_argument("directory", type=Path, nargs="?", default=Path("docs/protocol/vectors"))
    args = parser.parse_args(argv)
    for path in write_vectors(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
