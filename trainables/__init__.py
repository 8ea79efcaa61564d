"""Model families, data sets and the shared training loop.

A family is one module (``trainables/mlp.py`` ...) exposing ``Config`` (a
:class:`~trainables.config.TrainConfig` subclass), ``build_model(cfg, spec)`` and
optionally ``make_task(cfg)`` and ``augment(cfg, x, generator)``. Families are
looked up by name and imported on use, so searching MLPs never imports the
clock family's torchvision backbones.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

FAMILIES: dict[str, str] = {
    "mlp": "trainables.mlp",
    "cnn": "trainables.cnn",
    "clock": "trainables.clock",
}


def get_family(name: str) -> ModuleType:
    """The family module registered as ``name``."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; valid families: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


def available_families() -> list[str]:
    """Registered families whose module exists in this checkout."""
    return [name for name, module in FAMILIES.items() if importlib.util.find_spec(module) is not None]
