"""Release manifests as COSE_Sign1 messages: the same envelope and Ed25519 signature as OXP batches, another header label.

A release manifest (docs/updates.md) is signed by the city's release key, not by a device or the
hub. Its protected header holds the OXP release header under label -65539 (docs/protocol.md
§4.1), so a manifest can never be taken for a batch or a status report, nor the reverse. The
manifest itself is the payload, a CBOR map; its fields are checked by ``edge.update.manifest``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.protocol.envelope import OXP_VERSION, _parse, _sign, _verify
from edge.protocol.errors import ProtocolError
from edge.protocol.keys import key_id
from edge.protocol.preauth import ALG, EDDSA, KID, OXP_RELEASE

__all__ = ["MAX_MANIFEST_BYTES", "seal_release", "open_release", "release_key_id"]

# A manifest names a few dozen files per target; 1 MiB leaves room for thousands.
MAX_MANIFEST_BYTES = 1024 * 1024
H_VERSION = 0  # the OXP version in the release header, as in batches (§5)


def seal_release(manifest: Mapping[str, Any], private_key: Ed25519PrivateKey) -> bytes:
    """Sign a manifest (a CBOR map with text keys) with the release key: the bytes of ``manifest.cose``."""
    payload = cbor2.dumps(dict(manifest), canonical=True)
    sealed = _sign({ALG: EDDSA, KID: key_id(private_key), OXP_RELEASE: {H_VERSION: OXP_VERSION}}, payload, private_key)
    if len(sealed) > MAX_MANIFEST_BYTES:
        raise ValueError(f"release manifest is {len(sealed)} bytes, over the limit of {MAX_MANIFEST_BYTES}")
    return sealed


def release_key_id(data: bytes) -> bytes:
    """The key id a manifest says it is signed with, WITHOUT verifying it: only for naming the key in an error."""
    return _parse(data, limit=MAX_MANIFEST_BYTES, expected=OXP_RELEASE).kid


def open_release(data: bytes, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Verify a signed manifest with the release public key and return its map; raises ProtocolError.

    Only that it is a map is checked here; what a manifest must hold is ``edge.update.manifest``'s.
    """
    message = _parse(data, limit=MAX_MANIFEST_BYTES, expected=OXP_RELEASE)
    _verify(message, public_key)
    try:  # verified: these bytes were written by the holder of the release key
        manifest = cbor2.loads(message.payload)
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise ProtocolError("malformed", f"release manifest is not CBOR ({exc})") from None
    if not isinstance(manifest, dict):
        raise ProtocolError("malformed", "release manifest is not a map")
    return manifest
