"""The udev rules name serial adapters /dev/ocn/<name> from the technician's list; journald is capped.

CI has no udev and no USB adapters, so the rules are checked in two parts: every rule line
is well-formed udev syntax with keys udev knows, and the lookup program the naming rule runs
is run for real (after udev's own substitutions) against a names file like a technician's.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

IMAGES = Path(__file__).resolve().parents[2] / "images"
RULES = IMAGES / "udev" / "99-ocn-serial.rules"
JOURNALD = IMAGES / "journald" / "ocn-edge.conf"
NAMES = "/etc/ocn-edge/serial-names"
OCN_EDGE = Path(sys.executable).with_name("ocn-edge")

PAIR = re.compile(r'\s*(?P<key>[A-Z_]+(?:\{[^}]*\})?)\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*(?:,|$)')
KNOWN = {"ACTION", "SUBSYSTEM", "ENV", "GROUP", "MODE", "SYMLINK", "TEST", "PROGRAM", "RESULT", "GOTO", "LABEL"}


def _rules() -> list[list[tuple[str, str, str]]]:
    """Each rule line as (key, operator, value) triples; fails on anything udev would not parse."""
    rules = []
    for number, line in enumerate(RULES.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pairs, at = [], 0
        while at < len(line):
            match = PAIR.match(line, at)
            assert match, f"{RULES.name}:{number}: not a udev key=\"value\" list from column {at}: {line[at:]!r}"
            pairs.append((match["key"], match["op"], match["value"]))
            at = match.end()
        rules.append(pairs)
    return rules


def test_every_rule_line_is_udev_syntax_with_known_keys():
    rules = _rules()
    assert rules
    for pairs in rules:
        assert {key.split("{")[0] for key, _, _ in pairs} <= KNOWN, pairs
    labels = {value for pairs in rules for key, _, value in pairs if key == "LABEL"}
    gotos = {value for pairs in rules for key, _, value in pairs if key == "GOTO"}
    assert gotos == labels == {"ocn_serial_end"}


def test_usb_serial_ports_go_to_dialout_and_get_ocn_links():
    assignments = [(key, op, value) for pairs in _rules() for key, op, value in pairs]
    assert ("GROUP", "=", "dialout") in assignments
    assert ("MODE", "=", "0660") in assignments
    links = [value for key, op, value in assignments if key == "SYMLINK"]
    assert links == ["ocn/by-serial/$env{ID_SERIAL_SHORT}", "ocn/%c"]


def _lookup(serial: str, names_file: Path) -> str:
    """Run the naming rule's PROGRAM as udev would for an adapter with this serial number."""
    (program,) = [value for pairs in _rules() for key, _, value in pairs if key == "PROGRAM"]
    command = program.replace("$env{ID_SERIAL_SHORT}", serial).replace("$$", "$")
    argv = [str(names_file) if arg == NAMES else arg for arg in shlex.split(command)]
    assert NAMES in program and str(names_file) in argv
    done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def names(tmp_path) -> Path:
    path = tmp_path / "serial-names"
    path.write_text(
        "# adapters on pole 42\n"
        "A10K4Z9X  pm-1\n"
        "5A3F0172\tmeter-bus\n"
        "BADNAME1 ../../etc/passwd\n"
        "BADNAME1 also-bad/\n"
        "TWICE001 first\n"
        "TWICE001 second\n"
    )
    return path


def test_a_named_adapter_gets_its_name(names):
    assert _lookup("A10K4Z9X", names) == "pm-1"
    assert _lookup("5A3F0172", names) == "meter-bus"


def test_an_unnamed_adapter_gets_none_and_the_first_name_wins(names):
    assert _lookup("FFFF0000", names) == ""
    assert _lookup("TWICE001", names) == "first"


def test_a_name_that_could_leave_dev_ocn_is_ignored(names):
    assert _lookup("BADNAME1", names) == ""


def test_a_gateway_config_may_name_a_port_under_dev_ocn(tmp_path):
    subprocess.run([str(OCN_EDGE), "init", str(tmp_path)], check=True, capture_output=True, timeout=60)
    config = tmp_path / "gateway.toml"
    text = config.read_text()
    assert 'port = "/dev/ttyUSB0"' in text
    config.write_text(text.replace('port = "/dev/ttyUSB0"', 'port = "/dev/ocn/pm-1"', 1))
    done = subprocess.run([str(OCN_EDGE), "check", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "/dev/ocn/pm-1" in done.stdout


def _journald() -> dict[str, str]:
    section, found = "", {}
    for line in JOURNALD.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif line.strip() and not line.startswith("#"):
            assert section == "[Journal]", line
            key, _, value = line.partition("=")
            found[key] = value
    return found


def _bytes(size: str) -> int:
    parsed = re.fullmatch(r"(\d+)([KMG])", size)
    assert parsed, size
    number, unit = parsed.groups()
    return int(number) << {"K": 10, "M": 20, "G": 30}[unit]


def test_journald_caps_what_the_journal_may_take_of_the_card_and_of_ram():
    journal = _journald()
    assert _bytes(journal["SystemMaxUse"]) <= 128 << 20
    assert _bytes(journal["SystemMaxFileSize"]) < _bytes(journal["SystemMaxUse"])
    assert _bytes(journal["RuntimeMaxUse"]) <= 32 << 20
    assert journal["Compress"] == "yes"
    assert journal["Storage"] == "persistent", "what happened before a power cut is what a technician needs"
