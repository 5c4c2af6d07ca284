"""The suite's warning policy (pyproject.toml): recsvc's own deprecations fail a test."""

from __future__ import annotations

import types
import warnings

import pytest


def _module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec("import warnings\n"
         "def deprecated():\n"
         "    warnings.warn('use the new one', DeprecationWarning, stacklevel=1)\n",
         mod.__dict__)
    return mod


@pytest.mark.parametrize("name", ["recsvc.probe", "training.probe", "test_probe"])
def test_our_deprecations_fail(name: str) -> None:
    with pytest.raises(DeprecationWarning, match="use the new one"):
        _module(name).deprecated()


def test_a_librarys_deprecation_is_its_own() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # what a user's run shows; the suite ignores it
        _module("somelib.probe").deprecated()
    assert [str(w.message) for w in seen] == ["use the new one"]
    _module("somelib.probe").deprecated()  # under the suite's filters: ignored, no error
