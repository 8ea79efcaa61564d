"""Searches end to end through real Ray Tune (local, 2 CPUs), real Optuna, real torch."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from search.run import SearchError, SearchOptions, run_search
from spaces import load_space
from tests.drivers import driver

TINY = """\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: 4
grid:
  - {hidden: [4]}
  - {hidden: [32]}
  - {layers: 1}
  - {layers: 1, dropout: 0.2}
params:
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  batch_size: 32
"""


def search(space_path, tmp_path, **options):
    opts = SearchOptions(storage=str(tmp_path / "results"), quiet=True, **options)
    return run_search(load_space(space_path), opts)


@pytest.mark.ray
def test_asha_search_writes_one_row_per_trial(ray_session, write_space, tmp_path):
    # one trial at a time: ASHA's stops depend on the order results arrive in, which two at once left to chance
    # (a clean clone's CI run once saw ASHA stop none of the 8)
    folder = search(write_space(TINY), tmp_path, scheduler="asha", samples=2, name="tiny", max_concurrent=1)
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 8 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"completed", "stopped"}
    assert trials["stopped_by_scheduler"].any()  # ASHA stopped someone on 8 trials with grace 1
    assert (trials.loc[trials.status == "completed", "epochs"] == 4).all()
    assert trials["n_params"].gt(0).all()
    assert sorted(trials["config/hidden"].dropna().unique()) == ["[32]", "[4]"]
    # each pass over the grid with its own seed: two passes of one seed trained the same models twice
    assert not trials.duplicated([c for c in trials if c.startswith("config/")]).any()
    assert trials["config/seed"].value_counts().to_dict() == {0: 4, 1: 4}
    assert trials["test_acc"].between(0, 1).all() and trials["best_val_loss"].notna().all()
    manifest = json.loads((folder / "valley.json").read_text())
    assert manifest["status"] == "completed" and manifest["data_fingerprint"] and manifest["trials_planned"] == 8
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(epochs) == trials["epochs"].sum()
    from analysis.format import asha_stops  # each stop on record as decided, for a resume after a killed driver

    assert asha_stops(folder) == trials[trials["stopped_by_scheduler"]].set_index("trial_id")["epochs"].to_dict()


@pytest.mark.ray
def test_a_set_value_holds_in_every_grid_row_too(ray_session, write_space, tmp_path, capsys):
    """`--set l2=0.005` on mlp-rough trained the rows that set l2: 0.01 at 0.01, while valley.json recorded
    the override for every trial."""
    path = write_space("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 1\n"
                       "grid:\n  - {hidden: [4]}\n  - {hidden: [4], l2: 0.01}\nparams: {lr: 0.01, batch_size: 32}\n")
    path = write_space("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 1\n"
                       "grid:\n  - {hidden: [4]}\n  - {hidden: [8], l2: 0.01}\nparams: {lr: 0.01, batch_size: 32}\n")
    folder = run_search(load_space(path), SearchOptions(storage=str(tmp_path), name="set", overrides={"l2": 0.005}))
    assert "valley: note: --set l2 replaces what 1 of the 2 grid rows set" in capsys.readouterr().out
    assert pd.read_csv(folder / "trials.csv")["config/l2"].tolist() == [0.005, 0.005]
    assert json.loads((folder / "valley.json").read_text())["grid"][1] == {"hidden": [8], "l2": 0.005}


def test_a_set_value_that_makes_grid_rows_alike_runs_them_once(write_space):
    """`valley search clock-encodings --set encoding=class_class` trained 8 identical trials (the same seed) and
    the tables called them 8 seeds with a spread of 0."""
    from search.tune_space import with_overrides

    space = load_space(write_space("family: mlp\nmetric: val_loss\nmode: min\ngrid:\n  - {hidden: [4]}\n"
                                   "  - {hidden: [8]}\n  - {hidden: [8], l2: 0.01}\n  - {hidden: [16]}\n"
                                   "  - {hidden: [16], l2: 0.02}\n"))
    changed, note = with_overrides(space, {"hidden": [4]})
    assert [dict(row) for row in changed.grid] == [{"hidden": [4]}, {"hidden": [4], "l2": 0.01},
                                                   {"hidden": [4], "l2": 0.02}]
    assert note == "--set hidden replaces what 5 of the 5 grid rows set; 2 row(s) it made the same as another run once"
    # rows alike as written are refused by the space (spaces.parse_space); a --set that replaces a distribution of
    # the space says so too: `--set seed=0` ran 9 of clock-encodings' 27 trials, unsaid
    seeds = load_space(write_space("family: mlp\nmetric: val_loss\nmode: min\ngrid:\n  - {hidden: [4]}\n"
                                   "params:\n  seed: {grid: [0, 1, 2]}\n  lr: {loguniform: [1.0e-4, 0.1]}\n",
                                   "seeds.yaml"))
    assert with_overrides(seeds, {"seed": 0, "lr": 0.01})[1] == (
        "--set seed=0, lr=0.01 replaces the space's grid over seed (3 values), the space's loguniform over lr")
    assert with_overrides(seeds, {"hidden": [8], "seed": 0})[1] == (
        "--set hidden replaces what 1 of the 1 grid rows set; it replaces the space's grid over seed (3 values)")


@pytest.mark.ray
def test_a_search_in_process_leaves_the_signal_handlers_as_it_found_them(ray_session, write_space, tmp_path):
    """Tune leaves its SIGINT and SIGUSR1 handlers installed after its fit: in a notebook the next Ctrl-C
    went on stopping a search that had ended, and valley's SIGTERM-as-Ctrl-C outlived the search."""
    def handlers():
        return [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]

    path = write_space("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 1\n"
                       "grid:\n  - {hidden: [4]}\nparams: {lr: 0.01, batch_size: 32}\n")
    before = handlers()
    search(path, tmp_path, name="signals")
    assert handlers() == before


def test_sigterm_ends_a_search_started_with_sigint_ignored():
    """A script's background job inherits SIGINT ignored; SIGTERM passed on as SIGINT then did nothing (a
    search ran on to its end after `kill`, a dashboard served on). It is Ctrl-C all the same."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, time
        from search.options import search_signals
        with search_signals():
            try:
                print("ready", flush=True)
                time.sleep(30)
            except KeyboardInterrupt:
                print("stopped as by Ctrl-C", flush=True)
                sys.exit(130)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert child.stdout.readline().strip() == "ready"
    child.terminate()
    assert child.wait(timeout=20) == 130 and child.stdout.read().strip() == "stopped as by Ctrl-C"


@pytest.mark.ray
def test_optuna_search_samples_grid_rows(ray_session, write_space, tmp_path):
    folder = search(write_space(TINY), tmp_path, search="optuna", samples=4, max_epochs=2, name="tpe")
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    assert trials["config/lr"].between(1e-3, 1e-2).all()


@pytest.mark.ray
def test_optuna_asked_for_more_trials_than_a_discrete_space_holds_says_it_will_repeat_them(
        ray_session, write_space, tmp_path, capsys):
    """--search optuna --samples 50 on mlp-rough (14 grid rows, one seed) trained 36 exact repeats unremarked."""
    space = TINY.replace("lr: {loguniform: [1.0e-3, 1.0e-2]}", "lr: {choice: [1.0e-3, 1.0e-2]}")
    folder = search(write_space(space), tmp_path, search="optuna", samples=9, max_epochs=1, name="repeats")
    said = capsys.readouterr().err
    assert ("valley: warning: the space holds 8 distinct configurations and optuna is asked for 9 trials, so it will "
            "repeat some, each repeat the same training (the same seed); give --samples 8 or fewer") in said
    assert len(pd.read_csv(folder / "trials.csv")) == 9


@pytest.mark.ray
def test_optuna_search_runs_20_trials_without_samples(ray_session, write_space, tmp_path, recwarn):
    """20 trials by default; a choice of lists (hidden widths) is kept as lists in the journal, without
    Optuna's warning that lists may not survive its storage."""
    from search.optuna_study import load_study

    space = TINY.split("grid:")[0] + "params:\n  hidden: {choice: [[4], [16, 8]]}\n  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
    folder = search(write_space(space), tmp_path, search="optuna", max_epochs=1, name="tpe20")
    trials = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    assert len(trials) == 20 and set(trials["config/hidden"]) <= {"[4]", "[16, 8]"}
    study = {t.user_attrs["ray_trial_id"]: t.params["hidden"] for t in load_study(folder).trials}
    assert study == {t: json.loads(h) for t, h in trials["config/hidden"].items()}
    assert not [w for w in recwarn if "categorical distribution" in str(w.message)]


@pytest.mark.ray
def test_reference_mlp_grid_on_digits(ray_session, tmp_path):
    """The foundation's acceptance: 14 trials, each with n_params, best val accuracy above 90%."""
    folder = search("mlp-rough", tmp_path, dataset="digits", max_epochs=10, scheduler="asha", name="digits")
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 14 and trials["n_params"].nunique() == 8
    assert trials["best_val_acc"].max() > 0.90


@pytest.mark.ray
def test_workers_load_torch_before_a_trial_asks_for_them(ray_session):
    """A local Ray's workers import torch and the training loop before they take work (not torch's
    compiler, which the loop does not need), and Tune's trial actors carry no environment of their own,
    so Ray places them on those workers."""
    import os

    from ray.tune.execution.class_cache import _ActorClassCache

    @ray_session.remote(num_cpus=0)
    def loaded() -> list[str]:
        return sorted(m for m in ("torch", "torch._dynamo", "trainables.loop") if m in sys.modules)

    assert ray_session.get(loaded.remote()) == ["torch", "trainables.loop"]
    actor = _ActorClassCache().get(type("Trainable", (), {}))
    assert not actor._default_options["runtime_env"].get("env_vars")
    assert os.environ["PL_DISABLE_FORK"] == "1"  # what Tune set per actor, now set for the whole local Ray


@pytest.mark.ray
def test_a_trial_waits_for_its_starting_worker_rather_than_take_an_idle_one(ray_session, tmp_path):
    """Tune's actor reuse gave the worker freed by a short first trial to the second, stopping the
    second's own worker though it had its CPU and was starting: its start was lost and a new worker
    started for the third. The second trial now runs on its own worker, the idle one takes the rest."""
    from ray import tune

    from search.tuner import keep_workers_already_starting

    class Trial(tune.Trainable):
        def setup(self, config):
            time.sleep(2 if config["x"] == 1 else 0)  # the second trial's worker starts slowly

        def step(self):
            return {"pid": os.getpid(), "done": True}

        def reset_config(self, new_config):
            return True

        def save_checkpoint(self, checkpoint_dir):
            return {}

        def load_checkpoint(self, checkpoint):
            pass

    keep_workers_already_starting()
    grid = tune.Tuner(Trial, param_space={"x": tune.grid_search([0, 1, 2, 3])},
                      tune_config=tune.TuneConfig(reuse_actors=True),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="reuse", verbose=0)).fit()
    pids = {r.config["x"]: r.metrics["pid"] for r in grid}
    assert pids[1] != pids[0], pids
    assert len(set(pids.values())) == 2, pids  # no worker started in vain


def test_name_taken_asks_for_resume(write_space, tmp_path):
    (tmp_path / "results" / "taken").mkdir(parents=True)
    with pytest.raises(SearchError, match=r"already exists; continue it with `valley resume"):
        search(write_space(TINY), tmp_path, name="taken")


def test_bad_name_and_unwritable_storage(write_space, tmp_path):
    with pytest.raises(SearchError, match="--name must be letters"):
        search(write_space(TINY), tmp_path, name="../escape")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SearchError, match="is not writable"):
        run_search(load_space(write_space(TINY)), SearchOptions(storage=str(blocker / "sub")))


def test_malformed_yaml_fails_fast_without_ray(write_space, tmp_path):
    path = write_space("family: mlp\nmetric: val_loss\nmode: min\nparams:\n  lr: {uniform: [0.1, 0.01]}\n")
    run = subprocess.run([sys.executable, "-m", "search.cli", "search", str(path), "--storage",
                          str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")})
    assert not (tmp_path / "ray").exists()  # Ray never started (each start writes its session there)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("valley: error: ") and "params.lr" in lines[0]
    assert "Ray" not in run.stderr and "Traceback" not in run.stderr


@pytest.mark.ray
def test_bohb_search_under_its_hyperband(ray_session, write_space, tmp_path, capsys, events):
    """--search bohb --scheduler hyperband: Tune's TuneBOHB over the grid rows (as a choice) and lr; its
    trials pause and go on, and TensorBoard's curve of each holds every epoch once."""
    folder = search(write_space(TINY), tmp_path, search="bohb", scheduler="hyperband", samples=6, name="bohb")
    assert capsys.readouterr().out == ""  # quiet: no per-trial lines, no board
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 6 and trials["status"].isin(["completed", "stopped"]).all()
    assert trials["config/lr"].between(1e-3, 1e-2).all()
    assert trials["epochs"].between(1, 4).all()
    for trial_id, n in zip(trials["trial_id"], trials["epochs"]):
        assert [e.step for e in events(folder / trial_id).Scalars("ray/tune/val_loss")] == list(range(1, n + 1))
        # a paused trial goes on from where it paused, not from an older checkpoint (or none): each epoch
        # was trained once
        trained = [json.loads(line)["epoch"] for line in (folder / trial_id / "result.json").read_text().splitlines()]
        assert trained == list(range(1, n + 1)), trained


def test_bohb_keeps_its_density_models_quiet(caplog):
    """Each fit of BOHB's density models warned that statsmodels' default random generator will change (a
    FutureWarning, printed even with --quiet), and a point of infinite expected improvement, which hpbandster
    handles itself, dumped five lines of arrays: valley drops those, and only those."""
    from ray import tune

    from search.bohb import ValleyBOHB

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        searcher = ValleyBOHB(seed=0)
        searcher.set_search_properties("val_loss", "min", {"lr": tune.loguniform(1e-3, 1e-2),
                                                          "batch_size": tune.choice([8, 16, 32])})
        rng = np.random.default_rng(0)
        for i in range(12):
            result = {"val_loss": float(rng.random()), "hyperband_info": {"budget": 3}}
            searcher.suggest(f"t{i}")
            searcher.on_trial_result(f"t{i}", result)
            searcher.on_trial_complete(f"t{i}", result)
        assert searcher.suggest("next") and 3 in searcher.bohber.kde_models  # its models were fitted
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, RuntimeWarning))] == []
    with caplog.at_level(logging.WARNING, logger="hpbandster"):
        for line in ("sampled vector: [0, 0.5] has EI value inf", "data in the KDEs:\n[[0.]]", "g(x) = inf",
                     "Truncated Normal failed for: datum=[0.5]"):
            logging.getLogger("hpbandster").warning(line)
    assert [record.getMessage() for record in caplog.records] == ["Truncated Normal failed for: datum=[0.5]"]


@pytest.mark.ray
def test_an_epoch_budget_stops_the_search_before_it_is_spent(ray_session, write_space, tmp_path, capsys):
    folder = run_search(load_space(write_space(TINY)), SearchOptions(
        storage=str(tmp_path / "results"), scheduler="asha", samples=50, budget_epochs=20, name="budget",
        progress_s=1e9))
    trials = pd.read_csv(folder / "trials.csv")
    assert trials["epochs"].sum() == 20  # Tune drops the epochs in flight: a margin for them left budget unspent
    # 50 samples of 4 grid rows are the most the budget lets run: "[ 34/90]" read as 34 of 90 where 36 ran (a review)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert lines and all(line.startswith(f"[{n + 1:>3}/<=200] ") for n, line in enumerate(lines)), lines
    assert json.loads((folder / "valley.json").read_text())["status"] == "completed"
    assert not trials["status"].isin(["failed", "unfinished"]).any()  # stopped by the budget, not failed


def test_an_epoch_budget_below_the_trials_at_once_is_spent_whole():
    """The stopper kept a margin of an epoch per trial at once: a budget of 6 with 6 at once (16 CPUs) stopped
    the search after its first epoch."""
    from search.tuner import EpochBudget

    budget = EpochBudget(6)
    assert not any(budget(f"t{i}", {"training_iteration": 1}) for i in range(5))
    assert not budget("t0", {"training_iteration": 1})  # the same epoch again (a resumed trial) counts once
    assert budget("t5", {"training_iteration": 1}) and budget.spent() == 6


@pytest.mark.ray
def test_a_grid_that_fits_its_epoch_budget_trains_every_epoch(ray_session, write_space, tmp_path):
    """A confirm stage's grid is sized to its allowance; the budget's stopper (which then stopped
    concurrency - 1 epochs early) cut its last seed short (then left out)."""
    path = write_space("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 2\n"
                       "grid:\n  - {seed: 0}\n  - {seed: 1}\n  - {seed: 2}\nparams: {hidden: [4], lr: 0.01}\n")
    folder = search(path, tmp_path, budget_epochs=6, name="fits")
    trials = pd.read_csv(folder / "trials.csv")
    assert trials["status"].tolist() == ["completed"] * 3 and trials["epochs"].sum() == 6


@pytest.mark.ray
def test_max_concurrent_and_a_budget_below_one_epoch_per_worker_limit_the_trials_at_once(
        ray_session, write_space, tmp_path):
    """--max-concurrent 1 runs one trial at a time (one worker) under grid search, whose generator Tune
    does not limit itself; a budget of 1 trial-epoch with 2 CPUs trains one epoch, not none."""
    from analysis.load import read_results

    def workers(folder):
        return {row["pid"] for trial in folder.glob("*/params.json") for row in read_results(trial.parent)}

    one = search(write_space(TINY), tmp_path, max_epochs=1, max_concurrent=1, name="one")
    assert len(pd.read_csv(one / "trials.csv")) == 4 and len(workers(one)) == 1
    tiny = search(write_space(TINY), tmp_path, budget_epochs=1, name="tiny")
    assert pd.read_csv(tiny / "trials.csv")["epochs"].fillna(0).sum() == 1 and len(workers(tiny)) == 1


def test_bohb_goes_with_its_own_scheduler(write_space, tmp_path):
    with pytest.raises(SearchError, match="--search bohb goes with --scheduler hyperband"):
        search(write_space(TINY), tmp_path, search="bohb", scheduler="asha")


@pytest.mark.ray
def test_a_trial_that_learns_nothing_reads_stalled_not_completed(ray_session, write_space, tmp_path, capsys):
    space = write_space("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 3\n"
                        "grid:\n  - {lr: 1.0e-9}\n  - {lr: 0.02}\nparams: {hidden: [16], batch_size: 32, "
                        "stall_epochs: 2}\n")
    folder = run_search(load_space(space), SearchOptions(storage=str(tmp_path / "results"), name="stall",
                                                         scheduler="asha", grace_period=3))
    trials = pd.read_csv(folder / "trials.csv").set_index("config/lr")
    assert trials.loc[1e-9, "status"] == "stalled" and trials.loc[0.02, "status"] == "completed"
    assert trials.loc[1e-9, "epochs"] == 3  # trained on: ASHA and the searcher see a poor result, not a failure
    assert " stalled " in capsys.readouterr().out


def test_a_finished_trials_line_gives_its_best_checkpoints_metrics_as_the_top_table_does(
        ray_session, write_space, tmp_path, capsys):
    """The line gave the last epoch's val_loss (and val_csd) while the top table ranks the best checkpoint's:
    one trial read 174.2 minutes on its line and 187.8 in the table (found by a review); a diverged trial's
    line, the epoch before its loss became NaN (3.4e16 read 6.4e29)."""
    space = write_space("family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 8\n"
                        "grid:\n  - {seed: 0}\n  - {seed: 1}\n  - {seed: 2}\n"
                        "  - {lr: 10, optimizer: sgd, early_stop: 0}\n"  # NaN at epoch 3, its best at 1
                        "params: {hidden: [16], lr: 0.5, batch_size: 16, early_stop: 1}\n")
    folder = run_search(load_space(space), SearchOptions(storage=str(tmp_path / "results"), name="best",
                                                         progress_s=1e9))
    trials = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    lines = {line.split("] ")[1].split()[0]: line for line in said}
    assert set(lines) == set(trials.index)
    past = 0
    for trial, row in trials.iterrows():
        assert f"val_loss {row['best_val_loss']:.4f}  val_acc {row['best_val_acc']:.4f}" in lines[trial], lines[trial]
        if row["best_epoch"] < row["epochs"]:
            past += 1
            assert f"best at epoch {row['best_epoch']} of {row['epochs']}" in lines[trial]
        else:
            assert f"epochs {row['epochs']}" in lines[trial]
    assert past  # early_stop: 1 ends a trial an epoch past its best: the case this test is about
    assert (trials["status"] == "diverged").sum() == 1


BOARD_SPACE = "family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 12\n" \
              "grid:\n  - {hidden: [8]}\n  - {hidden: [16]}\n  - {hidden: [32]}\nparams: {lr: 0.01, batch_size: 16}\n"


@pytest.mark.ray
def test_only_the_best_trials_keep_their_weights_and_trials_csv_says_which(ray_session, write_space, tmp_path,
                                                                           capsys):
    """Once a search completes, finished trials outside the best --keep-weights by its metric lose their best
    weights (state.pt), not their metrics, curves or test predictions; the search says so, and has_weights.
    A trial with keep_optimizer keeps everything and takes no place among them. `valley resume --keep-weights N`
    deletes more of a completed search's at once."""
    from analysis.format import read_manifest
    from analysis.load import load
    from search.resume import resume

    spared = TINY.replace("  - {layers: 1, dropout: 0.2}", "  - {layers: 1, dropout: 0.2, keep_optimizer: true}")
    folder = run_search(load_space(write_space(spared)), SearchOptions(
        storage=str(tmp_path / "results"), max_epochs=2, keep_weights=2, name="kept", progress_s=1e9))
    out = capsys.readouterr().out
    trials = pd.read_csv(folder / "trials.csv").sort_values("best_val_loss")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    spared_rows = trials["config/keep_optimizer"].fillna(False).astype(bool)
    best_two = trials[~spared_rows]["trial_id"].head(2)  # the 2 best of the other 3
    assert (trials["has_weights"] == (spared_rows | trials["trial_id"].isin(best_two))).all(), trials
    for trial, kept in zip(trials["trial_id"], trials["has_weights"]):
        assert len(list((folder / trial).glob("checkpoint_*/state.pt"))) == kept, trial
        assert load(folder).predictions(trial) is not None, trial
    assert ("valley: the best 2 finished trials by best_val_loss keep their best weights, the weights of 1 other "
            "were deleted (metrics, curves and predictions stay; --keep-weights all keeps every trial's); 1 trial "
            "with keep_optimizer keeps everything") in out
    assert load(folder).epochs.groupby("trial_id").size().tolist() == [2] * 4

    # `valley resume --keep-weights 1` on the completed search: the best one of those 2 keeps its weights, at once
    resume(folder, keep_weights=1)
    out = capsys.readouterr().out
    assert (f"valley: {folder} has completed: the best 1 finished trial by best_val_loss keeps its best weights, the "
            "weights of 1 other were deleted") in out
    after = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    assert after["has_weights"].sum() == 2 and after.loc[best_two.iloc[0], "has_weights"]
    assert not after.loc[best_two.iloc[1], "has_weights"]
    assert not list((folder / best_two.iloc[1]).glob("checkpoint_*/state.pt"))
    assert read_manifest(folder)["options"]["keep_weights"] == 1  # a later resume keeps what it was told
    resume(folder, keep_weights="all")
    assert ("2 finished trials hold weights, none beyond --keep-weights all: nothing deleted (weights deleted when "
            "it completed cannot come back)") in capsys.readouterr().out


@pytest.mark.ray
def test_a_trial_stopped_before_its_first_checkpoint_takes_no_place_among_those_keeping_weights(
        ray_session, write_space, tmp_path):
    """ASHA stops trials that never saved (a checkpoint at most every checkpoint_s): they hold no weights to keep,
    and the best --keep-weights are counted among those that do."""
    folder = run_search(load_space(write_space(TINY)), SearchOptions(
        storage=str(tmp_path / "results"), scheduler="asha", grace_period=4, max_epochs=8, max_concurrent=1,
        keep_weights=3, name="asha", quiet=True, overrides={"checkpoint_s": 1e9}))
    trials = pd.read_csv(folder / "trials.csv").sort_values("best_val_loss")
    assert "stopped" in set(trials["status"]), trials["status"]  # one at a time: ASHA stops the later, worse ones
    completed = trials[trials["status"] == "completed"]
    assert 1 <= len(completed) <= 3 and len(trials) == 4
    # the stopped trial ranks third here: it took the place of the worst completed one, which lost its weights
    assert trials.loc[trials["has_weights"], "trial_id"].tolist() == completed["trial_id"].tolist()


@pytest.mark.ray
def test_trials_that_never_left_chance_are_said_at_the_end_of_the_search(ray_session, write_space, tmp_path, capsys):
    """They ended 'completed', exit 0, with nothing said in the terminal or the report's header; the board and the
    report's header counted stalled trials as done."""
    from analysis.report import write_report

    space = write_space("family: mlp\ndataset: digits\nmetric: val_loss\nmode: min\nmax_epochs: 2\n"
                        "params:\n  lr: {grid: [1.0e-9, 1.0e-2]}\n")
    folder = run_search(load_space(space), SearchOptions(storage=str(tmp_path), name="flat", progress_s=1e9,
                                                         overrides={"stall_epochs": 2}))
    out = capsys.readouterr().out
    assert "1 done, 1 stalled, 0 stopped, 0 failed" in out  # the board: it said "2 done"
    said = ("valley: warning: 1 of 2 trials never left chance level in the epochs they trained (lr 1e-09; of those "
            "that learned, 0.01): a learning rate too low or too high")
    assert said in out
    page = write_report(folder, images=False).read_text()
    assert 'class="warning">Warning: 1 of 2 trials never left chance level' in page
    assert "2 trials: 2 done (1 stalled at chance level)" in page


def test_a_search_stored_before_keep_weights_existed_resumes_keeping_every_trials_weights():
    import dataclasses

    stored = dataclasses.asdict(SearchOptions(seed=3))  # valley.json's options, plan.json's
    assert SearchOptions.from_dict(stored).keep_weights == 5
    del stored["keep_weights"]
    assert SearchOptions.from_dict(stored) == SearchOptions(seed=3, keep_weights="all")


def test_the_board_is_a_line_every_so_often_in_a_pipe_and_the_driver_never_imports_torch(write_space, tmp_path):
    """In a pipe the board is a line every --progress-every seconds. Only the trials need torch: the driver
    of an MLP search (its own Ray, in a fresh process) runs it with TensorBoard on, writes its manifest,
    slims its finished trials and exits without importing it. At exit its Ray's autoscaler monitor is
    gone before Ray's shutdown reaches it (which would wait a second for it in vain)."""
    observe = ("import ray._private.node as node; kill = node.Node._kill_process_impl\n"
               "def seen(self, kind, *args, **kwargs):\n"
               "    if kind == 'monitor':\n"
               "        print('monitor alive at Ray shutdown:', self.all_processes[kind][0].process.poll() is None)\n"
               "    return kill(self, kind, *args, **kwargs)\n"
               "node.Node._kill_process_impl = seen\n")
    code = (observe + "import sys; from search.cli import main; "
            f"sys.argv = ['valley', 'search', {str(write_space(BOARD_SPACE))!r}, '--storage', {str(tmp_path)!r}, "
            "'--name', 'piped', '--num-cpus', '2', '--progress-every', '0.5']; code = main(); "
            "print('torch imported:', 'torch' in sys.modules); sys.exit(code)")
    run = driver("-c", code)
    try:
        out, _ = run.communicate(timeout=180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)  # its session: the driver and its Ray
    assert run.returncode == 0, out
    boards = [line for line in out.splitlines() if line.startswith("valley: ") and " finished (" in line]
    assert boards and boards[-1].startswith("valley: 3/3 finished (3 done, 0 stopped, 0 failed), 0 running")
    assert "best val_loss" in boards[-1] and "elapsed" in boards[-1] and "\x1b[" not in out
    assert sum(line.startswith("[") for line in out.splitlines()) == 3  # the per-trial lines stay
    assert "torch imported: False" in out
    assert "monitor alive at Ray shutdown: False" in out
    assert "WARNING" not in out, out  # Ray's notice of token authentication, on every local search before
    assert len(pd.read_csv(tmp_path / "piped" / "trials.csv")) == 3
    assert len(list((tmp_path / "piped").glob("*/events.out.tfevents.*"))) == 3


def test_the_board_is_redrawn_in_place_on_a_terminal(write_space, tmp_path):
    import os
    import pty

    primary, secondary = pty.openpty()
    command = [sys.executable, "-m", "search.cli", "search", str(write_space(BOARD_SPACE)), "--storage",
               str(tmp_path), "--name", "tty", "--num-cpus", "2"]
    proc = subprocess.Popen(command, stdout=secondary, stderr=secondary, stdin=subprocess.DEVNULL,
                            env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=180)
    os.close(primary)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, screen[-2000:]
    assert "running trial" in screen and "3 done, 0 stopped, 0 failed" in screen
    assert "\x1b[" in screen  # rich moves the cursor to redraw, rather than printing a line each time
    assert screen.count("[  3/3]") == 1  # the per-trial lines are printed once each


@pytest.mark.ray
def test_finished_trials_keep_their_best_weights_not_the_optimiser(ray_session, write_space, tmp_path, capsys):
    """Completed and ASHA-stopped trials alike: each checkpoint holds the best weights, the state and the
    test predictions; a trial's folder is at most 1.1 x its best weights plus its predictions."""
    import torch

    from analysis.load import load

    # one trial at a time, so ASHA's decisions do not hang on which trial reports first: the first to reach
    # its rung at epoch 4 goes on to 8, a later one worse than the first is stopped there, with the full
    # checkpoint of a trial that would go on
    folder = run_search(load_space(write_space(TINY)), SearchOptions(
        storage=str(tmp_path / "results"), scheduler="asha", grace_period=4, max_epochs=8, max_concurrent=1,
        name="slim", progress_s=1e9, overrides={"checkpoint_s": 0}))
    trials = pd.read_csv(folder / "trials.csv")
    assert set(trials["status"]) == {"completed", "stopped"}, trials["status"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    said = {"done": "completed", "stopped": "stopped"}
    assert sorted(said[line.split()[3]] for line in lines) == sorted(trials["status"])  # the progress lines agree
    for trial in trials["trial_id"]:
        saved = sorted((folder / trial).glob("checkpoint_*/state.pt"))
        assert len(saved) == 1, trial  # the newest checkpoint only
        assert set(torch.load(saved[0], weights_only=True)) == {"best_model", "state"}, saved[0]
        weights = sum(t.numel() * t.element_size() for t in torch.load(saved[0], weights_only=True)
                      ["best_model"].values())
        kept = sum(p.stat().st_size for p in saved[0].parent.iterdir())
        # torch.save's zip headers cost a few KB: noise for real models, most of a 1-KB one
        assert kept <= 1.1 * (weights + (saved[0].parent / "predictions.npz").stat().st_size) + 4096
    assert load(folder).predictions(trials["trial_id"].iloc[0]) is not None  # the report's clock figures read these


def test_the_board_counts_a_metric_without_its_best_column():
    """val_csd (the clock task) has no best_val_csd in a report: the board takes the latest value."""
    from types import SimpleNamespace

    from search.board import Board, snapshot

    trials = [SimpleNamespace(trial_id="a", status="TERMINATED"), SimpleNamespace(trial_id="b", status="RUNNING")]
    board = Board("val_csd", "min", 5, every_s=1.0, terminal=False)
    board.result("a", {"training_iteration": 5, "val_csd": 40.0})
    board.result("b", {"training_iteration": 2, "val_csd": 90.0})
    snap = snapshot(trials, board.latest, "val_csd", "min", 5, 0.0)
    assert snap.best == ("a", 40.0) and snap.counts["done"] == 1 and snap.counts["running"] == 1
    # at the best checkpoint, as trials.csv ranks it: b's 30.0 at epoch 3, not its latest 95.0 (the board's best
    # was the last epoch's: 0.9667 beside a top table of 0.9722, found by a review)
    board.result("b", {"training_iteration": 3, "epoch": 3, "best_epoch": 3, "val_csd": 30.0})
    board.result("b", {"training_iteration": 4, "epoch": 4, "best_epoch": 3, "val_csd": 95.0})
    assert snapshot(trials, board.latest, "val_csd", "min", 5, 0.0).best == ("b", 30.0)


def test_the_board_counts_a_resumed_trial_by_tunes_result_and_one_that_never_trained_as_pending():
    """After a resume a trial that had finished is done by the result Tune restored with it (it read
    'stopped'); one Ctrl-C ended before it trained is not started, not 'stopped' (all 14 once read so)."""
    from types import SimpleNamespace

    from search.board import line, snapshot

    trials = [SimpleNamespace(trial_id="a", status="TERMINATED", last_result={"training_iteration": 5, "val_loss": 0.4}),
              SimpleNamespace(trial_id="b", status="TERMINATED", last_result={}),
              SimpleNamespace(trial_id="c", status="TERMINATED", last_result={"training_iteration": 2, "val_loss": 0.5})]
    snap = snapshot(trials, {}, "val_loss", "min", 5, 0.0)
    assert snap.counts == {"done": 1, "stalled": 0, "stopped": 1, "failed": 0, "running": 0, "interrupted": 0,
                           "pending": 1}
    assert line(snap, "val_loss").startswith("valley: 2/3 finished (1 done, 1 stopped, 0 failed), 0 running, 1 pending")
    # a trial that ended at chance level is stalled, as its own line says, not done (every one of 25 read "done")
    trials.append(SimpleNamespace(trial_id="d", status="TERMINATED",
                                  last_result={"training_iteration": 5, "val_loss": 2.3, "stalled": True}))
    assert line(snapshot(trials, {}, "val_loss", "min", 5, 0.0), "val_loss").startswith(
        "valley: 3/4 finished (1 done, 1 stalled, 1 stopped, 0 failed)")


def test_a_resumed_boards_time_left_counts_only_the_epochs_trained_since(capsys):
    """A resumed board took the epochs Tune restored with its trials as trained in its first second, and
    said '~0m01s left' of 200 epochs still to train."""
    import pickle
    from types import SimpleNamespace

    from search.board import Board

    board = pickle.loads(pickle.dumps(Board("val_loss", "min", 100, every_s=0.0, terminal=False)))  # tuner.pkl's
    trials = [SimpleNamespace(trial_id=t, status="RUNNING", last_result={"training_iteration": 50, "val_loss": 0.5})
              for t in "abcd"]
    board.show(trials, force=True)
    board._started -= 10.0  # 10 s later, each trial 5 epochs further
    for trial in trials:
        board.result(trial.trial_id, {"training_iteration": 55, "val_loss": 0.4})
    board.show(trials, force=True)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    minutes, seconds = re.search(r"~(\d+)m(\d+)s left$", last).groups()
    assert 90 <= 60 * int(minutes) + int(seconds) <= 120, last  # 180 epochs at 2 a second (a little less if slow)


def test_the_boards_time_left_takes_each_trial_at_its_own_pace():
    """mlp-rough at 30 epochs: twelve small MLPs done in a second each, the 12- and 15-layer ones at epochs 5
    and 2 at a second and more an epoch; the board said '~0m01s left' of what took 40 s (found by a review)."""
    from types import SimpleNamespace

    from search.board import snapshot

    trials = [SimpleNamespace(trial_id=f"s{i}", status="TERMINATED") for i in range(12)]
    trials += [SimpleNamespace(trial_id="big", status="RUNNING"), SimpleNamespace(trial_id="bigger", status="RUNNING")]
    latest = {f"s{i}": {"training_iteration": 30, "val_loss": 0.3, "time_total_s": 0.6} for i in range(12)}
    latest["big"] = {"training_iteration": 5, "val_loss": 0.4, "time_total_s": 6.5}  # 1.3 s an epoch: 25 to go
    latest["bigger"] = {"training_iteration": 2, "val_loss": 0.5, "time_total_s": 3.0}  # 1.5 s: 28 to go
    snap = snapshot(trials, latest, "val_loss", "min", 30, time.monotonic() - 12.0)
    assert snap.left_s == pytest.approx(28 * 1.5)  # the slower alone, beside the other on its own slot
    # 200 more pending, not begun: at the median trial's pace (0.02 s an epoch), shared with the others' slots
    trials += [SimpleNamespace(trial_id=f"p{i}", status="PENDING") for i in range(200)]
    snap = snapshot(trials, latest, "val_loss", "min", 30, time.monotonic() - 12.0)
    assert snap.left_s == pytest.approx((25 * 1.3 + 28 * 1.5 + 200 * 30 * 0.02) / 2)
    # none running (after Ctrl-C, as a resumed search starts): the slots seen share it, not one at a time
    for trial in trials[12:14]:
        trial.status = "PENDING"
    snap = snapshot(trials, latest, "val_loss", "min", 30, time.monotonic() - 12.0, slots=2)
    assert snap.left_s == pytest.approx((25 * 1.3 + 28 * 1.5 + 200 * 30 * 0.02) / 2)  # one slot: twice that


def test_after_ctrl_c_the_board_counts_a_trial_it_stopped_as_interrupted_not_stopped():
    """Tune calls a trial Ctrl-C stopped mid-way terminated, as it calls one ASHA stopped: the board's last
    line read '4/14 finished (2 done, 2 stopped)' while trials.csv called two of them unfinished."""
    from types import SimpleNamespace

    from search.board import line, snapshot

    trials = [SimpleNamespace(trial_id=t, status="TERMINATED", last_result={"training_iteration": e, "val_loss": 0.5})
              for t, e in (("done", 5), ("asha", 1), ("cut", 3))]
    assert snapshot(trials, {}, "val_loss", "min", 5, 0.0).counts["stopped"] == 2
    snap = snapshot(trials, {}, "val_loss", "min", 5, 0.0, ended={"done", "asha"})
    assert snap.counts == {"done": 1, "stalled": 0, "stopped": 1, "failed": 0, "running": 0, "interrupted": 1,
                           "pending": 0}
    assert line(snap, "val_loss").startswith("valley: 2/3 finished (1 done, 1 stopped, 0 failed), 0 running, "
                                              "1 interrupted, 0 pending")
    # time left after Ctrl-C: the interrupted trial's 2 epochs, and all 5 of one that never began (it read
    # '~0m02s left' of 9 trials x 40 epochs still to train)
    trials.append(SimpleNamespace(trial_id="never", status="TERMINATED", last_result={}))
    started = __import__("time").monotonic() - 9.0  # 9 epochs in 9 s: an epoch a second
    assert snapshot(trials, {}, "val_loss", "min", 5, started, ended={"done", "asha"}).left_s == pytest.approx(7, 0.05)
    assert snapshot(trials, {}, "val_loss", "min", 5, started).left_s == 0  # a budget's end: nothing to train


def test_the_board_of_a_budgeted_search_counts_its_trial_epochs_as_they_are_trained():
    """A plan's stage runs under an epoch budget: the board says what its trials have trained of it,
    at every line, not what the plan had spent when the stage began."""
    from types import SimpleNamespace

    from search.board import line, snapshot

    trials = [SimpleNamespace(trial_id="a", status="TERMINATED"), SimpleNamespace(trial_id="b", status="RUNNING")]
    latest = {"a": {"training_iteration": 5, "val_loss": 0.4}, "b": {"training_iteration": 2, "val_loss": 0.9}}
    shown = line(snapshot(trials, latest, "val_loss", "min", 5, 0.0), "val_loss", "stage fine (2 of 3)", 12)
    assert shown.startswith("valley: stage fine (2 of 3): 1/2 finished") and "7 of 12 trial-epochs trained" in shown
    latest["b"]["training_iteration"] = 4
    later = snapshot(trials, latest, "val_loss", "min", 5, 0.0)
    assert "9 of 12 trial-epochs trained" in line(later, "val_loss", "", 12)
    assert "trial-epochs" not in line(later, "val_loss")  # a search without a budget


@pytest.mark.parametrize("epochs, factor", [(10, 3), (8, 2), (20, 3), (27, 3)])
def test_every_bohb_bracket_trains_its_survivors_to_max_epochs(epochs, factor):
    """Ray's HyperBand multiplies its rounds up from int(max_t / eta**s): with 10 epochs and a factor of 3
    two of its three brackets ended at 9, their survivors (the best configurations) 'stopped' short."""
    from search.hyperband import ValleyHyperBand

    hyperband = ValleyHyperBand(quiet=True, max_t=epochs, reduction_factor=factor, metric="val_loss", mode="min")
    for s in range(hyperband._s_max_1):
        bracket = hyperband._create_bracket(s)
        rounds = [bracket._cumul_r]
        while bracket._halves:
            bracket.successive_halving("val_loss", -1.0)  # no trials: only the rounds move
            rounds.append(bracket._cumul_r)
        assert rounds[-1] == epochs and rounds == sorted(rounds), rounds


def test_bohb_with_a_seed_draws_the_same_trials_and_leaves_numpys_global_stream_alone():
    """hpbandster samples from numpy's global generator, which nothing seeded: two BOHB searches with the
    same --seed drew different trials once its density models took over."""
    from ray import tune

    from search.bohb import ValleyBOHB

    def drawn(seed):
        bohb = ValleyBOHB(True, seed=seed)
        bohb.set_search_properties("val_loss", "min", {"lr": tune.loguniform(1e-4, 1e-1), "w": tune.uniform(0, 1)})
        configs = []
        for i in range(20):
            config = bohb.suggest(f"t{i}")
            configs.append((config["lr"], config["w"]))
            for epoch in (1, 3, 9):  # what HyperBandForBOHB adds to each result
                bohb.on_trial_result(f"t{i}", {"val_loss": (config["lr"] - 0.01) ** 2 + config["w"] / epoch,
                                               "training_iteration": epoch, "hyperband_info": {"budget": epoch}})
            bohb.on_trial_complete(f"t{i}")
        return configs

    outer = np.random.get_state()[1].copy()
    assert drawn(0) == drawn(0) != drawn(1)
    assert (np.random.get_state()[1] == outer).all()


def test_tunes_result_grid_warning_of_a_trial_without_results_is_dropped_and_nothing_else():
    """`valley plan FOLDER` on an interrupted stage printed Tune's 'Failed to fetch metrics for 1 trial(s):
    ... FileNotFoundError', which read as a failure; valley reads the folder itself."""
    import logging

    from search.ray_start import tune_environment

    tune_environment()
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")

    def shown(message: str) -> bool:
        return bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)))

    assert not shown("Failed to fetch metrics for 1 trial(s):\n- train_43c548ac: FileNotFoundError(...)")
    assert shown("something else went wrong")


def test_a_searcher_that_samples_grids_says_so(tmp_path):
    """`optimizer: {grid: [adam, sgd, adamw]}` under Optuna never tried adamw, and nothing said the grid, whose
    every value random search tries, became a choice (found by a review); grid rows were said already."""
    from search.tuner import searcher

    said: list[str] = []
    searcher(SearchOptions(search="optuna", quiet=True), 2, said.append, tmp_path, ("optimizer",))
    assert said[0] == ("valley: note: optuna samples the 2 grid rows and the grid over optimizer as categorical "
                       "choices, not every value in turn")
    said.clear()
    searcher(SearchOptions(search="random"), 2, said.append, tmp_path, ("optimizer",))
    assert not said


def test_a_key_no_trial_reads_is_warned_of(write_space):
    """`momentum: {uniform: [0, 0.99]}` beside `optimizer: adam`, `lr_patience` under a cosine schedule: TPE
    searched dimensions that changed nothing, unsaid (found by a review)."""
    from search.tune_space import unread_keys

    space = load_space(write_space("family: mlp\nmetric: val_loss\nmode: min\nparams:\n  optimizer: adam\n"
                                   "  momentum: {uniform: [0, 0.99]}\n  schedule: cosine\n"
                                   "  lr_patience: {randint: [1, 10]}\n"))
    assert unread_keys(space, {}) == [
        "momentum is set, but only optimizer sgd reads it, and every trial trains optimizer adam: drop momentum, or "
        "give optimizer sgd",
        "lr_patience is set, but only schedule plateau reads it, and every trial trains schedule cosine: drop "
        "lr_patience, or give schedule plateau"]
    assert unread_keys(space, {"optimizer": "sgd", "schedule": "plateau"}) == []
    either = load_space(write_space("family: mlp\nmetric: val_loss\nmode: min\ngrid:\n  - {optimizer: sgd}\n"
                                    "  - {optimizer: adam}\nparams:\n  momentum: 0.5\n", "either.yaml"))
    assert unread_keys(either, {}) == [] and len(unread_keys(either, {"optimizer": "adamw"})) == 1
    # a family's own: `--set encoding=regression` on clock-encodings trained its csd_weight row alike, unsaid
    assert unread_keys(load_space("clock-encodings"), {}) == []
    assert unread_keys(load_space("clock-encodings"), {"encoding": "regression"}) == [
        "csd_weight is set, but only encoding class720 or class_class or class_reg or reg_class or class_periodic "
        "reads it, and every trial trains encoding regression: drop csd_weight, or give encoding class720"]


@pytest.mark.ray
def test_a_space_made_in_python_runs_and_its_folder_holds_its_document(ray_session, tmp_path):
    """`run_search(parse_space({...}), ...)` failed after Ray had started, copying the space's file, '<space>',
    and left a folder reading 'running' that `valley resume` could not take up (found by a review)."""
    from spaces import parse_space

    doc = {"family": "mlp", "dataset": "synthetic", "metric": "val_loss", "mode": "min", "max_epochs": 1,
           "grid": [{"hidden": [4]}], "params": {"lr": {"loguniform": [1e-3, 1e-2]}}}
    folder = run_search(parse_space(doc), SearchOptions(storage=str(tmp_path), name="py", quiet=True))
    assert json.loads((folder / "valley.json").read_text())["status"] == "completed"
    assert load_space(folder / "space.yaml").as_doc() == doc
