"""Which ingest steps hold the GIL, what worker processes would cost, and memory per request.

    .venv/bin/python -m bench.offload

The hub runs signature checks, decompression and decoding off its event loop (hub/workers.py).
A thread only helps if the step lets the loop's thread run: this runs each step in a thread,
as the hub does, while a task on the loop measures how late a 1 ms sleep wakes (the loop's
lag). It uses the hub's own interpreter settings (GIL switch interval 0.5 ms, frozen GC with
the hub's thresholds). Then it prints what handing decoded readings back from a worker
process would cost (pickling them), and the peak memory (tracemalloc) of weighing and of
decoding batches of several sizes. Nothing passes or fails on time.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import pickle
import sys
import time
import tracemalloc
from collections.abc import Callable

import cbor2

from edge.protocol import BatchHeader, declared_readings, generate_keypair, key_id, open_batch, seal_batch, verify_batch
from edge.protocol.codec import decode_payload
from edge.protocol.compression import compress, decompress
from edge.protocol.envelope import H_BOOT, H_CODEC, H_CREATED, H_DEVICE, H_POLICY, H_SEQ, H_VERSION, _sign
from edge.protocol.preauth import ALG, EDDSA, KID, OXP_BATCH
from edge.protocol.types import Channel, Reading

CHANNEL = Channel("meter-1/voltage", "V", resolution=0.1)
KEY = generate_keypair()


def readings(n: int) -> list[Reading]:
    return [Reading(CHANNEL.id, 1_700_000_000_000 + i * 1000, (i % 1000) / 10, "V") for i in range(n)]


def sealed(n: int) -> bytes:
    header = BatchHeader(device_id="bench-1", key_id=key_id(KEY), boot_epoch=1, seq=1, policy_digest=b"", codec="zstd", created_ms=1)
    return seal_batch(header, (CHANNEL,), readings(n), KEY)


def declaring(n: int) -> bytes:
    """A few hundred signed bytes whose body declares ``n`` boolean readings."""
    body = cbor2.dumps([0, [""], [[2, "door", 0, None, n, bytes(n), [6, bytes((n + 7) // 8)]]]])
    header = {H_VERSION: 2, H_DEVICE: "bench-1", H_BOOT: 1, H_SEQ: 1, H_POLICY: b"", H_CODEC: 1, H_CREATED: 1}
    return _sign({ALG: EDDSA, KID: key_id(KEY), OXP_BATCH: header}, compress(body, "zstd"), KEY)


async def loop_lag(step: Callable[[], object]) -> tuple[float, float]:
    """(seconds the step took in a thread, the loop's largest lag meanwhile)."""
    worst, done = 0.0, False

    async def tick() -> None:
        nonlocal worst
        while not done:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - start - 0.001)

    ticker = asyncio.create_task(tick())
    start = time.perf_counter()
    await asyncio.to_thread(step)
    took = time.perf_counter() - start
    done = True
    await ticker
    return took, worst


def peak_mib(step: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


async def main() -> None:
    sys.setswitchinterval(0.0005)  # as `ocn-edge hub` sets them (hub/cli.py)
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    public = KEY.public_key()
    big = sealed(1_000_000)
    payload = cbor2.loads(big).value[2]
    message = b"x" * 200_000
    signature = KEY.sign(message)
    ints = cbor2.dumps([list(range(200_000)) for _ in range(5)])
    rationals = cbor2.dumps([cbor2.CBORTag(30, [3**40000 + i, 7**30000]) for i in range(10)])
    steps: dict[str, Callable[[], object]] = {
        "Ed25519 verify of 200 KB, 2,000 times": lambda: [public.verify(signature, message) for _ in range(2000)],
        "zstd decompress of a 1,000,000-reading payload, 20 times": lambda: [decompress(payload, "zstd") for _ in range(20)],
        "cbor2.loads of 1,000,000 integers": lambda: cbor2.loads(ints),
        "cbor2.loads of 10 tag-30 rationals of huge integers": lambda: cbor2.loads(rationals),
    }
    for n in (20_000, 100_000, 200_000, 1_000_000):
        data = payload if n == 1_000_000 else cbor2.loads(sealed(n)).value[2]
        steps[f"decode_payload of {n:,} readings"] = functools.partial(decode_payload, data, codec="zstd")
    print("step in a worker thread                                   work ms   max loop lag ms")
    for name, step in steps.items():
        took, worst = await loop_lag(step)
        print(f"{name:57s} {took * 1000:8.1f}  {worst * 1000:8.1f}")

    print("\nhanding decoded readings back from a worker process (pickle protocol 5)")
    for n in (20_000, 1_000_000):
        decoded = tuple(readings(n))
        start = time.perf_counter()
        blob = pickle.dumps(decoded, protocol=5)
        dumped = time.perf_counter()
        pickle.loads(blob)
        print(f"  {n:>9,} readings: {len(blob) / 2**20:6.1f} MiB, dumps {(dumped - start) * 1000:7.0f} ms, "
              f"loads {(time.perf_counter() - dumped) * 1000:7.0f} ms")

    print("\npeak memory per request (tracemalloc)")
    hostile = declaring(1_000_000)
    print(f"  weighing a {len(hostile)}-byte batch declaring 1,000,000 readings: "
          f"{peak_mib(lambda: declared_readings(verify_batch(hostile, public)[1])):6.1f} MiB")
    print(f"  decoding the same batch (what the readings budget avoids):         {peak_mib(lambda: open_batch(hostile, public)):6.1f} MiB")
    for n in (20_000, 100_000, 200_000):
        data = sealed(n)
        print(f"  verifying and decoding {n:>7,} readings ({len(data)} bytes):          {peak_mib(functools.partial(open_batch, data, public)):6.1f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
