"""`ocn-edge policy check|sign|verify|explain|keygen` and `ocn-edge notice`, and signed policies at load time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli import main
from edge.privacy import PolicyError, load_policy
from edge.privacy.signing import write_governance_keypair

from .support import write_policy

RULES = '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 5\n[channels."pm-1/*"]\nrule = "keep"\n'


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return write_governance_keypair(tmp_path / "governance")


def test_check_prints_the_rule_count_and_digest(tmp_path, capsys) -> None:
    path = write_policy(tmp_path, RULES)
    assert main(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: 2 rules, digest {load_policy(path).digest.hex()}" in out


def test_check_lists_every_problem_on_stderr_and_exits_1(tmp_path, capsys) -> None:
    path = write_policy(tmp_path, '[channels."a/b"]\nrule = "quantize"\n[channels."a/c"]\nrule = "fuzz"\n')
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == 'policy.toml: channels."a/b".step = None: expected a step to round values to, e.g. step = 0.5'
    assert err[1].startswith('policy.toml: channels."a/c".rule = "fuzz": expected one of keep, drop')


def test_sign_then_verify_succeeds_and_names_the_governance_key(tmp_path, keys, capsys) -> None:
    private, public = keys
    path = write_policy(tmp_path, RULES)
    assert main(["policy", "sign", str(path), "--key", str(private)]) == 0
    assert (tmp_path / "policy.toml.sig").exists()
    assert main(["policy", "verify", str(path), "--key", str(public)]) == 0
    assert "signature valid, governance key" in capsys.readouterr().out


def test_a_policy_changed_after_signing_is_refused(tmp_path, keys, capsys) -> None:
    private, public = keys
    path = write_policy(tmp_path, RULES)
    main(["policy", "sign", str(path), "--key", str(private)])
    path.write_text(path.read_text().replace("k = 5", "k = 2"))
    assert main(["policy", "verify", str(path), "--key", str(public)]) == 1
    assert "the policy was changed after it was signed" in capsys.readouterr().err


def test_a_comment_added_after_signing_keeps_the_signature_valid(tmp_path, keys) -> None:
    private, public = keys
    path = write_policy(tmp_path, RULES)
    main(["policy", "sign", str(path), "--key", str(private)])
    path.write_text("# reviewed by the privacy office\n" + path.read_text())
    assert load_policy(path, governance_key=public, require_signed=True).signed_by


def test_require_signed_refuses_an_unsigned_policy(tmp_path, keys) -> None:
    path = write_policy(tmp_path, RULES)
    with pytest.raises(PolicyError, match=r"policy.toml.sig: no signature file"):
        load_policy(path, governance_key=keys[1], require_signed=True)


def test_require_signed_refuses_a_policy_signed_by_another_key(tmp_path, keys) -> None:
    other_private, _ = write_governance_keypair(tmp_path / "other")
    path = write_policy(tmp_path, RULES)
    main(["policy", "sign", str(path), "--key", str(other_private)])
    with pytest.raises(PolicyError, match="signed by key .*, but the governance key is"):
        load_policy(path, governance_key=keys[1], require_signed=True)


def test_require_signed_refuses_a_forged_signature(tmp_path, keys) -> None:
    private, public = keys
    path = write_policy(tmp_path, RULES)
    main(["policy", "sign", str(path), "--key", str(private)])
    sig = tmp_path / "policy.toml.sig"
    lines = sig.read_text().splitlines()
    lines[3] = "signature: " + ("A" * 86)
    sig.write_text("\n".join(lines) + "\n")
    with pytest.raises(PolicyError, match="the signature does not match this policy"):
        load_policy(path, governance_key=public, require_signed=True)


def test_require_signed_without_a_governance_key_is_refused(tmp_path) -> None:
    with pytest.raises(PolicyError, match="require_signed = true needs a governance_key"):
        load_policy(write_policy(tmp_path, RULES), require_signed=True)


def test_keygen_never_overwrites_a_governance_key(tmp_path, capsys) -> None:
    assert main(["policy", "keygen", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "governance.key").stat().st_mode & 0o777 == 0o600
    assert main(["policy", "keygen", str(tmp_path / "g")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_explain_says_what_leaves_in_plain_language(tmp_path, capsys) -> None:
    assert main(["policy", "explain", str(write_policy(tmp_path, RULES))]) == 0
    out = capsys.readouterr().out
    assert "ped-1/mac: Never leaves. Only the number of different values seen in each 15 minutes leaves; " in out
    assert "a count below 5 is never published" in out
    assert "pm-1/*: Leaves the device as measured." in out
    assert "Anything the policy does not name never leaves the device and is never stored (default deny)." in out


GATEWAY = """
[gateway]
id = "pole-0042"
site = "King St W & Spadina Ave"
latitude = 43.6452
longitude = -79.3957
state_dir = "state"

[[buses]]
name = "ped-line"
type = "serial"
port = "/dev/null"
baudrate = 115200

[[devices]]
name = "ped-1"
driver = "pedestrian-counter"
bus = "ped-line"

[privacy]
policy = "policy.toml"

[uplink]
hub = ""
"""


def test_check_with_a_config_refuses_keep_on_a_personal_channel(tmp_path, capsys) -> None:
    (tmp_path / "gateway.toml").write_text(GATEWAY)
    path = write_policy(tmp_path, '[channels."ped-1/*"]\nrule = "keep"\n')
    assert main(["policy", "check", str(path), "--config", str(tmp_path / "gateway.toml")]) == 1
    assert capsys.readouterr().err.startswith(
        'policy.toml: channels."ped-1/*".rule = "keep": ped-1/mac is personal; keep needs allow_personal = true'
    )


def test_check_with_a_config_notes_patterns_that_match_no_channel(tmp_path, capsys) -> None:
    (tmp_path / "gateway.toml").write_text(GATEWAY)
    path = write_policy(tmp_path, RULES)
    assert main(["policy", "check", str(path), "--config", str(tmp_path / "gateway.toml")]) == 0
    out = capsys.readouterr().out
    assert "3 declared channels: 1 leave the device in some form, 2 never do" in out
    assert 'note: channels."pm-1/*" matches no channel of this gateway' in out


def test_notice_writes_the_json_and_the_html_page(tmp_path, capsys) -> None:
    (tmp_path / "gateway.toml").write_text(GATEWAY)
    write_policy(tmp_path, RULES)
    assert main(["notice", str(tmp_path / "gateway.toml"), "--out", str(tmp_path / "out")]) == 0
    notice = json.loads((tmp_path / "out" / "notice.json").read_text())
    assert notice["place"]["gateway_id"] == "pole-0042"
    assert [d["channel"] for d in notice["data"]] == ["ped-1/mac"]
    assert notice["withheld"] == ["ped-1/rssi", "ped-1/radio"]
    assert "King St W &amp; Spadina Ave" in (tmp_path / "out" / "notice.html").read_text()
