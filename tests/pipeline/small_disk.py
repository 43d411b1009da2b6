"""A real filesystem a test can fill: a small tmpfs mounted under the test's directory.

    with small_disk(tmp_path / "disk", size=8 << 20) as disk:
        ...            # put a spool under disk.path
        disk.fill()    # every later write that needs a new block fails with ENOSPC
                       # (fill(leave=n): only n bytes are left for them)
        disk.free()    # the room is back

Mounting needs root (CI runs as root); without it the test skips, or fails under
OCN_REQUIRE_ALL=1 (tests/helpers/tools.py).  The mount is always undone, lazily if
something still holds a file open in it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.tools import missing, require_tool

__all__ = ["SmallDisk", "small_disk"]


class SmallDisk:
    """A mounted tmpfs and the ballast file that fills it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ballast = path / "ballast"

    def fill(self, *, leave: int = 0) -> int:
        """Write the ballast until the filesystem refuses another byte, then give back ``leave`` bytes of it."""
        written = 0
        fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                block = b"\0" * chunk
                with contextlib.suppress(OSError):
                    while True:
                        written += os.write(fd, block)
            if leave:
                os.ftruncate(fd, max(0, written - leave))
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        """Delete the ballast: the space it held is free again."""
        self._ballast.unlink()

    def free_bytes(self) -> int:
        fs = os.statvfs(self.path)
        return fs.f_bavail * fs.f_frsize


@contextlib.contextmanager
def small_disk(path: Path, *, size: int) -> Iterator[SmallDisk]:
    """Mount a tmpfs of ``size`` bytes at ``path`` for the duration of the block."""
    mount = require_tool("mount")
    umount = require_tool("umount", package="mount")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        missing(f"needs root to mount a small tmpfs to fill ({done.stderr.strip() or done.returncode})")
    try:
        yield SmallDisk(path)
    finally:
        if subprocess.run([umount, str(path)], capture_output=True).returncode != 0:
            subprocess.run([umount, "-l", str(path)], check=True)
