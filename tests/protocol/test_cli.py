"""`ocn-edge keygen` and `ocn-edge oxp encode|inspect|senml`, run as a user would."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.protocol import key_id, load_public_key, open_batch

CSV = """time,channel,value,unit
2026-01-01T00:00:00Z,pm-1/pm2_5,12.30,ug/m3
2026-01-01T00:02:30Z,pm-1/pm2_5,12.5,ug/m3
1767225900,pm-1/pm2_5,13.1,ug/m3
1767225660.5,door-1/open,true,
1767225661,counter-1/visitor,p:9f2c,
1767225662,meter-1/energy,1234567,Wh
1767225663,meter-1/energy,,Wh
"""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    assert main(["keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys"


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "readings.csv"
    path.write_text(CSV)
    return path


def encode(keys: Path, csv_file: Path, out: Path, *extra: str) -> int:
    return main(["oxp", "encode", "--key", str(keys / "device.key"), "--batch-seconds", "300", str(csv_file), "-o", str(out), *extra])


def test_keygen_writes_a_private_key_readable_only_by_its_owner_and_prints_the_key_id(tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE((tmp_path / "k" / "device.key").stat().st_mode) == 0o600
    assert key_id(load_public_key(tmp_path / "k" / "device.pub")).hex() in printed


def test_keygen_refuses_to_replace_an_existing_key(keys, capsys):
    assert main(["keygen", "--out", str(keys)]) == 2
    assert "refusing to replace" in capsys.readouterr().err


def test_encode_writes_one_batch_per_span_that_verifies(keys, csv_file, tmp_path, capsys):
    assert encode(keys, csv_file, tmp_path / "out") == 0
    files = sorted((tmp_path / "out").glob("*.oxp"))
    assert [f.name for f in files] == ["gateway-1-000001.oxp", "gateway-1-000002.oxp"]
    public = load_public_key(keys / "device.pub")
    batches = [open_batch(f.read_bytes(), public) for f in files]
    assert sum(len(b.readings) for b in batches) == 6
    assert [b.header.seq for b in batches] == [1, 2]
    assert "skipped 1 rows with an empty value" in capsys.readouterr().err


def test_encode_infers_resolution_from_the_decimals_written(keys, csv_file, tmp_path):
    encode(keys, csv_file, tmp_path / "out")
    batch = open_batch((tmp_path / "out" / "gateway-1-000001.oxp").read_bytes(), load_public_key(keys / "device.pub"))
    pm = next(c for c in batch.channels if c.id == "pm-1/pm2_5")
    assert pm.resolution == 0.01 and pm.unit == "ug/m3"
    assert [r.value for r in batch.readings if r.channel == "pm-1/pm2_5"] == [12.3, 12.5]


def test_encode_honours_a_declared_resolution(keys, csv_file, tmp_path):
    encode(keys, csv_file, tmp_path / "out", "--resolution", "pm-1/pm2_5=0.5")
    batch = open_batch((tmp_path / "out" / "gateway-1-000001.oxp").read_bytes(), load_public_key(keys / "device.pub"))
    assert [r.value for r in batch.readings if r.channel == "pm-1/pm2_5"] == [12.5, 12.5]


def test_encode_reports_a_bad_row_with_file_line_column_value_and_what_is_accepted(keys, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,channel,value\nyesterday,pm-1/pm2_5,3\n")
    assert encode(keys, bad, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "bad.csv:2: column time: value 'yesterday': expected ISO-8601" in err
    assert not (tmp_path / "out").exists()


def test_encode_rejects_a_malformed_resolution_option(keys, csv_file, tmp_path, capsys):
    assert encode(keys, csv_file, tmp_path / "out", "--resolution", "pm-1/pm2_5=fine") == 2
    assert "CHANNEL=STEP" in capsys.readouterr().err


def test_encode_rejects_an_invalid_device_id_naming_the_option(keys, csv_file, tmp_path, capsys):
    assert encode(keys, csv_file, tmp_path / "out", "--device-id", "Pole 42") == 2
    assert "device_id = 'Pole 42'" in capsys.readouterr().err


def test_inspect_prints_header_and_series_and_exits_0_when_the_signature_is_valid(keys, csv_file, tmp_path, capsys):
    encode(keys, csv_file, tmp_path / "out")
    capsys.readouterr()
    batch = tmp_path / "out" / "gateway-1-000001.oxp"
    assert main(["oxp", "inspect", str(batch), "--pub", str(keys / "device.pub")]) == 0
    out = capsys.readouterr().out
    assert "signature valid" in out and "seq            1" in out
    assert "series pm-1/pm2_5 [ug/m3] number res 0.01: 2 readings" in out


def test_inspect_exits_1_naming_the_reason_for_a_tampered_batch(keys, csv_file, tmp_path, capsys):
    encode(keys, csv_file, tmp_path / "out")
    batch = tmp_path / "out" / "gateway-1-000001.oxp"
    data = bytearray(batch.read_bytes())
    data[-70] ^= 1
    batch.write_bytes(bytes(data))
    assert main(["oxp", "inspect", str(batch), "--pub", str(keys / "device.pub")]) == 1
    assert "INVALID" in capsys.readouterr().err


def test_inspect_exits_1_for_another_devices_key(keys, csv_file, tmp_path, capsys):
    encode(keys, csv_file, tmp_path / "out")
    main(["keygen", "--out", str(tmp_path / "other")])
    batch = tmp_path / "out" / "gateway-1-000001.oxp"
    assert main(["oxp", "inspect", str(batch), "--pub", str(tmp_path / "other" / "device.pub")]) == 1
    assert "bad_signature" in capsys.readouterr().err


def test_inspect_without_a_public_key_decodes_but_exits_3_unverified(keys, csv_file, tmp_path, capsys):
    encode(keys, csv_file, tmp_path / "out")
    capsys.readouterr()
    assert main(["oxp", "inspect", str(tmp_path / "out" / "gateway-1-000001.oxp"), "--json"]) == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is False and doc["header"]["seq"] == 1


def test_inspect_exits_2_for_a_missing_file(tmp_path, capsys):
    assert main(["oxp", "inspect", str(tmp_path / "nothing.oxp")]) == 2
    assert "nothing.oxp" in capsys.readouterr().err


def test_senml_prints_rfc_8428_records_with_base_name_and_times(keys, csv_file, tmp_path, capsys):
    encode(keys, csv_file, tmp_path / "out")
    capsys.readouterr()
    assert main(["oxp", "senml", str(tmp_path / "out" / "gateway-1-000001.oxp"), "--pub", str(keys / "device.pub")]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["bn"] == "urn:dev:ocn:gateway:"
    assert records[0]["bt"] == 1767225600.0
    pm = [r for r in records if r["n"] == "pm-1/pm2_5"]
    assert [(r.get("t", 0), r["v"], r["u"]) for r in pm] == [(0, 12.3, "ug/m3"), (150.0, 12.5, "ug/m3")]
    assert {"n": "door-1/open", "vb": True, "t": 60.5} in records


def test_the_installed_command_runs_keygen(tmp_path):
    exe = Path(sys.executable).with_name("ocn-edge")
    result = subprocess.run([str(exe), "keygen", "--out", str(tmp_path / "k")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "key id" in result.stdout
