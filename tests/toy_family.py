"""A toy family, added the way a new family is: this one file and one registry line (see test_families)."""
from __future__ import annotations

import dataclasses
import math

from torch import nn

from trainables.config import ConfigError, TrainConfig
from trainables.data import Splits, load_dataset
from trainables.family import Family


@dataclasses.dataclass(frozen=True)
class Config(TrainConfig):
    family: str = "toy"
    width: int = 4  # hidden units

    def validate(self) -> None:
        super().validate()
        if self.width < 1:
            raise ConfigError(f"width must be at least 1, got width={self.width}")


def build_model(cfg: Config, data: Splits) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(data.input_shape), cfg.width), nn.ReLU(),
                         nn.Linear(cfg.width, data.n_classes))


def tiny_data() -> Splits:
    return load_dataset("synthetic")


FAMILY = Family(name="toy", config=Config, build_model=build_model, arch_keys=("width",), tiny_data=tiny_data)
