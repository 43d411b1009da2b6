"""Writes files into the root directory of the FAT boot partition of a disk image (MBR partition table).

`ocn-edge image seed` puts a card's cloud-init files into a Raspberry Pi OS image without mounting it
(no root, no loop device). This is the smallest FAT writer that does that honestly: it reads the MBR,
takes the first FAT16 or FAT32 partition, and for each file frees the clusters of any file of the same
name, allocates free clusters, writes the data, adds a long-name (VFAT) and a short-name entry to the
root directory, and updates every FAT copy and the FAT32 free-cluster count, so `fsck.fat -n` finds
it clean. Subdirectories, FAT12 and GPT disks are refused with a message.

Why not a library: pyfatfs (the maintained pure-Python FAT implementation) needs PyFilesystem2 (`fs`),
whose package imports `pkg_resources` when loaded; current setuptools (84 in our venv) no longer ships it,
so `import fs` fails on a current Python install.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

__all__ = ["FatError", "Partition", "boot_partition", "write_files"]

SECTOR = 512
_FAT_TYPES = {0x01: "FAT12", 0x04: "FAT16", 0x06: "FAT16", 0x0E: "FAT16 (LBA)", 0x0B: "FAT32", 0x0C: "FAT32 (LBA)"}
_GPT_PROTECTIVE = 0xEE
_FREE, _DELETED, _LFN_ATTR, _ARCHIVE, _VOLUME, _DIRECTORY = 0x00, 0xE5, 0x0F, 0x20, 0x08, 0x10
_SHORT_OK = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$%'-_@~`!(){}^#&")


class FatError(Exception):
    """The image cannot take the files; the message says what was found and what is needed."""


@dataclass(frozen=True, slots=True)
class Partition:
    number: int  # 1..4, as fdisk numbers them
    type_code: int
    offset: int  # bytes from the start of the image
    size: int  # bytes


def boot_partition(image: BinaryIO) -> Partition:
    """The first FAT16/FAT32 partition in the image's MBR partition table."""
    image.seek(0)
    mbr = image.read(SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise FatError("no MBR partition table (the first sector does not end in 55 AA); expected a Raspberry Pi OS disk image, "
                       "decompressed (unxz an .img.xz first)")
    found = []
    for number in range(1, 5):
        entry = mbr[446 + 16 * (number - 1): 446 + 16 * number]
        type_code = entry[4]
        start, sectors = struct.unpack_from("<II", entry, 8)
        if type_code == _GPT_PROTECTIVE:
            raise FatError("the image has a GPT partition table; expected MBR, as Raspberry Pi OS images have")
        if type_code:
            found.append(f"{number}: type 0x{type_code:02X}")
        if type_code in _FAT_TYPES and type_code != 0x01 and sectors:
            return Partition(number, type_code, start * SECTOR, sectors * SECTOR)
    raise FatError(f"no FAT16 or FAT32 partition in the MBR (found {', '.join(found) or 'no partitions'}); "
                   "expected the boot partition, type 0x0B or 0x0C")


def write_files(image: BinaryIO, files: Mapping[str, bytes], *, now: float | None = None) -> Partition:
    """Write ``files`` (name -> content) into the root directory of the image's boot partition, replacing same-named files."""
    partition = boot_partition(image)
    volume = _Volume(image, partition)
    for name, data in files.items():
        volume.put(name, data, time.localtime(now))
    volume.flush()
    return partition


class _Volume:
    def __init__(self, image: BinaryIO, partition: Partition) -> None:
        self.f = image
        self.base = partition.offset
        image.seek(self.base)
        bs = image.read(SECTOR)
        if len(bs) < SECTOR or bs[510:512] != b"\x55\xaa":
            raise FatError(f"partition {partition.number} has no FAT boot sector; is it formatted?")
        (self.bps, self.spc, self.reserved, self.nfats, root_entries, total16, _media, fat16_size) = struct.unpack_from("<HBHBHHBH", bs, 11)
        total32, fat32_size, _flags, _version, self.root_cluster, self.fsinfo = struct.unpack_from("<IIHHIH", bs, 32)
        if self.bps not in (512, 1024, 2048, 4096) or self.spc == 0 or self.nfats == 0:
            raise FatError(f"partition {partition.number}: not a FAT file system (bytes per sector {self.bps}, sectors per cluster {self.spc})")
        self.fat_sectors = fat16_size or fat32_size
        total = total16 or total32
        self.root_sectors = (root_entries * 32 + self.bps - 1) // self.bps
        self.root_entries = root_entries
        self.data_sector = self.reserved + self.nfats * self.fat_sectors + self.root_sectors
        self.clusters = (total - self.data_sector) // self.spc
        if self.clusters < 4085:
            raise FatError(f"partition {partition.number} is FAT12; expected FAT16 or FAT32")
        self.fat32 = self.clusters >= 65525
        self.cluster_bytes = self.bps * self.spc
        image.seek(self.base + self.reserved * self.bps)
        self.fat = bytearray(image.read(self.fat_sectors * self.bps))
        self.eoc = 0x0FFFFFFF if self.fat32 else 0xFFFF
        clean_bit = 0x08000000 if self.fat32 else 0x8000
        if not (struct.unpack_from("<I" if self.fat32 else "<H", self.fat, 4 if self.fat32 else 2)[0] & clean_bit):
            # writing into a file system that was not unmounted cleanly could compound its damage
            raise FatError(f"partition {partition.number} was not unmounted cleanly (its FAT says so); "
                           "check it with `fsck.fat` first, then seed again")
        self.root = self._read_root()

    # -- the file allocation table ----------------------------------------------------------

    def _get(self, n: int) -> int:
        if self.fat32:
            return struct.unpack_from("<I", self.fat, n * 4)[0] & 0x0FFFFFFF
        return struct.unpack_from("<H", self.fat, n * 2)[0]

    def _set(self, n: int, value: int) -> None:
        if self.fat32:
            high = struct.unpack_from("<I", self.fat, n * 4)[0] & 0xF0000000  # reserved bits, kept as found
            struct.pack_into("<I", self.fat, n * 4, high | value)
        else:
            struct.pack_into("<H", self.fat, n * 2, value)

    def _chain(self, start: int) -> list[int]:
        chain: list[int] = []
        n = start
        while 2 <= n < self.clusters + 2 and len(chain) <= self.clusters:
            chain.append(n)
            n = self._get(n)
        return chain

    def _allocate(self, count: int) -> list[int]:
        free = []
        for n in range(2, self.clusters + 2):
            if self._get(n) == 0:
                free.append(n)
                if len(free) == count:
                    break
        if len(free) < count:
            raise FatError(f"the boot partition is full: {count} clusters of {self.cluster_bytes} bytes needed, {len(free)} free")
        for a, b in zip(free, [*free[1:], None], strict=True):  # each cluster points to the next, the last ends the chain
            self._set(a, self.eoc if b is None else b)
        return free

    def _cluster_offset(self, n: int) -> int:
        return self.base + (self.data_sector + (n - 2) * self.spc) * self.bps

    # -- the root directory ------------------------------------------------------------------

    def _root_spans(self) -> list[tuple[int, int]]:
        """(byte offset, length) of each piece of the root directory."""
        if not self.fat32:
            return [(self.base + (self.reserved + self.nfats * self.fat_sectors) * self.bps, self.root_sectors * self.bps)]
        return [(self._cluster_offset(n), self.cluster_bytes) for n in self._chain(self.root_cluster)]

    def _read_root(self) -> bytearray:
        data = bytearray()
        for offset, length in self._root_spans():
            self.f.seek(offset)
            data += self.f.read(length)
        return data

    def _entries(self) -> list[tuple[str, str, int, int]]:
        """(long name, short name, first slot, entry slot) of each file in the root directory."""
        found = []
        parts: list[str] = []
        first = -1
        for slot in range(len(self.root) // 32):
            entry = self.root[slot * 32: slot * 32 + 32]
            if entry[0] == _FREE:
                break
            if entry[0] == _DELETED:
                parts, first = [], -1
                continue
            if entry[11] == _LFN_ATTR:
                if entry[0] & 0x40:
                    parts, first = [], slot
                chars = entry[1:11] + entry[14:26] + entry[28:32]
                parts.insert(0, chars.decode("utf-16-le").split("\x00")[0])
                continue
            if not entry[11] & _VOLUME:
                short = _short_display(bytes(entry[:11]))
                found.append(("".join(parts) or short, short, first if parts else slot, slot))
            parts, first = [], -1
        return found

    def put(self, name: str, data: bytes, stamp: time.struct_time) -> None:
        if "/" in name or "\\" in name or not name or len(name) > 255:
            raise FatError(f"file name {name!r}: only plain names in the root directory are written")
        existing = self._entries()
        for long_name, _short, first, slot in existing:
            if long_name.upper() == name.upper():
                entry = self.root[slot * 32: slot * 32 + 32]
                if entry[11] & _DIRECTORY:
                    raise FatError(f"{name!r} is a directory on the boot partition; expected a file or nothing")
                start = struct.unpack_from("<H", entry, 26)[0] | (struct.unpack_from("<H", entry, 20)[0] << 16 if self.fat32 else 0)
                for n in self._chain(start):
                    self._set(n, 0)
                for s in range(first, slot + 1):
                    self.root[s * 32] = _DELETED
        short = _short_name(name, {s for _l, s, _f, _e in self._entries()})
        clusters = self._allocate(-(-len(data) // self.cluster_bytes)) if data else []
        for i, n in enumerate(clusters):
            chunk = data[i * self.cluster_bytes: (i + 1) * self.cluster_bytes]
            self.f.seek(self._cluster_offset(n))
            self.f.write(chunk.ljust(self.cluster_bytes, b"\x00"))
        entries = _lfn_entries(name, short) + [_short_entry(short, clusters[0] if clusters else 0, len(data), stamp)]
        slot = self._free_run(len(entries))
        for i, new_entry in enumerate(entries):
            self.root[(slot + i) * 32: (slot + i + 1) * 32] = new_entry

    def _free_run(self, count: int) -> int:
        run = 0
        for slot in range(len(self.root) // 32):
            if self.root[slot * 32] in (_FREE, _DELETED):
                run += 1
                if run == count:
                    return slot - count + 1
            else:
                run = 0
        if not self.fat32:
            raise FatError(f"the root directory of the boot partition is full ({self.root_entries} entries)")
        last = self._chain(self.root_cluster)[-1]
        (grown,) = self._allocate(1)
        self._set(last, grown)
        self.f.seek(self._cluster_offset(grown))
        self.f.write(bytes(self.cluster_bytes))
        self.root += bytes(self.cluster_bytes)
        return self._free_run(count)

    def flush(self) -> None:
        data = io.BytesIO(self.root)
        for offset, length in self._root_spans():
            self.f.seek(offset)
            self.f.write(data.read(length))
        for copy in range(self.nfats):
            self.f.seek(self.base + (self.reserved + copy * self.fat_sectors) * self.bps)
            self.f.write(self.fat)
        if self.fat32 and self.fsinfo not in (0, 0xFFFF):
            self.f.seek(self.base + self.fsinfo * self.bps)
            info = bytearray(self.f.read(SECTOR))
            if info[0:4] == b"RRaA" and info[484:488] == b"rrAa":
                free = sum(1 for n in range(2, self.clusters + 2) if self._get(n) == 0)
                next_free = next((n for n in range(2, self.clusters + 2) if self._get(n) == 0), 0xFFFFFFFF)
                struct.pack_into("<II", info, 488, free, next_free)
                self.f.seek(self.base + self.fsinfo * self.bps)
                self.f.write(info)
        self.f.flush()


def _short_display(raw: bytes) -> str:
    base, ext = raw[:8].decode("latin-1").rstrip(), raw[8:].decode("latin-1").rstrip()
    return f"{base}.{ext}" if ext else base


def _short_name(name: str, taken: set[str]) -> bytes:
    """An 8.3 alias (USER-D~1) that no other entry has; the long name is what people see."""
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    base, suffix = _short_chars(stem) or b"FILE", _short_chars(ext)[:3]
    for n in range(1, 1_000_000):
        tail = f"~{n}".encode()
        raw = (base[: 8 - len(tail)] + tail).ljust(8) + suffix.ljust(3)
        if _short_display(raw) not in taken:
            return raw
    raise FatError(f"no free short name for {name!r}")


def _short_chars(text: str) -> bytes:
    return bytes(c for c in text.upper().encode("ascii", "replace") if c in _SHORT_OK)


def _checksum(short: bytes) -> int:
    total = 0
    for byte in short:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


def _lfn_entries(name: str, short: bytes) -> list[bytes]:
    """The VFAT long-name entries for ``name``, in the order they are stored (last piece first)."""
    units = name.encode("utf-16-le")
    units += b"\x00\x00" if len(units) % 26 else b""
    units = units.ljust(-(-len(units) // 26) * 26, b"\xff")
    pieces = [units[i: i + 26] for i in range(0, len(units), 26)]
    check = _checksum(short)
    entries = []
    for seq, piece in enumerate(pieces, start=1):
        order = seq | (0x40 if seq == len(pieces) else 0)
        entries.append(bytes([order]) + piece[:10] + bytes([_LFN_ATTR, 0, check]) + piece[10:22] + b"\x00\x00" + piece[22:26])
    return entries[::-1]


def _short_entry(short: bytes, cluster: int, size: int, stamp: time.struct_time) -> bytes:
    dos_time = (stamp.tm_hour << 11) | (stamp.tm_min << 5) | (stamp.tm_sec // 2)
    dos_date = ((max(stamp.tm_year, 1980) - 1980) << 9) | (stamp.tm_mon << 5) | stamp.tm_mday
    return short + struct.pack("<BBBHHHHHHHI", _ARCHIVE, 0, 0, dos_time, dos_date, dos_date, cluster >> 16,
                               dos_time, dos_date, cluster & 0xFFFF, size)
