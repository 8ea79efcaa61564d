"""Faults inside a search: crashing, killed and diverging trials; Ctrl-C and `valley resume`.

A failed trial is not a failed search (STYLE rule 6): every test here checks that the search
still ends `completed` with one row per trial, and that the faulty trial reads what happened.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.load import load, read_results, top_table
from search.run import SearchOptions, run_search
from spaces import load_space
from tests.drivers import valley, wait_gone


FAULTY = """\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: 3
grid:
  - {hidden: [16]}
  - {hidden: [100000000000]}        # 25 TB of weights: the allocator refuses, every attempt
  - {hidden: [16], lr: 1.0e+30}     # NaN loss in the first epoch
  - {hidden: [32]}
params:
  lr: 0.01
  batch_size: 32
  checkpoint_s: 0                   # a checkpoint every epoch (the default is at most every 30 s)
"""


def search(space_path, tmp_path, **options):
    opts = SearchOptions(storage=str(tmp_path / "results"), **{"quiet": True, **options})
    return run_search(load_space(space_path), opts)


@pytest.mark.ray
def test_a_search_whose_every_trial_diverged_exits_3_naming_the_first_error(ray_session, write_space, tmp_path,
                                                                            capsys):
    """It printed an empty table and exited 0, 'completed', as if something had been learned."""
    from search import cli
    from search.cli_options import EXIT_ALL_FAILED

    path = write_space("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 2\n"
                       "grid:\n  - {hidden: [16]}\n  - {hidden: [8]}\nparams: {lr: 1.0e+30, batch_size: 32}\n")
    code = cli.main(["search", str(path), "--storage", str(tmp_path), "--name", "nan", "--num-cpus", "2"])
    out = capsys.readouterr().out
    assert code == EXIT_ALL_FAILED == 3, out
    assert "no trial of 2 has a best_val_loss: 2 failed or diverged; the first: " in out
    assert "train loss is nan" in out and str(tmp_path / "nan" / "trials.csv") in out
    assert out.strip().splitlines()[-1].startswith("no trial of 2 has a best_val_loss")  # the README: its last line
    # --quiet said nothing at all: the exit status alone told of it
    code = cli.main(["search", str(path), "--storage", str(tmp_path), "--name", "quiet", "--num-cpus", "2", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 3 and not out and "no trial of 2 has a best_val_loss: 2 failed or diverged; the first: " in err


def trial_of(folder: Path, **config) -> Path:
    """The folder of the one trial whose params.json holds ``config``."""
    found = [p.parent for p in folder.glob("*/params.json")
             if all(json.loads(p.read_text()).get(k) == v for k, v in config.items())]
    assert len(found) == 1, f"{len(found)} trials match {config}"
    return found[0]


@pytest.mark.ray
def test_crash_is_retried_then_failed_and_divergence_is_not_retried(ray_session, write_space, tmp_path,
                                                                     capsys):
    folder = search(write_space(FAULTY), tmp_path, name="faulty", max_failures=2, quiet=False)
    out, err = capsys.readouterr()
    trials = pd.read_csv(folder / "trials.csv")
    assert json.loads((folder / "valley.json").read_text())["status"] == "completed"
    assert len(trials) == 4
    by_row = {int(json.loads((folder / t / "params.json").read_text())["variant"]): row
              for t, row in trials.set_index("trial_id").iterrows()}
    assert by_row[0]["status"] == by_row[3]["status"] == "completed"

    oom = by_row[1]
    assert oom["status"] == "failed" and "can't allocate memory" in oom["error"]
    errors = (trial_of(folder, variant=1) / "error.txt").read_text()
    assert errors.count("Failure #") == 3  # the first attempt and --max-failures 2 retries
    assert out.count("crashed (") == 2 and "retry 2 of 2 from its last checkpoint" in out
    # the error's first line, and where its traceback is: Tune printed 40 lines a failure, under --quiet too
    said = next(line for line in out.splitlines() if line.startswith("      error: RuntimeError"))
    assert "can't allocate memory" in said
    assert said.endswith(f"(traceback: {trial_of(folder, variant=1) / 'error.txt'})")
    assert "Traceback" not in out + err and "Trials did not complete" not in out + err

    nan = by_row[2]
    assert nan["status"] == "diverged" and "train loss is nan" in nan["error"]
    assert (trial_of(folder, variant=2) / "error.txt").read_text().count("Failure #") == 1  # not retried
    assert " diverged " in out
    assert read_results(trial_of(folder, variant=2)) == []  # nothing was reported, NaN or otherwise

    best = top_table(trials, folder)
    assert "diverged" not in best and "failed" not in best
    # nothing pointed to the command that runs a failed trial again
    assert (f"valley: 1 trial failed (the error column of trials.csv); `valley resume --retry-failed {folder}` runs "
            "it again from the last checkpoint") in out
    # which Tune does, with the diverged one: a resume says so (it diverges again, as it did)
    from search.resume import resume

    resume(folder, retry_failed=True)
    out = capsys.readouterr().out
    assert ("valley: note: --retry-failed runs the 1 diverged trial again too (Tune restarts every trial that ended "
            "in an error); from the same checkpoint and seed it diverges again") in out
    again = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    assert again.loc[trial_of(folder, variant=2).name, "status"] == "diverged"


@pytest.mark.ray
def test_a_disk_error_in_tunes_writes_ends_the_search_in_one_line_with_how_to_go_on(ray_session, tmp_path):
    """A full disk (or a folder made unwritable for a few seconds) read 'a bug in valley' after 130 lines of
    tracebacks, the folder 'running', and no way on. Tune's own writes are what fail; here a callback's, which
    Tune wraps as it does its own."""
    import errno

    from ray import tune

    from analysis import format as fmt
    from search.run import SearchError, fit_and_finish

    class FullDisk(tune.Callback):
        def on_trial_result(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "exp" / "experiment_state.json"))

    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / fmt.MANIFEST).write_text(json.dumps({"status": "running"}))
    tuner = tune.Tuner(lambda config: tune.report({"x": 1.0}), run_config=tune.RunConfig(
        storage_path=str(tmp_path), name="exp", callbacks=[FullDisk()]))
    with pytest.raises(SearchError, match=r"^the search stopped: No space left on device: .*experiment_state.json; "
                                          r"the trials it finished are in .*: free space or make it writable, then "
                                          r"`valley resume .*exp`$"):
        fit_and_finish(tuner, folder, print, [], "all")
    assert fmt.read_manifest(folder)["status"] == "interrupted"


@pytest.mark.ray
def test_killed_trial_process_resumes_from_its_checkpoint(ray_session, write_space, tmp_path, capsys,
                                                          monkeypatch):
    """SIGKILL of a trial's worker (what the OOM killer does): the trial goes on from its checkpoint,
    and the copies of checkpoints on their way to and from Tune leave nothing in the temporary folder."""
    from search.progress import Progress

    from trainables.report import staging_root

    space = write_space(FAULTY.replace("max_epochs: 3", "max_epochs: 30").split("grid:")[0]
                        + "grid:\n  - {hidden: [64]}\nparams:\n  lr: 0.001\n  batch_size: 16\n  checkpoint_s: 0\n")
    killed: dict[str, int] = {}
    seen_by_progress = Progress.on_trial_result

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # in the driver, as results arrive (result.json reaches the folder only every few seconds)
        if not killed and result["epoch"] >= 3:
            killed.update(pid=result["pid"], epoch=result["epoch"])
            os.kill(result["pid"], signal.SIGKILL)
            # killed waiting in tune.report, its checkpoint's folder open
            killed.update(staged=len(list(staging_root(result["pid"]).glob("checkpoint-*"))))
        return seen_by_progress(self, iteration, trials, trial, result, **info)

    monkeypatch.setattr(Progress, "on_trial_result", on_trial_result)
    folder = search(space, tmp_path, name="killed", max_failures=1, quiet=False)
    assert killed
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 1 and trials.loc[0, "status"] == "completed" and trials.loc[0, "epochs"] == 30
    rows = [json.loads(line) for line in next(folder.glob("*/result.json")).read_text().splitlines()]
    after = [row for row in rows if row["pid"] != killed["pid"]]
    assert after, "no result came from a new worker process"
    # resumed from a checkpoint, not from scratch: the new process never reported epoch 1
    assert 1 < after[0]["epoch"] <= killed["epoch"] + 1
    assert [row["epoch"] for row in after] == list(range(after[0]["epoch"], 31))
    assert "retry 1 of 1 from its last checkpoint" in capsys.readouterr().out
    assert killed["staged"] == 1 and not staging_root(killed["pid"]).exists()
    assert not list(staging_root(after[0]["pid"]).iterdir())  # the restored copy removed too


NAN_UNDER_OPTUNA = """\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: 3
grid:
  - {hidden: [16]}
  - {hidden: [16], lr: 1.0e+30}
params:
  batch_size: 32
  lr: {loguniform: [1.0e-3, 1.0e-2]}
"""


@pytest.mark.ray
def test_nan_under_optuna_and_asha_fails_that_trial_only(ray_session, write_space, tmp_path):
    """The issue's done-when: the search completes, the trial reads 'diverged', no Optuna trial RUNNING."""
    from search.optuna_study import ValleyOptunaSearch

    folder = search(write_space(NAN_UNDER_OPTUNA), tmp_path, name="tpe-nan", search="optuna",
                    scheduler="asha", samples=5, warm_points=({"variant": 1, "lr": 0.005},))
    assert json.loads((folder / "valley.json").read_text())["status"] == "completed"
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 5
    diverged = trials[trials["config/lr"] == 1e30]
    assert len(diverged) >= 1 and set(diverged["status"]) == {"diverged"}
    assert set(trials[trials["config/lr"] != 1e30]["status"]) <= {"completed", "stopped"}
    best = trials[~trials["status"].isin(["failed", "diverged"])]["best_val_loss"].idxmin()
    assert trials.loc[best, "config/lr"] != 1e30

    searcher = ValleyOptunaSearch()
    searcher.restore_from_dir(str(folder))  # the state `valley resume` would continue from
    states = [trial.state.name for trial in searcher._ot_study.trials]
    assert len(states) == 5 and "RUNNING" not in states
    assert states.count("FAIL") == len(diverged)


def test_optuna_searcher_fails_a_nan_it_is_told():
    """Second line of defence: a NaN reaching the searcher ends FAIL, not RUNNING for ever."""
    from ray import tune

    from search.optuna_study import ValleyOptunaSearch

    searcher = ValleyOptunaSearch(space={"lr": tune.uniform(0, 1)}, metric="val_loss", mode="min")
    for trial_id, value in (("a", float("nan")), ("b", 0.5), ("c", float("inf"))):
        assert searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, {"val_loss": value})
    assert [t.state.name for t in searcher._ot_study.trials] == ["FAIL", "COMPLETE", "FAIL"]


def test_bohb_searcher_takes_back_a_trial_its_saved_state_does_not_know(capsys):
    """A restored BOHB searcher can be older than the trials restored with it; a result of a trial it
    never suggested crashed the resumed search (KeyError in TuneBOHB). Its parameters come from the
    ``config/...`` keys every result carries, and BOHB's model learns from it."""
    from ray import tune

    from search.bohb import ValleyBOHB

    searcher = ValleyBOHB(seed=0)
    searcher.set_search_properties("val_loss", "min", {"lr": tune.loguniform(1e-3, 1e-2), "batch_size": 8})
    assert set(searcher.suggest("known")) == {"lr"}
    result = {"val_loss": 0.5, "config/lr": 0.005, "config/batch_size": 8, "hyperband_info": {"budget": 3}}
    searcher.on_trial_result("restored", result)
    assert searcher.trial_to_params["restored"] == {"lr": 0.005} and searcher.adopted == {"restored"}
    assert len(searcher.bohber.configs[3]) == 1 and searcher.bohber.losses[3] == [0.5]
    assert "taken back with the parameters in their results" in capsys.readouterr().out
    searcher.on_trial_complete("restored", result)
    searcher.on_trial_complete("finished-before-the-snapshot")  # TuneBOHB: KeyError
    assert "restored" not in searcher.trial_to_params


def test_resumed_training_matches_uninterrupted_training(tmp_path):
    """A retried or resumed trial that re-runs epochs gets the numbers it had: finished trials stay unchanged."""
    from trainables.data import load_dataset
    from trainables.loop import train
    from trainables.report import LocalReporter

    data = load_dataset("synthetic")
    config = {"family": "mlp", "hidden": [32], "dropout": 0.3, "batch_size": 16, "seed": 3,
              "keep_optimizer": True}  # the 2-epoch run is finished: only then can it go on to 4
    straight = LocalReporter()
    train({**config, "max_epochs": 4}, data=data, reporter=straight)
    train({**config, "max_epochs": 2}, data=data, reporter=LocalReporter(tmp_path / "ckpt"))
    resumed = LocalReporter(tmp_path / "ckpt")
    train({**config, "max_epochs": 4}, data=data, reporter=resumed)
    keys = ("epoch", "train_loss", "val_loss", "val_acc", "test_loss")
    assert [[row[k] for k in keys] for row in resumed.history] == [[row[k] for k in keys]
                                                                    for row in straight.history[2:]]


def test_resume_sets_aside_trials_the_snapshot_does_not_name(tmp_path):
    """The driver writes params.json and result.json as trials run; a trial begun after the last
    snapshot a killed driver wrote is not Tune's any more: its files move to .unrestored."""
    from search.progress import UNRESTORED, set_aside_unrestored

    for trial in ("known", "begun-after"):
        (tmp_path / trial).mkdir()
        (tmp_path / trial / "params.json").write_text("{}")
        (tmp_path / trial / "result.json").write_text('{"epoch": 1}\n')
    state = json.dumps({"trial_id": "known", "relative_logdir": "known", "status": "RUNNING"})
    snapshot = tmp_path / "experiment_state-2026-01-01_00-00-00.json"
    snapshot.write_text('{"trial_data": [[' + json.dumps(state) + ', "{}"]]')  # being written
    assert set_aside_unrestored(tmp_path) == []  # an unreadable snapshot moves nothing
    snapshot.write_text(json.dumps({"trial_data": [[state, "{}"]]}))
    assert set_aside_unrestored(tmp_path) == ["begun-after"]
    assert (tmp_path / "known" / "result.json").exists()
    assert (tmp_path / UNRESTORED / "begun-after" / "result.json").read_text() == '{"epoch": 1}\n'


def test_pruning_keeps_what_the_snapshot_on_disk_can_restore(tmp_path):
    """Only checkpoints older than the one Tune's newest snapshot names (less one) are deleted."""
    from search.progress import prune_checkpoints

    for trial, count in (("t1", 6), ("t2", 3), ("t3", 2)):
        for index in range(count):
            (tmp_path / trial / f"checkpoint_{index:06d}").mkdir(parents=True)

    def snapshot(name: str, named: dict[str, str | None]) -> None:
        entries = [[json.dumps({"trial_id": t, "relative_logdir": t, "status": "RUNNING"}),
                    json.dumps({"last_result": {"checkpoint_dir_name": c} if c else {}})] for t, c in named.items()]
        (tmp_path / f"experiment_state-{name}.json").write_text(json.dumps({"trial_data": entries}))

    snapshot("2026-01-01_00-00-00", {"t1": "checkpoint_000005", "t2": "checkpoint_000002", "t3": None})
    snapshot("2026-01-01_00-00-09", {"t1": "checkpoint_000003", "t2": "checkpoint_000001", "t3": None})
    assert prune_checkpoints(tmp_path) == 2  # the newest snapshot by name, as Tune restores
    left = {t: sorted(c.name[-1] for c in (tmp_path / t).iterdir()) for t in ("t1", "t2", "t3")}
    assert left == {"t1": ["2", "3", "4", "5"], "t2": ["0", "1", "2"], "t3": ["0", "1"]}
    (tmp_path / "experiment_state-2026-01-01_00-00-10.json").write_text('{"trial_data": [["{')  # mid-write
    assert prune_checkpoints(tmp_path) == 0


# --- Ctrl-C of a driver, then `valley resume` (own Ray, in a subprocess) --------------------------

RESUMABLE = """\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: 12
params:
  hidden: {choice: [[16], [32]]}
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  batch_size: 16
  checkpoint_s: 0
"""


KEPT = ["epochs", "best_val_loss", "n_params", "config/hidden", "config/lr"]  # a finished trial's record


def epochs_on_disk(folder: Path) -> int:
    """Epochs whose results reached the experiment folder (Tune syncs result.json every few seconds)."""
    return sum(len(read_results(p.parent)) for p in folder.glob("*/params.json"))


def checkpointed_epochs(folder: Path) -> int:
    """Epochs checkpointed so far: trials write checkpoints straight to the folder, so this moves first."""
    return sum(max((int(c.name.split("_")[1]) + 1 for c in trial.glob("checkpoint_*")), default=0)
               for trial in folder.glob("*_*") if trial.is_dir())


def wait_for_fresh_checkpoint(driver: subprocess.Popen, folder: Path, since: float) -> None:
    """Until the driver's trials write a checkpoint (a resumed trial rewrites old indices, hence mtime)."""
    def written(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except FileNotFoundError:  # pruned meanwhile
            return 0.0

    deadline = time.monotonic() + 90
    while driver.poll() is None and time.monotonic() < deadline:
        if any(written(p) > since for p in folder.glob("*/checkpoint_*/state.pt")):
            return
        time.sleep(0.05)  # Ray's start-up alone takes ~10 s


def interrupt_after_progress(driver: subprocess.Popen, folder: Path, since: float, how: str = "ctrl-c") -> str:
    """Once the driver has checkpointed a fresh epoch, Ctrl-C, SIGTERM to its process group as `timeout`
    sends it, or close its output as `| head` does; returns what it printed (nothing, for the last)."""
    wait_for_fresh_checkpoint(driver, folder, since)
    assert driver.poll() is None, f"the search ended before it was stopped: {driver.communicate()[0]}"
    if how == "ctrl-c":
        os.kill(driver.pid, signal.SIGINT)
    elif how == "ctrl-c twice":  # Tune's warning after the first: "Press CTRL+C ... to skip" its last snapshot
        os.kill(driver.pid, signal.SIGINT)
        time.sleep(0.3)
        os.kill(driver.pid, signal.SIGINT)
    elif how == "sigterm-group":  # `timeout`, a shell or a batch system ending the job: the driver's whole group
        os.killpg(driver.pid, signal.SIGTERM)
    else:
        driver.stdout.close()  # its reader goes away: the driver's next line meets a closed pipe
        driver.wait(timeout=90)
        return ""
    out, _ = driver.communicate(timeout=90)
    return out


@pytest.mark.ray
@pytest.mark.parametrize("how", ["sigterm-group", "ctrl-c twice"])
def test_sigterm_or_ctrl_c_twice_ends_a_search_as_ctrl_c_does(write_space, tmp_path, how):
    """`kill`, `timeout` or a batch system's time limit: Ray's core worker answered SIGTERM with a stack dump
    and an abort (exit 134), and the experiment had no trials.csv. Now it ends as Ctrl-C ends it. Sent to
    the driver's whole process group (`timeout`), it reached Ray's GCS and raylet as well, and the driver
    waited a minute on the dead GCS, then aborted: Ray's processes are now in groups of their own. (The group
    holds the driver: this is the driver's SIGTERM as well.) A second Ctrl-C raised out of Tune's fit ended
    the search on "valley: interrupted" alone, without trials.csv or the resume command (seen by a review)."""
    storage = tmp_path / "results"
    driver = valley("search", str(write_space(RESUMABLE)), "--name", "stop", "--storage", str(storage),
                    "--samples", "2", "--num-cpus", "2", cwd=tmp_path)
    try:
        out = interrupt_after_progress(driver, storage / "stop", time.time() - 1, how=how)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out
    assert f"valley: interrupted; continue with `valley resume {storage / 'stop'}`" in out
    # Tune's "Press CTRL+C (or send SIGINT/SIGKILL/SIGTERM) to skip", in valley's words
    assert "Stop signal received" not in out and "valley: stopping: Tune saves where the search stands" in out
    assert json.loads((storage / "stop" / "valley.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(storage / "stop" / "trials.csv")) >= 1  # what had started, kept
    assert not wait_gone(driver.pid), "Ray processes outlived the stopped driver"


@pytest.mark.ray
def test_ctrl_c_then_resume_finishes_every_trial_once(write_space, tmp_path, events):
    """Ctrl-C of a search, then its resumption stopped by its reader going away (`valley resume ... | head`),
    each exit 130, 'interrupted'; then every trial exactly once, in trials.csv, in Optuna's study (the
    searcher's and its journal) and in MLflow."""
    from mlflow.tracking import MlflowClient

    from search.optuna_study import ValleyOptunaSearch, load_study

    storage = tmp_path / "results"
    folder = storage / "tpe"
    started = time.time()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = valley("search", str(write_space(RESUMABLE)), "--name", "tpe", "--storage", str(storage),
                    "--search", "optuna", "--samples", "6", "--num-cpus", "2", "--log", "mlflow",
                    "--mlflow-uri", uri, cwd=tmp_path)
    for attempt in range(2):  # the search, then its first resumption
        out = interrupt_after_progress(driver, folder, started, how=("ctrl-c", "reader gone")[attempt])
        assert driver.returncode == 130, out
        assert f"valley: interrupted; continue with `valley resume {folder}`" in out or attempt == 1
        assert "Tuner.restore" not in out  # Tune's advice, which a valley experiment is not continued with
        assert json.loads((folder / "valley.json").read_text())["status"] == "interrupted"
        assert not wait_gone(driver.pid), "Ray processes outlived the interrupted driver"
        if attempt == 0:
            before = pd.read_csv(folder / "trials.csv")
            finished = before[before["status"] == "completed"].set_index("trial_id")[KEPT].to_dict("index")
            started = time.time()
            driver = valley("resume", str(folder), cwd=tmp_path)

    resumed = valley("resume", str(folder), cwd=tmp_path)
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    assert "is already reported" not in out  # Optuna, once per epoch a resumed trial reported before
    assert json.loads((folder / "valley.json").read_text())["status"] == "completed"
    after = pd.read_csv(folder / "trials.csv")
    assert len(after) == 6 and after["trial_id"].is_unique and (after["status"] == "completed").all()
    final = after.set_index("trial_id")[KEPT].to_dict("index")
    assert {t: final[t] for t in finished} == finished
    searcher = ValleyOptunaSearch()
    searcher.restore_from_dir(str(folder))  # Optuna's study went on from its saved state
    assert [t.state.name for t in searcher._ot_study.trials] == ["COMPLETE"] * 6
    study = load_study(folder)  # and so did its journal, which optuna-dashboard reads
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    epochs = pd.read_parquet(folder / "epochs.parquet").sort_values("epoch")
    assert sorted(t.value for t in study.trials) == pytest.approx(
        sorted(epochs.groupby("trial_id").tail(1)["val_loss"]))
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tpe").experiment_id])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(after["trial_id"])  # a resumed trial kept its run
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert sorted(steps) == list(range(1, 13)) and run.info.status == "FINISHED"
    for trial in after["trial_id"]:  # TensorBoard: epochs reported again replace the earlier ones
        curve = events(folder / trial).Scalars("ray/tune/val_loss")
        assert [s.step for s in curve] == list(range(1, 13))
    assert not wait_gone(resumed.pid)


# --- SIGKILL of the driver at random moments, three times, then `valley resume` ----------------------

TWELVE = """\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: 10
grid:
  - {hidden: [8]}
  - {hidden: [16]}
  - {hidden: [24]}
  - {hidden: [32]}
params:
  lr: {grid: [0.001, 0.003, 0.01]}
  batch_size: 8
  checkpoint_s: 0
"""


@pytest.mark.ray
def test_driver_killed_three_times_then_resumed(write_space, tmp_path):
    """The issue's done-when: 12 trials in trials.csv, none twice, the finished ones unchanged."""
    import random

    from analysis.load import load_experiment

    rng = random.Random(0)
    storage = tmp_path / "results"
    folder = storage / "twelve"
    command = ["search", str(write_space(TWELVE)), "--name", "twelve", "--storage", str(storage),
               "--num-cpus", "2"]
    finished: dict[str, dict] = {}  # trial id -> what trials.csv says about a completed trial
    progress, killed = [], []
    for kill in range(3):
        started = time.time()
        driver = valley(*command)
        wait_for_fresh_checkpoint(driver, folder, started)
        time.sleep(rng.uniform(0, 0.5))
        assert driver.poll() is None, f"the search ended before kill {kill + 1}: {driver.communicate()[0]}"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        killed.append(driver.pid)  # its local Ray must go too: checked at the end, while the next one runs
        left = load(folder)  # valley.json still says 'running': nobody was left to say otherwise
        assert json.loads((folder / "valley.json").read_text())["status"] == "running"
        # it names the last driver that recorded itself: a resumed one killed while Ray was still starting
        # (an old trial worker's late checkpoint can end the wait above) had not written its own yet
        assert left.status == "interrupted" and any(f"driver (pid {pid} " in w and "is gone" in w
                                                    for pid in killed for w in left.warnings), left.warnings

        trials, _ = load_experiment(folder)
        now = ({} if trials.empty else  # Tune syncs params.json and result.json every few seconds
               trials[trials["status"] == "completed"].set_index("trial_id")[KEPT].to_dict("index"))
        assert {t: now.get(t) for t in finished} == finished  # finished trials stay finished, unchanged
        finished = now
        progress.append(epochs_on_disk(folder) + checkpointed_epochs(folder))
        command = ["resume", str(folder)]

    assert progress == sorted(progress) and len(finished) < 12
    resumed = valley(*command)
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    assert json.loads((folder / "valley.json").read_text())["status"] == "completed"
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 12 and trials["trial_id"].is_unique
    assert not trials.duplicated(["config/hidden", "config/lr"]).any()  # the grid was not drawn again
    assert (trials["status"] == "completed").all() and (trials["epochs"] == 10).all()
    final = trials.set_index("trial_id")[KEPT].to_dict("index")
    assert {t: final[t] for t in finished} == finished
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(epochs) == 12 * 10 and not epochs.duplicated(["trial_id", "epoch"]).any()
    for pid in [*killed, resumed.pid]:
        assert not wait_gone(pid), f"processes of driver {pid} (its local Ray) outlived it"


@pytest.mark.slow
def test_ctrl_c_in_the_quickstarts_first_search_stops_the_quickstart(tmp_path):
    """Ctrl-C while the quickstart's MLP grid trains: exit 130, that search 'interrupted', and the clock
    search never starts (it went on to two minutes of clocks before)."""
    driver = valley("quickstart", "--storage", str(tmp_path), "--num-cpus", "2", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while driver.poll() is None and time.monotonic() < deadline and not list(
                tmp_path.glob("quickstart-*/mlp-rough/*/result.json")):
            time.sleep(0.1)
        assert driver.poll() is None, driver.communicate()[0]
        os.kill(driver.pid, signal.SIGINT)
        out, _ = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out
    (folder,) = tmp_path.glob("quickstart-*")
    assert json.loads((folder / "mlp-rough" / "valley.json").read_text())["status"] == "interrupted"
    assert not (folder / "clock-encodings").exists() and "quickstart 2/2" not in out


def test_ctrl_c_as_the_last_trial_ends_waits_for_trials_csv():
    """One Ctrl-C in nine left a bare 'valley: interrupted' and no trials.csv: it came after Tune's handler
    was gone, while the tables were being written. Now the tables are written first, then it takes effect."""
    from search.run import ctrl_c_after_tables

    written, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_after_tables():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler runs between bytecodes: this is where the tables were lost
            written.append("trials.csv")
    assert written == ["trials.csv"]
    assert signal.getsignal(signal.SIGINT) is before  # the handler it found, again


def test_resuming_a_completed_search_says_there_is_nothing_to_resume_and_rebuilds_missing_tables(tmp_path, capsys):
    """It started Ray to do nothing and printed every table again; a driver killed after its folder read
    'completed' and before its tables were written left no trials.csv, which this writes."""
    import shutil

    from search.resume import resume

    folder = tmp_path / "done"
    shutil.copytree(Path(__file__).parent / "data" / "asha-digits", folder)
    for table in ("trials.csv", "trials.parquet", "epochs.parquet"):
        (folder / table).unlink(missing_ok=True)
    assert resume(folder) == folder
    assert capsys.readouterr().out.strip() == (f"valley: {folder} has completed: nothing to resume (`valley resume "
                                               f"--retry-failed {folder}` runs its 1 failed or diverged trial again)")
    assert len(pd.read_csv(folder / "trials.csv")) == len(load(folder).trials) > 0
    # none failed: --retry-failed was offered, and started Ray to do nothing
    sound = shutil.copytree(Path(__file__).parent / "data" / "seeds-digits", tmp_path / "sound")
    assert resume(sound) == sound
    assert capsys.readouterr().out.strip() == f"valley: {sound} has completed: nothing to resume"
    # a search started with --quiet said nothing at all, exit 0: now on stderr
    manifest = json.loads((sound / "valley.json").read_text())
    manifest["options"]["quiet"] = True
    (sound / "valley.json").write_text(json.dumps(manifest))
    assert resume(sound) == sound
    assert capsys.readouterr().err.strip() == f"valley: {sound} has completed: nothing to resume"
