"""The privacy tests drive real simulated devices through hil-sim's fixtures."""

from hilsim.pytest_plugin import hilsim_run

# hil-sim's fixtures, offered to these tests by name.
__all__ = ['hilsim_run']
