"""`ocn-edge image seed`: into an MBR disk image with a FAT boot partition made by dosfstools, read back with mtools,
checked by `fsck.fat -n` and `cloud-init schema`; into folders from a devices list; and refused whole on bad input."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from tests.helpers.tools import require_tool

HUB = "https://hub.city.example/"
TOKEN = "ocnenrol_fleet-token-for-tests"
PART_START = 8192  # sectors: where Raspberry Pi OS images start their boot partition (4 MiB)
PART_BYTES = 40 * 1024 * 1024  # with 512-byte clusters, enough of them to be FAT32


def make_disk(tmp_path: Path, *, fat: int = 32) -> Path:
    """An MBR disk image whose first partition is a freshly formatted FAT (mkfs.fat), type 0x0C or 0x0E."""
    mkfs = require_tool("mkfs.fat", package="dosfstools")
    part = tmp_path / "part.img"
    with open(part, "wb") as f:
        f.truncate(PART_BYTES)
    clusters = ["-s", "1"] if fat == 32 else []
    subprocess.run([mkfs, "-F", str(fat), *clusters, "-n", "BOOTFS", str(part)], check=True, capture_output=True)
    disk = tmp_path / "disk.img"
    mbr = bytearray(512)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\0\0\0", 0x0C if fat == 32 else 0x0E, b"\0\0\0", PART_START, PART_BYTES // 512)
    struct.pack_into("<B3sB3sII", mbr, 462, 0, b"\0\0\0", 0x83, b"\0\0\0", PART_START + PART_BYTES // 512, 2048)
    mbr[510:512] = b"\x55\xaa"
    with open(disk, "wb") as f:
        f.write(mbr)
        f.seek(PART_START * 512)
        f.write(part.read_bytes())
        f.truncate(PART_START * 512 + PART_BYTES + 2048 * 512)
    part.unlink()
    return disk


def mtype(disk: Path, name: str) -> bytes:
    tool = require_tool("mtype", package="mtools")
    return subprocess.run([tool, "-i", f"{disk}@@{PART_START * 512}", f"::/{name}"], check=True, capture_output=True).stdout


def fsck(disk: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`fsck.fat -n` on the boot partition cut out of the image."""
    tool = require_tool("fsck.fat", package="dosfstools")
    part = tmp_path / "extracted.img"
    with open(disk, "rb") as src:
        src.seek(PART_START * 512)
        part.write_bytes(src.read(PART_BYTES))
    return subprocess.run([tool, "-n", str(part)], capture_output=True, text=True)


def cloud_config(user_data: bytes) -> dict:
    header, _, body = user_data.decode("utf-8").partition("\n")
    assert header == "#cloud-config"
    return json.loads(body)


def seed_args(*extra: str) -> list[str]:
    return ["image", "seed", *extra, "--hub", HUB, "--token", TOKEN]


@pytest.mark.parametrize("fat", [32, 16])
def test_seeding_an_image_writes_files_mtools_reads_and_fsck_finds_clean(tmp_path: Path, fat: int) -> None:
    disk = make_disk(tmp_path, fat=fat)
    args = seed_args(str(disk), "--device-id", "pole-0042", "--site", "King St W & Spadina Ave",
                     "--latitude", "43.6452", "--longitude", "-79.3957",
                     "--wifi-ssid", "CityIoT", "--wifi-passphrase", "correct horse battery", "--wifi-country", "CA")
    assert main(args) == 0
    first = cloud_config(mtype(disk, "user-data"))
    files = {f["path"]: f for f in first["write_files"]}
    assert first["hostname"] == "pole-0042"
    assert 'id = "pole-0042"' in files["/etc/ocn-edge/gateway.toml"]["content"]
    assert 'site = "King St W & Spadina Ave"' in files["/etc/ocn-edge/gateway.toml"]["content"]
    token = files["/etc/ocn-edge/enrol-token"]
    assert (token["content"], token["permissions"], token["owner"]) == (TOKEN + "\n", "0600", "ocn-edge:ocn-edge")
    assert not any("PRIVATE KEY" in f["content"] for f in first["write_files"])  # the key is made on the device
    meta = json.loads(mtype(disk, "meta-data"))
    wifi = json.loads(mtype(disk, "network-config"))["network"]["wifis"]["wlan0"]
    assert wifi["access-points"] == {"CityIoT": {"password": "correct horse battery"}}
    checked = fsck(disk, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # Seeding the same card again replaces the files (a new instance) and leaves the file system clean.
    assert main(seed_args(str(disk), "--device-id", "pole-0043")) == 0
    assert cloud_config(mtype(disk, "user-data"))["hostname"] == "pole-0043"
    assert json.loads(mtype(disk, "meta-data"))["instance-id"] != meta["instance-id"]
    mdir = subprocess.run([require_tool("mdir", package="mtools"), "-i", f"{disk}@@{PART_START * 512}", "-b", "::/"],
                          check=True, capture_output=True, text=True).stdout.split()
    assert sorted(mdir) == ["::/meta-data", "::/network-config", "::/user-data"]
    checked = fsck(disk, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_user_data_is_valid_cloud_config(tmp_path: Path) -> None:
    cloud_init = require_tool("cloud-init")
    assert main(seed_args(str(tmp_path), "--device-id", "pole-0042", "--apn", "internet", "--sim-pin", "1234")) == 0
    valid = subprocess.run([cloud_init, "schema", "--config-file", str(tmp_path / "user-data")], capture_output=True, text=True)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    # the validator is not a rubber stamp: a write_files entry without its path is refused
    broken = tmp_path / "broken"
    broken.write_text("#cloud-config\n" + json.dumps({"write_files": [{"content": "x"}]}))
    refused = subprocess.run([cloud_init, "schema", "--config-file", str(broken)], capture_output=True, text=True)
    assert refused.returncode != 0


def test_the_seeded_gateway_config_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "card"
    card.mkdir()
    assert main(seed_args(str(card), "--device-id", "pole-0042", "--latitude", "43.6452", "--longitude", "-79.3957")) == 0
    etc = tmp_path / "etc"
    etc.mkdir()
    for f in cloud_config((card / "user-data").read_bytes())["write_files"]:
        (etc / Path(f["path"]).name).write_text(f["content"])
    capsys.readouterr()
    assert main(["check", str(etc / "gateway.toml")]) == 0
    assert "pole-0042" in capsys.readouterr().out


# netplan v2 (netplan.io reference, "YAML configuration"): the keys a network-config may use where we write them
NETPLAN_NETWORK = {"version", "renderer", "ethernets", "wifis", "modems", "bridges", "bonds", "vlans", "tunnels"}
NETPLAN_DEVICE = {"dhcp4", "dhcp6", "optional", "addresses", "routes", "nameservers", "match", "set-name", "mtu", "renderer"}
NETPLAN_WIFI = NETPLAN_DEVICE | {"access-points", "regulatory-domain", "wakeonwlan"}
NETPLAN_ACCESS_POINT = {"password", "mode", "band", "channel", "bssid", "hidden", "auth"}
NETPLAN_MODEM = NETPLAN_DEVICE | {"apn", "auto-config", "device-id", "network-id", "number", "password", "pin", "sim-id",
                                  "sim-operator-id", "username"}


def check_netplan(document: dict) -> None:
    assert set(document) == {"network"}
    network = document["network"]
    assert network["version"] == 2 and set(network) <= NETPLAN_NETWORK
    assert network["renderer"] in ("networkd", "NetworkManager")
    for kind, allowed in (("ethernets", NETPLAN_DEVICE), ("wifis", NETPLAN_WIFI), ("modems", NETPLAN_MODEM)):
        for name, device in network.get(kind, {}).items():
            assert set(device) <= allowed, (kind, name, set(device) - allowed)
            for key in ("dhcp4", "dhcp6", "optional"):
                assert isinstance(device.get(key, True), bool)
            for ssid, ap in device.get("access-points", {}).items():
                assert isinstance(ssid, str) and set(ap) <= NETPLAN_ACCESS_POINT


@pytest.mark.parametrize(
    ("extra", "kinds"),
    [
        ([], {"ethernets"}),
        (["--wifi-ssid", "CityIoT", "--wifi-passphrase", "ab" * 32, "--wifi-country", "GB"], {"ethernets", "wifis"}),
        (["--apn", "internet", "--sim-pin", "1234"], {"ethernets", "modems"}),
    ],
)
def test_network_config_uses_netplan_v2_keys(tmp_path: Path, extra: list[str], kinds: set[str]) -> None:
    assert main(seed_args(str(tmp_path), "--device-id", "pole-0042", *extra)) == 0
    document = json.loads((tmp_path / "network-config").read_text())
    check_netplan(document)
    assert {k for k in document["network"] if k in ("ethernets", "wifis", "modems")} == kinds


def test_batch_seeds_one_folder_per_device_with_plain_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "device_id,site,latitude,longitude,wifi_ssid,wifi_passphrase\n"
        "pole-0001,Main St & 1st Ave,43.6500,-79.3800,CityIoT,passphrase-one\n"
        "pole-0002,Main St & 2nd Ave,43.6510,-79.3810,,\n"
        "pole-0003,Main St & 3rd Ave,,,CityIoT,passphrase-three\n"
    )
    out = tmp_path / "cards"
    assert main(["image", "seed", "--batch", str(devices), "--out", str(out), "--hub", HUB, "--token", TOKEN]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["pole-0001", "pole-0002", "pole-0003"]
    instances = {json.loads((out / d / "meta-data").read_text())["instance-id"] for d in ("pole-0001", "pole-0002", "pole-0003")}
    assert len(instances) == 3
    assert "wifis" not in json.loads((out / "pole-0002" / "network-config").read_text())["network"]
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"seeded {n}/3: pole-000{n} -> {out / f'pole-000{n}'}" for n in (1, 2, 3)]


def test_batch_with_an_image_gives_each_device_a_seeded_copy(tmp_path: Path) -> None:
    disk = make_disk(tmp_path)
    devices = tmp_path / "devices.csv"
    devices.write_text("device_id,site\npole-0001,North\npole-0002,South\n")
    out = tmp_path / "images"
    assert main(["image", "seed", "--batch", str(devices), "--out", str(out), "--image", str(disk), "--hub", HUB, "--token", TOKEN]) == 0
    for device in ("pole-0001", "pole-0002"):
        assert cloud_config(mtype(out / f"{device}.img", "user-data"))["hostname"] == device
    assert subprocess.run([require_tool("mdir", package="mtools"), "-i", f"{disk}@@{PART_START * 512}", "-b", "::/"],
                          capture_output=True, text=True).stdout == ""  # the base image is left as it was


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--hub", "hub.city.example"], "option --hub: 'hub.city.example' is not a hub URL"),
        (["--hub", "ftp://hub.city.example/"], "option --hub: 'ftp://hub.city.example/' is not a hub URL"),
        (["--token", ""], "option --token: missing"),
        (["--wifi-ssid", "CityIoT", "--wifi-passphrase", "short"], "option --wifi-passphrase: a passphrase of 5 characters"),
        (["--wifi-ssid", "CityIoT", "--wifi-passphrase", "x" * 64], "option --wifi-passphrase: a passphrase of 64 characters"),
        (["--device-id", "Pole_42"], "option --device-id: 'Pole_42' is not a device id"),
        (["--latitude", "43.6"], "option --longitude: missing"),
        (["--latitude", "97", "--longitude", "1"], "option --latitude: 97.0 is out of range"),
    ],
)
def test_bad_input_is_refused_and_the_image_is_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], expected: str
) -> None:
    disk = make_disk(tmp_path)
    before = digest(disk)
    assert main(["image", "seed", str(disk), "--device-id", "pole-0042", "--hub", HUB, "--token", TOKEN, *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "short" not in err.replace("passphrase of", "")  # a passphrase is never echoed
    assert digest(disk) == before


def test_a_bad_devices_list_names_each_line_and_field_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text(
        "device_id,site,latitude,longitude,wifi_ssid,wifi_passphrase,token\n"
        "pole-0001,A,43.65,-79.38,CityIoT,long-enough-passphrase,\n"
        "pole-0002,B,43.65,-79.38,CityIoT,short,\n"
        "pole-0001,C,43.65,-79.38,,,\n"
        "pole-0004,D,north,-79.38,,,\n"
    )
    out = tmp_path / "cards"
    assert main(["image", "seed", "--batch", str(devices), "--out", str(out), "--hub", HUB]) == 2
    err = capsys.readouterr().err
    assert f"{devices} line 3, field wifi_passphrase: a passphrase of 5 characters" in err
    assert f"{devices} line 4, field device_id: 'pole-0001' is seeded twice (first at {devices} line 2)" in err
    assert f"{devices} line 5, field latitude: 'north' is not a latitude" in err
    assert f"{devices} line 2, field token: missing" in err  # no --token and an empty cell
    assert not out.exists()


def test_batch_on_a_terminal_redraws_one_progress_bar(tmp_path: Path) -> None:
    devices = tmp_path / "devices.csv"
    devices.write_text("device_id\npole-0001\npole-0002\npole-0003\n")
    terminal, child_end = os.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "edge.cli", "image", "seed", "--batch", str(devices), "--out", str(tmp_path / "cards"),
                               "--hub", HUB, "--token", TOKEN], stderr=child_end, stdout=subprocess.PIPE, text=True, timeout=120)
        os.close(child_end)
        drawn = b""
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the terminal's other end is closed and everything is read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(terminal)
    assert done.returncode == 0
    frames = [frame for frame in drawn.decode().split("\r") if frame.strip()]  # the terminal ends the line with \r\n
    assert [frame.split()[1] for frame in frames] == ["1/3", "2/3", "3/3"]
    assert frames[0].startswith("[" + "#" * 10 + "." * 20 + "]") and frames[2].startswith("[" + "#" * 30 + "]")
    assert done.stdout == "seeded 3 devices\n"


def test_a_partition_not_unmounted_cleanly_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = make_disk(tmp_path)
    with open(disk, "r+b") as f:  # clear the "clean shutdown" bit of FAT entry 1, as a card pulled while mounted has it
        f.seek(PART_START * 512 + 14)
        (reserved,) = struct.unpack("<H", f.read(2))
        f.seek(PART_START * 512 + reserved * 512 + 4)
        (entry,) = struct.unpack("<I", f.read(4))
        f.seek(-4, 1)
        f.write(struct.pack("<I", entry & ~0x08000000))
    before = digest(disk)
    assert main(seed_args(str(disk), "--device-id", "pole-0042")) == 2
    assert "partition 1 was not unmounted cleanly" in capsys.readouterr().err
    assert digest(disk) == before


def test_a_compressed_image_is_refused_with_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packed = tmp_path / "raspios.img.xz"
    packed.write_bytes(b"\xfd7zXZ\x00" + bytes(2048))
    assert main(seed_args(str(packed), "--device-id", "pole-0042")) == 2
    assert "unxz an .img.xz first" in capsys.readouterr().err
