"""The leak scanner: every usual written form of a MAC address or an exact position, searched in bytes."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable


def mac_forms(mac: str) -> set[bytes]:
    """A MAC in every form someone might write it: separators, case, raw bytes, unkeyed SHA-256."""
    octets = bytes.fromhex(mac.replace(":", "").replace("-", "").replace(".", ""))
    plain = octets.hex()
    texts = {
        plain,
        ":".join(plain[i : i + 2] for i in range(0, 12, 2)),
        "-".join(plain[i : i + 2] for i in range(0, 12, 2)),
        ".".join(plain[i : i + 4] for i in range(0, 12, 4)),
    }
    texts |= {t.upper() for t in texts}
    forms = {t.encode() for t in texts} | {octets}
    for source in [*(t.encode() for t in texts), octets]:
        digest = hashlib.sha256(source).digest()
        forms |= {digest, digest.hex().encode(), digest.hex().upper().encode()}
    return forms


def position_forms(value: float) -> set[bytes]:
    """An exact coordinate as text (repr, 7 decimals, NMEA degrees-minutes) and as IEEE 754 doubles."""
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    texts = {repr(value), f"{value:.7f}", f"{degrees:02d}{minutes:07.4f}", f"{degrees:03d}{minutes:07.4f}"}
    # 4-byte scaled integers are left out: in a megabyte of compressed data they match by chance.
    return {t.encode() for t in texts} | {struct.pack(">d", value), struct.pack("<d", value)}


def find_leaks(needles: Iterable[bytes], haystacks: dict[str, bytes]) -> list[str]:
    """'where: form' for every needle found in any haystack."""
    found = []
    needles = list(needles)
    for where, data in haystacks.items():
        for needle in needles:
            if needle in data:
                found.append(f"{where}: {needle!r}")
    return found
