"""Re-run the best configurations of one experiment, unchanged, on another data set.

Models build their input and output layers from the data (28x28x1 -> 32x32x3,
any class count), so nothing else changes; both results are recorded side by side.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from analysis.load import config_of
from search.plan import top_configs
from search.run import SearchError, SearchOptions, run_search
from spaces import load_space


def best_configs(folder: Path, top: int) -> tuple[pd.DataFrame, dict]:
    """The ``top`` distinct configs of an experiment or plan folder, best first, and its manifest."""
    from analysis.load import load_experiment, read_manifest

    if (folder / "plan.json").exists():
        state = json.loads((folder / "plan.json").read_text())
        trained = [name for name, stage in state["stages"].items() if stage.get("experiments")]
        if not trained:
            raise SearchError(f"plan {folder} has no trained stage yet; run it first")
        folder = folder / state["stages"][trained[-1]]["experiments"][-1]
    manifest = read_manifest(folder)
    if not manifest:
        raise SearchError(f"{folder} is not a valley experiment or plan (no valley.json or plan.json)")
    trials, _ = load_experiment(folder)
    _, ids = top_configs(trials, manifest["metric"], manifest["mode"], top)
    best = trials.set_index("trial_id").loc[ids].reset_index()
    return best, manifest


def transfer(source: Path, top: int, opts: SearchOptions) -> Path:
    source = source.expanduser().resolve()
    if top < 1:
        raise SearchError(f"--top must be at least 1, got {top}")
    if not opts.dataset:
        raise SearchError("transfer needs --dataset, the data set to re-run the configurations on")
    best, manifest = best_configs(source, top)
    if best.empty:
        raise SearchError(f"{source} has no completed trial to transfer")
    grid = [config_of(row) for _, row in best.iterrows()]
    doc = {"description": f"top {len(grid)} of {source.name}, verbatim, on {opts.dataset}",
           "family": manifest["family"], "metric": manifest["metric"], "mode": manifest["mode"],
           "dataset": opts.dataset, "max_epochs": manifest["max_epochs"], "grid": grid}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"transfer-{source.name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        name = opts.name or f"{source.name}-to-{opts.dataset}"
        folder = run_search(load_space(path), dataclasses.replace(opts, name=name, samples=1,
                                                                   search="random", scheduler="fifo"))
    from analysis.load import load_experiment

    trials, _ = load_experiment(folder)
    side = side_by_side(best, trials, manifest["dataset"], opts.dataset)
    side.to_csv(folder / "transfer.csv", index=False)
    print(side.to_string(index=False))
    return folder


def side_by_side(before: pd.DataFrame, after: pd.DataFrame, from_name: str, to_name: str) -> pd.DataFrame:
    """One row per configuration: its metrics on the source and on the target data set."""
    metrics = [c for c in ("n_params", "best_val_loss", "test_acc", "test_csd", "test_loss") if c in before]
    before = before.assign(_key=[json.dumps(config_of(r), sort_keys=True) for _, r in before.iterrows()])
    after = after.assign(_key=[json.dumps(config_of(r), sort_keys=True) for _, r in after.iterrows()])
    merged = before[["_key", *metrics]].merge(after[["_key", *metrics]], on="_key",
                                              suffixes=(f"@{from_name}", f"@{to_name}"))
    return merged.rename(columns={"_key": "config"})
