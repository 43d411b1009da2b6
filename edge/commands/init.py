"""`ocn-edge init DIR`: write a commented gateway config and a policy to start from.

The files come from the installed package (`edge/examples/gateway.toml`, the demo policy
in `edge/privacy/policies/`), so a technician on a pole has them without a source checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from edge.starter import starter_files

__all__ = ["init", "register"]


HELP = "write a commented gateway.toml and a policy.toml to start from"
DESCRIPTION = """\
Write the two files a new gateway needs into DIR (default /etc/ocn-edge):

  gateway.toml   every setting, commented; change what is marked CHANGE
  policy.toml    the demo privacy policy, to replace with the city's own

Existing files are never replaced unless --force is given. Then:

  ocn-edge check DIR/gateway.toml
"""

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("init", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", metavar="DIR", nargs="?", default="/etc/ocn-edge", help="where to write them (default /etc/ocn-edge)")
    parser.add_argument("--force", action="store_true", help="replace files that already exist")
    parser.set_defaults(func=init)


def init(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    files = starter_files()
    there = [name for name in files if (target / name).exists()]
    if there and not args.force:
        for name in there:
            print(f"ocn-edge init: {target / name} already exists; nothing written (--force replaces it)", file=sys.stderr)
        return 2
    created: list[Path] = []
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = target / name
            existed = path.exists()
            _write(path, text)
            if not existed:
                created.append(path)
    except OSError as exc:
        # All or nothing: a gateway.toml left without its policy.toml would fail `check`, and the
        # next `init` would refuse to write over it without --force.
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        print(f"ocn-edge init: cannot write into {target}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for name in files:
        print(f"wrote {target / name}")
    print(f"next: change what is marked CHANGE in {target / 'gateway.toml'}, then run\n"
          f"  ocn-edge check {target / 'gateway.toml'}")
    return 0


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a half-written config must never be left where the service reads it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the error to report is the one that stopped the write
            tmp.unlink()
        raise
