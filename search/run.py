"""Run one space as one Ray Tune experiment and write its tidy results.

Everything that can be wrong with a search (options, space, data, folder, resources) is
checked before Ray starts; a trial that fails is recorded and the search goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis import format as fmt
from search.cluster import check_cluster, check_gpu_asked, check_local_resources
from search.data_check import load_data
from search.manifest import experiment_name, write_manifest
from search.options import (SearchError, SearchOptions, check_name, sample_count, search_signals, sets,
                            total_trials)
from search.ray_start import start_ray
from spaces import Dist, Space, SpaceError

if TYPE_CHECKING:
    import pandas as pd


def storage_root(storage: str) -> Path:
    """The results folder, created and checked writable."""
    if not storage.strip():
        raise SearchError("--storage is empty; give the results folder, e.g. --storage results")
    if "://" in storage:
        raise SearchError(f"--storage must be a folder, got {storage!r}: valley writes its manifest and "
                          "tables with plain file I/O; mount the bucket or use shared NFS (e.g. EFS at "
                          "/mnt/valley) and pass that path")
    root = Path(storage).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".valley-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SearchError(f"results folder {root} is not writable ({err.strerror}); pass --storage "
                          "with a folder you can write") from None
    return root


def prepare(space: Space, opts: SearchOptions) -> tuple[Path, str, int]:
    """Check everything that does not need Ray; returns (experiment folder, data set, epochs).

    Cheap checks come first, so that most refusals come before torch is even imported.
    """
    from trainables import FAMILIES, unknown_family
    from trainables.data import DATASETS, unknown_dataset

    opts.check()
    check_laid_out(space, opts)
    check_steps_drawn(space, opts)
    if opts.search == "bohb" and not all(importlib.util.find_spec(m) for m in ("hpbandster", "ConfigSpace")):
        raise SearchError("--search bohb needs hpbandster and ConfigSpace; install them with "
                          "`pip install -e '.[bohb]'` (or `pip install hpbandster ConfigSpace`)")
    if space.family not in FAMILIES:
        raise SpaceError(f"{space.source}: family: {unknown_family(space.family)}")
    dataset = opts.dataset or space.dataset
    if dataset is None:
        raise SearchError(f"{space.source} names no dataset; pass --dataset ({', '.join(DATASETS)})")
    if dataset not in DATASETS:
        where = "--dataset" if opts.dataset else f"{space.source}: dataset"
        raise SearchError(f"{where}: {unknown_dataset(dataset)}")
    epochs = opts.epochs(space)
    name = check_name(experiment_name(space, dataset) if opts.name is None else opts.name)  # --name "": refused
    folder = storage_root(opts.storage) / name
    if folder.exists():
        raise SearchError(f"experiment {folder} already exists; continue it with `valley resume {folder}` "
                          "or choose another --name")
    check_gpu_asked(space, opts)
    if opts.address is None:
        check_local_resources(opts)
    from search.loggers import check as check_loggers  # imports Ray's logger callbacks

    check_loggers(opts)
    from search.tune_space import check_space  # imports torch, through the family

    check_space(space, {**opts.overrides, "dataset": dataset, "max_epochs": epochs})
    check_task(space.family, dataset)
    return folder, dataset, epochs


LAID_OUT = 5000  # grid trials Tune lays out before the first starts: 9 s for one row at 5,000, quadratic in it


def check_laid_out(space: Space, opts: SearchOptions) -> None:
    """Passes of a random search over a grid each take their own seed, a grid over seeds that Tune lays out whole
    before the first trial starts, in time quadratic in its size: `--samples 100000` sat for over 9 minutes
    without a trial, and Ctrl-C waited on it too. (With the seed fixed, Tune draws the passes as it goes; where
    the space then draws nothing, every pass trains the same configurations again, and is refused too.)"""
    samples = sample_count(opts)
    if opts.search != "random" or samples < 2:
        return
    if sets(space, opts, "seed"):
        drawn = dataclasses.replace(space, params={k: v for k, v in space.params.items() if k not in opts.overrides})
        if drawn.is_sampled():
            return
        # `--set seed=3 --samples 3`: three trainings alike, read as 3 seeds with a spread of 0
        grid = space.params.get("seed") if "seed" not in opts.overrides else None
        if isinstance(grid, Dist) and grid.kind == "grid":
            raise SearchError(f"--samples {samples}: {space.source} runs each configuration over its own grid of "
                              f"{len(grid.args)} seeds, and each pass would train them alike again; add seeds to "
                              "that grid, or give --samples 1")
        fixed = "--set seed" if "seed" in opts.overrides else f"{space.source} sets seed"
        raise SearchError(f"--samples {samples} passes over a grid whose seed is fixed ({fixed}) and that draws "
                          "nothing train each configuration alike; give --samples 1, or leave the seed to the "
                          "search (each pass then takes its own)")
    trials = total_trials(space, opts)
    if trials > LAID_OUT:
        points = trials // samples
        raise SearchError(f"--samples {samples} passes over {points} grid point{'s' * (points != 1)} ask for "
                          f"{trials:,} trials, each pass with a seed of its own, and Tune lays them all out before the "
                          f"first starts (minutes from about {LAID_OUT:,}); give --samples "
                          f"{max(1, LAID_OUT // points)} or fewer, and run more as further searches")


def check_steps_drawn(space: Space, opts: SearchOptions) -> None:
    """A q-distribution draws multiples of q; Ray's conversions for BOHB (every one) and Optuna (qloguniform)
    drop the step with a warning of Ray's, and drew 0.854614 from `quniform: [0, 0.9, 0.3]`."""
    for key, value in space.params.items():
        if key in opts.overrides or not isinstance(value, Dist) or not value.kind.startswith("q"):
            continue
        if value.kind == "qrandint" and value.args[2] == 1:  # Tune's randint to high + 1: no step to drop
            continue
        if opts.search == "bohb" or (opts.search == "optuna" and value.kind == "qloguniform"):
            low, high = value.args[:2]
            unstepped = (f"randint: [{low}, {high + 1}]" if value.kind == "qrandint"  # qrandint's high is inclusive
                         else f"{value.kind.removeprefix('q')}: [{low}, {high}]")
            instead = ("quniform or loguniform" if opts.search == "optuna"
                       else f"{unstepped} (no step) or a choice of the multiples")
            raise SpaceError(f"{space.source}: params.{key}: --search {opts.search} cannot draw {value.kind}'s "
                             f"multiples of q (Ray's conversion drops the step); use {instead}, or --search "
                             f"{'random' if opts.search == 'optuna' else 'optuna or random'}")


def check_task(family_name: str, dataset: str) -> None:
    """A family trains on the labels of its task: classes, or a clock's hour and minute."""
    from trainables import get_family
    from trainables.data import DATASETS

    kind, labels = get_family(family_name).task.kind, DATASETS[dataset].task
    if kind == labels:
        return
    fits = ", ".join(name for name, d in DATASETS.items() if d.task == kind)
    hint = ("; to read clocks, search a space of the clock family (e.g. `valley search clock-encodings "
            "--dataset clocks-small`)" if labels == "clock" else "")
    does = {"classification": "classifies images", "clock": "reads clocks"}
    has = {"classification": "class labels", "clock": "hour and minute labels"}
    raise SearchError(f"family {family_name!r} {does.get(kind, kind)}, but data set {dataset!r} has "
                      f"{has.get(labels, labels)}; give it one of {fits}{hint}")


def silent(*_: Any) -> None:
    """What --quiet says while a search runs."""


def sayer(opts: SearchOptions) -> Callable[..., None]:
    return silent if opts.quiet else (lambda *a: print(*a, flush=True))


def tell(say: Callable[..., None], text: str) -> None:
    """Say ``text`` even under --quiet (how to go on, as an error would be): on stderr then."""
    print(text, flush=True, file=sys.stderr if say is silent else sys.stdout)


def run_search(space: Space, opts: SearchOptions) -> Path:
    """Run ``space``; returns the experiment folder, which holds trials.csv when it finishes."""
    from search.board import Board
    from search.progress import Progress
    from search.tune_space import check_shape, unread_keys, with_overrides
    from search.tuner import build_tuner
    from trainables import get_family

    folder, dataset, epochs = prepare(space, opts)
    space, replaced = with_overrides(space, opts.overrides)
    family = get_family(space.family)
    data = load_data(dataset, opts.data_dir)
    check_shape(space, opts.overrides, data.input_shape, dataset)
    say = sayer(opts)
    say(f"valley: {space.name} on {dataset} ({len(data.x_train)} train / {len(data.x_val)} val / "
        f"{len(data.x_test)} test, {data.split_rule}), {epochs} epoch{'s' * (epochs != 1)} per trial -> {folder}")
    if replaced:
        say(f"valley: note: {replaced}")
    for unread in unread_keys(space, opts.overrides):
        tell(say, f"valley: warning: {unread}")
    for note in data.notes:
        say(f"valley: note: {note}")
    start_ray(opts, space.family)
    check_cluster(opts, folder.parent)
    board = None if opts.quiet else Board(space.metric, space.mode, epochs, opts.progress_s, opts.label,
                                          budget_epochs=opts.budget_epochs)
    rows = [dict(row) for row in space.grid]  # what the trials merge into their configs
    progress = Progress(total_trials(space, opts), space.metric, family.task.val_metric, say, board, rows,
                        at_most=bool(opts.budget_epochs or opts.budget_s))
    tuner = build_tuner(space, family, opts, folder, dataset, epochs, data, progress)
    write_manifest(folder, space, family, opts, dataset, epochs, data, status=fmt.RUNNING)
    return fit_and_finish(tuner, folder, say, rows, opts.keep_weights)


def fit_and_finish(tuner: Any, folder: Path, say: Callable[..., None], rows: list[dict[str, Any]],
                   keep_weights: int | str) -> Path:
    """Run the tuner; the experiment reads 'completed' only if no Ctrl-C came and every trial ended.
    ``rows`` are the grid rows the trials merge into their configs; ``keep_weights`` how many finished
    trials keep their best weights once it has completed (``drop_weights``)."""
    from analysis.load import write_trial_tables, write_tables
    from search.options import SEARCHING
    from search.progress import INTERRUPTED, drop_weights, prune_checkpoints, slim_finished
    from search.tuner import (fail_diverged_trials_at_once, keep_workers_already_starting,
                              retry_trials_killed_while_starting)

    status, failure = fmt.INTERRUPTED, None
    INTERRUPTED.clear()
    fail_diverged_trials_at_once()
    retry_trials_killed_while_starting()
    keep_workers_already_starting()
    # Tune's own table of results warns of every trial a budget stopped before its first epoch; valley
    # reads the results from disk (analysis.load), which says what is missing or half-written
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.tune").addFilter(said_stopping)
    with search_signals():
        try:
            SEARCHING.set()
            grid = tuner.fit()
            trials = grid._experiment_analysis.trials
            if not INTERRUPTED.is_set() and all(t.status in ("TERMINATED", "ERROR") for t in trials):
                status = fmt.COMPLETED
        except KeyboardInterrupt:  # a second Ctrl-C, which Tune's warning invites ("to skip" its last snapshot):
            pass  # the tables and how to resume, as after one (the folder had no trials.csv, the user no command)
        except Exception as err:  # a full disk, a folder made unwritable: Tune's own writes failed
            failure = disk_error(err)
            if failure is None:
                raise
        finally:
            SEARCHING.clear()
            logging.getLogger("ray.tune.tune").removeFilter(said_stopping)  # a later Tune run of a notebook's: Tune's
            with contextlib.suppress(OSError):  # a full disk cannot take the status either
                fmt.update_status(folder, status)
        if failure is not None:  # it read "a bug in valley", its folder "running", with no way on
            raise SearchError(f"the search stopped: {failure.strerror or failure}"
                              f"{f': {failure.filename}' if failure.filename else ''}; the trials it finished are "
                              f"in {folder}: free space or make it writable, then `valley resume {folder}`")
        with ctrl_c_after_tables():
            prune_checkpoints(folder)  # Tune's last snapshot is on disk now
            table = write_tables(folder)  # before anything is deleted: a kill after it leaves the tables
            kept = ""
            if status == fmt.COMPLETED:  # after Ctrl-C Tune calls a stopped running trial terminated: it must resume
                kept, dropped = drop_weights(folder, trials, rows, keep_weights, table)
                if dropped:
                    table.loc[table["trial_id"].isin(dropped), "has_weights"] = False
                    write_trial_tables(folder, table)
                slim_finished(trials, rows)
                if (folder / fmt.OPTUNA_JOURNAL).exists():
                    from search.optuna_study import close_unfinished

                    close_unfinished(folder)
            return finish(folder, status, say, table, kept)


def said_stopping(record: logging.LogRecord) -> bool:
    """Tune's warning at Ctrl-C (or SIGTERM), in valley's words: it offered "Press CTRL+C ... to skip" its last
    snapshot, as if that lost nothing, and named neither the tables nor `valley resume`, which follow."""
    if not record.getMessage().startswith("Stop signal received"):
        return True
    print("valley: stopping: Tune saves where the search stands, then trials.csv is written and the command that "
          "resumes it printed (a second Ctrl-C skips that save: `valley resume` goes on from Tune's previous one)",
          file=sys.stderr, flush=True)
    return False


def disk_error(err: BaseException) -> OSError | None:
    """The OSError a failure of Tune's comes from (Tune wraps a callback's in a TuneError), if any."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def ctrl_c_after_tables() -> Iterator[None]:
    """Ctrl-C (or SIGTERM) once the trials have ended waits until trials.csv is written, then takes effect:
    one that came as the last trial ended, between Tune's handler and the tables, lost them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def longer_before_a_cut(folder: Path) -> str:
    """What trains a search's stopped trials longer before a cut, as its command takes it: --grace-period was
    offered after BOHB's HyperBand and in a plan's stage, which both refuse it."""
    from analysis.valley import ASHA_LONGER

    scheduler = (fmt.read_manifest(folder).get("options") or {}).get("scheduler")
    if scheduler == "hyperband":
        return "HyperBand's brackets cut by design, its last one training every trial to --max-epochs"
    if (folder.parent / fmt.PLAN_STATE).exists():
        return ("a larger grace_period for the stage (in the plan file, or --stage STAGE.grace_period=N as a plan "
                "starts) or budget trains each longer before a cut" if scheduler == "asha"
                else "a larger budget trains each longer")
    return ASHA_LONGER if scheduler == "asha" else "a larger budget trains each longer"


def finish(folder: Path, status: str, say: Callable[..., None], trials: pd.DataFrame, kept: str = "") -> Path:
    """Print the best five of ``trials`` (as trials.csv holds them), then ``kept`` (what became of the finished
    trials' weights) and what else the user should know."""
    from analysis.load import top_table
    from analysis.valley import chance_warning, cut_while_improving

    table, ended = top_table(trials, folder), f"valley: {status}: {len(trials)} trials in {folder / 'trials.csv'}"
    every_failed = len(trials) and trials["status"].isin(fmt.FAILED).all()
    if status != fmt.INTERRUPTED and every_failed:  # the last line names the first error, not "completed"
        tell(say, ended)  # under --quiet too: the exit status alone said it
        tell(say, table)
        return folder
    say(table)
    if kept:
        say(f"valley: {kept}")
    if status == fmt.INTERRUPTED:
        if not (folder.parent / fmt.PLAN_STATE).exists():  # a plan says how it goes on
            tell(say, f"valley: interrupted; continue with `valley resume {folder}`")
    else:
        if warning := chance_warning(trials):
            tell(say, f"valley: warning: {warning}")
        if cut := cut_while_improving(trials, longer_before_a_cut(folder)):
            say(f"valley: note: {cut}")
        failed = int((trials["status"] == "failed").sum()) if "status" in trials else 0
        if failed:  # nothing pointed to the command that runs them again
            tell(say, f"valley: {failed} trial{'s' * (failed != 1)} failed (the error column of trials.csv); "
                      f"`valley resume --retry-failed {folder}` runs {'them' if failed != 1 else 'it'} again from the "
                      "last checkpoint")
    say(ended)
    return folder


__all__ = ["SearchError", "SearchOptions", "SpaceError", "run_search"]
