"""Experiment folders into pandas: one row per trial, one row per trial-epoch.

Reads only what is on disk (Tune's ``params.json``, ``result.json`` and
``error.txt`` per trial, valley's ``valley.json``), so it works on a search
still running, one that crashed, or a plain Ray Tune experiment.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

# Ray's bookkeeping keys that say nothing about the model.
RAY_KEYS = {"timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "trial_id", "date", "pid",
            "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
            "time_this_iter_s"}


def read_manifest(folder: Path) -> dict[str, Any]:
    """``valley.json``, or an empty dict for a plain Ray Tune experiment."""
    path = Path(folder) / "valley.json"
    return json.loads(path.read_text()) if path.exists() else {}


def trial_dirs(folder: Path) -> list[Path]:
    return sorted(p.parent for p in Path(folder).glob("*/params.json"))


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``result.json``; a half-written last line (a killed driver) is skipped."""
    path = trial_dir / "result.json"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    # a trial resumed from a checkpoint repeats the epochs after it: keep the last of each
    by_iteration = {row.get("training_iteration", i): row for i, row in enumerate(rows)}
    return [by_iteration[k] for k in sorted(by_iteration)]


def flat_config(config: dict[str, Any], grid: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's config with its grid row merged in and lists written as text."""
    config = dict(config)
    if "variant" in config:
        variant = config.pop("variant")
        if isinstance(variant, int) and variant < len(grid):
            config = {**config, **grid[variant]}
        elif isinstance(variant, dict):
            config = {**config, **variant}
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in config.items()}


def load_experiment(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) frames of one experiment folder."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    grid = manifest.get("grid", [])
    finished = manifest.get("status") == "completed"
    trials, epochs = [], []
    for trial_dir in trial_dirs(folder):
        config = json.loads((trial_dir / "params.json").read_text())
        rows = read_results(trial_dir)
        trial_id = trial_dir.name
        for row in rows:
            epochs.append({"trial_id": trial_id, **{k: v for k, v in row.items() if k not in RAY_KEYS}})
        trials.append(_trial_row(trial_id, trial_dir, flat_config(config, grid), rows, finished))
    trials_frame = pd.DataFrame(trials)
    if manifest and not trials_frame.empty:
        trials_frame.insert(1, "experiment", folder.name)
    return trials_frame, pd.DataFrame(epochs)


def _trial_row(trial_id: str, trial_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]],
               finished: bool) -> dict[str, Any]:
    error_file = trial_dir / "error.txt"
    error = _last_line(error_file) if error_file.exists() else ""
    last = rows[-1] if rows else {}
    max_epochs = config.get("max_epochs")
    completed = bool(last) and (last.get("epoch") == max_epochs or bool(last.get("early_stopped")))
    if completed:
        status, error = "completed", ""
    elif error:
        status = "diverged" if "diverged" in error else "failed"
    elif not rows:
        status = "pending" if not finished else "failed"
    else:
        status = "stopped" if finished else "unfinished"
    best = next((r for r in rows if r.get("epoch") == last.get("best_epoch")), last)
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": status,
        "stopped_by_scheduler": status == "stopped",
        "error": error,
        "n_params": last.get("n_params"),
        "epochs": last.get("epoch", 0),
        "best_epoch": last.get("best_epoch"),
        "best_val_loss": last.get("best_val_loss"),
    }
    row.update({f"best_{k}": v for k, v in best.items() if k.startswith("val_") and k != "val_loss"})
    row.update({k: v for k, v in last.items() if k.startswith("test_")})
    row.update({"final_val_loss": last.get("val_loss"), "wall_s": last.get("time_total_s"),
                "device": last.get("device")})
    row.update({f"config/{k}": v for k, v in config.items()})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "error (no message)"


def metric_column(metric: str) -> str:
    """The trials-table column that holds a space's metric (``val_loss`` -> ``best_val_loss``)."""
    return f"best_{metric}" if metric.startswith("val_") else metric


def write_tables(folder: str | Path) -> pd.DataFrame:
    """Write trials.csv, trials.parquet and epochs.parquet; returns the trials frame."""
    folder = Path(folder)
    trials, epochs = load_experiment(folder)
    trials.to_csv(folder / "trials.csv", index=False)
    trials.to_parquet(folder / "trials.parquet", index=False)
    epochs.to_parquet(folder / "epochs.parquet", index=False)
    return trials


def top_table(trials: pd.DataFrame, folder: str | Path, n: int = 5) -> str:
    """The best ``n`` trials as text: what varied, size, epochs and metrics."""
    if trials.empty:
        return "no trial reported a result"
    manifest = read_manifest(Path(folder))
    metric = metric_column(manifest.get("metric", "val_loss"))
    ranked = trials.dropna(subset=[metric]).sort_values(metric, ascending=manifest.get("mode", "min") == "min")
    ranked = ranked[~ranked["status"].isin(["failed", "diverged"])]
    varied = [c for c in trials.columns if c.startswith("config/") and trials[c].astype(str).nunique(dropna=False) > 1]
    shown = ["trial_id", *varied, "n_params", "epochs", "status", metric,
             *[c for c in ("best_val_acc", "best_val_csd", "test_acc", "test_csd") if c in trials and c != metric]]
    table = ranked[shown].head(n).rename(columns=lambda c: c.removeprefix("config/"))
    return f"top {min(n, len(ranked))} of {len(trials)} by {metric}:\n" + table.to_string(index=False, na_rep="-")
