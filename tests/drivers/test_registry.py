"""The driver registry finds drivers as importlib.metadata would, without importing it on the gateway's run path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from drivers import registry
from drivers.registry import GROUP, UnknownDriver, available, load_driver
from drivers.sdk import Driver


def test_the_declared_drivers_are_the_entry_points_importlib_metadata_finds() -> None:
    declared = registry._declared()
    assert declared == {name: ep.value for name, ep in available().items()}
    assert "modbus" in declared
    for name, target in declared.items():
        assert registry._load(target) is available()[name].load(), name


def test_a_distribution_on_sys_path_declares_a_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "ocn_test_driver_pkg.py"
    module.write_text("from drivers.modbus.driver import ModbusDriver\n\nclass Named:\n    Driver = ModbusDriver\n")
    info = tmp_path / "ocn_test_driver_pkg-1.0.dist-info"
    info.mkdir()
    (info / "entry_points.txt").write_text(
        f"# a comment\n[console_scripts]\nnot-a-driver = x:y\n\n[{GROUP}]\ntest-named = ocn_test_driver_pkg : Named.Driver\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_found", {})
    assert registry._declared()["test-named"] == "ocn_test_driver_pkg : Named.Driver"
    assert "not-a-driver" not in registry._declared()
    assert {ep.name: ep.value for ep in available().values()}["test-named"] == "ocn_test_driver_pkg : Named.Driver"
    cls = load_driver("test-named")
    assert issubclass(cls, Driver) and cls is available()["test-named"].load()
    sys.modules.pop("ocn_test_driver_pkg", None)


def test_a_driver_only_importlib_metadata_finds_is_still_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A distribution in a zip or behind another finder: the directory scan misses it, importlib.metadata does not.
    monkeypatch.setattr(registry, "_declared", dict)
    monkeypatch.setattr(registry, "_found", {})
    assert load_driver("modbus") is available()["modbus"].load()


def test_an_unknown_driver_names_the_installed_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_found", {})
    with pytest.raises(UnknownDriver) as caught:
        load_driver("no-such-driver")
    assert "modbus" in caught.value.known and "no-such-driver" in str(caught.value)
