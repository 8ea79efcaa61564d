"""Convolutional networks: the reference study's second family.

``cnn_base`` is the textbook Fashion-MNIST CNN; nine variants each change one
thing about it (channels, kernel, depth, skips, pooling) and two go to the
extremes (``cnn_simple``, about 7.8k parameters; ``cnn_complex``, about 7.6M).
Every architecture is a list of layer tokens in ``ARCHS``, built by one
builder; the output layer (dense to ``n_classes`` logits) is always appended.

Tokens (ReLU follows every convolution and every hidden dense layer):

=========  ============================================================
``c64``    3x3 convolution to 64 channels, "same" padding
``c64k7``  7x7 convolution to 64 channels, "same" padding
``r128``   residual block: two 3x3 convolutions to 128 channels, added to
           the input (identity, or a 1x1 projection when channels change)
``M``      2x2 max-pool, stride 2 (floors: 7 -> 3)
``A``      2x2 average pool, stride 2
``F``      flatten
``G``      global average pooling (one value per channel), then flatten
``d128``   dense layer of 128 units
``p0.5``   dropout with probability 0.5
=========  ============================================================

Any input size works. The feature-map size is tracked while building, and a
pool is skipped once the map is 1 pixel high or wide, so it never shrinks to
0x0. On 8x8 inputs (digits, synthetic) the three pools of ``cnn_base`` give
8 -> 4 -> 2 -> 1, so it flattens 256 features; ``cnn_increasing`` and
``cnn_decreasing`` reach 1x1 after their third pool and skip the fourth;
28x28 gives 28 -> 14 -> 7 -> 3 and 32x32 gives 32 -> 16 -> 8 -> 4.

Parameters on 28x28x1 with 10 classes (``width`` 1, no batch norm):
cnn_base 1,413,834; cnn_increasing 1,624,394; cnn_decreasing 1,571,082;
cnn_kernel1 427,722; cnn_kernel5 3,378,378; cnn_depth2 888,906;
cnn_depth10 2,926,090; cnn_residual10 2,967,434; cnn_avgpool 1,413,834;
cnn_gap 1,151,690; cnn_simple 7,852; cnn_complex 7,651,338.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
from typing import TYPE_CHECKING

from trainables.config import ConfigError, TrainConfig
from trainables.data import Splits, load_dataset
from trainables.family import Family

if TYPE_CHECKING:
    from torch import nn

_BASE_HEAD = ["F", "d128", "p0.5", "d64", "p0.5"]

ARCHS: dict[str, list[str]] = {
    # the textbook CNN: 64 7x7, pool, 2x 128, pool, 2x 256, pool, dense 128-64 with dropout 0.5
    "cnn_base": ["c64k7", "M", "c128", "c128", "M", "c256", "c256", "M", *_BASE_HEAD],
    # channels doubling / halving over four 3x3 convolutions, each followed by a pool
    "cnn_increasing": ["c64", "M", "c128", "M", "c256", "M", "c512", "M", *_BASE_HEAD],
    "cnn_decreasing": ["c512", "M", "c256", "M", "c128", "M", "c64", "M", *_BASE_HEAD],
    # the base layout with every kernel 1x1 / 5x5
    "cnn_kernel1": ["c64k1", "M", "c128k1", "c128k1", "M", "c256k1", "c256k1", "M", *_BASE_HEAD],
    "cnn_kernel5": ["c64k5", "M", "c128k5", "c128k5", "M", "c256k5", "c256k5", "M", *_BASE_HEAD],
    # 2 and 10 convolutions
    "cnn_depth2": ["c64k7", "M", "c128", "M", *_BASE_HEAD],
    "cnn_depth10": ["c64k7", "c64", "M", "c128", "c128", "c128", "c128", "M",
                    "c256", "c256", "c256", "c256", "M", *_BASE_HEAD],
    # cnn_depth10 with skips: 2 convolutions, then 4 residual blocks of 2 (1x1 projections not counted)
    "cnn_residual10": ["c64k7", "c64", "M", "r128", "r128", "M", "r256", "r256", "M", *_BASE_HEAD],
    # average pooling instead of max pooling; global average pooling instead of flatten
    "cnn_avgpool": ["c64k7", "A", "c128", "c128", "A", "c256", "c256", "A", *_BASE_HEAD],
    "cnn_gap": ["c64k7", "M", "c128", "c128", "M", "c256", "c256", "M", "G", *_BASE_HEAD[1:]],
    # too simple: one 1x1 convolution to 1 channel, then the output layer (7,852 parameters)
    "cnn_simple": ["c1k1", "F"],
    # too complex: 5 convolutions and wide dense layers, no dropout (7,651,338 parameters)
    "cnn_complex": ["c64k7", "M", "c128", "c256", "M", "c512", "c512", "M", "F", "d768", "d256"],
}

_TOKEN = re.compile(r"^(?:(?P<conv>[cr])(?P<channels>\d+)(?:k(?P<kernel>\d+))?|(?P<pool>[MAFG])"
                    r"|d(?P<units>\d+)|p(?P<p>0?\.\d+|0|1))$")


@dataclasses.dataclass(frozen=True)
class Config(TrainConfig):
    family: str = "cnn"
    arch: str = "cnn_base"  # a key of ARCHS
    kernel: int | None = None  # replaces every kernel larger than 1x1 (odd: 3, 5, 7)
    dropout: float | None = None  # after every hidden dense layer, replacing the arch's rates
    width: float = 1.0  # channel multiplier (dense layers keep their size)
    batchnorm: bool = False  # BatchNorm2d after every convolution, before its ReLU

    def validate(self) -> None:
        super().validate()
        if self.arch not in ARCHS:
            raise ConfigError(_unknown_arch(self.arch))
        if self.kernel is not None and not (1 <= self.kernel <= 15 and self.kernel % 2 == 1):
            raise ConfigError(f"kernel must be an odd size from 1 to 15 (same padding needs a centre), "
                              f"got kernel={self.kernel}; use 3 or 5, or leave it unset for the arch's own")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got dropout={self.dropout}; "
                              "use e.g. 0.5, 0 for none, or leave it unset for the arch's own")
        if not (math.isfinite(self.width) and 0 < self.width <= 16):
            raise ConfigError(f"width must lie in (0, 16] (a channel multiplier), got width={self.width}; "
                              "use e.g. 0.5 or 2")


def describe(arch: str) -> str:
    """One line: the architecture's name, layers and convolution count."""
    if arch not in ARCHS:
        raise ConfigError(_unknown_arch(arch))
    layers = ARCHS[arch]
    convs = sum(1 if t[0] == "c" else 2 if t[0] == "r" else 0 for t in layers)
    return f"{arch}: {' '.join(layers)} -> logits ({convs} convolution{'' if convs == 1 else 's'})"


def build_model(cfg: Config, data: Splits) -> nn.Module:
    return _build(ARCHS[cfg.arch], data.input_shape, data.n_classes, cfg)  # the loop makes it channels-last on CUDA


@functools.cache
def _residual() -> type[nn.Module]:
    """The residual block's class, defined at its first use: the module imports without torch, so a
    search's driver does not load it."""
    import torch
    from torch import nn

    class Residual(nn.Module):
        """relu(conv-relu-conv(x) + skip(x)), skip the identity or a 1x1 projection."""

        def __init__(self, c_in: int, c_out: int, kernel: int, batchnorm: bool) -> None:
            super().__init__()
            self.body = nn.Sequential(*_conv(c_in, c_out, kernel, batchnorm),
                                      *_conv(c_out, c_out, kernel, batchnorm)[:-1])  # ReLU after the sum
            self.skip = nn.Identity() if c_in == c_out else nn.Sequential(*_conv(c_in, c_out, 1, batchnorm)[:-1])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    Residual.__qualname__ = "Residual"  # pickle finds it as trainables.cnn.Residual (__getattr__ below)
    return Residual


def __getattr__(name: str) -> type:
    """``trainables.cnn.Residual``, the residual block's class, defined at first use (PEP 562)."""
    if name == "Residual":
        return _residual()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _conv(c_in: int, c_out: int, kernel: int, batchnorm: bool) -> list[nn.Module]:
    from torch import nn

    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    return [*layers, nn.ReLU(inplace=True)]


def _build(tokens: list[str], input_shape: tuple[int, int, int], n_classes: int, cfg: Config) -> nn.Sequential:
    """The layers of ``tokens`` for (C, H, W) inputs, tracking the map size to size the dense layers."""
    from torch import nn

    c, h, w = input_shape
    features = 0  # inputs of the next dense layer, once flattened
    layers: list[nn.Module] = []
    for token in tokens:
        m = _TOKEN.match(token)
        if m is None:
            raise ValueError(f"bad layer token {token!r}; see the table in trainables/cnn.py")
        if m["conv"]:
            out = max(1, round(int(m["channels"]) * cfg.width))
            kernel = int(m["kernel"] or 3)
            if cfg.kernel is not None and kernel > 1:
                kernel = cfg.kernel
            if m["conv"] == "c":
                layers += _conv(c, out, kernel, cfg.batchnorm)
            else:
                layers.append(_residual()(c, out, kernel, cfg.batchnorm))
            c = out
        elif m["pool"] in ("M", "A"):
            if min(h, w) >= 2:  # a 1-pixel map is left as it is
                layers.append(nn.MaxPool2d(2) if m["pool"] == "M" else nn.AvgPool2d(2))
                h, w = h // 2, w // 2
        elif m["pool"] == "F":
            layers.append(nn.Flatten())
            features = c * h * w  # (B, C*H*W)
        elif m["pool"] == "G":
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            features = c  # (B, C)
        elif m["units"]:
            units = int(m["units"])
            layers += [nn.Linear(features, units), nn.ReLU(inplace=True)]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            features = units
        elif cfg.dropout is None and float(m["p"]) > 0:
            layers.append(nn.Dropout(float(m["p"])))
    if not features:
        raise ValueError("an architecture must flatten (F) or pool globally (G) before its output layer")
    layers.append(nn.Linear(features, n_classes))  # (B, n_classes) logits
    return nn.Sequential(*layers)


def _unknown_arch(arch: str) -> str:
    close = difflib.get_close_matches(arch, ARCHS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown arch {arch!r}; {hint}valid archs: {', '.join(ARCHS)}"


def own_values(config: dict) -> dict:
    """``kernel`` and ``dropout`` left None (the arch's own) as the values the arch uses.

    kernel: the arch's most common kernel larger than 1x1 (3 for cnn_base, whose first 7x7 is one of
    five); dropout: the rate of its dense dropouts (0.5 for the base head, 0 for an arch without).
    """
    tokens = ARCHS.get(config.get("arch"), [])
    config = dict(config)
    if config.get("kernel") is None:
        kernels = [int(m["kernel"] or 3) for m in map(_TOKEN.match, tokens) if m and m["conv"]]
        kernels = [k for k in kernels if k > 1]
        config["kernel"] = max(set(kernels), key=kernels.count) if kernels else 3
    if config.get("dropout") is None:
        rates = [float(m["p"]) for m in map(_TOKEN.match, tokens) if m and m["p"]]
        config["dropout"] = max(rates, default=0.0)
    return config


def tiny_data() -> Splits:
    return load_dataset("synthetic")


FAMILY = Family(name="cnn", config=Config, build_model=build_model, arch_keys=("arch", "width", "batchnorm"),
                tiny_data=tiny_data, concrete=own_values)
