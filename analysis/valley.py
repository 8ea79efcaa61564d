"""The valley of the loss-versus-size curve and its one-standard-error choice.

Trials whose metric lies within ``threshold_se`` standard errors of the best
form the *band*; the smallest model in the band is the choice (the
one-standard-error rule: prefer the simplest model the data cannot tell apart
from the best). Models smaller than the band underfit, larger ones overfit.
A pure function of the frames, shared by the figures and the staged search.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from analysis.format import FAILED, guess_mode


@dataclasses.dataclass(frozen=True)
class ValleyResult:
    members: tuple[str, ...]  # trial ids in the band (every seed of a member config)
    chosen: str  # trial id of the one-standard-error choice (its best seed)
    best: str  # trial id of the best trial (the best seed of the best config)
    best_value: float  # the best config's metric (mean over its seeds)
    se: float  # standard error of best_value
    cutoff: float  # band edge: best_value + threshold_se * se (minus, for a max metric)
    threshold_se: float
    metric: str
    mode: str  # "min" | "max"
    se_source: str  # where se came from, in words
    low_params: int  # smallest and largest model in the band
    high_params: int
    chosen_params: int
    reason: str  # the whole decision, one paragraph


def is_seed(column: str) -> bool:
    """``config/seed``, ``config/split_seed`` ...: keys that repeat a config rather than change it."""
    name = column.removeprefix("config/")
    return name == "seed" or name.endswith("_seed")


def config_key(trials: pd.DataFrame) -> pd.Series:
    """One text key per trial naming its config without its seeds: repeated seeds share it."""
    columns = [c for c in trials.columns if c.startswith("config/") and not is_seed(c)]
    if "stage" in trials:
        columns = ["stage", *columns]
    if not columns:
        return trials["trial_id"].astype(str)
    keys = ["|".join(map(str, row)) for row in trials[columns].itertuples(index=False)]
    return pd.Series(keys, index=trials.index, dtype=str)


def run_key(trials: pd.DataFrame) -> pd.Series:
    """One text key per trial naming its config and its seeds: one seed twice shares it, one training twice
    (an Optuna repeat, `--set seed=3 --samples 3`), never two seeds. Without seed columns, each trial its own."""
    seeds = [c for c in trials.columns if c.startswith("config/") and is_seed(c)]
    if not seeds:
        return trials["trial_id"].astype(str)
    # map(str), not astype(str): pandas 3 keeps a missing seed (a row that sets none) missing, and join refused it
    return config_key(trials) + "|" + trials[seeds].map(str).agg("|".join, axis=1)


def seeds_of_config(trials: pd.DataFrame) -> pd.Series:
    """Per trial, how many distinct runs (:func:`run_key`) its config has among ``trials``."""
    keys = config_key(trials)
    counts = pd.DataFrame({"key": keys, "run": run_key(trials)}).drop_duplicates()["key"].value_counts()
    return keys.map(counts)


def usable_trials(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trials a valley is found among: neither failed nor diverged, with a finite ``metric`` and
    ``n_params`` (numbers); none when either column is missing (no trial has reported)."""
    if metric not in trials or "n_params" not in trials:
        return trials.iloc[0:0]
    usable = trials[~trials.get("status", pd.Series("", index=trials.index)).isin(FAILED)].copy()
    usable[metric] = pd.to_numeric(usable[metric], errors="coerce")
    usable["n_params"] = pd.to_numeric(usable["n_params"], errors="coerce")
    return usable[np.isfinite(usable[metric]) & np.isfinite(usable["n_params"])]


def never_left_chance(trials: pd.DataFrame) -> pd.Series:
    """Whether each trial's validation headline sat at chance level in every epoch it trained.

    From ``chance_epochs`` (epochs in a row at chance, up to the last); False where a folder
    written before that key existed has none.
    """
    if "chance_epochs" not in trials or "epochs" not in trials:
        return pd.Series(False, index=trials.index)
    chance = pd.to_numeric(trials["chance_epochs"], errors="coerce")
    epochs = pd.to_numeric(trials["epochs"], errors="coerce")
    return (epochs > 0) & (chance >= epochs)


def chance_warning(trials: pd.DataFrame) -> str:
    """A sentence when trials that trained never left chance level (stalled or not), else "": how many, the
    learning rates of those and of the rest, and what to try. A search of such trials ends 'completed'; its best
    is then no model at all, and nothing else said so."""
    trained = trials[~trials["status"].isin(FAILED)] if "status" in trials else trials
    flat = never_left_chance(trained)
    if not flat.any():
        return ""
    lrs = ""
    rates = pd.to_numeric(trained["config/lr"], errors="coerce").dropna() if "config/lr" in trained else None
    if rates is not None and rates.nunique() == 1:  # one learning rate: the others' would say nothing
        lrs = f" (all at lr {rates.iloc[0]:.3g})"
    elif rates is not None and not rates.empty:
        def span(values: pd.Series) -> str:
            values = pd.to_numeric(values, errors="coerce").dropna()
            low, high = (f"{values.min():.3g}", f"{values.max():.3g}") if len(values) else ("?", "?")
            return low if low == high else f"{low} to {high}"
        lrs = f" (lr {span(trained.loc[flat, 'config/lr'])}" + (
            f"; of those that learned, {span(trained.loc[~flat, 'config/lr'])})" if (~flat).any() else ")")
    every = "none of them learned, so the best is no model at all; " if flat.all() else ""
    return (f"{int(flat.sum())} of {len(trained)} trials never left chance level in the epochs they trained{lrs}: "
            f"{every}a learning rate too low or too high learns nothing, a trial too short may not have begun to; "
            f"change the lr range or train longer")


ASHA_LONGER = "a larger --grace-period (or budget) trains each longer before a cut"


def cut_while_improving(trials: pd.DataFrame, longer: str = ASHA_LONGER) -> str:
    """A sentence when a scheduler (ASHA) or a budget stopped trials at their best epoch so far, still
    improving, else "": how many, how many after their first epoch, and what ranks them then; ``longer`` says
    what trains them longer, in the words of the command that ran them."""
    if not {"status", "stopped_by_scheduler", "best_epoch", "epochs"} <= set(trials.columns):
        return ""
    epochs = pd.to_numeric(trials["epochs"], errors="coerce")
    cut = trials[(trials["status"] == "stopped") & trials["stopped_by_scheduler"].astype(bool)
                 & (pd.to_numeric(trials["best_epoch"], errors="coerce") == epochs) & (epochs > 0)]
    if cut.empty:
        return ""
    first = int((epochs[cut.index] == 1).sum())
    after = ("" if not first else ", each after its first epoch" if first == len(cut)
             else f", {first} of them after their first epoch")
    stopped = int((trials["status"] == "stopped").sum())
    which = f"all {stopped}" if len(cut) == stopped else f"{len(cut)} of the {stopped}"
    return (f"{which} trials stopped early were still improving when stopped (their last epoch their best){after}: "
            f"they are ranked by how fast they began, not by where they would end; {longer}")


def not_learning(usable: pd.DataFrame, chosen: str | None = None) -> str:
    """A sentence when most of the trials a valley is found among never left chance level, else "".

    A trial shorter than ``stall_epochs`` is never marked ``stalled``; when most never learned,
    the valley rests on the few that learned first and says little about the rest; where the valley's
    choice (``chosen``, a trial id) is one of those that never learned, the sentence says so.
    """
    flat = usable[never_left_chance(usable)]
    if len(flat) * 2 <= len(usable):
        return ""
    epochs = sorted({int(e) for e in flat["epochs"]})
    trained = f"{epochs[0]}" if len(epochs) == 1 else f"{epochs[0]} to {epochs[-1]}"
    if len(flat) == len(usable):
        rest = "the valley is chosen among models that learned nothing"
    elif chosen is not None and chosen in set(flat["trial_id"]):  # it said "rests on the 3 that did" of such a pick
        rest = f"only {len(usable) - len(flat)} learned, and the valley's choice, trial {chosen}, is not one of them"
    else:
        rest = f"the valley rests on the {len(usable) - len(flat)} that did"
    return (f"{len(flat)} of the {len(usable)} trials never left chance level in the {trained} "
            f"epoch{'' if epochs == [1] else 's'} they trained, so {rest}")


def find_valley(trials: pd.DataFrame, epochs: pd.DataFrame | None = None, metric: str = "best_val_loss",
                threshold_se: float = 1.0, mode: str | None = None) -> ValleyResult:
    """The band of trials within ``threshold_se`` standard errors of the best, and its smallest model.

    The standard error comes from repeated seeds of the same config where any
    config has at least two (that config's, or the pooled seed spread when the
    best config has one seed); otherwise from the spread (sample standard
    deviation) of the best trial's last 3 epochs of the per-epoch metric
    (``val_loss`` for ``best_val_loss``). Failed and diverged trials are left out.
    """
    mode = mode or guess_mode(metric)
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if not threshold_se >= 0:
        raise ValueError(f"threshold_se must be >= 0, got {threshold_se!r}; 1.0 is the one-standard-error rule")
    for column in (metric, "n_params", "trial_id"):
        if column not in trials:
            raise ValueError(f"find_valley needs a {column!r} column in trials, got columns "
                             f"{sorted(map(str, trials.columns))[:12]}; pass the trials frame of analysis.load")
    usable = usable_trials(trials, metric)
    if usable.empty:
        raise ValueError(f"find_valley needs at least one trial with a finite {metric} and n_params, got none "
                         f"among {len(trials)} trials; wait until a trial has reported an epoch")
    sign = 1.0 if mode == "min" else -1.0
    usable["_key"] = config_key(usable)
    usable["_score"] = sign * usable[metric]
    groups = usable.groupby("_key", sort=False).agg(value=(metric, "mean"), sd=(metric, "std"), n=(metric, "size"),
                                                    n_params=("n_params", "min"))
    groups["score"] = sign * groups["value"]
    best_key = groups.sort_values(["score", "n_params"]).index[0]
    best_trial = usable[usable["_key"] == best_key].sort_values("_score")["trial_id"].iloc[0]
    best_value = float(groups.at[best_key, "value"])

    repeated = groups[groups["n"] >= 2]
    if groups.at[best_key, "n"] >= 2:
        n = int(groups.at[best_key, "n"])
        se = float(groups.at[best_key, "sd"]) / math.sqrt(n)
        source = f"the spread of the best config's {n} seeds (sd / sqrt({n}))"
    elif not repeated.empty:
        se = float(np.sqrt((repeated["sd"] ** 2).mean()))
        source = f"the seed spread pooled over {len(repeated)} repeated configs (the best config has one seed)"
    else:
        se, source = _epoch_spread(epochs, best_trial, metric.removeprefix("best_"))
    cutoff = best_value + sign * threshold_se * se
    tolerance = 1e-12 * max(1.0, abs(best_value))
    band = groups[groups["score"] <= sign * cutoff + tolerance]
    chosen_key = band.sort_values(["n_params", "score"]).index[0]
    chosen_trial = usable[usable["_key"] == chosen_key].sort_values("_score")["trial_id"].iloc[0]
    members = tuple(usable.loc[usable["_key"].isin(band.index), "trial_id"].astype(str))
    low, high = int(band["n_params"].min()), int(band["n_params"].max())
    chosen_params = int(groups.at[chosen_key, "n_params"])
    edge = "<=" if mode == "min" else ">="
    span = f"{low:,}" if low == high else f"{low:,} to {high:,}"
    prefix = "" if metric.startswith("best_") else "best "  # not "best best_val_loss"
    reason = (f"{prefix}{metric} {best_value:.4g} (trial {best_trial}, {int(groups.at[best_key, 'n_params']):,} "
              f"parameters); standard error {se:.3g} from {source}; the band {metric} {edge} {cutoff:.4g} "
              f"({threshold_se:g} SE) holds {len(band)} of {len(groups)} configs, {span} parameters; "
              f"chose trial {chosen_trial}, the smallest model in the band ({chosen_params:,} parameters)")
    return ValleyResult(members=members, chosen=str(chosen_trial), best=str(best_trial), best_value=best_value,
                        se=se, cutoff=cutoff, threshold_se=threshold_se, metric=metric, mode=mode, se_source=source,
                        low_params=low, high_params=high, chosen_params=chosen_params, reason=reason)


def _epoch_spread(epochs: pd.DataFrame | None, trial_id: str, column: str, last: int = 3) -> tuple[float, str]:
    """(sample sd of the trial's last ``last`` values of ``column``, its description); 0 without two values."""
    if epochs is None or epochs.empty or column not in epochs or "trial_id" not in epochs:
        return 0.0, f"nothing: no per-epoch {column} to estimate it from, so the band holds only ties with the best"
    rows = epochs[epochs["trial_id"] == trial_id]
    if "epoch" in rows:
        rows = rows.sort_values("epoch")
    values = pd.to_numeric(rows[column], errors="coerce").dropna().to_numpy()[-last:]
    if len(values) < 2:
        return 0.0, f"nothing: the best trial has {len(values)} epoch(s) of {column}, fewer than 2"
    source = f"the spread of the best trial's last {len(values)} epochs' {column}"
    steps = np.diff(values)
    if (steps < 0).all() or (steps > 0).all():  # still learning (or overfitting): its progress counts as noise
        source += (", which moved one way over them (a trend, not noise alone: more epochs or repeated seeds "
                   "would make the band narrower)")
    return float(np.std(values, ddof=1)), source
