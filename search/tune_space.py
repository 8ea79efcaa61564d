"""A checked :class:`spaces.Space` into Ray Tune's ``param_space``.

Checks that need the family (unknown config keys, wrong types, a metric no
trainable reports) run here, before Ray starts, on a probe config built from
every grid row and every distribution's bounds.
"""
from __future__ import annotations

from typing import Any

from ray import tune

from spaces import Dist, Space, SpaceError
from trainables import get_family
from trainables.config import ConfigError
from trainables.loop import REPORTED_KEYS, Classification

TUNE_DISTRIBUTIONS = {
    "uniform": tune.uniform,
    "loguniform": tune.loguniform,
    "randint": tune.randint,
    "lograndint": tune.lograndint,
    "quniform": tune.quniform,
    "qloguniform": tune.qloguniform,
    "qrandint": tune.qrandint,
}


def headline_metric(family_name: str) -> tuple[str, str]:
    """The family's task metric and its mode, e.g. ('acc', 'max')."""
    family = get_family(family_name)
    if hasattr(family, "make_task"):
        task = family.make_task(family.Config.from_dict({"family": family_name}))
        return task.metric, task.mode
    return Classification.metric, Classification.mode


def reported_metrics(family_name: str) -> set[str]:
    """Every numeric key a family's trainable reports."""
    family = get_family(family_name)
    names = getattr(family, "METRICS", Classification.names)
    per_split = {f"{split}_{name}" for split in ("val", "test") for name in ("loss", *names)}
    return (set(REPORTED_KEYS) - {"device"}) | per_split


def check_space(space: Space, overrides: dict[str, Any]) -> None:
    """Fail before Ray starts on anything in ``space`` that no trial could train with."""
    try:
        family = get_family(space.family)
    except KeyError as err:
        raise SpaceError(f"{space.source}: family: {err.args[0]}") from None
    metrics = reported_metrics(space.family)
    if space.metric not in metrics:
        raise SpaceError(f"{space.source}: metric: {space.metric!r} is not reported by family "
                         f"{space.family!r}; reported: {', '.join(sorted(metrics))}")
    probe = {k: _probe_value(v) for k, v in space.params.items()}
    for row in space.grid_points():
        config = {**probe, **row, **overrides, "family": space.family}
        try:
            family.Config.from_dict(config)
        except ConfigError as err:
            where = f"grid row {row}" if row else "params"
            raise SpaceError(f"{space.source}: {where}: {err}") from None


def _probe_value(value: Any) -> Any:
    """A value a distribution can produce: its first choice, or its low bound."""
    return value.args[0] if isinstance(value, Dist) else value


def param_space(space: Space, overrides: dict[str, Any], searcher: str) -> tuple[dict[str, Any], list]:
    """Tune's ``param_space`` and the grid rows (the trainable resolves ``variant`` against them).

    Grid rows become ``grid_search`` over row indices with Tune's own generator,
    and a categorical over them with Optuna, which cannot enumerate grids.
    """
    rows = [dict(row) for row in space.grid]
    result: dict[str, Any] = {}
    if rows:
        indices = list(range(len(rows)))
        result["variant"] = tune.grid_search(indices) if searcher != "optuna" else tune.choice(indices)
    for key, value in space.params.items():
        if key in overrides:
            continue
        if not isinstance(value, Dist):
            result[key] = list(value) if isinstance(value, tuple) else value
        elif value.kind == "grid":
            args = [list(a) if isinstance(a, tuple) else a for a in value.args]
            result[key] = tune.grid_search(args) if searcher != "optuna" else tune.choice(args)
        elif value.kind == "choice":
            result[key] = tune.choice([list(a) if isinstance(a, tuple) else a for a in value.args])
        else:
            result[key] = TUNE_DISTRIBUTIONS[value.kind](*value.args)
    result.update(overrides)
    return result, rows
