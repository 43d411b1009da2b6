"""The compact batch ack of OXP over MQTT (§8.6): the fields of §8.1's JSON ack that the device does not know already, in CBOR.

A device that asks for it (4 bytes of correlation data instead of 8) is answered, for a batch the
hub stored or already held, with a CBOR array ``[boot_epoch, seq, status]`` and, when the JSON ack
would carry ``quarantined`` or ``desired_etag``, a fourth item: a map with those keys and values.
``status`` is 0 for "stored" and 1 for "duplicate".  The device id is the topic's and the key id the
batch's, so neither travels; the array still names the batch, and the device matches it to the batch
it has in flight by ``boot_epoch`` and ``seq`` (OXP §8.1: an ack names what it stored).  About 6
bytes instead of about 95.

A device that sends a batch without correlation data, having been granted its answer topic
``oxp/v1/<device id>`` (§8.6, "Answers by name"), is answered with the *named ack*: the batch's
name, the first 4 bytes of its SHA-256 (what its correlation data would have been), alone when the
hub stored it, else followed by its compact ack.  Four bytes whatever the sequence number.  No I/O
here: the hub encodes, the gateway decodes, both with this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import cbor2

__all__ = ["CompactAckError", "NAME_BYTES", "STATUSES", "batch_name", "compact_ack", "named_ack", "read_compact_ack", "read_named_ack"]

STATUSES = ("stored", "duplicate")  # the status a compact ack's third item numbers
_EXTRAS = frozenset({"quarantined", "desired_etag"})
NAME_BYTES = 4  # a batch's name in a named ack: this many bytes of its SHA-256


class CompactAckError(ValueError):
    """The bytes are not a compact ack; the message says what is wrong."""


def compact_ack(boot_epoch: int, seq: int, status: str, extras: Mapping[str, Any] | None = None) -> bytes:
    """The compact ack of a batch: ``status`` "stored" or "duplicate"; ``extras`` the JSON ack's ``quarantined`` and ``desired_etag``, if any."""
    items: list[Any] = [boot_epoch, seq, STATUSES.index(status)]
    if extras:
        items.append(dict(extras))
    return cbor2.dumps(items)


def read_compact_ack(data: bytes) -> dict[str, Any]:
    """The ack's fields as the JSON ack names them, without ``device_id`` and ``key_id``; raises CompactAckError."""
    try:
        items = cbor2.loads(data)
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise CompactAckError(f"not CBOR: {exc}") from None
    if not isinstance(items, list) or len(items) not in (3, 4):
        raise CompactAckError("expected an array of 3 or 4 items")
    boot_epoch, seq, status = items[:3]
    if type(boot_epoch) is not int or type(seq) is not int or boot_epoch < 0 or seq < 0:
        raise CompactAckError("boot_epoch and seq must be unsigned integers")
    if type(status) is not int or not 0 <= status < len(STATUSES):
        raise CompactAckError(f"status {status!r} is not 0 (stored) or 1 (duplicate)")
    ack: dict[str, Any] = {"boot_epoch": boot_epoch, "seq": seq, "status": STATUSES[status]}
    if len(items) == 4:
        extras = items[3]
        if not isinstance(extras, dict) or not all(isinstance(k, str) for k in extras):
            raise CompactAckError("the fourth item must be a map with text keys")
        ack.update((k, v) for k, v in extras.items() if k in _EXTRAS)
    return ack


def batch_name(data: bytes) -> bytes:
    """The name of a message's bytes: the first 4 bytes of their SHA-256 (the same bytes sent again have the same name)."""
    return hashlib.sha256(data).digest()[:NAME_BYTES]


def named_ack(name: bytes, boot_epoch: int, seq: int, status: str, extras: Mapping[str, Any] | None = None) -> bytes:
    """The named ack of the batch whose name is ``name``: the name alone for "stored" with no extras, else the name and the compact ack."""
    if status == "stored" and not extras:
        return name
    return name + compact_ack(boot_epoch, seq, status, extras)


def read_named_ack(data: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """The batch's name and, if the ack says more than "stored", its compact ack read (``read_compact_ack``); raises CompactAckError."""
    if len(data) < NAME_BYTES:
        raise CompactAckError(f"a named ack starts with the batch's {NAME_BYTES}-byte name; got {len(data)} bytes")
    name, rest = data[:NAME_BYTES], data[NAME_BYTES:]
    return name, read_compact_ack(rest) if rest else None
