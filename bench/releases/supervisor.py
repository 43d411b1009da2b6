"""A small stand-in for systemd in the update tests and the soak: CI has no systemd as PID 1, so this does what the shipped units say.

It runs in a thread beside the test's event loop and plays three units of images/systemd:

- ocn-edge.service (with ocn-edge.service.d/rollback.conf): ``<opt>/current/bin/ocn-edge run CONFIG``,
  restarted after every exit (Restart=always). An exit with a status other than 0 is a failure; after
  ``start_limit`` failures within ``start_interval_s`` (StartLimitBurst=, StartLimitIntervalSec=) it
  starts the rollback (OnFailure=ocn-edge-rollback.service), if a previous slot is there to run it,
  then starts the gateway again.
  Each run writes ``logs/gateway-N.log`` (N counts the starts: ``gateway_starts``).
- ocn-edge-update.path + ocn-edge-update.service: while ``<state>/update/request.json`` exists and
  no installer runs, ``<opt>/current/bin/python -m edge.update.install`` with this root's paths.
  Its "restart the gateway" command is ``kill -TERM`` of the gateway's pid (``run/gateway.pid``):
  the gateway seals what it holds and exits, and Restart=always brings it back on the new slot.
  ``restart_command`` replaces it (the soak notes the moment first).
- ocn-edge-rollback.service: ``<opt>/previous/bin/python -m edge.update.install --rollback``.

Processes run in ``root`` as their working directory, with ``env`` added to this process's
environment. What it does not stand in for: the sandboxing, the watchdog (a hung gateway is not
detected here) and the time between restarts (RestartSec=, here ``restart_s``).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge.update.fetch import REQUEST_FILE


@dataclass
class Supervisor:
    root: Path
    config: Path
    status_url: str
    python: str  # the base interpreter new slots are built with
    deadline_s: float = 20.0  # the probation's --deadline, read each time an installer is started
    start_limit: int = 3
    start_interval_s: float = 600.0
    restart_s: float = 0.5
    restart_command: str = ""  # the installer's --restart; empty: kill -TERM of the pid in run/gateway.pid
    env: dict[str, str] = field(default_factory=dict)
    failures: int = 0
    gateway_starts: int = 0
    log: list[str] = field(default_factory=list)
    _failed_at: list[float] = field(default_factory=list)
    _gateway: subprocess.Popen[bytes] | None = None
    _installer: subprocess.Popen[bytes] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def opt(self) -> Path:
        return self.root / "opt/ocn-edge"

    @property
    def state(self) -> Path:
        return self.root / "var/lib/ocn-edge"

    @property
    def pid_file(self) -> Path:
        return self.root / "run/gateway.pid"

    def installer_command(self, *extra: str, slot: str = "current") -> list[str]:
        return [
            str(self.opt / slot / "bin/python"),
            "-m",
            "edge.update.install",
            "--opt",
            str(self.opt),
            "--state",
            str(self.state),
            "--journal-dir",
            str(self.root / "var/lib/ocn-edge-update"),
            "--key",
            str(self.root / "etc/ocn-edge/release.pub"),
            "--status-url",
            self.status_url,
            "--restart",
            self.restart_command or f'kill -TERM "$(cat {self.pid_file})"',
            "--python",
            self.python,
            "--deadline",
            str(self.deadline_s),
            "--start-timeout",
            "60",
            "--poll",
            "0.3",
            *extra,
        ]

    def start(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    @property
    def gateway(self) -> subprocess.Popen[bytes] | None:
        """The gateway process started last (it may have exited)."""
        return self._gateway

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for process in (self._installer, self._gateway):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        self.log.append(f"start {name}: {command[0]}")
        with (logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env={**os.environ, **self.env})

    def _start_gateway(self) -> None:
        self.gateway_starts += 1
        self._gateway = self._spawn([str(self.opt / "current/bin/ocn-edge"), "run", str(self.config)], f"gateway-{self.gateway_starts}")
        self.pid_file.write_text(str(self._gateway.pid))

    def _rollback(self) -> None:
        """OnFailure=ocn-edge-rollback.service: the previous slot's installer, which rolls back only an update on probation."""
        if (self.opt / "previous/bin/python").exists():
            self.log.append("start limit hit: OnFailure=ocn-edge-rollback.service")
            subprocess.run(self.installer_command("--rollback", slot="previous"), capture_output=True, cwd=self.root, env={**os.environ, **self.env})
        else:  # the rollback unit's ExecStart= is missing and it fails; systemd would leave the gateway down, this starts it again
            self.log.append("start limit hit: no previous slot to roll back to")

    def _run(self) -> None:
        self._start_gateway()
        while not self._stop.wait(0.1):
            gateway = self._gateway
            if gateway is not None and gateway.poll() is not None:
                self.log.append(f"gateway exited {gateway.returncode}")
                now = time.monotonic()
                if gateway.returncode != 0:  # a stop asked for (SIGTERM) ends with 0 once the gateway has sealed what it held
                    self.failures += 1
                    self._failed_at.append(now)
                self._failed_at = [t for t in self._failed_at if now - t < self.start_interval_s]
                if len(self._failed_at) >= self.start_limit:
                    self._rollback()
                    self._failed_at.clear()
                time.sleep(self.restart_s)
                self._start_gateway()
            installer = self._installer
            if installer is not None and installer.poll() is not None:
                self.log.append(f"installer exited {installer.returncode}")
                self._installer = None
            if self._installer is None and (self.state / "update" / REQUEST_FILE).exists():
                self._installer = self._spawn(self.installer_command(), "installer")
