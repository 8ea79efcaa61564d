"""What valley does while a search runs: one line per finished trial and the live board of the rest
(``search.board``; Ray's own tables stay off), Ctrl-C detection, and pruning checkpoints that no
restore can use."""
from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from analysis.format import at_best_checkpoint, ended_itself, failure_kind, row_at_epoch
from search.board import Board
from trainables.config import resolve_variant

# Set by Ctrl-C during fit(): Tune returns normally after it, so callers check this instead.
# Module-level because `valley resume` runs the Progress object that Tune unpickles, not a new one.
INTERRUPTED = threading.Event()


class Progress(Callback):
    def __init__(self, total: int, metric: str, task_metric: str, say: Callable[..., None],
                 board: Board | None = None, rows: list[dict[str, Any]] | None = None, at_most: bool = False) -> None:
        self.total = total
        self.at_most = at_most  # a budget may end the search before ``total`` trials: its lines say [ 34/<=90]
        self.rows = rows or []  # the grid rows: a trial's own max_epochs may be in its row
        self.metric = metric  # what the search ranks on
        self.task_metric = task_metric  # the family's validation headline, e.g. val_acc
        self.say = say
        self.board = board  # None under --quiet
        self.done = 0
        self.counted = False  # whether `done` includes the trials a resumed experiment had finished

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if getattr(self, "board", None) is not None:
            self.board.result(trial.trial_id, result)
        if at_best_checkpoint(result):
            if getattr(self, "at_best", None) is None:  # an experiment saved before at_best existed
                self.at_best = {}
            self.at_best[trial.trial_id] = {k: result[k] for k in (*self.shown(), "epoch") if k in result}

    def shown(self) -> tuple[str, ...]:
        """The metrics a trial's line gives: what the search ranks on, val_loss, the family's headline."""
        # an experiment saved before task_metric existed is resumed with what it has
        return tuple(dict.fromkeys((self.metric, "val_loss", getattr(self, "task_metric", self.metric))))

    def best_result(self, trial: Any, seen: dict[str, Any] | None) -> dict[str, Any]:
        """The result at the trial's best checkpoint, which trials.csv ranks it by: ``seen`` as it came, else
        (a trial resumed past a best epoch this driver never saw) read from result.json; else the last."""
        last = trial.last_result or {}
        best_epoch = last.get("best_epoch")
        if seen is not None and seen.get("epoch") == best_epoch:
            return seen
        from analysis.load import read_results

        try:
            return row_at_epoch(read_results(Path(trial.path)), best_epoch) or last
        except OSError:
            return last

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if getattr(self, "board", None) is not None:
            self.board.show(trials, force=True, interrupted=INTERRUPTED.is_set())
            self.board.close()

    def setup(self, **info: Any) -> None:
        """Wrap Tune's own SIGINT handler (installed just before callbacks are set up) to see Ctrl-C."""
        tune_handler = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread() or not callable(tune_handler):
            return

        def on_sigint(sig: int, frame: Any) -> None:
            INTERRUPTED.set()
            tune_handler(sig, frame)

        signal.signal(signal.SIGINT, on_sigint)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        """On the first step (of a search or of its resumption), count the trials already finished."""
        if not getattr(self, "counted", False):
            self.done = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
            self.counted = True

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Show the board; prune checkpoints when Tune's snapshot on disk has changed, looking at most
        once a second and at most 5 % of the time (reading a snapshot grows with the trials)."""
        if getattr(self, "board", None) is not None and trials:
            self.board.show(trials)
        now = time.monotonic()
        if not trials or now < getattr(self, "look_after", 0.0):
            return
        try:
            folder = Path(trials[0].path).parent
            snapshot = newest_snapshot(folder)
            if snapshot is not None and snapshot[1] != getattr(self, "pruned_at", None):
                prune_checkpoints(folder)
                self.pruned_at = snapshot[1]
        except Exception:  # noqa: BLE001 - pruning saves disk; it must never stop a search
            pass
        self.look_after = now + max(1.0, 19 * (time.monotonic() - now))

    def _line(self, trial: Any, outcome: str) -> None:
        self.done += 1
        result = trial.last_result or {}
        seen = (getattr(self, "at_best", None) or {}).pop(trial.trial_id, None)
        # a diverged trial's too: trials.csv keeps its best checkpoint, not the epoch before its NaN
        best = result if not result.get("best_epoch") else self.best_result(trial, seen)
        total = f"{'<=' * getattr(self, 'at_most', False)}{self.total}"  # an experiment saved before at_most: none
        parts = [f"[{self.done:>3}/{total}] {trial.trial_id} {outcome:<9}"]
        for key in self.shown():
            if isinstance(best.get(key), float):
                parts.append(f"{key} {best[key]:.4f}")
        if "epoch" in result:
            parts.append(f"epochs {result['epoch']}" if best.get("epoch") in (None, result["epoch"])
                         else f"best at epoch {best['epoch']} of {result['epoch']}")
        if "n_params" in result:
            parts.append(f"n_params {result['n_params']:,}")
        if "time_total_s" in result:
            parts.append(f"{result['time_total_s']:.1f} s")
        self.say("  ".join(parts))
        if getattr(self, "board", None) is not None:  # after Ctrl-C, the trials Tune did not end were interrupted
            self.board.trial_ended(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        # an experiment saved before rows were kept has none
        ended = ended_itself(result, trial_config(trial, getattr(self, "rows", None)).get("max_epochs"))
        self._line(trial, "stalled" if result.get("stalled") else "done" if ended else "stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = first_error_line(trial.error_file) if trial.error_file else ""
        kind = failure_kind(error)
        self._line(trial, kind)
        if error:  # Tune's traceback on the terminal is off (TUNE_PRINT_ALL_TRIAL_ERRORS): it is in the file
            where = f" (traceback: {Path(trial.path) / 'error.txt'})" if kind == "failed" else ""
            self.say(f"      error: {error}{where}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A crashed trial (exception, killed process, lost node) restarts from its last checkpoint."""
        error = first_error_line(trial.error_file) if trial.error_file else "(no error file)"
        failures = trial.run_metadata.num_failures
        self.say(f"      {trial.trial_id} crashed ({error}); retry {failures} of {trial.max_failures} "
                 "from its last checkpoint")


def trial_config(trial: Any, rows: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What a trial ran with: its config with its grid row (one of ``rows``) merged in, as the trainable merges it."""
    return resolve_variant(trial.config, rows) if rows else dict(trial.config)


def slim_finished(trials: list, rows: list[dict[str, Any]]) -> None:
    """Once a search has completed: each finished trial keeps its newest checkpoint only, without the optimiser
    state and the last weights (``trainables.loop.slim``); failed ones and ``keep_optimizer`` keep all.
    A trial that ended itself wrote its last checkpoint slim; only those a scheduler or a budget stopped
    are rewritten (so a search that stopped none never imports torch in the driver). ``rows`` are the
    grid rows, which the trials merged into their configs as this reads them.

    Run after Tune's last snapshot, so no restore can ask for what is removed. Never stops a search.
    """
    for trial in trials:
        try:
            config = trial_config(trial, rows)
            if trial.status != "TERMINATED" or config.get("keep_optimizer"):
                continue
            saved = sorted(Path(trial.path).glob("checkpoint_*"), key=lambda p: int(CHECKPOINT.match(p.name)[1]))
            for old in saved[:-1]:
                shutil.rmtree(old, ignore_errors=True)
            path = saved[-1] / "state.pt" if saved else None
            if path is not None and path.exists() and not ended_itself(trial.last_result or {}, config.get("max_epochs")):
                import torch

                from trainables.loop import slim

                state = torch.load(path, map_location="cpu", weights_only=True)
                if "optimizer" in state or "test_pred" in state:
                    staged = path.with_name("state.pt.slim")
                    torch.save(slim(state), staged)
                    staged.replace(path)  # atomic: a reader sees the old file or the new one
        except Exception:  # noqa: BLE001 - slimming saves disk; it must never lose a result
            continue


def drop_weights(folder: Path, trials: list, rows: list[dict[str, Any]], keep: int | str, table: Any
                 ) -> tuple[str, list[str]]:
    """Once a search has completed: of its finished trials that hold weights (a trial a scheduler stopped
    before its first checkpoint holds none), the best ``keep`` by the search's metric, as the top table ranks
    them, keep them; the others lose their checkpoint's ``state.pt``, not their metrics, learning curves or
    test predictions. Failed trials and ``keep_optimizer`` keep all; ``keep`` "all" drops none. Unlinking
    needs no torch, so run before ``slim_finished``: a trial whose weights go is not rewritten first.
    ``table`` is the search's trials table (``analysis.load.write_tables``). Returns what the search says of
    it ("" when there is nothing to say) and the trials whose weights went."""
    held = [(Path(trial.path), bool(trial_config(trial, rows).get("keep_optimizer")))
            for trial in trials if trial.status == "TERMINATED"]
    return delete_weights(folder, held, keep, table)


def delete_weights(folder: Path, finished: list[tuple[Path, bool]], keep: int | str, table: Any
                   ) -> tuple[str, list[str]]:
    """:func:`drop_weights` for ``finished`` trials given as (folder, keeps everything: ``keep_optimizer``)."""
    if keep == "all":
        return "", []
    from analysis.format import read_manifest
    from analysis.load import ranking

    metric, ranked = ranking(table, read_manifest(folder))
    rank = {trial_id: place for place, trial_id in enumerate(ranked["trial_id"])}
    held, spared = [], 0
    for path, everything in finished:
        saved = list(path.glob("checkpoint_*/state.pt"))
        if not saved:
            continue
        if everything:
            spared += 1
            continue
        held.append((rank.get(path.name, len(rank)), path.name, saved))
    held.sort(key=lambda item: item[0])
    gone = held[int(keep):]
    for _, _, saved in gone:
        for state in saved:
            state.unlink(missing_ok=True)
    dropped, kept, said = len(gone), len(held) - len(gone), []
    if dropped:
        best = (f"the best {kept} finished trial{'s' * (kept != 1)} by {metric} keep{'s' * (kept == 1)} "
                f"{'their' if kept != 1 else 'its'} best weights, the weights of {dropped} other{'s' * (dropped != 1)}"
                if kept else f"the weights of all {dropped} finished trials")
        said.append(f"{best} were deleted (metrics, curves and predictions stay; --keep-weights all keeps every "
                    f"trial's)")
    if spared:
        said.append(f"{spared} trial{'s' * (spared != 1)} with keep_optimizer keep{'s' * (spared == 1)} everything, "
                    f"whatever --keep-weights says")
    return "; ".join(said), [name for _, name, _ in gone]


def first_error_line(path: str) -> str:
    """The exception line of a trial's traceback (its last non-empty line)."""
    try:
        with open(path) as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return "(error file unreadable)"
    return lines[-1][:300] if lines else "(empty error file)"


CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")
UNRESTORED = ".unrestored"  # trials a killed driver began after its last snapshot


def newest_snapshot(folder: Path) -> tuple[Path, tuple[int, int]] | None:
    """The experiment snapshot Tune restores from (``analysis.load.newest_snapshot_file``), with its
    (mtime, size)."""
    from analysis.load import newest_snapshot_file

    path = newest_snapshot_file(folder)
    if path is None:
        return None
    stat = path.stat()
    return path, (stat.st_mtime_ns, stat.st_size)


def snapshot_trials(folder: Path) -> dict[str, dict[str, Any]] | None:
    """Trial folder name -> last result, of every trial the snapshot on disk names; None if unreadable."""
    from analysis.load import tune_snapshot

    entries = tune_snapshot(folder)
    if entries is None:
        return None
    named = {}
    for state, metadata in entries:
        logdir = state.get("relative_logdir") or state.get("custom_dirname")
        if logdir:
            named[logdir] = metadata.get("last_result") or {}
    return named


def set_aside_unrestored(folder: Path) -> list[str]:
    """Move the folders of trials the snapshot on disk does not name into ``folder/.unrestored``;
    returns their names.

    The driver writes a trial's params.json and result.json into the experiment folder as the trial
    runs; a trial begun after the last snapshot a killed driver wrote is not Tune's any more (the
    resumed search draws another in its place), so its files are kept apart, out of trials.csv.
    """
    named = snapshot_trials(folder)
    if named is None:
        return []
    moved = []
    for trial in sorted(p.parent for p in folder.glob("*/params.json")):
        if trial.name not in named:
            target = folder / UNRESTORED / trial.name
            target.parent.mkdir(exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)  # a trial set aside at an earlier resume
            trial.rename(target)
            moved.append(trial.name)
    return moved


def prune_checkpoints(folder: Path) -> int:
    """Delete the checkpoints that no restore can use; returns how many.

    Tune deletes a trial's old checkpoints (``num_to_keep``) as soon as it registers new
    ones, but writes the experiment snapshot that ``Tuner.restore`` reads every ten seconds
    or so: a driver killed in between leaves a snapshot naming a deleted checkpoint, and that
    trial fails on resume. valley keeps every checkpoint until the snapshot on disk names a
    later one for the same trial, and only then deletes the older ones, keeping two per trial
    as ``num_to_keep=2`` did. Unreadable state (a snapshot being written) deletes nothing.
    """
    entries = snapshot_trials(folder)
    if entries is None:
        return 0
    named = []
    for logdir, last_result in entries.items():
        checkpoint = last_result.get("checkpoint_dir_name")
        if checkpoint and CHECKPOINT.match(checkpoint):
            # the result naming checkpoint K is recorded before Tune registers K (the save is a
            # second actor call), so the snapshot may restore K - 1: keep both
            named.append((folder / logdir, int(CHECKPOINT.match(checkpoint).group(1)) - 1))
    removed = 0
    for trial_dir, keep_from in named:
        for path in trial_dir.glob("checkpoint_*"):
            match = CHECKPOINT.match(path.name)
            if match and int(match.group(1)) < keep_from and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
    return removed
