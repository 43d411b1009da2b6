"""An independent OXP/2 decoder (tests/interop/oxp_decode.mjs, Node.js, written from
docs/protocol.md alone) agrees with every checked-in vector.

The JavaScript decoder compares with the vectors itself (`--check`); these tests also
compare its JSON output here, in Python, with a strict comparison (an int is not a float,
-0.0 is not 0.0), so neither side's comparison can hide a disagreement.
"""

from __future__ import annotations

import base64
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.helpers.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DECODER = Path(__file__).resolve().parent / "oxp_decode.mjs"
VECTORS = ROOT / "docs" / "protocol" / "vectors"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _vectors_with(key: str) -> list[str]:
    return sorted(p.name for p in VECTORS.glob("*.json") if key in _load(p).get("expected", {}))


BATCH_VECTORS = _vectors_with("batch_hex")
STATUS_VECTORS = _vectors_with("status_hex")
ZSTD_VECTORS = [n for n in BATCH_VECTORS if _load(VECTORS / n)["input"]["header"]["codec"] == "zstd"]


@pytest.fixture(scope="module")
def node() -> str:
    return require_tool("node", package="nodejs")


def run(node: str, *args: str | Path) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [node, str(DECODER), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, out, proc.stderr


def same(a: Any, b: Any, where: str = "$") -> None:
    """Assert a == b with JSON types kept apart: int vs float, -0.0 vs 0.0, NaN == NaN."""
    if isinstance(a, float) or isinstance(b, float):
        assert type(a) is type(b), f"{where}: {a!r} vs {b!r}"
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), (
            f"{where}: {a!r} vs {b!r}"
        )
        return
    assert type(a) is type(b), f"{where}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} elements"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def test_vector_discovery_finds_the_documented_files() -> None:
    assert BATCH_VECTORS == [
        "empty-with-counters.json",
        "every-kind-deflate.json",
        "minimal.json",
        "reference-station-5min.json",
    ]
    assert STATUS_VECTORS == ["status-report.json"]


def test_dictionary_rebuilt_from_the_spec_prose_and_exact_rounding(node: str) -> None:
    code, out, err = run(node, "--selftest")
    assert code == 0, (out, err)
    assert out["rebuilt_from_appendix_b"] is True
    assert out["dictionary_bytes"] == 1821
    assert out["problems"] == []


@pytest.mark.parametrize("name", BATCH_VECTORS)
def test_batch_vector_verifies_and_decodes_as_expected(node: str, name: str) -> None:
    vec = _load(VECTORS / name)
    code, out, err = run(node, "--check", VECTORS / name)
    assert code == 0, (out.get("check"), out.get("rejected"), out.get("detail"), err)
    assert out["check"] == {"ok": True}
    got = {k: out[k] for k in ("header", "channels", "readings")}
    same(got, vec["expected"]["decoded"], "$.decoded")
    same(out["senml"], vec["expected"]["senml"], "$.senml")
    assert out["header"]["codec"] == vec["input"]["header"]["codec"]
    if out["header"]["codec"] == "zstd":
        # Node has no zstd: the decoder verified the signature over the compressed payload
        # and read the frame header; the declared content size is the body's.
        assert out["zstd"]["frame_content_size"] == len(vec["expected"]["body_hex"]) // 2


@pytest.mark.parametrize("name", ZSTD_VECTORS)
def test_zstd_payload_is_the_body_the_js_decoder_read(node: str, name: str, tmp_path: Path) -> None:
    """What the JS decoder could not do itself: the zstd CLI (libzstd, raw-content dictionary
    given with -D) decompresses the signed payload to exactly the body_hex it decoded."""
    zstd = require_tool("zstd")
    vec = _load(VECTORS / name)
    code, out, _ = run(node, VECTORS / name)
    assert code == 0
    dictionary = tmp_path / "oxp.dict"
    dictionary.write_bytes(base64.b64decode(_load(VECTORS / "oxp-dictionary.json")["dictionary_base64"]))
    proc = subprocess.run(
        [zstd, "-q", "-d", "-c", "-D", str(dictionary)],
        input=bytes.fromhex(out["zstd"]["payload_hex"]),
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert proc.stdout.hex() == vec["expected"]["body_hex"]


@pytest.mark.parametrize("name", STATUS_VECTORS)
def test_status_report_verifies_and_decodes_as_expected(node: str, name: str) -> None:
    vec = _load(VECTORS / name)
    code, out, err = run(node, "--check", VECTORS / name)
    assert code == 0, (out, err)
    assert out["type"] == "status"
    same(out["report"], vec["input"]["report"], "$.report")
    want = {"version": 2, "device_id": vec["input"]["device_id"], "key_id": vec["key"]["key_id"]}
    assert out["header"] == want


def test_every_rejection_is_rejected_with_its_reason(node: str) -> None:
    vec = _load(VECTORS / "rejections.json")
    code, out, err = run(node, VECTORS / "rejections.json")
    assert code == 0, (out, err)
    got = {c["name"]: (c["got"], c.get("skipped")) for c in out["cases"]}
    # None of the stored cases needs zstd decompression, so none is skipped.
    assert got == {c["name"]: (c["reason"], None) for c in vec["cases"]}


def test_a_raw_batch_file_decodes_and_a_tampered_one_exits_with_the_reason(node: str, tmp_path: Path) -> None:
    vec = _load(VECTORS / "every-kind-deflate.json")
    batch = bytes.fromhex(vec["expected"]["batch_hex"])
    good = tmp_path / "batch.cbor"
    good.write_bytes(batch)
    pub = tmp_path / "device.pub"
    pub.write_text(vec["key"]["public_key_pem"], encoding="utf-8")
    code, out, _ = run(node, "--pub", pub, good)
    assert code == 0
    same(out["readings"], vec["expected"]["decoded"]["readings"], "$.readings")

    bad = tmp_path / "tampered.cbor"
    bad.write_bytes(batch[:-70] + bytes([batch[-70] ^ 1]) + batch[-69:])  # a payload byte
    code, out, err = run(node, "--pub", vec["key"]["public_key_hex"], bad)
    assert code == 2
    assert out["rejected"] == "bad_signature"
    assert "bad_signature" in err


def test_a_wrong_expectation_is_reported_not_absorbed(node: str, tmp_path: Path) -> None:
    """The decoder's own --check is not vacuous: 12.3 changed by one ulp is a mismatch, and
    an integer written as a float is one too."""
    vec = _load(VECTORS / "minimal.json")
    vec["expected"]["decoded"]["readings"][0]["value"] = math.nextafter(12.3, 13.0)
    f = tmp_path / "off-by-one-ulp.json"
    f.write_text(json.dumps(vec), encoding="utf-8")
    code, out, _ = run(node, "--check", f)
    assert code == 1
    assert out["check"]["ok"] is False
    assert "readings[0].value" in out["check"]["diff"]

    vec = _load(VECTORS / "reference-station-5min.json")
    readings = vec["expected"]["decoded"]["readings"]
    energy = next(r for r in readings if r["channel"] == "meter-1/import_energy")
    energy["value"] = float(energy["value"])
    f = tmp_path / "int-as-float.json"
    f.write_text(json.dumps(vec), encoding="utf-8")
    code, out, _ = run(node, "--check", f)
    assert code == 1
    assert "type" in out["check"]["diff"]


# ---------------------------------------------------------------------------------------------
# Differential cases: messages built here (signed with the vectors' test key) that the spec
# gaps found by writing oxp_decode.mjs were about. The JS decoder and the reference
# (edge.protocol) must give the same answer: the same reason code, or the same readings.

def _differential_cases() -> list[tuple[str, dict]]:
    ok_body = [1000, ["d-1"], [[1, "s", 0, None, 2, b"\x00\x02", [5, ["a"], b"\x00\x00"]]]]
    return [
        ("version-3", {"version": 3}),
        ("version-3-other-key", {"version": 3, "key": "other"}),
        ("version-missing", {"version": None}),
        ("status-as-batch-other-key", {"status": True, "key": "other"}),
        ("codec-9", {"codec": 9}),
        ("codec-as-text", {"codec": "deflate"}),
        ("body-cut-short", {"body_bytes": lambda b: b[:-3]}),
        ("unit-code-beyond-registry", {"body": [0, [""], [[0, "x", 200, None, 0, b"", [2, 0, b""]]]]}),
        ("kind-3", {"body": [0, [""], [[3, "x", 0, None, 0, b"", [2, 0, b""]]]]}),
        ("quality-flag-3", {"body": [0, [""], [[0, "x", 0, None, 1, b"\x00", [2, 0, b"\x00"], b"\x00\x03"]]]}),
        ("deflate-without-fdict", {"body": ok_body, "fdict": False}),
        ("counter-sent-by-name", {"body": ok_body, "counters": {"readings_dropped": 5, 9: 1}}),
        ("resolution-on-a-string", {"body": [0, [""], [[1, "x", 0, -1, 0, b"", [5, [], b""]]]]}),
        ("indefinite-lengths", {"body_bytes": lambda _: bytes.fromhex("8300816 09f870061780 0f6015f4100ff83020041 02ff".replace(" ", ""))}),
        ("not-preferred-ints", {"body_bytes": lambda _: bytes.fromhex("831b00000000000003e88160818700617800f6"
                                                                       "18014100830239000041 02".replace(" ", ""))}),
        ("t0-and-times-wrap", {"body": [2**63 - 1, [""], [[0, "x", 0, None, 2, b"\x02\x02", [2, 0, b"\x00\x00"]]]]}),
        ("scaled-beyond-int64", {"body": [0, [""], [[0, "x", 0, [7, 30], 1, b"\x00", [0, b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01"]]]]}),
        # Where the reference used to be laxer than the spec (found by this decoder):
        ("varint-of-2-to-the-64", {"body": [0, [""], [[0, "x", 0, None, 1, b"\x00", [2, 0, b"\xff" * 9 + b"\x7f"]]]]}),
        ("varint-just-below-2-to-the-64", {"body": [0, [""], [[0, "x", 0, None, 1, b"\x00", [2, 0, b"\xff" * 9 + b"\x01"]]]]}),
        ("protected-label-twice", {"body": ok_body, "protected_bytes": lambda p: bytes([p[0] + 1]) + p[1:] + b"\x01\x27"}),
        ("bytes-after-the-protected-map", {"body": ok_body, "protected_bytes": lambda p: p + b"\x00"}),
        ("more-readings-than-the-limit", {"body": [0, [""], [[2, "x", 0, None, 1_000_001, b"", [6, b""]]]]}),
        # What a receiver may refuse before verification (§4.4), refused alike:
        ("tag-30-in-the-protected-header", {"body": ok_body, "protected_bytes": lambda p: _with_label(p, cbor2.CBORTag(30, [3**300, 7**200]))}),
        ("bignum-in-the-protected-header", {"body": ok_body, "protected_bytes": lambda p: _with_label(p, 2**70)}),
        ("protected-header-over-4-KiB", {"body": ok_body, "protected_bytes": lambda p: _with_label(p, b"\x00" * 4100)}),
        ("protected-header-nested-9-deep", {"body": ok_body, "protected_bytes": lambda p: _with_label(p, [[[[[[[[[0]]]]]]]]])}),
        ("protected-header-of-513-items", {"body": ok_body, "protected_bytes": lambda p: _with_label(p, list(range(510)))}),
        ("tag-in-the-unprotected-map", {"body": ok_body, "unprotected": {5: cbor2.CBORTag(1, 0)}}),
    ]


def _with_label(protected: bytes, value: object) -> bytes:
    """The protected header with label 99 (one a receiver does not know) set to ``value``."""
    return bytes([protected[0] + 1]) + protected[1:] + cbor2.dumps(99) + cbor2.dumps(value)


def _build(case: dict, vec: dict) -> tuple[bytes, str]:
    import zlib

    import cbor2
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rej = _load(VECTORS / "rejections.json")
    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(rej["keys"]["device"]["seed_hex"]))
    verify_with = rej["keys"][case.get("key", "device")]["public_key_hex"]
    dictionary = base64.b64decode(_load(VECTORS / "oxp-dictionary.json")["dictionary_base64"])
    body = cbor2.dumps(case.get("body", [0, [], []]))
    body = case.get("body_bytes", lambda b: b)(body)
    if case.get("fdict", True):
        comp = zlib.compressobj(9, zdict=dictionary)
    else:
        comp = zlib.compressobj(9)
    payload = comp.compress(body) + comp.flush()
    header = {0: 2, 1: "pole-0042", 2: 7, 3: 0, 4: b"", 5: 2, 6: 1767225900000}
    if "zstd" in case:
        import zstandard

        raw = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        params = zstandard.ZstdCompressionParameters.from_level(9, write_checksum=case["zstd"]["checksum"])
        payload = zstandard.ZstdCompressor(dict_data=raw, compression_params=params).compress(body)
        payload += case["zstd"].get("tail", b"")
        header[5] = 1
    if "version" in case:
        header[0] = case["version"]
        if case["version"] is None:
            del header[0]
    if "codec" in case:
        header[5] = case["codec"]
    if "counters" in case:
        header[7] = case["counters"]
    kid = bytes.fromhex(rej["keys"]["device"]["key_id"])
    label = -65538 if case.get("status") else -65537
    protected = cbor2.dumps({1: -8, 4: kid, label: header}, canonical=True)
    protected = case.get("protected_bytes", lambda p: p)(protected)
    if case.get("status"):
        payload = cbor2.dumps({"device_id": "pole-0042"}, canonical=True)
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    return cbor2.dumps(cbor2.CBORTag(18, [protected, case.get("unprotected", {}), payload, signer.sign(tbs)])), verify_with


@pytest.mark.parametrize(("name", "case"), _differential_cases(), ids=[n for n, _ in _differential_cases()])
def test_js_decoder_and_reference_agree_on_the_spec_gaps(node: str, name: str, case: dict, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edge.protocol import ProtocolError, open_batch, to_senml

    data, pub_hex = _build(case, {})
    f = tmp_path / f"{name}.cbor"
    f.write_bytes(data)
    code, out, err = run(node, "--pub", pub_hex, f)
    try:
        batch = open_batch(data, Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub_hex)))
    except ProtocolError as exc:
        assert code == 2, (out, err)
        assert out["rejected"] == exc.reason, (out["detail"], exc.detail)
        return
    assert code == 0, (out, err)
    assert out["header"]["counters"] == dict(batch.header.counters)
    want = [
        {"channel": r.channel, "ts_ms": r.ts_ms, "value": r.value}
        | ({"unit": r.unit} if r.unit else {})
        | ({"quality": int(r.quality)} if r.quality is not None else {})
        for r in batch.readings
    ]
    same(out["readings"], want, "$.readings")
    same(out["senml"], json.loads(json.dumps(to_senml(batch))), "$.senml")


@pytest.mark.parametrize(
    ("checksum", "tail", "reason"),
    [(False, b"", None), (True, b"", None), (True, b"\x00", "malformed"), (False, b"junk", "malformed")],
)
def test_the_js_decoder_finds_the_end_of_a_zstd_frame(
    node: str, tmp_path: Path, checksum: bool, tail: bytes, reason: str | None
) -> None:
    """Without a zstd decompressor it still walks the frame's block headers: the declared size
    must be the body's, and nothing may follow the frame (§6.1); edge.protocol agrees."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from edge.protocol import ProtocolError, open_batch

    body = cbor2.dumps([1000, ["d-1"], [[1, "s", 0, None, 2, b"\x00\x02", [5, ["a"], b"\x00\x00"]]]])
    data, pub_hex = _build({"body": cbor2.loads(body), "zstd": {"checksum": checksum, "tail": tail}}, {})
    f = tmp_path / "z.cbor"
    f.write_bytes(data)
    code, out, err = run(node, "--pub", pub_hex, "--body-hex", body.hex(), f)
    if reason is None:
        assert code == 0, (out, err)
        assert [r["value"] for r in out["readings"]] == ["a", "a"]
        assert out["zstd"]["frame_content_size"] == len(body)
    else:
        assert code == 2
        assert out["rejected"] == reason
        assert "after the zstd frame" in out["detail"]
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub_hex))
    if reason is None:
        assert [r.value for r in open_batch(data, public).readings] == ["a", "a"]
    else:
        with pytest.raises(ProtocolError) as refused:
            open_batch(data, public)
        assert refused.value.reason == reason and "follow the zstd frame" in refused.value.detail
