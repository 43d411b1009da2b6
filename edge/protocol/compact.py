"""The compact batch ack of OXP over MQTT (§8.6): the fields of §8.1's JSON ack that the device does not know already, in CBOR.

A device that asks for it (4 bytes of correlation data instead of 8) is answered, for a batch the
hub stored or already held, with a CBOR array ``[boot_epoch, seq, status]`` and, when the JSON ack
would carry ``quarantined`` or ``desired_etag``, a fourth item: a map with those keys and values.
``status`` is 0 for "stored" and 1 for "duplicate".  The device id is the topic's and the key id the
batch's, so neither travels; the array still names the batch, and the device matches it to the batch
it has in flight by ``boot_epoch`` and ``seq`` (OXP §8.1: an ack names what it stored).  About 6
bytes instead of about 95.  No I/O here: the hub encodes, the gateway decodes, both with this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2

__all__ = ["CompactAckError", "STATUSES", "compact_ack", "read_compact_ack"]

STATUSES = ("stored", "duplicate")  # the status a compact ack's third item numbers
_EXTRAS = frozenset({"quarantined", "desired_etag"})


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
