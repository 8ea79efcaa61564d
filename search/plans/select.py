"""Choosing configurations from a trials table: the best few, and one data set against another."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from analysis.format import metric_column
from analysis.load import config_of


def top_configs(trials: pd.DataFrame, metric: str, mode: str, top: int, stopped: bool = False
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``top`` distinct configs of completed trials, best first, with the trial each came from.

    With ``stopped``, trials that ASHA stopped early fill the places completed trials leave,
    best first after every completed one (their metric is from fewer epochs). Stalled trials
    (at chance level) come last of all, so one is picked only when nothing else finished.
    """
    column = metric_column(metric)
    if "status" not in trials or column not in trials:  # no trial has reported yet (a budget spent before one did)
        return [], []
    statuses = ["completed", "stopped", "stalled"] if stopped else ["completed", "stalled"]
    ranked = trials[trials["status"].isin(statuses)].dropna(subset=[column])
    ranked = ranked.assign(_late=ranked["status"].map({"completed": 0, "stopped": 1, "stalled": 2}))
    ranked = ranked.sort_values(["_late", column], ascending=[True, mode == "min"])
    configs: list[dict[str, Any]] = []
    ids: list[str] = []
    for _, row in ranked.iterrows():
        config = config_of(row)
        if config not in configs:
            configs.append(config)
            ids.append(row["trial_id"])
        if len(configs) == top:
            break
    return configs, ids


def side_by_side(before: pd.DataFrame, after: pd.DataFrame, from_name: str, to_name: str,
                 test_metric: str) -> pd.DataFrame:
    """One row per configuration: its metrics on the source and on the target data set."""
    metrics = [c for c in ("n_params", "best_val_loss", test_metric, "test_loss") if c in before]
    before = before.assign(_key=[json.dumps(config_of(r), sort_keys=True) for _, r in before.iterrows()])
    after = after.assign(_key=[json.dumps(config_of(r), sort_keys=True) for _, r in after.iterrows()])
    merged = before[["_key", *metrics]].merge(after[["_key", *metrics]], on="_key",
                                              suffixes=(f"@{from_name}", f"@{to_name}"))
    return merged.rename(columns={"_key": "config"})
