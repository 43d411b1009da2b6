"""What an outside observer sees of a process and every process it starts: CPU, memory and disk writes, read from /proc.

    observer = TreeObserver(pid); observer.start()   # samples once a second in a thread
    ...; window = observer.mark(); ...; figures = observer.since(window); observer.stop()

Nothing is asked of the observed process: each second the observer lists /proc, finds the
process and its descendants by parent id, and reads for each of them

  /proc/<pid>/task/<tid>/schedstat
                       the nanoseconds each of its threads has run (the scheduler's own
                       sum_exec_runtime, from which the kernel also derives utime + stime), so
                       a window of a nearly idle process is not counted in 10 ms ticks: the
                       one-meter load spends 60 to 90 ms in 90 s, 6 to 9 ticks give or take one
  /proc/<pid>/stat     cutime + cstime for the children it has already reaped, so a short-lived
                       helper's CPU is not lost (and utime + stime, in clock ticks, where the
                       kernel keeps no schedstat)
  /proc/<pid>/status   RssAnon (anonymous memory: heap, stacks, what Python allocated) and VmRSS
                       (resident set: that plus file-backed pages such as mapped libraries)
  /proc/<pid>/io       write_bytes: bytes this process caused to be sent to the storage layer

Memory peaks are the largest sum over the tree at one sample; CPU and disk writes are sums of
per-process (per-thread) counters that only grow, so a window's figure is the difference between
two samples (a process or thread that exits between samples keeps its last values).  This is how `top`, `ps` and a
monitoring agent see a process, and the way the issue's comparison with the ThingsBoard gateway
was measured: one sample a second.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
NS = 1e-9


@dataclasses.dataclass(frozen=True)
class Sample:
    """One look at the tree: when (time.monotonic), the pids seen, and its totals."""

    at: float
    pids: tuple[int, ...]
    cpu_s: float  # cumulative CPU seconds of every process seen so far (exited ones at their last value)
    write_bytes: int  # cumulative, likewise
    rss_anon: int  # bytes, summed over the processes alive now
    rss: int


@dataclasses.dataclass(frozen=True)
class Window:
    """The figures between two samples."""

    seconds: float
    cpu_s: float
    write_bytes: int
    peak_rss_anon: int
    peak_rss: int
    processes: int  # the most processes seen at one sample


def _children_by_parent() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.scandir(PROC):
        if not entry.name.isdigit():
            continue
        try:
            text = (PROC / entry.name / "stat").read_text()
        except OSError:  # gone since the listing
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry.name))
    return out


def tree(root: int) -> list[int]:
    """The pid and every descendant alive now."""
    children = _children_by_parent()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _status_kib(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class TreeObserver:
    """Samples a process tree once a second (in a thread) until stopped; keeps every sample."""

    def __init__(self, pid: int, *, interval_s: float = 1.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._cpu: dict[int, float] = {}
        self._threads: dict[int, dict[int, int]] = {}  # pid -> tid -> nanoseconds run, as last seen
        self._writes: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"observe-{pid}", daemon=True)

    def start(self) -> TreeObserver:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (one last sample first, if the process is still there)."""
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> Sample | None:
        """Read the tree now and keep the sample; None once the root process is gone."""
        if not (PROC / str(self.pid)).exists():
            return None
        pids = tree(self.pid)
        rss_anon = rss = 0
        for pid in pids:
            base = PROC / str(pid)
            try:
                fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
                status = (base / "status").read_text()
                io = (base / "io").read_text()
            except OSError:  # exited while we read: its last values stand
                continue
            # fields[11..14] are utime, stime, cutime, cstime (man 5 proc, counting from the state field).
            own = self._threads_run_s(pid)
            if own is None:
                own = (int(fields[11]) + int(fields[12])) * TICK_S
            self._cpu[pid] = own + (int(fields[13]) + int(fields[14])) * TICK_S
            self._writes[pid] = int(io.split("write_bytes:")[1].split()[0])
            rss_anon += _status_kib(status, "RssAnon") * 1024
            rss += _status_kib(status, "VmRSS") * 1024
        # A reaped child's CPU appears again in its parent's cutime/cstime: count it once, as the parent's.
        alive = set(pids)
        for pid in [p for p in self._cpu if p not in alive and p != self.pid]:
            del self._cpu[pid]
            self._threads.pop(pid, None)
        s = Sample(time.monotonic(), tuple(pids), sum(self._cpu.values()), sum(self._writes.values()), rss_anon, rss)
        with self._lock:
            self.samples.append(s)
        return s

    def _threads_run_s(self, pid: int) -> float | None:
        """Seconds the threads of ``pid`` have run (a thread gone since the last look at its last value); None without schedstat."""
        seen = self._threads.setdefault(pid, {})
        try:
            tasks = os.listdir(PROC / str(pid) / "task")
        except OSError:  # exiting: what its threads ran until the last look stands
            return sum(seen.values()) * NS if seen else None
        for tid in tasks:
            try:
                seen[int(tid)] = int((PROC / str(pid) / "task" / tid / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):  # gone since the listing, or no schedstat in this kernel
                continue
        if not seen:
            return None
        return sum(seen.values()) * NS

    def mark(self) -> int:
        """A sample now, as the start or end of a window: its index."""
        self.sample()
        with self._lock:
            return len(self.samples) - 1

    def window(self, first: int, last: int | None = None) -> Window:
        """CPU and disk writes between samples ``first`` and ``last`` (default: the newest), and the memory peaks over them."""
        with self._lock:
            span = self.samples[first:] if last is None else self.samples[first : last + 1]
        a, b = span[0], span[-1]
        return Window(
            seconds=b.at - a.at,
            cpu_s=b.cpu_s - a.cpu_s,
            write_bytes=b.write_bytes - a.write_bytes,
            peak_rss_anon=max(s.rss_anon for s in span),
            peak_rss=max(s.rss for s in span),
            processes=max(len(s.pids) for s in span),
        )
