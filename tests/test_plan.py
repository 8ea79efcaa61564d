"""Staged plans: parsing, the four stages end to end, bracketing, transfer, confirmation (Ctrl-C mid-stage and
resuming: tests/test_budget.py)."""
from __future__ import annotations

import json
import re
import warnings

import pandas as pd
import pytest
import yaml

from search.plans import load_plan, run_plan, start_plan
from search.run import SearchError, SearchOptions

ROUGH = """\
family: mlp
metric: val_loss
mode: min
grid:
  - {hidden: [2]}
  - {hidden: [16]}
  - {hidden: [64]}
  - {layers: 1}
params:
  lr: 0.01
  batch_size: 32
"""
FINE = """\
family: mlp
metric: val_loss
mode: min
params:
  hidden: [16]
  lr: {loguniform: [1.0e-4, 1.0e-3]}     # below rough's 0.01: `around` moves it there
  dropout: {uniform: [0.0, 0.3]}
  batch_size: 32
"""
PLAN = """\
description: tiny plan for tests
dataset: synthetic
stages:
  - {name: rough, space: rough.yaml, max_epochs: 3}
  - {name: valley, kind: valley, from: rough, keep: 2}
  - {name: fine, space: fine.yaml, from: valley, search: optuna, samples: 3, max_epochs: EPOCHS,
     around: {lr: 2}}
  - {name: confirm, kind: confirm, from: fine, top: 2, seeds: 2, max_epochs: 2}
"""


@pytest.fixture
def plan_file(write_space):
    write_space(ROUGH, "rough.yaml")
    write_space(FINE, "fine.yaml")
    return lambda epochs=2: write_space(PLAN.replace("EPOCHS", str(epochs)), "plan.yaml")


@pytest.mark.parametrize("body, message", [
    ("stages: []", "a plan is a mapping with a non-empty `stages:` list"),
    ("stages:\n  - {name: v, kind: valley}", "a valley stage needs `from:`"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: b, kind: confirm, from: c}",
     "'c' is not an earlier stage; earlier stages: a"),
    ("stages:\n  - {name: a, space: mlp-rough, epochs: 3}", "unknown key; did you mean 'max_epochs'"),
    ("descripton: x\nstages:\n  - {name: a, space: mlp-rough}", "descripton: unknown key; did you mean 'description'"),
    ("stages:\n  - {name: a, kind: sweep, space: mlp-rough}", "kind: must be one of search, bracket"),
    ("stages:\n  - {name: a, space: nope}", "unknown space 'nope'"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: t, kind: transfer, from: a, dataset: cifar-10}",
     r"stage 't': dataset: unknown data set 'cifar-10' \(did you mean 'cifar10'\?\)"),
    ("stages:\n  - {name: b, kind: bracket, space: mlp-rough, axis: layers, low: 5, high: 1}",
     "low < high must hold"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: v, kind: valley, from: a}\n"
     "  - {name: f, space: mlp-fine, from: v, around: {lr: 1}}", "around: a mapping of keys to factors above 1"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: f, space: mlp-fine, from: a, around: {lr: 3}}",
     "only a search stage `from:` a valley stage has a best trial"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: v, kind: valley, from: a}\n"
     "  - {name: f, space: mlp-fine, from: v, around: {dropout: 2}}", "around: dropout: .* mlp-fine gives dropout as "
                                                                      "uniform; give dropout as {loguniform"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: v, kind: valley, from: a, order: best}",
     r"stage 'v': order: must be size \(smallest first\) or metric \(best first\), got 'best'"),
    # a key the stage's kind would ignore, and a `from:` it would not read
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: c, kind: confirm, from: a, keep: 2}",
     r"stage 'c': keep: a confirm stage does not read keep \(only valley stages do\); drop it"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: v, kind: valley, from: a, max_epochs: 5}",
     r"stage 'v': max_epochs: a valley stage does not read max_epochs \(only search, bracket, confirm, transfer "
     r"stages do\)"),
    ("stages:\n  - {name: a, space: mlp-rough, dataset: digits}", r"stage 'a': dataset: a search stage does not read"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: f, space: mlp-fine, from: a}",
     r"stage 'f': from: a search stage reads only a valley stage .* 'a' is a search stage; drop `from:`"),
    ("stages:\n  - {name: a, space: mlp-rough}\n  - {name: b, kind: bracket, from: a, space: mlp-rough, axis: layers, "
     "low: 1, high: 5}", r"stage 'b': from: a bracket stage reads no earlier stage"),
    ("stages:\n  - {name: a, space: mlp-rough, warm_start: false}",
     r"stage 'a': warm_start: only a search stage `from:` a valley stage has earlier trials"),
])
def test_plan_mistakes_are_one_line(write_space, body, message):
    with pytest.raises(SearchError, match=message):
        load_plan(write_space(body + "\n", "bad-plan.yaml"))


def test_a_space_beside_a_plan_given_by_a_relative_path_is_found_again_when_the_plan_continues(
        write_space, tmp_path, monkeypatch):
    """`valley plan myplan.yaml` stored `space: myspace.yaml` in the plan folder's plan.yaml, which
    `valley plan FOLDER` then looked for inside the plan folder: such a plan could never be continued."""
    write_space(ROUGH, "rough.yaml")
    write_space("stages:\n  - {name: rough, space: rough.yaml}\n", "plan.yaml")
    monkeypatch.chdir(tmp_path)
    assert load_plan("plan.yaml").stages[0].space == str(tmp_path / "rough.yaml")


def test_a_continued_stage_keeps_the_space_file_its_experiment_began_from(write_space, tmp_path):
    """Continued, a search stage rewrote its space file from scratch: it lost the fewer seeds a budget had
    chosen, and no longer said what ran."""
    from search.plans import PlanRun
    from search.plans.state import write_space as write_stage_space
    from spaces import load_space

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nstages:\n  - {name: rough, space: rough.yaml}\n", "p.yaml"))
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), {"stages": {}}, lambda *a: None)
    (tmp_path / "p" / "rough").mkdir(parents=True)
    space = load_space(tmp_path / "rough.yaml")
    first = write_stage_space(run, "rough", space, list(space.grid), space.params, "seeds 0 of 0, 1, 2")
    (tmp_path / "p" / "rough" / "valley.json").write_text("{}")  # its experiment began
    again = write_stage_space(run, "rough", space, list(space.grid), space.params, "seeds 0, 1, 2")
    assert again.description == first.description == "seeds 0 of 0, 1, 2"


def test_builtin_plans_load():
    from search.plans import builtin_plans

    assert "plan-mlp-digits" in builtin_plans()
    for name in builtin_plans():
        assert load_plan(name).stages


def test_a_plan_that_cannot_run_is_refused_before_its_folder_is_made(write_space, tmp_path):
    """An unknown family (when the plan is read), an unknown data set, a family that does not fit the data set:
    one line each before anything trains, and the same --name can be given again."""
    write_space(ROUGH.replace("family: mlp", "family: mpl"), "typo.yaml")
    with pytest.raises(SearchError, match=r"stage 'rough': space: .*typo.yaml: family: unknown family 'mpl'; "
                                          r"did you mean 'mlp'\? valid families: clock, cnn, mlp"):
        load_plan(write_space("stages:\n  - {name: rough, space: typo.yaml}\n", "typo-plan.yaml"))
    plan = load_plan(write_space("stages:\n  - {name: rough, space: clock-encodings}\n", "clock-plan.yaml"))
    with pytest.raises(SearchError, match=r"^--dataset: unknown data set 'clock-tiny' \(did you mean 'clocks-tiny'"):
        start_plan(plan, SearchOptions(storage=str(tmp_path), name="p", dataset="clock-tiny"))
    typo = load_plan(write_space("dataset: synthetc\nstages:\n  - {name: rough, space: clock-encodings}\n", "d.yaml"))
    with pytest.raises(SearchError, match=r"d.yaml: dataset: unknown data set 'synthetc' \(did you mean 'synthetic'"):
        start_plan(typo, SearchOptions(storage=str(tmp_path), name="p"))  # the plan file named, as for all else
    with pytest.raises(SearchError, match=r"stage rough: family 'clock' reads clocks, but data set 'digits' has "
                                          r"class labels; give it one of clocks"):
        start_plan(plan, SearchOptions(storage=str(tmp_path), name="p", dataset="digits"))
    write_space(ROUGH, "rough.yaml")  # a transfer stage's data set, checked against its source's family
    moved = load_plan(write_space("stages:\n  - {name: rough, space: rough.yaml}\n  - {name: c, kind: confirm, "
                                  "from: rough}\n  - {name: t, kind: transfer, from: c, dataset: clocks-tiny}\n",
                                  "moved.yaml"))
    with pytest.raises(SearchError, match=r"stage t: family 'mlp' classifies images, but data set 'clocks-tiny'"):
        start_plan(moved, SearchOptions(storage=str(tmp_path), name="p", dataset="digits"))
    warm = load_plan(write_space("stages:\n  - {name: rough, space: rough.yaml}\n  - {name: v, kind: valley, from: "
                                 "rough}\n  - {name: f, space: rough.yaml, from: v, warm_start: true}\n", "warm.yaml"))
    with pytest.raises(SearchError, match=r"stage f: warm_start seeds Optuna, and the stage runs the random search; "
                                          r"drop warm_start or set the stage's search: optuna"):
        start_plan(warm, SearchOptions(storage=str(tmp_path), name="p", dataset="digits"))
    assert start_plan(warm, SearchOptions(storage=str(tmp_path), name="ok", dataset="digits", search="optuna"))
    assert not (tmp_path / "p").exists()


def test_a_plan_whose_stages_cannot_follow_each_other_is_refused_when_read(write_space):
    """A confirm stage `from:` a valley stage trained nothing and then failed with an internal KeyError, every
    time the plan was continued; a stage's grace period above its epochs failed at run time naming flags the
    user never gave (--grace-period, --max-epochs), and the folder could not be continued."""
    write_space(ROUGH, "rough.yaml")
    plan = ("stages:\n  - {name: rough, space: rough.yaml}\n  - {name: v, kind: valley, from: rough}\n"
            "  - {name: c, kind: confirm, from: v}\n")
    with pytest.raises(SearchError, match=r"stage 'c': from: 'v' is a valley stage, which trains nothing for a "
                                          r"confirm stage to read; set `from:` to a stage that trained: 'rough'"):
        load_plan(write_space(plan, "from-valley.yaml"))
    with pytest.raises(SearchError, match=r"stage 'rough': grace_period: 2 is more than the stage's max_epochs "
                                          r"\(1\)"):
        load_plan("plan-mlp-digits", ("rough.max_epochs=1",))
    assert load_plan("plan-mlp-digits", ("rough.max_epochs=1", "rough.grace_period=1")).stages[0].get(
        "grace_period") == 1


@pytest.mark.ray
def test_a_confirm_stage_without_epochs_of_its_own_trains_as_many_as_its_source(ray_session, write_space, tmp_path):
    """It took its source's space file's max_epochs (3 here), not the source stage's own (1): in what its
    budget reckoned with, and then in what it trained."""
    from search.plans import PlanRun
    from search.plans.stages.confirm import seed_epochs

    write_space(ROUGH + "max_epochs: 3\n", "rough.yaml")
    plan = load_plan(write_space("stages:\n  - {name: rough, space: rough.yaml, max_epochs: 1}\n"
                                 "  - {name: c, kind: confirm, from: rough, top: 1, seeds: 2}\n", "p.yaml"))
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="synthetic"), {"stages": {}}, lambda *a: None)
    assert seed_epochs(run, plan.stages[1]) == 1
    said = []
    folder = run_plan(start_plan(plan, SearchOptions(storage=str(tmp_path), name="ran", dataset="synthetic",
                                                     quiet=True, overrides={"seed": 0}), say=said.append))
    trained = pd.read_csv(folder / "c" / "trials.csv")
    assert len(trained) == 2 and (trained["epochs"] == 1).all()
    # --set seed=0 made every confirmation seed 0 (one seed in stage-c.csv, two in trials.csv): it keeps its own
    assert set(trained["config/seed"]) == {0, 1} and (pd.read_csv(folder / "stage-c.csv")["seeds"] == 2).all()
    assert "valley: stage c: trains each configuration over its own 2 seeds; --set seed applies to the other " \
           "stages" in said
    for stage in ("rough", "c"):  # each stage's space file says what it ran (both said rough.yaml's 3)
        assert yaml.safe_load((folder / f"{stage}.space.yaml").read_text())["max_epochs"] == 1, stage


def test_stage_changes_from_the_command_line_are_what_runs_and_on_record(tmp_path, monkeypatch):
    """`--stage rough.max_epochs=1 --stage confirm.seeds=2` (and so on): a built-in plan's stage settings without a copy
    of its file; plan.yaml (what a continued plan reads) holds them and says where they came from."""
    from search.plans import reopen_plan

    changes = ("rough.max_epochs=1", "rough.grace_period=1", "confirm.seeds=2", "fine.around={lr: 10}")
    plan = load_plan("plan-mlp-digits", changes)
    stages = {stage.name: stage for stage in plan.stages}
    from spaces import BUILTIN_DIR

    (tmp_path / "mine.yaml").write_text((BUILTIN_DIR / "mlp-rough.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # a space file given on the command line is where the command was typed, not
    # beside the plan's file
    assert load_plan("plan-mlp-digits", ("rough.space=mine.yaml",)).stages[0].space == str(tmp_path / "mine.yaml")
    assert stages["rough"].get("max_epochs") == 1 and stages["confirm"].get("seeds") == 2
    assert stages["fine"].get("around") == {"lr": 10}
    untouched = load_plan("plan-mlp-digits")
    changed = ("max_epochs", "grace_period")
    assert {k: v for k, v in stages["rough"].settings.items() if k not in changed} == {
        k: v for k, v in untouched.stages[0].settings.items() if k not in changed}
    start_plan(plan, SearchOptions(storage=str(tmp_path), name="p", quiet=True), say=lambda *a: None)
    header = (tmp_path / "p" / "plan.yaml").read_text().splitlines()[0]
    assert header.endswith("with space paths resolved and --stage rough.max_epochs=1 --stage rough.grace_period=1 "
                           "--stage confirm.seeds=2 --stage fine.around={lr: 10}")
    assert json.loads((tmp_path / "p" / "plan.json").read_text())["stage_changes"] == list(changes)
    again = {stage.name: stage for stage in reopen_plan(tmp_path / "p").plan.stages}
    assert again["rough"].get("max_epochs") == 1 and again["confirm"].get("seeds") == 2


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), RuntimeError("a bug in a stage")])
def test_a_stage_stopped_outside_tunes_fit_says_how_to_continue(raised, write_space, tmp_path, monkeypatch,
                                                                capsys):
    """Ctrl-C or SIGTERM while a stage loads its data or picks its configurations (outside Tune's fit),
    or a bug in valley: plan.json read 'running' after Ctrl-C, and neither said how to go on."""
    from search.plans import runner

    def stage(run, stage):
        raise raised

    monkeypatch.setitem(runner.STAGE_RUNNERS, "search", stage)  # valley's own dispatch, not Ray's or Optuna's
    write_space(ROUGH, "rough.yaml")
    plan = write_space("dataset: synthetic\nstages:\n  - {name: rough, space: rough.yaml, max_epochs: 1}\n",
                       "plan.yaml")
    run = start_plan(load_plan(plan), SearchOptions(storage=str(tmp_path), name="p", quiet=True), say=lambda *a: None)
    with pytest.raises(type(raised)) as err:
        run_plan(run)
    state = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert state["status"] == state["stages"]["rough"]["status"] == "interrupted"
    how = f"valley: the plan stopped in stage rough; `valley plan {tmp_path / 'p'}` continues it from there"
    printed = capsys.readouterr()
    assert how in (err.value.__notes__ if isinstance(raised, RuntimeError) else (printed.out + printed.err).splitlines())


@pytest.mark.ray
def test_a_stage_that_fails_leaves_the_plan_interrupted_and_it_continues_from_there(ray_session, write_space,
                                                                                     tmp_path):
    """Fashion-MNIST's files gone once the plan has started (offline; a plan refuses them missing as it starts):
    the rough stage fails with one line that says how to continue; plan.json reads 'interrupted' with the error
    (it read 'running' for ever). With the files back, `valley plan FOLDER` runs the stage, and the error is gone
    from plan.json."""
    import numpy as np
    from test_data import write_idx

    from search.plans import reopen_plan
    from trainables.data import FASHION_FILES

    write_space(ROUGH, "rough.yaml")
    plan = write_space("dataset: fashion_mnist\nstages:\n  - {name: rough, space: rough.yaml, max_epochs: 1}\n",
                       "plan.yaml")
    data = tmp_path / "data"
    raw = data / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in zip(FASHION_FILES, (5040, 5040, 20, 20)):
        write_idx(raw / name, rng.integers(0, 256, (n, 28, 28)) if "images" in name else rng.integers(0, 10, n), False)
    run = start_plan(load_plan(plan), SearchOptions(storage=str(tmp_path), name="p", quiet=True, data_dir=str(data)),
                     say=lambda *a: None)
    raw.rename(tmp_path / "away")
    with pytest.raises(SearchError, match=r"data set 'fashion_mnist' is not in .* and downloading is off; put .* "
                                          r"and run again \[the plan stopped in stage rough; `valley plan .*p` "
                                          r"continues it from there\]$"):
        run_plan(run)
    state = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert state["status"] == state["stages"]["rough"]["status"] == "interrupted"
    assert state["error"].startswith("stage rough: data set 'fashion_mnist' is not in")

    (tmp_path / "away").rename(raw)
    run_plan(reopen_plan(tmp_path / "p", say=lambda *a: None))
    state = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert state["status"] == state["stages"]["rough"]["status"] == "completed"
    assert "error" not in state and "error" not in state["stages"]["rough"]
    assert len(pd.read_csv(tmp_path / "p" / "rough" / "trials.csv")) == 4


@pytest.mark.ray
def test_the_stage_after_a_valley_keeps_what_the_winning_grid_row_set(ray_session, write_space, tmp_path):
    """The valley carried only the family's architecture keys: plan-clock's `{encoding: class_class,
    csd_weight: 1.0}` went on as plain class_class (csd_weight 0). Here the row that learns sets `lr: 0.01`
    beside its architecture, the one that cannot `lr: 1e-7`; the fine space leaves lr to the rows."""
    write_space(ROUGH.split("grid:")[0] + "grid:\n  - {hidden: [16], lr: 0.01}\n  - {hidden: [16], lr: 1.0e-7}\n"
                "params:\n  batch_size: 32\n", "rough.yaml")
    write_space("family: mlp\nmetric: val_loss\nmode: min\nparams:\n  dropout: {uniform: [0.0, 0.1]}\n", "fine.yaml")
    path = write_space("dataset: synthetic\nstages:\n  - {name: rough, space: rough.yaml, max_epochs: 2}\n"
                       "  - {name: valley, kind: valley, from: rough}\n"
                       "  - {name: fine, space: fine.yaml, from: valley, samples: 1, max_epochs: 1}\n", "plan.yaml")
    folder = run_plan(start_plan(load_plan(path), SearchOptions(storage=str(tmp_path), name="p", quiet=True),
                                 say=lambda *a: None))
    valley = json.loads((folder / "stage-valley.json").read_text())
    assert valley["architectures"] == [{"hidden": [16]}] and valley["with"] == [{"lr": 0.01}]
    assert yaml.safe_load((folder / "fine.space.yaml").read_text())["grid"] == [{"hidden": [16], "lr": 0.01}]
    assert pd.read_csv(folder / "fine" / "trials.csv")["config/lr"].tolist() == [0.01]


def test_a_valley_carries_its_band_smallest_first_or_with_order_metric_best_first():
    """The clock plan's valley kept its 2 smallest encodings of 5 in the band: periodic (4 outputs) and
    class_reg (13) went on, class_periodic, the best a search over all of them found, did not; an encoding's
    few output units say nothing of its complexity."""
    from search.plans.stages.valley import band_architectures

    band = pd.DataFrame({"config/encoding": ["periodic", "class_reg", "class_reg", "class_periodic"],
                         "config/seed": [0, 0, 1, 0], "n_params": [552, 561, 561, 562],
                         "best_val_csd": [91.0, 70.0, 96.0, 85.0]}).sort_values("n_params")
    size = band_architectures(band, ["encoding"], "best_val_csd", "min", "size")
    assert size == [{"encoding": "periodic"}, {"encoding": "class_reg"}, {"encoding": "class_periodic"}]
    best = band_architectures(band, ["encoding"], "best_val_csd", "min", "metric")  # class_reg: 83 over 2 seeds
    assert best == [{"encoding": "class_reg"}, {"encoding": "class_periodic"}, {"encoding": "periodic"}]
    assert band_architectures(band, ["encoding"], "best_val_csd", "max", "metric")[0] == {"encoding": "periodic"}
    # an architecture ranks by its best grid row, not by all its rows together (class_class with csd_weight
    # 1.0 at 10 beside plain class_class at 16 averaged 13, and was dropped behind class_reg at 11)
    rows = pd.DataFrame({"config/encoding": ["class_class", "class_class", "class_reg"],
                         "config/csd_weight": [1.0, 0.0, 0.0], "n_params": [561, 561, 561],
                         "best_val_csd": [10.0, 16.0, 11.0]})
    assert band_architectures(rows, ["encoding"], "best_val_csd", "min", "metric")[0] == {"encoding": "class_class"}


@pytest.mark.ray
def test_four_stages_end_to_end_with_provenance(ray_session, plan_file, write_space, tmp_path, capsys):
    plan_file()
    path = write_space(PLAN.replace("EPOCHS", "2") + "  - {name: moved, kind: transfer, from: confirm, "
                                                     "dataset: digits, top: 2}\n", "plan.yaml")
    run = start_plan(load_plan(path), SearchOptions(storage=str(tmp_path), name="p", quiet=True, keep_weights=1),
                     say=lambda *a: None)
    folder = run_plan(run)
    state = json.loads((folder / "plan.json").read_text())
    assert state["status"] == "completed"
    assert [s["status"] for s in state["stages"].values()] == ["completed"] * 5
    valley = json.loads((folder / "stage-valley.json").read_text())
    assert valley["chosen"] in valley["band"] and 1 <= len(valley["architectures"]) <= 2
    assert "note" not in valley  # the rough trials learned: no warning that they did not
    assert state["stages"]["fine"]["derived_from"] == {"stage": "valley", "trials": valley["band"]}
    fine = pd.read_csv(folder / "fine" / "trials.csv")
    assert len(fine) == 3 and fine["config/lr"].between(0.005, 0.02).all()  # rough's lr 0.01 x/÷ 2
    assert state["stages"]["fine"]["around"] == {"lr": [0.005, 0.02]}
    assert "warm-started Optuna with" in state["stages"]["fine"]["warm_start"]  # rough's trials now inside
    confirm = pd.read_csv(folder / "stage-confirm.csv")
    assert len(confirm) <= 3 and (confirm["seeds"] == 2).all()  # top 2 of fine, and rough's best carried
    assert "rough" in set(confirm["stage"]) or len(confirm) < 3
    assert confirm["mean_best_val_loss"].is_monotonic_increasing  # the winner is chosen on validation
    assert (confirm["ci95_low"] <= confirm["mean_test_acc"]).all()
    assert (confirm["mean_test_acc"] <= confirm["ci95_high"]).all()
    summary = json.loads((folder / "stage-confirm.json").read_text())
    assert summary["p_winner_beats_runner_up"] is None or 0 <= summary["p_winner_beats_runner_up"] <= 1
    confirm_trials = pd.read_csv(folder / "confirm" / "trials.csv")
    assert sorted(confirm_trials["config/split_seed"].unique()) == [0, 1]
    # the plan's answer is chosen by its seeds' mean: every seed keeps its weights, whatever --keep-weights says
    assert confirm_trials["has_weights"].all() and pd.read_csv(folder / "fine" / "trials.csv")["has_weights"].sum() == 1
    assert "incomplete" not in summary  # every configuration finished both seeds
    grid = yaml.safe_load((folder / "confirm.space.yaml").read_text())["grid"]
    assert [row["seed"] for row in grid] == sorted(row["seed"] for row in grid)  # seed by seed: a budget that
    # runs out leaves every configuration with the same seeds

    # the transfer stage, and `valley transfer` of the plan, re-run the configurations in the order the
    # confirm stage ranked them over its seeds (not by each one's luckiest seed), side by side over the seeds
    ranked = [json.loads(label) for label in confirm["label"].head(2)]
    moved = pd.read_csv(folder / "stage-moved.csv")
    assert [json.loads(c) for c in moved["config"]] == [json.loads(json.dumps(c, sort_keys=True)) for c in ranked]
    assert (moved["seeds@synthetic"] == 2).all() and (moved["seeds@digits"] == 1).all()
    # verbatim: the epochs the confirm stage trained them for (the space files name none: it trained 10)
    assert (pd.read_csv(folder / "moved" / "trials.csv")["epochs"] == 2).all()
    from search.transfer import transfer

    again = transfer(folder, 2, SearchOptions(storage=str(tmp_path), dataset="digits", quiet=True))
    assert pd.read_csv(again / "transfer.csv")["config"].tolist() == moved["config"].tolist()

    # a finished plan continued (`valley resume` of a plan folder is `valley plan FOLDER`) re-runs nothing
    from search import cli

    capsys.readouterr()
    assert cli.main(["resume", str(folder)]) == 0
    assert capsys.readouterr().out.count("already completed, not re-run") == 5


@pytest.mark.ray
def test_a_rough_stage_that_only_diverged_stops_the_plan_with_one_line(ray_session, write_space, tmp_path):
    write_space("family: mlp\nmetric: val_loss\nmode: min\ngrid: [{hidden: [2]}, {hidden: [16]}]\n"
                "params: {lr: 1.0e+30}\n", "rough.yaml")
    plan = write_space("dataset: synthetic\nstages:\n  - {name: rough, space: rough.yaml, max_epochs: 1}\n"
                       "  - {name: valley, kind: valley, from: rough}\n", "plan.yaml")
    run = start_plan(load_plan(plan), SearchOptions(storage=str(tmp_path), name="p", quiet=True),
                     say=lambda *a: None)
    with pytest.raises(SearchError, match=r"stage valley: no trial of stage rough has a finite best_val_loss "
                                          r"\(2 diverged\), so there is no valley to find; see .*trials.csv"):
        run_plan(run)
    assert len(pd.read_csv(tmp_path / "p" / "rough" / "trials.csv")) == 2  # what ran is kept


@pytest.mark.ray
def test_a_valley_among_trials_that_never_left_chance_warns(ray_session, write_space, tmp_path):
    """Two of three architectures cannot learn at lr 1e-9 (as a budget that cuts a rough grid to two epochs can
    leave most at chance): the valley stage still runs, and its output, plan.json and the report say so."""
    write_space("family: mlp\nmetric: val_loss\nmode: min\ngrid: [{hidden: [2], lr: 1.0e-9}, "
                "{hidden: [16], lr: 1.0e-9}, {hidden: [64], lr: 0.05}]\nparams: {batch_size: 16}\n", "rough.yaml")
    plan = write_space("dataset: synthetic\nstages:\n  - {name: rough, space: rough.yaml, max_epochs: 2}\n"
                       "  - {name: valley, kind: valley, from: rough}\n", "plan.yaml")
    said = []
    folder = run_plan(start_plan(load_plan(plan), SearchOptions(storage=str(tmp_path), name="p", quiet=True),
                                 say=said.append))
    warning = ("WARNING: stage rough: 2 of the 3 trials never left chance level in the 2 epochs they trained, so "
               "the valley rests on the 1 that did; if it cut them short, give it more epochs")
    assert any(line.startswith(f"valley: stage valley: {warning}") for line in said)
    assert json.loads((folder / "plan.json").read_text())["stages"]["valley"]["note"].startswith(warning)
    from analysis.report import write_report

    assert "2 of the 3 trials never left chance level" in write_report(folder).read_text(encoding="utf-8")


@pytest.mark.ray
def test_transfer_reruns_the_best_configs_on_another_dataset(ray_session, write_space, tmp_path, capsys):
    from search.run import run_search
    from search.transfer import transfer
    from spaces import load_space

    source = run_search(load_space(write_space(ROUGH.replace("metric", "dataset: synthetic\nmetric"))),
                        SearchOptions(storage=str(tmp_path), name="src", max_epochs=2, quiet=True))
    folder = transfer(source, 5, SearchOptions(storage=str(tmp_path), dataset="digits"))
    assert "valley: transferring the top 4 configurations of src (--top 5: only 4 finished)" in capsys.readouterr().out
    side = pd.read_csv(folder / "transfer.csv")
    assert len(side) == 4
    assert {"test_acc@synthetic", "test_acc@digits", "n_params@synthetic", "n_params@digits"} <= set(side)
    # same hidden layers, new output layer: 4 classes -> 10 classes changes the parameter count
    assert (side["n_params@digits"] != side["n_params@synthetic"]).all()
    assert json.loads((folder / "valley.json").read_text())["dataset"] == "digits"


@pytest.mark.ray
def test_a_bracket_under_a_budget_trains_every_round_alike(ray_session, write_space, tmp_path):
    """Round 0 took what it could of the allowance (5 epochs a probe) and round 1 what was left (1 epoch, or none),
    and the bisection compared them as equals, then called the valley bracketed; rounds never run read 'failed'."""
    from search.plans.budget import EPOCHS, Budget

    write_space("family: mlp\nmetric: val_loss\nmode: min\nparams: {layers: 1, lr: 0.01, batch_size: 32}\n",
                "depth.yaml")
    plan = write_space("dataset: synthetic\nbudget_split: {b: 1.0}\nstages:\n"
                       "  - {name: b, kind: bracket, space: depth.yaml, axis: layers, low: 1, high: 9, "
                       "rounds: 3, max_epochs: 4}\n", "bplan.yaml")

    def bracket(total: int) -> tuple[dict, pd.Series]:
        folder = run_plan(start_plan(load_plan(plan), SearchOptions(storage=str(tmp_path), name=f"b{total}",
                                                                    quiet=True), say=lambda *a: None,
                                     budget=Budget(total, EPOCHS)))
        state = json.loads((folder / "plan.json").read_text())
        assert sum(state["budget"]["spent"].values()) <= total
        return state["stages"]["b"], pd.concat([pd.read_csv(folder / e / "trials.csv")
                                                for e in state["stages"]["b"]["experiments"]])["epochs"]

    stage, epochs = bracket(18)  # 18 // 7 probes (3 rounds: 3 + 2 + 2): 2 epochs each, in every round
    assert "the budget pays for 2 of 4 epochs for each of up to 7 probes" in stage["note"]
    assert epochs.tolist() == [2] * 7 and "budget" not in stage["bracket"]["message"]
    stage, epochs = bracket(3)  # 1 epoch each: round 0's 3 probes, and nothing left for round 1's
    assert epochs.tolist() == [1] * 3 and len(stage["rounds"]) == 1
    assert None not in stage["evaluated"].values()  # the round it could not pay for read 'failed'
    assert stage["bracket"]["message"].endswith("(the budget was spent after 1 of 3 rounds)")


@pytest.mark.ray
def test_bracket_bisects_towards_the_best_depth(ray_session, write_space, tmp_path):
    write_space("family: mlp\nmetric: val_loss\nmode: min\nparams: {layers: 1, lr: 0.01, batch_size: 32}\n",
                "depth.yaml")
    plan = write_space("dataset: synthetic\nstages:\n"
                       "  - {name: b, kind: bracket, space: depth.yaml, axis: layers, low: 1, high: 5, "
                       "rounds: 2, max_epochs: 2}\n", "bplan.yaml")
    folder = run_plan(start_plan(load_plan(plan), SearchOptions(storage=str(tmp_path), name="b", quiet=True),
                                 say=lambda *a: None))
    state = json.loads((folder / "plan.json").read_text())["stages"]["b"]
    evaluated = {int(k): v for k, v in state["evaluated"].items()}
    assert {1, 3, 5} <= set(evaluated) and len(evaluated) > 3  # round 2 added midpoints
    best = min(evaluated, key=evaluated.get)  # ranked on the space's metric, val_loss (min)
    assert state["bracket"]["best"] == best
    assert state["bracket"]["bracketed"] == (min(evaluated) < best < max(evaluated))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_bisection_closes_in_on_the_bottom_of_a_known_valley(mode):
    from search.plans.stages.bracket import bisect, verdict

    def curve(x: int) -> float:  # a valley at 13: a loss, or (mode max) an accuracy that peaks there
        loss = (x - 13) ** 2 / 100
        return loss if mode == "min" else 1 - loss

    rounds: list[list[int]] = []
    done: dict[int, float] = {}
    best_after: list[int] = []  # distance from the bottom of the best value so far, after each round

    def evaluate(r, todo):
        rounds.append(todo)
        seen = {**done, **{x: curve(x) for x in todo}}
        best_after.append(min(abs(x - 13) for x in seen if seen[x] == (min if mode == "min" else max)(seen.values())))
        return {x: curve(x) for x in todo}

    assert bisect(done, 1, 40, 6, mode, evaluate)
    assert rounds[0] == [1, 20, 40]
    # until it stands on the bottom, every round probes a value nearer to it than the best so far
    assert all(any(abs(x - 13) < best for x in todo) for todo, best in zip(rounds[1:], best_after) if best)
    assert best_after == sorted(best_after, reverse=True) and best_after[-1] == 0
    assert verdict(done, mode, "layers", 1, 40)["best"] == 13 and verdict(done, mode, "layers", 1, 40)["bracketed"]


def test_bisection_says_when_the_valley_lies_outside_the_range():
    from search.plans.stages.bracket import bisect, verdict

    done: dict[int, float] = {}
    assert bisect(done, 1, 9, 4, "min", lambda r, todo: {x: 10.0 - x for x in todo})  # still falling at 9
    result = verdict(done, "min", "layers", 1, 9)
    assert result["best"] == 9 and not result["bracketed"] and "widen the range" in result["message"]
    assert not bisect({}, 1, 9, 4, "min", lambda r, todo: None)  # an interrupted round stops it


def test_a_bisection_continued_mid_round_takes_that_round_up_again_as_it_was():
    """Continued after an interruption in round 2, the bracket numbered the next probes round 1, found that
    round's finished experiment, trained nothing and recorded NaN for both, then bracketed between them."""
    from search.plans.stages.bracket import bisect, verdict

    def curve(x: int) -> float:
        return (x - 13) ** 2 / 100

    calls: list[tuple[int, list[int]]] = []

    def interrupted_in_round_2(r, todo):
        calls.append((r, todo))
        return None if r == 2 else {x: curve(x) for x in todo}

    done: dict[int, float] = {}
    assert not bisect(done, 1, 40, 4, "min", interrupted_in_round_2)
    begun = [todo for _, todo in calls]  # what the stage records as each round begins
    calls.clear()

    def the_rest(r, todo):
        calls.append((r, todo))
        return {x: curve(x) for x in todo}

    assert bisect(done, 1, 40, 4, "min", the_rest, begun)
    assert calls[0] == (2, begun[2]) and [r for r, _ in calls] == [2, 3]  # round 2 again, then round 3
    uninterrupted: dict[int, float] = {}
    assert bisect(uninterrupted, 1, 40, 4, "min", lambda r, todo: {x: curve(x) for x in todo})
    assert done == uninterrupted
    lost = verdict({10: 0.5, 13: 0.0, 14: float("nan"), 20: 0.6}, "min", "layers", 1, 40)
    assert not lost["bracketed"] and "has a neighbour without a result" in lost["message"]  # one that failed


def test_around_leaves_a_key_that_set_fixes_and_says_so():
    from search.plans.stages.search import unfixed

    assert unfixed({"lr": 3, "l2": 10}, {"lr": 1e-5}) == (
        {"l2": 10}, "--set lr=1e-05 fixes what around would search (lr), so it is not searched")
    assert unfixed({"lr": 3}, {}) == ({"lr": 3}, "")


def test_around_takes_only_log_uniform_ranges_and_a_positive_best_value():
    from search.plans.stages.search import centre_ranges
    from spaces import Dist

    params = {"lr": Dist("loguniform", (1e-6, 1e-3)), "dropout": Dist("uniform", (0.1, 0.7)), "layers": 2}
    moved, ranges, note = centre_ranges(params, {"lr": 3}, {"lr": 1e-3}, "mlp-fine")
    assert moved["lr"] == Dist("loguniform", (1e-3 / 3, 3e-3)) and ranges == {"lr": [1e-3 / 3, 3e-3]}
    assert moved["dropout"] == params["dropout"] and params["lr"].args == (1e-6, 1e-3)  # the space is not changed
    assert "mlp-fine gives [1e-06, 0.001]" in note
    for around, best, message in [({"dropout": 2}, {"dropout": 0.5}, "mlp-fine gives dropout as uniform"),
                                  ({"layers": 2}, {"layers": 2}, "mlp-fine fixes layers at 2"),
                                  ({"l2": 2}, {"l2": 0.1}, "mlp-fine has no l2"),
                                  ({"lr": 2}, {"lr": 0.0}, "has lr = 0.0, not a positive number")]:
        with pytest.raises(SearchError, match=message):
            centre_ranges(params, around, best, "mlp-fine")


def test_a_warm_start_point_is_one_optuna_can_draw():
    """A randint's high is exclusive and a q-distribution draws low + k q: a rough trial moved to the edge
    of such a range (or between its steps) was a point Optuna refused, and the fine stage failed."""
    from ray.tune.search.optuna import OptunaSearch

    from search.plans.stages.search import as_point
    from search.tune_space import param_space
    from spaces import parse_space

    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min",
                         "params": {"layers": {"randint": [1, 4]}, "dropout": {"quniform": [0.1, 0.5, 0.1]},
                                    "batch_size": {"qrandint": [16, 128, 16]}, "lr": {"loguniform": [1e-4, 1e-2]}}})
    rough = {"layers": 4, "dropout": 0.27, "batch_size": 100, "lr": 1e-3}
    assert as_point(rough, space) is None
    assert as_point({**rough, "layers": 3, "dropout": 0.3, "batch_size": 96}, space) is not None
    point = as_point(rough, space, clip=True)
    assert point == {"layers": 3, "dropout": pytest.approx(0.3), "batch_size": 96, "lr": 1e-3}
    drawn = OptunaSearch.convert_search_space(param_space(space, {}, "optuna")[0])
    assert all(drawn[key]._contains(drawn[key].to_internal_repr(value)) for key, value in point.items())
    high = as_point({**rough, "dropout": 0.9, "batch_size": 500}, space, clip=True)
    assert high["dropout"] == pytest.approx(0.5) and high["batch_size"] == 128


def test_a_config_that_cannot_be_moved_into_the_fine_space_says_which_key_keeps_it_out():
    """The fine stage's note read 'evaluating first the best of each of 0 architectures, moved into it'."""
    from search.plans.stages.search import placed
    from spaces import parse_space

    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min", "grid": [{"layers": 2}],
                         "params": {"batch_size": {"choice": [32, 64]}, "lr": {"loguniform": [1e-4, 1e-2]}}})
    rough = {"layers": 2, "batch_size": 128, "lr": 0.5}
    assert placed(rough, space, clip=True) == (None, "its batch_size 128 is none of the space's choice [32, 64]")
    assert placed({**rough, "layers": 3}, space, clip=True) == (None, "it matches none of the space's grid rows")
    assert placed(rough, space) == (None, "its batch_size 128 is none of the space's choice [32, 64]")
    assert placed({**rough, "batch_size": 64}, space) == (None, "its lr 0.5 is outside the space's loguniform "
                                                                "[0.0001, 0.01]")
    assert placed({**rough, "batch_size": 64}, space, clip=True) == ({"variant": 0, "batch_size": 64, "lr": 0.01}, "")


def test_a_fine_stage_whose_source_trials_all_stalled_says_so():
    """It said 'none of the 0 finished trials (of 3) ... (the best: no finished trial)' of trials that had trained
    every epoch (at chance level)."""
    import types

    from search.plans.stages.search import warm_start_points
    from spaces import parse_space

    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min",
                         "params": {"lr": {"loguniform": [1e-4, 1e-2]}}})
    rough = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["stalled", "stalled", "failed"],
                          "best_val_loss": [2.3, 2.31, None], "config/lr": [1e-9, 1e-9, 1e9]})
    run = types.SimpleNamespace(trials=lambda name: (rough, None), base=SearchOptions())
    assert warm_start_points(run, {"from": "rough"}, space) == (
        [], [], "none of the 3 trials of stage rough can warm-start it: each stalled at chance level, failed or did "
                "not finish; Optuna starts from nothing")


def test_a_config_outside_the_fine_space_is_moved_in_only_when_asked():
    from search.plans.stages.search import as_point
    from spaces import parse_space

    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min",
                         "grid": [{"hidden": [16]}, {"hidden": [64]}],
                         "params": {"lr": {"loguniform": [1e-6, 1e-3]}, "l2": {"loguniform": [1e-6, 1e-2]},
                                    "batch_size": {"choice": [64, 128]}}})
    rough = {"hidden": [64], "lr": 1e-3, "l2": 0.0, "batch_size": 128}
    assert as_point(rough, space) is None  # l2 = 0 lies outside the log range
    assert as_point(rough, space, clip=True) == {"variant": 1, "lr": 1e-3, "l2": 1e-6, "batch_size": 128}
    assert as_point({**rough, "batch_size": 32}, space, clip=True) is None  # not a choice the space offers
    assert as_point({**rough, "hidden": [8]}, space, clip=True) is None  # not one of its architectures
    # `valley plan ... --set batch_size=64`: Optuna samples no batch size, so a point holds none (Ray refused
    # the warm start, after the rough stage had trained); the rough trials trained with it, or are outside
    fixed = {"batch_size": 64, "l2": 1e-4}
    assert as_point({**rough, **fixed}, space, fixed=fixed) == {"variant": 1, "lr": 1e-3}
    assert as_point(rough, space, fixed=fixed) is None


def test_confirm_chooses_the_winner_on_validation_not_on_test():
    from analysis.format import confirm_verdict
    from search.plans import confirm_table
    from trainables import get_family

    rows = []
    for seed in range(4):  # config A: better on test, worse on validation
        rows.append({"config/family": "mlp", "config/hidden": "[8]", "config/seed": seed,
                     "best_val_loss": 0.5 + 0.01 * seed, "test_acc": 0.95})
        rows.append({"config/family": "mlp", "config/hidden": "[16]", "config/seed": seed,
                     "best_val_loss": 0.4 + 0.01 * seed, "test_acc": 0.90 + 0.01 * (seed % 2)})
    table, summary = confirm_table(pd.DataFrame(rows), [{"hidden": [8]}, {"hidden": [16]}],
                                   "best_val_loss", "min", get_family("mlp").task)
    assert json.loads(summary["winner"]) == {"hidden": [16]}
    assert list(table["mean_test_acc"]) == pytest.approx([0.905, 0.95])
    assert summary["p_winner_beats_runner_up"] == 0.0 and summary["chosen_by"] == "mean best_val_loss (min)"
    assert confirm_verdict(summary, "config 1") == (
        "winner config 1 by mean best_val_loss (min): test_acc 0.905, the runner-up's 0.95; P(winner beats "
        "runner-up) = 0, so on test_acc the runner-up does better: validation did not tell them apart")
    # one configuration confirmed (a budget that paid for one): it ended on its test metric, as if cut off
    _, alone = confirm_table(pd.DataFrame(rows), [{"hidden": [8]}], "best_val_loss", "min", get_family("mlp").task)
    assert confirm_verdict(alone, "config 1") == ("winner config 1 by mean best_val_loss (min): test_acc 0.95; the "
                                                  "only configuration confirmed: no runner-up to compare it with, no P")
    # seeds that read the same on test (a small test set, both at 1.0): a tie, not a loss (P was 0)
    tied = [{**row, "test_acc": 1.0} for row in rows]
    _, even = confirm_table(pd.DataFrame(tied), [{"hidden": [8]}, {"hidden": [16]}], "best_val_loss", "min",
                            get_family("mlp").task)
    assert even["p_winner_beats_runner_up"] == 0.5
    assert confirm_verdict(even, "config 1").endswith("P(winner beats runner-up) = 0.5: they tie on test_acc over "
                                                      "these seeds")


def test_confirm_counts_only_seeds_that_trained_all_their_epochs_and_compares_on_shared_ones():
    """A time budget that ran out: config A finished seeds 0-2, B seeds 0-1 (its seed 2 cut short), C none.
    A lucky seed of a configuration that ran fewer must not win: A and B meet on seeds 0 and 1, C is out."""
    from analysis.format import confirm_verdict
    from search.plans import confirm_table
    from trainables import get_family

    rows = []
    for seed, (a, b) in enumerate([(0.30, 0.35), (0.32, 0.36), (0.31, 0.05)]):
        rows.append({"config/hidden": "[8]", "config/seed": seed, "status": "completed", "best_val_loss": a,
                     "test_acc": 0.9})
        rows.append({"config/hidden": "[16]", "config/seed": seed, "status": "stopped" if seed == 2 else "completed",
                     "best_val_loss": b, "test_acc": 0.99 if seed == 2 else 0.8})
    rows.append({"config/hidden": "[32]", "config/seed": 0, "status": "stopped", "best_val_loss": 0.01,
                 "test_acc": 0.99})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's empty-slice warnings once reached the terminal
        table, summary = confirm_table(pd.DataFrame(rows), [{"hidden": [8]}, {"hidden": [32]}, {"hidden": [16]}],
                                       "best_val_loss", "min", get_family("mlp").task)
    assert json.loads(summary["winner"]) == {"hidden": [8]} and summary["seeds"] == [0, 1]
    assert list(table["seeds"]) == [2, 2] and list(table["mean_test_acc"]) == pytest.approx([0.9, 0.8])
    assert list(table["config"]) == [1, 3]  # the candidates' numbers: C's (2) left out
    assert summary["incomplete"] == ("1 of 3 configurations finished no seed: left out; compared on the seeds every "
                                     "configuration ended (0, 1); left out: 1 more seed of some")
    one = pd.DataFrame([row for row in rows if row["config/seed"] == 0])  # one seed: nothing to resample
    table, summary = confirm_table(one, [{"hidden": [8]}, {"hidden": [16]}], "best_val_loss", "min",
                                   get_family("mlp").task)
    assert summary["p_winner_beats_runner_up"] is None and table[["ci95_low", "ci95_high"]].isna().all().all()
    assert confirm_verdict(summary, "config 1") == ("winner config 1 by mean best_val_loss (min): test_acc 0.9, the "
                                                    "runner-up's 0.8; on one seed: no interval, no P")


def test_a_seed_that_diverged_counts_against_its_configuration_not_against_the_others_seeds():
    """A trained all 5 seeds; B trained seed 0 and diverged on 1-4. Compared on seed 0 alone, B's lucky seed won
    and A's four were thrown away. Now both are compared on 0-4, and B, which failed on 4, ranks after A."""
    from analysis.format import confirm_verdict
    from search.plans import confirm_table
    from trainables import get_family

    rows = [{"config/lr": 0.1, "config/seed": s, "status": "completed", "best_val_loss": 0.5, "test_acc": 0.9}
            for s in range(5)]
    rows += [{"config/lr": 0.01, "config/seed": 0, "status": "completed", "best_val_loss": 0.45, "test_acc": 0.91}]
    rows += [{"config/lr": 0.01, "config/seed": s, "status": "diverged", "best_val_loss": None, "test_acc": None}
             for s in range(1, 5)]
    table, summary = confirm_table(pd.DataFrame(rows), [{"lr": 0.01}, {"lr": 0.1}], "best_val_loss", "min",
                                   get_family("mlp").task)
    assert json.loads(summary["winner"]) == {"lr": 0.1} and summary["seeds"] == [0, 1, 2, 3, 4]
    assert list(table["config"]) == [2, 1] and list(table["seeds"]) == [5, 1] and list(table["failed"]) == [0, 4]
    assert table.loc[1, ["ci95_low", "ci95_high"]].isna().all()  # one trained seed: no interval
    assert summary["incomplete"] == "failed or diverged on some seeds, so ranked after those that did not: config 1 on 4 of 5"
    assert confirm_verdict(summary, "config 2") == ("winner config 2 by mean best_val_loss (min): test_acc 0.9, the "
                                                    "runner-up's 0.91; the runner-up failed or diverged on 4 of 5 seeds")


def test_configurations_that_ended_different_seeds_get_no_paired_p_and_a_point_no_interval():
    from search.plans import confirm_table
    from trainables import get_family

    rows = [{"config/lr": 0.1, "config/seed": 0, "status": "completed", "best_val_loss": 0.5, "test_acc": 0.9},
            {"config/lr": 0.01, "config/seed": 1, "status": "completed", "best_val_loss": 0.4, "test_acc": 0.8},
            {"config/lr": 0.1, "config/seed": 1, "status": "stopped", "best_val_loss": 0.3, "test_acc": 0.99},
            # stalled at chance level when a budget cut it short: no more a finished seed than a stopped one
            {"config/lr": 0.01, "config/seed": 0, "status": "stalled", "stopped_by_scheduler": True,
             "best_val_loss": 0.1, "test_acc": 0.1}]
    table, summary = confirm_table(pd.DataFrame(rows).fillna({"stopped_by_scheduler": False}),
                                   [{"lr": 0.1}, {"lr": 0.01}], "best_val_loss", "min", get_family("mlp").task)
    assert summary["p_winner_beats_runner_up"] is None and table[["ci95_low", "ci95_high"]].isna().all().all()
    assert list(table["seeds"]) == [1, 1] and json.loads(summary["winner"]) == {"lr": 0.01}
    assert summary["incomplete"].startswith("WARNING: the configurations ended no seed in common")


def test_each_configuration_is_confirmed_once_though_two_stages_found_it():
    from search.plans.stages.confirm import in_order

    a, b, c = {"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}
    top = [("fine", a, "t1"), ("fine", b, "t2")]
    assert in_order(top, [("rough", c, "t3"), ("bracket", c, "t4"), ("other", b, "t5")]) == [
        ("fine", a, "t1"), ("rough", c, "t3"), ("fine", b, "t2")]


def test_a_candidate_s_evidence_is_its_mean_as_top_configs_ranks_it():
    """A config with two finished seeds at 0.30 and one ASHA stopped at 0.90 read 0.50 beside another's 0.35:
    a budget that paid for one confirmed the second, though the stage ranked the first best."""
    from search.plans import top_configs
    from search.plans.stages.confirm import evidence

    trials = pd.DataFrame({"trial_id": list("abcde"), "status": ["completed", "completed", "stopped", "completed",
                                                                  "stalled"],
                           "best_val_loss": [0.30, 0.30, 0.90, 0.35, 0.01], "config/lr": [0.1, 0.1, 0.1, 0.2, 0.3],
                           "config/seed": [0, 1, 2, 0, 0]})
    assert top_configs(trials, "val_loss", "min", 2)[0] == [{"lr": 0.1}, {"lr": 0.2}]
    assert evidence(trials, {"lr": 0.1}, "best_val_loss") == pytest.approx(0.30)
    assert evidence(trials, {"lr": 0.3}, "best_val_loss") is None  # stalled at chance: no evidence
    only_stopped = trials.assign(status=["stopped"] * 5)
    assert evidence(only_stopped, {"lr": 0.1}, "best_val_loss") == pytest.approx(1.5 / 3)


def test_top_configs_fill_with_early_stopped_trials_only_when_asked():
    from search.plans import top_configs

    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"], "status": ["stopped", "completed", "stopped", "failed"],
        "best_val_loss": [0.1, 0.5, 0.3, 0.05], "config/hidden": ["[1]", "[2]", "[3]", "[4]"]})
    assert top_configs(trials, "val_loss", "min", 3)[1] == ["b"]
    configs, ids = top_configs(trials, "val_loss", "min", 3, stopped=True)
    assert ids == ["b", "a", "c"]  # every completed trial first, then the stopped ones by their metric
    assert configs[1] == {"hidden": [1]}


def test_transfer_help_says_what_transfer_does_with_a_data_set_and_epochs(capsys):
    """It said --dataset defaults to "the space's" (transfer refuses to run without one) and --max-epochs to
    "the space's, else 10" (it trains as many as the source's trials had)."""
    from search import cli

    with pytest.raises(SystemExit):
        cli.main(["transfer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the data set to re-run the configurations on (required)" in text
    assert "epochs per trial (default: as many as the source's trials had)" in text and "else 10" not in text


def test_top_configs_rank_a_config_by_its_mean_over_seeds_not_its_luckiest_seed():
    from search.plans import top_configs
    from search.plans.select import seeds_of, side_by_side

    trials = pd.DataFrame({
        "trial_id": list("abcdefg"), "status": ["completed"] * 6 + ["stopped"],
        "best_val_loss": [0.30, 0.50, 0.50, 0.35, 0.36, 0.36, 0.01], "test_acc": [0.9, 0.8, 0.7, 0.6, 0.6, 0.6, 0.99],
        "config/hidden": ["[1]"] * 3 + ["[2]"] * 3 + ["[1]"], "config/seed": [0, 1, 2, 0, 1, 2, 3]})
    configs, ids = top_configs(trials, "val_loss", "min", 2)
    assert configs == [{"hidden": [2]}, {"hidden": [1]}] and ids == ["d", "a"]
    assert top_configs(trials, "val_loss", "min", 1, stopped=True)[1] == ["d"]  # a's stopped seed does not count
    before = seeds_of(trials, ids)
    assert before["trial_id"].tolist() == list("defabc")  # best config first (transfer listed them as trained)
    after = pd.DataFrame({"trial_id": ["x", "y"], "status": ["completed"] * 2, "best_val_loss": [1.0, 2.0],
                          "test_acc": [0.5, 0.4], "config/hidden": ["[1]", "[2]"]})
    side = side_by_side(before, after, "a", "b", "test_acc").set_index("config")
    assert side.loc['{"hidden": [1]}', "test_acc@a"] == pytest.approx(0.8) and side["seeds@a"].tolist() == [3, 3]
    assert side.index.tolist() == ['{"hidden": [2]}', '{"hidden": [1]}'] and side["rank"].tolist() == [1, 2]
    # synthetic clocks, then the course's files: both `clocks`, and every column came twice under one name (a
    # review); a clock's validation metric, CSD, beside its loss
    clocks = side_by_side(before.assign(best_val_csd=30.0), after.assign(best_val_csd=40.0), "clocks", "clocks",
                          "test_acc", "val_csd")
    assert clocks.columns.is_unique and {"best_val_csd@source", "best_val_csd@target", "test_acc@target"} <= set(
        clocks.columns)


def test_a_plan_begun_before_a_key_its_stage_ignores_was_refused_goes_on(write_space, tmp_path):
    """A plan folder whose plan.yaml has a key its stage never read (keep: on a confirm stage) could not be
    continued once such keys were refused; it goes on as it began, the key ignored as it was."""
    from search.plans import reopen_plan

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("stages:\n  - {name: rough, space: rough.yaml}\n  - {name: c, kind: confirm, "
                                 "from: rough}\n", "p.yaml"))
    folder = start_plan(plan, SearchOptions(storage=str(tmp_path), name="old", dataset="digits"),
                        say=lambda *a: None).folder
    written = folder / "plan.yaml"
    written.write_text(written.read_text().replace("kind: confirm", "kind: confirm\n  keep: 2"))
    with pytest.raises(SearchError, match="a confirm stage does not read keep"):
        load_plan(written)  # as a new plan: refused
    said = []
    assert reopen_plan(folder, say=said.append).plan.stages[1].get("keep") == 2
    assert said == [f"valley: note: {written}: stage 'c': keep: a confirm stage does not read keep (only valley "
                    "stages do); drop it, it would be ignored; the plan began before that was refused, and goes on "
                    "as it began"]


def test_a_plan_folder_names_its_data_set_only_where_it_is_not_the_plan_s_own(tmp_path):
    """plan-mlp-digits on digits was plan-mlp-digits-digits-<time>; the README says plan-mlp-digits-<time>."""
    plan = load_plan("plan-mlp-digits")
    own = start_plan(plan, SearchOptions(storage=str(tmp_path / "a")), say=lambda *a: None).folder.name
    other = start_plan(plan, SearchOptions(storage=str(tmp_path / "b"), dataset="synthetic"),
                       say=lambda *a: None).folder.name
    assert re.fullmatch(r"plan-mlp-digits-\d{8}-\d{6}", own) and re.fullmatch(r"plan-mlp-digits-synthetic-\d{8}-\d{6}",
                                                                                 other)
