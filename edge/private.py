"""Files only their owner may read: state directories created 0700, SQLite databases (and their -wal and -shm) 0600.

A gateway's spool holds readings and a hub's database pseudonyms and the hashes of tokens and
sessions; neither is for other local users. SQLite creates a database 0644 (less the umask),
and creates its ``-wal`` and ``-shm`` files later with the mode of the database file itself
(the unix VFS copies it, whatever the umask). So the database file is made 0600 before SQLite
opens it, and the journal files follow; files an older version left readable are tightened.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["private_directory", "private_database", "DIRECTORY_MODE", "FILE_MODE"]

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def private_directory(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory; created (with missing parents) 0700 if it does not exist.

    An existing directory keeps its mode: the operator chose it (it may be shared, such as the
    current directory), and the files this code puts in it are private on their own.
    """
    target = Path(path)
    missing = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    for created in missing:
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: mkdir would have failed had it mattered
            os.chmod(created, DIRECTORY_MODE)  # mkdir's mode is reduced by the umask
    return target


def private_database(path: str | os.PathLike[str]) -> None:
    """Create the SQLite file ``path`` 0600 if missing and make it and its journal files 0600, before SQLite opens it."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    for suffix in _SQLITE_COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{os.fspath(path)}{suffix}", FILE_MODE)
