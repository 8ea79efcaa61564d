"""A checked :class:`spaces.Space` into Ray Tune's ``param_space``.

Checks that need the family (unknown config keys, wrong types, a metric that
is not a validation metric the trainable reports, the family's own preflight such as reachable pretrained
weights) run here, before Ray starts, on a probe config built from every grid
row and every distribution's bounds.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from spaces import Dist, Space, SpaceError
from trainables import get_family
from trainables.config import ConfigError
from trainables.family import TaskSpec


def check_metric(space: Space, task: TaskSpec) -> None:
    """A space ranks trials on a validation metric its family reports."""
    allowed = task.rankable()
    if space.metric in allowed:
        return
    twin = "val_" + space.metric.removeprefix("test_")
    if space.metric.startswith("test_") and twin in allowed:
        why = (f"would choose models by the test split, which must judge the chosen one once; rank on {twin} "
               f"(every trial's {space.metric} is read at its best checkpoint all the same)")
    elif space.metric in task.reported():
        why = (f"is reported but not a validation metric: valley ranks trials on the validation split at each "
               f"one's best checkpoint; rank on one of {', '.join(sorted(allowed))}")
    else:
        why = f"is not reported by family {space.family!r}; rank on one of {', '.join(sorted(allowed))}"
    raise SpaceError(f"{space.source}: metric: {space.metric!r} {why}")


def check_space(space: Space, overrides: dict[str, Any]) -> None:
    """Fail before Ray starts on anything in ``space`` that no trial could train with."""
    try:
        family = get_family(space.family)
    except KeyError as err:
        raise SpaceError(f"{space.source}: family: {err.args[0]}") from None
    task = family.task
    check_metric(space, task)
    natural = {"val_loss": "min", "best_val_loss": "min", task.val_metric: task.mode}.get(space.metric)
    if natural is not None and space.mode != natural:
        raise SpaceError(f"{space.source}: mode: {space.metric} is better {'lower' if natural == 'min' else 'higher'}, "
                         f"so mode: {space.mode} would rank the worst trials first; set mode: {natural}")
    # the values a distribution draws are typed only: the family's preflight runs on the grid rows
    check_configs(space, overrides, family, family.preflight, drawn_check=lambda cfg: None)


def check_shape(space: Space, overrides: dict[str, Any], shape: tuple[int, int, int], dataset: str) -> None:
    """Fail before Ray starts on a config whose model cannot take the data set's images (``shape``: C, H, W),
    as check_space does on what needs no data: every grid row, then every value a distribution can draw."""
    family = get_family(space.family)
    check_configs(space, overrides, family, lambda cfg: family.fits_shape(cfg, shape),
                  context=f"on data set {dataset!r}, ")


def check_configs(space: Space, overrides: dict[str, Any], family: Any, check: Callable[[Any], None],
                  drawn_check: Callable[[Any], None] | None = None, context: str = "") -> None:
    """Build every config a space can give with the family's typed config, and ``check`` it: each grid row over
    the params' first values and ``overrides``, then, over the first row, each value a distribution can draw
    (``drawn_check`` those, ``check`` unless given). A mistake is one SpaceError naming where it lies."""
    probe = {k: _probe_value(v) for k, v in space.params.items()}
    for row in space.grid_points():
        try:
            check(family.make_config({**probe, **row, **overrides, "family": space.family}))
        except ConfigError as err:
            raise SpaceError(f"{blame(family, space, probe, row, overrides, err, check)}: {context}{err}") from None
    row = {**space.grid_points()[0], **overrides}
    for key, value in space.params.items():
        if key in row or not isinstance(value, Dist):
            continue
        for candidate in _probe_values(value):
            try:
                (drawn_check or check)(family.make_config({**probe, **row, key: candidate, "family": space.family}))
            except ConfigError as err:
                hint = (f"; {value.kind} draws fractions, use randint or qrandint for a whole number"
                        if value.kind in ("uniform", "loguniform") and "must be int" in str(err) else "")
                raise SpaceError(f"{space.source}: params.{key}: {value.kind} can draw {drawn(value, candidate)}: "
                                 f"{context}{err}{hint}") from None


def blame(family: Any, space: Space, probe: dict[str, Any], row: dict[str, Any], overrides: dict[str, Any],
          err: ConfigError, check: Callable[[Any], None]) -> str:
    """Where a config's mistake lies: --set, the space's params, or its grid row (the first alone that fails
    as the whole did; each is checked over the config's defaults by ``check``)."""
    def fails(config: dict[str, Any]) -> bool:
        try:
            check(family.make_config({**config, "family": space.family}))
        except ConfigError as again:
            return str(again) == str(err)
        return False

    given = {k: v for k, v in overrides.items() if k not in ("dataset", "max_epochs")}  # what --set fixed
    named = f"--set {', '.join(f'{k}={v}' for k, v in given.items())}"
    if given and fails({**given, **{k: overrides[k] for k in ("dataset", "max_epochs") if k in overrides}}):
        return named
    if not row or fails({**probe, **overrides}):
        return f"{space.source}: params"
    if given and not fails({**probe, **row}):  # the row alone is sound: --set clashes with it
        return f"{named} with {space.source}: grid row {row}"
    return f"{space.source}: grid row {row}"


def drawn(dist: Dist, value: Any) -> str:
    """A probe value as the user wrote the range: "values just below 1.5", not 1.4999999999999998."""
    if dist.kind in ("uniform", "loguniform") and isinstance(value, float) and value == math.nextafter(
            float(dist.args[1]), dist.args[0]):
        return f"values just below {dist.args[1]!r}"
    return repr(value)


def _probe_value(value: Any) -> Any:
    """A value a distribution can produce: its first choice, or its low bound."""
    return value.args[0] if isinstance(value, Dist) else value


def _probe_values(dist: Dist) -> list[Any]:
    """Values a distribution can produce that a config must accept: every choice, both ends, a fraction."""
    if dist.kind in ("grid", "choice"):
        return [list(a) if isinstance(a, tuple) else a for a in dist.args]
    low, high = dist.args[0], dist.args[1]
    if dist.kind in ("randint", "lograndint"):
        return [low, high - 1]
    if dist.kind == "uniform":  # [low, high): high itself is never drawn, the float just below it can be
        return [float(low), low + (high - low) * 0.371, math.nextafter(float(high), low)]
    if dist.kind == "loguniform":
        return [float(low), low * (high / low) ** 0.371, math.nextafter(float(high), low)]
    return [low, high]  # quantised: both bounds are multiples of q (spaces._check_steps), both drawn


def __getattr__(name: str) -> Any:
    """``ValleyOptunaSearch`` under its old address, for experiments pickled before it moved."""
    if name != "ValleyOptunaSearch":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from search.optuna_study import ValleyOptunaSearch

    return ValleyOptunaSearch


def unread_keys(space: Space, overrides: dict[str, Any]) -> list[str]:
    """Warnings for keys the space (or ``--set``) sets that no trial reads (the family's ``READ_UNDER``):
    `momentum: {uniform: [0, 0.99]}` beside `optimizer: adam` ran, TPE searching a dimension that changed
    nothing; so did a grid over `csd_weight` of the regression encoding, each row the same training."""
    config = get_family(space.family).config

    def values(key: str) -> set[Any]:
        """Every value ``key`` can take in a trial (rows that leave it take the params' value or the default)."""
        if key in overrides:
            return {overrides[key]}
        given = space.params.get(key, getattr(config, key))
        found = set(given.args) if isinstance(given, Dist) else {given}
        return found | {row[key] for row in space.grid if key in row}

    said = []
    for key, selector, readers in config.READ_UNDER:
        set_here = key in overrides or key in space.params or any(key in row for row in space.grid)
        chosen = values(selector)
        if set_here and not chosen & set(readers):
            shown = ", ".join(sorted(map(str, chosen)))
            said.append(f"{key} is set, but only {selector} {' or '.join(readers)} reads it, and every trial trains "
                        f"{selector} {shown}: drop {key}, or give {selector} {readers[0]}")
    return said


def with_overrides(space: Space, overrides: dict[str, Any]) -> tuple[Space, str]:
    """The space with each ``--set`` value in the grid rows that set the same key, and a note saying so and
    which of the space's distributions it replaces ("" when neither). A row's own value won before: ``--set
    l2=0.005`` on mlp-rough trained two rows at 0.01 while valley.json recorded the override."""
    # `--set seed=0` ran 9 trials of clock-encodings' 27, unsaid, where `--set encoding=...` said so
    replaced = {key: value for key, value in space.params.items() if key in overrides and isinstance(value, Dist)}
    drawn = [f"the space's {value.kind} over {key}" + (f" ({len(value.args)} values)" if value.kind == "grid" else "")
             for key, value in replaced.items()]
    given = ", ".join(f"{key}={overrides[key]}" for key in replaced)
    instead = f"--set {given} replaces {', '.join(drawn)}" if drawn else ""
    hit = sorted({key for row in space.grid for key in row if key in overrides})
    if not hit:
        return space, instead
    grid: list[dict[str, Any]] = []
    kept: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (the row as written, as it trains)
    for row in space.grid:
        trains = {**row, **overrides}
        if any(trains == other and row != written for written, other in kept):
            continue  # --set made it another row's twin: `--set encoding=class_class` trained 8 alike
        kept.append((row, trains))
        grid.append({**row, **{key: overrides[key] for key in row if key in overrides}})
    rows = sum(any(key in overrides for key in row) for row in space.grid)
    dropped = len(space.grid) - len(grid)
    return (dataclasses.replace(space, grid=tuple(grid)),
            f"--set {', '.join(hit)} replaces what {rows} of the {len(space.grid)} grid rows set"
            + (f"; {dropped} row(s) it made the same as another run once" if dropped else "")
            + (f"; it replaces {', '.join(drawn)}" if drawn else ""))


def param_space(space: Space, overrides: dict[str, Any], searcher: str) -> tuple[dict[str, Any], list]:
    """Tune's ``param_space`` and the grid rows (the trainable resolves ``variant`` against them).

    Grid rows become ``grid_search`` over row indices with Tune's own generator,
    and a categorical over them with Optuna or BOHB, which cannot enumerate grids.
    """
    from ray import tune

    rows = [dict(row) for row in space.grid]
    result: dict[str, Any] = {}
    if rows:
        indices = list(range(len(rows)))
        result["variant"] = tune.grid_search(indices) if searcher == "random" else tune.choice(indices)
    for key, value in space.params.items():
        if key in overrides:
            continue
        if not isinstance(value, Dist):
            result[key] = list(value) if isinstance(value, tuple) else value
        elif value.kind == "grid":
            args = [list(a) if isinstance(a, tuple) else a for a in value.args]
            result[key] = tune.grid_search(args) if searcher == "random" else tune.choice(args)
        elif value.kind == "choice":
            result[key] = tune.choice([list(a) if isinstance(a, tuple) else a for a in value.args])
        elif value.kind == "qrandint" and value.args[2] == 1:  # Ray's excludes high for q=1 alone; valley's never
            result[key] = tune.randint(value.args[0], value.args[1] + 1)
        else:
            # every other kind a space allows is Ray Tune's sampler of the same name (Ray is imported
            # only here, so that a space's mistakes are reported without paying for Ray's import)
            result[key] = getattr(tune, value.kind)(*value.args)
    result.update(overrides)
    return result, rows
