"""What state shared between batches would buy, and what HTTP costs around a batch.

    .venv/bin/python -m bench.oxp_state [--hours 24] [--no-http]

OXP/2 batches are self-contained: every batch carries its own channel table and decodes
alone (docs/protocol.md §14). This benchmark measures, on the same reference station as
`bench.codec`, what the protocol would save if a batch could lean on state the hub keeps.
None of these variants is OXP; they exist here so that the trade-off is decided on numbers:

  OXP/2 (today)        the sealed batch exactly as sent
  table by reference   the channel table (device, name, unit, resolution of each series) sent
                       once and named by a digest in every batch, as Sparkplug B births or
                       OPC UA DataSetMetaData do; batches decode given that table
  key-frame dictionary each batch compressed against the body of the last self-contained
                       batch (a key frame every hour, counted as a normal OXP/2 batch);
                       batches decode given their key frame (at 1-hour spans every batch is
                       a key frame, so the figure equals OXP/2's)
  chained              each batch compressed against the previous batch's body (table by
                       reference too); a batch decodes only given the whole chain before it

Every variant keeps the OXP/2 envelope (COSE_Sign1, Ed25519, the header the issue asks for),
plus 10 bytes for a reference where it has one, and compresses at the pinned zstd level.
The payload is real: bodies are encoded by edge.protocol.codec and compressed by libzstd.

The HTTP part sends real sealed batches with the gateway's own Uplink (edge.uplink) to a
real hub process on loopback through a counting TCP relay, and prints the bytes of HTTP/1.1
request and response around each batch: what a metered link carries besides the batch
(before TLS, TCP and IP, which add more).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import cbor2
import zstandard

from bench.codec import KEY, SPANS, Source, _channels_of, _header, as_released, reference_station, windows
from edge.protocol import codec as oxp_codec
from edge.protocol import compression, key_id, raw_public_key, seal_batch
from edge.protocol.dictionary import DICTIONARY

REFERENCE_BYTES = 10  # a header key and an 8-byte digest or a (boot, seq) pair
KEYFRAME_EVERY_MS = 3_600_000


def _without_table(body: bytes) -> bytes:
    """The body with each series' description replaced by its index in a table sent elsewhere."""
    t0, _devices, series = cbor2.loads(body)
    return cbor2.dumps([t0, [[index, *entry[4:]] for index, entry in enumerate(series)]])


def _compressor(prefix: bytes) -> zstandard.ZstdCompressor:
    dictionary = zstandard.ZstdCompressionDict(DICTIONARY + prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(
        level=compression.ZSTD_LEVEL, dict_data=dictionary, write_content_size=True, write_checksum=False, write_dict_id=False
    )


def variants(source: Source, span_s: int) -> dict[str, float]:
    """Bytes per reading of each variant over all batches of ``span_s`` seconds."""
    totals = dict.fromkeys(["OXP/2 (today)", "table by reference", "key-frame dictionary", "chained"], 0)
    plain = _compressor(b"")
    keyframe: bytes | None = None
    keyframe_at = 0
    keyframe_compressor = plain
    previous = b""
    readings = 0
    for seq, group in enumerate(windows(source, span_s), 1):
        channels = _channels_of(source, group)
        sealed = seal_batch(_header(seq, "zstd", group[-1].ts_ms), channels, group, KEY)
        body = oxp_codec.encode_body(channels, group)
        envelope = len(sealed) - len(compression.compress(body, "zstd"))
        stripped = _without_table(body)
        totals["OXP/2 (today)"] += len(sealed)
        totals["table by reference"] += envelope + REFERENCE_BYTES + len(plain.compress(stripped))
        if keyframe is None or group[0].ts_ms - keyframe_at >= KEYFRAME_EVERY_MS:
            keyframe, keyframe_at = body, group[0].ts_ms
            keyframe_compressor = _compressor(keyframe)
            totals["key-frame dictionary"] += len(sealed)
        else:
            totals["key-frame dictionary"] += envelope + REFERENCE_BYTES + len(keyframe_compressor.compress(body))
        totals["chained"] += envelope + REFERENCE_BYTES + len(_compressor(previous).compress(stripped))
        previous = stripped
        readings += len(group)
    return {name: total / readings for name, total in totals.items()}


def print_variants(sources: list[Source]) -> None:
    names = ["OXP/2 (today)", "table by reference", "key-frame dictionary", "chained"]
    print("\nBytes per reading on the wire if batches could lean on state kept by the hub (not OXP)\n")
    head = f"{'station':44} {'span':6} {'rd/batch':>8} " + " ".join(f"{n:>21}" for n in names)
    print(head)
    print("-" * len(head))
    for source in sources:
        for label, span in SPANS:
            figures = variants(source, span)
            per_batch = len(source.readings) / len(windows(source, span))
            print(f"{source.name:44} {label:6} {per_batch:>8.0f} " + " ".join(f"{figures[n]:>21.2f}" for n in names))


# -- HTTP around a batch ------------------------------------------------------------------


class CountingRelay:
    """A TCP relay on 127.0.0.1 that counts the bytes going each way."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = 0
        self.down = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
            try:
                while data := await src.read(65536):
                    count(len(data))
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        def add_up(n: int) -> None:
            self.up += n

        def add_down(n: int) -> None:
            self.down += n

        await asyncio.gather(pipe(reader, upstream_writer, add_up), pipe(upstream_reader, writer, add_down), return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def http_overhead(source: Source, span_s: int, batches: int) -> tuple[float, float, float]:
    """(request bytes besides the batch, response bytes, mean batch bytes) per batch, via the real Uplink."""
    import aiohttp

    from bench.hub import ocn_edge, start_hub
    from edge.spool import Spool
    from edge.transport import open_transport
    from edge.uplink import Uplink

    groups = windows(source, span_s)[:batches]
    with tempfile.TemporaryDirectory() as state:
        db = f"sqlite:///{state}/hub.db"
        token = subprocess.run(
            [ocn_edge(), "hub", "token", "create", "--db", db, "--state-dir", state, "--uses", "1", "--approve"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        proc, url = await start_hub(db, state)
        relay: CountingRelay | None = None
        try:
            async with aiohttp.ClientSession() as http:
                body = {"token": token, "device_id": "pole-0042",
                        "public_key": base64.urlsafe_b64encode(raw_public_key(KEY)).rstrip(b"=").decode(), "software_version": "bench"}
                async with http.post(f"{url}/oxp/v1/enrol", json=body) as resp:
                    assert resp.status == 201, await resp.text()
            host, port = url.removeprefix("http://").rsplit(":", 1)
            relay = CountingRelay(host, int(port))
            relay_port = await relay.start()
            spool = Spool.open_blocking(Path(state) / "spool.db", max_bytes=1 << 30)
            spool.begin_boot_blocking()
            sizes = 0
            for group in groups:
                seq = spool.allocate_seq()
                header = _header(seq, "zstd", group[-1].ts_ms)
                header = type(header)(header.device_id, key_id(KEY), spool.boot_epoch, seq, header.policy_digest,
                                      header.codec, header.created_ms, header.counters)
                data = seal_batch(header, _channels_of(source, group), group, KEY)
                spool.put(data, readings=len(group))
                sizes += len(data)
            uplink = Uplink(spool=spool, transport=open_transport(f"http://127.0.0.1:{relay_port}"), private_key=KEY, device_id="pole-0042",
                            status_interval_s=0, idle_poll_s=0.05)
            task = asyncio.create_task(uplink.run())
            while uplink.counters.batches_acked < len(groups):
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await uplink.aclose()
            spool.close_blocking()
            n = len(groups)
            return (relay.up - sizes) / n, relay.down / n, sizes / n
        finally:
            if relay is not None:
                await relay.close()
            proc.terminate()
            await proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="length of the reference station run (default 24)")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP measurement (it starts a hub process)")
    args = parser.parse_args(argv)
    station = reference_station(args.hours)
    sources = [station, as_released(station), reference_station(args.hours, with_gps=False)]
    print_variants(sources)
    if not args.no_http:
        print("\nHTTP/1.1 around each batch, gateway Uplink -> hub on loopback (TLS, TCP and IP not counted)\n")
        print(f"{'span':6} {'batch B':>8} {'request besides batch B':>24} {'response B':>11}")
        for label, span in SPANS:
            request, response, batch = asyncio.run(http_overhead(station, span, 12))
            print(f"{label:6} {batch:>8.0f} {request:>24.0f} {response:>11.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
