"""Typed, frozen configs built from Tune's flat ``config`` dict.

Every family subclasses :class:`TrainConfig` with its model fields. ``from_dict``
rejects unknown keys and wrong types at once, naming the key, so a typo in a
space fails the trial before any training instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration that no trial could train with (a fatal search error)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by every family (units in comments)."""

    family: str = ""
    dataset: str = ""
    seed: int = 0  # weights and batch order
    split_seed: int | None = None  # re-carve validation from train + val with this seed (confirm stage)
    max_epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3  # initial learning rate
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd only
    l2: float = 0.0  # Keras-style kernel penalty: l2 * sum(w**2) added to the loss
    weight_decay: float = 0.0  # decoupled decay (adamw) or plain decay (adam, sgd)
    schedule: str = "plateau"  # plateau (the reference's) | onecycle | cosine (both stepped every batch)
    warmup_epochs: float = 0.0  # cosine: linear warm-up from 0 over this many epochs (onecycle warms up by itself)
    lr_patience: int = 3  # plateau: epochs without val improvement before lr /= lr_factor
    lr_factor: float = 0.1
    min_lr: float = 1e-6
    early_stop: int = 0  # epochs without val improvement before stopping; 0 = never
    stall_epochs: int = 5  # epochs at chance level, from the first, that mark a trial stalled; 0 = never
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always saves)
    checkpoint_s: float = 30.0  # and at most this often, in seconds (0: every checkpoint_every epochs)
    keep_optimizer: bool = False  # a finished trial keeps only its best weights and predictions (true: all)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast for conv nets on CUDA, else fp32) | fp32 | bf16
    compile: bool = False  # torch.compile the model (minutes of compiling; pays off on long trainings)

    # how a trial runs and what it keeps, not what it learns: all `valley transfer --set` may change
    RUN_KEYS: ClassVar[tuple[str, ...]] = ("device", "compile", "checkpoint_every", "checkpoint_s", "keep_optimizer",
                                           "stall_epochs")
    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adam", "adamw", "sgd")
    SCHEDULES: ClassVar[tuple[str, ...]] = ("plateau", "onecycle", "cosine")
    PRECISIONS: ClassVar[tuple[str, ...]] = ("auto", "fp32", "bf16")
    # keys a training reads only under some values of another: (the key, what selects, the values that read it)
    READ_UNDER: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
        ("momentum", "optimizer", ("sgd",)), ("lr_patience", "schedule", ("plateau",)),
        ("lr_factor", "schedule", ("plateau",)), ("min_lr", "schedule", ("plateau",)),
        ("warmup_epochs", "schedule", ("cosine",)))

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TrainConfig:
        """Build the config, failing on an unknown key or a value of the wrong type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in config.items():
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"; did you mean {close[0]!r}? " if close else "; "
                raise ConfigError(  # not the keys a search sets (a space's top level, --dataset): refused there
                    f"unknown key {key!r} for family {cls.__module__.rsplit('.', 1)[-1]!r}{hint}"
                    f"valid keys: {', '.join(sorted(set(fields) - {'family', 'dataset', 'max_epochs'}))}"
                )
            values[key] = _coerce(key, value, hints[key])
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check ranges; families extend this and call ``super().validate()``."""
        _require(0 <= self.seed < 2**32, "seed", self.seed, f"must be a whole number from 0 to {2**32 - 1}")
        _require(self.split_seed is None or 0 <= self.split_seed < 2**32, "split_seed", self.split_seed,
                 f"must be a whole number from 0 to {2**32 - 1}")
        _require(self.max_epochs >= 1, "max_epochs", self.max_epochs, "must be at least 1")
        _require(self.batch_size >= 1, "batch_size", self.batch_size, "must be at least 1")
        _require(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "must be a positive number")
        _require(self.l2 >= 0, "l2", self.l2, "must be >= 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(0 < self.lr_factor < 1, "lr_factor", self.lr_factor, "must lie in (0, 1)")
        _require(self.lr_patience >= 0, "lr_patience", self.lr_patience, "must be >= 0 epochs")
        _require(self.min_lr >= 0, "min_lr", self.min_lr, "must be >= 0")
        _require(0 <= self.momentum < 1, "momentum", self.momentum, "must lie in [0, 1)")
        _require(self.early_stop >= 0, "early_stop", self.early_stop, "must be >= 0 epochs (0: never stop early)")
        _require(self.stall_epochs >= 0, "stall_epochs", self.stall_epochs, "must be >= 0 (0: never stalled)")
        _require(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be at least 1")
        _require(self.checkpoint_s >= 0, "checkpoint_s", self.checkpoint_s, "must be >= 0 seconds")
        gpu = self.device.startswith("cuda:") and self.device[5:].isdigit()
        _require(self.device in ("auto", "cpu", "cuda") or gpu, "device", self.device,
                 "must be auto, cpu, cuda or cuda:N (N the GPU's index)")
        _require(self.precision in self.PRECISIONS, "precision", self.precision,
                 f"must be one of {', '.join(self.PRECISIONS)}")
        _require(self.optimizer in self.OPTIMIZERS, "optimizer", self.optimizer,
                 f"must be one of {', '.join(self.OPTIMIZERS)}")
        _require(self.schedule in self.SCHEDULES, "schedule", self.schedule,
                 f"must be one of {', '.join(self.SCHEDULES)}")
        _require(0 <= self.warmup_epochs < self.max_epochs, "warmup_epochs", self.warmup_epochs,
                 "must lie in [0, max_epochs)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {rule}, got {key}={value!r}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type; ints pass as floats, lists as tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {key}={value!r}")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(key, v, item) for v in value)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {key}={value!r} ({type(value).__name__})")
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)  # quantised distributions hand integers over as floats
    if hint is str and isinstance(value, str):
        return str(value)  # Tune's random choice hands over numpy's str_
    if hint is bool and getattr(value, "dtype", None) is not None and value.dtype.kind == "b":
        return bool(value)
    if hint in (int, str, bool) and type(value) is not hint:
        if not (hint is int and hasattr(value, "__index__") and not isinstance(value, bool)):
            raise ConfigError(f"{key} must be {hint.__name__}, got {key}={value!r} ({type(value).__name__})")
        return int(value)
    return value


def resolve_variant(config: dict[str, Any], variants: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Merge a grid row (``variant``: a dict, or an index into ``variants``) into the config."""
    if "variant" not in config:
        return dict(config)
    config = dict(config)
    variant = config.pop("variant")
    if not isinstance(variant, dict):
        variant = variants[int(variant)]
    return {**config, **variant}
