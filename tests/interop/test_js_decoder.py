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


def same(a: object, b: object, where: str = "$") -> None:
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
        for i, (x, y) in enumerate(zip(a, b)):
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
