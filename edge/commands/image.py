"""`ocn-edge image seed`: give a card (a mounted boot partition or a .img file) one device's identity and hub.

Every input is checked, and every file built, before anything is written; see edge/seeding.py for
what goes on the card and edge/fatimage.py for writing into an image without mounting it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from edge.commands import CommandError, shows_usage
from edge.fatimage import FatError, write_files
from edge.seeding import Cellular, DeviceSeed, SeedError, Wifi, read_batch, validate

__all__ = ["register"]

EXIT_OK = 0
EXIT_INVALID = 2

DESCRIPTION = """\
Seed a card for one gateway, on a workstation, before it goes to the pole:

  ocn-edge image seed /media/$USER/bootfs --device-id pole-0042 \\
      --hub https://hub.city.example/ --token ocnenrol_... \\
      --site "King St W & Spadina Ave" --latitude 43.6452 --longitude -79.3957 \\
      --wifi-ssid CityIoT --wifi-passphrase '...' --wifi-country CA

TARGET is the card's mounted boot partition (a folder) or a disk image (.img),
written in place without mounting it. The boot partition gets cloud-init's
user-data (hostname, /etc/ocn-edge/gateway.toml, policy.toml, the hub CA and
the enrolment token), meta-data and network-config (Ethernet by DHCP, plus
Wi-Fi or a cellular modem). No device key is written: the gateway makes its
own at first boot and enrols with the token (ocn-edge enrol --first-boot).

Many cards from one list (a header row, then one row per device; columns
device_id, site, latitude, longitude, wifi_ssid, wifi_passphrase, token, hub;
an empty cell takes the option's value):

  ocn-edge image seed --batch devices.csv --out cards/ [--image raspios.img] --hub ... --token ...

writes cards/<device_id>/ (the files for a boot partition) or, with --image,
cards/<device_id>.img (a copy of the image, seeded). Everything is checked
first; on any problem nothing is written and every problem is listed.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    image = sub.add_parser("image", help="prepare SD cards and disk images for gateways (seed)",
                           description="Prepare cards and disk images for gateways.")
    image_sub = image.add_subparsers(title="commands", metavar="COMMAND")
    seed = image_sub.add_parser("seed", help="write one device's identity, hub and network onto a card or image",
                                description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    seed.add_argument("target", metavar="TARGET", nargs="?", help="a mounted boot partition (folder) or a .img file")
    seed.add_argument("--batch", metavar="CSV", help="seed one card per row of this devices list (needs --out)")
    seed.add_argument("--out", metavar="DIR", help="with --batch: where each device's folder or image goes")
    seed.add_argument("--image", metavar="IMG", help="with --batch: the image each device gets a seeded copy of")
    seed.add_argument("--device-id", default="", help="the device id, as the hub will know it, e.g. pole-0042")
    seed.add_argument("--hub", default="", help="the hub's URL, e.g. https://hub.city.example/")
    seed.add_argument("--token", default="", help="the enrolment token from city IT ('-' reads it from stdin)")
    seed.add_argument("--ca", metavar="PEM", help="the city CA bundle, if the hub's certificate is not publicly trusted")
    seed.add_argument("--site", default="", help="where the pole stands, as the fleet dashboard shows it")
    seed.add_argument("--latitude", default="", help="the pole's latitude, decimal degrees (public)")
    seed.add_argument("--longitude", default="", help="the pole's longitude, decimal degrees (public)")
    seed.add_argument("--wifi-ssid", default="", help="the Wi-Fi network to join")
    seed.add_argument("--wifi-passphrase", default="", help="its WPA2 passphrase (8..63 characters, or 64 hex digits)")
    seed.add_argument("--wifi-country", default="", help="the Wi-Fi regulatory country, two letters, e.g. GB")
    seed.add_argument("--apn", default="", help="a cellular modem's access point name (instead of Wi-Fi)")
    seed.add_argument("--sim-pin", default="", help="the SIM's PIN, if it has one")
    seed.add_argument("--config", metavar="TOML", help="a gateway.toml to start from (default: the one `ocn-edge init` writes)")
    seed.add_argument("--policy", metavar="TOML", help="the city's policy.toml (default: the demo policy `ocn-edge init` writes)")
    seed.set_defaults(func=run_seed)
    shows_usage(image)


def run_seed(args: argparse.Namespace) -> int:
    defaults = _defaults(args)
    try:
        if args.batch:
            if args.target or not args.out:
                raise CommandError("--batch writes into --out DIR, one folder or image per device; give --out and no TARGET")
            seeds = read_batch(Path(args.batch), defaults)
            if not seeds:
                raise CommandError(f"{args.batch}: no devices listed; expected a header row and one row per device")
            built = validate(seeds)
            out = Path(args.out)
            base = Path(args.image) if args.image else None
            if base is not None and not base.is_file():
                raise CommandError(f"--image {base}: no such image file")
            suffix = ".img" if base else ""
            there = [f"{out / (seed.device_id + suffix)} already exists" for seed, _ in built if (out / (seed.device_id + suffix)).exists()]
            if there:
                raise SeedError([*there, "nothing written; move them away or choose another --out"])
            out.mkdir(parents=True, exist_ok=True)
            progress = _progress(len(built))
            for done, (seed, files) in enumerate(built, start=1):
                target = out / (seed.device_id + suffix)
                if base is not None:
                    _seed_image_copy(base, target, files)
                else:
                    _seed_new_folder(target, files)
                progress(done, f"{seed.device_id} -> {target}")
            return EXIT_OK
        if not args.target:
            raise CommandError("give TARGET (a mounted boot partition or a .img file), or --batch CSV --out DIR")
        if args.out or args.image:
            raise CommandError("--out and --image go with --batch; for one card give TARGET only")
        ((seed, files),) = validate([defaults])
        target = Path(args.target)
        if target.is_dir():
            _seed_folder(target, files)
        elif target.is_file():
            with open(target, "r+b") as image:
                partition = write_files(image, files)
            print(f"seeded {seed.device_id} into {target}, partition {partition.number} (offset {partition.offset} bytes)")
            return EXIT_OK
        else:
            raise CommandError(f"{target}: no such folder or image; expected the card's mounted boot partition or a .img file")
        print(f"seeded {seed.device_id} into {target}: {', '.join(files)}")
        return EXIT_OK
    except (SeedError, FatError) as err:
        for problem in getattr(err, "problems", [str(err)]):
            print(f"ocn-edge image seed: {problem}", file=sys.stderr)
        return EXIT_INVALID


def _defaults(args: argparse.Namespace) -> DeviceSeed:
    """The seed the options describe; with --batch, what an empty CSV cell falls back to."""
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    problems = []
    position: list[float | None] = []
    for name in ("latitude", "longitude"):
        text = getattr(args, name)
        try:
            position.append(float(text) if text else None)
        except ValueError:
            problems.append(f"the command line, option --{name}: {text!r} is not a number; expected decimal degrees")
    if problems:
        raise CommandError("\n".join(problems))
    for name, limit in (("latitude", 90), ("longitude", 180)):
        value = position[0 if name == "latitude" else 1]
        if value is not None and not -limit <= value <= limit:
            raise CommandError(f"the command line, option --{name}: {value!r} is out of range; expected -{limit} to {limit}")
    wifi = Wifi(args.wifi_ssid, args.wifi_passphrase, args.wifi_country) if (args.wifi_ssid or args.wifi_passphrase) else None
    return DeviceSeed(
        device_id=args.device_id,
        hub=args.hub,
        token=token,
        site=args.site,
        latitude=position[0],
        longitude=position[1],
        wifi=wifi,
        cellular=Cellular(args.apn, pin=args.sim_pin) if (args.apn or args.sim_pin) else None,
        ca_pem=_read(args.ca, "--ca"),
        config_template=_read(args.config, "--config"),
        policy=_read(args.policy, "--policy"),
    )


def _read(path: str | None, option: str) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CommandError(f"{option} {path}: no such file") from None
    except UnicodeDecodeError:
        raise CommandError(f"{option} {path}: not UTF-8 text") from None


def _seed_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Into a mounted boot partition: every file written aside first, then each renamed over its old self."""
    written = []
    try:
        for name, data in files.items():
            tmp = folder / f".{name}.tmp"
            written.append(tmp)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name in files:
            os.replace(folder / f".{name}.tmp", folder / name)
    finally:
        for tmp in written:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _seed_new_folder(target: Path, files: dict[str, bytes]) -> None:
    scratch = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        _seed_folder(scratch, files)
        scratch.rename(target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _seed_image_copy(base: Path, target: Path, files: dict[str, bytes]) -> None:
    scratch = target.with_name(f".{target.name}.tmp")
    try:
        shutil.copyfile(base, scratch)
        with open(scratch, "r+b") as image:
            write_files(image, files)
        scratch.rename(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
        raise


def _progress(total: int) -> Callable[[int, str], None]:
    """A bar redrawn in place on a terminal; one plain line per device otherwise (a log, a pipe)."""
    if not sys.stderr.isatty():
        return lambda done, what: print(f"seeded {done}/{total}: {what}")
    width = 30

    def draw(done: int, what: str) -> None:
        filled = width * done // total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what[:40]:<40}")
        if done == total:
            sys.stderr.write("\n")
            print(f"seeded {total} devices")
        sys.stderr.flush()

    return draw
