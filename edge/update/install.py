"""The privileged installer (`python -m edge.update.install`): build the other slot from a verified bundle, switch, watch the probation, roll back.

ocn-edge-update.path starts it (through ocn-edge-update.service) when the gateway writes
``<state>/update/request.json``; ocn-edge-rollback.service starts it with ``--rollback`` when the
gateway's service has failed for good (OnFailure=). It runs as root from the proven slot and
trusts nothing the gateway wrote but the path of a bundle: the bundle's manifest, and the files
it signs for this device, are copied into the installer's own directory, which only root can
write, and that copy is checked against the release key in /etc/ocn-edge/release.pub and built
from, so the gateway can neither change a file between the check and its use nor add one; in
the gateway's update folder no link is followed (edge.update.guarded).

Every step is recorded in a journal before it is taken (write, fsync, rename, fsync the
directory), so a power cut or ``kill -9`` at any point leaves ``current`` naming a slot that
runs, and the next start of the installer takes the step again:

  build      ``previous`` is removed, the other slot emptied and built offline from the bundle
             (a venv, pip --no-index --require-hashes), the bundle copied into it, its
             ``ocn-edge --version`` checked, everything synced
  switch     ``previous`` -> the running slot, then ``current`` -> the new one (two renames)
  start      the gateway restarted on the new slot
  probation  /status watched until the new version proves itself or fails (edge.update.probation)
  rollback   ``current`` -> the previous slot, the gateway restarted, the failure recorded

The outcome is written to ``<state>/update/installed.json`` for the gateway's status report and
local page; the spool and every other file of the gateway's state are never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.config import ConfigError, load_config
from edge.localapi.access import needs_token
from edge.logs import setup_logging
from edge.protocol.keys import KeyFileError, load_public_key
from edge.protocol.release import MAX_MANIFEST_BYTES
from edge.update.fetch import INSTALLED_FILE, REQUEST_FILE, update_dir, write_json
from edge.update.guarded import Folder, NotAFile
from edge.update.manifest import MANIFEST_FILE, Refused, this_target
from edge.update.probation import Probation, read_status
from edge.update.rollover import MAX_CHAIN_BYTES, ROLLOVER_FILE, check_trusted_bundle, check_trusted_manifest
from edge.update.slots import CURRENT, PREVIOUS, fsync_dir, link_target, other_slot, point, slot_version

__all__ = ["JOURNAL_FILE", "STOP_AT", "Installer", "main", "status_url_of"]

log = logging.getLogger("ocn.update")

JOURNAL_FILE = "journal.json"  # the installer's own record of the step it is taking
STAGED_DIR = "bundle"  # in the journal's directory: the copy of the requested bundle that is checked and installed
MAX_RECORD_BYTES = 64 * 1024  # request.json and installed.json are a few hundred bytes
DEFAULT_RESTART = "systemctl reset-failed ocn-edge.service; systemctl restart --no-block ocn-edge.service"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Fault injection for tests (tests/update): the installer stops itself (SIGSTOP) right after it has
# recorded this step, so a test can kill -9 it exactly there, as a power cut would.
STOP_AT = "OCN_UPDATE_STOP_AT"
NO_SPACE = "No space left on device"  # strerror(ENOSPC), as pip and venv print it


@dataclass
class Installer:
    """One run of the installer over a root: the slots in ``opt``, the gateway's ``state``, its own ``journal_dir``."""

    opt: Path
    state: Path
    journal_dir: Path
    release_key: Path
    status_url: str | None  # None: no /status the installer may read, so no probation: updates are refused
    restart: str = DEFAULT_RESTART
    python: str = "/usr/bin/python3"
    deadline_s: float = 900.0
    start_timeout_s: float = 120.0
    poll_s: float = 2.0

    # -- records --------------------------------------------------------------------------

    @property
    def journal_path(self) -> Path:
        return self.journal_dir / JOURNAL_FILE

    @property
    def staged(self) -> Path:
        """The installer's copy of the bundle it checks and builds from (:meth:`_stage`)."""
        return self.journal_dir / STAGED_DIR

    def journal(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.journal_path.read_text())
        except FileNotFoundError:
            return None
        return value if isinstance(value, dict) else None

    def _record(self, entry: dict[str, Any], phase: str, **more: Any) -> dict[str, Any]:
        entry = dict(entry, phase=phase, **more)
        write_json(self.journal_path, entry)
        if os.environ.get(STOP_AT) == phase:
            os.kill(os.getpid(), signal.SIGSTOP)
        return entry

    def _outcome(self, entry: dict[str, Any], state: str, reason: str = "") -> None:
        """Record the outcome for the gateway, then forget the journal and the request, in that order.

        A kill between the two leaves a request whose outcome is on record: the next run sees that and only removes it.
        """
        running = link_target(self.opt, CURRENT)
        outcome = {
            "state": state,
            "version": entry["version"],
            "from_version": entry.get("from_version"),
            "running": slot_version(self.opt, running) if running else None,
            "ts_ms": int(time.time() * 1000),
        }
        if reason:
            outcome["reason"] = reason
        # Every version rolled back here, kept across outcomes: neither the gateway nor the installer takes one again.
        failed = set(_rolled_back(self._last_outcome())) | ({entry["version"]} if state == "rolled_back" else set())
        outcome["rolled_back_versions"] = sorted(failed)
        try:
            with Folder(update_dir(self.state)) as folder:
                folder.write_json(INSTALLED_FILE, outcome)
                self._forget(entry)
                folder.unlink(REQUEST_FILE)
                folder.sync()
        except OSError as exc:
            # The folder gone, or a link or a directory put where the outcome goes: nothing is written through it, and
            # the update is over all the same (a journal left behind would take the next request for this one).
            log.error("the outcome of the update to %s (%s) is not recorded: %s: %s", entry["version"], state,
                      exc.filename or update_dir(self.state), exc.strerror or exc)
            self._forget(entry)

    def _forget(self, entry: dict[str, Any]) -> None:
        """The journal and the staged copy of the bundle go: the update is over."""
        self.journal_path.unlink(missing_ok=True)
        fsync_dir(self.journal_dir)
        shutil.rmtree(self.staged, ignore_errors=True)

    def _last_outcome(self) -> dict[str, Any]:
        try:
            with Folder(update_dir(self.state)) as folder:
                data = folder.read(INSTALLED_FILE, MAX_RECORD_BYTES)
            last = json.loads(data) if data is not None else {}
        except (FileNotFoundError, NotAFile, ValueError):
            return {}
        return last if isinstance(last, dict) else {}

    # -- the run --------------------------------------------------------------------------

    def run(self, *, rollback_only: bool = False) -> int:
        self.journal_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with (self.journal_dir / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time: the path unit's and OnFailure='s
            entry = self.journal()
            if rollback_only:
                # From "switch" on, current may name the new slot; before it, the running slot is the proven one.
                if entry is None or entry["phase"] not in ("switch", "start", "probation", "rollback"):
                    log.info("the gateway failed, but no new version is on probation: nothing to roll back")
                    return EXIT_OK
                reason = entry.get("reason") or f"{entry['version']} failed: its service stopped for good during probation (a crash loop or the watchdog)"
                return self._rollback(entry, reason)
            if entry is None:
                entry_or_exit = self._begin()
                if isinstance(entry_or_exit, int):
                    return entry_or_exit
                entry = entry_or_exit
            else:
                log.info("resuming the update to %s at step %s", entry["version"], entry["phase"], extra={"version": entry["version"], "step": entry["phase"]})
            return self._continue(entry)

    def _begin(self) -> dict[str, Any] | int:
        request_path = update_dir(self.state) / REQUEST_FILE
        try:
            with Folder(update_dir(self.state)) as folder:
                data = folder.read(REQUEST_FILE, MAX_RECORD_BYTES)
                if data is None:
                    log.info("no update requested")
                    return EXIT_OK
                try:
                    request = json.loads(data)
                    bundle = Path(request["bundle"])
                except (ValueError, KeyError, TypeError):
                    log.error('%s: not an update request (expected {"version", "bundle"}); removed', request_path)
                    folder.unlink(REQUEST_FILE)
                    return EXIT_FAILED
        except FileNotFoundError:
            log.info("no update requested")
            return EXIT_OK
        except (NotAFile, IsADirectoryError) as exc:
            log.error("%s: not an update request: %s: %s; removed", request_path, exc.filename, exc.strerror)
            with contextlib.suppress(OSError), Folder(update_dir(self.state)) as folder:
                folder.unlink(REQUEST_FILE)  # a link, a FIFO, a file too large; a directory stays (the path unit's limit stops it)
            return EXIT_FAILED
        last = self._last_outcome()
        asked, answered = request.get("requested_ms"), last.get("ts_ms")
        if last.get("version") == request.get("version") and type(asked) is int and type(answered) is int and answered >= asked:
            log.info("the request for %s was answered already (%s); removed", last["version"], last.get("state"))
            with Folder(update_dir(self.state)) as folder:
                folder.unlink(REQUEST_FILE)
            return EXIT_OK
        running = link_target(self.opt, CURRENT)
        from_version = slot_version(self.opt, running) if running else None
        target = this_target()
        entry = {
            "version": str(request.get("version")),
            "bundle": str(bundle),
            "from_slot": running,
            "from_version": from_version,
            "to_slot": other_slot(running),
            "target": target,
        }
        if self.status_url is None:
            reason = "no_probation: the installer judges a new version on the gateway's /status on loopback; enable [local_api] on 127.0.0.1"
            log.error("update to %s refused (%s)", entry["version"], reason)
            self._outcome(entry, "refused", reason)
            return EXIT_FAILED
        try:
            key = load_public_key(self.release_key)
            # What is checked is what is built: a copy only root can write, never the gateway's files read again later.
            self._stage(bundle, key, target)
            entry["bundle"] = str(self.staged)
            manifest, _ = check_trusted_bundle(self.staged, key, now=time.time(), target=entry["target"], installed=from_version,
                                               approved=bool(request.get("approved")))
        except OSError as exc:  # a full disk, or the bundle unreadable (the journal's directory unwritable)
            problem, full = _write_problem(exc, bundle)
            reason = "no_space" if full else "unreadable"
            log.error("update to %s refused (%s): the bundle could not be copied: %s", entry["version"], reason, problem)
            self._outcome(entry, "refused", f"{reason}: the bundle could not be copied: {problem}")
            return EXIT_FAILED
        except (Refused, KeyFileError) as exc:
            reason = exc.reason if isinstance(exc, Refused) else "wrong_key"
            detail = str(exc).replace(str(self.staged), str(bundle))  # the copy's files are named as the bundle's
            log.error("update to %s refused (%s): %s", entry["version"], reason, detail, extra={"version": entry["version"], "reason": reason})
            self._outcome(entry, "refused", f"{reason}: {detail}")
            return EXIT_FAILED
        entry["version"] = manifest.version  # the signed version, whatever the request said
        entry["constraints"] = manifest.targets[target][0]  # the path the manifest signs, not one assumed
        if manifest.version in _rolled_back(last):
            log.error("update to %s refused (rolled_back): it failed its probation here before", manifest.version)
            self._outcome(entry, "refused", f"rolled_back: {manifest.version} failed its probation on this device before ({last.get('reason', '')})")
            return EXIT_FAILED
        need = sum(item.size for item in manifest.files_for(this_target())) * 4
        if shutil.disk_usage(self.opt).free < need:
            log.error("update to %s refused (no_space): %s has less than %d bytes free", manifest.version, self.opt, need)
            self._outcome(entry, "refused", f"no_space: {self.opt} has less than {need} bytes free; the running version is untouched")
            return EXIT_FAILED
        log.info(
            "installing %s into slot %s (running %s in slot %s)",
            manifest.version,
            entry["to_slot"],
            from_version,
            running,
            extra={"version": manifest.version, "slot": entry["to_slot"]},
        )
        return self._record(entry, "build")

    def _stage(self, bundle: Path, key: Ed25519PublicKey, target: str) -> None:
        """Copy of ``bundle`` what the installer checks and builds from into its own directory: the manifest (and the
        key rollovers beside it), and once the manifest's signature is checked, the files it names for ``target``, each no
        further than the size it signs; nothing else the gateway put there. A file that is missing or no regular file
        is left out, and check_trusted_bundle then refuses the copy naming it."""
        staged = self.staged
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        staged.chmod(0o755)  # a slot keeps a copy of it (<slot>/release), which the gateway reads (edge.update.fetch)
        try:
            source = Folder(bundle)
        except FileNotFoundError:
            return  # refused as missing
        with source:
            for name, limit in ((MANIFEST_FILE, MAX_MANIFEST_BYTES), (ROLLOVER_FILE, MAX_CHAIN_BYTES)):
                with contextlib.suppress(FileNotFoundError, NotAFile):
                    source.copy(name, staged / name, limit=limit)
            if not (staged / MANIFEST_FILE).exists():
                return  # refused as missing
            manifest = check_trusted_manifest(staged, key)
            for item in manifest.files_for(target) if target in manifest.targets else []:
                with contextlib.suppress(FileNotFoundError, NotAFile):
                    source.copy(item.path, staged / item.path, limit=item.size)
        os.sync()  # a build resumed after a power cut reads this copy again

    def _continue(self, entry: dict[str, Any]) -> int:
        phase = entry["phase"]
        if phase == "rollback":
            return self._rollback(entry, entry.get("reason", ""))
        if phase == "build":
            try:
                problem = self._build(entry)
            except OSError as exc:  # the slot's files could not be written (a full disk): nothing may be left half done
                problem, full = _write_problem(exc, self.opt)
            else:
                full = NO_SPACE in problem
            if problem:
                shutil.rmtree(self.opt / entry["to_slot"], ignore_errors=True)  # the half-built slot's room goes back to the spool
                if full:
                    problem = f"no_space: the disk filled up while slot {entry['to_slot']} was built ({problem[:200]}); the running version is untouched"
                log.error("update to %s failed while building slot %s: %s", entry["version"], entry["to_slot"], problem)
                self._outcome(entry, "failed", problem)
                return EXIT_FAILED
            entry = self._record(entry, "switch")
            phase = "switch"
        if phase == "switch":
            if entry["from_slot"]:
                point(self.opt, PREVIOUS, entry["from_slot"])
            point(self.opt, CURRENT, entry["to_slot"])
            entry = self._record(entry, "start")
            phase = "start"
        if phase == "start":
            self._restart()  # again after a kill here: a second restart is harmless, a missed one is not
            entry = self._record(entry, "probation", probation_started=time.time())
        return self._probation(entry)

    def _build(self, entry: dict[str, Any]) -> str:
        """Build the new slot offline; an empty string when it runs, else what went wrong."""
        if (self.opt / PREVIOUS).is_symlink():  # it may name the slot about to be emptied
            (self.opt / PREVIOUS).unlink()
            fsync_dir(self.opt)
        slot = self.opt / entry["to_slot"]
        bundle = Path(entry["bundle"])
        shutil.rmtree(slot, ignore_errors=True)
        # An entry journalled before "constraints" was kept names the path every bundle so far has used.
        constraints = bundle / entry.get("constraints", f"targets/{entry['target']}/constraints.txt")
        wheels = str(bundle / "wheels")
        install = ["install", "--quiet", "--disable-pip-version-check", "--no-index", "--find-links", wheels, "--require-hashes", "-r", str(constraints)]
        own_pip = importlib.util.find_spec("pip")
        if own_pip is not None and own_pip.origin:
            # This slot's pip installs into the new venv (pip --python) and is then copied into it, so every
            # slot has the pip the next update uses: seconds, where ensurepip's own install takes ten on a Pi.
            steps = [[self.python, "-m", "venv", "--without-pip", str(slot)], [sys.executable, "-m", "pip", "--python", str(slot / "bin" / "python"), *install]]
        else:
            steps = [[self.python, "-m", "venv", str(slot)], [str(slot / "bin" / "python"), "-m", "pip", *install]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                return f"{shlex.join(step[:3])} … exited {done.returncode}: {last}"
        if own_pip is not None and own_pip.origin:
            self._copy_pip(Path(own_pip.origin).parent.parent, slot)
        shutil.copytree(bundle, slot / "release")
        done = subprocess.run([str(slot / "bin" / "ocn-edge"), "--version"], capture_output=True, text=True)
        if done.returncode != 0 or entry["version"] not in done.stdout:
            return f"the new slot's ocn-edge --version said {done.stdout.strip() or done.stderr.strip()!r}, not {entry['version']}"
        os.sync()  # every file of the slot on disk before current may name it
        return ""

    @staticmethod
    def _copy_pip(site: Path, slot: Path) -> None:
        """pip as installed beside this installer, copied into the new slot's site-packages (the same Python: same base).

        Its bytecode comes along (copytree keeps the sources' times, so it stays valid, and Python takes the file names from
        where it loads it): the next update's pip starts without compiling itself, half a second here, seconds on a Pi.
        """
        (target,) = slot.glob("lib/python3*/site-packages")
        shutil.copytree(site / "pip", target / "pip")
        for info in site.glob("pip-*.dist-info"):
            shutil.copytree(info, target / info.name)

    def _restart(self) -> None:
        done = subprocess.run(["/bin/sh", "-c", self.restart], capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("restarting the gateway (%s) exited %d: %s", self.restart, done.returncode, done.stderr.strip())

    def _probation(self, entry: dict[str, Any]) -> int:
        probation = Probation(entry["version"], started=float(entry["probation_started"]), deadline_s=self.deadline_s, start_timeout_s=self.start_timeout_s)
        while True:
            verdict = probation.judge(read_status(self.status_url) if self.status_url else None, time.time())
            if verdict.state == "passed":
                log.info("%s passed its probation: %s", entry["version"], verdict.reason, extra={"version": entry["version"]})
                self._outcome(entry, "installed")
                return EXIT_OK
            if verdict.state == "failed":
                log.error(
                    "%s failed its probation: %s; rolling back to %s",
                    entry["version"],
                    verdict.reason,
                    entry["from_version"],
                    extra={"version": entry["version"], "reason": verdict.reason},
                )
                return self._rollback(self._record(entry, "rollback", reason=verdict.reason), verdict.reason)
            time.sleep(self.poll_s)

    def _rollback(self, entry: dict[str, Any], reason: str) -> int:
        if entry["phase"] != "rollback":
            entry = self._record(entry, "rollback", reason=reason)
        if not entry["from_slot"]:
            log.error("%s failed (%s) and there is no previous slot to go back to", entry["version"], reason)
            self._outcome(entry, "failed", reason)
            return EXIT_FAILED
        point(self.opt, CURRENT, entry["from_slot"])
        if (self.opt / PREVIOUS).is_symlink():  # the failed slot is no place to go back to
            (self.opt / PREVIOUS).unlink()
            fsync_dir(self.opt)
        self._restart()
        log.info("rolled back to %s in slot %s", entry["from_version"], entry["from_slot"], extra={"version": entry["from_version"]})
        self._outcome(entry, "rolled_back", reason)
        return EXIT_OK


def _write_problem(exc: OSError, where: Path) -> tuple[str, bool]:
    """What a failed write says in one line, and whether it was a full disk (shutil.copytree gathers one error per file)."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        errors = exc.args[0]
        first = errors[0]
        more = f" (and {len(errors) - 1} more files)" if len(errors) > 1 else ""
        return f"{first[1]}: {str(first[2]).split(':', 1)[0]}{more}", any(NO_SPACE in str(error[-1]) for error in errors)
    return f"{exc.filename or where}: {exc.strerror or exc}", exc.errno == errno.ENOSPC


def _rolled_back(outcome: dict[str, Any]) -> list[str]:
    """The versions an outcome record lists as rolled back on this device."""
    versions = outcome.get("rolled_back_versions")
    return [str(version) for version in versions] if isinstance(versions, list) else []


def status_url_of(config: Path) -> str | None:
    """The gateway's /status on loopback, at the port its [local_api] listens on; None when the installer cannot read it there
    (the local API disabled, or listening beyond loopback, where every request needs the access token)."""
    try:
        local_api = load_config(config).local_api
    except (ConfigError, OSError):
        return "http://127.0.0.1:8080/status"  # the default; an unreadable config fails the gateway's own start anyway
    if not local_api.enabled or needs_token(local_api.listen.host):
        return None
    return f"http://127.0.0.1:{local_api.listen.port}/status"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.update.install", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opt", default="/opt/ocn-edge", help="the slots a and b and the links current and previous (default %(default)s)")
    parser.add_argument("--state", default="/var/lib/ocn-edge", help="the gateway's state directory, where it asks (default %(default)s)")
    parser.add_argument("--journal-dir", default="/var/lib/ocn-edge-update", help="the installer's own state (default %(default)s)")
    parser.add_argument("--key", default="/etc/ocn-edge/release.pub", help="the release public key (default %(default)s)")
    parser.add_argument("--config", default="/etc/ocn-edge/gateway.toml", help="the gateway config, for its local API port (default %(default)s)")
    parser.add_argument("--status-url", help="the gateway's /status (default: loopback at the config's [local_api] port)")
    parser.add_argument("--restart", default=DEFAULT_RESTART, help="the shell command that restarts the gateway (default: %(default)s)")
    parser.add_argument("--python", default="/usr/bin/python3", help="the interpreter new slots are built with (default %(default)s)")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds the new version has to prove itself while the hub is reachable")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds the new version has to answer /status at all")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between two reads of /status")
    parser.add_argument("--rollback", action="store_true", help="the gateway's service failed for good: roll back if a new version is on probation")
    args = parser.parse_args(argv)
    setup_logging()
    installer = Installer(
        opt=Path(args.opt),
        state=Path(args.state),
        journal_dir=Path(args.journal_dir),
        release_key=Path(args.key),
        status_url=args.status_url or status_url_of(Path(args.config)),
        restart=args.restart,
        python=args.python,
        deadline_s=args.deadline,
        start_timeout_s=args.start_timeout,
        poll_s=args.poll,
    )
    return installer.run(rollback_only=args.rollback)


if __name__ == "__main__":
    sys.exit(main())
