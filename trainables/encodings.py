"""Label encodings of the tell-the-time task: a head's raw outputs, their loss, and the minutes they read.

Every encoding maps features (B, in_features) to raw outputs (B, n_out) with ``head``, scores
them against labels y (B, 2) int64 [hour 0-11, minute 0-59] with ``loss``, and reads them
back with ``decode`` as (B,) float minutes on the 12-hour dial, 0 <= t < 720 (t = hour * 60
+ minute; see ``metrics.csd``). Multi-head encodings return one tensor, hour outputs first.

Conventions:
- Hour regression (``regression``, ``reg_*``) and the periodic hour target the hour hand's
  position, the decimal hour h + m/60 in [0, 12), not the integer hour label.
- Regression losses are circular L1: the distance is taken around the dial, so 11.9 against
  0.1 hours costs 0.2, not 11.8, and a prediction is wrapped (mod 12 hours, mod 60 minutes).
- Periodic outputs are (sin, cos) of an angle, MSE loss, decoded with atan2; the norm of
  the pair is free.
- Reading the hour of a multi-head encoding with the minute:
  * a continuous hour (reg, periodic) is the hand position p, and the hour is the integer h
    for which h + m/60 is nearest to p: h = round(p - m/60) mod 12. The minute resolves
    which hour a hand near a numeral belongs to (at 3:58 the hand reads 3.97, so h = 3).
  * an hour class predicts the label itself; the minute only breaks near-ties between
    neighbouring hours: with the local soft estimate e = a + (p[a+1] - p[a-1]) / (p[a-1] + p[a]
    + p[a+1]) around the arg-max a, h = round(e - (m/60 - 1/2) / 2) mod 12. Late minutes
    pull a hesitant head to the earlier hour (3 vs 4 at :58 reads 3), early minutes to the
    later one; a head that puts more than three quarters on its arg-max is never overruled.
    A continuous minute is wrapped into [-1/2, 59 1/2) here, halfway between the labels 59 and 0.
- ``csd_weight > 0`` adds, for the classification parts only, the expected circular distance
  under the predicted distribution, in fractions of the dial (minutes / 720): for ``class720``
  sum_k p_k csd(k, t) / 720; for an hour class sum_k p_k dist12(k, h) * 60 / 720; for a minute
  class sum_k p_k dist60(k, m) / 720. For split encodings it is the sum of the hour and minute
  terms, a proxy of the expected CSD (each part is circular on its own dial, so 3:01 against
  3:59 costs 2 minutes there, 58 in the CSD). Regression and periodic parts already
  score a distance, so ``csd_weight`` does not change them (``regression``, ``reg_reg`` and
  ``periodic`` ignore it).
- ``minute_hidden`` and ``minute_dropout`` shape the minute branch of multi-head encodings;
  ``class720`` and ``regression`` have no minute branch and ignore them.
"""
from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

MINUTES = 720  # minutes on the 12-hour dial
TAU = 2 * math.pi
_SIZES = {"hour": {"class": 12, "reg": 1, "periodic": 2}, "minute": {"class": 60, "reg": 1, "periodic": 2}}


@dataclasses.dataclass(frozen=True)
class Encoding(abc.ABC):
    """A label encoding: ``head`` builds the output layer, ``loss`` scores it, ``decode`` reads minutes."""

    name: str
    minute_branch: ClassVar[bool] = False  # a minute head of its own, which minute_hidden and minute_dropout shape

    @property
    def reads_csd_weight(self) -> bool:
        """Whether it has a classification part, which ``csd_weight`` adds its expected distance to."""
        return True

    @property
    @abc.abstractmethod
    def n_out(self) -> int: ...

    @abc.abstractmethod
    def head(self, in_features: int, *, minute_hidden: int = 0, minute_dropout: float = 0.7) -> nn.Module: ...

    @abc.abstractmethod
    def loss(self, out: torch.Tensor, y: torch.Tensor, csd_weight: float = 0.0) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, out: torch.Tensor) -> torch.Tensor: ...

    def _check(self, out: torch.Tensor, y: torch.Tensor | None = None) -> None:
        if out.ndim != 2 or out.shape[1] != self.n_out:
            raise ValueError(f"encoding {self.name!r} needs outputs (B, {self.n_out}), got {tuple(out.shape)}; "
                             f"build the model's last layer with this encoding's head()")
        if y is not None and (y.shape != (out.shape[0], 2) or y.is_floating_point()):
            raise ValueError(f"encoding {self.name!r} needs integer labels (B, 2) [hour, minute] with "
                             f"B={out.shape[0]}, got {tuple(y.shape)} {y.dtype}")


@dataclasses.dataclass(frozen=True)
class Class720(Encoding):
    """One class per minute of the dial: 720-way softmax with cross-entropy."""

    name: str = "class720"

    @property
    def n_out(self) -> int:
        return MINUTES

    def head(self, in_features: int, *, minute_hidden: int = 0, minute_dropout: float = 0.7) -> nn.Module:
        _check_head(in_features, minute_hidden, minute_dropout)
        return nn.Linear(in_features, MINUTES)  # (B, 720) logits over hour * 60 + minute

    def loss(self, out: torch.Tensor, y: torch.Tensor, csd_weight: float = 0.0) -> torch.Tensor:
        self._check(out, y)
        t = y[:, 0] * 60 + y[:, 1]
        loss = F.cross_entropy(out, t)
        if csd_weight:
            loss = loss + csd_weight * _expected_distance(out, t, MINUTES) / MINUTES
        return loss

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        self._check(out)
        return out.detach().argmax(1).float()


@dataclasses.dataclass(frozen=True)
class Regression(Encoding):
    """One output, the decimal hour h + m/60 in [0, 12); circular L1 loss (hours)."""

    name: str = "regression"

    @property
    def reads_csd_weight(self) -> bool:
        return False

    @property
    def n_out(self) -> int:
        return 1

    def head(self, in_features: int, *, minute_hidden: int = 0, minute_dropout: float = 0.7) -> nn.Module:
        _check_head(in_features, minute_hidden, minute_dropout)
        return nn.Linear(in_features, 1)  # (B, 1) decimal hours

    def loss(self, out: torch.Tensor, y: torch.Tensor, csd_weight: float = 0.0) -> torch.Tensor:
        self._check(out, y)
        return _circular_l1(out[:, 0], y[:, 0] + y[:, 1] / 60, 12.0)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        self._check(out)
        return torch.remainder(out.detach()[:, 0].float(), 12.0) * 60 % MINUTES


@dataclasses.dataclass(frozen=True)
class Split(Encoding):
    """An hour head and a minute head, each "class", "reg" or "periodic"; the losses add up."""

    name: str = "class_class"
    hour: str = "class"
    minute: str = "class"
    minute_branch: ClassVar[bool] = True

    @property
    def reads_csd_weight(self) -> bool:
        return "class" in (self.hour, self.minute)

    def __post_init__(self) -> None:
        for part, kind in (("hour", self.hour), ("minute", self.minute)):
            if kind not in _SIZES[part]:
                raise ValueError(f"{part} part of encoding {self.name!r} must be one of "
                                 f"{', '.join(_SIZES[part])}, got {part}={kind!r}")

    @property
    def n_out(self) -> int:
        return _SIZES["hour"][self.hour] + _SIZES["minute"][self.minute]

    def head(self, in_features: int, *, minute_hidden: int = 0, minute_dropout: float = 0.7) -> nn.Module:
        # (B, n_hour + n_minute): hour outputs then minute outputs, e.g. (B, 72) logits for
        # class_class: 12 hours then 60 minutes; reg is one number, periodic is (sin, cos)
        _check_head(in_features, minute_hidden, minute_dropout)
        return _SplitHead(in_features, _SIZES["hour"][self.hour], _SIZES["minute"][self.minute],
                          minute_hidden, minute_dropout)

    def loss(self, out: torch.Tensor, y: torch.Tensor, csd_weight: float = 0.0) -> torch.Tensor:
        self._check(out, y)
        hour_out, minute_out = self._split(out)
        h, m = y[:, 0], y[:, 1]
        position = h + m / 60  # decimal hour, where the hour hand points
        if self.hour == "class":
            loss = F.cross_entropy(hour_out, h)
            if csd_weight:
                loss = loss + csd_weight * _expected_distance(hour_out, h, 12) * 60 / MINUTES
        elif self.hour == "reg":
            loss = _circular_l1(hour_out[:, 0], position, 12.0)
        else:
            loss = F.mse_loss(hour_out, _angle_pair(position / 12))
        if self.minute == "class":
            loss = loss + F.cross_entropy(minute_out, m)
            if csd_weight:
                loss = loss + csd_weight * _expected_distance(minute_out, m, 60) / MINUTES
        elif self.minute == "reg":
            loss = loss + _circular_l1(minute_out[:, 0], m / 60, 1.0)  # in hours, like m / 60
        else:
            loss = loss + F.mse_loss(minute_out, _angle_pair(m / 60))
        return loss

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        self._check(out)
        hour_out, minute_out = (o.float() for o in self._split(out.detach()))
        if self.minute == "class":
            minute = minute_out.argmax(1).float()
        elif self.minute == "reg":
            minute = torch.remainder(minute_out[:, 0], 1.0) * 60
        else:
            minute = _angle(minute_out) * 60
        if self.hour == "class":
            if self.minute != "class":  # wrap halfway between labels 59 and 0, not on label 0: at 3:00 a
                minute = torch.remainder(minute + 0.5, 60.0) - 0.5  # minute of -0.01 read 3:59.99
            p = hour_out.softmax(1)
            a = p.argmax(1, keepdim=True)
            below, at, above = (p.gather(1, (a + k) % 12)[:, 0] for k in (-1, 0, 1))
            estimate = a[:, 0] + (above - below) / (below + at + above)
            hour = _round(estimate - (minute / 60 - 0.5) / 2)
        else:
            position = torch.remainder(hour_out[:, 0], 12.0) if self.hour == "reg" else _angle(hour_out) * 12
            hour = _round(position - minute / 60)
        return (torch.remainder(hour, 12) * 60 + minute) % MINUTES

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = _SIZES["hour"][self.hour]
        return out[:, :n], out[:, n:]


class _SplitHead(nn.Module):
    """Hour and minute heads on shared features, concatenated hour first."""

    def __init__(self, in_features: int, n_hour: int, n_minute: int, minute_hidden: int,
                 minute_dropout: float) -> None:
        super().__init__()
        self.hour = nn.Linear(in_features, n_hour)
        if minute_hidden > 0:  # the reference VGG16 (class, class) model's extra minute layer
            self.minute: nn.Module = nn.Sequential(
                nn.Linear(in_features, minute_hidden), nn.ReLU(), nn.BatchNorm1d(minute_hidden),
                nn.Dropout(minute_dropout), nn.Linear(minute_hidden, n_minute))
        else:
            self.minute = nn.Linear(in_features, n_minute)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.hour(x), self.minute(x)], dim=1)


ENCODINGS: dict[str, Encoding] = {e.name: e for e in (
    Class720(),  # (B, 720) logits over hour * 60 + minute
    Regression(),  # (B, 1) decimal hour
    Split("class_class", "class", "class"),  # (B, 72) logits: 12 hours then 60 minutes
    Split("class_reg", "class", "reg"),  # (B, 13): 12 hour logits, minute / 60
    Split("reg_class", "reg", "class"),  # (B, 61): decimal hour, 60 minute logits
    Split("reg_reg", "reg", "reg"),  # (B, 2): decimal hour, minute / 60
    Split("periodic", "periodic", "periodic"),  # (B, 4): sin, cos of the hour hand's angle, then the minute's
    Split("class_periodic", "class", "periodic"),  # (B, 14): 12 hour logits, sin, cos of the minute's angle
)}


def get_encoding(name: str) -> Encoding:
    """The registered encoding called ``name``."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; valid: {', '.join(ENCODINGS)}")
    return ENCODINGS[name]


def _check_head(in_features: int, minute_hidden: int, minute_dropout: float) -> None:
    if not (isinstance(in_features, int) and in_features >= 1):
        raise ValueError(f"in_features must be an int >= 1, got in_features={in_features!r}")
    if not (isinstance(minute_hidden, int) and minute_hidden >= 0):
        raise ValueError(f"minute_hidden must be an int >= 0 (0: no extra layer), got minute_hidden={minute_hidden!r}")
    if not 0 <= minute_dropout < 1:
        raise ValueError(f"minute_dropout must lie in [0, 1), got minute_dropout={minute_dropout!r}")


def _circular_l1(pred: torch.Tensor, target: torch.Tensor, period: float) -> torch.Tensor:
    """Mean distance around a circle of ``period``: |pred - target| wrapped into [0, period / 2]."""
    diff = torch.remainder(pred - target + period / 2, period) - period / 2
    return diff.abs().mean()


def _expected_distance(logits: torch.Tensor, target: torch.Tensor, period: int) -> torch.Tensor:
    """Mean over the batch of sum_k softmax(logits)_k * circular distance(k, target), in classes."""
    k = torch.arange(period, device=logits.device)
    d = (k[None, :] - target[:, None]).abs()
    d = torch.minimum(d, period - d).to(logits.dtype)  # (B, period)
    return (logits.softmax(1) * d).sum(1).mean()


def _angle_pair(turns: torch.Tensor) -> torch.Tensor:
    """(B, 2) sin and cos of a fraction of a turn (clockwise from 12)."""
    theta = turns.float() * TAU
    return torch.stack([theta.sin(), theta.cos()], dim=1)


def _angle(pair: torch.Tensor) -> torch.Tensor:
    """Fraction of a turn in [0, 1) read from (B, 2) sin and cos by atan2."""
    return torch.remainder(torch.atan2(pair[:, 0], pair[:, 1]) / TAU, 1.0)


def _round(x: torch.Tensor) -> torch.Tensor:
    """Round half up (torch.round rounds half to even)."""
    return torch.floor(x + 0.5)
