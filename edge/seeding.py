"""What `ocn-edge image seed` puts on a card: one device's cloud-init seed, checked whole before anything is written.

A card is seeded on a workstation and boots on a pole with nobody at a keyboard, so every input is
checked first (the hub URL, the token, the Wi-Fi passphrase, the device id, the position) and the
gateway config built for the device must load as `ocn-edge check` would load it. The seed is three
NoCloud files for the FAT boot partition:

  user-data       #cloud-config: the hostname, and write_files for /etc/ocn-edge/gateway.toml,
                  policy.toml, hub-ca.pem (if any) and enrol-token (0600, owner ocn-edge)
  meta-data       a fresh instance-id, so cloud-init treats the card as a new instance
  network-config  netplan version 2: Ethernet (DHCP), and Wi-Fi or a cellular modem if asked

The YAML documents are written as JSON: JSON is YAML 1.2, cloud-init and netplan read it after the
`#cloud-config` line, and the gateway needs no YAML library. No device key is written: the key is
created on the device at first boot (`ocn-edge enrol --first-boot`) and never leaves it.
"""

from __future__ import annotations

import csv
import json
import math
import re
import secrets
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from edge.enrol import TOKEN_FILE
from edge.protocol import DEVICE_ID_RE
from edge.starter import starter_files
from edge.util.files import toml_problem

__all__ = [
    "CONFIG_DIR",
    "CSV_FIELDS",
    "DeviceSeed",
    "SeedError",
    "Wifi",
    "Cellular",
    "build_seed",
    "read_batch",
    "validate",
]

CONFIG_DIR = "/etc/ocn-edge"
SERVICE_USER = "ocn-edge"
CSV_FIELDS = ("device_id", "site", "latitude", "longitude", "wifi_ssid", "wifi_passphrase", "token", "hub")

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class SeedError(Exception):
    """Inputs a card cannot be seeded with: one line per problem, each naming where, the field, the value and what is accepted."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Wifi:
    ssid: str
    passphrase: str
    country: str = ""  # regulatory domain, e.g. "GB"; the Pi keeps Wi-Fi off until one is set


@dataclass(frozen=True, slots=True)
class Cellular:
    apn: str
    pin: str = ""
    username: str = ""
    password: str = ""


@dataclass(frozen=True, slots=True)
class DeviceSeed:
    """Everything one card gets; ``where`` names the input ("devices.csv line 4", "the command line") in errors."""

    device_id: str
    hub: str
    token: str
    site: str = ""
    latitude: float | None = None
    longitude: float | None = None
    wifi: Wifi | None = None
    cellular: Cellular | None = None
    ca_pem: str = ""
    config_template: str = ""  # a gateway.toml to start from; "" is the one `ocn-edge init` writes
    policy: str = ""  # the policy.toml text; "" is the one `ocn-edge init` writes
    where: str = "the command line"
    fields: Mapping[str, str] = field(default_factory=dict)  # seed field -> the name the input used for it
    problems: tuple[str, ...] = ()  # found while reading the input (a cell that is not a number), reported with the rest


def read_batch(path: Path, defaults: DeviceSeed) -> list[DeviceSeed]:
    """One DeviceSeed per row of a devices CSV (header row names the columns); empty cells take ``defaults``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SeedError([f"{path}: not UTF-8 text; save the list as CSV UTF-8"]) from None
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    problems = []
    unknown = [name for name in header if name not in CSV_FIELDS]
    if unknown:
        problems.append(f"{path} line 1: unknown column(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(CSV_FIELDS)}")
    if "device_id" not in header:
        problems.append(f"{path} line 1: no device_id column; the header must name the columns, e.g. {','.join(CSV_FIELDS[:4])}")
    if problems:
        raise SeedError(problems)
    seeds = []
    for row in reader:
        where = f"{path} line {reader.line_num}"
        cell = {name: (row.get(name) or "").strip() for name in CSV_FIELDS}
        if not any(cell.values()):
            continue
        seed = replace(
            defaults,
            device_id=cell["device_id"],
            site=cell["site"] or defaults.site,
            token=cell["token"] or defaults.token,
            hub=cell["hub"] or defaults.hub,
            where=where,
            fields={name: name for name in CSV_FIELDS},
        )
        lat, lon, bad = _position(cell["latitude"], cell["longitude"])
        seed = replace(seed, latitude=lat if cell["latitude"] else defaults.latitude,
                       longitude=lon if cell["longitude"] else defaults.longitude,
                       problems=tuple(f"{where}, field {name}: {message}" for name, message in bad))
        if cell["wifi_ssid"] or cell["wifi_passphrase"]:
            seed = replace(seed, wifi=Wifi(cell["wifi_ssid"], cell["wifi_passphrase"], defaults.wifi.country if defaults.wifi else ""))
        seeds.append(seed)
    return seeds


def _position(lat: str, lon: str) -> tuple[float | None, float | None, list[tuple[str, str]]]:
    out: list[float | None] = []
    bad = []
    for name, text, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        if not text:
            out.append(None)
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or abs(value) > limit:
            bad.append((name, f"{text!r} is not a {name}; expected decimal degrees between -{limit:g} and {limit:g}"))
            out.append(None)
        else:
            out.append(value)
    return out[0], out[1], bad


def validate(seeds: Iterable[DeviceSeed]) -> list[tuple[DeviceSeed, dict[str, bytes]]]:
    """Check every seed and build its files; raise SeedError listing every problem of every seed, or return all files."""
    problems: list[str] = []
    built = []
    first_seen: dict[str, str] = {}
    for seed in seeds:
        mine = list(seed.problems) + _problems(seed, position_given=not seed.problems)
        if seed.device_id in first_seen:
            mine.append(_at(seed, "device_id", f"{seed.device_id!r} is seeded twice (first at {first_seen[seed.device_id]}); "
                                               "every card needs its own device id"))
        first_seen.setdefault(seed.device_id, seed.where)
        if not mine:
            try:
                built.append((seed, build_seed(seed)))
            except SeedError as err:
                mine += err.problems
        problems += mine
    if problems:
        raise SeedError(problems)
    return built


def _at(seed: DeviceSeed, name: str, message: str) -> str:
    return f"{seed.where}, {'field' if seed.fields else 'option'} {seed.fields.get(name) or '--' + name.replace('_', '-')}: {message}"


def _problems(seed: DeviceSeed, *, position_given: bool = True) -> list[str]:
    out = []
    if not DEVICE_ID_RE.match(seed.device_id):
        out.append(_at(seed, "device_id", f"{seed.device_id!r} is not a device id; expected 1 to 64 of a-z, 0-9 and '-', "
                                          "starting and ending with a letter or digit, e.g. pole-0042"))
    url = urlsplit(seed.hub)
    if url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment or any(c.isspace() for c in seed.hub):
        out.append(_at(seed, "hub", f"{seed.hub!r} is not a hub URL; expected https://host[:port][/path], e.g. https://hub.city.example/"))
    if not seed.token.strip():
        out.append(_at(seed, "token", "missing; give the enrolment token city IT created (`ocn-edge hub token create --uses N`)"))
    elif any(c.isspace() or not c.isprintable() for c in seed.token.strip()):
        out.append(_at(seed, "token", "contains spaces or control characters; paste the token exactly as city IT gave it"))
    if position_given and (seed.latitude is None) != (seed.longitude is None):
        missing = "longitude" if seed.longitude is None else "latitude"
        out.append(_at(seed, missing, "missing; give both latitude and longitude, or neither"))
    if seed.wifi is not None:
        out += _wifi_problems(seed, seed.wifi)
    if seed.wifi is not None and seed.cellular is not None:
        out.append(_at(seed, "apn", "a card gets Wi-Fi or a cellular modem, not both; leave out one of them"))
    if seed.cellular is not None and not seed.cellular.apn.strip():
        out.append(_at(seed, "apn", "missing; the cellular provider's access point name, e.g. internet"))
    if seed.ca_pem and "-----BEGIN CERTIFICATE-----" not in seed.ca_pem:
        out.append(_at(seed, "ca", "is not a PEM certificate bundle; expected text with -----BEGIN CERTIFICATE-----"))
    return out


def _wifi_problems(seed: DeviceSeed, wifi: Wifi) -> list[str]:
    out = []
    if not 1 <= len(wifi.ssid.encode("utf-8")) <= 32:
        out.append(_at(seed, "wifi_ssid", f"{wifi.ssid!r}: a Wi-Fi network name is 1 to 32 bytes"))
    passphrase = wifi.passphrase
    if not (_HEX64.match(passphrase) or (8 <= len(passphrase) <= 63 and passphrase.isascii() and passphrase.isprintable())):
        # the passphrase itself is a secret: say how long it is, never what it is
        out.append(_at(seed, "wifi_passphrase", f"a passphrase of {len(passphrase)} characters; WPA2 needs 8 to 63 printable "
                                                 "ASCII characters, or 64 hex digits"))
    if wifi.country and not _COUNTRY.match(wifi.country):
        out.append(_at(seed, "wifi_country", f"{wifi.country!r} is not a country code; expected two capital letters, e.g. GB"))
    return out


def build_seed(seed: DeviceSeed) -> dict[str, bytes]:
    """The three NoCloud files for a valid seed; the gateway config inside is loaded as `ocn-edge check` would."""
    starter = starter_files()
    config = seed.config_template or starter["gateway.toml"]
    settings: list[tuple[str, str, object]] = [
        ("gateway", "id", seed.device_id),
        ("uplink", "hub", seed.hub),
        ("privacy", "policy", "policy.toml"),
        ("uplink", "ca", "hub-ca.pem" if seed.ca_pem else ""),
    ]
    if seed.site:
        settings.append(("gateway", "site", seed.site))
    if seed.latitude is not None and seed.longitude is not None:
        settings += [("gateway", "latitude", seed.latitude), ("gateway", "longitude", seed.longitude)]
    for section, key, value in settings:
        config = set_setting(config, section, key, value)
    files = {"gateway.toml": config, "policy.toml": seed.policy or starter["policy.toml"]}
    if seed.ca_pem:
        files["hub-ca.pem"] = seed.ca_pem
    _check_config(seed, files)
    write_files = [
        {"path": f"{CONFIG_DIR}/{name}", "content": text, "owner": "root:root", "permissions": "0644"}
        for name, text in files.items()
    ]
    write_files.append({"path": f"{CONFIG_DIR}/{TOKEN_FILE}", "content": seed.token.strip() + "\n",
                        "owner": f"{SERVICE_USER}:{SERVICE_USER}", "permissions": "0600"})
    user_data = {"hostname": seed.device_id, "manage_etc_hosts": True, "write_files": write_files}
    meta_data = {"instance-id": f"ocn-{seed.device_id}-{secrets.token_hex(8)}", "local-hostname": seed.device_id}
    return {
        "user-data": ("#cloud-config\n" + _json(user_data)).encode("utf-8"),
        "meta-data": _json(meta_data).encode("utf-8"),
        "network-config": _json(network_config(seed)).encode("utf-8"),
    }


def network_config(seed: DeviceSeed) -> dict[str, object]:
    """Netplan version 2: wired Ethernet by DHCP always, plus the Wi-Fi network or the cellular modem."""
    network: dict[str, object] = {
        "version": 2,
        "renderer": "NetworkManager",  # what Raspberry Pi OS runs; netplan's modems section needs it
        "ethernets": {"eth0": {"dhcp4": True, "dhcp6": True, "optional": True}},
    }
    if seed.wifi is not None:
        wlan: dict[str, object] = {
            "dhcp4": True,
            "dhcp6": True,
            "optional": True,
            "access-points": {seed.wifi.ssid: {"password": seed.wifi.passphrase}},
        }
        if seed.wifi.country:
            wlan["regulatory-domain"] = seed.wifi.country
        network["wifis"] = {"wlan0": wlan}
    if seed.cellular is not None:
        modem: dict[str, object] = {"apn": seed.cellular.apn, "dhcp4": True, "optional": True}
        for key in ("pin", "username", "password"):
            if getattr(seed.cellular, key):
                modem[key] = getattr(seed.cellular, key)
        network["modems"] = {"cdc-wdm0": modem}
    return {"network": network}


def set_setting(text: str, section: str, key: str, value: object) -> str:
    """``text`` with ``key`` in ``[section]`` set to ``value``, comments and layout kept; added after the header if absent."""
    rendered = json.dumps(value)  # a JSON string or number is a valid TOML value
    lines = text.splitlines(keepends=True)
    header = re.compile(r"^\s*\[\s*" + re.escape(section) + r"\s*\]\s*(#.*)?$")
    setting = re.compile(r"^(\s*" + re.escape(key) + r"\s*=\s*)(\"(?:[^\"\\]|\\.)*\"|[^#\s]+)(.*)$", re.DOTALL)
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return text.rstrip("\n") + f"\n\n[{section}]\n{key} = {rendered}\n"
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        match = setting.match(lines[i])
        if match:
            rest = match.group(3)
            if rest.lstrip().startswith("#"):  # keep the comment in its column where the value leaves room
                rest = " " * max(2, len(match.group(2)) + len(rest) - len(rest.lstrip()) - len(rendered)) + rest.lstrip()
            lines[i] = match.group(1) + rendered + rest
            return "".join(lines)
    lines.insert(start + 1, f"{key} = {rendered}\n")
    return "".join(lines)


def _check_config(seed: DeviceSeed, files: Mapping[str, str]) -> None:
    """Load the config as the gateway will, from a scratch copy of /etc/ocn-edge; problems become SeedErrors."""
    from edge.config import ConfigError, load_config

    try:
        tomllib.loads(files["gateway.toml"])
    except tomllib.TOMLDecodeError as exc:
        raise SeedError([toml_problem("--config (the gateway config template)", exc)]) from None
    with tempfile.TemporaryDirectory(prefix="ocn-seed-check-") as scratch:
        for name, text in files.items():
            (Path(scratch) / name).write_text(text, encoding="utf-8")
        try:
            load_config(Path(scratch) / "gateway.toml")
        except ConfigError as err:
            raise SeedError([f"{seed.where}: the gateway config for {seed.device_id!r} would not load: "
                             + problem.replace(scratch + "/", "") for problem in err.problems]) from None


def _json(document: object) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
