"""Benchmarks that print figures (never pass/fail on time). Run one with `python -m bench.NAME`."""
