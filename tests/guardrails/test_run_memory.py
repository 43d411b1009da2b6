"""What loading a gateway config leaves behind for the gateway's life (issue 17: the gateway's resident memory is a target).

Checking a parsed TOML value with ``isinstance(value, Mapping)`` for a type the ABC has not seen (a str, an int,
a config dataclass) walks every class under Mapping and caches the answer in each: ~0.25 MiB for one config,
kept as long as the process runs.  edge.schema tells plain values and dataclasses apart first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.guardrails.test_run_imports import ROOT, _config


def test_loading_and_digesting_a_gateway_config_leaves_almost_nothing_in_the_abc_caches(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code = f"""
import gc, tracemalloc
import drivers.modbus.driver, edge.runtime  # what a gateway has imported anyway: only what loading the config keeps is measured
from edge.config import load_config
load_config({str(config)!r})  # the driver's profile is read and cached once
gc.collect()
tracemalloc.start(1)
cfg = load_config({str(config)!r})
assert len(cfg.digest) == 32
gc.collect()
kept = tracemalloc.take_snapshot().statistics("filename")
print(sum(s.size for s in kept if s.traceback[0].filename == "<frozen abc>"))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hil-sim")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) < 16 * 1024, f"loading a config left {int(done.stdout):,} bytes in ABC caches"
