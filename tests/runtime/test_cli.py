"""`ocn-edge --help` and every `ocn-edge COMMAND --help` work and say what the command is for."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import COMMAND_MODULES, COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


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


def test_each_command_word_builds_the_parser_of_the_module_that_registers_it():
    # main() builds only COMMANDS[word]'s parser: a word missing here would get every module's (slow, but right),
    # a word pointing at the wrong module would be refused as unknown.
    registered = {}
    for module in COMMAND_MODULES:
        sub = next(a for a in build_parser((module,))._actions if isinstance(a, argparse._SubParsersAction))
        registered.update(dict.fromkeys(sub.choices, module))
    assert registered == COMMANDS


def test_a_tool_command_imports_neither_the_hub_nor_the_simulator_nor_aiohttp():
    # `ocn-edge status` or `ocn-edge ports` on a pole: 0.6 s and ~66 MiB peak RSS with every module's parser, 0.06-0.16 s
    # and 21-39 MiB with its own (2-core EPYC).  Names only, not timed.
    code = ("import sys; from edge.cli import main\n"
            "try:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'hub', 'hilsim', 'aiohttp', 'pymodbus'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("word", sorted(COMMANDS))
def test_a_command_s_help_is_the_same_from_its_own_parser_as_from_all_of_them(word, capsys):
    with pytest.raises(SystemExit):
        main([word, "--help"])
    own = capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args([word, "--help"])
    assert own == capsys.readouterr().out


def _actions_of(word: str) -> argparse._SubParsersAction | None:
    sub = next(a for a in build_parser((COMMANDS[word],))._actions if isinstance(a, argparse._SubParsersAction))
    return next((a for a in sub.choices[word]._actions if isinstance(a, argparse._SubParsersAction)), None)


@pytest.mark.parametrize("word", sorted(w for w in COMMANDS if w != "hub" and _actions_of(w) is not None))
def test_a_command_of_actions_typed_alone_says_what_it_takes_and_exits_2(word, capsys):
    # `ocn-edge hub` alone serves.  A command whose action is optional printed the top-level help of the one module's
    # parser main() built, which listed only that module's commands: it prints its own usage; one whose action is
    # required (access-token) says so in argparse's one line, naming itself.
    try:
        status: object = main([word])
    except SystemExit as exc:
        status = exc.code
        assert f"ocn-edge {word}: the following arguments are required" in capsys.readouterr().err
    else:
        assert capsys.readouterr().out.startswith(f"usage: ocn-edge {word} ")
    assert status == 2
