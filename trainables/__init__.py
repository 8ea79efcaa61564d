"""Model families, data sets and the shared training loop.

A family is one file (``trainables/mlp.py`` ...) that ends with ``FAMILY = Family(...)``, the
record declared in :mod:`trainables.family`, and one line in ``FAMILIES`` below. Families are
looked up by name and imported on use, so searching MLPs never imports the clock family's
torchvision backbones. The shared suite (``tests/test_families.py``) checks every record.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.data import Splits
    from trainables.family import Family
    from trainables.report import Reporter

# name -> the module whose ``FAMILY`` record it is
FAMILIES: dict[str, str] = {
    "mlp": "trainables.mlp",
    "cnn": "trainables.cnn",
    "clock": "trainables.clock",
}


def register_family(name: str, module: str) -> None:
    """Add a family (the module's ``FAMILY`` record) under ``name``, as the lines above do."""
    FAMILIES[name] = module


def unknown_family(name: str) -> str:
    """The words that refuse a family name, with the nearest and the valid ones."""
    close = difflib.get_close_matches(str(name), FAMILIES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown family {name!r}; {hint}valid families: {', '.join(sorted(FAMILIES))}"


class FamilyError(ValueError):
    """A family's module or its record is wrong (a user's own family, most often): one line naming the module."""


def get_family(name: str) -> Family:
    """The family record registered as ``name``; an unknown name lists the valid ones, and a module that
    cannot be imported, has no ``FAMILY`` or declares it wrongly is a ``FamilyError`` naming the module."""
    if name not in FAMILIES:
        raise KeyError(unknown_family(name))
    module = FAMILIES[name]
    try:
        record = getattr(importlib.import_module(module), "FAMILY", None)
    except Exception as err:  # noqa: BLE001 - whatever a family file raises on import (its record's checks too)
        raise FamilyError(f"family {name!r}: importing {module} failed: {type(err).__name__}: {err}") from err
    if record is None:
        raise FamilyError(f"family {name!r}: {module} has no FAMILY; end it with FAMILY = Family(...) "
                          "(trainables/family.py)")
    if record.name != name:
        raise FamilyError(f"family {name!r}: {module}.FAMILY is named {record.name!r}; register it under that "
                          "name or rename the record")
    return record


def available_families() -> list[str]:
    """Registered families whose module exists in this checkout."""
    return [name for name, module in FAMILIES.items() if importlib.util.find_spec(module) is not None]


def train(config: dict[str, Any], data: Splits | None = None, reporter: Reporter | None = None,
          variants: list[dict[str, Any]] | None = None, family: Family | None = None) -> dict[str, Any] | None:
    """:func:`trainables.loop.train`, imported when a trial starts: what search/ hands Ray Tune, so a
    search's driver never imports torch (1.5 s of its start) unless a family module does. Its signature
    is the loop's (``tune.with_parameters`` binds ``data``, ``variants`` and ``family`` by name)."""
    from trainables.loop import train as run

    return run(config, data, reporter, variants, family)
