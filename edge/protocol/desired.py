"""The desired document as it travels from hub to gateway (protocol §8.4, docs/fleet.md): its canonical bytes, merge rule and signature.

The hub merges a fleet's document with a device's and signs the result; the gateway merges the
tables over its local config and verifies the signature. Both sides use these functions, so
there is one definition of the bytes signed and of how tables merge.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.protocol.keys import key_id

__all__ = ["CLEARED", "ISSUED", "canonical_json", "clear_document", "dotted_log_levels", "merge_tables", "sign_document", "verify_document"]

# Within OXP/2, added 2026-12 (§8.4, "Freshness and a signed clear"): the hub's clock when it signed a document, which a
# gateway requires to grow, and the document a hub signs to say that nothing is desired any more.
ISSUED = "issued_ms"
CLEARED = "cleared"


def canonical_json(value: Any) -> bytes:
    """The bytes the hub signs: compact JSON with sorted keys, UTF-8 (docs/fleet.md)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; values and arrays in ``override`` replace what ``base`` had (as the hub merges)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def dotted_log_levels(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with ``[gateway] log_levels`` written one way: a logger's name as one dotted key.

    TOML reads a bare dotted key (``ocn.bus = "debug"``) as nested tables, JSON keeps ``"ocn.bus"`` whole;
    merged key by key, the two forms of one name would both stand.  A name given in both forms in one
    document is the schema's to refuse (edge.config.LogLevels names it); here the first stands.
    """
    gateway = config.get("gateway")
    if not isinstance(gateway, Mapping) or not isinstance(levels := gateway.get("log_levels"), Mapping):
        return dict(config)
    flat: dict[str, Any] = {}

    def walk(table: Mapping[str, Any], prefix: str) -> None:
        for key, value in table.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                flat.setdefault(f"{prefix}{key}", value)

    walk(levels, "")
    return {**config, "gateway": {**gateway, "log_levels": flat}}


def clear_document(device_id: str, issued_ms: int) -> dict[str, Any]:
    """What a hub signs in place of a null document: nothing is desired for ``device_id`` any more (its ETag is "")."""
    return {"device_id": device_id, CLEARED: True, ISSUED: issued_ms}


def sign_document(document: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed form sent to the gateway: Ed25519 over the canonical JSON bytes of ``document``."""
    signature = private_key.sign(canonical_json(document))
    return {
        "document": dict(document),
        "alg": "Ed25519",
        "key_id": key_id(private_key).hex(),
        "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode(),
    }


def verify_document(signed: Mapping[str, Any], public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The document inside a signed desired document, after checking its signature (raises InvalidSignature)."""
    signature = base64.urlsafe_b64decode(str(signed["signature"]) + "==")
    public_key.verify(signature, canonical_json(signed["document"]))
    return dict(signed["document"])
