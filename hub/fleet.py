"""Desired configuration and policy per fleet and per device: merging, ETags, drift and the hub's signing key.

The signed form a gateway receives, and the merge rule both sides share, are edge.protocol.desired.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.desiredcheck import DesiredCheckError, check_desired_config, check_desired_policy
from edge.protocol.desired import canonical_json, dotted_log_levels, merge_tables
from hub.models import Device
from hub.store import SOFTWARE_SCOPE, Store

TRUST_KEY = ("trust", "hub")  # the desired row of the hub's trust part (hub.hubkey): the same document for every device

__all__ = [
    "DesiredError",
    "check_desired",
    "desired_document",
    "desired_status",
    "drift",
    "load_or_create_signing_key",
]

PARTS = ("config", "policy")
SOFTWARE_FIELDS = ("version", "url", "key_id")  # of a device's software target, as signed (docs/updates.md)


class DesiredError(ValueError):
    """A desired document is not acceptable; the message names the field and what would be accepted."""


def check_desired(document: object) -> dict[str, Any]:
    """Validate a desired document as city IT submits it: {"config": {...}, "policy": {...}}, either part optional.

    Each part is checked with the gateway's own schema and policy parser (edge.desiredcheck), so
    a document a gateway would refuse is refused here with the sentence the gateway would give.
    """
    if not isinstance(document, Mapping):
        raise DesiredError(f"desired document: expected a JSON object with 'config' and/or 'policy', got {type(document).__name__}")
    unknown = sorted(set(document) - set(PARTS))
    if unknown:
        raise DesiredError(f"desired document: unknown field(s) {', '.join(map(repr, unknown))}; expected 'config' and/or 'policy'")
    for part in PARTS:
        if part in document and not isinstance(document[part], Mapping):
            raise DesiredError(f"desired document field {part!r}: expected a JSON object (the TOML file's tables), got {document[part]!r}")
    try:
        if "config" in document:
            check_desired_config(document["config"])
        if "policy" in document:
            check_desired_policy(document["policy"])
    except DesiredCheckError as exc:
        raise DesiredError(str(exc)) from None
    if "config" in document:  # one form of a logger's name, so a device's document merges over its fleet's name by name
        return {**document, "config": dotted_log_levels(document["config"])}
    return dict(document)


def part_digest(part: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of deterministic CBOR of a part: for a policy, the same digest the gateway reports."""
    return hashlib.sha256(cbor2.dumps(part, canonical=True)).hexdigest()


async def desired_document(
    store: Store, device: Device, *, known: dict[tuple[str, str], tuple[dict[str, Any], int] | None] | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The effective desired document for a device (fleet's, overridden by the device's) and its ETag ("" if none).

    ``known`` remembers documents already read, for callers that look at many devices at once.
    """
    known = {} if known is None else known
    for key in (("fleet", device.fleet), ("device", device.device_id), (SOFTWARE_SCOPE, device.device_id), TRUST_KEY):
        if key not in known:
            known[key] = await store.desired(*key)
    fleet, own, software = known[("fleet", device.fleet)], known[("device", device.device_id)], known[(SOFTWARE_SCOPE, device.device_id)]
    trust = known[TRUST_KEY]
    if fleet is None and own is None and software is None and trust is None:
        return None, ""
    merged = merge_tables(fleet[0] if fleet else {}, own[0] if own else {})
    document: dict[str, Any] = {"device_id": device.device_id, "fleet": device.fleet}
    for part in PARTS:
        if part in merged:
            document[part] = merged[part]
            document[f"{part}_digest"] = part_digest(merged[part])
    if software is not None:  # set by a rollout (hub.rollout); a gateway that does not know the key ignores it
        document["software"] = {name: str(software[0][name]) for name in SOFTWARE_FIELDS}
        if software[0].get("pause_backlog"):
            document["software"]["pause_backlog"] = int(software[0]["pause_backlog"])
    if trust is not None:  # the hub's next key and CA bundle (hub.hubkey), for every device; a gateway that does not know the key ignores it
        document["trust"] = dict(trust[0])
    etag = hashlib.sha256(canonical_json(document)).hexdigest()[:32]
    document["etag"] = etag
    return document, etag


def drift(device: Device, document: Mapping[str, Any] | None) -> list[str]:
    """What the device reports differently from what is desired: [] when in step."""
    if document is None:
        return []
    found = []
    if "policy" in document and device.policy_digest != document["policy_digest"]:
        found.append("policy")
    if "config" in document and device.applied_etag != document["etag"]:
        found.append("config")
    return found


def desired_status(device: Device, document: Mapping[str, Any] | None) -> tuple[str, str]:
    """Where a device stands with its desired document, and the gateway's own words when it refused or ignored it.

    ``("none", "")`` when nothing is desired and the device runs no document; ``("applied", "")`` once the
    device reports the document's ETag in force; ``("failed", reason)`` when its status report says it
    refused that ETag (edge.desired: "desired <etag> not applied: <reason>"); ``("ignored", reason)``
    when it ignored what it was sent under that ETag as not the hub's answer, or as older than the
    document in force ("desired <etag> ignored: <reason>", OXP §8.4); ``("pending", "")`` otherwise
    (it has not reported since the document was set).  With nothing desired, a device that still
    reports a document in force is clearing: the same states, for the ETag "" ("desired clear ...").
    """
    if document is None:
        if not device.applied_etag:
            return "none", ""
        etag, name = "", "clear"
    else:
        etag = name = str(document["etag"])
        if device.applied_etag == etag:
            return "applied", ""
    for state, said in (("failed", f"desired {name} not applied: "), ("ignored", f"desired {name} ignored: ")):
        for error in device.errors:
            if error.startswith(said):
                return state, error[len(said):]
    return "pending", ""


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """The hub's Ed25519 key for desired documents; created (mode 0600) on first start, shared by hub replicas."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        key = Ed25519PrivateKey.generate()
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            out.flush()
            os.fsync(out.fileno())
        return key
    for _ in range(50):
        data = path.read_bytes()
        if data:  # another process may be between creating and writing the file
            break
        time.sleep(0.02)
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}; the hub signing key must be Ed25519")
    return loaded
