"""Experiment folders into pandas: one row per trial, one row per trial-epoch.

Reads only what is on disk (Tune's ``params.json``, ``result.json`` and
``error.txt`` per trial, valley's ``valley.json``), so it works on a search
still running, one that crashed, or a plain Ray Tune experiment. ``load``
takes any results folder (an experiment, a plain Ray Tune experiment, or a
plan: a folder of experiments) and says what it found missing or half-written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.format import (ACTIVE, DONE, FAILED, INTERRUPTED, MANIFEST, PLAN_STATE, SPACE_COPY, Task,
                             UnreadableState, asha_stops, driver_gone, ended_itself, guess_mode, metric_column,
                             read_manifest, read_state, task_of, row_at_epoch, trained, trial_status)


class ResultsError(ValueError):
    """A folder that holds no results to load; the message says what to pass instead."""


# Ray's bookkeeping keys that say nothing about the model.
RAY_KEYS = {"node_id", "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "trial_id", "date", "pid",
            "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
            "time_this_iter_s"}


def trial_dirs(folder: Path) -> list[Path]:
    return sorted(p.parent for p in Path(folder).glob("*/params.json"))


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``result.json``; a half-written last line (a killed driver) is skipped."""
    return _read_results_checked(trial_dir)[0]


def _read_results_checked(trial_dir: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(rows, 1-based numbers of the lines that were not valid JSON objects)."""
    path = trial_dir / "result.json"
    rows, bad = [], []
    if path.exists():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad.append(number)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad.append(number)
    # a trial resumed from a checkpoint repeats the epochs after it: keep the last of each
    by_iteration = {row.get("training_iteration", i): row for i, row in enumerate(rows)}
    return [by_iteration[k] for k in sorted(by_iteration)], bad


# Config keys that say how a trial ran, not what it is: two trials differing only in these are one config.
RUN_KEYS = {"seed", "split_seed", "max_epochs", "family", "dataset", "device", "variant"}


def config_of(row: pd.Series) -> dict[str, Any]:
    """A trial's config from its trials-table row, without keys that only say how it ran."""
    config = {}
    for column, value in row.items():
        if not column.startswith("config/"):
            continue
        key = column.removeprefix("config/")
        if key in RUN_KEYS or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, str) and value.startswith("["):
            value = json.loads(value)
        if isinstance(value, (np.integer, np.floating)):
            value = value.item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # pandas turns an int column with gaps into floats
        config[key] = value
    return config


def flat_config(config: dict[str, Any], grid: list[dict[str, Any]]) -> dict[str, Any]:
    """A trial's config with its grid row merged in and lists written as text."""
    config = dict(config)
    if "variant" in config:
        variant = config.pop("variant")
        if isinstance(variant, int) and variant < len(grid):
            config = {**config, **grid[variant]}
        elif isinstance(variant, dict):
            config = {**config, **variant}
        else:  # a row no grid resolves: its index keeps the rows apart (dropped, they all read as one config)
            config["variant"] = variant
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in config.items()}


def _grid_as_written(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """The grid rows of a space's copy, for trials whose ``variant`` index valley.json no longer resolves."""
    try:
        rows = (yaml.safe_load(path.read_text()) or {}).get("grid") or []
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return []
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        return []
    if rows:
        warnings.append(f"grid rows read from {path.name}, as written: a --set that changed them is not known "
                        f"without {MANIFEST}")
    return rows


def load_experiment(folder: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, epochs) frames of one experiment folder."""
    trials, epochs, _ = _load_folder(Path(folder))
    return trials, epochs


def _load_folder(folder: Path, manifest: dict[str, Any] | None = None,
                 ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(trials, epochs, warnings): what is on disk, and what is missing or half-written."""
    manifest = read_manifest(folder) if manifest is None else manifest
    grid = manifest.get("grid", [])
    warnings: list[str] = []
    if not manifest and (folder / SPACE_COPY).is_file():  # valley.json lost: every row read as one config
        grid = _grid_as_written(folder / SPACE_COPY, warnings)
    finished = manifest.get("status") == "completed"
    ended = TuneStatuses(folder)
    cut = asha_stops(folder)  # ASHA's stops are final before the search is: they are no unfinished trials
    trials, epochs, no_results = [], [], []
    for trial_dir in trial_dirs(folder):
        trial_id = trial_dir.name
        try:
            config = json.loads((trial_dir / "params.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            warnings.append(f"trial {trial_id}: params.json is unreadable ({err}); trial skipped")
            continue
        rows, bad = _read_results_checked(trial_dir)
        if bad:
            where = "a half-written last line" if len(bad) == 1 else f"{len(bad)} unreadable lines"
            warnings.append(f"trial {trial_id}: result.json has {where} (line {', '.join(map(str, bad[:5]))}); "
                            f"read the {len(rows)} complete epochs")
        for row in rows:
            epochs.append({"trial_id": trial_id, **{k: v for k, v in row.items() if k not in RAY_KEYS}})
        stopped = bool(rows) and rows[-1].get("epoch", 0) >= cut.get(trial_id, math.inf)
        trials.append(_trial_row(trial_id, trial_dir, flat_config(config, grid), rows, finished or stopped, ended))
        if not rows and not trials[-1]["error"]:
            no_results.append(trial_id)
    trials_frame = _numeric(pd.DataFrame(trials))
    if manifest and not trials_frame.empty:
        trials_frame.insert(1, "experiment", folder.name)
    if no_results:
        shown = ", ".join(no_results[:10]) + (f" and {len(no_results) - 10} more" if len(no_results) > 10 else "")
        warnings.append(f"{len(no_results)} trial(s) stopped before their first epoch (a budget spent): {shown}"
                        if finished else f"{len(no_results)} trial(s) have no results yet: {shown}")
    return trials_frame, _numeric(pd.DataFrame(epochs)), warnings


def _numeric(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns of numbers and None (a key some rows lack) as floats, not objects."""
    for column in frame.columns[frame.dtypes == object]:
        values = frame[column].dropna()
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            frame[column] = pd.to_numeric(frame[column])
    return frame


def _trial_row(trial_id: str, trial_dir: Path, config: dict[str, Any], rows: list[dict[str, Any]],
               finished: bool, ended: TuneStatuses | None = None) -> dict[str, Any]:
    error_file = trial_dir / "error.txt"
    last = rows[-1] if rows else {}
    failed = error_file.exists()
    text = error_file.read_text(errors="replace") if failed else ""
    tune_status = ended.get(trial_id) if failed and ended is not None else None
    recovered = tune_status == "TERMINATED" or (tune_status != "ERROR" and _recovered(text, last))
    error = _last_line(text) if failed and not recovered else ""
    max_epochs = config.get("max_epochs")
    status = trial_status(last, error, bool(rows), max_epochs, finished)
    if status == "completed":
        error = ""
    # plain Ray Tune reports no best epoch: its best row is found by its metric (_apply_ray_state)
    best = row_at_epoch(rows, last.get("best_epoch")) or last
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "status": status,
        "stopped_by_scheduler": status == "stopped" or (status == "stalled" and not ended_itself(last, max_epochs)),
        "failure": status if status in FAILED else "",
        "error": error,
        "n_params": last.get("n_params"),
        "epochs": last.get("epoch", last.get("training_iteration", 0)),
        "best_epoch": last.get("best_epoch"),
        "best_val_loss": last.get("best_val_loss"),
    }
    row.update({f"best_{k}": v for k, v in best.items() if k.startswith("val_") and k != "val_loss"})
    row.update({k: v for k, v in last.items() if k.startswith("test_")})
    row.update({"final_val_loss": last.get("val_loss"), "chance_epochs": last.get("chance_epochs"),
                "wall_s": last.get("time_total_s"), "device": last.get("device"),
                "has_weights": any(trial_dir.glob("checkpoint_*/state.pt"))})
    row.update({f"config/{k}": v for k, v in config.items()})
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


FAILED_AT = re.compile(r"^Failure # \d+ \(occurred at (\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\)", re.M)


def newest_snapshot_file(folder: Path) -> Path | None:
    """Tune's newest experiment snapshot (newest by name), the one ``Tuner.restore`` reads; None if none."""
    snapshots = sorted(Path(folder).glob("experiment_state-*.json"))
    return snapshots[-1] if snapshots else None


def tune_snapshot(folder: Path) -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
    """(state, run metadata) of every trial in Tune's newest experiment snapshot, the one
    ``Tuner.restore`` reads; None if there is none or it cannot be read (one being written)."""
    snapshot = newest_snapshot_file(folder)
    if snapshot is None:
        return None
    try:
        entries = [tuple(json.loads(part) if isinstance(part, str) else part for part in entry)
                   for entry in json.loads(snapshot.read_text())["trial_data"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(len(entry) == 2 and all(isinstance(part, dict) for part in entry) for entry in entries):
        return None
    return entries  # type: ignore[return-value]


class TuneStatuses:
    """Each trial's status in Tune's newest experiment snapshot, read only when first asked for (a
    snapshot of thousands of trials is tens of MB, and only a trial with an ``error.txt`` asks)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.statuses = folder, None

    def get(self, trial_id: str) -> str | None:
        if self.statuses is None:  # no readable snapshot: the timestamps decide
            self.statuses = {state.get("trial_id"): state.get("status")
                             for state, _ in tune_snapshot(self.folder) or []}
        return self.statuses.get(trial_id)


def _recovered(error: str, last: dict[str, Any]) -> bool:
    """Whether the trial reported after the last failure in ``error.txt`` (Tune retried it from a
    checkpoint). Both times are whole seconds, so a failure and a report in the same second say
    nothing: Tune's own status (``TuneStatuses``) decides first wherever its snapshot has one."""
    times = FAILED_AT.findall(error)
    if not times or "timestamp" not in last:
        return False
    failed = time.mktime(time.strptime(times[-1], "%Y-%m-%d_%H-%M-%S"))  # Tune writes local time
    return last["timestamp"] > failed


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "error (no message)"


def write_tables(folder: str | Path) -> pd.DataFrame:
    """Write trials.csv, trials.parquet and epochs.parquet; returns the trials frame."""
    folder = Path(folder)
    trials, epochs = load_experiment(folder)
    trials = with_seed_spread(trials, task_of(read_manifest(folder), trials.columns))
    write_trial_tables(folder, trials)
    epochs.to_parquet(folder / "epochs.parquet", index=False)
    return trials


def write_trial_tables(folder: str | Path, trials: pd.DataFrame) -> None:
    """trials.csv and trials.parquet: one row per trial."""
    trials.to_csv(Path(folder) / "trials.csv", index=False)
    trials.to_parquet(Path(folder) / "trials.parquet", index=False)


def with_seed_spread(trials: pd.DataFrame, task: Task) -> pd.DataFrame:
    """Add, per trial, the mean and spread of the test metric over the seeds of its config that trained
    all their epochs (a seed ASHA or a budget cut short, or a failed one, is no repeat of the others)."""
    from analysis.valley import config_key, run_key

    column = task.test_metric
    if trials.empty or column is None or column not in trials:
        return trials
    usable = trained(trials)
    usable &= ~run_key(trials).where(usable).duplicated()  # one seed twice read as 2 seeds with a spread of 0
    groups = trials[column].where(usable).groupby(config_key(trials))
    return trials.assign(**{"seeds": groups.transform("count"), f"seeds_mean_{column}": groups.transform("mean"),
                            f"seeds_std_{column}": groups.transform("std")})


def seeds_table(trials: pd.DataFrame, task: Task) -> str:
    """Mean and spread of the test metric per config over its seeds; empty when nothing repeats."""
    column = task.test_metric
    if column is None or column not in trials or "seeds" not in trials or not (trials["seeds"] > 1).any():
        return ""
    varied = [c for c in trials.columns if c.startswith("config/") and not c.endswith("seed")
              and trials[c].astype(str).nunique(dropna=False) > 1]
    table = trials.drop_duplicates(varied or ["seeds"])[[*varied, "seeds", f"seeds_mean_{column}",
                                                          f"seeds_std_{column}"]]
    table = table.sort_values(f"seeds_mean_{column}", ascending=task.mode == "min")
    return (f"{column} over seeds, per configuration:\n"
            + table.rename(columns=lambda c: c.removeprefix("config/")).to_string(index=False, na_rep="-"))


def whole_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns of whole numbers with gaps as integers (pandas makes them floats: ``layers`` read 5.0), for
    printing: a gap as "-", as ``to_string(na_rep="-")`` prints the others' (an Int64 column printed <NA>)."""
    columns = {}
    for column in frame.columns[frame.dtypes == float]:
        values = frame[column].dropna()
        if len(values) and (values == values.round()).all() and values.abs().max() < 2**53:
            columns[column] = frame[column].map(lambda v: "-" if pd.isna(v) else str(int(v)))
    return frame.assign(**columns)


def ranking(trials: pd.DataFrame, manifest: dict[str, Any]) -> tuple[str, pd.DataFrame]:
    """(the column ranked by, the trials that have it, best first): the search's metric at each trial's best
    checkpoint; failed and diverged trials are left out, as their metric says nothing of the model."""
    metric = metric_column(manifest.get("metric", "val_loss"))
    if metric not in trials or "status" not in trials:  # no trial reported an epoch: none has the column
        return metric, trials.iloc[:0]
    ranked = trials.dropna(subset=[metric]).sort_values(metric, ascending=manifest.get("mode", "min") == "min",
                                                        kind="stable")
    return metric, ranked[~ranked["status"].isin(FAILED)]


def top_table(trials: pd.DataFrame, folder: str | Path, n: int = 5) -> str:
    """The best ``n`` trials as text: what varied, size, epochs and metrics."""
    if trials.empty:
        return "no trial reported a result"
    manifest = read_manifest(Path(folder))
    task = task_of(manifest, trials.columns)
    metric, ranked = ranking(trials, manifest)
    if ranked.empty:
        failed = trials[trials["status"].isin(FAILED)] if "status" in trials else trials.iloc[:0]
        if failed.empty:  # an interrupted search none of whose trials reached an epoch: it read as an error
            return f"no trial of {len(trials)} reported a result (none failed)"
        first = f"; the first: {failed['error'].iloc[0]}" if "error" in failed else ""
        return (f"no trial of {len(trials)} has a {metric}: {len(failed)} failed or diverged{first}; see the error "
                f"column of {Path(folder) / 'trials.csv'}")
    varied = [c for c in trials.columns if c.startswith("config/") and trials[c].astype(str).nunique(dropna=False) > 1]
    headline = [f"best_val_{task.headline}", task.test_metric]
    shown = ["trial_id", *varied, "n_params", "epochs", "status", metric,
             *[c for c in headline if c in trials and c != metric]]
    table = whole_numbers(ranked[shown].head(n)).rename(columns=lambda c: c.removeprefix("config/"))
    text = f"top {min(n, len(ranked))} of {len(trials)} by {metric}:\n" + table.to_string(index=False, na_rep="-")
    spread = seeds_table(trials, task)
    return f"{text}\n{spread}" if spread else text


# --- any results folder: a valley experiment, a plain Ray Tune experiment, or a plan of stages ---

STATE_STATUS = {"TERMINATED": "completed", "ERROR": "failed", "RUNNING": "running", "PENDING": "pending",
                "PAUSED": "paused"}


@dataclasses.dataclass
class Experiment:
    """A loaded results folder; ``trials`` and ``epochs`` are the frames of ``load_experiment``.

    A plan's frames hold every experiment's rows, with ``stage`` (the stage in plan.json that ran
    the experiment, else the experiment folder's name) and ``experiment`` (the folder's name) columns.
    ``warnings`` says what was missing or half-written on disk.
    """

    path: Path
    kind: str  # "valley" (has valley.json) | "ray" (plain Ray Tune) | "plan" (folder of experiments)
    manifest: dict[str, Any]  # valley.json, or plan.json for a plan ({} when absent)
    trials: pd.DataFrame
    epochs: pd.DataFrame
    warnings: list[str] = dataclasses.field(default_factory=list)
    stages: dict[str, Experiment] = dataclasses.field(default_factory=dict)  # plan: experiment folder -> loaded
    ray_metric: str | None = None  # plain Ray: the metric Tune was told to optimise

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metric(self) -> str:
        """The trials-frame column ranked on (``best_val_loss`` by default)."""
        if self.kind == "ray":
            return f"best_{self.ray_metric}" if self.ray_metric else "best_val_loss"
        metric = self.manifest.get("metric") or next(
            (s.manifest["metric"] for s in self.stages.values() if s.manifest.get("metric")), "val_loss")
        return metric_column(metric)

    @property
    def mode(self) -> str:
        mode = self.manifest.get("mode") or next(
            (s.manifest["mode"] for s in self.stages.values() if s.manifest.get("mode")), None)
        return mode or guess_mode(self.metric)

    @property
    def task(self) -> Task:
        """What the family trains for (headline metric, its mode, the test column), from the manifest."""
        manifests = [self.manifest, *(s.manifest for s in self.stages.values())]
        recorded = next((m for m in manifests if isinstance(m.get("task"), dict)), {})
        return task_of(recorded, self.trials.columns)

    def trial_dir(self, trial_id: str) -> Path | None:
        """The folder of one trial (in a plan, inside its experiment's folder)."""
        for experiment in [self, *self.stages.values()]:
            if (experiment.path / trial_id / "params.json").is_file():
                return experiment.path / trial_id
        return None

    def predictions(self, trial_id: str) -> dict[str, np.ndarray] | None:
        """The test predictions saved with the trial's newest checkpoint (``predictions.npz``), if any.

        Keys: ``pred``, ``true``, ``error`` per test image; ``worst_index`` and ``worst_images``.
        """
        folder = self.trial_dir(trial_id)
        saved = sorted(folder.glob("checkpoint_*/predictions.npz")) if folder else []
        if not saved:
            return None
        with np.load(saved[-1], allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}

    @property
    def status(self) -> str:
        """running | completed | interrupted | unknown (a plain Ray folder without its state file)."""
        if self.manifest.get("status"):
            return str(self.manifest["status"])
        if self.kind == "plan":
            statuses = {stage.status for stage in self.stages.values()}
            if not statuses:
                return "unknown"
            return next((s for s in ("running", "interrupted", "unknown") if s in statuses), "completed")
        if self.kind == "ray" and "status" in self.trials:
            if self.trials["status"].isin(["running", "pending", "paused"]).any():
                return "running"
            return "completed" if self.trials["status"].isin(DONE + FAILED).all() else "unknown"
        return "unknown"


def is_experiment(folder: Path) -> bool:
    """valley.json, Ray Tune's experiment state or trial folders, and no plan.json."""
    folder = Path(folder)
    return not (folder / PLAN_STATE).is_file() and _holds_trials(folder)


def _holds_trials(folder: Path) -> bool:
    return ((folder / MANIFEST).is_file() or next(folder.glob("experiment_state-*.json"), None) is not None
            or next(folder.glob("*/params.json"), None) is not None)


def is_plan(folder: Path) -> bool:
    """A folder with plan.json (a plan may write ``<stage>.json``, even valley.json, beside it), or
    any folder of experiment folders."""
    folder = Path(folder)
    if (folder / PLAN_STATE).is_file():
        return True
    return folder.is_dir() and not _holds_trials(folder) and any(is_experiment(p) for p in _subfolders(folder))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def load(folder: str | Path) -> Experiment:
    """Load an experiment, a plain Ray Tune experiment or a plan folder; never fails on half-written files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultsError(f"results folder must be an existing folder, got {str(folder)!r}; "
                           "pass an experiment folder such as results/<name>")
    if is_plan(folder):
        return _load_plan(folder)
    if not is_experiment(folder):
        raise ResultsError(f"{folder} holds no experiment: expected valley.json, Ray Tune's experiment_state-*.json "
                         "or trial folders with params.json, or a plan folder of such experiments")
    manifest, warnings = _safe_manifest(folder / MANIFEST)
    # a plan's stage goes on with its plan: `valley resume STAGE` finished the stage and left the plan running
    resume = f"valley plan {folder.parent}" if is_plan(folder.parent) else f"valley resume {folder}"
    manifest = _with_driver_checked(manifest, warnings, resume)
    trials, epochs, more = _load_folder(folder, manifest)
    warnings += more
    if manifest:
        return Experiment(folder, "valley", manifest, trials, epochs, warnings)
    metric = _apply_ray_state(folder, trials, epochs, warnings)
    if not trials.empty and "experiment" not in trials:
        trials.insert(1, "experiment", folder.name)
    return Experiment(folder, "ray", {}, trials, epochs, warnings, ray_metric=metric)


def _safe_manifest(path: Path) -> tuple[dict[str, Any], list[str]]:
    if not path.is_file():
        return {}, []
    try:
        return read_state(path), []
    except OSError as err:
        problem = f"is unreadable ({err})"
    except UnreadableState as err:
        problem = err.problem
    return {}, [f"{path.name} {problem}; loaded the trials without it"]


NO_METRIC = "Ray Tune recorded no metric (TuneConfig(metric=...))"


def _apply_ray_state(folder: Path, trials: pd.DataFrame, epochs: pd.DataFrame, warnings: list[str]) -> str | None:
    """Plain Ray Tune: trial statuses from the newest experiment_state file, and the metric's best value."""
    snapshot = newest_snapshot_file(folder)
    metric, status_of, id_of, read = None, {}, {}, False
    if snapshot is not None:
        try:
            state = json.loads(snapshot.read_text())
            metric, read = (state.get("runner_data") or {}).get("_metric"), True
            for trial_json, *_ in state.get("trial_data", []):
                trial = json.loads(trial_json)
                status_of[trial.get("relative_logdir")] = STATE_STATUS.get(trial.get("status"), "unfinished")
                id_of[trial.get("relative_logdir")] = trial.get("trial_id")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError, AttributeError) as err:
            warnings.append(f"{snapshot.name} is unreadable ({err}); trial statuses are guesses")
    else:
        warnings.append("no experiment_state-*.json: Ray Tune's trial statuses are unknown")
    if trials.empty:
        return metric
    trials["status"] = [s if s in FAILED else status_of.get(t, s) for t, s in zip(trials["trial_id"], trials["status"])]
    trials["stopped_by_scheduler"] = False
    del trials["has_weights"]  # valley's state.pt: a plain Tune trainable saves its own files
    short = {d: i for d, i in id_of.items() if d and i}  # Tune's folder name -> its short trial id
    if short and len(set(short.values())) == len(short):
        trials["trial_id"] = trials["trial_id"].map(lambda t: short.get(t, t))
        if not epochs.empty:
            epochs["trial_id"] = epochs["trial_id"].map(lambda t: short.get(t, t))
    if read and metric is None and not epochs.empty:  # no TuneConfig(metric=...): val_loss if reported, else none
        reported = [str(c) for c in epochs.columns if pd.api.types.is_numeric_dtype(epochs[c])
                    and c not in ("epoch", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
                                  "pid", "iterations_since_restore", "time_since_restore")]
        if "val_loss" in epochs:
            metric = "val_loss"
            warnings.append(f"{NO_METRIC}; ranked on val_loss, which the trials report")
        else:
            warnings.append(f"{NO_METRIC}, and the trials report no val_loss: no trial is ranked (they report "
                            f"{', '.join(reported[:8]) or 'nothing numeric'})")
            return None
    if metric is None or epochs.empty or metric not in epochs:
        return metric
    mode = guess_mode(metric)
    warnings.append(f"Ray Tune records no mode: {metric} is taken as better {'lower' if mode == 'min' else 'higher'} "
                    "by its name")
    values = pd.to_numeric(epochs[metric], errors="coerce").dropna()
    by_trial = values.groupby(epochs.loc[values.index, "trial_id"])
    at_best = epochs.loc[by_trial.idxmin() if mode == "min" else by_trial.idxmax()].set_index("trial_id")
    for column in dict.fromkeys([metric, *(c for c in epochs.columns if str(c).startswith("val_"))]):
        trials[f"best_{column}"] = trials["trial_id"].map(at_best[column])  # every value at the best iteration
    trials[f"final_{metric}"] = trials["trial_id"].map(by_trial.last())
    return metric


def _with_driver_checked(state: dict[str, Any], warnings: list[str], resume: str) -> dict[str, Any]:
    """A valley.json or plan.json that reads 'running' with its driver gone reads 'interrupted' here (the
    file is left as it is), with a warning that says so and how to go on."""
    gone = driver_gone(state)
    if not gone:
        return state
    warnings.append(f"it reads 'running' but {gone}; `{resume}` continues it")
    return {**state, "status": INTERRUPTED}


def _load_plan(folder: Path) -> Experiment:
    """Every experiment folder of a plan; ``stage`` is its stage in plan.json, else the folder's name."""
    manifest, warnings = _safe_manifest(folder / PLAN_STATE)
    manifest = _with_driver_checked(manifest, warnings, f"valley plan {folder}")
    declared = manifest.get("stages") if isinstance(manifest.get("stages"), dict) else {}
    stage_of = {experiment: name for name, state in declared.items() if isinstance(state, dict)
                for experiment in state.get("experiments", [])}
    order = {name: i for i, name in enumerate(declared)}
    stages: dict[str, Experiment] = {}
    trial_frames, epoch_frames = [], []
    folders = [p for p in _subfolders(folder) if is_experiment(p)]
    left_out = [p.name for p in _subfolders(folder) if p not in folders and is_plan(p)]
    if left_out:  # a folder of experiments holds plans too: they were left out without a word
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        warnings.append(f"{len(left_out)} plan folder(s) here are not in these tables ({shown}): "
                        "report or load each on its own")
    folders.sort(key=lambda p: (order.get(stage_of.get(p.name, p.name), len(order)), _stage_started(p), p.name))
    for sub in folders:
        experiment = load(sub)
        stages[sub.name] = experiment
        warnings += [f"{sub.name}: {w}" for w in experiment.warnings]
        for frame, frames in ((experiment.trials, trial_frames), (experiment.epochs, epoch_frames)):
            if not frame.empty:
                frame = frame.copy()
                frame.insert(1, "stage", stage_of.get(sub.name, sub.name))
                if "experiment" not in frame:
                    frame.insert(2, "experiment", sub.name)
                frames.append(frame)
    trials = pd.concat(trial_frames, ignore_index=True) if trial_frames else pd.DataFrame()
    epochs = pd.concat(epoch_frames, ignore_index=True) if epoch_frames else pd.DataFrame()
    return Experiment(folder, "plan", manifest, trials, epochs, warnings, stages)


def _stage_started(folder: Path) -> str:
    manifest, _ = _safe_manifest(folder / MANIFEST)
    return str(manifest.get("started", "~"))  # experiments without a start time sort last


def export_tables(experiment: Experiment, out: str | Path | None = None) -> list[Path]:
    """Write trials and epochs as CSV and parquet into ``out`` (default: the experiment folder)."""
    out = Path(out) if out is not None else experiment.path
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in (("trials", experiment.trials), ("epochs", experiment.epochs)):
        frame.to_csv(out / f"{name}.csv", index=False)
        frame.to_parquet(out / f"{name}.parquet", index=False)
        written += [out / f"{name}.csv", out / f"{name}.parquet"]
    return written


def progress(trials: pd.DataFrame) -> dict[str, int]:
    """Trial counts: done (completed, stopped by the scheduler, or stalled), of those stalled, active, failed,
    total."""
    status = trials["status"] if "status" in trials else pd.Series(dtype=str)
    return {"done": int(status.isin(DONE).sum()), "stalled": int((status == "stalled").sum()),
            "active": int(status.isin(ACTIVE).sum()),
            "failed": int(status.isin(FAILED).sum()), "total": len(trials)}


def mixed(trials: pd.DataFrame) -> dict[str, list[str]]:
    """What differs between trials whose metrics do not compare (a folder of experiments on different data
    sets or of different families): {"dataset": ["digits", "synthetic"]}; empty when nothing does."""
    values = {key: sorted(map(str, trials[f"config/{key}"].dropna().unique())) for key in ("dataset", "family")
              if f"config/{key}" in trials}
    return {key: found for key, found in values.items() if len(found) > 1}


def find_results(root: str | Path) -> list[Path]:
    """The experiments and plans directly inside a results folder, by name."""
    root = Path(root)
    return [p for p in _subfolders(root) if is_experiment(p) or is_plan(p)] if root.is_dir() else []
