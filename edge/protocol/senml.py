"""The SenML (RFC 8428) view of a batch, as records, JSON text or CBOR bytes."""

from __future__ import annotations

import json
from typing import Any

import cbor2

from edge.protocol.envelope import Batch

__all__ = ["to_senml", "senml_json", "senml_cbor", "SENML_CBOR_LABELS"]

# RFC 8428 §6, Table 4; fields without a registered label keep their name as a text key.
SENML_CBOR_LABELS = {"bn": -2, "bt": -3, "bu": -4, "bv": -5, "bver": -1, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "s": 5, "t": 6, "ut": 7, "vd": 8}


def to_senml(batch: Batch) -> list[dict[str, Any]]:
    """One SenML record per reading; the first carries the base name and base time.

    ``bn`` is ``urn:dev:ocn:<device_id>:`` so ``bn + n`` names the channel;
    ``bt`` is the earliest reading's time in seconds and each ``t`` is relative
    to it, so millisecond times survive as binary64 exactly.  A reading's
    quality flag, when present, travels in the extension field ``q``
    (0 good, 1 suspect, 2 bad), which SenML readers that do not know it ignore.
    """
    readings = batch.readings
    base_ms = min((r.ts_ms for r in readings), default=batch.header.created_ms)
    records: list[dict[str, Any]] = []
    for r in readings:
        record: dict[str, Any] = {"n": r.channel}
        if r.unit:
            record["u"] = r.unit
        value = r.value
        if type(value) is bool:
            record["vb"] = value
        elif type(value) is str:
            record["vs"] = value
        else:
            record["v"] = value
        if r.ts_ms != base_ms:
            record["t"] = (r.ts_ms - base_ms) / 1000
        if r.quality is not None:
            record["q"] = int(r.quality)
        records.append(record)
    head = {"bn": f"urn:dev:ocn:{batch.header.device_id}:", "bt": base_ms / 1000}
    if records:
        records[0] = {**head, **records[0]}
    else:
        records.append(head)
    return records


def senml_json(batch: Batch, *, indent: int | None = None) -> str:
    """The SenML JSON text (media type application/senml+json) of a batch."""
    return json.dumps(to_senml(batch), ensure_ascii=False, indent=indent, allow_nan=True)


def senml_cbor(batch: Batch) -> bytes:
    """The SenML CBOR bytes (media type application/senml+cbor) of a batch, with RFC 8428 integer labels."""
    labels = SENML_CBOR_LABELS
    return cbor2.dumps([{labels.get(k, k): v for k, v in record.items()} for record in to_senml(batch)])
