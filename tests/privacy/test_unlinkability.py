"""Pseudonym keys: unrelated pseudonyms across a rotation, and no key material left in memory or on disk."""

from __future__ import annotations

import gc
import sys

from edge.privacy import PrivacyStage
from edge.protocol.types import Reading

from .support import MIDNIGHT_MS, PED_CHANNELS, Clock, make_policy

DAY = 86_400_000
PSEUDONYMIZE = '[pseudonyms]\nrotate = "1d"\n[channels."ped-1/mac"]\nrule = "pseudonymize"\nbits = 64\n'
MACS = [f"3c:22:fb:{i >> 16 & 0xff:02x}:{i >> 8 & 0xff:02x}:{i & 0xff:02x}" for i in range(200)]


def pseudonyms(stage: PrivacyStage, ts_ms: int) -> list[str]:
    return [str(stage.process(Reading("ped-1/mac", ts_ms, m))[0].value) for m in MACS]


def reachable_buffers() -> list[bytes | bytearray]:
    """Every bytes/bytearray the garbage collector can reach (they are not tracked themselves)."""
    seen: dict[int, bytes | bytearray] = {}
    for obj in gc.get_objects():
        for ref in gc.get_referents(obj):
            if isinstance(ref, (bytes, bytearray)) and len(ref) >= 32:
                seen[id(ref)] = ref
    for module in list(sys.modules.values()):
        for value in vars(module).values() if hasattr(module, "__dict__") else ():
            if isinstance(value, (bytes, bytearray)) and len(value) >= 32:
                seen[id(value)] = value
    return list(seen.values())


def test_the_same_mac_gets_unrelated_pseudonyms_after_the_daily_rotation() -> None:
    clock = Clock(MIDNIGHT_MS + 3_600_000)
    stage = PrivacyStage(make_policy(PSEUDONYMIZE), PED_CHANNELS, clock_ms=clock)
    before = pseudonyms(stage, clock.now_ms)
    assert pseudonyms(stage, clock.now_ms + 1) == before  # stable within the day: counts of repeat visits work
    clock.now_ms = MIDNIGHT_MS + DAY + 60_000
    after = pseudonyms(stage, clock.now_ms)
    assert not set(before) & set(after)
    # unrelated, not shifted: about half of the 64 bits differ between a MAC's two pseudonyms
    flips = [bin(int(a, 16) ^ int(b, 16)).count("1") for a, b in zip(before, after, strict=True)]
    assert 28 < sum(flips) / len(flips) < 36


def test_rotation_aligns_to_the_configured_utc_time_of_day() -> None:
    clock = Clock(MIDNIGHT_MS + 5 * 3_600_000)
    policy = make_policy(PSEUDONYMIZE.replace('rotate = "1d"', 'rotate = "1d"\nrotate_at = "06:00"'))
    stage = PrivacyStage(policy, PED_CHANNELS, clock_ms=clock)
    first = pseudonyms(stage, clock.now_ms)
    clock.now_ms = MIDNIGHT_MS + 5 * 3_600_000 + 59 * 60_000
    assert pseudonyms(stage, clock.now_ms) == first
    clock.now_ms = MIDNIGHT_MS + 6 * 3_600_000
    assert pseudonyms(stage, clock.now_ms)[0] != first[0]


def test_after_rotation_the_old_key_is_zeroed_and_unreachable() -> None:
    clock = Clock(MIDNIGHT_MS + 3_600_000)
    stage = PrivacyStage(make_policy(PSEUDONYMIZE), PED_CHANNELS, clock_ms=clock)
    pseudonyms(stage, clock.now_ms)
    old_key = stage._pseudonyms._key
    assert old_key is not None
    secret = int.from_bytes(old_key._key)  # held as an int, which never matches a byte scan
    assert secret != 0
    stage.tick(MIDNIGHT_MS + DAY)  # the day ends: the key dies even if no MAC is seen after midnight
    assert old_key.destroyed and not any(old_key._key)
    needle = secret.to_bytes(32)
    gc.collect()
    leaks = [buf for buf in reachable_buffers() if buf is not needle and needle in buf]
    assert leaks == []


def test_the_privacy_stage_never_opens_a_file_for_writing() -> None:
    written: list[str] = []
    watching = True

    def audit(event: str, args: tuple) -> None:
        if watching and event == "open" and len(args) >= 2:
            path, mode = args[0], args[1]
            flags = args[2] if len(args) > 2 else 0
            if (isinstance(mode, str) and any(m in mode for m in "wax+")) or (isinstance(flags, int) and flags & 0o3):
                written.append(str(path))

    sys.addaudithook(audit)
    try:
        clock = Clock(MIDNIGHT_MS)
        body = PSEUDONYMIZE.replace("pseudonymize", "count_distinct").replace("bits = 64", 'window = "15m"\nk = 2')
        for text in (PSEUDONYMIZE, body):
            stage = PrivacyStage(make_policy(text), PED_CHANNELS, clock_ms=clock)
            for day in range(2):
                for m in MACS:
                    stage.process(Reading("ped-1/mac", MIDNIGHT_MS + day * DAY, m))
                stage.tick(MIDNIGHT_MS + day * DAY + 3_600_000)
            stage.flush(MIDNIGHT_MS + 2 * DAY)
    finally:
        watching = False
    assert written == []


def test_no_key_bytes_appear_in_the_key_objects_repr() -> None:
    stage = PrivacyStage(make_policy(PSEUDONYMIZE), PED_CHANNELS, clock_ms=Clock())
    pseudonyms(stage, MIDNIGHT_MS)
    key = stage._pseudonyms._key
    assert key is not None
    assert repr(key) == "<EphemeralKey active>"
    assert bytes(key._key).hex() not in repr(vars(stage)) + repr(stage.stats())
