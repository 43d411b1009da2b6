"""The hub's answer documents, whatever wire brought them: an ack that names a batch, and which refusals are final.

HTTP carries the class of a refusal in its status line; MQTT has none, so there the reason
code alone says whether sending the same bytes again can help (OXP §8.2, §8.6).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.protocol.reasons import Answer
from edge.transport.contract import Ack

__all__ = ["FINAL_BATCH_CODES", "FINAL_REPORT_CODES", "ack_of"]

# A batch refused with one of these will never be taken, however often it is sent: quarantine it.
FINAL_BATCH_CODES = frozenset({Answer.MALFORMED, Answer.BAD_SIGNATURE, Answer.TOO_LARGE})
# A status report or notice also stops at ``stale``: the next one is numbered anew.
FINAL_REPORT_CODES = FINAL_BATCH_CODES | {Answer.STALE}


def ack_of(document: Mapping[str, Any], overhead: int) -> Ack | None:
    """The ack in the hub's answer, None unless every field that names the batch is there with its exact type."""
    status, device_id, kid = document.get("status"), document.get("device_id"), document.get("key_id")
    boot_epoch, seq = document.get("boot_epoch"), document.get("seq")
    if status not in ("stored", "duplicate") or not isinstance(device_id, str) or not isinstance(kid, str):
        return None
    if type(boot_epoch) is not int or type(seq) is not int:
        return None
    try:
        key = bytes.fromhex(kid)
    except ValueError:
        return None
    if key.hex() != kid:  # the hub writes lowercase hex; anything else is not its ack
        return None
    etag = document.get("desired_etag")
    return Ack(device_id, key, boot_epoch, seq, duplicate=status == "duplicate", overhead_bytes=overhead, desired_etag=etag if isinstance(etag, str) else None)
