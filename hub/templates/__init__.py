"""Jinja2 templates of the hub dashboard (a package so the wheel ships them)."""
