"""Files the gateway's user can write, as the privileged installer reads and writes them: no link followed, nothing read twice.

The installer runs as root; the gateway's update folder (``<state>/update``) and the bundle it
downloaded belong to the gateway's user. Whoever runs as that user (a compromised gateway) could
otherwise
- swap a wheel or ``constraints.txt`` of a bundle between the installer's check and pip's read
  (or before a build resumed after a power cut reads it again): root would install what no
  release key signed, and run it at the next update;
- put a symbolic link where the installer writes (``.installed.json.tmp``), so root writes its
  outcome through it into a slot, or where it reads (``request.json``, ``installed.json``), so
  root reads a file the gateway may not;
- name a FIFO or a device as a bundle file, so the installer hangs or reads without end.

So the installer copies a bundle into its own directory, which only root can write, and checks
and builds from that copy (:func:`stage_tree`: regular files and directories only, each opened
without following a link and read no further than its size); and it opens the update folder
once, without following a link, and reads and writes in it by that descriptor
(:class:`Folder`): a file is created only where nothing is, and a link there is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path
from types import TracebackType

__all__ = ["Folder", "NotAFile", "stage_tree"]

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


class NotAFile(OSError):
    """A path the installer was to read is a link, a FIFO, a device or a socket, or a tree holds more than it may."""


def _open_regular(name: str | Path, *, dir_fd: int | None = None) -> tuple[int, int]:
    """A descriptor of the regular file ``name`` (never through a link; a FIFO does not block) and its size."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotAFile(errno.ELOOP, "a symbolic link, not a file", str(name)) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotAFile(errno.EINVAL, "not a regular file", str(name))
    os.set_blocking(fd, True)
    return fd, info.st_size


def _read_fd(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class Folder:
    """A directory opened once without following a link (its last part), read and written by its descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise NotAFile(exc.errno, "a symbolic link or a file, not a directory", str(path)) from None
            raise

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        os.close(self.fd)

    def read(self, name: str, limit: int) -> bytes | None:
        """The bytes of the regular file ``name`` here (None if there is none), at most ``limit`` of them; NotAFile for anything else."""
        try:
            fd, size = _open_regular(name, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        try:
            if size > limit:
                raise NotAFile(errno.EFBIG, f"{size} bytes, over the {limit} it may hold", str(self.path / name))
            return _read_fd(fd, size)
        finally:
            os.close(fd)

    def write_json(self, name: str, value: object) -> None:
        """Write ``value`` as ``name`` here: a new temporary file (created where nothing is, never through a link), fsync, rename, fsync."""
        tmp = f".{name}.tmp"
        self.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "w") as stream:
                json.dump(value, stream, sort_keys=True)
                stream.flush()
                os.fsync(stream.fileno())
        except BaseException:
            self.unlink(tmp)
            raise
        os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)  # a link named ``name`` is replaced, not followed
        os.fsync(self.fd)

    def unlink(self, name: str) -> None:
        """Remove ``name`` here if it is there (a link is removed, not followed)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def sync(self) -> None:
        os.fsync(self.fd)


def stage_tree(source: Path, target: Path, *, limit: int) -> int:
    """Copy the tree ``source`` to ``target`` (made anew, 0755: only its owner writes it): its directories and regular files only, read without
    following a link, each no further than its size when opened; anything else is left out. Raises NotAFile when
    ``source`` is not a directory or its files hold more than ``limit`` bytes. The bytes copied, synced to disk."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o755, parents=True)  # a slot keeps a copy of it, which the gateway reads (edge.update.fetch)
    budget = [limit]
    with Folder(source) as top:
        _stage(top.fd, target, budget, source, limit)
    os.sync()  # a build resumed after a power cut reads this copy again
    return limit - budget[0]


def _stage(dir_fd: int, target: Path, budget: list[int], where: Path, limit: int) -> None:
    with os.scandir(dir_fd) as entries:
        names = sorted(entry.name for entry in entries)
    for name in names:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(info.st_mode):
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            except OSError:
                continue  # swapped for something else meanwhile: left out
            try:
                (target / name).mkdir(mode=0o755)
                _stage(child, target / name, budget, where / name, limit)
            finally:
                os.close(child)
        elif stat.S_ISREG(info.st_mode):
            try:
                fd, size = _open_regular(name, dir_fd=dir_fd)
            except (NotAFile, FileNotFoundError):
                continue  # swapped for a link or something else meanwhile: left out
            try:
                if size > budget[0]:
                    raise NotAFile(errno.EFBIG, f"its files hold more than the {limit} bytes a bundle may", str(where / name))
                with (target / name).open("wb") as out:
                    while size > 0 and (chunk := os.read(fd, min(size, _CHUNK))):
                        out.write(chunk)
                        size -= len(chunk)
                        budget[0] -= len(chunk)
            finally:
                os.close(fd)
