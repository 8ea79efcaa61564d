"""What a model family is: one declared record that the registry holds and every caller asks.

A family file (``trainables/mlp.py`` ...) ends with ``FAMILY = Family(...)``: its typed config,
its model builder, the task it trains for (the metrics it reports, which one heads a search
and whether lower or higher is better), the config keys that make an architecture, a check to
run before Ray starts, its augmentation and a tiny data set for tests. search/ and analysis/
never probe a family module: they read this record (analysis through the experiment's manifest).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from trainables.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from trainables.data import Splits

# Keys in every per-epoch report; ``val_<metric>`` and ``test_<metric>`` stand for the task's metrics.
REPORTED_KEYS = ("epoch", "train_loss", "val_loss", "n_params", "epoch_s", "lr",
                 "best_epoch", "best_val_loss", "test_loss", "device", "precision", "chance_epochs", "stalled")
# text, flags and counts: never a metric a space can rank on
TEXT_KEYS = ("device", "precision", "chance_epochs", "stalled")
MODES = ("min", "max")


class Task(Protocol):
    """What a model trains for, per config: a loss, a prediction and metrics on a whole split."""

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def predict(self, out: torch.Tensor) -> torch.Tensor: ...

    def metrics(self, pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Exactly the family's ``TaskSpec.metrics`` names."""
        ...

    def errors(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The error of each image (0/1 for classes, minutes for clocks), to rank the worst reads."""
        ...


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """The metrics a family reports (as ``val_<name>`` and ``test_<name>``) and the one that heads it."""

    kind: str  # "classification" | "clock": which task-specific report sections apply
    metrics: tuple[str, ...]  # every name Task.metrics returns
    headline: str  # the task's metric, e.g. "acc"
    mode: str  # "max" or "min" for the headline
    perfect: float = 1.0  # the headline of a model that makes no mistake
    chance: float | None = None  # the headline of one that learned nothing (None: 1 / n_classes)

    def chance_level(self, n_classes: int) -> float:
        return self.chance if self.chance is not None else 1 / n_classes

    def at_chance(self, value: float, n_classes: int) -> bool:
        """Whether ``value`` lies within a tenth of the way from chance to perfect (or beyond chance)."""
        chance = self.chance_level(n_classes)
        return (value - chance) / (self.perfect - chance) < 0.1

    @property
    def test_metric(self) -> str:
        return f"test_{self.headline}"

    @property
    def val_metric(self) -> str:
        return f"val_{self.headline}"

    def reported(self) -> set[str]:
        """Every numeric key the trainable reports (a space's metric must be one of them)."""
        per_split = {f"{split}_{name}" for split in ("val", "test") for name in ("loss", *self.metrics)}
        return (set(REPORTED_KEYS) - set(TEXT_KEYS)) | per_split

    def rankable(self) -> set[str]:
        """The keys a space may rank trials on: the validation split's (a trial's best checkpoint is its
        lowest ``val_loss``; ``best_val_loss`` is the running best). Never a test metric (it judges the
        pick, once), nor the training loss, a time or a size (the trials table ranks none of them)."""
        return {"val_loss", "best_val_loss", *(f"val_{name}" for name in self.metrics)}

    def as_manifest(self) -> dict[str, Any]:
        """What an experiment's manifest records of the task, for readers that never import a family."""
        return {"kind": self.kind, "metrics": list(self.metrics), "headline": self.headline, "mode": self.mode,
                "test_metric": self.test_metric, "perfect": self.perfect, "chance": self.chance}


class Classification:
    """Cross-entropy on logits (B, n_classes); accuracy."""

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torch import nn

        return nn.functional.cross_entropy(out, y)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(dim=1)

    def metrics(self, pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {"acc": (pred == y).float().mean().item()}

    def errors(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (pred != y).float()


def classification(cfg: TrainConfig) -> Task:
    return Classification()


CLASSIFICATION = TaskSpec(kind="classification", metrics=("acc",), headline="acc", mode="max")


def as_given(config: dict[str, Any]) -> dict[str, Any]:
    return config


def one_pass(cfg: TrainConfig) -> int:
    return 1


def no_preflight(cfg: TrainConfig) -> None:
    return None


def any_shape(cfg: TrainConfig, shape: tuple[int, int, int]) -> None:
    return None


Augment = Callable[[Any, "torch.Tensor", "torch.Tensor", "torch.Generator", int], "torch.Tensor"]


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family, declared once at the end of its file and registered by name."""

    name: str
    config: type[TrainConfig]  # typed, frozen; ``from_dict`` rejects unknown keys and wrong types
    build_model: Callable[[Any, Splits], nn.Module]  # (cfg, data) -> a module of (B, C, H, W) uint8-scaled input
    arch_keys: tuple[str, ...]  # config keys that make an architecture (a valley stage's default)
    tiny_data: Callable[[], Splits]  # a few hundred images, for the shared family suite
    task: TaskSpec = CLASSIFICATION
    make_task: Callable[[Any], Task] = classification  # cfg -> loss, prediction, metrics
    preflight: Callable[[Any], None] = no_preflight  # cfg -> None or ConfigError, run before Ray starts
    # (cfg, a data set's (C, H, W)) -> None or ConfigError: inputs the model cannot take, refused before Ray
    # starts once the data set is loaded (a VGG16 on images under 32 pixels)
    fits_shape: Callable[[Any, tuple[int, int, int]], None] = any_shape
    augment: Augment | None = None  # (cfg, x (B, C, H, W) standardised, idx, generator, pass) -> x
    passes: Callable[[Any], int] = one_pass  # passes over the training set per epoch
    # a full config dict -> the same with every None ("the architecture's own") replaced by the value it
    # stands for, so a trial can be placed in a space that ranges over that key (a plan's warm start)
    concrete: Callable[[dict[str, Any]], dict[str, Any]] = as_given

    def __post_init__(self) -> None:
        if self.task.mode not in MODES:
            raise ValueError(f"family {self.name!r}: task mode must be min or max, got {self.task.mode!r}")
        if self.task.headline not in self.task.metrics:
            raise ValueError(f"family {self.name!r}: headline {self.task.headline!r} is not one of its metrics "
                             f"{list(self.task.metrics)}")
        fields = {f.name for f in dataclasses.fields(self.config)}
        unknown = [k for k in self.arch_keys if k not in fields]
        if unknown:
            raise ValueError(f"family {self.name!r}: arch_keys {unknown} are not fields of its Config")

    def make_config(self, config: dict[str, Any]) -> TrainConfig:
        """The typed config of a flat dict (Tune's ``config``); the family key is this family."""
        family = config.get("family", self.name)
        if family != self.name:
            raise ConfigError(f"config names family {family!r} but is built by family {self.name!r}")
        return self.config.from_dict({**config, "family": self.name})

    def defaults(self) -> dict[str, Any]:
        """Every config key with its default value."""
        return {f.name: f.default for f in dataclasses.fields(self.config) if f.default is not dataclasses.MISSING}

    def complete(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` with the defaults of the keys it leaves out, and concrete values for every None."""
        return self.concrete({**self.defaults(), **config})
