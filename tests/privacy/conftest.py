"""The privacy tests drive real simulated devices through hil-sim's fixtures."""

from hilsim.pytest_plugin import hilsim_run  # noqa: F401
