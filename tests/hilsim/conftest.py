"""hil-sim's own tests use the fixtures hil-sim offers every test package."""

from hilsim.pytest_plugin import hilsim_run, uplink_proxy

# hil-sim's fixtures, offered to these tests by name.
__all__ = ['hilsim_run', 'uplink_proxy']
