"""Loading, the valley and the figures, on recorded experiments in tests/data (no Ray needed)."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import figures
from analysis.format import Task, trained
from analysis.load import ResultsError, export_tables, load, load_experiment, progress, top_table, write_tables
from analysis.valley import chance_warning, cut_while_improving, find_valley, never_left_chance, not_learning

DATA = Path(__file__).parent / "data"
ASHA = DATA / "asha-digits"  # mlp-rough on digits, 6 epochs, ASHA: 4 trials stopped, 1 failed (hand-made OOM)
SEEDS = DATA / "seeds-digits"  # 3 MLPs x seeds 0, 1, 2
PLAIN = DATA / "plain-ray"  # a plain Ray Tune experiment (metric "loss"), one trial raised


@pytest.fixture(scope="module")
def asha():
    return load(ASHA)


def make_plan(root: Path) -> Path:
    plan = root / "plan"
    plan.mkdir()
    stages = {"rough": {"kind": "search", "status": "completed", "experiments": ["rough"]},
              "valley": {"kind": "valley", "status": "completed", "from": "rough", "reason": "best ... chose ..."},
              "confirm": {"kind": "confirm", "status": "completed", "experiments": ["confirm"]}}
    (plan / "plan.json").write_text(json.dumps({"plan": "test", "status": "completed", "stages": stages}))
    (plan / "valley.json").write_text(json.dumps(stages["valley"]))  # a stage named valley writes valley.json
    shutil.copytree(SEEDS, plan / "confirm")  # sorts before "rough" by name, after it in plan.json
    shutil.copytree(ASHA, plan / "rough")
    return plan


# --- loading -----------------------------------------------------------------------------------------

def test_load_valley_experiment(asha):
    assert asha.kind == "valley" and asha.status == "completed"
    assert (asha.metric, asha.mode) == ("best_val_loss", "min")
    assert len(asha.trials) == 14 and asha.warnings == []
    counts = asha.trials["status"].value_counts().to_dict()
    assert counts == {"completed": 9, "stopped": 4, "failed": 1}
    assert progress(asha.trials) == {"done": 13, "stalled": 0, "active": 0, "failed": 1, "total": 14}
    failed = asha.trials.set_index("trial_id").loc["9f306_00013"]
    assert "OutOfMemoryError" in failed["error"]
    assert set(asha.epochs["trial_id"]) == set(asha.trials["trial_id"])


def test_load_experiment_and_tables_keep_their_behaviour(tmp_path):
    folder = shutil.copytree(ASHA, tmp_path / "asha-digits")
    trials, epochs = load_experiment(folder)
    assert list(trials.columns[:3]) == ["trial_id", "experiment", "status"]
    assert len(epochs) == 6 * 9 + 4 + 1
    written = write_tables(folder)
    assert len(written) == 14 and (folder / "trials.csv").exists() and (folder / "epochs.parquet").exists()
    table = top_table(written, folder)
    assert table.startswith("top 5 of 14 by best_val_loss")
    assert "9f306_00009      -      5    -        -    412910       6 completed" in table  # not layers 5.0


def test_a_trial_asha_stopped_is_stopped_before_the_search_ends(tmp_path):
    """While a search ran, or once it was interrupted, a trial ASHA had stopped read 'unfinished': the
    dashboard's progress stayed low until the end and said `valley resume` would continue it. ASHA's
    stops are final (asha-stops.jsonl); a trial short of max_epochs without one may still go on."""
    folder = shutil.copytree(ASHA, tmp_path / "asha-digits")
    manifest = json.loads((folder / "valley.json").read_text())
    (folder / "valley.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    (folder / "asha-stops.jsonl").write_text("".join(json.dumps({"trial_id": f"9f306_000{n}", "epoch": 1}) + "\n"
                                                     for n in ("00", "10", "11")) + '{"trial_id": "9f306_00012", "ep')
    trials = load(folder).trials.set_index("trial_id")
    assert trials.loc[["9f306_00000", "9f306_00010", "9f306_00011"], "status"].tolist() == ["stopped"] * 3
    assert trials.loc["9f306_00011", "stopped_by_scheduler"]
    assert trials.loc["9f306_00012", "status"] == "unfinished"  # its stop was cut short by a kill: decided again
    assert progress(trials.reset_index()) == {"done": 12, "stalled": 0, "active": 1, "failed": 1, "total": 14}


def test_load_plain_ray_experiment():
    plain = load(PLAIN)
    assert plain.kind == "ray" and plain.metric == "best_loss" and plain.mode == "min"
    assert plain.status == "completed"
    by_id = plain.trials.set_index("trial_id")
    assert set(by_id.index) == {"09108_00000", "09108_00001", "09108_00002", "09108_00003"}  # Tune's short ids
    assert by_id.loc["09108_00002", "status"] == "failed"
    assert "width 3 is unlucky" in by_id.loc["09108_00002", "error"]
    assert by_id.loc["09108_00003", "best_loss"] == pytest.approx(0.25 / 3 + 0.01)
    assert set(plain.epochs["trial_id"]) <= set(by_id.index)


def test_a_plain_ray_trial_is_read_at_its_best_iteration(tmp_path):
    """Plain Tune reports no epoch or best epoch: every trial read 0 epochs, and its val_ columns were its first
    iteration's, not those of the iteration its metric was best at."""
    folder = shutil.copytree(PLAIN, tmp_path / "plain")
    snapshot = next(folder.glob("experiment_state-*.json"))
    snapshot.write_text(snapshot.read_text().replace('"_metric": "loss"', '"_metric": "val_loss"'))
    result = next(folder.glob("*_00000_*")) / "result.json"
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    for i, row in enumerate(rows):  # val_loss best at the second iteration, val_acc rising throughout
        row.update(val_loss=[0.9, 0.2, 0.5, 0.7][i % 4], val_acc=0.1 * (i + 1))
    result.write_text("".join(json.dumps(row) + "\n" for row in rows))
    plain = load(folder)
    trial = plain.trials.set_index("trial_id").loc["09108_00000"]
    assert trial["epochs"] == len(rows) == rows[-1]["training_iteration"]
    assert trial["best_val_loss"] == 0.2 and trial["best_val_acc"] == pytest.approx(0.2)
    assert any("Ray Tune records no mode: val_loss is taken as better lower" in w for w in plain.warnings)


def test_a_plain_ray_experiment_without_a_metric_says_so_rather_than_rank_on_one_it_never_had(tmp_path):
    """A Tuner without TuneConfig(metric=...) read as ranked on best_val_loss "from Ray Tune's state", top 0 of 3."""
    from analysis.report import render_report

    folder = shutil.copytree(PLAIN, tmp_path / "plain")
    snapshot = next(folder.glob("experiment_state-*.json"))
    snapshot.write_text(snapshot.read_text().replace('"_metric": "loss"', '"_metric": null'))
    plain = load(folder)
    assert plain.ray_metric is None
    assert any(w.startswith("Ray Tune recorded no metric (TuneConfig(metric=...)), and the trials report no "
                            "val_loss: no trial is ranked (they report loss") for w in plain.warnings), plain.warnings
    page = render_report(plain)
    assert "none: Ray Tune recorded no metric" in page and "from Ray Tune&#x27;s state" not in page
    result = next(folder.glob("*_00000_*")) / "result.json"  # a val_loss reported: ranked on it, and said so
    result.write_text("".join(json.dumps({**json.loads(line), "val_loss": 0.5}) + "\n"
                              for line in result.read_text().splitlines()))
    plain = load(folder)
    assert plain.metric == "best_val_loss" and any("ranked on val_loss, which the trials report" in w
                                                   for w in plain.warnings)
    assert "best_val_loss (min; Ray Tune recorded none, see the warnings)" in render_report(plain)
    snapshot.unlink()  # no snapshot: what Tune recorded is unknown, not "none"
    assert not any("recorded no metric" in w for w in load(folder).warnings)


def test_a_plain_ray_metric_s_direction_is_guessed_from_common_names():
    from analysis.format import guess_mode

    for metric in ("episode_return_mean", "val_iou", "mean_accuracy", "ndcg@10", "r2"):
        assert guess_mode(metric) == "max", metric  # RLlib's return read as a loss ranked the worst trial first
    for metric in ("loss", "val_mse", "mape", "wer", "perplexity"):
        assert guess_mode(metric) == "min", metric


def test_load_plan_adds_stage_column(tmp_path):
    plan = load(make_plan(tmp_path))
    assert plan.kind == "plan" and plan.status == "completed"
    assert list(plan.stages) == ["rough", "confirm"]  # in plan.json's order
    assert plan.trials["stage"].value_counts().to_dict() == {"rough": 14, "confirm": 9}
    assert set(plan.epochs["stage"]) == {"rough", "confirm"} and set(plan.epochs["experiment"]) == {"rough", "confirm"}
    assert plan.metric == "best_val_loss" and plan.mode == "min"


def test_any_folder_of_experiments_is_a_plan(tmp_path):
    shutil.copytree(ASHA, tmp_path / "stages" / "b-first")
    shutil.copytree(SEEDS, tmp_path / "stages" / "a-second")
    plan = load(tmp_path / "stages")
    assert plan.kind == "plan" and list(plan.stages) == ["b-first", "a-second"]  # by start time
    assert plan.trials["stage"].unique().tolist() == ["b-first", "a-second"]
    assert not any("plan folder" in w for w in plan.warnings)
    shutil.copytree(ASHA, tmp_path / "stages" / "nested-plan" / "rough")  # a plan among them: not silently left out
    (tmp_path / "stages" / "nested-plan" / "plan.json").write_text("{}")
    assert "1 plan folder(s) here are not in these tables (nested-plan): report or load each on its own" in load(
        tmp_path / "stages").warnings


def test_half_written_experiment_loads_what_is_there(tmp_path):
    folder = shutil.copytree(ASHA, tmp_path / "half")
    manifest = json.loads((folder / "valley.json").read_text())
    (folder / "valley.json").write_text(json.dumps({**manifest, "status": "running"}))
    result = folder / "9f306_00006" / "result.json"
    text = result.read_text()
    result.write_text(text[: len(text) - 200])  # a killed driver: the last line cut short
    (folder / "9f306_00007" / "result.json").unlink()  # a trial that has not reported yet
    (folder / "9f306_00008" / "params.json").write_text('{"lr": 0.0')  # params.json cut short
    (folder / "abcde_00099").mkdir()
    (folder / "abcde_00099" / "params.json").write_text('{"variant": 1}')

    half = load(folder)
    assert half.status == "running"
    by_id = half.trials.set_index("trial_id")
    assert "9f306_00008" not in by_id.index and len(by_id) == 14
    assert by_id.loc["9f306_00006", "epochs"] == 5 and by_id.loc["9f306_00006", "status"] == "unfinished"
    assert by_id.loc["9f306_00007", "status"] == "pending"
    text = "\n".join(half.warnings)
    assert "9f306_00006: result.json has a half-written last line" in text
    assert "9f306_00008: params.json is unreadable" in text
    assert "2 trial(s) have no results yet: 9f306_00007, abcde_00099" in text
    # while the search runs, a trial ASHA stopped cannot be told from one still training: 4 + 1 + 2 pending
    assert progress(half.trials)["active"] == 7
    # once the search has ended, a trial without results never had one: a budget stopped it before its first epoch
    manifest = json.loads((folder / "valley.json").read_text())
    (folder / "valley.json").write_text(json.dumps({**manifest, "status": "completed"}))
    assert "2 trial(s) stopped before their first epoch (a budget spent): 9f306_00007, abcde_00099" in \
        "\n".join(load(folder).warnings)


@pytest.mark.parametrize("tune_status, expected", [("TERMINATED", "stopped"), ("ERROR", "failed"), (None, "failed")])
def test_a_failure_in_the_second_of_the_last_report_asks_tune(tmp_path, tune_status, expected):
    """error.txt and result.json both keep whole seconds: a trial that crashed and recovered within the
    second of its last report read `failed` (the chaos test found one). Tune's snapshot knows."""
    folder = shutil.copytree(ASHA, tmp_path / "same-second")
    trial = "9f306_00000"  # stopped by ASHA at its first rung
    last = json.loads((folder / trial / "result.json").read_text().splitlines()[-1])
    occurred = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(last["timestamp"]))
    (folder / trial / "error.txt").write_text(f"Failure # 1 (occurred at {occurred})\nActorDiedError: killed\n")
    if tune_status:
        state = json.dumps({"trial_id": trial, "status": tune_status})
        (folder / "experiment_state-2099-01-01_00-00-00.json").write_text(json.dumps({"trial_data": [[state, "{}"]]}))
    trials, _ = load_experiment(folder)
    assert trials.set_index("trial_id").loc[trial, "status"] == expected


def test_a_trial_cut_short_at_chance_level_reads_stalled_and_stopped_by_the_scheduler(tmp_path):
    """Stalled says it learned nothing; stopped_by_scheduler says it did not train all its epochs (so a confirm
    stage or a seed's mean does not count it), as for any trial ASHA stopped."""
    folder = shutil.copytree(ASHA, tmp_path / "stalled")
    for trial in ("9f306_00000", "9f306_00001"):
        lines = (folder / trial / "result.json").read_text().splitlines()
        lines[-1] = json.dumps({**json.loads(lines[-1]), "stalled": True})
        (folder / trial / "result.json").write_text("\n".join(lines) + "\n")
    before = load_experiment(ASHA)[0].set_index("trial_id")
    assert before.loc["9f306_00000", "status"] == "stopped" and before.loc["9f306_00001", "status"] == "completed"
    trials = load_experiment(folder)[0].set_index("trial_id")
    assert list(trials.loc[["9f306_00000", "9f306_00001"], "status"]) == ["stalled", "stalled"]
    assert list(trials.loc[["9f306_00000", "9f306_00001"], "stopped_by_scheduler"]) == [True, False]
    assert list(trained(trials.loc[["9f306_00000", "9f306_00001"]])) == [False, True]


def test_export_tables_round_trip(tmp_path, asha):
    written = export_tables(asha, tmp_path / "out")
    assert sorted(p.name for p in written) == ["epochs.csv", "epochs.parquet", "trials.csv", "trials.parquet"]
    trials = pd.read_parquet(tmp_path / "out" / "trials.parquet")
    assert len(trials) == 14 and len(pd.read_csv(tmp_path / "out" / "epochs.csv")) == len(asha.epochs)


def test_load_1000_trials(tmp_path):
    """Every trial and epoch of a large folder (the time it takes is benchmarks/scale.py's, not a test's)."""
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "valley.json").write_text(json.dumps({"metric": "val_loss", "mode": "min", "status": "completed"}))
    for i in range(1000):
        trial = folder / f"abcde_{i:05d}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps({"lr": 1e-3 * (1 + i % 7), "layers": i % 5, "max_epochs": 5}))
        rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_acc": 0.5, "best_val_loss": 1.1 / e,
                 "best_epoch": e, "n_params": 100 * (i + 1), "test_loss": 1.0, "test_acc": 0.5,
                 "training_iteration": e, "time_total_s": 0.1 * e} for e in range(1, 6)]
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    big = load(folder)
    assert len(big.trials) == 1000 and len(big.epochs) == 5000
    assert big.trials.set_index("trial_id").loc["abcde_00999", "n_params"] == 100_000
    assert big.epochs.groupby("trial_id")["epoch"].max().eq(5).all()


def test_load_refuses_a_folder_without_experiments(tmp_path):
    with pytest.raises(ResultsError, match="holds no experiment"):
        load(tmp_path)
    with pytest.raises(ResultsError, match="existing folder"):
        load(tmp_path / "missing")


# --- the valley --------------------------------------------------------------------------------------

def frames(sizes, losses, spread=(0.30, 0.32, 0.34), status=None, seeds=None):
    """Hand-built trials and epochs frames; the best trial's last epochs carry ``spread``."""
    n = len(sizes)
    trials = pd.DataFrame({"trial_id": [f"t{i}" for i in range(n)], "status": status or ["completed"] * n,
                           "n_params": sizes, "best_val_loss": losses,
                           "config/layers": [s // 10 for s in sizes], "config/seed": seeds or [0] * n,
                           "config/split_seed": seeds or [0] * n})  # as confirm stages vary it with the seed
    best = f"t{int(np.argmin(losses))}"
    epochs = pd.DataFrame({"trial_id": best, "epoch": [1, 2, 3, 4], "val_loss": [0.9, *spread]})
    return trials, epochs


def test_find_valley_one_standard_error_rule():
    trials, epochs = frames([100, 1_000, 10_000, 100_000, 1_000_000], [1.0, 0.5, 0.31, 0.30, 0.6])
    valley = find_valley(trials, epochs)
    assert valley.best == "t3" and valley.best_value == pytest.approx(0.30)
    assert valley.se == pytest.approx(0.02)  # sample sd of 0.30, 0.32, 0.34
    assert valley.cutoff == pytest.approx(0.32)
    assert set(valley.members) == {"t2", "t3"} and valley.chosen == "t2"
    assert (valley.low_params, valley.high_params, valley.chosen_params) == (10_000, 100_000, 10_000)
    assert "last 3 epochs" in valley.se_source and "chose trial t2" in valley.reason
    assert "moved one way over them (a trend, not noise alone" in valley.se_source  # 0.30, 0.32, 0.34: it says so
    _, noisy = frames([100, 1_000, 10_000, 100_000, 1_000_000], [1.0, 0.5, 0.31, 0.30, 0.6], spread=(0.30, 0.34, 0.32))
    assert "trend" not in find_valley(trials, noisy).se_source
    wider = find_valley(trials, epochs, threshold_se=11)  # 0.30 + 0.22 takes in 0.5 too
    assert wider.chosen == "t1" and set(wider.members) == {"t1", "t2", "t3"}


def test_find_valley_uses_repeated_seeds():
    sizes = [100] * 3 + [1_000] * 3 + [10_000] * 3
    losses = [0.9, 1.0, 1.1, 0.40, 0.42, 0.44, 0.38, 0.40, 0.42]
    trials, epochs = frames(sizes, losses, seeds=[0, 1, 2] * 3)
    valley = find_valley(trials, epochs)
    assert valley.best_value == pytest.approx(0.40) and valley.best == "t6"
    assert valley.se == pytest.approx(0.02 / math.sqrt(3))
    assert "3 seeds" in valley.se_source
    assert set(valley.members) == {"t6", "t7", "t8"} and valley.chosen == "t6"  # 0.42 > 0.40 + 0.0115
    assert find_valley(trials, epochs, threshold_se=2).chosen == "t3"  # 1,000 params: mean 0.42 <= 0.423


def test_find_valley_pools_seed_spread_when_the_best_has_one_seed():
    trials, epochs = frames([100, 100, 1_000, 10_000], [0.9, 1.1, 0.5, 0.45], seeds=[0, 1, 0, 0])
    valley = find_valley(trials, epochs)
    assert valley.se == pytest.approx(np.std([0.9, 1.1], ddof=1))
    assert "pooled" in valley.se_source and valley.chosen == "t2"


def test_find_valley_without_spread_keeps_only_the_best():
    trials, epochs = frames([100, 1_000], [0.5, 0.4])
    valley = find_valley(trials, epochs.iloc[:1])
    assert valley.se == 0 and valley.members == ("t1",) and valley.chosen == "t1"
    assert "fewer than 2" in valley.se_source


def test_find_valley_max_mode_and_exclusions():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "n_params": [10, 100, 1000, 5],
                           "best_val_acc": [0.80, 0.90, 0.91, 0.99], "status": ["completed"] * 3 + ["failed"]})
    epochs = pd.DataFrame({"trial_id": "c", "epoch": [1, 2, 3], "val_acc": [0.88, 0.90, 0.92]})
    valley = find_valley(trials, epochs, metric="best_val_acc")
    assert valley.mode == "max" and valley.best == "c"  # the failed trial's 0.99 does not count
    assert valley.cutoff == pytest.approx(0.91 - 0.02) and valley.chosen == "b"


def test_a_valley_among_trials_that_never_left_chance_says_so():
    trials, _ = frames([100, 1_000, 10_000, 100_000], [2.30, 2.29, 1.8, 2.30])
    assert not_learning(trials) == ""  # a folder written before chance_epochs: nothing to go on, nothing said
    trials = trials.assign(epochs=2, chance_epochs=[2, 2, 0, 2])
    assert list(never_left_chance(trials)) == [True, True, False, True]
    assert not_learning(trials) == ("3 of the 4 trials never left chance level in the 2 epochs they trained, "
                                    "so the valley rests on the 1 that did")
    # a choice among those that never learned is named, not "rests on the 1 that did" (a cnn-rough at one epoch)
    chosen = trials["trial_id"].iloc[0]
    assert not_learning(trials, chosen) == (f"3 of the 4 trials never left chance level in the 2 epochs they trained, "
                                            f"so only 1 learned, and the valley's choice, trial {chosen}, is not one "
                                            "of them")
    assert not_learning(trials.assign(chance_epochs=[2, 1, 0, 2])) == ""  # one fell back to chance: it had left it
    assert not_learning(trials.assign(epochs=[1, 1, 2, 2], chance_epochs=[1, 1, 2, 2])) == (
        "4 of the 4 trials never left chance level in the 1 to 2 epochs they trained, so the valley is chosen "
        "among models that learned nothing")


def test_what_a_search_says_at_its_end_of_trials_that_did_not_learn_or_were_cut_while_learning():
    trials, _ = frames([100, 1_000, 10_000, 100_000], [2.30, 2.29, 1.8, 2.30])
    trials = trials.assign(status="completed", epochs=2, chance_epochs=[2, 2, 0, 2],
                           **{"config/lr": [1e-9, 10.0, 1e-3, 1e-9]})
    assert chance_warning(trials).startswith("3 of 4 trials never left chance level in the epochs they trained "
                                             "(lr 1e-09 to 10; of those that learned, 0.001): a learning rate too "
                                             "low or too high learns nothing")
    assert chance_warning(trials.assign(**{"config/lr": 1e-3})).startswith("3 of 4 trials never left chance level "
                                                                           "in the epochs they trained (all at lr "
                                                                           "0.001)")
    every = chance_warning(trials.assign(chance_epochs=2))
    assert "(lr 1e-09 to 10): none of them learned, so the best is no model at all" in every
    assert chance_warning(trials.assign(chance_epochs=[2, 2, 0, 2], status=["diverged", "diverged", "completed",
                                                                           "diverged"])) == ""  # failed: said apart
    assert chance_warning(trials.assign(chance_epochs=0)) == ""
    stopped = trials.assign(status=["stopped", "stopped", "completed", "stopped"], stopped_by_scheduler=[
        True, True, False, True], epochs=[1, 2, 4, 3], best_epoch=[1, 2, 3, 2])
    assert cut_while_improving(stopped) == (
        "2 of the 3 trials stopped early were still improving when stopped (their last epoch their best), 1 of them "
        "after their first epoch: they are ranked by how fast they began, not by where they would end; a larger "
        "--grace-period (or budget) trains each longer before a cut")
    assert cut_while_improving(stopped.assign(best_epoch=[1, 1, 3, 3], epochs=[1, 1, 4, 3])).startswith(
        "all 3 trials stopped early were still improving when stopped (their last epoch their best), 2 of them")
    assert cut_while_improving(stopped.assign(best_epoch=0)) == ""


def test_find_valley_refuses_empty_input():
    trials, epochs = frames([100], [float("nan")])
    with pytest.raises(ValueError, match="at least one trial with a finite best_val_loss"):
        find_valley(trials, epochs)
    with pytest.raises(ValueError, match="needs a 'n_params' column"):
        find_valley(trials.drop(columns="n_params"), epochs)


def test_find_valley_on_the_recorded_experiment(asha):
    valley = find_valley(asha.trials, asha.epochs)
    assert valley.best == "9f306_00009" and valley.chosen == "9f306_00006"
    assert set(valley.members) == {"9f306_00006", "9f306_00009"}


# --- figures -----------------------------------------------------------------------------------------

def test_loss_vs_params_marks_the_valley(asha):
    fig = figures.loss_vs_params(asha.trials, asha.epochs)
    names = [trace.name for trace in fig.data]
    assert names == ["validation · mlp", "validation, stopped early · mlp", "training · mlp", "best", "1-SE choice"]
    assert fig.layout.xaxis.type == "log" and "parameters" in fig.layout.xaxis.title.text
    choice = fig.data[names.index("1-SE choice")]
    assert list(choice.x) == [28_710] and choice.y[0] == pytest.approx(0.279429, abs=1e-6)
    assert len(fig.data[0].x) + len(fig.data[1].x) == 13  # the failed trial is left out
    assert [a.text for a in fig.layout.annotations][:3] == ["<b>underfit</b>", "<b>valley</b>", "<b>overfit</b>"]
    assert len(fig.layout.shapes) == 4  # three regions and the band edge
    assert "9f306_00006" in choice.text[0]


def test_loss_vs_params_colours_stages_and_survives_thin_data(tmp_path):
    plan = load(make_plan(tmp_path))
    fig = figures.loss_vs_params(plan.trials, plan.epochs)
    assert {"validation · rough", "validation · confirm"} <= {t.name for t in fig.data}
    empty = figures.loss_vs_params(plan.trials.iloc[:0])
    assert not empty.data and "no trial" in empty.layout.annotations[0].text


def test_the_top_table_prints_a_gap_in_whole_numbers_as_a_dash(asha):
    """A grid with rows of `hidden` and rows of `layers` printed `layers` as <NA> beside `-` for the rest."""
    trials = asha.trials.copy()
    trials["best_val_loss"] -= trials["config/layers"].isna() * 10.0  # the hidden rows first
    text = top_table(trials, ASHA)
    assert "<NA>" not in text and "5.0" not in text
    assert any(line.split()[2] == "-" for line in text.splitlines()[2:]), text  # layers of a hidden row


def test_a_top_table_with_no_result_says_whether_trials_failed(asha):
    """An interrupted search none of whose trials reached an epoch read "0 failed or diverged; see the error
    column", as if one had (found by a review)."""
    trials = asha.trials.assign(status="pending", best_val_loss=float("nan"))
    assert top_table(trials, ASHA) == "no trial of 14 reported a result (none failed)"
    trials.loc[0, "status"] = "failed"
    assert top_table(trials, ASHA).startswith("no trial of 14 has a best_val_loss: 1 failed or diverged; the first:")


def test_learning_curves_mark_scheduler_stops(asha):
    fig = figures.learning_curves(asha.trials, asha.epochs)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 14
    stopped = next(t for t in fig.data if t.name == "stopped early (by ASHA or a budget)")
    assert list(stopped.x) == [1, 1, 1, 1]
    assert next(t for t in fig.data if t.name == "failed").x == (1,)
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis.title.text == "validation loss"


def test_learning_curves_of_many_trials_are_one_trace_per_colour(asha, monkeypatch):
    """Thousands of traces make a report slow to build and to open: past MANY_CURVES, one per colour."""
    monkeypatch.setattr(figures, "MANY_CURVES", 5)
    fig = figures.learning_curves(asha.trials, asha.epochs)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert 1 < len(lines) <= 10  # colour buckets of model size, every curve kept
    points = sum(sum(v is not None for v in t.y) for t in lines)
    assert points == asha.epochs["val_loss"].notna().sum()
    assert sum(list(t.y).count(None) for t in lines) == asha.trials["trial_id"].nunique()
    assert next(t for t in fig.data if t.name == "stopped early (by ASHA or a budget)").x == (1, 1, 1, 1)


def test_parallel_coordinates_and_importance(asha):
    fig = figures.parallel_coordinates(asha.trials)
    labels = [d.label for d in fig.data[0].dimensions]
    assert labels == ["hidden", "layers", "l2", "dropout", "log10 params", "best validation loss"]
    scores = figures.param_importance(asha.trials)
    assert set(scores) == {"hidden", "layers", "l2", "dropout"} and sum(scores.values()) == pytest.approx(1)
    assert max(scores, key=scores.get) == "layers"
    bar = figures.importance(asha.trials)
    assert bar.data[0].type == "bar" and set(bar.data[0].y) == set(scores)


def test_importance_with_too_few_trials_says_so(asha):
    fig = figures.importance(asha.trials.head(2))
    assert not fig.data and "needs at least 4 trials" in fig.layout.annotations[0].text
    with pytest.raises(ValueError, match="got 2 trials"):
        figures.param_importance(asha.trials.head(2))


def test_results_table_in_reference_format(asha):
    frame = figures.results_frame(asha.trials)
    assert list(frame.columns) == ["model", "parameters", "accuracy", "loss", "status"]
    assert frame.iloc[0].to_dict()["model"] == "hidden=[2]" and frame["parameters"].is_monotonic_increasing
    fig = figures.results_table(asha.trials)
    assert fig.data[0].type == "table" and len(fig.data[0].cells.values[0]) == 14


def test_results_frame_beyond_max_rows_keeps_the_best_of_an_accuracy(asha):
    """Without a mode it kept the lowest values of any metric: for an accuracy, the worst trials."""
    best = sorted(asha.trials.nlargest(2, "best_val_acc")["test_acc"])  # a tie for third
    assert sorted(figures.results_frame(asha.trials, metric="best_val_acc", max_rows=2)["accuracy"]) == best


def test_results_frame_names_the_headline_of_the_task(asha):
    clock = Task("clock", "csd", "min", "test_csd", ("csd",))
    frame = figures.results_frame(asha.trials.rename(columns={"test_acc": "test_csd"}), task=clock)
    assert list(frame.columns) == ["model", "parameters", "csd", "loss", "status"] and frame["csd"].notna().any()
    assert list(figures.results_frame(asha.trials[:0], task=clock).columns)[2] == "csd"
    plain = figures.results_frame(load(PLAIN).trials)  # no test column: the reference's empty accuracy column
    assert list(plain.columns)[2] == "accuracy" and plain["accuracy"].isna().all()


def test_bootstrap_intervals():
    mean, low, high = figures.bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and 1.0 <= low < 2.5 < high <= 4.0
    assert figures.bootstrap_ci([1.0, 2.0, 3.0, 4.0]) == (mean, low, high)  # seeded
    assert figures.bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        figures.bootstrap_ci([1.0, 2.0], level=95)


def test_confidence_intervals_from_seeds():
    seeds = load(SEEDS)
    frame = figures.seed_frame(seeds.trials, "test_acc")
    assert list(frame.columns) == ["config", "seed", "test_acc"] and len(frame) == 9
    summary = figures.seed_summary(frame, "test_acc")
    assert list(summary["n"]) == [3, 3, 3]
    assert (summary["low"] <= summary["mean"]).all() and (summary["mean"] <= summary["high"]).all()
    fig = figures.confidence_intervals(frame, "test_acc")
    means = fig.data[1]
    assert means.error_x.array is not None and len(means.y) == 3
    assert fig.layout.yaxis.ticktext[-1] == "layers=2"  # best accuracy on top
    lowest = figures.confidence_intervals(frame, "test_acc", mode="min").layout.yaxis.ticktext[-1]
    assert lowest != "layers=2"  # with min, the lowest mean is on top


def test_intervals_over_seeds_hold_only_seeds_that_trained_all_their_epochs():
    """The report's intervals mixed seeds ASHA had cut after an epoch with fully trained ones (trials.csv's
    seeds_mean_* leaves them out), and a search over seeds alone showed 'no test_acc values yet'."""
    trials = load(SEEDS).trials.copy()
    trials.loc[[1, 4], "status"] = "stopped"
    trials.loc[[1, 4], "stopped_by_scheduler"] = True
    frame = figures.seed_frame(trials, "test_acc", min_seeds=2)
    assert len(frame) == 7 and figures.seed_summary(frame, "test_acc")["n"].tolist() == [2, 2, 3]
    trials.loc[[5, 8], "status"] = "unfinished"
    assert figures.has_repeats(trials)  # layers=2 still has two
    trials.loc[[2, 7], "status"] = "stopped"
    assert not figures.has_repeats(trials)
    one = load(SEEDS).trials.iloc[6:9].drop(columns=["config/hidden", "config/layers"])  # only the seed varies
    frame = figures.seed_frame(one, "test_acc", min_seeds=2)
    assert frame["config"].tolist() == ["batch_size=128, lr=0.001"] * 3 and figures.has_repeats(one)


def test_one_seed_draws_no_interval_and_what_intervals_leave_out_is_said():
    """A configuration with one seed was drawn with a '95% CI' of width 0; an interrupted search's unfinished
    trial left the encodings compared without a word; and a plan's seeds figure counted its rough and fine
    trials ASHA stopped among the seeds it left out (found by a review)."""
    from analysis.report import _cut_short

    trials = load(SEEDS).trials.copy()
    one = trials.iloc[[0, 1, 2, 3, 6]]  # a config of three seeds, two of one seed each
    fig = figures.confidence_intervals(figures.seed_frame(one, "test_acc"), "test_acc")
    means = fig.data[1]
    single = [i for i, text in enumerate(means.text) if "n=1: one seed, no interval" in text]
    assert len(single) == 2 and all(math.isnan(means.error_x.array[i]) for i in single)
    assert sum(not math.isnan(v) for v in means.error_x.array) == 1
    trials.loc[[1], "status"] = "stopped"
    trials.loc[[5], "status"] = "running"
    assert _cut_short(trials) == (" 1 trial(s) ASHA or a budget stopped early are left out: a seed trained for "
                                  "fewer epochs is no repeat of the others. 1 unfinished trial(s) (still running, or "
                                  "cut off by an interruption) are left out.")
    alone = pd.concat([trials.iloc[[0]].assign(**{"config/lr": 0.5, "status": "stopped"}), trials.iloc[3:9]])
    assert "ASHA" not in _cut_short(alone, repeated=True) and "1 trial(s) ASHA" in _cut_short(alone)


def test_compare_two_experiments(asha):
    seeds = load(SEEDS)
    fig = figures.compare_experiments({"rough": asha.trials, "confirm": seeds.trials})
    assert [t.name for t in fig.data] == ["rough", "rough: best per size", "confirm", "confirm: best per size"]
    assert fig.layout.xaxis.type == "log"
    # what load() returns, as a notebook has it at hand (AttributeError: 'Experiment' object has no attribute ...)
    assert figures.compare_experiments({"rough": asha, "confirm": seeds}).to_json() == fig.to_json()
    # digits losses beside another data set's, on one axis, where the report refuses to draw them (a review)
    other = seeds.trials.assign(**{"config/dataset": "clocks-small"})
    refused = figures.compare_experiments({"rough": asha, "clocks": other})
    assert not [t for t in refused.data if t.name] and "not drawn across experiments of different dataset " \
        "(clocks-small, digits): their losses do not compare" in refused.to_json()
    with pytest.raises(TypeError, match="compare_experiments takes"):
        figures.compare_experiments({"rough": str(ASHA)})


def test_figures_escape_user_text(asha):
    trials = asha.trials.copy()
    trials["config/note"] = "<img src=x onerror=alert(1)>"
    trials.loc[0, "config/note"] = "</script><b>"
    fig = figures.loss_vs_params(trials, asha.epochs)
    assert "<img" not in fig.to_json() and "&lt;img src=x" in fig.to_json()


# --- clock figures on synthetic predictions ----------------------------------------------------------

def test_clock_sense_distance():
    assert list(figures.csd([0, 0, 30, 100], [719, 360, 700, 100])) == [1, 360, 50, 0]
    assert list(figures.csd(np.array([[0, 0], [11, 59]]), np.array([[11, 59], [0, 0]]))) == [1, 1]
    with pytest.raises(ValueError, match="same length"):
        figures.csd([1, 2], [1])
    assert figures.clock_time(5) == "12:05" and figures.clock_time(719) == "11:59"
    # unsigned labels, as --data-dir files may hold them: uint16 differences wrapped, uint8 pairs overflowed
    assert list(figures.csd(np.array([719], np.uint16), np.array([0], np.uint16))) == [1]
    pairs = np.array([[11, 59], [3, 0]], np.uint8)
    assert list(figures.csd(pairs, pairs[::-1])) == [181, 181]  # 11:59 and 3:00
    assert figures.csd_histogram(pairs, pairs).data[0].type == "histogram"


def test_clock_figures():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 720, 200)
    pred = (true + rng.integers(-20, 21, 200)) % 720
    pred[:5] = (true[:5] + 360) % 720  # five reads off by six hours
    hist = figures.csd_histogram(true, pred)
    assert hist.data[0].type == "histogram" and "common-sense difference" in hist.layout.xaxis.title.text
    boxes = figures.csd_by_hour(true, pred)
    assert len(boxes.data) == 12 and boxes.data[0].name == "12"
    confusion = figures.hour_minute_confusion(true, true)
    hours, minutes = (np.array(t.z) for t in confusion.data)
    assert hours.shape == (12, 12) and minutes.shape == (60, 60)
    assert hours.sum() == 200 and np.trace(hours) == 200 and np.trace(minutes) == 200
    images = rng.integers(0, 256, (200, 1, 16, 16), dtype=np.uint8)  # (N, C, H, W)
    gallery = figures.worst_reads(images, true, pred, n=6, columns=3)
    assert len(gallery.data) == 6 and gallery.data[0].type == "image"
    assert all("CSD 360 min" in a.text for a in gallery.layout.annotations[:5])
    floats = figures.worst_reads(rng.random((200, 16, 16)), true, pred, n=2)
    assert np.asarray(floats.data[0].z).shape == (16, 16, 3)


def test_an_experiment_that_lost_its_manifest_keeps_its_grid_rows_apart(tmp_path):
    """Without valley.json, a trial's `variant` (its grid row's index) resolved to nothing: the 14 rough MLPs read
    as one config of 14 seeds, and the report's valley and intervals over seeds were wrong (found by a review)."""
    from analysis.valley import config_key

    folder = shutil.copytree(ASHA, tmp_path / "asha-digits")
    (folder / "valley.json").unlink()
    lost = load(folder)
    assert config_key(lost.trials).nunique() == 14
    assert set(lost.trials["config/hidden"].dropna()) == set(load(ASHA).trials["config/hidden"].dropna())
    assert "grid rows read from space.yaml, as written: a --set that changed them is not known without " \
           "valley.json" in lost.warnings
    (folder / "space.yaml").unlink()
    rows = load(folder).trials
    assert config_key(rows).nunique() == 14 and sorted(rows["config/variant"]) == list(range(14))
    hovers = [text for trace in figures.loss_vs_params(rows).data if str(trace.name).startswith("validation")
              for text in trace.text]
    assert hovers and all("variant=" in text for text in hovers)  # what tells the rows apart, there too


def test_a_trials_hover_holds_its_whole_config(asha):
    """The hover named only what varied among the trials of its trace (one stage's, or those ASHA stopped): a fine
    trial of l2=1e-06, as every fine trial, read "layers=5, dropout=0.2", the look of a rough one (a review)."""
    trials = asha.trials.assign(**{"config/l2": 1e-06})
    stopped = trials[trials["status"] == "stopped"]
    fig = figures.loss_vs_params(trials, asha.epochs)
    texts = next(t for t in fig.data if t.name.startswith("validation, stopped early")).text
    assert len(texts) == len(stopped) and all("l2=1e-06" in text and "lr=0.001" in text for text in texts), texts


def test_one_seed_twice_is_one_training_not_two_seeds():
    """Optuna's repeats of a configuration, all at seed 0, and `--set seed=3 --samples 3`, read as "seeds 3, std 0"
    (found by a review): a configuration's seeds are its distinct seeds."""
    from analysis.format import task_of
    from analysis.load import with_seed_spread

    seeds = load(SEEDS)
    alike = seeds.trials.assign(**{"config/seed": 0})
    spread = with_seed_spread(alike, task_of(seeds.manifest, alike.columns))
    assert (spread["seeds"] == 1).all() and spread["seeds_std_test_acc"].isna().all()
    assert not figures.has_repeats(alike) and figures.seed_frame(alike, "test_acc", min_seeds=2).empty
    assert (with_seed_spread(seeds.trials, task_of(seeds.manifest, alike.columns))["seeds"] == 3).all()
    # a fixed seed over three validation splits is three runs, in the tables and the figures alike
    splits = alike.assign(**{"config/split_seed": seeds.trials["config/seed"]})
    assert (with_seed_spread(splits, task_of(seeds.manifest, splits.columns))["seeds"] == 3).all()
    assert figures.has_repeats(splits) and len(figures.seed_frame(splits, "test_acc", min_seeds=2)) == 9


def test_what_trains_longer_before_a_cut_is_in_the_words_of_the_command(tmp_path):
    """The note after BOHB's HyperBand, and after a plan's stage, offered --grace-period, which both refuse."""
    from search.run import longer_before_a_cut

    def folder(scheduler, in_plan=False):
        path = tmp_path / scheduler / ("plan" if in_plan else "") / "exp"
        path.mkdir(parents=True)
        (path / "valley.json").write_text(json.dumps({"options": {"scheduler": scheduler}}))
        if in_plan:
            (path.parent / "plan.json").write_text("{}")
        return path

    assert "--grace-period" in longer_before_a_cut(folder("asha"))
    assert "HyperBand's brackets cut by design" in longer_before_a_cut(folder("hyperband"))
    staged = longer_before_a_cut(folder("asha", in_plan=True))
    assert "--grace-period" not in staged and "--stage STAGE.grace_period=N" in staged
