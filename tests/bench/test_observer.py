"""bench.observer sees from outside what a process tree uses: its children's memory, CPU and disk writes count too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.observer import TreeObserver, tree

MIB = 1024 * 1024

# A parent that starts a child; the child holds 64 MiB of anonymous memory, burns CPU, writes 4 MiB to disk
# (fsync'd), says so, and waits for its stdin to close.
CHILD = """
import os, sys, time
block = bytearray(64 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
with open(sys.argv[1], "wb") as f:
    f.write(os.urandom(4 * 1024 * 1024))
    f.flush()
    os.fsync(f.fileno())
print("ready", flush=True)
sys.stdin.read()
"""
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdin=sys.stdin)
child.wait()
"""


def test_the_observer_counts_a_child_process_memory_cpu_and_disk_writes(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(tmp_path / "written")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        observer = TreeObserver(proc.pid).start()  # its first sample, number 0, is taken now
        assert proc.stdout.readline().strip() == "ready"
        last = observer.mark()
        assert len(tree(proc.pid)) == 2  # the parent and its child
        window = observer.window(0, last)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    observer.stop()
    assert window.processes == 2
    assert window.peak_rss_anon >= 64 * MIB
    assert window.peak_rss >= window.peak_rss_anon
    assert window.cpu_s >= 0.25  # the child's 0.3 s of CPU, less what it ran before the first sample
    assert window.write_bytes >= 4 * MIB


# Burns 35 ms of CPU when told, says how much by its own clock, and waits for its stdin to close.
BURNER = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
t = time.process_time()
while time.process_time() - t < 0.035:
    pass
print(time.process_time() - t, flush=True)
sys.stdin.read()
"""


def test_the_observer_counts_cpu_finer_than_the_kernels_10_ms_ticks() -> None:
    """A window of 35 ms of CPU reads as 35 ms, not as 30 or 40 (the one-meter load spends 60-90 ms in 90 s)."""
    proc = subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"  # its interpreter's own start-up is not in the window
        observer = TreeObserver(proc.pid, interval_s=60).start()
        before = observer.mark()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        burned = float(proc.stdout.readline())
        window = observer.window(before, observer.mark())
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    observer.stop()
    assert burned >= 0.035
    # What the process ran besides the loop (reading "go", printing) is well under a millisecond.
    assert burned <= window.cpu_s < burned + 0.003, (window.cpu_s, burned)
