"""Model families, data sets and the shared training loop.

A family is one file (``trainables/mlp.py`` ...) that ends with ``FAMILY = Family(...)``, the
record declared in :mod:`trainables.family`, and one line in ``FAMILIES`` below. Families are
looked up by name and imported on use, so searching MLPs never imports the clock family's
torchvision backbones. The shared suite (``tests/test_families.py``) checks every record.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainables.family import Family

# name -> the module whose ``FAMILY`` record it is
FAMILIES: dict[str, str] = {
    "mlp": "trainables.mlp",
    "cnn": "trainables.cnn",
    "clock": "trainables.clock",
}


def register_family(name: str, module: str) -> None:
    """Add a family (the module's ``FAMILY`` record) under ``name``, as the lines above do."""
    FAMILIES[name] = module


def get_family(name: str) -> Family:
    """The family record registered as ``name``; an unknown name lists the valid ones."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; valid families: {', '.join(sorted(FAMILIES))}")
    record = importlib.import_module(FAMILIES[name]).FAMILY
    if record.name != name:
        raise ValueError(f"{FAMILIES[name]}.FAMILY is named {record.name!r}, registered as {name!r}")
    return record


def available_families() -> list[str]:
    """Registered families whose module exists in this checkout."""
    return [name for name, module in FAMILIES.items() if importlib.util.find_spec(module) is not None]
