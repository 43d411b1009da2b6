"""edge.util.lazy: a package's names load their modules when first used, and only then."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_name_loads_its_module_at_first_use_and_stays_a_plain_attribute() -> None:
    out = _run("""
        import sys
        import drivers.buses as buses
        import edge.localapi as localapi
        import edge.protocol as protocol
        print("modbus" if "drivers.modbus.bus" in sys.modules else "-", "server" if "edge.localapi.server" in sys.modules else "-",
              "senml" if "edge.protocol.senml" in sys.modules else "-")
        first = buses.ModbusBus, localapi.LocalApi, protocol.to_senml  # asked for: their modules load now
        print("modbus" if "drivers.modbus.bus" in sys.modules else "-", "server" if "edge.localapi.server" in sys.modules else "-",
              "senml" if "edge.protocol.senml" in sys.modules else "-")
        from drivers.modbus.bus import ModbusBus
        from edge.localapi.server import LocalApi
        from edge.protocol.senml import to_senml
        print(first == (ModbusBus, LocalApi, to_senml))
        print("ModbusBus" in vars(buses), "LocalApi" in vars(localapi), "to_senml" in vars(protocol))
    """).split("\n")
    assert out[0] == "- - -"  # nothing loaded by importing the packages
    assert out[1] == "modbus server senml"  # loaded by the first use of one of their names
    assert out[2] == "True"  # the modules' own objects
    assert out[3] == "True True True"  # kept: the next use does not go through __getattr__


def test_an_unknown_name_is_an_attribute_error_naming_the_package() -> None:
    out = _run("""
        import drivers.buses, edge.localapi, edge.protocol
        for package in (drivers.buses, edge.localapi, edge.protocol):
            try:
                package.no_such_name
            except AttributeError as exc:
                print(exc)
            print(hasattr(package, "no_such_name"))
    """)
    assert out.split("\n")[:6] == [
        "module 'drivers.buses' has no attribute 'no_such_name'", "False",
        "module 'edge.localapi' has no attribute 'no_such_name'", "False",
        "module 'edge.protocol' has no attribute 'no_such_name'", "False",
    ]
