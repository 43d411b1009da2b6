"""The privileged installer: a refused bundle leaves the running version untouched, and kill -9 at every step leaves a slot that runs.

The installer journals each step before taking it; OCN_UPDATE_STOP_AT makes it stop itself right
after journalling one, so the test kills it exactly there, as a power cut would. After each kill
`current` must run (the old or the new version, never nothing), and the next start of the
installer must carry on from the journal. No gateway answers /status here, so the probation
fails at once ("did not start") and the last steps are the rollback's.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.cli import main
from edge.update.fetch import INSTALLED_FILE, REQUEST_FILE
from edge.update.install import STOP_AT, status_url_of
from edge.update.slots import slot_version
from tests.update.conftest import BASE_PYTHON, Releases, copy_root

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def root(installed_v1: Path, tmp_path: Path) -> Path:
    copy = copy_root(installed_v1, tmp_path / "root")
    (copy / "var/lib/ocn-edge/spool.db").write_bytes(b"the gateway's spool: an update never touches it")
    return copy


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def request(root: Path, bundle: Path, version: str) -> None:
    update = root / "var/lib/ocn-edge/update"
    update.mkdir(exist_ok=True)
    (update / REQUEST_FILE).write_text(json.dumps({"version": version, "bundle": str(bundle)}))


def installer(root: Path, *, stop_at: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop(STOP_AT, None)
    if stop_at:
        env[STOP_AT] = stop_at
    return subprocess.Popen(
        [
            str(root / "opt/ocn-edge/current/bin/python"),
            "-m",
            "edge.update.install",
            "--opt",
            str(root / "opt/ocn-edge"),
            "--state",
            str(root / "var/lib/ocn-edge"),
            "--journal-dir",
            str(root / "var/lib/ocn-edge-update"),
            "--key",
            str(root / "etc/ocn-edge/release.pub"),
            "--status-url",
            f"http://127.0.0.1:{closed_port()}/status",
            "--restart",
            "true",
            "--python",
            BASE_PYTHON,
            "--start-timeout",
            "0",
            "--poll",
            "0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stopped(process: subprocess.Popen[str]) -> bool:
    """Whether the process has stopped itself (state T in /proc), or exited."""
    try:
        return Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return True


def kill_when(process: subprocess.Popen[str], condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition() or process.poll() is not None:
            break
        subprocess.run(["sleep", "0.02"])
    assert process.poll() is None, f"the installer ended before it could be killed: {process.stdout.read() if process.stdout else ''}"
    process.send_signal(signal.SIGKILL)
    process.wait()


def runs(root: Path) -> str:
    """The version `current` runs: ocn-edge --version from the slot, as the gateway unit would start it."""
    done = subprocess.run([str(root / "opt/ocn-edge/current/bin/ocn-edge"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def journal_step(root: Path) -> str:
    return str(json.loads((root / "var/lib/ocn-edge-update/journal.json").read_text())["phase"])


def test_kill_9_at_every_step_leaves_a_slot_that_runs_and_the_next_start_finishes_the_job(root: Path, releases: Releases) -> None:
    opt = root / "opt/ocn-edge"
    request(root, releases.bundles["2.0.0"], "2.0.0")

    # build: killed while the new slot's venv is being made.
    process = installer(root)
    kill_when(process, lambda: (opt / "b/bin/python").exists())
    assert journal_step(root) == "build" and os.readlink(opt / "current") == "a" and runs(root) == "1.0.0"

    # switch: the slot is built, current not yet switched.
    process = installer(root, stop_at="switch")
    kill_when(process, lambda: stopped(process))
    assert os.readlink(opt / "current") == "a" and runs(root) == "1.0.0"
    done = subprocess.run([str(opt / "b/bin/ocn-edge"), "--version"], capture_output=True, text=True)
    assert done.stdout.split()[-1] == "2.0.0"

    # start: switched (previous -> a, current -> b), the gateway not yet restarted.
    process = installer(root, stop_at="start")
    kill_when(process, lambda: stopped(process))
    assert os.readlink(opt / "current") == "b" and os.readlink(opt / "previous") == "a" and runs(root) == "2.0.0"

    # probation, then the rollback it leads to here: killed after each was journalled.
    for step in ("probation", "rollback"):
        process = installer(root, stop_at=step)
        kill_when(process, functools.partial(stopped, process))
        assert journal_step(root) == step and runs(root) in ("1.0.0", "2.0.0")

    process = installer(root)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    assert os.readlink(opt / "current") == "a" and runs(root) == "1.0.0" and not (opt / "previous").exists()
    outcome = json.loads((root / "var/lib/ocn-edge/update" / INSTALLED_FILE).read_text())
    assert outcome["state"] == "rolled_back" and outcome["version"] == "2.0.0" and outcome["running"] == "1.0.0"
    assert "did not start" in outcome["reason"]
    assert not (root / "var/lib/ocn-edge/update" / REQUEST_FILE).exists() and not (root / "var/lib/ocn-edge-update/journal.json").exists()
    assert (root / "var/lib/ocn-edge/spool.db").read_bytes() == b"the gateway's spool: an update never touches it"

    # Asked again for the version that failed here, the installer refuses it and builds nothing.
    request(root, releases.bundles["2.0.0"], "2.0.0")
    out, _ = installer(root).communicate(timeout=120)
    assert "refused (rolled_back)" in out, out
    outcome = json.loads((root / "var/lib/ocn-edge/update" / INSTALLED_FILE).read_text())
    assert outcome["state"] == "refused" and outcome["rolled_back_versions"] == ["2.0.0"] and os.readlink(opt / "current") == "a"


@pytest.mark.parametrize(("damage", "reason"), [("tampered", "tampered"), ("downgrade", "downgrade")])
def test_a_refused_bundle_leaves_the_running_version_untouched(root: Path, releases: Releases, tmp_path: Path, damage: str, reason: str) -> None:
    if damage == "tampered":
        bundle = tmp_path / "tampered"
        shutil.copytree(releases.bundles["2.0.0"], bundle)
        wheel = next((bundle / "wheels").glob("ocn_edge-*.whl"))
        data = bytearray(wheel.read_bytes())
        data[100] ^= 0xFF
        wheel.write_bytes(bytes(data))
        request(root, bundle, "2.0.0")
    else:
        request(root, releases.bundles["1.0.0"], "1.0.0")
    process = installer(root)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 1 and f"refused ({reason})" in out, out
    assert out.count("level=") == 1  # said once
    outcome = json.loads((root / "var/lib/ocn-edge/update" / INSTALLED_FILE).read_text())
    assert outcome["state"] == "refused" and outcome["reason"].startswith(f"{reason}: ")
    assert os.readlink(root / "opt/ocn-edge/current") == "a" and runs(root) == "1.0.0" and not (root / "opt/ocn-edge/b").exists()
    assert not (root / "var/lib/ocn-edge/update" / REQUEST_FILE).exists()


@pytest.mark.parametrize(
    ("local_api", "url"),
    [
        ('enabled = true\nlisten = "127.0.0.1:8099"', "http://127.0.0.1:8099/status"),
        ('enabled = true\nlisten = "0.0.0.0:8099"', None),  # beyond loopback every request needs the access token
        ('enabled = false\nlisten = "127.0.0.1:8080"', None),
    ],
)
def test_the_probation_reads_status_only_where_the_installer_may(tmp_path: Path, local_api: str, url: str | None) -> None:
    assert main(["init", str(tmp_path / "gw")]) == 0
    config = tmp_path / "gw/gateway.toml"
    text = config.read_text()
    start = text.index("[local_api]\n") + len("[local_api]\n")
    config.write_text(text[:start] + local_api + "\n" + "\n".join(text[start:].splitlines()[2:]) + "\n")
    assert status_url_of(config) == url


# --- what the gateway's user can change: nothing the installer has checked --------------------------------------


def test_a_bundle_changed_after_the_check_is_not_what_the_installer_builds(root: Path, releases: Releases, tmp_path: Path) -> None:
    # Whoever runs as the gateway owns the bundle it downloaded. It waits for the installer's check, then swaps the
    # wheels and constraints.txt for others (here 1.0.0's, which no 2.0.0 manifest lists); a power cut makes the build
    # resume later and read them again. The installer checks and builds a copy only root can write.
    bundle = tmp_path / "bundle"
    shutil.copytree(releases.bundles["2.0.0"], bundle)
    # A file no manifest names, added before the check: a wheel whose name would make the slot look like 0.9.0, so
    # that an older signed release would pass as an upgrade next time.
    (bundle / "wheels/ocn_edge-0.9.0-py3-none-any.whl").write_bytes(b"not signed by anyone")
    request(root, bundle, "2.0.0")
    process = installer(root, stop_at="build")  # checked, and the build journalled: stopped right there
    kill_when(process, lambda: stopped(process))
    target = next((bundle / "targets").iterdir()).name
    shutil.rmtree(bundle / "wheels")
    shutil.copytree(releases.bundles["1.0.0"] / "wheels", bundle / "wheels")
    shutil.copy(releases.bundles["1.0.0"] / "targets" / target / "constraints.txt", bundle / "targets" / target / "constraints.txt")

    process = installer(root, stop_at="switch")  # the build resumed from the journal, and done
    kill_when(process, lambda: stopped(process))
    opt = root / "opt/ocn-edge"
    done = subprocess.run([str(opt / "b/bin/ocn-edge"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.stdout.split()[-1] == "2.0.0", done
    signed = releases.bundles["2.0.0"]
    for path in signed.rglob("*"):
        if path.is_file() and "deltas" not in path.parts:  # a device keeps what it installs: no deltas
            assert (opt / "b/release" / path.relative_to(signed)).read_bytes() == path.read_bytes(), path
    copied = {p.relative_to(opt / "b/release") for p in (opt / "b/release").rglob("*") if p.is_file()}
    assert copied == {p.relative_to(signed) for p in signed.rglob("*") if p.is_file() and "deltas" not in p.parts}
    assert slot_version(opt, "b") == "2.0.0"
    assert oct((opt / "b/release").stat().st_mode & 0o777) == "0o755"  # the gateway reads a slot's bundle (its deltas' bases)
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (opt / "b/release").rglob("*") if p.is_file())


def test_links_in_the_gateway_s_update_folder_are_not_followed(root: Path, releases: Releases, tmp_path: Path) -> None:
    update = root / "var/lib/ocn-edge/update"
    victim = tmp_path / "slot-file"
    victim.write_text("a file of a slot, which root may write and the gateway may not")

    # Where the installer writes its outcome, a link to a file the gateway may not write: the link goes, the file stays.
    request(root, releases.bundles["1.0.0"], "1.0.0")  # a downgrade: refused at once
    (update / f".{INSTALLED_FILE}.tmp").symlink_to(victim)
    (update / INSTALLED_FILE).symlink_to(victim)
    out, _ = installer(root).communicate(timeout=120)
    assert "refused (downgrade)" in out, out
    assert victim.read_text() == "a file of a slot, which root may write and the gateway may not"
    assert not (update / INSTALLED_FILE).is_symlink() and json.loads((update / INSTALLED_FILE).read_text())["state"] == "refused"
    assert not (update / f".{INSTALLED_FILE}.tmp").exists() and not (update / f".{INSTALLED_FILE}.tmp").is_symlink()

    # A request that is a link to a file the gateway may not read: not read, not acted on.
    elsewhere = tmp_path / "root-only.json"
    elsewhere.write_text(json.dumps({"version": "2.0.0", "bundle": str(releases.bundles["2.0.0"])}))
    (update / REQUEST_FILE).symlink_to(elsewhere)
    process = installer(root)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 1 and "not an update request" in out and "symbolic link" in out, out
    assert os.readlink(root / "opt/ocn-edge/current") == "a" and not (root / "opt/ocn-edge/b").exists()
    assert not (update / REQUEST_FILE).is_symlink(), "removed, so the path unit does not start the installer again and again"
    assert elsewhere.exists()

    # An outcome that is a link (to a record saying 2.0.0 was rolled back here) is not read: 2.0.0 is not refused for it.
    elsewhere.write_text(json.dumps({"state": "rolled_back", "version": "2.0.0", "rolled_back_versions": ["2.0.0"], "ts_ms": 1}))
    (update / INSTALLED_FILE).unlink()
    (update / INSTALLED_FILE).symlink_to(elsewhere)
    request(root, releases.bundles["2.0.0"], "2.0.0")
    process = installer(root, stop_at="build")
    kill_when(process, lambda: stopped(process))
    assert journal_step(root) == "build"


def test_a_fifo_or_a_link_in_a_bundle_is_left_out_of_the_copy_and_the_bundle_refused_without_hanging(
    root: Path, releases: Releases, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(releases.bundles["2.0.0"], bundle)
    constraints = next((bundle / "targets").iterdir()) / "constraints.txt"
    constraints.unlink()
    os.mkfifo(constraints)  # a reader that opened it would wait for a writer for ever
    wheel = next((bundle / "wheels").glob("ocn_edge-*.whl"))
    wheel.rename(tmp_path / wheel.name)
    wheel.symlink_to(tmp_path / wheel.name)
    request(root, bundle, "2.0.0")
    process = installer(root)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 1 and "refused (" in out, out
    outcome = json.loads((root / "var/lib/ocn-edge/update" / INSTALLED_FILE).read_text())
    assert outcome["state"] == "refused", outcome
    assert os.readlink(root / "opt/ocn-edge/current") == "a" and not (root / "opt/ocn-edge/b").exists()
    assert not (root / "var/lib/ocn-edge-update/bundle").exists()  # the copy goes with the update
