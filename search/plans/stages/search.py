"""A search stage: run a space, narrowed to the architectures of a valley stage, warm-started from its trials."""
from __future__ import annotations

import math
from typing import Any

from analysis.format import metric_column
from analysis.load import config_of
from search.options import SearchError
from search.plans.format import Stage, not_log_uniform
from search.plans.state import PlanRun, stage_options, train_stage, write_space
from spaces import Dist, Space, load_space
from trainables import get_family


def run(run: PlanRun, stage: Stage) -> str:
    """Run a space, over the architectures of a valley stage when ``from`` names one."""
    space = load_space(stage.space)
    grid, params, derived = list(space.grid), dict(space.params), []
    source = run.stage_state(stage.source) if stage.source else {}
    if source.get("kind") == "valley":
        archs = source["architectures"]
        # every key the valley stage decides, not only those its architectures set: a fine space's
        # default architecture (an MLP's layers) must not stay beside the valley's (its hidden widths)
        arch_keys = {*source.get("arch_keys", ()), *(k for arch in archs for k in arch)}
        params = {k: v for k, v in params.items() if k not in arch_keys}
        # what the valley's grid rows set beside an architecture holds, unless this space sets it itself
        grid = [{**arch, **{k: v for k, v in extra.items() if k not in params}}
                for arch, extra in zip(archs, source.get("with") or [{}] * len(archs))]
        derived = source.get("band", [])
    around, fixed = unfixed(stage.get("around") or {}, run.base.overrides)
    if fixed:
        run.say(f"valley: stage {stage.name}: {fixed}")
    if around:
        best = get_family(space.family).complete(source["best_config"])
        params, ranges, note = centre_ranges(params, around, best, space.name)
        run.say(f"valley: stage {stage.name}: {note}")
        run.record(stage, around=ranges)
    narrowed = write_space(run, stage.name, space, grid, params,
                           f"stage {stage.name}: {space.name}" + (f" over the {len(grid)} architectures of "
                                                                  f"stage {stage.source}" if derived else ""))
    changes: dict[str, Any] = {}
    optuna = stage_options(run, stage).search == "optuna"  # the stage's own, else the plan's --search
    if optuna and stage.get("warm_start", True) and source.get("kind") == "valley":
        points, rewards, note = warm_start_points(run, source, narrowed)
        run.say(f"valley: stage {stage.name}: {note}")
        if points:
            changes.update(warm_points=tuple(points), warm_rewards=tuple(rewards))
        run.record(stage, warm_start=note)
    run.record(stage, derived_from={"stage": stage.source, "trials": derived},
               space=f"{stage.name}.space.yaml")
    return train_stage(run, stage, narrowed, stage.name, **changes)


def unfixed(around: dict[str, float], overrides: dict[str, Any]) -> tuple[dict[str, float], str]:
    """The keys of ``around`` that ``--set`` leaves to the search, and a note of those it fixes ("" if none):
    the stage said "searching lr in [...]" of trials that all ran at the lr --set gave them."""
    left = {k: v for k, v in around.items() if k not in overrides}
    fixed = [k for k in around if k in overrides]
    sets = ", ".join(f"--set {k}={overrides[k]}" for k in fixed)
    return left, (f"{sets} fixes what around would search ({', '.join(fixed)}), so it is not searched" if fixed else "")


def centre_ranges(params: dict[str, Any], around: dict[str, float], best: dict[str, Any], space_name: str
                  ) -> tuple[dict[str, Any], dict[str, list[float]], str]:
    """Each log-uniform range named in ``around`` moved onto the valley's best trial: ``best[key]`` x/÷ factor.

    The space's range is replaced, not intersected: a fine space's learning rates that stop at the
    rough stage's own value (the reference's 1e-6 to 1e-3 beside a rough sweep at 1e-3) could
    otherwise only go down. The note says what replaced what.
    """
    params, ranges, said = dict(params), {}, []
    for key, factor in around.items():
        problem = not_log_uniform(params, key, space_name)
        if problem:
            raise SearchError(f"around: {key}: {problem}")
        dist = params[key]
        value = best.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise SearchError(f"around: {key}: the valley's best trial has {key} = {value!r}, not a positive number "
                              f"to search around; drop {key} from around")
        low, high = value / factor, value * factor
        params[key] = Dist("loguniform", (low, high))
        ranges[key] = [low, high]
        said.append(f"{key} in [{low:.3g}, {high:.3g}] (x/÷{factor:g} around the valley's best trial, {value:.3g}; "
                    f"{space_name} gives [{dist.args[0]:.3g}, {dist.args[1]:.3g}])")
    return params, ranges, "searching " + "; ".join(said)


def warm_start_points(run: PlanRun, valley_state: dict[str, Any], space: Space
                      ) -> tuple[list[dict[str, Any]], list[float], str]:
    """Earlier trials for Optuna: those inside ``space`` with their results, else the valley's best moved in.

    Trials that fall inside the new space are told to Optuna as evaluated (points and rewards).
    When none does (the reference's rough MLP grid trains without dropout or L2, which the fine
    space's ranges exclude), the best rough trial of each valley architecture is moved into the
    space, each value clipped to its range, and evaluated first (points without rewards), so the
    sampler still starts from the rough stage's best settings rather than from nothing.
    """
    rough_name = valley_state["from"]
    trials, _ = run.trials(rough_name)
    metric_col = metric_column(space.metric)
    done = trials[trials["status"].isin(["completed", "stopped"]) & trials[metric_col].notna()]  # not stalled
    done = done.sort_values(metric_col, ascending=space.mode == "min")
    family = get_family(space.family)
    configs = [family.complete(config_of(row)) for _, row in done.iterrows()]
    points, rewards = [], []
    for config, value in zip(configs, done[metric_col]):
        point = as_point(config, space, fixed=run.base.overrides)
        if point is not None:
            points.append(point)
            rewards.append(float(value))
    if points:
        return points, rewards, (f"warm-started Optuna with {len(points)} trials of stage {rough_name} "
                                 f"({len(configs) - len(points)} fall outside the new space)")
    if not configs:  # "none of the 0 finished trials (of 14)": each stalled at chance, or failed
        return [], [], (f"none of the {len(trials)} trials of stage {rough_name} can warm-start it: each stalled at "
                        "chance level, failed or did not finish; Optuna starts from nothing")
    moved: list[dict[str, Any]] = []
    why = ""
    for config in configs:  # best first: one per architecture of the valley
        point, outside = placed(config, space, clip=True, fixed=run.base.overrides)
        why = why or outside  # the best's reason
        if point is not None and point.get("variant") not in [m.get("variant") for m in moved]:
            moved.append(point)
    others = len(trials) - len(configs)  # stalled, failed or unfinished: never warm-start points
    counted = f"{len(configs)} finished trials" + (f" (of {len(trials)})" if others else "")
    if not moved:
        return [], [], (f"none of the {counted} of stage {rough_name} falls inside the new space, nor can one be "
                        f"moved into it (the best: {why}); Optuna starts from nothing")
    return moved, [], (f"none of the {counted} of stage {rough_name} falls inside the new space; "
                       + ("evaluating first the best of them, moved into it" if len(moved) == 1 else
                          f"evaluating first the best of each of {len(moved)} architectures, moved into it")
                       + " (values clipped to the ranges)")


def as_point(config: dict[str, Any], space: Space, clip: bool = False, fixed: dict[str, Any] | None = None
             ) -> dict[str, Any] | None:
    """``config`` as a point of ``space`` (grid row index plus every sampled key), or None if outside.

    With ``clip``, a number outside a range is moved to its nearer end instead (a choice it does
    not offer still puts the config outside). Keys ``fixed`` by ``--set`` are no part of the point (Optuna
    does not sample them: a point with one made Ray refuse the warm start); they hold in the grid rows too.
    """
    return placed(config, space, clip, fixed)[0]


def placed(config: dict[str, Any], space: Space, clip: bool = False, fixed: dict[str, Any] | None = None
           ) -> tuple[dict[str, Any] | None, str]:
    """``as_point``, and why a config is outside (the first key that puts it there; "" when inside)."""
    fixed = fixed or {}
    point: dict[str, Any] = {}
    if space.grid:
        rows = [{**row, **{k: fixed[k] for k in row if k in fixed}} for row in space.grid]
        matches = [i for i, row in enumerate(rows) if all(config.get(k) == v for k, v in row.items())]
        if not matches:
            return None, "it matches none of the space's grid rows"
        point["variant"] = matches[0]
    for key, value in space.params.items():
        if key in fixed:
            if config.get(key) != fixed[key] and not clip:
                return None, f"its {key} {config.get(key)!r} is not --set {key}={fixed[key]!r}"
            continue
        if not isinstance(value, Dist):
            if config.get(key, value) != value and not clip:
                return None, f"its {key} {config.get(key)!r} is not the space's {value!r}"
            continue
        got = config.get(key)
        if isinstance(got, tuple):
            got = list(got)
        if got is None:
            return None, f"it has no {key}"
        if value.kind in ("grid", "choice"):
            offered = [list(a) if isinstance(a, tuple) else a for a in value.args]
            if got not in offered:
                return None, f"its {key} {got!r} is none of the space's {value.kind} {offered}"
        else:
            drawn = in_range(value, got, clip)
            if drawn is None:
                return None, f"its {key} {got!r} is outside the space's {value.kind} {list(value.args)}"
            got = drawn
        point[key] = got
    return point, ""


def in_range(dist: Dist, got: Any, clip: bool) -> Any:
    """``got`` if ``dist`` can draw it, else, with ``clip``, the nearest value it can draw, else None. A
    randint's high is exclusive and a q-distribution draws only low + k q: a warm-start point off
    those made Optuna refuse it, and the stage failed."""
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        return None
    low, high = dist.args[0], dist.args[1] - (1 if dist.kind in ("randint", "lograndint") else 0)
    step = dist.args[2] if len(dist.args) == 3 else None
    whole = "int" in dist.kind

    def drawable(value: float) -> bool:
        on_step = step is None or math.isclose((value - low) / step, round((value - low) / step), abs_tol=1e-8)
        return low <= value <= high and on_step and (not whole or float(value).is_integer())

    if drawable(got):
        return got
    if not clip:
        return None
    got = min(max(got, low), high)
    if step is not None:
        got = low + round((got - low) / step) * step
        got = got - step if got > high else got
    return int(round(got)) if whole else got
