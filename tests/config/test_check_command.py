"""`ocn-edge check CONFIG`: exit 0 and the effective config, or exit 2 and every problem."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge.cli import main

OCN_EDGE = Path(sys.executable).with_name("ocn-edge")

# No devices: valid whichever drivers happen to be installed.
VALID = """\
[gateway]
id = "pole-0042"
site = "King St W & Spadina Ave"

[batch]
span = "10m"
"""


def check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(OCN_EDGE), "check", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


POLICY = """\
[policy]
name = "Test street policy"
version = "1"
organisation = "City IT"
contact = "privacy@city.example"
purpose = "Air quality"

[channels."pm-1/pm2_5"]
rule = "keep"
purpose = "Air quality"
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "policy.toml").write_text(POLICY)
    return tmp_path


def test_a_valid_file_exits_0_and_prints_the_effective_config(site: Path) -> None:
    (site / "gateway.toml").write_text(VALID)
    result = check("gateway.toml", cwd=site)
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert effective["batch"] == {"span": "10m", "flush_interval": "30s", "max_readings": 20000, "codec": "zstd"}
    assert effective["privacy"]["policy"] == str(site / "policy.toml")
    assert result.stderr == "gateway.toml: valid (0 buses, 0 of 0 devices enabled)\n"


def test_quiet_prints_nothing_for_a_valid_file(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (site / "gateway.toml").write_text(VALID)
    monkeypatch.chdir(site)
    assert main(["check", "--quiet", "gateway.toml"]) == 0
    assert capsys.readouterr() == ("", "")


def test_an_invalid_file_exits_2_and_lists_every_problem_on_stderr(site: Path) -> None:
    (site / "gateway.toml").write_text('[gateway]\nid = "pole-0042"\nsit = "x"\n[spool]\nmax_size = 200\n')
    result = check("gateway.toml", cwd=site)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        'gateway.toml: gateway.sit: unknown key; did you mean "site"?',
        'gateway.toml: spool.max_size = 200: expected a size like "200MB"',
        "gateway.toml: 2 problems; the gateway will not start",
    ]


def test_a_bad_policy_named_by_a_valid_config_exits_2_with_the_policys_problems(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (site / "gateway.toml").write_text(VALID)
    (site / "policy.toml").write_text(POLICY.replace('contact = "privacy@city.example"\n', ""))
    monkeypatch.chdir(site)
    assert main(["check", "gateway.toml"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "policy.toml: policy.contact is missing: the public notice must say who is accountable and why",
        "gateway.toml: 1 problem; the gateway will not start",
    ]


def test_a_missing_file_exits_2(site: Path) -> None:
    result = check("nowhere.toml", cwd=site)
    assert (result.returncode, result.stderr) == (
        2,
        "nowhere.toml: no such file\nnowhere.toml: 1 problem; the gateway will not start\n",
    )


def test_the_printed_effective_config_passes_the_check_itself(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (site / "gateway.toml").write_text(VALID)
    monkeypatch.chdir(site)
    assert main(["check", "gateway.toml"]) == 0
    effective = capsys.readouterr().out
    (site / "effective.toml").write_text(effective)
    assert main(["check", "effective.toml"]) == 0
    again = capsys.readouterr().out
    assert again.splitlines()[1:] == effective.splitlines()[1:]  # the first line is a comment naming the file


def test_check_is_listed_in_the_command_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps to the longest command's name
    assert "validate a gateway config file and print the effective settings" in listing
