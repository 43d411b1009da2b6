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

So the installer copies into its own directory, which only root can write, the bundle's signed
manifest and then only the files that manifest names for this device, each no further than the
size it signs (:meth:`Folder.copy`: every part of the path opened without following a link, a
regular file only), and checks and builds from that copy: a file the gateway added is never
copied, and nothing it changes afterwards is read. It opens the update folder once, without
following a link, and reads and writes in it by that descriptor (:class:`Folder`): a file is
read only if it is a regular one, and created only where nothing is.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from types import TracebackType

__all__ = ["Folder", "NotAFile"]

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


class NotAFile(OSError):
    """A path the installer was to read is a link, a FIFO, a device, a socket or a directory, or larger than it may be."""


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
        for attempt in (1, 2):
            self.unlink(tmp)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
                break
            except FileExistsError:  # something was put there between the two calls: remove it and try once more
                if attempt == 2:
                    raise
        os.fchmod(fd, 0o644)  # the gateway reads it, whatever the umask
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

    def copy(self, path: str, target: Path, *, limit: int) -> None:
        """Copy the regular file at ``path`` here ("/"-separated, no part of it a link) to ``target`` (0644, its new
        directories 0755), no more than ``limit`` bytes of it; FileNotFoundError if it is not there, NotAFile if it or a
        directory on its way is a link or no regular file."""
        *folders, name = path.split("/")
        opened: list[int] = []
        try:
            dir_fd = self.fd
            for folder in folders:
                try:
                    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise NotAFile(exc.errno, "a symbolic link or a file, not a directory", str(self.path / path)) from None
                    raise
                opened.append(dir_fd)
            source, size = _open_regular(name, dir_fd=dir_fd)
        finally:
            for fd in opened:
                os.close(fd)
        try:
            for parent in reversed(target.parents):
                if not parent.exists():
                    parent.mkdir()
                    parent.chmod(0o755)
            with target.open("wb") as out:
                os.fchmod(out.fileno(), 0o644)
                left = min(size, limit)
                while left > 0 and (chunk := os.read(source, min(left, _CHUNK))):
                    out.write(chunk)
                    left -= len(chunk)
        finally:
            os.close(source)

    def unlink(self, name: str) -> None:
        """Remove ``name`` here if it is there (a link is removed, not followed)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def sync(self) -> None:
        os.fsync(self.fd)
