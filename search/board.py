"""The live board of a running search: trials by state, each running trial's epoch and metric, the best
so far, the time spent and an estimate of what remains.

On a terminal it is redrawn in place (``rich``'s Live display) about once a second; when the
output is a file or a pipe (a CI log), it is one line every ``every_s`` seconds. The one line per
finished trial that ``search.progress`` prints is kept either way; ``--quiet`` shows neither.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import time
from typing import Any

from analysis.format import at_best_checkpoint

STATES = ("done", "stalled", "stopped", "failed", "running", "interrupted", "pending")


@dataclasses.dataclass
class Snapshot:
    """What the board shows at one moment."""

    counts: dict[str, int]
    running: list[tuple[str, int, float | None]]  # (trial id, epoch, latest metric)
    best: tuple[str, float] | None  # (trial id, best metric so far)
    elapsed_s: float
    left_s: float | None  # None until an epoch has finished
    trained: int = 0  # trial-epochs the search's trials have trained


def snapshot(trials: list[Any], latest: dict[str, dict[str, Any]], metric: str, mode: str, max_epochs: int,
             started: float, epochs_at_start: int = 0, ended: set[str] | None = None, slots: int = 1) -> Snapshot:
    """Trials by state and the estimate of the time left: the epochs the unfinished trials may still train,
    each at its own seconds an epoch (one that has not reported, at the median trial's), shared among the
    running trials' slots, and no less than the slowest one's alone; without reported times, at the rate
    epochs have finished so far. An upper bound under ASHA, which stops some early.

    With ``ended`` (after Ctrl-C: the trials whose end Tune reported, or that had ended before this run), a
    trial Tune calls terminated but that is not among them was stopped by the Ctrl-C: interrupted, not stopped.
    ``slots``: the most trials seen running at once, which share the time left while none runs (after Ctrl-C,
    as a resumed search starts: it read as one trial at a time, "~4m59s left" of 2.5 minutes' work).
    """
    counts = dict.fromkeys(STATES, 0)
    running, best, trained, left_epochs = [], None, 0, 0
    per_epoch: dict[str, float] = {}  # each trial's seconds an epoch, where it has reported them
    owed: dict[str, int] = {}  # each unfinished trial's epochs still to train
    for trial in trials:
        result = latest.get(trial.trial_id, {})
        last = getattr(trial, "last_result", None) or {}  # Tune's own, restored with the trial on a resume
        if int(last.get("training_iteration") or 0) > int(result.get("training_iteration") or 0):
            result = last
        epoch = int(result.get("training_iteration") or 0)
        trained += epoch
        seconds = result.get("time_total_s")
        if epoch and isinstance(seconds, (int, float)) and seconds > 0:
            per_epoch[trial.trial_id] = seconds / epoch
        before = left_epochs
        value = result.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            # best_val_loss is reported; another metric at the best checkpoint is kept by Board.result (as trials.csv
            # ranks it), else (a trial restored with Tune's last result) the latest value
            best_value = next((v for v in (result.get(f"best_{metric}"), result.get("at_best"))
                               if isinstance(v, (int, float))), value)
            if best is None or (best_value < best[1] if mode == "min" else best_value > best[1]):
                best = (trial.trial_id, float(best_value))
        if trial.status == "RUNNING":
            counts["running"] += 1
            running.append((trial.trial_id, epoch, value if isinstance(value, (int, float)) else None))
            left_epochs += max(0, max_epochs - epoch)
        elif trial.status in ("PENDING", "PAUSED"):
            counts["pending"] += 1
            left_epochs += max_epochs - epoch
        elif trial.status == "TERMINATED" and not epoch:  # ended before it trained (Ctrl-C, a budget): not stopped
            counts["pending"] += 1
            if ended is not None:  # after Ctrl-C, `valley resume` trains it all (a budget's end trains it never)
                left_epochs += max_epochs
        elif trial.status == "ERROR":
            counts["failed"] += 1
        elif ended is not None and trial.trial_id not in ended:  # `valley resume` continues it
            counts["interrupted"] += 1
            left_epochs += max(0, max_epochs - epoch)
        elif result.get("stalled"):  # at chance level, as its line says: no "done"
            counts["stalled"] += 1
        else:
            finished = result.get("early_stopped") or epoch >= max_epochs
            counts["done" if finished else "stopped"] += 1
        if left_epochs > before:
            owed[trial.trial_id] = left_epochs - before
    elapsed = time.monotonic() - started
    if per_epoch:  # each trial at its own pace (a grid's 15-layer MLP beside its 2-neuron one: 40 s, not 1 s)
        typical = statistics.median(per_epoch.values())  # for a trial that has not reported yet
        each = [n * per_epoch.get(t, typical) for t, n in owed.items()]
        left = max([sum(each) / max(1, slots, counts["running"]), *each]) if each else 0.0
    else:  # no times reported: the rate epochs have finished at
        rate = (trained - epochs_at_start) / elapsed if elapsed > 0 else 0.0
        left = left_epochs / rate if rate > 0 else None
    return Snapshot(counts, running, best, elapsed, left, trained)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def spent(snap: Snapshot, budget_epochs: int | None) -> str:
    """The trial-epochs a search with an epoch budget (a plan's stage) has trained so far, of that budget."""
    return f"{snap.trained} of {budget_epochs} trial-epochs trained, " if budget_epochs else ""


def interrupted(snap: Snapshot) -> str:
    return f"{snap.counts['interrupted']} interrupted, " if snap.counts["interrupted"] else ""


def stalled(snap: Snapshot) -> str:
    return f"{snap.counts['stalled']} stalled, " if snap.counts["stalled"] else ""


def line(snap: Snapshot, metric: str, label: str = "", budget_epochs: int | None = None) -> str:
    """The board as one line (for a pipe or a log file)."""
    c = snap.counts
    finished = c["done"] + c["stalled"] + c["stopped"] + c["failed"]
    total = finished + c["running"] + c["interrupted"] + c["pending"]
    best = f"; best {metric} {snap.best[1]:.4g} ({snap.best[0]})" if snap.best else ""
    running = ", ".join(f"{t} epoch {e}" for t, e, _ in snap.running[:4])
    running = f" [{running}]" if running else ""
    return (f"valley: {label + ': ' if label else ''}{finished}/{total} finished ({c['done']} done, {stalled(snap)}"
            f"{c['stopped']} stopped, {c['failed']} failed), {c['running']} running{running}, "
            f"{interrupted(snap)}{c['pending']} pending{best}; {spent(snap, budget_epochs)}"
            f"{duration(snap.elapsed_s)} elapsed, ~{duration(snap.left_s)} left")


def table(snap: Snapshot, metric: str, max_epochs: int, label: str = "", budget_epochs: int | None = None) -> Any:
    """The board as a rich renderable (for a terminal)."""
    from rich.table import Table

    c = snap.counts
    title = (f"{label + ' - ' if label else ''}{c['done']} done, {stalled(snap)}{c['stopped']} stopped, "
             f"{c['failed']} failed, "
             f"{c['running']} running, {interrupted(snap)}{c['pending']} pending - {spent(snap, budget_epochs)}"
             f"{duration(snap.elapsed_s)} elapsed, ~{duration(snap.left_s)} left")
    grid = Table(title=title, title_justify="left", caption=(f"best {metric} {snap.best[1]:.4g} ({snap.best[0]})"
                                                              if snap.best else None), caption_justify="left")
    for column in ("running trial", "epoch", metric):
        grid.add_column(column)
    for trial_id, epoch, value in snap.running:
        grid.add_row(trial_id, f"{epoch}/{max_epochs}", "-" if value is None else f"{value:.4g}")
    return grid


class Board:
    """Redraws in place on a terminal; one line every ``every_s`` seconds otherwise. Never pickled live.

    Pickled with the experiment, so an attribute added later is a class default: an experiment saved
    before it existed resumes with the default.
    """

    budget_epochs: int | None = None  # a plan stage's trial-epoch budget: the board counts what is trained of it
    slots = 1  # the most trials seen running at once
    ended: set[str] | None = None  # trials whose end Tune reported, or that had ended when this run began

    def __init__(self, metric: str, mode: str, max_epochs: int, every_s: float, label: str = "",
                 terminal: bool | None = None, budget_epochs: int | None = None) -> None:
        self.metric, self.mode, self.max_epochs, self.every_s, self.label = metric, mode, max_epochs, every_s, label
        self.budget_epochs = budget_epochs
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.latest: dict[str, dict[str, Any]] = {}
        self._live: Any = None
        self._started = time.monotonic()
        self._shown = self._started
        self._epochs_at_start: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}  # a resumed search draws anew

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        at_best = (result.get(self.metric) if at_best_checkpoint(result)
                   else self.latest.get(trial_id, {}).get("at_best"))  # the metric at the best checkpoint
        self.latest[trial_id] = {**{k: result.get(k) for k in ("training_iteration", self.metric, "early_stopped",
                                                               "stalled", f"best_{self.metric}", "time_total_s")},
                                 "at_best": at_best}

    def trial_ended(self, trial_id: str) -> None:
        self.ended = (self.ended or set()) | {trial_id}

    def show(self, trials: list[Any], force: bool = False, interrupted: bool = False) -> None:
        """Draw the board when it is due (``interrupted``: after Ctrl-C); a board that fails to draw never
        stops the search."""
        try:
            self._show(trials, force, interrupted)
        except Exception as err:  # noqa: BLE001 - the board only shows what is on disk anyway
            print(f"valley: note: the progress board stopped ({type(err).__name__}: {err})", flush=True)
            self.close()
            self.every_s, self.terminal = math.inf, False

    def _show(self, trials: list[Any], force: bool, interrupted: bool = False) -> None:
        if self._epochs_at_start is None:  # the first draw, or a resumed search's: its rate counts from here,
            self._started = time.monotonic()  # over the epochs its trials hold now (a resumed one's restored ones)
            self._epochs_at_start = snapshot(trials, self.latest, self.metric, self.mode, self.max_epochs,
                                             self._started).trained
            self.ended = (self.ended or set()) | {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        now = time.monotonic()
        if not force and now - self._shown < (1.0 if self.terminal else self.every_s):
            return
        self._shown = now
        self.slots = max(self.slots, sum(t.status == "RUNNING" for t in trials))
        snap = snapshot(trials, self.latest, self.metric, self.mode, self.max_epochs, self._started,
                        self._epochs_at_start, (self.ended or set()) if interrupted else None, self.slots)
        if not self.terminal:
            print(line(snap, self.metric, self.label, self.budget_epochs), flush=True)
            return
        if self._live is None:
            from rich.live import Live

            self._live = Live(auto_refresh=False, transient=False)
            self._live.start()
        self._live.update(table(snap, self.metric, self.max_epochs, self.label, self.budget_epochs), refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
