"""Applies the hub's desired policy and config: verify, validate, swap in whole — or keep the last good one.

The hub sends a desired document (see docs/fleet.md) in its answer to a status report,
signed with the hub's key.  The gateway pins that key on first use (fetched over the
uplink's verified TLS connection) and keeps it in ``<state_dir>/hub.pub``.

- A desired **policy** is validated against the channels the devices declare, then
  swapped into the privacy stage between two readings: windows open under the old
  policy are closed and released under the old policy's digest, and every reading
  after the swap falls under the new one.  The epsilon budget spent today carries over.
- A desired **config** is merged over the effective local config, validated like a
  file, and applied by a clean restart of the pipeline inside the process (memory is
  flushed to the spool first, so no reading is lost).  If the new config fails to
  start, the last good one is started again.

Either way the outcome is remembered (``<state_dir>/desired/``) and reported upstream:
the applied ETag and policy digest on success, the reason on failure.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["DesiredChange", "DesiredError", "DesiredState", "canonical_json", "merge_tables"]

log = logging.getLogger("ocn.desired")


class DesiredError(Exception):
    """A desired document cannot be applied; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class DesiredChange:
    """A verified desired document, split into what it asks to change."""

    etag: str
    policy: Mapping[str, Any] | None
    config: Mapping[str, Any] | None


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


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class DesiredState:
    """What the hub asked for, what was applied, and the hub key that vouches for it; survives restarts."""

    def __init__(self, state_dir: str | os.PathLike[str], *, device_id: str) -> None:
        self.dir = Path(state_dir) / "desired"
        self.hub_key_path = Path(state_dir) / "hub.pub"
        self.device_id = device_id
        self.applied_etag = ""
        self.last_error = ""
        self._failed_etag = ""
        self._load()

    # -- persistence ------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            record = json.loads((self.dir / "applied.json").read_text())
        except (FileNotFoundError, ValueError):
            return
        self.applied_etag = str(record.get("etag", ""))

    def saved_policy_path(self) -> Path | None:
        """The last desired policy applied, as a TOML file the gateway starts with (None if there is none)."""
        path = self.dir / "policy.toml"
        return path if path.exists() else None

    def saved_config_overlay(self) -> Mapping[str, Any] | None:
        """The last desired config applied (the hub's tables), to lay over the local file at start."""
        try:
            return json.loads((self.dir / "config.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def record_success(self, change: DesiredChange, *, policy_toml: str | None, config: Mapping[str, Any] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if policy_toml is not None:
            _write_atomically(self.dir / "policy.toml", policy_toml.encode())
        if config is not None:
            _write_atomically(self.dir / "config.json", canonical_json(config))
        _write_atomically(self.dir / "applied.json", canonical_json({"etag": change.etag}))
        self.applied_etag = change.etag
        self.last_error = ""
        self._failed_etag = ""
        log.info("desired state applied", extra={"etag": change.etag})

    def record_failure(self, etag: str, reason: str) -> None:
        """Keep the last good state; report the reason upstream, logged once per desired document."""
        self.last_error = f"desired {etag or 'document'} not applied: {reason}"[:500]
        if etag != self._failed_etag:
            self._failed_etag = etag
            log.warning("desired state refused; keeping the last good one", extra={"etag": etag, "reason": reason})

    # -- the hub key ------------------------------------------------------------------------

    def hub_key(self) -> Ed25519PublicKey | None:
        try:
            key = serialization.load_pem_public_key(self.hub_key_path.read_bytes())
        except FileNotFoundError:
            return None
        if not isinstance(key, Ed25519PublicKey):
            raise DesiredError(f"{self.hub_key_path}: not an Ed25519 public key")
        return key

    def pin_hub_key(self, pem: bytes) -> Ed25519PublicKey:
        key = serialization.load_pem_public_key(pem)
        if not isinstance(key, Ed25519PublicKey):
            raise DesiredError("the hub's key is not an Ed25519 public key")
        self.hub_key_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.hub_key_path, pem)
        log.info("pinned the hub's signing key", extra={"path": str(self.hub_key_path)})
        return key

    # -- verification -----------------------------------------------------------------------

    def verify(self, signed: Any, etag: str, hub_key: Ed25519PublicKey) -> DesiredChange:
        """The desired document inside ``signed`` after checking the hub's signature and that it is ours."""
        if not isinstance(signed, Mapping) or not isinstance(signed.get("document"), Mapping):
            raise DesiredError("the hub sent a desired document without the signed 'document' object")
        if signed.get("alg") != "Ed25519":
            raise DesiredError(f"desired document alg = {signed.get('alg')!r}: expected 'Ed25519'")
        try:
            sig = str(signed["signature"])
            hub_key.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), canonical_json(signed["document"]))
        except (KeyError, ValueError, InvalidSignature):
            raise DesiredError("the desired document's signature does not verify with the pinned hub key") from None
        document = signed["document"]
        if document.get("device_id") != self.device_id:
            raise DesiredError(f"the desired document is for device {document.get('device_id')!r}, not {self.device_id!r}")
        policy, config = document.get("policy"), document.get("config")
        for name, part in (("policy", policy), ("config", config)):
            if part is not None and not isinstance(part, Mapping):
                raise DesiredError(f"desired {name}: expected a table, got {type(part).__name__}")
        return DesiredChange(etag=etag, policy=policy, config=config)


def overlay_config(base_toml: str, overlay: Mapping[str, Any]) -> dict[str, Any]:
    """The effective config's tables with the hub's desired tables laid over them."""
    return merge_tables(tomllib.loads(base_toml), overlay)
