"""A valley stage: the architectures within ``threshold`` standard errors of the best, smallest first.

``order: metric`` carries them best first instead: for an axis whose parameter count says nothing of
complexity (the clock's label encodings differ by a few output units), "smallest" is an arbitrary pick.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from analysis.format import metric_column
from analysis.load import config_of
from search.options import SearchError
from search.plans.budget import SECONDS
from search.plans.format import Stage
from search.plans.state import BudgetRanOut, PlanRun, source_space
from spaces import Space
from trainables import get_family


def run(run: PlanRun, stage: Stage) -> str:
    from analysis.valley import find_valley, not_learning, usable_trials

    trials, epochs = run.trials(stage.source)
    space = source_space(run, stage.source)
    arch_keys = stage.get("arch_keys") or list(get_family(space.family).arch_keys)
    threshold = float(stage.get("threshold", 1.0))
    column = metric_column(space.metric)
    usable = usable_trials(trials, column)
    if usable.empty:
        statuses = ", ".join(f"{n} {s}" for s, n in trials.get("status", pd.Series(dtype=str)).value_counts().items())
        why = (f"stage {stage.name}: no trial of stage {stage.source} has a finite {column} "
               f"({statuses or 'no trials'}), so there is no valley to find")
        budget = run.budget
        source = run.plan.stage(stage.source)
        if budget is not None and budget.unit == SECONDS and not len(trials) and run.spent_out(source):
            allowed = run.state["budget"]["allowed"][stage.source]
            share = f"{budget.describe(allowed)} of {budget.describe(budget.total)}"
            raise BudgetRanOut(f"{why}: its share of --budget ({share}) was spent first")
        raise SearchError(f"{why}; see {run.folder / stage.source / 'trials.csv'}")
    result = find_valley(trials, epochs, metric=column, threshold_se=threshold, mode=space.mode)
    note = not_learning(usable, result.chosen)
    if note:  # a rough grid cut to two epochs by a tight budget can leave most architectures at chance
        note = (f"WARNING: stage {stage.source}: {note}; if it cut them short, give it more epochs (its max_epochs "
                "or grace_period, a larger --budget or its share in budget_split)")
    band = trials[trials["trial_id"].isin(result.members)].sort_values("n_params")
    archs = band_architectures(band, arch_keys, column, result.mode, stage.get("order", "size"))
    archs = archs[: int(stage.get("keep", 3))]
    extras = row_settings(band, archs, arch_keys, space, column, result.mode)
    by_id = trials.set_index("trial_id")
    chosen = config_of(by_id.loc[result.chosen].rename(None))
    summary = {
        "from": stage.source, "kind": "valley", "rule": "one standard error", "threshold_se": threshold,
        "reason": result.reason, "band": list(result.members), "chosen": result.chosen, "chosen_config": chosen,
        "best": result.best, "best_config": config_of(by_id.loc[result.best].rename(None)),
        "architectures": archs, "with": extras, "arch_keys": arch_keys, "order": stage.get("order", "size"),
        **({"note": note} if note else {}),
    }
    (run.folder / f"stage-{stage.name}.json").write_text(json.dumps(summary, indent=2, default=str))
    run.record(stage, **summary)
    run.say(f"valley: stage {stage.name}: {result.reason}")
    if note:
        run.say(f"valley: stage {stage.name}: {note}")
    if stage.get("order") == "metric":
        run.say(f"valley: stage {stage.name}: carrying on the band's {len(archs)} best by {column} (order: metric), "
                "not its smallest")
    for arch, extra in zip(archs, extras):
        run.say(f"valley:   carried on: {arch}" + (f", as its best grid row had it: {extra}" if extra else ""))
    return "completed"


def band_architectures(band: pd.DataFrame, arch_keys: list[str], column: str, mode: str, order: str
                       ) -> list[dict[str, Any]]:
    """The band's distinct architectures: smallest first (``band`` comes sorted by size), or with ``order:
    metric`` best first, each by its best configuration's mean ``column`` over its seeds (an architecture
    can have several grid rows: the clock's class_class with and without csd_weight; averaged together,
    the row that made it best was outweighed by the other)."""
    from analysis.valley import config_key

    sign = 1 if mode == "min" else -1
    mean = band[column].groupby(config_key(band)).transform("mean") * sign
    scores: dict[str, float] = {}
    archs: list[dict[str, Any]] = []
    for (_, row), score in zip(band.iterrows(), mean):
        config = config_of(row)
        arch = {k: config[k] for k in arch_keys if k in config}
        if arch and arch not in archs:
            archs.append(arch)
        key = json.dumps(arch, sort_keys=True, default=str)
        scores[key] = min(scores.get(key, np.inf), float(score))
    if order == "metric":
        archs.sort(key=lambda arch: scores[json.dumps(arch, sort_keys=True, default=str)])
    return archs


def row_settings(band: pd.DataFrame, archs: list[dict[str, Any]], arch_keys: list[str], space: Space, column: str,
                 mode: str) -> list[dict[str, Any]]:
    """Per architecture, the other keys its best trial's grid row set (the clock's `csd_weight: 1.0` beside
    `encoding: class_class`): a later stage keeps them unless its own space sets them."""
    row_keys = {k for row in space.grid for k in row} - set(arch_keys)
    ranked = band.sort_values(column, ascending=mode == "min")
    extras = []
    for arch in archs:
        best = next(config for config in map(config_of, (row for _, row in ranked.iterrows()))
                    if all(config.get(k) == v for k, v in arch.items()))
        extras.append({k: best[k] for k in sorted(row_keys) if k in best})
    return extras
