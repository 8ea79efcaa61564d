"""A confirm stage: the top configurations over several seeds, with bootstrap intervals and a paired P."""
from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd

from analysis.format import FAILED, confirm_verdict, metric_column, trained
from analysis.load import config_of
from search.options import SearchError
from search.plans.budget import EPOCHS
from search.plans.format import Stage
from search.plans.select import config_means, top_configs
from search.plans.state import BudgetRanOut, PlanRun, stage_epochs, train_stage, write_space
from search.plans.state import source_space as source_space_of
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


def most_candidates(run: PlanRun, stage: Stage) -> int:
    """The most configurations the stage can confirm: its ``top`` of ``from`` and the incumbent of every
    other training stage before it."""
    before = run.plan.stages[:[s.name for s in run.plan.stages].index(stage.name)]
    return int(stage.get("top", 3)) + sum(s.kind in ("search", "bracket") and s.name != stage.source for s in before)


def in_order(top: list[tuple[str, dict[str, Any], str]], incumbents: list[tuple[str, dict[str, Any], str]]
             ) -> list[tuple[str, dict[str, Any], str]]:
    """(stage, config, trial id) rows to confirm: the best of ``top`` first, then each incumbent that
    is none of ``top``'s configurations, then the rest of ``top``; each configuration once (two
    earlier stages' best may be one configuration, and confirming it twice made its seeds clash)."""
    carried = [row for row in incumbents if all(row[1] != config for _, config, _ in top)]
    rows: list[tuple[str, dict[str, Any], str]] = []
    for row in [*top[:1], *carried, *top[1:]]:
        if all(row[1] != config for _, config, _ in rows):
            rows.append(row)
    return rows


def candidates(run: PlanRun, stage: Stage, top: int, fits: int | None
               ) -> tuple[list[dict[str, Any]], list[str], list[str], str]:
    """The configurations to confirm, with the trial and stage each came from, and a note (or "").

    The best of ``from`` first, then the incumbent of each earlier stage, then the rest of the top
    of ``from``; when a budget allows only ``fits`` of them, the best ``fits`` by :func:`by_evidence`.
    """
    source_space = source_space_of(run, stage.source)
    trials, _ = run.trials(stage.source)
    configs, ids = top_configs(trials, source_space.metric, source_space.mode, top, stopped=True)
    if not configs:
        why = f"stage {stage.name}: stage {stage.source} has no completed trial to confirm"
        if run.spent_out(run.plan.stage(stage.source)):
            raise BudgetRanOut(f"{why}: its share of --budget ran out first")
        raise SearchError(f"{why}; see {run.folder / stage.source / 'trials.csv'}")
    rows = in_order(list(zip([stage.source] * len(configs), configs, ids)), incumbents(run, stage))
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
            raise BudgetRanOut(f"stage {stage.name}: its budget cannot pay for one configuration over its seeds; "
                               "raise --budget or this stage's share in budget_split")
        rows, why = by_evidence(run, stage, rows)
        left = [f"trial {trial_id} of stage {origin}" for origin, _, trial_id in rows[fits:]]
        notes.append(f"the budget pays for {fits} of the {len(rows)} candidates; {why}, leaving out "
                     + ", ".join(left))
        rows = rows[:fits]
    origins, configs, ids = (list(column) for column in zip(*rows))
    return configs, ids, origins, "; ".join(notes)


def by_evidence(run: PlanRun, stage: Stage, rows: list[tuple[str, dict[str, Any], str]]
                ) -> tuple[list[tuple[str, dict[str, Any], str]], str]:
    """Candidates best first by the metric each earned in its own stage, when every stage ranks on the
    source's metric: a budget that pays for fewer than all confirms those, not an earlier stage's best that
    the stages after it beat on the same measure (in benchmarks/strategies.py it took one of the clock plan's
    two places in every repetition, 20 of its 120 trial-epochs, and won none). Else in their order (the best
    of ``from``, the incumbents, the rest of ``from``), and why."""
    source = source_space_of(run, stage.source)
    column, sign = metric_column(source.metric), 1 if source.mode == "min" else -1
    values, loaded = [], {}
    for origin, config, _ in rows:
        space = source_space_of(run, origin)
        if (metric_column(space.metric), space.mode) != (column, source.mode):
            return rows, (f"stage {origin} ranks on {space.metric}, not {source.metric}, so they are confirmed "
                          "in order: the best of each stage first")
        if origin not in loaded:  # the top of `from` are several candidates of one stage: read it once
            loaded[origin] = run.trials(origin)[0]
        value = evidence(loaded[origin], config, column)
        values.append(float("inf") if value is None else sign * value)
    ranked = [row for _, row in sorted(zip(values, rows), key=lambda pair: pair[0])]
    return ranked, f"chose them by {column} in their own stages"


def evidence(trials: pd.DataFrame, config: dict[str, Any], column: str) -> float | None:
    """``config``'s mean ``column`` in a stage's trials, as top_configs ranks it (:func:`config_means`: over
    its seeds that ran all their epochs, over those ASHA stopped only when none did); None when it has
    neither (it stalled at chance level, failed or never reported)."""
    means = config_means(trials, column, stopped=True)
    mine = means[(means["_key"] == json.dumps(config, sort_keys=True)) & (means["_late"] < 2)]
    return float(mine["_mean"].iloc[0]) if len(mine) else None


def seed_epochs(run: PlanRun, stage: Stage) -> int | None:
    """Epochs each seed trains: the stage's max_epochs, --max-epochs, or the epochs its source trains (else 10).

    None while that depends on a source stage that has not run and names no space of its own.
    """
    epochs = stage.get("max_epochs") or run.base.max_epochs
    if not epochs:
        source = run.plan.stage(stage.source)
        if not (run.stage_state(source.name).get("experiments") or source.space):
            return None
        epochs = stage_epochs(run, source.name)
    return int(epochs or 10)


def candidate_cost(run: PlanRun, stage: Stage) -> int | None:
    """Trial-epochs one configuration costs over the stage's seeds (None while unknown, see seed_epochs)."""
    epochs = seed_epochs(run, stage)
    return None if epochs is None else int(stage.get("seeds", 5)) * epochs


def paid_for(run: PlanRun, stage: Stage) -> int | None:
    """How many candidates the stage's whole allowance pays for over its seeds (None without a trial-epoch
    budget); not what is left of it: a stage continued after an interruption resumes the grid it started,
    whose trained epochs are paid for already, and must choose the same candidates (it chose fewer, or none
    and could never finish)."""
    if run.budget is None or run.budget.unit != EPOCHS:
        return None
    return int(run.state["budget"]["allowed"][stage.name] // candidate_cost(run, stage))


def begun_with(run: PlanRun, stage: Stage) -> tuple[list[dict[str, Any]], list[str], list[str], str] | None:
    """The candidates a stage continued after an interruption began with (plan.json), or None when it has not
    begun training: chosen again they could differ (a plan begun before a change to how candidates are ranked),
    while the grid it resumes is the one it began with, and configurations it never trained were compared."""
    state = run.stage_state(stage.name)
    if not (state.get("configs") and (run.folder / stage.name).is_dir()):
        return None
    derived = state.get("derived_from") or {}
    configs = list(state["configs"])
    return configs, list(derived.get("trials", [])), list(derived.get("stages") or [stage.source] * len(configs)), ""


def run(run: PlanRun, stage: Stage) -> str:
    """Re-train the best configurations over ``seeds`` seeds, each with a fresh validation split."""
    source_space = source_space_of(run, stage.source)
    seeds = int(stage.get("seeds", 5))
    fits = paid_for(run, stage)
    configs, ids, origins, note = begun_with(run, stage) or candidates(run, stage, int(stage.get("top", 3)), fits)
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
    # its own seeds, whatever --set seed gave the other stages (they would all be one, counted as one seed
    # here and as several in trials.csv)
    kept = {k: v for k, v in run.base.overrides.items() if k not in ("seed", "split_seed")}
    if kept != run.base.overrides:
        run.say(f"valley: stage {stage.name}: trains each configuration over its own {seeds} seeds; --set "
                f"{', '.join(sorted(set(run.base.overrides) - set(kept)))} applies to the other stages")
    # its own max_epochs, --max-epochs, or as many as its source trained: not its source's space file's;
    # every seed keeps its weights: the winner is chosen by its seeds' mean, not by the best single seeds
    status = train_stage(run, stage, space, stage.name, search="random", scheduler="fifo", samples=1,
                         max_epochs=seed_epochs(run, stage), overrides=kept, keep_weights="all")
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


NO_SEED_FINISHED = ("no configuration finished a seed: the budget ran out before one trial trained all its epochs; "
                    "raise --budget or this stage's share in budget_split")


def confirm_table(trials: pd.DataFrame, configs: list[dict[str, Any]], select: str, select_mode: str,
                  task: TaskSpec, n_boot: int = 2000) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Mean, standard deviation and bootstrap 95% interval of the test metric per configuration.

    The winner is the configuration with the best mean of ``select`` (a validation column, e.g.
    ``best_val_loss``) over the seeds: choosing by the test metric would make the reported test
    figure optimistic. Seeds are shared across configurations (seed s uses split s for every
    one), so the bootstrap resamples seeds jointly: P(winner beats runner-up) is a paired
    estimate, on the test metric.

    A seed counts once its trial has trained all its epochs (or stopped by its own patience): one a
    time budget cut short is no confirmation. A seed that failed or diverged counts against its
    configuration: configurations rank by how many of the compared seeds they failed on, then by
    their mean, and the seed is not taken from the others' comparison. Where the configurations did
    not all end the same seeds (a budget ran out), they are compared on the seeds every one of them
    ended, and one that ended none is left out; ``summary["incomplete"]`` says so. An interval needs
    two seeds, a paired P two shared ones.
    """
    column, mode = task.test_metric, task.mode
    if column not in trials:  # no trial reported an epoch (a time budget spent before the stage began)
        raise BudgetRanOut(NO_SEED_FINISHED)
    usable = trained(trials) if "status" in trials else pd.Series(True, index=trials.index)
    broken = trials["status"].isin(FAILED) if "status" in trials else ~usable
    labels = [config_of(row) for _, row in trials.iterrows()]
    mine = [pd.Series([label == config for label in labels], index=trials.index) for config in configs]
    ok = [set(trials[rows & usable & trials[column].notna()]["config/seed"]) for rows in mine]
    failed = [set(trials[rows & broken]["config/seed"]) - seeds for rows, seeds in zip(mine, ok)]
    kept = [i for i, seeds in enumerate(ok) if seeds]
    if not kept:
        if any(failed):
            raise SearchError("no configuration finished a seed: every seed that ended failed or diverged; see the "
                              "stage's trials.csv")
        raise BudgetRanOut(NO_SEED_FINISHED)
    ended = [ok[i] | failed[i] for i in kept]
    shared = set.intersection(*ended)
    notes = []
    if len(kept) < len(configs):
        notes.append(f"{len(configs) - len(kept)} of {len(configs)} configurations finished no seed: left out")
    if shared and any(seeds != shared for seeds in ended):
        extra = sum(len(seeds - shared) for seeds in ended)
        notes.append(f"compared on the seeds every configuration ended ({', '.join(map(str, sorted(shared)))}); "
                     f"left out: {extra} more seed{'s' * (extra != 1)} of some")
    elif not shared:
        notes.append("WARNING: the configurations ended no seed in common, so their means are over different "
                     "seeds and there is no paired P")
    seeds = sorted(shared) if shared else sorted(set().union(*ended))
    rows = [trials[mine[i] & usable].drop_duplicates("config/seed").set_index("config/seed") for i in kept]
    matrix = np.array([[part[column].get(s, np.nan) for s in seeds] for part in rows], dtype=float)
    fails = [len(failed[i] & set(seeds)) for i in kept]
    if any(fails):
        notes.append("failed or diverged on some seeds, so ranked after those that did not: " + ", ".join(
            f"config {i + 1} on {n} of {len(seeds)}" for i, n in zip(kept, fails) if n))
    resample = np.random.default_rng(0).integers(0, len(seeds), size=(n_boot, len(seeds)))
    with warnings.catch_warnings():  # a resample may hold only a configuration's failed or missing seeds
        warnings.simplefilter("ignore", RuntimeWarning)
        boot = np.nanmean(matrix[:, resample], axis=2)  # (configs, n_boot) means over resampled seeds
        counts = np.isfinite(matrix).sum(axis=1)
        table = pd.DataFrame({
            "config": [i + 1 for i in kept], "label": [json.dumps(configs[i]) for i in kept],  # candidate numbers
            "seeds": counts, "failed": fails,
            f"mean_{select}": [part[select].reindex(seeds).mean() for part in rows],
            f"mean_{column}": np.nanmean(matrix, axis=1),
            f"std_{column}": [np.nanstd(row, ddof=1) if n > 1 else np.nan for row, n in zip(matrix, counts)],
            "ci95_low": np.nanpercentile(boot, 2.5, axis=1), "ci95_high": np.nanpercentile(boot, 97.5, axis=1),
        })
    table.loc[table["seeds"] < 2, ["ci95_low", "ci95_high"]] = np.nan  # a point's interval would mislead
    order = table.sort_values(["failed", f"mean_{select}"], ascending=[True, select_mode == "min"],
                              kind="stable").index.to_list()
    table = table.loc[order].reset_index(drop=True)
    p = None
    if len(shared) > 1 and len(order) > 1:  # paired over the shared seeds, where both trained
        winner, runner = boot[order[0]], boot[order[1]]
        both = np.isfinite(winner) & np.isfinite(runner)
        if both.any():
            ahead = winner[both] - runner[both] if mode == "max" else runner[both] - winner[both]
            p = float(np.mean((ahead > 0) + 0.5 * (ahead == 0)))  # a tie is half a win: seeds of equal metrics read 0.5
    means = [float(m) for m in table[f"mean_{column}"].head(2)]
    return table, {"metric": column, "mode": mode, "chosen_by": f"mean {select} ({select_mode})",
                   "winner": table.loc[0, "label"], "winner_mean": means[0],
                   **({"runner_up": table.loc[1, "label"], "runner_up_mean": means[1]} if len(order) > 1 else {}),
                   "p_winner_beats_runner_up": p, "bootstrap_resamples": n_boot, "seeds": seeds,
                   **{f"{who}_failed": int(table.loc[row, "failed"]) for who, row in (("winner", 0), ("runner_up", 1))
                      if row < len(table) and table.loc[row, "failed"]},
                   **({"incomplete": "; ".join(notes)} if notes else {})}
