"""The experiment folder, as one format: search/ writes it, analysis/ and ``valley resume`` read it.

```
results/<name>/
  valley.json         the manifest (MANIFEST_FIELDS): how the experiment was made, its status, and
                      the task (headline metric, its mode, the test column) so readers never guess
  space.yaml          the space file as it was
  trials.csv, trials.parquet, epochs.parquet   one row per trial / per trial-epoch (TRIAL_COLUMNS)
  asha-stops.jsonl    one {"trial_id", "epoch"} line per trial ASHA stopped, as it is decided
  optuna.journal      --search optuna: the Optuna study
  <trial_id>/params.json, result.json, error.txt, checkpoint_*/   Ray Tune's, per trial
```

A trial's identity is its folder's name (Tune's trial id). A plain Ray Tune folder has no
manifest; :func:`guess_task` is the one place that guesses what it optimised.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "valley.json"
SPACE_COPY = "space.yaml"
PLAN_STATE = "plan.json"
ASHA_STOPS = "asha-stops.jsonl"
OPTUNA_JOURNAL = "optuna.journal"  # --search optuna: the study (search.optuna_study)

# What valley.json holds (search.manifest writes every one of them).
MANIFEST_FIELDS = {
    "space": "the space's name", "space_file": "its path", "family": "the model family",
    "metric": "the reported key trials are ranked on (e.g. val_loss)", "mode": "min or max for it",
    "task": "the family's task: kind, metrics, headline, mode, test_metric",
    "dataset": "the data set", "max_epochs": "epochs per trial", "grid": "the space's grid rows",
    "options": "the search options", "data_fingerprint": "blake2b of the arrays",
    "trials_planned": "the trials the search will run (null under a budget, which may stop it sooner)",
    "data": "train / val / test sizes, how they were split (e.g. stratified by minute), notes on the files, the folder "
            "read from (a data set read from files)", "git_commit": "the code",
    "command": "argv", "environment": "torch, python, cuda", "status": "running | completed | interrupted",
    "started": "local time", "finished": "local time",
    "driver": "the process that runs (or last ran) it: host, pid and its start (see driver_gone)",
}
RUNNING, COMPLETED, INTERRUPTED = "running", "completed", "interrupted"

# Trial statuses in trials.csv.
TRIAL_STATUSES = {
    "completed": "ran its epochs, or stopped early by its own patience",
    "stopped": "stopped by the scheduler (ASHA) or a budget, perhaps before its first epoch",
    "stalled": "ended with its validation metric at chance level for its last stall_epochs epochs (it learned "
               "nothing), on its own or stopped by the scheduler or a budget (then stopped_by_scheduler is true); "
               "ranked by its metric like any other, never picked without a warning",
    "failed": "raised an error (see error)", "diverged": "its loss became NaN or infinite",
    "unfinished": "the search was interrupted; `valley resume` continues it", "pending": "not started",
}
DONE = ("completed", "stopped", "stalled")  # a trial that finished
TRAINED = ("completed", "stalled")  # ... having trained all its epochs, or until its own patience stopped it (trained())
FAILED = ("failed", "diverged")  # its metric says nothing about the model
ACTIVE = ("running", "pending", "paused", "unfinished")

# The fixed columns of trials.csv, in order; then best_val_<m> and test_<m> for each task metric,
# final_val_loss, wall_s, device, and config/<key> for each config key.
TRIAL_COLUMNS = ("trial_id", "experiment", "status", "stopped_by_scheduler", "failure", "error", "n_params",
                 "epochs", "best_epoch", "best_val_loss")

DIVERGED_MARK = "diverged:"  # how trainables.loop.Diverged's message begins


def failure_kind(error: str) -> str:
    """``diverged`` for a trial whose loss became non-finite, else ``failed`` (``error``: any text of it)."""
    return "diverged" if DIVERGED_MARK in error else "failed"


def at_best_checkpoint(result: dict[str, Any]) -> bool:
    """Whether a reported epoch is its trial's best checkpoint so far (its ``epoch`` is its ``best_epoch``): its
    validation metrics are those trials.csv ranks the trial by, until a better epoch comes."""
    return result.get("epoch") is not None and result.get("epoch") == result.get("best_epoch")


def row_at_epoch(rows: list[dict[str, Any]], epoch: Any) -> dict[str, Any] | None:
    """The reported row of ``epoch`` (a trial's ``best_epoch``), or None: no such row, or no epoch."""
    return next((row for row in rows if epoch is not None and row.get("epoch") == epoch), None)


def ended_itself(last: dict[str, Any], max_epochs: int | None) -> bool:
    """Whether a trial's last report is its last epoch or its own early stop (not a scheduler's or a budget's)."""
    return bool(last.get("early_stopped") or (max_epochs is not None and last.get("epoch") == max_epochs))


def trial_status(last: dict[str, Any], error: str, has_rows: bool, max_epochs: int | None,
                 search_finished: bool) -> str:
    """A trial's status from its last report, its error text and whether the search has ended."""
    if ended_itself(last, max_epochs):
        return "stalled" if last.get("stalled") else "completed"
    if error:
        return failure_kind(error)
    if not has_rows:  # never reported: not started yet, or stopped before its first epoch (a budget)
        return "stopped" if search_finished else "pending"
    if not search_finished:
        return "unfinished"
    return "stalled" if last.get("stalled") else "stopped"


def trained(trials: Any) -> Any:
    """Which rows of a trials table trained all their epochs, or until their own patience stopped them:
    completed, or stalled at chance level to the end; not one a scheduler or a budget cut short."""
    mask = trials["status"].isin(TRAINED)
    if "stopped_by_scheduler" in trials:
        mask &= ~trials["stopped_by_scheduler"].fillna(False).astype(bool)
    return mask


def metric_column(metric: str) -> str:
    """The trials-table column that holds a reported metric (``val_loss`` -> ``best_val_loss``)."""
    return f"best_{metric}" if metric.startswith("val_") else metric


# ----------------------------------------------------------------------------- the manifest

class UnreadableState(ValueError):
    """A file valley writes whole (``valley.json``, ``plan.json``) that no longer reads as one; ``problem``
    says how ("is unreadable (...)", "holds a list, not an object")."""

    def __init__(self, path: Path, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{path} {problem}; valley writes it whole, so it was changed or cut short since: restore "
                         "it, or start again under a new --name (`valley report` still reads the trials)")


def read_state(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a file that is not one is an ``UnreadableState`` naming it."""
    try:
        state = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UnreadableState(path, f"is unreadable ({err})") from None
    if not isinstance(state, dict):
        raise UnreadableState(path, f"holds a {type(state).__name__}, not an object")
    return state


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """``valley.json``, or an empty dict for a plain Ray Tune experiment."""
    path = Path(folder) / MANIFEST
    return read_state(path) if path.exists() else {}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``valley.json`` (atomically: a reader never sees half of it)."""
    unknown = set(manifest) - set(MANIFEST_FIELDS)
    if unknown:
        raise ValueError(f"manifest fields {sorted(unknown)} are not in analysis.format.MANIFEST_FIELDS")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(folder / MANIFEST)


def update_status(folder: Path, status: str) -> None:
    """Set the experiment's status and the time it changed (``running``: and the driver that runs it)."""
    manifest = read_manifest(folder)
    manifest.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if status == RUNNING:
        manifest["driver"] = driver()
    write_manifest(folder, manifest)


def driver() -> dict[str, Any]:
    """This process, as the driver of a search or plan: its host, pid namespace, pid and start time."""
    return {"host": socket.gethostname(), "pids": _pid_namespace(), "pid": os.getpid(),
            "since": _process_start(os.getpid())}


def _pid_namespace() -> str | None:
    """Which processes' pids this process sees (two containers can share a host name, not this)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _here(recorded: dict[str, Any]) -> bool:
    """Whether a recorded driver's pid means a process this one can see: the same host, the same pids."""
    return recorded.get("host") == socket.gethostname() and recorded.get("pids") == _pid_namespace()


def driver_gone(state: dict[str, Any]) -> str | None:
    """Why a valley.json or plan.json that reads 'running' is not running any more: its driver, on this
    machine, is gone (killed outright: the OOM killer, SIGKILL, a batch system, a reboot), which left
    no one to write 'interrupted'. None while it runs, or when it ran on another machine or in another
    container (no telling)."""
    recorded = state.get("driver")
    if state.get("status") != RUNNING or not isinstance(recorded, dict) or not _here(recorded):
        return None
    pid = recorded.get("pid")
    if not isinstance(pid, int) or driver_running(recorded):
        return None
    return f"its driver (pid {pid} on {recorded['host']}) is gone: it was killed, and what it had finished is kept"


def driver_running(recorded: dict[str, Any]) -> bool:
    """Whether the recorded driver is this machine's live process of that pid and start (not a later
    process that took its pid, nor one killed but not yet reaped)."""
    pid = recorded.get("pid")
    if not isinstance(pid, int) or not _here(recorded):
        return False
    if not Path("/proc/self/stat").exists():  # no /proc: whether the pid is taken at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    since = _process_start(pid)
    return since is not None and since == recorded.get("since")


def _process_start(pid: int) -> int | None:
    """When a live process started, in clock ticks since boot (``/proc/<pid>/stat``); None when it is gone,
    a zombie, or there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def asha_stops(folder: Path) -> dict[str, int]:
    """Trial id -> the epoch ASHA stopped it at, from ``folder/asha-stops.jsonl`` (a line cut short by a
    kill is skipped: the stop it was writing is not in Tune's snapshot either, and is decided again)."""
    found = {}
    try:
        lines = (folder / ASHA_STOPS).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
            found[entry["trial_id"]] = int(entry["epoch"])
        except (ValueError, KeyError, TypeError):
            continue
    return found


def budget_amount(value: float, unit: str) -> str:
    """Part of a plan's budget (plan.json's ``budget``) as valley prints it: trial-epochs whole, rounded
    down (a stage allowed 11.6 can train 11), or minutes (seconds below one)."""
    if unit == "trial-epochs":
        return f"{math.floor(value + 1e-9):,} trial-epochs"
    return f"{value:.1f} s" if value < 60 else f"{value / 60:,.1f} min"


# ----------------------------------------------------------------------------- the task

@dataclasses.dataclass(frozen=True)
class Task:
    """What an experiment's family trains for, as its manifest records it."""

    kind: str  # "classification" | "clock" | "unknown"
    headline: str  # e.g. "acc"
    mode: str  # min | max for the headline
    test_metric: str | None  # the trials-table column of the headline on the test set
    metrics: tuple[str, ...] = ()


def task_of(manifest: dict[str, Any], columns: Iterable[str] = ()) -> Task:
    """The manifest's task; for folders without one, :func:`guess_task` on the table's columns."""
    task = manifest.get("task")
    if isinstance(task, dict) and task.get("headline"):
        return Task(task.get("kind", "unknown"), task["headline"], task["mode"], task.get("test_metric"),
                    tuple(task.get("metrics", ())))
    return guess_task(columns)


def guess_task(columns: Iterable[str]) -> Task:
    """The one fallback, for plain Ray Tune folders (and manifests older than the task record).

    The headline is the first reported ``test_*`` column other than the loss (valley reports
    the task's headline metric first), and its mode is guessed from its name by :func:`guess_mode`.
    """
    columns = list(columns)
    test = next((c for c in columns if c.startswith("test_") and c != "test_loss"), None)
    headline = test.removeprefix("test_") if test else "loss"
    kind = "clock" if headline == "csd" else "classification" if headline == "acc" else "unknown"
    return Task(kind, headline, guess_mode(headline), test)


def guess_mode(metric: str) -> str:
    """max for accuracy-like metric names, min for losses and errors (plain Ray Tune folders only)."""
    return "max" if any(word in metric for word in ("acc", "score", "reward", "return", "auc", "f1", "precision",
                                                    "recall", "iou", "dice", "ndcg", "r2", "psnr", "ssim",
                                                    "bleu", "rouge")) else "min"


def confirm_verdict(summary: dict[str, Any], winner: str | None = None) -> str:
    """A confirm stage's outcome (its ``summary`` in plan.json) in one sentence: the winner (named
    ``winner``, else by its config), what chose it, and whether the test metric bears the choice out."""
    metric, p = summary.get("metric", "test"), summary.get("p_winner_beats_runner_up")
    text = f"winner {winner or summary.get('winner')} by {summary.get('chosen_by', 'validation')}"
    if isinstance(summary.get("winner_mean"), float):
        text += f": {metric} {summary['winner_mean']:.4g}"
        if isinstance(summary.get("runner_up_mean"), float):
            text += f", the runner-up's {summary['runner_up_mean']:.4g}"
    seeds = len(summary.get("seeds") or ())
    if summary.get("winner_failed"):
        text += f"; it failed or diverged on {summary['winner_failed']} of {seeds} seeds"
    if summary.get("runner_up_failed", 0) > summary.get("winner_failed", 0):
        return text + f"; the runner-up failed or diverged on {summary['runner_up_failed']} of {seeds} seeds"
    if "runner_up" not in summary and p is None and summary.get("winner") is not None:  # it ended on its test metric
        return text + "; the only configuration confirmed" + (" (on one seed)" if seeds == 1 else "") + \
            ": no runner-up to compare it with, no P"
    if seeds == 1:
        return text + "; on one seed: no interval, no P"
    if p is None:
        return text
    text += f"; P(winner beats runner-up) = {p:.3g}"
    if summary.get("winner_mean") == summary.get("runner_up_mean") and p == 0.5:
        return text + f": they tie on {metric} over these seeds"
    if p < 0.5:
        return text + f", so on {metric} the runner-up does better: validation did not tell them apart"
    return text + (": not a clear win over these seeds" if p < 0.9 else "")
