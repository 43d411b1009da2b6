"""The release manifest test vector in docs/updates/manifest-vector.json: regenerated here from fixed inputs and compared byte for byte.

Regenerate after a deliberate format change with `python -m tests.update.test_vector`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import key_id, raw_public_key
from edge.protocol.release import open_release, seal_release
from edge.update.manifest import read_manifest

VECTOR = Path(__file__).resolve().parents[2] / "docs" / "updates" / "manifest-vector.json"
SEED = bytes(range(32))  # a test key: never use it for a real release
FILES = {
    "wheels/ocn_edge-2.0.0-py3-none-any.whl": b"the bytes of ocn_edge-2.0.0-py3-none-any.whl",
    "targets/aarch64-cp311/constraints.txt": b"ocn-edge==2.0.0 --hash=sha256:...\n",
}


def manifest() -> dict[str, Any]:
    return {
        "format": 1,
        "product": "ocn-edge",
        "version": "2.0.0",
        "min_from": "1.0.0",
        "allow_downgrade": False,
        "rollback_safe": True,
        "issued": 1_790_000_000,
        "expires": 1_797_776_000,
        "targets": {"aarch64-cp311": {"constraints": "targets/aarch64-cp311/constraints.txt", "wheels": ["wheels/ocn_edge-2.0.0-py3-none-any.whl"]}},
        "files": {path: {"size": len(data), "sha256": hashlib.sha256(data).digest()} for path, data in FILES.items()},
    }


def _json_view(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {key: _json_view(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_view(item) for item in value]
    return value


def vector() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(SEED)
    return {
        "about": 'A release manifest signed with a test release key (docs/updates.md). Byte strings are {"hex": ...}.',
        "key": {"seed_hex": SEED.hex(), "public_hex": raw_public_key(key).hex(), "key_id_hex": key_id(key).hex()},
        "files": {path: data.decode() for path, data in FILES.items()},
        "manifest": _json_view(manifest()),
        "manifest_cose_hex": seal_release(manifest(), key).hex(),
    }


def test_the_documented_vector_is_what_the_reference_signs() -> None:
    assert json.loads(VECTOR.read_text()) == vector()


def test_the_vector_verifies_and_reads_as_a_manifest() -> None:
    data = bytes.fromhex(json.loads(VECTOR.read_text())["manifest_cose_hex"])
    public = Ed25519PrivateKey.from_private_bytes(SEED).public_key()
    assert open_release(data, public) == manifest()
    assert read_manifest(data, public).version == "2.0.0"


if __name__ == "__main__":
    VECTOR.parent.mkdir(exist_ok=True)
    VECTOR.write_text(json.dumps(vector(), indent=2) + "\n")
