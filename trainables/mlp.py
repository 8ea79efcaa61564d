"""Multi-layer perceptrons: the reference study's first family.

Hidden layers are either listed (``hidden: [100, 200]``) or given by depth
with the study's rule "the k-th hidden layer has k x 100 neurons"
(``layers: 3`` is 100-200-300). ReLU, optional dropout after each hidden layer,
softmax output through cross-entropy.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from trainables.config import ConfigError, TrainConfig
from trainables.data import Splits, load_dataset
from trainables.family import Family

if TYPE_CHECKING:
    from torch import nn


@dataclasses.dataclass(frozen=True)
class Config(TrainConfig):
    family: str = "mlp"
    hidden: tuple[int, ...] | None = None  # widths of the hidden layers
    layers: int | None = None  # depth by the k x 100 rule; used when hidden is not given
    dropout: float = 0.0  # after every hidden layer

    def validate(self) -> None:
        super().validate()
        if self.hidden is not None and self.layers is not None:
            raise ConfigError(f"give hidden or layers, not both, got hidden={list(self.hidden)}, "
                              f"layers={self.layers}")
        if self.layers is not None and self.layers < 0:
            raise ConfigError(f"layers must be >= 0, got layers={self.layers}")
        if self.hidden is not None and any(w < 1 for w in self.hidden):
            raise ConfigError(f"hidden widths must be >= 1, got hidden={list(self.hidden)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got dropout={self.dropout}")

    @property
    def widths(self) -> tuple[int, ...]:
        if self.hidden is not None:
            return self.hidden
        return tuple(100 * k for k in range(1, (2 if self.layers is None else self.layers) + 1))


def build_model(cfg: Config, data: Splits) -> nn.Module:
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(data.input_shape)
    for hidden in cfg.widths:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if cfg.dropout:
            layers.append(nn.Dropout(cfg.dropout))
        width = hidden
    layers.append(nn.Linear(width, data.n_classes))  # (B, n_classes) logits
    return nn.Sequential(*layers)


def tiny_data() -> Splits:
    return load_dataset("synthetic")


FAMILY = Family(name="mlp", config=Config, build_model=build_model, arch_keys=("hidden", "layers"),
                tiny_data=tiny_data)
