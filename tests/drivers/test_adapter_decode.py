"""The adapter's reply decoder reads register replies in one unpack: the same words, or the same refusal, as pymodbus."""

import random
import struct

from pymodbus.pdu.decoders import DecodePDU

from drivers.modbus.adapter import _QuietDecodePDU


def _frames(rng: random.Random) -> list[bytes]:
    frames = []
    for function in (3, 4):
        for words in (0, 1, 2, 40, 80, 125):
            body = struct.pack(f">{words}H", *(rng.randrange(65536) for _ in range(words)))
            frames.append(bytes([function, 2 * words]) + body)  # as a unit sends it
            frames.append(bytes([function, 2 * words + 1]) + body + b"\x07")  # an odd byte count
            frames.append(bytes([function, 2 * words]) + body[:-1])  # one byte short
            frames.append(bytes([function, 2 * words]) + body + b"\x00\x01")  # trailing bytes
        for _ in range(200):
            frames.append(bytes([function]) + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))))
    frames += [bytes([0x83, 2]), bytes([0x84, 11]), bytes([1, 1, 5]), bytes([2, 1, 3]), bytes([3])]
    return frames


def test_register_replies_decode_to_the_words_pymodbus_gives_and_bad_ones_are_refused_alike():
    ours, theirs = _QuietDecodePDU(is_server=False), DecodePDU(is_server=False)
    for frame in _frames(random.Random(17)):
        got, want = ours.decode(frame), theirs.decode(frame)
        assert (got is None) == (want is None), frame.hex()
        if want is not None:
            assert type(got) is type(want), frame.hex()
            assert got.registers == want.registers, frame.hex()
            assert got.bits == want.bits, frame.hex()
            assert getattr(got, "exception_code", None) == getattr(want, "exception_code", None), frame.hex()
