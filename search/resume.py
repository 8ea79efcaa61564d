"""Continue an interrupted experiment: finished trials stay, unfinished ones resume from checkpoints."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from analysis import format as fmt
from search.cluster import check_cluster
from search.data_check import load_data
from search.options import SearchError, SearchOptions
from search.ray_start import start_ray
from search.run import fit_and_finish, sayer, tell


def fewer_weights(folder: Path, keep: int | str, table: pd.DataFrame) -> str:
    """A completed search's weights beyond its best ``keep`` finished trials, deleted (``drop_weights``), and
    its tables rewritten; returns what became of them. ``table``: its trials, as loaded from the folder."""
    from analysis.load import write_tables
    from search.progress import delete_weights

    finished = table[table["status"].isin(fmt.DONE)] if "status" in table else table.iloc[:0]
    column = "config/keep_optimizer"
    everything = finished[column].eq(True) if column in finished else [False] * len(finished)
    said, dropped = delete_weights(folder, [(folder / str(trial_id), bool(whole)) for trial_id, whole
                                            in zip(finished["trial_id"], everything)], keep, table)
    if not dropped:
        held = int(finished["has_weights"].sum()) if "has_weights" in finished else 0  # as loaded: none went
        return (f"{held} finished trial{'s' * (held != 1)} hold{'s' * (held == 1)} weights, none beyond "
                f"--keep-weights {keep}: nothing deleted (weights deleted when it completed cannot come back)"
                + (f"; {said}" if said else ""))
    write_tables(folder)
    return said


def refuse_while_running(folder: Path, state: dict, command: str) -> None:
    """Two drivers on one folder would both write it: a search or plan whose driver still runs on this
    machine is not resumed beside it."""
    recorded = state.get("driver") or {}
    if state.get("status") == fmt.RUNNING and recorded.get("pid") != os.getpid() and fmt.driver_running(recorded):
        raise SearchError(f"{folder} is still running (its driver, pid {recorded['pid']}, is alive on this machine); "
                          f"stop it first (Ctrl-C where it runs, or `kill {recorded['pid']}`), then `{command} {folder}`")


def resume(folder: Path, retry_failed: bool = False, keep_weights: int | str | None = None) -> Path:
    """Restore the Tune experiment in ``folder`` and run it to the end.

    Trials that finished (completed, stopped by ASHA, failed or diverged) are kept as they are;
    unfinished ones continue from their last checkpoint, and the searcher (Optuna's study, Tune's
    grid) from its saved state. ``retry_failed`` also re-runs failed trials from their checkpoints.
    ``keep_weights`` replaces the search's ``--keep-weights`` (and on a completed search, deletes the
    weights it no longer keeps at once).
    """
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise SearchError(f"{folder} is not a folder; give an experiment folder that `valley search` made, "
                          "e.g. results/mlp-rough-digits-20261127-101500")
    manifest = fmt.read_manifest(folder)
    if not manifest:
        raise SearchError(f"{folder} is not a valley experiment (no {fmt.MANIFEST}); give a folder that "
                          "`valley search` made")
    refuse_while_running(folder, manifest, "valley resume")
    opts = SearchOptions.from_dict(manifest.get("options") or {})
    if keep_weights is not None:  # stored: a later resume keeps what this one was told
        opts = dataclasses.replace(opts, keep_weights=keep_weights)
        fmt.write_manifest(folder, {**manifest, "options": {**(manifest.get("options") or {}),
                                                            "keep_weights": keep_weights}})
    say = sayer(opts)
    if manifest.get("status") == fmt.COMPLETED and not retry_failed:  # Ray started to do nothing, every table again
        from analysis.load import load_experiment, write_tables

        # a driver killed once it had read 'completed', before its tables, left none
        table = load_experiment(folder)[0] if (folder / "trials.csv").exists() else write_tables(folder)
        if keep_weights is not None:
            tell(say, f"valley: {folder} has completed: {fewer_weights(folder, keep_weights, table)}")
            return folder
        errored = int(table.get("status", pd.Series(dtype=str)).isin(fmt.FAILED).sum())  # none: Ray did nothing
        tell(say, f"valley: {folder} has completed: nothing to resume" + (  # under --quiet too: it said nothing
            f" (`valley resume --retry-failed {folder}` runs its {errored} failed or diverged trial"
            f"{'s' * (errored != 1)} again)" if errored else ""))
        return folder
    from ray import tune

    from search.progress import UNRESTORED, set_aside_unrestored
    from search.state_files import clear_parts, unreadable_state
    from search.tuner import trainable
    from trainables import get_family

    if not tune.Tuner.can_restore(str(folder)):
        raise SearchError(f"{folder} has no Tune state to resume (it stopped before the first trial); "
                          "start it again with `valley search`")
    clear_parts(folder)
    unreadable = unreadable_state(folder)
    if unreadable:  # Tune would log the error, start afresh with nothing to run, and call that completed
        raise SearchError(f"{folder}: Tune's saved state cannot be read ({', '.join(unreadable)}: empty or cut short, "
                          "a driver killed while it copied them), so a resume would not know where the search "
                          "stood; the finished trials stay in the folder (`valley report` reads them); run the "
                          "rest as a new search with `valley search`")
    # where it read its files, VALLEY_DATA's folder included, which this shell may not set
    data = load_data(manifest["dataset"], opts.data_dir or (manifest.get("data") or {}).get("folder"))
    if data.fingerprint != manifest["data_fingerprint"]:
        raise SearchError(f"the data set {manifest['dataset']!r} differs from the one this experiment started "
                          f"with (fingerprint {data.fingerprint} != {manifest['data_fingerprint']}); "
                          "restore the original files or start a new search")
    say(f"valley: resuming {folder}")
    if retry_failed:  # Tune restarts every errored trial: a diverged one with them, to diverge again
        from analysis.load import load_experiment

        trials = load_experiment(folder)[0]
        diverged = int((trials["status"] == "diverged").sum()) if "status" in trials else 0
        if diverged:
            say(f"valley: note: --retry-failed runs the {diverged} diverged trial{'s' * (diverged != 1)} again too "
                "(Tune restarts every trial that ended in an error); from the same checkpoint and seed "
                f"{'they diverge' if diverged != 1 else 'it diverges'} again")
    unrestored = set_aside_unrestored(folder)
    if unrestored:
        say(f"valley: note: {len(unrestored)} trials began after the last snapshot the stopped driver wrote; "
            f"Tune does not know them, so others are drawn in their place and their files are kept in "
            f"{folder / UNRESTORED}")
    start_ray(opts, manifest["family"])
    check_cluster(opts, folder.parent)
    restored = trainable(get_family(manifest["family"]), data, manifest["grid"], opts)
    tuner = tune.Tuner.restore(str(folder), restored, resume_unfinished=True, resume_errored=retry_failed)
    fmt.update_status(folder, fmt.RUNNING)
    return fit_and_finish(tuner, folder, say, manifest["grid"], opts.keep_weights)
