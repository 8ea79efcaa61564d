"""The tools people already use: TensorBoard event files, the Optuna study's journal, MLflow runs.

One real search (Optuna's TPE under ASHA, MLflow on a local SQLite store) is read back with each
tool's own reader: TensorBoard's EventAccumulator and HParams protos, Optuna's API, MlflowClient.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from search.options import SearchError
from search.run import SearchOptions, prepare, run_search
from spaces import load_space

SPACE = """\
family: mlp
dataset: synthetic
metric: val_loss
mode: min
max_epochs: 3
grid:
  - {hidden: [4]}
  - {hidden: [32]}
  - {layers: 1}
params:
  lr: {loguniform: [1.0e-3, 1.0e-2]}
  batch_size: 32
"""


@contextlib.contextmanager
def cwd(folder: Path):
    """MLflow writes artifacts under ./mlruns by default: keep them in the test's folder."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def logged(ray_session, tmp_path_factory):
    """(experiment folder, trials.csv, MLflow URI) of a 5-trial TPE + ASHA search with --log mlflow."""
    root = tmp_path_factory.mktemp("logged")
    (root / "space.yaml").write_text(SPACE)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    opts = SearchOptions(storage=str(root / "results"), name="logged", quiet=True, search="optuna",
                         samples=5, scheduler="asha", log=("mlflow",))  # --mlflow-uri: tests/test_faults.py
    os.environ["MLFLOW_TRACKING_URI"] = uri  # its artifacts went to ./mlruns, as MLflow's (found by a review)
    try:
        with cwd(root):
            folder = run_search(load_space(root / "space.yaml"), opts)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return folder, pd.read_csv(folder / "trials.csv"), uri


@pytest.mark.ray
def test_tensorboard_shows_every_trials_curves_and_hparams(logged, events):
    from tensorboard.plugins.hparams import plugin_data_pb2

    folder, trials, _ = logged
    epochs = pd.read_parquet(folder / "epochs.parquet")
    for _, row in trials.iterrows():
        found = events(folder / row["trial_id"])
        curve = found.Scalars("ray/tune/val_loss")
        mine = epochs[epochs.trial_id == row["trial_id"]].sort_values("epoch")
        assert [s.step for s in curve] == list(mine["epoch"])
        assert [s.value for s in curve] == pytest.approx(list(mine["val_loss"]), rel=1e-6)
        content = found.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        params = {k: v.ListFields()[0][1] for k, v in start.session_start_info.hparams.items()}
        assert params["lr"] == pytest.approx(row["config/lr"])
        grid = row["config/hidden"]  # the grid row's keys, not its index
        assert ("hidden" in params) == isinstance(grid, str) and "variant" not in params
        experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
        assert {"ray/tune/val_loss", "ray/tune/test_acc", "ray/tune/best_val_acc"} <= {
            m.name.tag for m in experiment.metric_infos}
        # the HParams table sorts on what valley ranks: val_acc at the best checkpoint, not the last epoch's
        assert found.Scalars("ray/tune/best_val_acc")[-1].value == pytest.approx(row["best_val_acc"], rel=1e-6)
        # every trial's summary names every grid row's keys: the tab takes its columns from the first it reads
        assert {"hidden", "layers", "lr", "batch_size"} <= {h.name for h in experiment.hparam_infos}


def test_a_trial_paused_and_resumed_within_a_second_keeps_its_whole_curve(tmp_path, events):
    """HyperBand pauses a trial and lets it go on, often within the second; each start opens a new
    event file, and tensorboardX names files by the second and opens them "wb" (found by the BOHB kill test)."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from search.loggers import TensorBoard

    trial = Trial("train", config={"lr": 0.1}, trial_id="t_00000", stub=True,
                  storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp"))
    trial.storage.trial_dir_name = trial.trial_id
    board = TensorBoard([], {"val_loss"})
    for step in (1, 2, 3):
        board.log_trial_start(trial)
        board.log_trial_result(step, trial, {"training_iteration": step, "val_loss": 1 / step})
    board.log_trial_end(trial)
    assert [e.step for e in events(trial.path).Scalars("ray/tune/val_loss")] == [1, 2, 3]


def test_a_resumed_trial_keeps_its_best_checkpoints_metric_from_before(tmp_path, events):
    """A trial resumed by a new driver goes on past a best epoch the driver never saw: its best_val_acc is
    read from result.json, not left out until the trial beats it."""
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    from search.loggers import TensorBoard

    trial = Trial("train", config={"lr": 0.1}, trial_id="t_00000", stub=True,
                  storage=StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp"))
    trial.storage.trial_dir_name = trial.trial_id
    before = [{"training_iteration": e, "epoch": e, "val_acc": acc, "best_epoch": 2} for e, acc in ((1, 0.5), (2, 0.7))]
    Path(trial.path).mkdir(parents=True)
    (Path(trial.path) / "result.json").write_text("".join(json.dumps(r) + "\n" for r in before))
    board = TensorBoard([], {"val_loss", "val_acc"})
    board.log_trial_start(trial)
    for epoch, acc, best in ((3, 0.6, 2), (4, 0.8, 4)):
        board.log_trial_result(epoch, trial, {"training_iteration": epoch, "epoch": epoch, "val_acc": acc,
                                              "best_epoch": best})
    board.log_trial_end(trial)
    scalars = events(trial.path).Scalars("ray/tune/best_val_acc")
    assert [e.step for e in scalars] == [3, 4] and [e.value for e in scalars] == pytest.approx([0.7, 0.8])


@pytest.mark.ray
def test_no_tensorboard_writes_no_event_files(ray_session, write_space, tmp_path):
    folder = run_search(load_space(write_space(SPACE)), SearchOptions(
        storage=str(tmp_path / "results"), name="quiet", quiet=True, max_epochs=1, tensorboard=False))
    assert len(pd.read_csv(folder / "trials.csv")) == 3
    assert not list(folder.rglob("events.out.tfevents.*"))


@pytest.mark.ray
def test_optuna_study_is_in_the_experiment_folder(logged):
    from search.optuna_study import load_study

    folder, trials, _ = logged
    study = load_study(folder)  # what optuna-dashboard opens: results/EXP/optuna.journal
    assert len(study.trials) == len(trials) == 5
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    # the best checkpoint's val_loss, as trials.csv ranks trials and a plan's warm start tells them (Ray tells the
    # last epoch's, worse for a trial its own patience ended)
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(trials["best_val_loss"]))


@pytest.mark.ray
def test_optuna_is_told_a_metric_other_than_val_loss_at_the_best_checkpoint(ray_session, write_space, tmp_path):
    """With val_acc (the clock's val_csd alike) the study was told the last epoch's value: only best_val_loss
    is reported, so best_val_acc was never found and a trial its patience ended was scored past its best."""
    from search.optuna_study import TRIAL_ID, load_study

    space = write_space("family: mlp\ndataset: synthetic\nmetric: val_acc\nmode: max\nmax_epochs: 8\n"
                        "params:\n  hidden: [32]\n  lr: {loguniform: [0.3, 1.0]}\n  batch_size: 16\n"
                        "  early_stop: 2\n", "acc.yaml")
    folder = run_search(load_space(space), SearchOptions(storage=str(tmp_path / "results"), name="acc", quiet=True,
                                                         search="optuna", samples=6, tensorboard=False))
    trials = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    told = {t.user_attrs[TRIAL_ID]: t.value for t in load_study(folder).trials}
    assert told == pytest.approx(trials["best_val_acc"].to_dict())
    last = {tid: json.loads((folder / tid / "result.json").read_text().splitlines()[-1])["val_acc"] for tid in told}
    assert any(last[tid] != told[tid] for tid in told)  # some trial ended past its best: the test can tell them apart


def test_optuna_is_told_the_last_epoch_when_it_is_the_best(ray_session, write_space, tmp_path):
    """Under ASHA, Tune hands a trial's last result (ASHA's stop, at a rung or at max_t) to on_trial_complete
    alone: a trial still improving at its last epoch was told its previous best (100.4 for a best_val_csd of 72.6,
    found by a review), so Optuna's best trial was not valley's, and that epoch was missing from its intermediate
    values."""
    from search.optuna_study import TRIAL_ID, load_study

    space = write_space("family: mlp\ndataset: digits\nmetric: val_acc\nmode: max\nmax_epochs: 3\n"
                        "params:\n  hidden: [16]\n  lr: {loguniform: [1.0e-3, 3.0e-3]}\n  batch_size: 64\n",
                        "last.yaml")
    folder = run_search(load_space(space), SearchOptions(storage=str(tmp_path / "results"), name="last", quiet=True,
                                                         search="optuna", samples=3, tensorboard=False,
                                                         scheduler="asha"))
    trials = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    study = {t.user_attrs[TRIAL_ID]: t for t in load_study(folder).trials}
    assert {tid: t.value for tid, t in study.items()} == pytest.approx(trials["best_val_acc"].to_dict())
    for tid, trial in study.items():
        rows = [json.loads(line) for line in (folder / tid / "result.json").read_text().splitlines()]
        assert trial.intermediate_values == pytest.approx({r["training_iteration"]: r["val_acc"] for r in rows})
    improving = [tid for tid in study if trials.loc[tid, "best_epoch"] == 3 and
                 json.loads((folder / tid / "result.json").read_text().splitlines()[1])["best_epoch"] == 2]
    assert improving  # a trial whose best moved from epoch 2 to 3: the case this test is about


@pytest.mark.ray
def test_mlflow_records_every_trial(logged):
    from mlflow.tracking import MlflowClient

    folder, trials, uri = logged
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("logged").experiment_id])
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(trials["trial_id"])
    by_id = trials.set_index("trial_id")
    for run in runs:
        row = by_id.loc[run.data.tags["trial_id"]]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == pytest.approx(row["config/lr"])
        assert "variant" not in run.data.params
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, int(row["epochs"]) + 1))
        assert run.data.metrics["test_acc"] == pytest.approx(row["test_acc"])
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["valley.json"]
    local = Path(client.get_run(runs[0].info.run_id).info.artifact_uri.removeprefix("file://"))
    assert json.loads((local / "valley.json").read_text())["status"] in ("running", "completed")
    # beside the results, not in ./mlruns of the folder the command ran in
    assert local.is_relative_to(folder / "mlflow-artifacts") and not (folder.parent.parent / "mlruns").exists()


def test_mlflow_names_a_plans_stage_by_its_plan_and_ends_runs_resume_set_aside(tmp_path):
    """Every plan's stage "rough" logged into one MLflow experiment "rough"; the run of a trial a killed
    driver began after its last snapshot (set aside by `valley resume`) stayed RUNNING for ever."""
    from mlflow.tracking import MlflowClient

    from search.mlflow_log import MLflow
    from search.progress import UNRESTORED

    folder = tmp_path / "plan-mlp-digits-1" / "rough"
    (folder / UNRESTORED / "t_00001").mkdir(parents=True)
    (folder.parent / "plan.json").write_text("{}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLflow(uri, folder, [])
    logger.setup()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("plan-mlp-digits-1/rough").experiment_id
    runs = {t: client.create_run(experiment, tags={"trial_id": t}).info.run_id for t in ("t_00001", "t_00002")}
    logger.end_set_aside()
    assert client.get_run(runs["t_00001"]).info.status == "KILLED"
    assert client.get_run(runs["t_00002"]).info.status == "RUNNING"


def test_mlflow_refusals_are_one_line(write_space, tmp_path, monkeypatch):
    space = load_space(write_space(SPACE))
    base = SearchOptions(storage=str(tmp_path / "results"), name="refused")
    with pytest.raises(SearchError, match=r"--mlflow-uri goes with --log mlflow"):
        prepare(space, SearchOptions(**{**base.__dict__, "mlflow_uri": "sqlite:///x.db"}))
    # MLflow's own way out, MLFLOW_ALLOW_FILE_STORE=true, was cut off at 300 characters: "...See htt; give a..."
    with pytest.raises(SearchError, match=r"MLflow refuses its file store \(in maintenance mode\) unless "
                                          r"MLFLOW_ALLOW_FILE_STORE=true is set; set it, or give a database URI"):
        prepare(space, SearchOptions(**{**base.__dict__, "log": ("mlflow",), "mlflow_uri": str(tmp_path / "mlruns")}))
    with pytest.raises(SearchError, match=r"MLflow cannot open it: .*give a database URI such as sqlite"):
        prepare(space, SearchOptions(**{**base.__dict__, "log": ("mlflow",), "mlflow_uri": "nowhere://x"}))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(SearchError, match=r"needs MLflow, which is not installed; install it with `pip install"):
        prepare(space, SearchOptions(**{**base.__dict__, "log": ("mlflow",)}))


def test_quiet_keeps_mlflows_database_lines_off_the_terminal(tmp_path):
    """--quiet --log mlflow printed MLflow's INFO lines as it made a new database's tables."""
    import subprocess
    import sys

    code = ("import sys; from search.loggers import check; from search.options import SearchOptions; "
            "check(SearchOptions(log=('mlflow',), mlflow_uri=sys.argv[1], quiet=sys.argv[2] == 'quiet'))")
    said = {how: subprocess.run([sys.executable, "-c", code, f"sqlite:///{tmp_path / how}.db", how], text=True,
                                capture_output=True, cwd=Path(__file__).parent.parent, check=True).stderr
            for how in ("quiet", "loud")}
    assert "INFO mlflow" not in said["quiet"] and "INFO mlflow" in said["loud"], said


def test_a_restored_study_holds_each_trial_once(tmp_path):
    """A driver killed after Tune's last snapshot: the journal is ahead of the pickled searcher."""
    from ray import tune

    from search.optuna_study import ValleyOptunaSearch, journal, load_study

    folder = tmp_path / "exp"

    def searcher() -> ValleyOptunaSearch:  # as `valley search` and `valley resume` build it
        built = ValleyOptunaSearch(space={"lr": tune.uniform(0, 1)}, metric="val_loss", mode="min",
                                   points_to_evaluate=[{"lr": 0.5}], evaluated_rewards=[0.3],
                                   storage=journal(folder), study_name=folder.name)
        built.quiet = True
        return built

    first = searcher()
    first.suggest("a"), first.suggest("b")
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot
    first.on_trial_complete("b", {"val_loss": 0.2})  # after it, b finished
    first.suggest("c")  # and c was asked,
    first._ot_study.ask()  # and one more, the driver killed before it was given a Tune trial id
    second = searcher()  # the warm start is in the journal already: not added again
    second.restore(str(tmp_path / "searcher.pkl"))
    second.on_trial_result("b", {"val_loss": 0.25, "training_iteration": 1})  # b, resumed, reports again
    second.on_trial_complete("b", {"val_loss": 0.25})  # and finishes again: told once
    second.on_trial_complete("a", {"val_loss": 0.1})
    assert [(t.state.name, t.value) for t in load_study(folder).trials] == [
        ("COMPLETE", 0.3), ("COMPLETE", 0.1), ("COMPLETE", 0.2), ("FAIL", None), ("FAIL", None)]


def test_command_line_flags_reach_the_search_options():
    from search.cli import build_parser
    from search.cli_options import options_from

    args = build_parser().parse_args(["search", "mlp-rough", "--quiet", "--no-tensorboard", "--log", "mlflow",
                                      "--log", "mlflow", "--mlflow-uri", "sqlite:///m.db"])
    opts = options_from(args)
    assert opts.quiet and not opts.tensorboard and opts.log == ("mlflow",) and opts.mlflow_uri == "sqlite:///m.db"
    defaults = options_from(build_parser().parse_args(["search", "mlp-rough"]))
    assert not defaults.quiet and defaults.tensorboard and defaults.log == () and defaults.mlflow_uri is None
    # a relative or ~ --data-dir is kept absolute: valley.json held "w/clocks", which `valley resume` from another
    # folder could not find, and the loader did not expand "~"
    relative = options_from(build_parser().parse_args(["search", "mlp-rough", "--data-dir", "w/clocks"]))
    assert relative.data_dir == str(Path.cwd() / "w" / "clocks")
    home = options_from(build_parser().parse_args(["search", "mlp-rough", "--data-dir", "~/clocks"]))
    assert home.data_dir == str(Path.home() / "clocks")


def test_load_study_takes_a_path_as_text_and_refuses_a_folder_without_a_study(tmp_path):
    """A str raised AttributeError; a mistyped folder was created, with an empty journal, then KeyError."""
    from search.optuna_study import load_study

    with pytest.raises(FileNotFoundError, match="holds no optuna.journal: give the folder of a search"):
        load_study(str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()
