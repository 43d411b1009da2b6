"""OCN Edge installed from its wheel, as a pole's image installs it, works away from the source tree.

The wheel is built once from the working tree and installed with --no-deps into a fresh venv.
The third-party dependencies come from the dev venv through a directory of symlinks that leaves
out OCN Edge's own editable install (its __editable__ finder and dist-info), so every `edge`,
`drivers`, `hub` and `hilsim` module the commands import is the installed copy. Every command
runs from a directory outside the repository.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = ("edge", "drivers", "hub", "hilsim")
# What the wheel is built from: the working tree without what git ignores or the wheel never holds.
NOT_BUILT_FROM = {".git", ".venv", "build", ".hypothesis", ".pytest_cache", "var", "tests", "__pycache__"}


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    home: Path  # the working directory of every command: outside the repository
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.venv / "bin" / "ocn-edge"), *args], cwd=self.home, env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)
        if "Traceback" in done.stderr:
            pytest.fail(f"ocn-edge {' '.join(args)} crashed:\n{done.stderr}", pytrace=False)
        return done


def _copy_source(destination: Path) -> None:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n.endswith(".egg-info") or n == "__pycache__"}
        if Path(directory) == REPO:
            skipped |= NOT_BUILT_FROM & set(names)
        return skipped

    shutil.copytree(REPO, destination, symlinks=True, ignore=ignore)


def _dependencies_without_ocn_edge(link_dir: Path) -> None:
    """Symlinks to every third-party package of the dev venv, leaving out OCN Edge's own editable install."""
    link_dir.mkdir()
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        for entry in Path(site).iterdir():
            name = entry.name
            if (name.startswith(("__editable__", "ocn_edge", "_distutils_hack")) or name.endswith(".pth")
                    or name.split(".")[0] in OURS or (link_dir / name).exists()):
                continue
            (link_dir / name).symlink_to(entry)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.resolve().is_relative_to(REPO), "the commands must run outside the repository"
    source = work / "source"
    _copy_source(source)  # the build writes build/ and *.egg-info into its source: not into the checkout
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-build-isolation", "--no-deps", "--no-index", "-w", str(dist),
                    str(source)], check=True, timeout=120, cwd=work, capture_output=True)
    (wheel,) = dist.glob("ocn_edge-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=120, cwd=work, capture_output=True)
    deps = work / "deps"
    _dependencies_without_ocn_edge(deps)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "ocn-edge-test-dependencies.pth").write_text(f"{deps}\n")
    home = work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "OCN_DATASETS", "OCN_HUB_STATE_DIR", "OCN_HUB_DB"}}
    return Installed(wheel=wheel, venv=venv, home=home, env=env)


def test_every_data_file_of_the_packages_is_in_the_wheel(installed):
    in_wheel = set(zipfile.ZipFile(installed.wheel).namelist())
    package_dirs = {"edge": REPO / "edge", "drivers": REPO / "drivers", "hub": REPO / "hub", "hilsim": REPO / "hil-sim" / "hilsim"}
    data = sorted(f"{name}/{path.relative_to(root)}" for name, root in package_dirs.items() for path in root.rglob("*")
                  if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts)
    assert "edge/privacy/policies/demo.toml" in data
    assert [f for f in data if f not in in_wheel] == []
    assert {n.split("/")[0] for n in in_wheel if not n.startswith("ocn_edge-")} == set(OURS)


def test_the_installed_modules_and_distribution_are_the_venvs_not_the_checkout(installed):
    probe = ("import json, importlib.metadata as m, edge, drivers, hub, hilsim, edge.demo\n"
             "print(json.dumps({'modules': [edge.__file__, drivers.__file__, hub.__file__, hilsim.__file__],\n"
             "  'demo_policy': str(edge.demo.DEMO_POLICY),\n"
             "  'distributions': [str(d.locate_file('')) for d in m.distributions() if d.metadata['Name'] == 'ocn-edge']}))")
    out = subprocess.run([str(installed.python), "-c", probe], cwd=installed.home, env=installed.env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    found = json.loads(out)
    print(found["modules"])
    for path in [*found["modules"], found["demo_policy"], *found["distributions"]]:
        assert Path(path).is_relative_to(installed.venv), path
    assert len(found["distributions"]) == 1, "only the wheel's ocn-edge is installed, not the checkout's editable one"
    assert Path(found["demo_policy"]).is_file()


def test_help_lists_the_commands(installed):
    done = installed.run("--help")
    assert done.returncode == 0
    assert "ocn-edge demo" in done.stdout and "hub" in done.stdout


def test_the_demo_runs_with_its_packaged_policy_and_loses_nothing(installed):
    done = installed.run("demo", "--duration", "6", "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["readings_acknowledged"] > 0
    assert summary["readings_lost"] == 0
    assert summary["duplicates"] == 0


def test_a_replay_scenario_without_ocn_datasets_says_to_set_it(installed):
    done = installed.run("demo", "--scenario", "replay", "--duration", "1", "--json")
    assert done.returncode == 2
    assert "OCN_DATASETS is not set" in done.stderr
    assert done.stdout == ""


def test_shipped_drivers_profiles_and_policy_load_from_the_install(installed, tmp_path):
    listed = installed.run("drivers")
    assert listed.returncode == 0
    for driver in ("modbus", "sds011", "pms5003", "nmea-gps", "pedestrian-counter"):
        assert driver in listed.stdout
    (policy,) = installed.venv.glob("lib/python3*/site-packages/edge/privacy/policies/demo.toml")
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\nid = "pole-0001"\nstate_dir = "state"\n'
        '[[buses]]\nname = "rs485-1"\ntype = "modbus-rtu"\nport = "/dev/ttyUSB0"\n'
        '[[devices]]\nname = "meter-1"\ndriver = "modbus"\nbus = "rs485-1"\naddress = 1\n'
        '[devices.options]\nprofile = "eastron-sdm630"\n'
        f'[privacy]\npolicy = "{policy}"\n[uplink]\nhub = ""\n'
    )
    checked = installed.run("check", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "eastron-sdm630" in checked.stdout
    notice = installed.run("notice", str(config), "--out", str(tmp_path))
    assert notice.returncode == 0, notice.stderr
    assert "<html" in (tmp_path / "notice.html").read_text().lower()


def test_init_writes_starting_files_that_check_from_the_install(installed, tmp_path):
    target = tmp_path / "etc" / "ocn-edge"
    done = installed.run("init", str(target))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["gateway.toml", "policy.toml"]
    checked = installed.run("check", str(target / "gateway.toml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f'policy = "{target / "policy.toml"}"' in checked.stdout


def test_keygen_and_oxp_seal_and_verify_a_batch(installed, tmp_path):
    assert installed.run("keygen", "--out", str(tmp_path / "keys")).returncode == 0
    readings = tmp_path / "readings.csv"
    readings.write_text("time,channel,value,unit\n2026-01-01T00:00:00Z,pm-1/pm2_5,12.3,ug/m3\n"
                        "2026-01-01T00:00:10Z,pm-1/pm2_5,12.5,ug/m3\n")
    sealed = installed.run("oxp", "encode", str(readings), "--key", str(tmp_path / "keys" / "device.key"),
                           "--batch-seconds", "60", "-o", str(tmp_path / "out"))
    assert sealed.returncode == 0, sealed.stderr
    (batch,) = (tmp_path / "out").glob("*.oxp")
    shown = installed.run("oxp", "inspect", str(batch), "--pub", str(tmp_path / "keys" / "device.pub"), "--json")
    assert shown.returncode == 0, shown.stderr
    inspected = json.loads(shown.stdout)
    assert inspected["verified"] is True
    assert [(s["channel"], s["count"]) for s in inspected["series"]] == [("pm-1/pm2_5", 2)]


async def test_the_hub_serves_its_pages_and_dashboard_from_the_install(installed, tmp_path):
    state = tmp_path / "hub"
    log = (tmp_path / "hub.log").open("w")
    hub = await asyncio.create_subprocess_exec(
        str(installed.venv / "bin" / "ocn-edge"), "hub", "--listen", "127.0.0.1:0", "--state-dir", str(state),
        "--admin-token", "packaging-test-admin-token", cwd=installed.home, env=installed.env,
        stdout=log, stderr=asyncio.subprocess.PIPE)
    assert hub.stderr is not None
    try:
        url = None
        async with asyncio.timeout(20):
            while url is None:
                line = (await hub.stderr.readline()).decode()
                assert line, "the hub exited before serving"
                assert "Traceback" not in line
                if m := re.search(r"serving on (http://127\.0\.0\.1:\d+)", line):
                    url = m.group(1)
        link = installed.run("hub", "login-link", "--url", url, "--state-dir", str(state))
        assert link.returncode == 0, link.stderr
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(f"{url}/") as home:
                assert home.status == 200
                assert "<h1>Open City Network hub</h1>" in await home.text()
            async with http.get(f"{url}/transparency") as register:
                assert register.status == 200
                assert "<h1>Transparency register</h1>" in await register.text()
            async with http.get(link.stdout.strip()) as fleet:
                assert fleet.status == 200 and fleet.url.path == "/fleet"
                page = await fleet.text()
                assert "<h1>Fleet</h1>" in page and "{{" not in page and "{%" not in page
    finally:
        if hub.returncode is None:
            hub.terminate()
        code = await asyncio.wait_for(hub.wait(), 20)
        log.close()
    rest = (await hub.stderr.read()).decode()
    assert code == 0, rest
    assert "Traceback" not in rest
