"""A small stand-in for systemd in the update tests: CI has no systemd as PID 1, so this does what the shipped units say.

It runs in a thread beside the test's event loop and plays three units of images/systemd:

- ocn-edge.service (with ocn-edge.service.d/rollback.conf): ``<opt>/current/bin/ocn-edge run CONFIG``,
  restarted after every exit (Restart=always). An exit with a status other than 0 is a failure; after
  ``start_limit`` failures (StartLimitBurst=) it stops restarting and starts the rollback
  (OnFailure=ocn-edge-rollback.service).
- ocn-edge-update.path + ocn-edge-update.service: while ``<state>/update/request.json`` exists and
  no installer runs, ``<opt>/current/bin/python -m edge.update.install`` with this root's paths.
  Its "restart the gateway" command is ``kill -TERM`` of the gateway's pid (``run/gateway.pid``):
  the gateway seals what it holds and exits, and Restart=always brings it back on the new slot.
- ocn-edge-rollback.service: ``<opt>/previous/bin/python -m edge.update.install --rollback``.

What it does not stand in for: the sandboxing, the watchdog (a hung gateway is not detected here)
and the time between restarts (RestartSec=, here ``restart_s``).
"""

from __future__ import annotations

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
    restart_s: float = 0.5
    failures: int = 0
    log: list[str] = field(default_factory=list)
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
            f'kill -TERM "$(cat {self.pid_file})"',
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
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def _start_gateway(self) -> None:
        self._gateway = self._spawn([str(self.opt / "current/bin/ocn-edge"), "run", str(self.config)], "gateway")
        self.pid_file.write_text(str(self._gateway.pid))

    def _run(self) -> None:
        self._start_gateway()
        while not self._stop.wait(0.1):
            gateway = self._gateway
            if gateway is not None and gateway.poll() is not None:
                self.log.append(f"gateway exited {gateway.returncode}")
                if gateway.returncode != 0:  # a stop asked for (SIGTERM) ends with 0 once the gateway has sealed what it held
                    self.failures += 1
                if self.failures >= self.start_limit:
                    self.log.append("start limit hit: OnFailure=ocn-edge-rollback.service")
                    subprocess.run(self.installer_command("--rollback", slot="previous"), capture_output=True)
                    self.failures = 0
                time.sleep(self.restart_s)
                self._start_gateway()
            installer = self._installer
            if installer is not None and installer.poll() is not None:
                self.log.append(f"installer exited {installer.returncode}")
                self._installer = None
            if self._installer is None and (self.state / "update" / REQUEST_FILE).exists():
                self._installer = self._spawn(self.installer_command(), "installer")
