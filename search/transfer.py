"""Re-run the best configurations of one experiment, unchanged, on another data set.

Models build their input and output layers from the data (28x28x1 -> 32x32x3,
any class count), so nothing else changes; both results are recorded side by side.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis import format as fmt
from search.options import SearchError, SearchOptions
from search.plans.select import confirmed_order, seeds_of, side_by_side, top_configs
from search.run import run_search
from spaces import load_space
from trainables import get_family


def best_configs(folder: Path, top: int) -> tuple[list[dict[str, Any]], pd.DataFrame, dict, str]:
    """The ``top`` distinct configs of an experiment or plan folder, best first; the rows of their seeds
    there (``seeds_of``); its manifest; and where they were chosen.

    A plan's configs come from its last completed confirm stage, in the order it ranked them (the mean
    over seeds, fewer failed seeds first), else from its last trained stage."""
    from analysis.load import load_experiment

    table, where = None, folder.name
    if (folder / fmt.PLAN_STATE).exists():
        state = fmt.read_state(folder / fmt.PLAN_STATE)
        trained = [name for name, stage in state["stages"].items() if stage.get("experiments")]
        if not trained:
            raise SearchError(f"plan {folder} has no trained stage yet; run it first")
        confirmed = [name for name in trained if state["stages"][name].get("kind") == "confirm"
                     and state["stages"][name].get("status") == "completed"
                     and (folder / f"stage-{name}.csv").exists()]
        stage = (confirmed or trained)[-1]
        table = folder / f"stage-{stage}.csv" if confirmed else None
        done = state["stages"][stage].get("status") == "completed"
        where = f"stage {stage} of plan {folder.name}" + ("" if done else " (not completed)")
        folder = folder / state["stages"][stage]["experiments"][-1]
    manifest = fmt.read_manifest(folder)
    if not manifest:
        raise SearchError(f"{folder} is not a valley experiment or plan (no {fmt.MANIFEST} or {fmt.PLAN_STATE})")
    trials, _ = load_experiment(folder)
    if table is not None:
        configs, ids = confirmed_order(table, trials, top)
    else:
        configs, ids = top_configs(trials, manifest["metric"], manifest["mode"], top)
    return configs, seeds_of(trials, ids), manifest, where


def transfer(source: Path, top: int, opts: SearchOptions) -> Path:
    source = source.expanduser().resolve()
    if top < 1:
        raise SearchError(f"--top must be at least 1, got {top}")
    if not opts.dataset:
        raise SearchError("transfer needs --dataset, the data set to re-run the configurations on")
    grid, before, manifest, where = best_configs(source, top)
    if not grid:
        raise SearchError(f"{source} has no completed trial to transfer")
    if not opts.quiet:
        fewer = f" (--top {top}: only {len(grid)} finished)" if len(grid) < top else ""
        print(f"valley: transferring the top {len(grid)} configurations of {where}{fewer}", flush=True)
    doc = {"description": f"top {len(grid)} of {where}, verbatim, on {opts.dataset}",
           "family": manifest["family"], "metric": manifest["metric"], "mode": manifest["mode"],
           "dataset": opts.dataset, "max_epochs": manifest["max_epochs"], "grid": grid}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"transfer-{source.name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        name = f"{source.name}-to-{opts.dataset}" if opts.name is None else opts.name
        folder = run_search(load_space(path), dataclasses.replace(opts, name=name, samples=1,
                                                                   search="random", scheduler="fifo"))
    from analysis.load import load_experiment

    trials, _ = load_experiment(folder)
    task = get_family(manifest["family"]).task
    side = side_by_side(before, trials, manifest["dataset"], opts.dataset, task.test_metric, task.val_metric)
    side.to_csv(folder / "transfer.csv", index=False)
    print(side.to_string(index=False))
    return folder
