"""`ocn-edge --help` and every `ocn-edge COMMAND --help` work and say what the command is for."""

import argparse

import pytest

from edge.cli import build_parser, main


def _commands() -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: choice.help or "" for choice in sub._choices_actions}


def test_top_level_help_starts_with_the_three_commands_a_newcomer_needs(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.index("ocn-edge demo") < out.index("ocn-edge check") < out.index("ocn-edge run")


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_has_a_summary_and_its_own_help(command, capsys):
    assert _commands()[command], f"`ocn-edge {command}` has no one-line summary in `ocn-edge --help`"
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ocn-edge {command}")
    assert len(out.splitlines()) >= 3


def test_no_command_prints_the_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out
