"""The gateway's loggers that ``[gateway] log_levels`` accepts (edge.logs.LOGGERS) are the ones its code logs to,
and docs/configuration.md lists each of them: a new logger is settable and documented, a removed one no longer offered.

Fast: the code is read with ``ast``, not imported or run.
"""

from __future__ import annotations

import ast
from pathlib import Path

from edge.logs import DRIVER_LOGGER, LOGGERS

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_CODE = ("edge", "drivers")  # what `ocn-edge run` runs; the hub's loggers (ocn.hub.*) are the hub's


def named_loggers() -> dict[str, list[str]]:
    """Every ``logging.getLogger("ocn...")`` with a literal name in the gateway's code, and where."""
    found: dict[str, list[str]] = {}
    for top in GATEWAY_CODE:
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
                        and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                        and node.args[0].value.startswith("ocn.")):
                    found.setdefault(node.args[0].value, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_logger_of_the_gateways_code_can_be_set_and_every_one_offered_is_used() -> None:
    used = named_loggers()
    assert DRIVER_LOGGER in used and "ocn.bus" in used and "ocn.modbus.frames" in used, used  # the reading finds them
    assert {name: where for name, where in used.items() if name not in LOGGERS} == {}
    assert sorted(set(LOGGERS) - set(used)) == []


def test_the_configuration_reference_lists_every_logger() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert [name for name in LOGGERS if f"| `{name}` |" not in doc] == []
