"""`ocn-edge init DIR`: the starting files a technician gets on a pole, without a source checkout."""

from __future__ import annotations

import stat

from edge.cli import main
from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.privacy import load_policy
from edge.starter import EXAMPLE_CONFIG


def test_init_writes_a_config_that_checks_and_names_the_policy_written_beside_it(tmp_path, capsys):
    target = tmp_path / "etc" / "ocn-edge"
    assert main(["init", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["gateway.toml", "policy.toml"]
    out = capsys.readouterr().out
    assert f"ocn-edge check {target / 'gateway.toml'}" in out

    cfg = load_config(target / "gateway.toml")
    assert cfg.privacy.policy == target / "policy.toml"
    # The written policy is the demo one (same digest), with a preamble saying to replace it.
    assert load_policy(target / "policy.toml").digest == load_policy(DEMO_POLICY).digest
    assert (target / "policy.toml").read_text().startswith("# Written by `ocn-edge init`")
    # Everything but the policy line is the commented example, CHANGE marks included.
    written = (target / "gateway.toml").read_text().splitlines()
    example = EXAMPLE_CONFIG.read_text().splitlines()
    assert [a for a, b in zip(written, example, strict=True) if a != b] == [next(line for line in written if line.startswith("policy = "))]
    assert main(["check", "--quiet", str(target / "gateway.toml")]) == 0
    assert stat.S_IMODE((target / "gateway.toml").stat().st_mode) & 0o002 == 0


def test_init_never_replaces_a_file_unless_forced(tmp_path, capsys):
    (tmp_path / "gateway.toml").write_text("# the technician's own\n")
    assert main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gateway.toml'} already exists; nothing written (--force replaces it)" in err
    assert (tmp_path / "gateway.toml").read_text() == "# the technician's own\n"
    assert not (tmp_path / "policy.toml").exists()  # all or nothing

    assert main(["init", "--force", str(tmp_path)]) == 0
    assert load_config(tmp_path / "gateway.toml").gateway.id == "pole-0042"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml", "policy.toml"]  # no temporary files left


def test_init_into_a_place_it_cannot_write_says_so_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["init", str(blocker / "ocn-edge")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ocn-edge init: cannot write into {blocker / 'ocn-edge'}: ")


def test_init_that_fails_after_writing_one_file_leaves_neither_and_can_be_run_again(tmp_path, capsys):
    # The policy's temporary file cannot be made (a directory is in the way): gateway.toml is
    # written first, and must not be left behind pointing at a policy.toml that is not there.
    blocker = tmp_path / ".policy.toml.tmp"
    blocker.mkdir()
    assert main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ocn-edge init: cannot write into {tmp_path}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".policy.toml.tmp"]

    blocker.rmdir()
    assert main(["init", str(tmp_path)]) == 0  # no --force needed: nothing of the failed run is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.toml", "policy.toml"]
