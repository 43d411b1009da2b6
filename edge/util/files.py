"""What went wrong with a file, said in our words: the gateway's commands and the hub's store both report file errors this way."""

from __future__ import annotations

import errno

__all__ = ["file_problem"]

_IN_OUR_WORDS = {
    errno.ENOENT: "no such file or directory",
    errno.EISDIR: "is a directory; expected a file",
    errno.ENOTDIR: "a file is in the way where a directory is expected",
    errno.EEXIST: "already exists",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the disk is full",
    errno.ENAMETOOLONG: "the name is too long",
}


def file_problem(exc: OSError) -> str:
    """What went wrong with a file, in our words: "PATH: is a directory; expected a file"."""
    what = _IN_OUR_WORDS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()
    return f"{exc.filename}: {what}" if exc.filename is not None else what
