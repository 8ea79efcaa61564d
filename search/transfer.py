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

from analysis import format as fmt
from analysis.load import config_of
from search.options import SearchError, SearchOptions
from search.plans.select import side_by_side, top_configs
from search.run import run_search
from spaces import load_space
from trainables import get_family


def best_configs(folder: Path, top: int) -> tuple[pd.DataFrame, dict]:
    """The ``top`` distinct configs of an experiment or plan folder, best first, and its manifest."""
    from analysis.load import load_experiment

    if (folder / fmt.PLAN_STATE).exists():
        state = json.loads((folder / fmt.PLAN_STATE).read_text())
        trained = [name for name, stage in state["stages"].items() if stage.get("experiments")]
        if not trained:
            raise SearchError(f"plan {folder} has no trained stage yet; run it first")
        folder = folder / state["stages"][trained[-1]]["experiments"][-1]
    manifest = fmt.read_manifest(folder)
    if not manifest:
        raise SearchError(f"{folder} is not a valley experiment or plan (no {fmt.MANIFEST} or {fmt.PLAN_STATE})")
    trials, _ = load_experiment(folder)
    _, ids = top_configs(trials, manifest["metric"], manifest["mode"], top)
    if not ids:
        return pd.DataFrame(), manifest
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
    side = side_by_side(best, trials, manifest["dataset"], opts.dataset,
                        get_family(manifest["family"]).task.test_metric)
    side.to_csv(folder / "transfer.csv", index=False)
    print(side.to_string(index=False))
    return folder
