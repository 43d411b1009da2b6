"""The files a new gateway starts from: the commented example config and the demo policy.

`ocn-edge init` writes them; a seed card (edge.seeding) builds its config on the same example;
the demo runs with the same policy.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["DEMO_POLICY", "EXAMPLE_CONFIG", "starter_files"]

EXAMPLE_CONFIG = Path(__file__).resolve().parent / "examples" / "gateway.toml"
# The demo's policy is package data beside the example policies, so an installed wheel has it too;
# `policies/` at the top of the source tree is a symlink to the same directory.
DEMO_POLICY = Path(__file__).resolve().parent / "privacy" / "policies" / "demo.toml"

_POLICY_LINE = re.compile(r'^policy = "[^"]*"[^\n]*$', re.MULTILINE)
_POLICY_SETTING = 'policy = "policy.toml"             # CHANGE: the city\'s policy; policy.toml next to this file is the demo one'
_POLICY_PREAMBLE = """\
# Written by `ocn-edge init`: the demo policy, to start from. Replace it with the policy
# your city's privacy office publishes (`ocn-edge policy explain` shows what a policy lets
# leave the pole). Anything a policy does not name never leaves the gateway.
#
"""



def starter_files() -> dict[str, str]:
    """File name -> text of the files `init` writes."""
    example = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    config, replaced = _POLICY_LINE.subn(_POLICY_SETTING, example, count=1)
    if replaced != 1:  # the example lost its policy line: a packaging bug, not the user's
        raise RuntimeError(f"{EXAMPLE_CONFIG}: no `policy = ...` line to point at policy.toml")
    return {"gateway.toml": config, "policy.toml": _POLICY_PREAMBLE + DEMO_POLICY.read_text(encoding="utf-8")}
