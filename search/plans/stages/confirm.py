"""A confirm stage: the top configurations over several seeds, with bootstrap intervals and a paired P."""
from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis.format import TRAINED, confirm_verdict, metric_column
from analysis.load import config_of
from search.options import SearchError
from search.plans.format import Stage
from search.plans.select import top_configs
from search.plans.state import PlanRun, train_stage, write_space
from search.plans.state import source_space as source_space_of
from spaces import load_space
from trainables import get_family
from trainables.family import TaskSpec


def incumbents(run: PlanRun, stage: Stage) -> list[tuple[str, dict[str, Any], str]]:
    """The best configuration of every training stage before ``stage`` (a plan never forgets what it found).

    (stage, config, trial id) per earlier search or bracket stage other than ``from``, each ranked
    on its own space's metric, completed trials first.
    """
    found = []
    for earlier in run.plan.stages:
        if earlier.name == stage.name:
            break
        if earlier.name == stage.source or earlier.kind not in ("search", "bracket"):
            continue
        if run.stage_state(earlier.name).get("status") != "completed":
            continue
        space = source_space_of(run, earlier.name)
        configs, ids = top_configs(run.trials(earlier.name)[0], space.metric, space.mode, 1, stopped=True)
        if configs:
            found.append((earlier.name, configs[0], ids[0]))
    return found


def candidates(run: PlanRun, stage: Stage, top: int, fits: int | None
               ) -> tuple[list[dict[str, Any]], list[str], list[str], str]:
    """The configurations to confirm, with the trial and stage each came from, and a note (or "").

    The best of ``from`` first, then the incumbent of each earlier stage, then the rest of the top
    of ``from``; at most ``fits`` of them when a budget allows no more.
    """
    source_space = source_space_of(run, stage.source)
    trials, _ = run.trials(stage.source)
    configs, ids = top_configs(trials, source_space.metric, source_space.mode, top, stopped=True)
    if not configs:
        raise SearchError(f"stage {stage.name}: stage {stage.source} has no completed trial to confirm")
    rows = [(stage.source, configs[0], ids[0])]
    rows += [row for row in incumbents(run, stage) if row[1] not in configs]
    rows += list(zip([stage.source] * len(configs), configs, ids))[1:]
    notes = []
    early = trials[trials["trial_id"].isin(ids) & (trials["status"] == "stopped")]["trial_id"].tolist()
    if early or len(configs) < top:
        notes.append(f"confirming {len(configs)} configurations of stage {stage.source} (top: {top})"
                     + (f"; {len(early)} of them ASHA stopped early ({', '.join(early)}): too few trials ran all "
                        f"their epochs" if early else f"; it has only {len(configs)} distinct finished ones"))
    if len(rows) > len(configs):
        notes.append("carried forward the best of " + ", ".join(origin for origin, _, _ in rows
                                                                  if origin != stage.source))
    stalled = trials[trials["trial_id"].isin(ids) & (trials["status"] == "stalled")]["trial_id"].tolist()
    if stalled:
        notes.append(f"WARNING: {len(stalled)} of the configurations confirmed from stage {stage.source} stalled at "
                     f"chance level there ({', '.join(stalled)}): it may have learned nothing; check its learning "
                     "rate and its data")
    if fits is not None and fits < len(rows):
        if fits < 1:
            raise SearchError(f"stage {stage.name}: its budget cannot pay for one configuration over its seeds; "
                              "raise --budget or this stage's share in budget_split")
        notes.append(f"the budget pays for {fits} of the {len(rows)} candidates")
        rows = rows[:fits]
    origins, configs, ids = (list(column) for column in zip(*rows))
    return configs, ids, origins, "; ".join(notes)


def seed_epochs(run: PlanRun, stage: Stage) -> int | None:
    """Epochs each seed trains: the stage's max_epochs, --max-epochs, or its source's space's (else 10).

    None while that depends on a source stage that has not run and names no space of its own.
    """
    epochs = stage.get("max_epochs") or run.base.max_epochs
    if not epochs:
        source = next(s for s in run.plan.stages if s.name == stage.source)
        if run.stage_state(source.name).get("experiments"):
            epochs = source_space_of(run, source.name).max_epochs
        elif source.space:
            epochs = load_space(source.space).max_epochs
        else:
            return None
    return int(epochs or 10)


def candidate_cost(run: PlanRun, stage: Stage) -> int | None:
    """Trial-epochs one configuration costs over the stage's seeds (None while unknown, see seed_epochs)."""
    epochs = seed_epochs(run, stage)
    return None if epochs is None else int(stage.get("seeds", 5)) * epochs


def run(run: PlanRun, stage: Stage) -> str:
    """Re-train the best configurations over ``seeds`` seeds, each with a fresh validation split."""
    source_space = source_space_of(run, stage.source)
    seeds = int(stage.get("seeds", 5))
    left = run.left_for(stage)
    fits = None if left is None or run.budget.unit != "trial-epochs" else int(left // candidate_cost(run, stage))
    configs, ids, origins, note = candidates(run, stage, int(stage.get("top", 3)), fits)
    if note:
        run.say(f"valley: stage {stage.name}: {note}")
        run.record(stage, note=note)
    # seed by seed, each over every configuration: a time budget that runs out leaves them with the same seeds
    grid = [{**config, "seed": s, "split_seed": s} for s in range(seeds) for config in configs]
    space = write_space(run, stage.name, source_space, grid, {},
                        f"stage {stage.name}: {len(configs)} configurations of {', '.join(dict.fromkeys(origins))} "
                        f"x {seeds} seeds")
    run.record(stage, derived_from={"stage": stage.source, "trials": ids, "stages": origins},
               configs=configs, space=f"{stage.name}.space.yaml")
    status = train_stage(run, stage, space, stage.name, search="random", scheduler="fifo", samples=1)
    if status != "completed":
        return status
    table, summary = confirm_table(run.trials(stage.name)[0], configs, metric_column(source_space.metric),
                                   source_space.mode, get_family(source_space.family).task)
    origin = {json.dumps(c): o for c, o in zip(configs, origins)}
    table.insert(2, "stage", [origin.get(label, "") for label in table["label"]])
    if summary.get("incomplete"):
        run.say(f"valley: stage {stage.name}: {summary['incomplete']}")
    summary["winner_stage"] = origin.get(summary["winner"])
    if summary["winner_stage"] != stage.source:
        summary["note"] = (f"the winner is stage {summary['winner_stage']}'s best: the stages after it found "
                           "nothing better")
        run.say(f"valley: stage {stage.name}: {summary['note']}")
    table.to_csv(run.folder / f"stage-{stage.name}.csv", index=False)
    (run.folder / f"stage-{stage.name}.json").write_text(json.dumps(summary, indent=2, default=str))
    run.record(stage, summary=summary)
    run.say(table.to_string(index=False))
    run.say("valley: " + confirm_verdict(summary, f"config {table.loc[0, 'config']}"))
    return "completed"


def confirm_table(trials: pd.DataFrame, configs: list[dict[str, Any]], select: str, select_mode: str,
                  task: TaskSpec, n_boot: int = 2000) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Mean, standard deviation and bootstrap 95% interval of the test metric per configuration.

    The winner is the configuration with the best mean of ``select`` (a validation column, e.g.
    ``best_val_loss``) over the seeds: choosing by the test metric would make the reported test
    figure optimistic. Seeds are shared across configurations (seed s uses split s for every
    one), so the bootstrap resamples seeds jointly: P(winner beats runner-up) is a paired
    estimate, on the test metric.

    A seed counts once its trial has trained all its epochs (or stopped by its own patience): one a
    time budget cut short is no confirmation. Where the configurations did not all finish the same
    seeds (a budget ran out), they are compared on the seeds every one of them finished, and one that
    finished none is left out; ``summary["incomplete"]`` says so.
    """
    column, mode = task.test_metric, task.mode
    if "status" in trials:
        trials = trials[trials["status"].isin(TRAINED)]
    labels = [config_of(row) for _, row in trials.iterrows()]
    mine = [trials[[label == config for label in labels]].set_index("config/seed") for config in configs]
    finished = [set(rows[column].dropna().index) for rows in mine]
    kept = [i for i, seeds in enumerate(finished) if seeds]
    if not kept:
        raise SearchError("no configuration finished a seed: the budget ran out before one trial trained all its "
                          "epochs; raise --budget or this stage's share in budget_split")
    shared = set.intersection(*(finished[i] for i in kept))
    notes = []
    if len(kept) < len(configs):
        notes.append(f"{len(configs) - len(kept)} of {len(configs)} configurations finished no seed: left out")
    if shared and any(finished[i] != shared for i in kept):
        extra = sum(len(finished[i] - shared) for i in kept)
        notes.append(f"compared on the seeds every configuration finished ({', '.join(map(str, sorted(shared)))}); "
                     f"left out: {extra} more seed{'s' * (extra != 1)} of some")
    elif not shared:
        notes.append("WARNING: the configurations finished no seed in common, so their means are over different "
                     "seeds and P is not paired")
    seeds = sorted(shared) if shared else sorted(set().union(*(finished[i] for i in kept)))
    configs = [configs[i] for i in kept]
    compared = [mine[i][mine[i].index.isin(seeds)] for i in kept]
    by_config = [rows[column].dropna() for rows in compared]
    chosen_by = [rows[select].mean() for rows in compared]
    matrix = np.array([[values.get(s, np.nan) for s in seeds] for values in by_config], dtype=float)
    resample = np.random.default_rng(0).integers(0, len(seeds), size=(n_boot, len(seeds)))
    with warnings.catch_warnings():  # only without shared seeds: a resample may miss a configuration's seeds
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = np.nanmean(matrix[:, resample], axis=2)  # (configs, n_boot) means over resampled seeds
        counts = np.isfinite(matrix).sum(axis=1)
        table = pd.DataFrame({
            "config": [i + 1 for i in kept], "label": [json.dumps(c) for c in configs],  # candidate numbers
            "seeds": counts, f"mean_{select}": chosen_by,
            f"mean_{column}": np.nanmean(matrix, axis=1),
            f"std_{column}": [np.nanstd(row, ddof=1) if n > 1 else np.nan for row, n in zip(matrix, counts)],
            "ci95_low": np.nanpercentile(boot, 2.5, axis=1), "ci95_high": np.nanpercentile(boot, 97.5, axis=1),
        })
    order = table[f"mean_{select}"].sort_values(ascending=select_mode == "min", kind="stable").index.to_list()
    table = table.loc[order].reset_index(drop=True)
    p = None
    means = [float(m) for m in table[f"mean_{column}"].head(2)]
    if len(seeds) < 2:  # every resample is the one seed: an interval of a point and P of 0 or 1 would mislead
        table[["ci95_low", "ci95_high"]] = np.nan
    elif len(order) > 1:
        winner, runner = boot[order[0]], boot[order[1]]
        p = float(np.mean(winner > runner) if mode == "max" else np.mean(winner < runner))
    return table, {"metric": column, "mode": mode, "chosen_by": f"mean {select} ({select_mode})",
                   "winner": table.loc[0, "label"], "winner_mean": means[0],
                   **({"runner_up": table.loc[1, "label"], "runner_up_mean": means[1]} if len(order) > 1 else {}),
                   "p_winner_beats_runner_up": p, "bootstrap_resamples": n_boot, "seeds": seeds,
                   **({"incomplete": "; ".join(notes)} if notes else {})}
