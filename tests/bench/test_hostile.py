"""bench.hostile runs end to end at a small scale: a real hub, both load generators, every attack class, a table.

Timing is the benchmark's business; this only shows that its parts still fit together (the two load
generators keep one timeline, every class reaches the hub and is answered, the legitimate gateways are
all stored, nothing answers 5xx), so a change cannot quietly break the benchmark the issue is judged by.
"""

from __future__ import annotations

import re
import subprocess
import sys


def test_a_small_hostile_run_answers_every_class_and_stores_every_legitimate_batch() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.hostile", "--engine", "sqlite", "--readings", "2000", "--duration", "3"],
                          capture_output=True, text=True, timeout=110)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "legitimate ingest p99, under attack" in out
    assert re.search(r"legitimate batches stored, unloaded\s+100/s of 100/s sent", out), out
    assert re.search(r"legitimate batches stored, under attack\s+100/s of 100/s sent", out), out
    assert re.search(r"5xx answers\s+0: 0 failures", out), out
    classes = dict(re.findall(r"^    (\S[^\n]*?)\s{2,}(\S[^\n]*)$", out, re.MULTILINE))
    for who in ("1 MiB slow-to-decode bodies", "huge declared batches", "heavy public queries", "slow clients", "gateways (attack)"):
        assert classes.get(who), f"{who!r} got no answers:\n{out}"
    assert "200" not in classes["huge declared batches"]  # a declared million is never stored
    assert classes["gateways (attack)"] == "200: 300"  # 100 gateways, a batch a second, 3 s: every one stored
    cpu = re.search(r"CPU: hub \(its processes\) / gateways / attackers\s+([\d.]+) s / ([\d.]+) s / ([\d.]+) s", out)
    assert cpu and all(float(x) > 0 for x in cpu.groups()), out
