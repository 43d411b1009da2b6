"""The `ocn-edge` sub-commands, and how any of them stops on bad input: raise `CommandError`.

`edge.cli.main` prints a `CommandError` as one line on standard error and exits with its
status, so a command never needs its own try/except to turn bad input into a message.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from edge.private import private_directory
from edge.util.files import file_problem

__all__ = ["EXIT_USAGE", "CommandError", "file_problem", "make_directory", "not_negative", "positive", "shows_usage", "whole"]

EXIT_USAGE = 2  # the command could not run with the input it was given


def shows_usage(parser: argparse.ArgumentParser) -> None:
    """A command of actions (``ocn-edge policy``, ``oxp``, ``image``, ...) typed without one prints its own help and
    exits 2: without this, `edge.cli.main` would print the top-level help of only the parsers it built."""
    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_USAGE

    parser.set_defaults(func=usage)


class CommandError(Exception):
    """Input a command cannot run with; the message names the file or option, the value and what would be accepted."""

    def __init__(self, message: str, *, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def make_directory(path: str | Path, *, option: str, private: bool = False) -> Path:
    """``path`` as a directory, created with its parents if missing (0700 if ``private``, edge.private); a CommandError naming ``option`` if it cannot be."""
    target = Path(path)
    try:
        if private:
            private_directory(target)
        else:
            target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CommandError(f"{option} {path}: a file is in the way; expected a directory") from None
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot create the directory: {file_problem(exc)}") from None
    return target


def positive(text: str) -> float:
    """An argparse type: a finite number above 0 (seconds, a rate); "nan", "inf" and "-1" are refused."""
    return _finite(text, zero=False)


def not_negative(text: str) -> float:
    """An argparse type: a finite number of 0 or more (seconds that may be none)."""
    return _finite(text, zero=True)


def _finite(text: str, *, zero: bool) -> float:
    expected = "a finite number of 0 or more" if zero else "a finite number above 0"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
    return value


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from {low} to {high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from {low} to {high}")
        return value

    return parse
