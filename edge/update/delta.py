"""Deltas between two versions of a file: a zstd frame compressed with the old file as a raw-content dictionary.

This is zstd's own "patch from" mode (``zstd --patch-from=OLD NEW``), through the zstandard library
the gateway already uses for batches: a release that changes a few modules of OCN Edge's 600 KB
wheel sends a few kilobytes, because the unchanged members of the zip are found in the old wheel.
A delta is checked like any file (size and SHA-256 in the manifest) and so is what it rebuilds.
"""

from __future__ import annotations

import zstandard

__all__ = ["MAX_WINDOW_LOG", "DeltaError", "apply_delta", "make_delta"]

# The window must span the old file and the new one; 2**27 (128 MiB) bounds what a reader allocates.
MAX_WINDOW_LOG = 27
_LEVEL = 19


class DeltaError(ValueError):
    """A delta that does not rebuild a file from the given base."""


def make_delta(base: bytes, new: bytes) -> bytes:
    """The zstd frame that rebuilds ``new`` from ``base``."""
    window_log = max(20, (len(base) + len(new)).bit_length())
    if window_log > MAX_WINDOW_LOG:
        raise DeltaError(f"files of {len(base)} and {len(new)} bytes: over the {1 << MAX_WINDOW_LOG}-byte window a delta may use")
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(_LEVEL, window_log=window_log, enable_ldm=True)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(new)


def apply_delta(base: bytes, patch: bytes, *, size: int) -> bytes:
    """The file ``patch`` rebuilds from ``base``, at most ``size`` bytes; DeltaError if it does not decode."""
    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    try:
        return zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=1 << MAX_WINDOW_LOG).decompress(patch, max_output_size=size)
    except zstandard.ZstdError:  # the library's text speaks of frames and windows, not of the release
        raise DeltaError("the delta does not decode against its base") from None
