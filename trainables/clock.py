"""Tell the time: read hour and minute from a grayscale analog clock.

A model is a backbone (registered by name, torchvision imported on use), a
trunk (dense ``head_width`` + ReLU + batch norm + dropout, as the reference's
VGG16 model) and a label encoding's head (``trainables.encodings``). The task
reports the common-sense difference (CSD, minutes) and reads predictions back
to the 720-minute dial. Augmentation (rotation, shear, zoom) runs as one
batched affine warp on the training device.
"""
from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from trainables.config import ConfigError, TrainConfig
from trainables.data import Splits
from trainables.encodings import ENCODINGS, get_encoding
from trainables.family import Family, TaskSpec
from trainables.metrics import CSD_METRICS, csd, csd_summary, to_minutes

AUGMENT = ("none", "fresh", "expand")


@dataclasses.dataclass(frozen=True)
class Config(TrainConfig):
    family: str = "clock"
    backbone: str = "small_cnn"  # small_cnn | resnet18 | vgg16_bn | vgg16
    encoding: str = "class_class"  # see trainables/encodings.py
    pretrained: bool = False  # ImageNet weights from torchvision's cache (or a download)
    trainable_convs: int | None = None  # VGG: convolutions left trainable, from the top (pretrained: 2, else all)
    width: int = 16  # small_cnn: channels of the first block (doubling per block)
    resize: int | None = None  # images resized to this many pixels square on the device first
    head_width: int = 512  # dense units after the backbone
    head_dropout: float = 0.5
    minute_hidden: int = 0  # one more dense layer before the minute head (the reference: 256)
    minute_dropout: float = 0.7
    csd_weight: float = 0.0  # expected circular distance added to classification losses
    augment: str = "fresh"  # none | fresh (new warps every epoch) | expand (fixed warps, `expand` copies)
    expand: int = 15  # copies of the training set per epoch when augment is expand (reference: 15, 25)
    rotation: float = 5.0  # degrees, +-
    shear: float = 15.0  # degrees, +-
    zoom_low: float = 0.9
    zoom_high: float = 1.1
    # the reference's regime: lr 1e-3 / 10 after 3 flat epochs down to 1e-6, stop after 9
    early_stop: int = 9

    # regression and periodic parts score a distance already; class720 and regression have no minute branch
    READ_UNDER: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
        *TrainConfig.READ_UNDER,
        ("csd_weight", "encoding", tuple(name for name, e in ENCODINGS.items() if e.reads_csd_weight)),
        *((key, "encoding", tuple(name for name, e in ENCODINGS.items() if e.minute_branch))
          for key in ("minute_hidden", "minute_dropout")))

    def validate(self) -> None:
        super().validate()
        _one_of("backbone", self.backbone, BACKBONES)
        _one_of("encoding", self.encoding, ENCODINGS)
        _one_of("augment", self.augment, AUGMENT)
        checks = [
            (self.expand >= 1, "expand", "must be at least 1"),
            (0 <= self.head_dropout < 1, "head_dropout", "must lie in [0, 1)"),
            (0 <= self.minute_dropout < 1, "minute_dropout", "must lie in [0, 1)"),
            (self.head_width >= 1 and self.minute_hidden >= 0, "head_width", "must be >= 1 (minute_hidden >= 0)"),
            (0 < self.zoom_low <= self.zoom_high, "zoom_low", "0 < zoom_low <= zoom_high must hold"),
            (0 <= self.rotation <= 180 and 0 <= self.shear < 60, "rotation", "rotation in [0, 180], shear in [0, 60)"),
            (self.csd_weight >= 0, "csd_weight", "must be >= 0"),
            (self.resize is None or self.resize >= 16, "resize", "must be at least 16 pixels"),
            (self.width >= 1, "width", "must be at least 1"),
            (self.trainable_convs is None or 0 <= self.trainable_convs <= VGG_CONVS, "trainable_convs",
             f"must lie in [0, {VGG_CONVS}] (VGG16 has {VGG_CONVS} convolutions)"),
            (self.trainable_convs is None or self.backbone.startswith("vgg16"), "trainable_convs",
             f"freezes a VGG16's convolutions, and backbone {self.backbone} trains every layer; drop it or use vgg16"),
        ]
        for ok, key, rule in checks:
            if not ok:
                raise ConfigError(f"{key} {rule}, got {key}={getattr(self, key)!r}")


VGG_CONVS = 13


def _one_of(key: str, value: str, valid: dict) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")


class ClockTask:
    """Loss and decoding of one encoding; CSD metrics on the 720-minute dial."""

    def __init__(self, cfg: Config) -> None:
        self.encoding = get_encoding(cfg.encoding)
        self.csd_weight = cfg.csd_weight

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.encoding.loss(out, y, csd_weight=self.csd_weight)

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        return self.encoding.decode(out)  # (B,) minutes, 0 <= t < 720

    def metrics(self, pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return csd_summary(pred, to_minutes(y[:, 0], y[:, 1]))

    def errors(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """CSD of each image, in minutes."""
        return csd(pred.float(), to_minutes(y[:, 0], y[:, 1]).float())


def make_task(cfg: Config) -> ClockTask:
    return ClockTask(cfg)


# ----------------------------------------------------------------------------- backbones

def _small_cnn(cfg: Config, channels: int) -> nn.Module:
    """Four conv-BN-ReLU-pool blocks (width doubling), then a 4x4 average: hand angles survive."""
    layers: list[nn.Module] = []
    width = cfg.width
    for _ in range(4):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                   nn.MaxPool2d(2, ceil_mode=True)]
        channels, width = width, width * 2
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())  # (B, 8 * width * 16)


def _resnet18(cfg: Config, channels: int) -> nn.Module:
    import torchvision

    weights = _weights("ResNet18_Weights") if cfg.pretrained else None
    model = torchvision.models.resnet18(weights=weights)
    model.fc = nn.Identity()  # (B, 512) pooled features
    return nn.Sequential(_Gray3(), model)


def _vgg(name: str) -> Callable[[Config, int], nn.Module]:
    def build(cfg: Config, channels: int) -> nn.Module:
        import torchvision

        weights = _weights("VGG16_BN_Weights" if name == "vgg16_bn" else "VGG16_Weights") if cfg.pretrained else None
        features = getattr(torchvision.models, name)(weights=weights).features  # classifier removed
        trainable = 2 if cfg.trainable_convs is None and cfg.pretrained else cfg.trainable_convs
        if trainable is not None:  # the reference: ImageNet features frozen but for the last two convs
            convs = [m for m in features if isinstance(m, nn.Conv2d)]
            keep = set(convs[len(convs) - trainable:]) if trainable else set()
            for conv in convs:
                conv.requires_grad_(conv in keep)
            for m in features:
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)
        return nn.Sequential(_Gray3(), features, nn.Flatten())  # (B, 512 * h * w), as Keras' Flatten
    return build


class _Gray3(nn.Module):
    """Grayscale (B, 1, H, W) repeated to the three channels ImageNet backbones expect."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


BACKBONES: dict[str, Callable[[Config, int], nn.Module]] = {
    "small_cnn": _small_cnn,
    "resnet18": _resnet18,
    "vgg16_bn": _vgg("vgg16_bn"),
    "vgg16": _vgg("vgg16"),
}


def _weights(enum_name: str) -> object:
    """ImageNet weights from torchvision's cache, downloaded once when online; never a silent fallback."""
    import torchvision

    weights = getattr(torchvision.models, enum_name).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.exists():
        return weights
    fix = (f"put {cached.name} into {cached.parent}, or set `pretrained: false` to train the backbone "
           "from scratch")
    if os.environ.get("VALLEY_OFFLINE") == "1":
        raise ConfigError(f"pretrained {enum_name} weights are not in torchvision's cache and downloads are "
                          f"off; {fix}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        weights.get_state_dict(progress=False)
    except Exception as err:  # noqa: BLE001 - any failed download means the same to the user
        raise ConfigError(f"pretrained {enum_name} weights are not cached and could not be downloaded "
                          f"({type(err).__name__}); {fix}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return weights


def preflight(cfg: Config) -> None:
    """Checks a search runs once before Ray starts: pretrained weights must be reachable."""
    if cfg.pretrained:
        name = {"resnet18": "ResNet18_Weights", "vgg16_bn": "VGG16_BN_Weights", "vgg16": "VGG16_Weights"}
        if cfg.backbone not in name:
            raise ConfigError(f"backbone {cfg.backbone!r} has no pretrained weights; set `pretrained: false`")
        _weights(name[cfg.backbone])


def fits_shape(cfg: Config, shape: tuple[int, int, int]) -> None:
    """A VGG16 halves its map five times, so it needs at least 32 pixels a side (torch fails deep inside
    the fifth pooling otherwise); the other backbones pool adaptively and take any size."""
    side = cfg.resize or min(shape[1:])
    if cfg.backbone.startswith("vgg16") and side < VGG_SIDE:
        given = f"resize={cfg.resize}" if cfg.resize else f"images of {shape[1]}x{shape[2]} pixels"
        raise ConfigError(f"backbone {cfg.backbone} needs images of at least {VGG_SIDE} pixels a side, got {given}; "
                          f"set resize to {VGG_SIDE} or more (e.g. --set resize=64), or use backbone small_cnn or "
                          "resnet18")


VGG_SIDE = 32


class ClockNet(nn.Module):
    def __init__(self, cfg: Config, data: Splits) -> None:
        super().__init__()
        fits_shape(cfg, data.input_shape)
        channels, height, width = data.input_shape
        self.size = cfg.resize
        self.backbone = BACKBONES[cfg.backbone](cfg, channels)
        with torch.no_grad():
            side = cfg.resize or height
            features = self.backbone.eval()(torch.zeros(1, channels, side, side if cfg.resize else width)).shape[1]
        self.trunk = nn.Sequential(nn.Linear(features, cfg.head_width), nn.ReLU(),
                                   nn.BatchNorm1d(cfg.head_width), nn.Dropout(cfg.head_dropout))
        self.head = get_encoding(cfg.encoding).head(cfg.head_width, minute_hidden=cfg.minute_hidden,
                                                    minute_dropout=cfg.minute_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        features = self.trunk(self.backbone(x))
        with torch.autocast(x.device.type, enabled=False):  # the encoding's raw outputs, in fp32: under bf16
            return self.head(features.float())  # autocast a decimal hour of 8-12 stepped 1/16 h, 3.75 minutes


def build_model(cfg: Config, data: Splits) -> nn.Module:
    return ClockNet(cfg, data)  # the loop makes it channels-last on CUDA


# ----------------------------------------------------------------------------- augmentation

def passes(cfg: Config) -> int:
    """Passes over the training set per epoch: ``expand`` copies when the expansion is fixed."""
    return cfg.expand if cfg.augment == "expand" else 1


def augment(cfg: Config, x: torch.Tensor, idx: torch.Tensor, generator: torch.Generator,
            pass_index: int) -> torch.Tensor:
    """Rotation, shear and zoom of a batch (B, C, H, W) as one affine warp on its device.

    ``fresh`` draws new warps every time; ``expand`` gives sample i in copy c the same warp
    every epoch (a fixed expansion of the training set, as the reference's x15).
    """
    if cfg.augment == "none":
        return x
    n = len(x)
    if cfg.augment == "fresh":
        u = torch.rand(n, 3, device=x.device, generator=generator)
    else:  # a counter-based hash of (sample, copy): the same numbers every epoch, no table to keep
        key = (idx.to(torch.float64) * 3 + pass_index * 7919 + cfg.seed * 104729)[:, None]
        u = torch.frac(torch.sin((key + torch.arange(3, device=x.device)) * 12.9898) * 43758.5453).abs().float()
    angle = torch.deg2rad((u[:, 0] * 2 - 1) * cfg.rotation)
    shear = torch.deg2rad((u[:, 1] * 2 - 1) * cfg.shear)
    zoom = cfg.zoom_low + u[:, 2] * (cfg.zoom_high - cfg.zoom_low)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # (B, 2, 3): rotation @ shear, scaled by 1/zoom (the grid samples the source)
    theta = torch.stack([
        torch.stack([cos, cos * tan - sin, torch.zeros_like(cos)], dim=1),
        torch.stack([sin, sin * tan + cos, torch.zeros_like(cos)], dim=1),
    ], dim=1) / zoom[:, None, None]
    theta[:, :, 2] = 0
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tiny_data() -> Splits:
    """720 clocks of 32x32, one per minute: the shared family suite's data."""
    from trainables.data import load_dataset

    return load_dataset("clocks-tiny")



FAMILY = Family(
    name="clock", config=Config, build_model=build_model, arch_keys=("backbone", "encoding"),
    tiny_data=tiny_data, make_task=make_task, preflight=preflight, fits_shape=fits_shape, augment=augment,
    passes=passes,
    # CSD in minutes, lower is better; the accuracies are of the exact time, the hour and the minute
    # a reader that guesses uniformly is 180 minutes off on average; one that makes no mistake, 0
    task=TaskSpec(kind="clock", metrics=CSD_METRICS, headline="csd", mode="min", perfect=0.0, chance=180.0),
)
