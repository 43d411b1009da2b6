"""What went wrong with a file, said in our words: the gateway's commands and the hub's store both report file errors this way."""

from __future__ import annotations

import errno
import re
import tomllib

__all__ = ["file_problem", "file_words", "toml_problem"]

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
    what = file_words(exc)
    return f"{exc.filename}: {what}" if exc.filename is not None else what


def file_words(exc: OSError) -> str:
    """What went wrong, without the file's name, for a message that names the file already: "permission denied"."""
    return _IN_OUR_WORDS.get(exc.errno or 0) or (exc.strerror or type(exc).__name__).lower()


_TOML_POSITION = re.compile(
    r"^(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$", re.S
)


def toml_problem(source: str, exc: tomllib.TOMLDecodeError) -> str:
    """A TOML syntax error, where it is first: "gateway.toml: line 3, column 8: Invalid value (not valid TOML)".

    Every file the gateway, the hub and hil-sim read as TOML reports its syntax errors this way, with the
    position as an editor shows it rather than at the end of tomllib's sentence.
    """
    match = _TOML_POSITION.match(str(exc))
    if match is None:
        return f"{source}: {exc} (not valid TOML)"
    if match["line"] is None:
        return f"{source}: at the end of the file: {match['message']} (not valid TOML)"
    return f"{source}: line {match['line']}, column {match['column']}: {match['message']} (not valid TOML)"
