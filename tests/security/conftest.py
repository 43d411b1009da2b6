from __future__ import annotations

from hilsim.pytest_plugin import hilsim_run

__all__ = ["hilsim_run"]
