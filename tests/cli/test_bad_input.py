"""Every `ocn-edge` command given bad input: one line naming the file, option or value, the documented exit status,
and never a traceback.

The walk runs in process through `edge.cli.main` (fast); the issue's own reproduction and the hub's
serve path, which changes process-wide settings once its options are valid, run as real processes.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak.evidence import LIBRARY_WORDS
from edge.cli import EXIT_BUG, build_parser, main

# Files every row may name, written once per module by the `files` fixture.
FILES = {
    "bad.toml": "[gateway\nid =",
    "empty.toml": "",
    "list.json": "[1, 2]",
    "bad.json": "{nope",
    "deep.json": "[" * 100_000 + "]" * 100_000,
    "bad.pem": "-----BEGIN PRIVATE KEY-----\nzzzz\n-----END PRIVATE KEY-----\n",
    "before-1970.csv": "time,channel,value\n-5,pm-1/pm2_5,1\n",
    "after-9999.csv": "time,channel,value\n1767225600,pm-1/pm2_5,1\n99999999999999999999,pm-1/pm2_5,2\n",
    "overflow.csv": "time,channel,value\n1767225600,pm-1/pm2_5,1e999\n",
    "int65.csv": "time,channel,value\n1767225600,m-1/count,18446744073709551616\n",
    "ok.csv": "time,channel,value\n1767225600,pm-1/pm2_5,1.5\n",
    "file": "not a directory\n",
}
BINARY = {"latin1.toml": b"\xff\xfeid = 1\n", "garbage.oxp": b"\x00\x01 not a batch"}

# (command, arguments with {placeholders} for the files, exit status, what the one line must say)
CASES = [
    ("run", "{missing}/gateway.toml", 2, ["{missing}/gateway.toml", "no such file"]),
    ("run", "{dir}", 2, ["{dir}", "is a directory"]),
    ("run", "{bad.toml}", 2, ["{bad.toml}", "line 1"]),
    ("demo", "--duration nan", 2, ["--duration", "'nan'"]),
    ("demo", "--duration -1", 2, ["--duration", "'-1'"]),
    ("demo", "--state-dir {file} --duration 1", 2, ["{file}", "a file is in the way"]),
    ("demo", "--scenario {missing}/s.toml --duration 1", 2, ["{missing}/s.toml"]),
    ("init", "{file}", 2, ["{file}"]),
    ("init", "{file}/sub", 2, ["{file}/sub"]),
    ("check", "{dir}", 2, ["{dir}", "is a directory"]),  # and the summary line `check` documents
    ("check", "{latin1.toml}", 2, ["{latin1.toml}", "not UTF-8"]),
    ("status", "--config {missing}/gateway.toml", 2, ["{missing}/gateway.toml", "no such file"]),
    ("status", "--url notaurl", 2, ["--url", "'notaurl'", "http://"]),
    ("access-token create", "--config {bad.toml}", 2, ["{bad.toml}", "line 1"]),
    ("enrol", "{bad.toml} --token x", 2, ["{bad.toml}", "line 1"]),
    ("enrol", "{gw}/gateway.toml --first-boot --retry-for nan", 2, ["--retry-for", "'nan'"]),
    ("drivers", "no-such-driver", 2, ["'no-such-driver'"]),
    ("driver new", "'Bad Name'", 2, ["'Bad Name'", "lowercase"]),
    ("driver new", "good-name --dir {file}", 2, ["{file}", "a file is in the way"]),
    ("ports", "--bogus", 2, ["--bogus"]),
    ("scan", "--tcp 127.0.0.1:99999", 2, ["--tcp", "'127.0.0.1:99999'", "1..65535"]),
    ("scan", "--port /dev/null --baud -5", 2, ["--baud", "'-5'"]),
    ("scan", "--port /dev/null --baud fast", 2, ["--baud", "'fast'"]),
    ("scan", "--tcp 127.0.0.1:1 --units 0-300", 2, ["--units", "'0-300'", "1..247"]),
    ("scan", "--tcp 127.0.0.1:1 --timeout nan", 2, ["--timeout", "'nan'"]),
    ("scan", "--tcp 127.0.0.1:1 --register holding:70000", 2, ["--register", "'holding:70000'"]),
    ("read", "--tcp 127.0.0.1:1 --unit 999 --profile eastron-sdm120", 2, ["--unit", "'999'", "1 to 247"]),
    ("read", "--tcp 127.0.0.1:1 --unit 1 --profile {bad.toml}", 2, ["{bad.toml}", "line 1"]),
    ("read", "--tcp 127.0.0.1:1 --unit 1 --profile {dir}", 2, ["{dir}"]),
    ("read", "--port /dev/null --driver sds011 --wait -1", 2, ["--wait", "'-1'"]),
    ("read", "--port /dev/null --driver sds011 --baud 0", 2, ["--baud", "'0'"]),
    ("read", "--port /dev/null --driver sds011 --option mode=bogus", 2, ["mode", "'bogus'"]),
    ("read", "--config {missing}/gateway.toml dev", 2, ["{missing}/gateway.toml", "no such file"]),
    ("policy check", "{dir}", 1, ["{dir}", "is a directory"]),
    ("policy check", "{latin1.toml}", 1, ["{latin1.toml}", "not UTF-8"]),
    ("policy check", "{gw}/policy.toml --governance-key {bad.pem}", 1, ["{bad.pem}", "PEM Ed25519 public key"]),
    ("policy sign", "{gw}/policy.toml --key {bad.pem}", 1, ["--key {bad.pem}", "PEM Ed25519 private key"]),
    ("policy sign", "{gw}/policy.toml --key {dir}", 1, ["{dir}", "is a directory"]),
    ("policy verify", "{gw}/policy.toml --key {bad.pem}", 1, ["{bad.pem}", "PEM Ed25519 public key"]),
    ("policy explain", "{missing}/policy.toml", 1, ["{missing}/policy.toml", "no such policy file"]),
    ("policy keygen", "{file}", 2, ["{file}", "a file is in the way"]),
    ("policy keygen", "{file}/sub", 2, ["{file}/sub", "a file is in the way"]),
    ("notice", "{dir}", 1, ["{dir}", "is a directory"]),
    ("notice", "{gw}/gateway.toml --out {file}", 2, ["--out {file}", "a file is in the way"]),
    ("sim", "{dir}", 2, ["{dir}", "is a directory"]),
    ("sim", "{latin1.toml}", 2, ["{latin1.toml}", "not UTF-8"]),
    ("sim", "{bad.toml}", 2, ["{bad.toml}", "not valid TOML"]),
    ("sim", "default --duration -1", 2, ["--duration", "'-1'"]),
    ("sim", "default --write-config {dir}", 2, ["--write-config {dir}", "is a directory"]),
    ("hub", "--listen nope --state-dir {hub}", 2, ["--listen", "'nope'"]),
    ("hub", "--rate nan --state-dir {hub}", 2, ["--rate", "'nan'"]),
    ("hub", "--burst -1 --state-dir {hub}", 2, ["--burst", "'-1'"]),
    ("hub", "--public-nice 25 --state-dir {hub}", 2, ["--public-nice", "25"]),
    ("hub release add", "{missing}/bundle --key {bad.pem} --state-dir {hub}", 2, ["--key {bad.pem}", "not a PEM public key"]),
    ("hub release add", "{missing}/bundle --key {key} --state-dir {hub}", 2, ["--key {key}", "not a PEM public key"]),
    ("release keygen", "--out {file}", 2, ["--out {file}", "a file is in the way"]),
    ("release build", "{dir} --version 1.x --min-from 1.0.0 --key {key} --out {missing}/b", 2, ["--version = '1.x'", "whole numbers"]),
    ("release build", "{dir} --version 1.0.0 --min-from 1.0.0 --key {bad.pem} --out {missing}/b", 2, ["--key {bad.pem}", "PEM private key"]),
    ("release build", "{missing}/wh --version 1.0.0 --min-from 1.0.0 --key {key} --out {missing}/b", 2, ["{missing}/wh", "no such directory"]),
    ("release build", "{dir} --version 1.0.0 --min-from 1.0.0 --key {key} --out {missing}/b --valid-days 0", 2, ["--valid-days", "'0'"]),
    ("release verify", "{dir} --key {missing}/release.pub", 2, ["{missing}/release.pub", "no such file"]),
    ("release verify", "{missing}/bundle --key {bad.pem}", 2, ["--key {bad.pem}", "not a PEM public key"]),
    ("release fetch", "http://127.0.0.1:9/r --key {bad.pem} --state {dir}", 2, ["--key {bad.pem}", "not a PEM public key"]),
    ("release fetch", "http://127.0.0.1:9/r --key {key} --state {dir} --max-bytes -1", 2, ["--max-bytes", "'-1'"]),
    ("release fetch", "https://127.0.0.1:9/r --key {bad.pem} --state {dir} --ca {missing}/ca.pem", 2, ["--ca {missing}/ca.pem", "no such file"]),
    ("release build", "{dir} --version 1.0.0 --min-from 1.0.0 --key {key} --out {missing}/b --rollover {bad.json}", 2,
     ["--rollover {bad.json}", "not CBOR"]),
    ("release rotate", "--key {bad.pem} --new {key} --out {out}.cbor", 2, ["--key {bad.pem}", "PEM private key"]),
    ("release rotate", "--key {key} --new {missing}/new.pub --out {out}.cbor", 2, ["{missing}/new.pub", "no such file"]),
    ("release rotate", "--key {key} --new {key} --out {out}.cbor --old-valid-days -1", 2, ["--old-valid-days", "'-1'"]),
    ("hub key rotate", "--state-dir {dir}", 2, ["{dir}/hub.key", "no hub key here"]),
    ("hub key switch", "--state-dir {missing}", 2, ["{missing}/hub.key", "no hub key here"]),
    ("hub key status", "--state-dir {file}", 2, ["{file}/hub.key", "no hub key here"]),
    ("hub key ca", "--bundle {bad.json} --state-dir {hub}", 2, ["--bundle {bad.json}", "PEM certificates"]),
    ("hub key ca", "--state-dir {hub}", 2, ["--bundle", "--clear", "required"]),
    ("hub token create", "--uses 99999999999999999999999 --state-dir {hub}", 2, ["--uses", "'99999999999999999999999'"]),
    ("hub token create", "--expires 99999999999d --state-dir {hub}", 2, ["--expires", "'99999999999d'", "at most"]),
    ("hub token create", "--state-dir {file}", 2, ["--state-dir {file}", "a file is in the way"]),
    ("hub token list", "--db nosuch://x", 2, ["--db", "'nosuch://x'"]),
    ("hub token list", "--db postgresql://u@127.0.0.1:port/db", 2, ["--db", "'postgresql://u@127.0.0.1:port/db'"]),
    ("hub device list", "--stale-after soon --state-dir {hub}", 2, ["--stale-after", "'soon'"]),
    ("hub device revoke", "'Not A Device!' --state-dir {hub}", 2, ["'Not A Device!'", "device id"]),
    ("hub device approve", "{long_id} --state-dir {hub}", 2, ["device id"]),
    ("hub desired set", "--fleet f {missing}/d.json --state-dir {hub}", 2, ["{missing}/d.json", "no such file"]),
    ("hub desired set", "--fleet f {dir} --state-dir {hub}", 2, ["{dir}", "is a directory"]),
    ("hub desired set", "--fleet f {bad.json} --state-dir {hub}", 2, ["{bad.json}", "not valid JSON", "line 1"]),
    ("hub desired set", "--fleet f {deep.json} --state-dir {hub}", 2, ["{deep.json}", "nested too deeply"]),
    ("hub desired set", "--fleet f {list.json} --state-dir {hub}", 2, ["{list.json}", "got list"]),
    ("hub desired set", "--fleet f {latin1.toml} --state-dir {hub}", 2, ["{latin1.toml}", "not UTF-8"]),
    ("hub desired set", "--fleet f {bad.toml} --state-dir {hub}", 2, ["{bad.toml}", "not valid TOML", "line 1"]),
    ("hub desired clear", "--device 'x y' --state-dir {hub}", 2, ["'x y'", "device id"]),
    ("hub login-link", "--url 'ftp://hub' --state-dir {hub}", 2, ["--url", "'ftp://hub'"]),
    ("hub user add", "'Bad Name' --role viewer --state-dir {hub}", 2, ["account name", "'Bad Name'", "lowercase"]),
    ("hub user add", "bob --role king --state-dir {hub}", 2, ["role 'king'", "privacy-officer"]),
    ("hub user role", "nobody viewer --state-dir {hub}", 2, ["account 'nobody'", "no such enabled account"]),
    ("hub user disable", "nobody --state-dir {hub}", 2, ["account 'nobody'", "no such enabled account"]),
    ("hub user token", "nobody --state-dir {hub}", 2, ["account 'nobody'", "no such enabled account"]),
    ("hub user list", "--db nosuch://x", 2, ["--db", "'nosuch://x'"]),
    ("hub audit export", "--output {file}/sub --state-dir {hub}", 2, ["{file}/sub", "a file is in the way"]),
    ("hub audit export", "--format xml --state-dir {hub}", 2, ["--format", "'xml'"]),
    ("hub retention run", "--db nosuch://x", 2, ["--db", "'nosuch://x'"]),
    ("hub rollout start", "2.0.0 --fleet f --stages 50%,25% --state-dir {hub}", 2, ["--stages", "each stage must reach more devices"]),
    ("hub rollout start", "2.0.0 --fleet f --stages 5%,ring1 --state-dir {hub}", 2, ["--stages", "'ring1'", "percentage", "ring names"]),
    ("hub rollout start", "2.0.0 --fleet f --stages canary,canary --state-dir {hub}", 2, ["--stages", "'canary,canary'", "named twice"]),
    ("hub rollout start", "2.0.0 --fleet f --stages *,canary --state-dir {hub}", 2, ["--stages ring", "'*'", "ring name"]),
    ("hub device ring", "pole-1 'Bad Ring' --state-dir {hub}", 2, ["'Bad Ring'", "ring name"]),
    ("hub device ring", "'Pole 1' canary --state-dir {hub}", 2, ["'Pole 1'", "device id"]),
    ("hub rollout start", "2.0.0 --fleet f --wait soon --state-dir {hub}", 2, ["--wait", "'soon'"]),
    ("hub rollout start", "2.0.0 --fleet f --max-failures 200% --state-dir {hub}", 2, ["--max-failures", "'200%'"]),
    ("hub rollout start", "9.9.9 --fleet f --state-dir {hub}", 1, ["release '9.9.9' is not kept at this hub"]),
    ("hub rollout status", "--db nosuch://x", 2, ["--db", "'nosuch://x'"]),
    ("hub rollout halt", "0 --state-dir {hub}", 2, ["ID", "'0'"]),
    ("hub rollout resume", "x --state-dir {hub}", 2, ["ID", "'x'"]),
    ("image seed", "{dir} --device-id 'Pole 1' --hub https://hub.example/ --token t", 2, ["--device-id", "'Pole 1'"]),
    ("image seed", "{dir} --device-id pole-1 --hub https://hub.example/ --token t --latitude nan --longitude 1", 2,
     ["--latitude", "nan"]),
    ("image seed", "{missing}/bootfs --device-id pole-1 --hub https://hub.example/ --token t", 2, ["{missing}/bootfs"]),
    ("image seed", "--batch {dir} --out {out} --hub https://hub.example/ --token t", 2, ["{dir}", "is a directory"]),
    ("keygen", "--out {file}", 2, ["--out {file}", "a file is in the way"]),
    ("keygen", "--out {file}/sub", 2, ["--out {file}/sub"]),
    ("oxp encode", "{before-1970.csv} --key {key} --batch-seconds 60 -o {out}", 2,
     ["{before-1970.csv}:2", "column time", "'-5'", "1970-01-01"]),
    ("oxp encode", "{after-9999.csv} --key {key} --batch-seconds 60 -o {out}", 2,
     ["{after-9999.csv}:3", "'99999999999999999999'", "9999-12-31"]),
    ("oxp encode", "{overflow.csv} --key {key} --batch-seconds 60 -o {out}", 2, ["{overflow.csv}:2", "'1e999'"]),
    ("oxp encode", "{int65.csv} --key {key} --batch-seconds 60 -o {out}", 2,
     ["{int65.csv}:2", "'18446744073709551616'", "2**63-1"]),
    ("oxp encode", "{dir} --key {key} --batch-seconds 60 -o {out}", 2, ["{dir}"]),
    ("oxp encode", "{latin1.toml} --key {key} --batch-seconds 60 -o {out}", 2, ["{latin1.toml}", "not UTF-8"]),
    ("oxp encode", "{ok.csv} --key {bad.pem} --batch-seconds 60 -o {out}", 2, ["{bad.pem}", "PEM private key"]),
    ("oxp encode", "{ok.csv} --key {key} --batch-seconds 60 -o {file}", 2, ["-o {file}", "a file is in the way"]),
    ("oxp encode", "{ok.csv} --key {key} --batch-seconds 0 -o {out}", 2, ["--batch-seconds", "'0'"]),
    ("oxp encode", "{ok.csv} --key {key} --batch-seconds 60 -o {out} --boot-epoch -1", 2, ["boot_epoch = -1"]),
    ("oxp encode", "{ok.csv} --key {key} --batch-seconds 60 -o {out} --device-id 'Pole 1'", 2, ["'Pole 1'"]),
    ("oxp encode", "{ok.csv} --key {key} --batch-seconds 60 -o {out} --resolution pm-1/pm2_5=nan", 2,
     ["--resolution", "'pm-1/pm2_5=nan'"]),
    ("oxp inspect", "{dir}", 2, ["{dir}", "cannot read"]),
    ("oxp inspect", "{garbage.oxp}", 1, ["{garbage.oxp}", "malformed"]),  # 1: invalid, as its help says
    ("oxp inspect", "{garbage.oxp} --pub {key}", 2, ["{key}", "PEM public key"]),
    ("oxp senml", "{missing}/b.oxp", 2, ["{missing}/b.oxp", "cannot read"]),
]
# `check` ends its list of problems with a summary line, as its help documents.
LINES = {"check": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    for name, text in FILES.items():
        (root / name).write_text(text, encoding="utf-8")
    for name, data in BINARY.items():
        (root / name).write_bytes(data)
    (root / "dir").mkdir()
    assert main(["init", str(root / "gw")]) == 0
    assert main(["keygen", "--out", str(root / "keys")]) == 0
    paths = {name: str(root / name) for name in [*FILES, *BINARY]}
    return paths | {"dir": str(root / "dir"), "missing": str(root / "missing"), "gw": str(root / "gw"),
                    "key": str(root / "keys" / "device.key"), "out": str(root / "out"), "hub": str(root / "hub"),
                    "long_id": "x" * 65}


@pytest.fixture(autouse=True)
def logging_untouched():
    """`ocn-edge sim` and `demo` set up logging for the process; undo it, so no later test logs to a closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def argv(command: str, arguments: str, files: dict[str, str]) -> list[str]:
    text = arguments
    for name, path in files.items():
        text = text.replace("{" + name + "}", shlex.quote(path))
    return [*command.split(), *shlex.split(text)]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = main(args)
    except SystemExit as exc:  # argparse refusing the command line
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(("command", "arguments", "status", "says"), CASES,
                         ids=[f"{c} {a}"[:70] for c, a, _, _ in CASES])
def test_bad_input_ends_in_one_line_naming_it(command, arguments, status, says, files, capsys):
    got, out, err = run(argv(command, arguments, files), capsys)
    lines = err.strip().splitlines()
    assert "Traceback" not in out + err
    assert not LIBRARY_WORDS.search(err), f"a library's words reached the operator: {err}"
    assert got == status, err
    assert len(lines) == LINES.get(command, 1), err
    for fragment in says:
        for name, path in files.items():
            fragment = fragment.replace("{" + name + "}", path)
        assert fragment in lines[0]


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every command that does something: a group like `ocn-edge oxp` only prints its usage."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return {prefix}
    return set().union(*(_commands(child, f"{prefix} {name}".strip()) for name, child in groups[0].choices.items()))


def test_every_command_is_walked_with_bad_input():
    walked = {command for command, _, _, _ in CASES}
    commands = _commands(build_parser()) | {"hub"}  # `ocn-edge hub` alone serves
    assert not commands - walked, f"add a bad-input row to CASES for: {', '.join(sorted(commands - walked))}"


def test_a_bug_says_so_once_with_its_traceback_and_exit_70(monkeypatch, capsys):
    import edge.commands.oxp

    def broken(args):
        raise KeyError("not the user's fault")

    monkeypatch.setattr(edge.commands.oxp, "_inspect", broken)
    status, _, err = run(["oxp", "inspect", "whatever.oxp"], capsys)
    assert status == EXIT_BUG
    assert err.count("Traceback") == 1 and err.count("this is a bug in ocn-edge") == 1
    assert err.strip().splitlines()[-1].startswith("ocn-edge: this is a bug")


def test_the_installed_command_reports_a_csv_time_before_1970_in_one_line(files):
    # The reproduction from issue 11: this ended in a traceback from the batch header.
    exe = Path(sys.executable).with_name("ocn-edge")
    result = subprocess.run([str(exe), *argv("oxp encode", "{before-1970.csv} --key {key} --batch-seconds 60 -o {out}",
                                                files)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{files['before-1970.csv']}:2: column time: value '-5': expected ISO-8601 (2026-01-01T00:00:00Z) or epoch"
        " seconds with at most 3 decimals, from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"]


def test_the_hub_with_a_file_for_its_state_directory_says_so_in_one_line(files):
    exe = Path(sys.executable).with_name("ocn-edge")
    result = subprocess.run([str(exe), "hub", "--state-dir", files["file"], "--listen", "127.0.0.1:0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"ocn-edge hub: {files['file']}: a file is in the way; expected the state directory"]
