"""The SenML (RFC 8428) view of a batch: names, times, values and the CBOR labels."""

from __future__ import annotations

import json

import cbor2

from edge.protocol import open_batch, seal_batch, senml_cbor, senml_json, to_senml


def test_every_reading_becomes_one_record_with_full_name_time_and_value(device_key, header, channels, readings):
    batch = open_batch(seal_batch(header, channels, readings, device_key), device_key.public_key())
    records = to_senml(batch)
    assert len(records) == len(readings)
    base_name, base_time = records[0]["bn"], records[0]["bt"]
    assert base_name == "urn:dev:ocn:pole-0042:"
    rebuilt = sorted(
        (r["n"], round((base_time + r.get("t", 0)) * 1000), r.get("v", r.get("vs", r.get("vb")))) for r in records
    )
    assert rebuilt == sorted((r.channel, r.ts_ms, r.value) for r in readings)


def test_values_use_v_vs_and_vb_by_kind_and_quality_travels_as_q(device_key, header, channels, readings):
    records = to_senml(open_batch(seal_batch(header, channels, readings, device_key), device_key.public_key()))
    visitor = next(r for r in records if r["n"] == "counter-1/visitor")
    door = [r for r in records if r["n"] == "door-1/open"]
    pm = [r for r in records if r["n"] == "pm-1/pm2_5"]
    assert "vs" in visitor and all("vb" in r for r in door) and all("v" in r for r in pm)
    assert [r.get("q") for r in pm] == [None, 1]
    assert all(r["u"] == "ug/m3" for r in pm)


def test_json_view_parses_back_to_the_records(device_key, header, channels, readings):
    batch = open_batch(seal_batch(header, channels, readings, device_key), device_key.public_key())
    assert json.loads(senml_json(batch)) == to_senml(batch)


def test_cbor_view_uses_rfc_8428_integer_labels(device_key, header, channels, readings):
    batch = open_batch(seal_batch(header, channels, readings, device_key), device_key.public_key())
    records = cbor2.loads(senml_cbor(batch))
    assert records[0][-2] == "urn:dev:ocn:pole-0042:"  # bn
    assert -3 in records[0] and 0 in records[0]  # bt, n
    assert all(set(r) <= {-2, -3, 0, 1, 2, 3, 4, 6, "q"} for r in records)


def test_an_empty_batch_is_one_record_with_base_name_and_time(device_key, header):
    records = to_senml(open_batch(seal_batch(header, (), [], device_key), device_key.public_key()))
    assert records == [{"bn": "urn:dev:ocn:pole-0042:", "bt": header.created_ms / 1000}]
