"""The payload codecs of OXP/2 (§6.1), one registry: each codec's name, its label on the wire and its two directions.

A codec is added here and nowhere else: the batch header, the configuration's choices and the
command line all read :data:`CODECS` and :func:`labelled`. Both codecs carry the OXP dictionary
(edge.protocol.dictionary), so a short batch compresses well on its own.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from edge.protocol.dictionary import DICTIONARY
from edge.protocol.errors import ProtocolError, show
from edge.protocol.reasons import Reason

__all__ = ["CODECS", "DEFLATE_LEVEL", "MAX_PAYLOAD_BYTES", "ZSTD_LEVEL", "Codec", "compress", "content_size", "decompress", "labelled", "named"]

# Chosen with bench/codec.py: level 19 compresses ~7x slower than level 9 for under 2% fewer
# bytes on the reference station, and levels below 6 lose 1-2%; 9 keeps sealing fast.
ZSTD_LEVEL = 9
DEFLATE_LEVEL = 9
# A decompressed body may not exceed this: a 1 MiB batch must not become a memory bomb.
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Codec:
    """One payload codec: ``label`` is the integer the batch header carries (§6.1)."""

    name: str
    label: int
    compress: Callable[[bytes, int | None], bytes]
    decompress: Callable[[bytes], bytes]


_ZSTD_DICTIONARY = zstandard.ZstdCompressionDict(DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
_ZSTD_DICTIONARY.precompute_compress(level=ZSTD_LEVEL)


# A ZstdCompressor may be reused (each compress() call starts a fresh frame) but not shared
# between threads, and the batcher seals in a worker thread: one per thread.
_zstd_local = threading.local()


def _zstd_compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_zstd_local, "compressor", None)
    if compressor is None:
        compressor = _zstd_local.compressor = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL,
            dict_data=_ZSTD_DICTIONARY,
            write_content_size=True,
            write_checksum=False,
            write_dict_id=False,
        )
    return compressor


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_zstd_local, "decompressor", None)
    if decompressor is None:
        decompressor = _zstd_local.decompressor = zstandard.ZstdDecompressor(dict_data=_ZSTD_DICTIONARY)
    return decompressor


def _zstd_compress(body: bytes, level: int | None) -> bytes:
    """One zstd frame with its content size, the dictionary as raw content."""
    if level is None or level == ZSTD_LEVEL:
        return _zstd_compressor().compress(body)
    compressor = zstandard.ZstdCompressor(
        level=level,
        dict_data=zstandard.ZstdCompressionDict(DICTIONARY, dict_type=zstandard.DICT_TYPE_RAWCONTENT),
        write_content_size=True,
        write_checksum=False,
        write_dict_id=False,
    )
    return compressor.compress(body)


def _zstd_frame_end(data: bytes) -> int:
    """Where the zstd frame at the start of ``data`` ends (RFC 8878 §3.1.1); ProtocolError if it is cut off.

    zstd having decoded the frame is no proof that its blocks are whole: a frame that declares
    0 bytes of content decodes to b"" without its blocks being read. Every step is therefore
    bounded by the data, or a cut-off block header would walk on forever past the end.
    """
    at = zstandard.frame_header_size(data)
    checksum = (data[4] >> 2) & 1  # Frame_Header_Descriptor: Content_Checksum_flag
    while True:
        if at + 3 > len(data):
            raise ProtocolError(Reason.MALFORMED, "zstd frame ends inside its blocks")
        header = int.from_bytes(data[at : at + 3], "little")
        at += 3
        last, block_type, size = header & 1, (header >> 1) & 3, header >> 3
        if block_type == 3:
            raise ProtocolError(Reason.MALFORMED, "zstd block of the reserved type")
        at += 1 if block_type == 1 else size  # an RLE block stores its one byte
        if last:
            at += 4 * checksum
            if at > len(data):
                raise ProtocolError(Reason.MALFORMED, "zstd frame ends inside its blocks")
            return at


def _zstd_decompress(data: bytes) -> bytes:
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise ProtocolError(Reason.MALFORMED, f"payload is not a zstd frame ({exc})") from None
    if size < 0:
        raise ProtocolError(Reason.MALFORMED, "zstd frame does not declare its content size")
    if size > MAX_PAYLOAD_BYTES:
        raise ProtocolError(Reason.TOO_LARGE, f"payload decompresses to {size} bytes, over {MAX_PAYLOAD_BYTES}")
    try:
        body: bytes = _zstd_decompressor().decompress(data, max_output_size=MAX_PAYLOAD_BYTES)
    except zstandard.ZstdError as exc:
        raise ProtocolError(Reason.MALFORMED, f"zstd payload does not decompress ({exc})") from None
    end = _zstd_frame_end(data)
    if end != len(data):
        raise ProtocolError(Reason.MALFORMED, f"{len(data) - end} bytes follow the zstd frame")
    return body


def _deflate_compress(body: bytes, level: int | None) -> bytes:
    """A zlib stream with the dictionary preset."""
    deflater = zlib.compressobj(DEFLATE_LEVEL if level is None else level, zdict=DICTIONARY)
    return deflater.compress(body) + deflater.flush()


def _deflate_decompress(data: bytes) -> bytes:
    inflater = zlib.decompressobj(zdict=DICTIONARY)
    try:
        body = inflater.decompress(data, MAX_PAYLOAD_BYTES + 1)
    except zlib.error as exc:
        raise ProtocolError(Reason.MALFORMED, f"deflate payload does not decompress ({exc})") from None
    if len(body) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(Reason.TOO_LARGE, f"payload decompresses to more than {MAX_PAYLOAD_BYTES} bytes")
    if not inflater.eof:
        raise ProtocolError(Reason.TRUNCATED, "deflate payload ends before its final block")
    if inflater.unused_data:
        raise ProtocolError(Reason.MALFORMED, "bytes follow the end of the deflate payload")
    return body


_REGISTRY = {codec.name: codec for codec in (
    Codec("zstd", 1, _zstd_compress, _zstd_decompress),
    Codec("deflate", 2, _deflate_compress, _deflate_decompress),
)}
_BY_LABEL = {codec.label: codec for codec in _REGISTRY.values()}
CODECS = tuple(_REGISTRY)
"""The codec names, the default (zstd) first."""


def _known() -> str:
    """The labels this implementation knows, in words: "1 (zstd) and 2 (deflate)"."""
    known = [f"{codec.label} ({codec.name})" for codec in _REGISTRY.values()]
    return " and ".join([", ".join(known[:-1]), known[-1]]) if len(known) > 1 else known[0]


def named(name: str) -> Codec:
    """The codec called ``name``; ValueError naming the choices for any other (a sender's mistake, not a peer's bytes)."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"codec {name!r}: expected one of {', '.join(CODECS)}") from None


def labelled(label: object) -> Codec:
    """The codec a batch header's label names; ProtocolError ``unsupported_codec`` for a label this implementation does not know."""
    codec = _BY_LABEL.get(label) if type(label) is int else None
    if codec is None:
        raise ProtocolError(Reason.UNSUPPORTED_CODEC, f"codec {show(label)}: this implementation knows {_known()}")
    return codec


def compress(body: bytes, codec: str, *, level: int | None = None) -> bytes:
    """The body compressed with ``codec`` and the OXP dictionary (docs/protocol.md §6.1).

    ``level`` overrides the pinned level (ZSTD_LEVEL, DEFLATE_LEVEL); the test vectors assume the pinned one.
    """
    return named(codec).compress(body, level)


def content_size(data: bytes, codec: str) -> int | None:
    """The size ``data`` says it decompresses to, read from its frame header without decompressing;
    None when it does not say (deflate) or cannot be read (:func:`decompress` then says why)."""
    if codec != "zstd":
        return None
    try:
        size = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        return None
    return size if size >= 0 else None


def decompress(data: bytes, codec: str) -> bytes:
    """Inverse of :func:`compress`, refusing bodies larger than MAX_PAYLOAD_BYTES."""
    found = _REGISTRY.get(codec)
    if found is None:
        raise ProtocolError(Reason.UNSUPPORTED_CODEC, f"codec {codec!r}: this implementation knows {', '.join(CODECS)}")
    return found.decompress(data)
