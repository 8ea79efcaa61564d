"""A bracket stage (tabula rasa): evaluate too simple, too complex and the middle, then bisect towards the best."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from analysis.format import metric_column
from search.options import total_trials
from search.plans.budget import EPOCHS
from search.plans.format import Stage
from search.plans.state import BudgetRanOut, PlanRun, stage_options, train_stage, write_space
from spaces import Space, load_space


def best_of(done: dict[int, float], mode: str) -> int:
    """The axis value with the best result (a missing result, NaN, counts as the worst)."""
    def badness(value: int) -> float:
        result = done[value]
        if math.isnan(result):
            return math.inf
        return result if mode == "min" else -result
    return min(sorted(done), key=badness)


def next_probes(done: dict[int, float], mode: str) -> list[int]:
    """The midpoints between the best value and its evaluated neighbours that are not yet evaluated."""
    ordered = sorted(done)
    i = ordered.index(best_of(done, mode))
    neighbours = ordered[max(0, i - 1): i + 2]
    return sorted({(a + b) // 2 for a, b in zip(neighbours, neighbours[1:])} - set(done))


def verdict(done: dict[int, float], mode: str, axis: str, low: int, high: int) -> dict[str, object]:
    ordered = sorted(done)
    best = best_of(done, mode)
    i = ordered.index(best)
    inside = ordered[0] < best < ordered[-1]
    bracketed = inside and not math.isnan(done[ordered[i - 1]]) and not math.isnan(done[ordered[i + 1]])
    if bracketed:
        message = f"valley bracketed at {axis}={best} between {ordered[i - 1]} and {ordered[i + 1]}"
    elif inside:
        message = (f"valley NOT bracketed: the best {axis}={best} has a neighbour without a result "
                   f"({axis}={ordered[i - 1]} or {ordered[i + 1]} failed); see the stage's trials.csv")
    else:
        message = f"valley NOT bracketed: the best {axis}={best} is at the edge of [{low}, {high}]; widen the range"
    return {"axis": axis, "best": best, "bracketed": bracketed, "message": message}


def bisect(done: dict[int, float], low: int, high: int, rounds: int, mode: str,
           evaluate: Callable[[int, list[int]], dict[int, float] | None],
           begun: list[list[int]] | None = None) -> bool:
    """Evaluate ``low``, ``high`` and the middle, then the midpoints around the best, for ``rounds`` rounds.

    ``done`` holds what is already evaluated (a continued plan's) and gains every result; ``begun``
    holds the values of each round already begun (a continued plan's): such a round is taken up
    again with the same values, in its own experiment (a round cut short is resumed, a finished one
    skipped), so the rounds after it are numbered as they were. ``evaluate(round, values)`` returns
    the results of ``values``, an empty dict when no more rounds can run (a budget spent: the rounds
    end there), or None when it was interrupted (then this returns False).
    """
    begun = begun or []
    for r in range(rounds):
        if r < len(begun):
            todo = list(begun[r])
        elif r == 0:
            todo = sorted({low, high, (low + high) // 2})
        else:
            todo = next_probes(done, mode)
        if not todo:
            break
        if any(value not in done for value in todo):
            results = evaluate(r, todo)
            if results is None:
                return False
            if not results:
                break
            done.update(results)
    return True


def epochs_each(run: PlanRun, stage: Stage, space: Space) -> tuple[dict[str, int], int | None]:
    """Under a trial-epoch budget, one number of epochs for every probe of every round (``max_epochs``), so
    that the rounds compare like with like: the allowance over the most probes the rounds can train (the
    first round used to take what it could of the whole allowance and the later ones what was left, one
    epoch against five, or none, and the bisection compared them as if equal); and what one probe costs
    then, in trial-epochs. ({}, None) without such a budget; no change when the full epochs fit."""
    if run.budget is None or run.budget.unit != EPOCHS:
        return {}, None
    low, high, rounds = stage.get("low"), stage.get("high"), int(stage.get("rounds", 3))
    probes = min(high - low + 1, 3 + 2 * (rounds - 1))
    opts = stage_options(run, stage)
    per_probe = total_trials(dataclasses.replace(space, params={k: v for k, v in space.params.items()
                                                                if k != stage.get("axis")}), opts)  # rows x seeds
    full = int(opts.max_epochs or space.max_epochs or 10)
    fits = int(run.state["budget"]["allowed"][stage.name] // (probes * per_probe))
    if fits >= full:
        return {}, per_probe * full
    each = max(1, fits)
    note = (f"the budget pays for {each} of {full} epochs for each of up to {probes} probes of {stage.get('axis')} "
            f"({per_probe} trial(s) each); every round trains that many, so that the rounds compare")
    run.say(f"valley: stage {stage.name}: {note}")
    run.record(stage, note=note)
    return {"max_epochs": each}, per_probe * each


def run(run: PlanRun, stage: Stage) -> str:
    """Bisect ``axis`` from ``low`` (too simple) and ``high`` (too complex), ranking on the space's metric."""
    space = load_space(stage.space)
    axis, low, high = stage.get("axis"), stage.get("low"), stage.get("high")
    column = metric_column(space.metric)
    saved = run.stage_state(stage.name)
    done = {int(k): math.nan if v is None else v for k, v in saved.get("evaluated", {}).items()}
    begun = [list(values) for values in saved.get("rounds", [])]
    status, spent_after = "completed", None
    epochs, probe_cost = epochs_each(run, stage, space)

    def evaluate(r: int, todo: list[int]) -> dict[int, float] | None:
        nonlocal status, spent_after
        left = run.left_for(stage)
        if r >= len(begun) and left is not None and left < max(1, len(todo) * (probe_cost or 0)):
            spent_after = r  # a round the budget cannot train in full is not begun
            return {}
        if r == len(begun):  # recorded before it trains: a continued plan takes this round up again as it was
            begun.append(todo)
            run.record(stage, rounds=begun)
        grid = [{**row, axis: value} for value in todo for row in (space.grid or [{}])]
        params = {k: v for k, v in space.params.items() if k != axis}
        derived = write_space(run, f"{stage.name}-r{r}", space, grid, params,
                              f"stage {stage.name}, round {r}: {axis} in {todo}")
        status = train_stage(run, stage, derived, f"{stage.name}-r{r}", **epochs)
        if status != "completed":
            return None
        trials, _ = run.trials(stage.name)
        results = {}
        for value in todo:
            found = trials.loc[trials.get(f"config/{axis}") == value, column].dropna()
            results[value] = float(found.min() if space.mode == "min" else found.max()) if len(found) else math.nan
        evaluated = {**done, **results}
        run.record(stage, evaluated={str(k): None if math.isnan(v) else v for k, v in sorted(evaluated.items())})
        return results

    if not bisect(done, low, high, stage.get("rounds", 3), space.mode, evaluate, begun[:]):
        return status
    if not done:
        left = run.budget.describe(run.left_for(stage) or 0)
        raise BudgetRanOut(f"stage {stage.name}: its allowance of {left} cannot train the first round's {low}, "
                           f"{(low + high) // 2} and {high} for one epoch each; give a larger --budget or the stage "
                           "a larger share in budget_split")
    result = verdict(done, space.mode, axis, low, high)
    if spent_after is not None:
        result["message"] += f" (the budget was spent after {spent_after} of {stage.get('rounds', 3)} rounds)"
    run.say(f"valley: stage {stage.name}: {result['message']}")
    run.record(stage, bracket=result)
    return "completed"
