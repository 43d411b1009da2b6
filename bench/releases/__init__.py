"""Real releases of OCN Edge for the update tests and the soak: wheelhouses, signed bundles, an installed root,
and a stand-in for the systemd units that run and update a gateway (docs/updates.md)."""

from __future__ import annotations

from bench.releases.build import BASE_PYTHON, INSTALL_TOOLS, NEVER_DELIVERS, Releases, build_releases, copy_root, install_sh
from bench.releases.supervisor import Supervisor

__all__ = ["BASE_PYTHON", "INSTALL_TOOLS", "NEVER_DELIVERS", "Releases", "Supervisor", "build_releases", "copy_root", "install_sh"]
