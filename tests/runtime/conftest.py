from hilsim.pytest_plugin import hilsim_run  # noqa: F401
