"""Choosing configurations from a trials table: the best few, and one data set against another."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.format import metric_column, trained
from analysis.load import config_of


def top_configs(trials: pd.DataFrame, metric: str, mode: str, top: int, stopped: bool = False
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``top`` distinct configs of completed trials, best first, with the trial each came from.

    A config run with several seeds ranks by its mean over them, not by its luckiest seed; the trial
    it came from is its best seed. With ``stopped``, trials that ASHA stopped early fill the places
    completed trials leave, best first after every completed one (their metric is from fewer
    epochs). Stalled trials (at chance level) come last of all, so one is picked only when nothing
    else finished.
    """
    column = metric_column(metric)
    ranked = config_means(trials, metric, stopped)
    if ranked.empty:  # no trial has reported yet (a budget spent before one did)
        return [], []
    ranked = ranked.sort_values(["_late", "_mean", column], ascending=[True, mode == "min", mode == "min"])
    chosen = ranked.drop_duplicates("_key").head(top)
    return [config_of(row) for _, row in chosen.iterrows()], chosen["trial_id"].tolist()


def config_means(trials: pd.DataFrame, metric: str, stopped: bool = False) -> pd.DataFrame:
    """The trials a config is ranked on, each with ``_key`` (:func:`config_text`), ``_late`` (0 completed,
    1 stopped by ASHA, 2 stalled) and ``_mean``, the config's mean ``metric`` over them: its trials of its
    best class only (a stopped seed's metric is from fewer epochs). Empty when no trial has reported."""
    column = metric_column(metric)
    if "status" not in trials or column not in trials:
        return pd.DataFrame(columns=["trial_id", column, "_key", "_late", "_mean"])
    statuses = ["completed", "stopped", "stalled"] if stopped else ["completed", "stalled"]
    ranked = trials[trials["status"].isin(statuses)].dropna(subset=[column])
    ranked = ranked.assign(_late=ranked["status"].map({"completed": 0, "stopped": 1, "stalled": 2}),
                           _key=[config_text(row) for _, row in ranked.iterrows()])
    ranked = ranked[ranked["_late"] == ranked.groupby("_key")["_late"].transform("min")]  # a config's best class
    return ranked.assign(_mean=ranked.groupby("_key")[column].transform("mean"))


def config_text(row: pd.Series) -> str:
    """A trials-table row's config as text, without the keys that only say how it ran (its seed among them)."""
    return json.dumps(config_of(row), sort_keys=True)


def seeds_of(trials: pd.DataFrame, ids: list[str]) -> pd.DataFrame:
    """The rows that stand for the configs of ``ids`` (as ``top_configs`` returns them, best first), in that
    order: each config's seeds of the chosen trial's status, the chosen trial alone when it is the config's
    only one."""
    keys = [(config_text(row), row["status"]) for _, row in trials.iterrows()]
    at = dict(zip(trials["trial_id"], keys))
    rank: dict[tuple[str, str], int] = {}
    for trial_id in ids:
        if trial_id in at:
            rank.setdefault(at[trial_id], len(rank))
    return trials.iloc[sorted((n for n, key in enumerate(keys) if key in rank), key=lambda n: rank[keys[n]])]


def confirmed_order(table: Path, trials: pd.DataFrame, top: int) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``top`` configs a confirm stage ranked (its ``stage-<name>.csv``, best first: fewest failed seeds,
    then the mean over seeds), each with its best trained seed in ``trials``, the stage's own trials."""
    order = [json.loads(label) for label in pd.read_csv(table)["label"].head(top)]
    usable = trials[trained(trials)]
    keys = pd.Series([config_text(row) for _, row in usable.iterrows()], index=usable.index, dtype=object)
    configs, ids = [], []
    for config in order:
        rows = usable[keys == json.dumps(config, sort_keys=True)]
        if not rows.empty:
            configs.append(config)
            ids.append(rows["trial_id"].iloc[0])
    return configs, ids


def side_by_side(before: pd.DataFrame, after: pd.DataFrame, from_name: str, to_name: str,
                 test_metric: str, val_metric: str = "val_loss") -> pd.DataFrame:
    """One row per configuration, in ``before``'s order (``seeds_of``: best first) and numbered so: its metrics
    on the source and on the target data set, each the mean over the seeds the frames hold of it, with how
    many that is. Columns end in @source and @target where the two data sets share a name (synthetic clocks,
    then the course's files, are both `clocks`: every column came twice under one name)."""
    metrics = [c for c in dict.fromkeys(("n_params", metric_column(val_metric), "best_val_loss", test_metric,
                                         "test_loss")) if c in before]
    if from_name == to_name:
        from_name, to_name = "source", "target"

    def per_config(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.assign(_key=[config_text(r) for _, r in frame.iterrows()])
        means = frame.groupby("_key", sort=False)[[c for c in metrics if c in frame]].mean()
        return means.assign(seeds=frame.groupby("_key", sort=False).size()).reset_index()

    merged = per_config(before).merge(per_config(after), on="_key", suffixes=(f"@{from_name}", f"@{to_name}"))
    merged.insert(0, "rank", range(1, len(merged) + 1))
    return merged.rename(columns={"_key": "config"})
