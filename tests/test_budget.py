"""One budget for a plan: parsing, the split, never overspending, resuming within it, and the incumbent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from search.options import SearchError, SearchOptions
from search.plans import builtin_plans, least_budget, load_plan, reopen_plan, run_plan, start_plan
from search.plans.budget import EPOCHS, SECONDS, Budget, allowance
from test_plan import ROUGH  # the same four rough architectures

# a fine space that cannot learn in a few epochs (lr around 1e-6): the rough stage's best must win;
# its default architecture is given as layers, which the valley's (hidden widths) replaces
USELESS_FINE = """\
family: mlp
metric: val_loss
mode: min
params:
  layers: 1
  lr: {loguniform: [1.0e-7, 1.0e-6]}
  batch_size: 32
"""
PLAN = """\
dataset: synthetic
budget_split: {rough: 0.35, fine: 0.25, confirm: 0.4}
stages:
  - {name: rough, space: rough.yaml, max_epochs: 3}
  - {name: valley, kind: valley, from: rough, keep: 1}
  - {name: fine, space: fine.yaml, from: valley, search: optuna, samples: 3, max_epochs: FINE_EPOCHS}
  - {name: confirm, kind: confirm, from: fine, top: 1, seeds: 2, max_epochs: 3}
"""


@pytest.fixture
def budget_plan(write_space):
    write_space(ROUGH, "rough.yaml")
    write_space(USELESS_FINE, "fine.yaml")
    return lambda fine_epochs=3: write_space(PLAN.replace("FINE_EPOCHS", str(fine_epochs)), "plan.yaml")


@pytest.mark.parametrize("text, budget", [("600", Budget(600, EPOCHS)), ("90m", Budget(5400.0, SECONDS)),
                                          ("2h", Budget(7200.0, SECONDS)), ("45s", Budget(45.0, SECONDS))])
def test_a_budget_is_trial_epochs_or_a_time(text, budget):
    assert Budget.parse(text) == budget


@pytest.mark.parametrize("text", ["0", "-5", "abc", "2 days", "1.5"])
def test_a_bad_budget_says_what_it_takes(text):
    with pytest.raises(SearchError, match="--budget must be a whole number of trial-epochs"):
        Budget.parse(text)


def test_what_a_stage_leaves_goes_to_the_later_ones():
    state = Budget(100, EPOCHS).as_state({"rough": 0.2, "fine": 0.4, "confirm": 0.4})
    assert allowance(state, "rough", ["fine", "confirm"]) == pytest.approx(20)
    state["spent"]["rough"] = 10  # the rough grid needed half its share
    assert allowance(state, "fine", ["confirm"]) == pytest.approx(45)
    state["spent"]["fine"] = 45
    assert allowance(state, "confirm", []) == pytest.approx(45)
    state["spent"]["fine"] = 200  # nothing left: nothing allowed, never a negative allowance
    assert allowance(state, "confirm", []) == 0


def test_an_allowance_is_not_a_float_s_hair_below_the_whole_candidates_it_pays_for():
    """plan-clock-small under --budget 60 allowed its confirm stage 12 x 0.35 / 0.35 = 11.999999999999998
    trial-epochs, and confirmed 2 of its 3 candidates of 4 (floored), leaving 4 of the plan's 60 unspent."""
    state = Budget(60, EPOCHS).as_state({"encodings": 0.3, "fine": 0.35, "confirm": 0.35})
    state["spent"].update(encodings=18, fine=30)
    assert allowance(state, "confirm", []) == 12 and 12 // 4 == 3


def test_what_a_confirm_stage_cannot_use_goes_to_the_stages_before_it():
    """A confirm stage pays for whole configurations over its seeds (here 20 trial-epochs each): its share of
    120, 48, pays for two, so the 8 it could not use are shared by the stages before it, not left unspent."""
    state = Budget(120, EPOCHS).as_state({"rough": 0.25, "fine": 0.35, "confirm": 0.4})
    assert allowance(state, "rough", ["fine", "confirm"], {"confirm": 20}) == pytest.approx(80 * 0.25 / 0.6)
    state["spent"]["rough"] = 24
    assert allowance(state, "fine", ["confirm"], {"confirm": 20}) == pytest.approx(96 - 40)
    state["spent"]["fine"] = 55
    assert allowance(state, "confirm", [], {"confirm": 20}) == pytest.approx(41)  # its own share is not rounded
    assert allowance(state, "fine", ["confirm"], {"confirm": 60}) == pytest.approx(96 * 0.35 / 0.75)  # < 1 unit


def test_what_a_confirm_stage_has_no_candidates_for_goes_to_the_stages_before_it(tmp_path):
    """plan-mlp-digits under --budget 250 with 2 seeds of 6 epochs: the confirm stage's share, 100, was kept for
    8 candidates of 12 trial-epochs, but it has at most 4 (its top 3 and the rough stage's best); the other 52
    went unspent (202 of 250)."""
    from search.plans import PlanRun
    from search.plans.stages.confirm import most_candidates

    plan = load_plan("plan-mlp-digits")
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), {"stages": {}}, lambda *a: None)
    assert most_candidates(run, plan.stages[-1]) == 3 + 1
    state = Budget(250, EPOCHS).as_state({"rough": 0.2, "fine": 0.4, "confirm": 0.4})
    assert allowance(state, "rough", ["fine", "confirm"], {"confirm": 12}, {"confirm": 4}) == pytest.approx(
        (250 - 48) * 0.2 / 0.6)
    state["spent"]["rough"] = 67
    assert allowance(state, "fine", ["confirm"], {"confirm": 12}, {"confirm": 4}) == pytest.approx(250 - 67 - 48)


def test_a_confirm_stage_continued_chooses_as_many_candidates_as_its_allowance_paid_for(write_space, tmp_path):
    """Continued after an interruption, a confirm stage counted what it had trained against what it could still
    choose: with 72 of its 80 trial-epochs trained, 0 candidates of 24 fitted and it could never finish."""
    import shutil

    from search.plans import PlanRun
    from search.plans.stages.confirm import confirm_table, paid_for
    from trainables import get_family

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 0.5, confirm: 0.5}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml, max_epochs: 8}\n"
                                 "  - {name: confirm, kind: confirm, from: rough, seeds: 3, max_epochs: 8}\n", "p.yaml"))
    shutil.copytree(Path(__file__).parent / "data" / "seeds-digits", tmp_path / "p" / "confirm")  # 9 trials x 8 epochs
    state = {"stages": {"confirm": {"kind": "confirm", "status": "interrupted", "experiments": ["confirm"]}},
             "budget": {**Budget(160, EPOCHS).as_state({"rough": 0.5, "confirm": 0.5}), "allowed": {"confirm": 80}}}
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), state, lambda *a: None)
    confirm = plan.stages[1]
    assert run.left_for(confirm) == 80 - 72 and paid_for(run, confirm) == 3  # 80 // (3 seeds x 8 epochs)
    with pytest.raises(SearchError, match="no configuration finished a seed: the budget ran out before one trial"):
        confirm_table(pd.DataFrame({"trial_id": []}), [{"lr": 0.1}], "best_val_loss", "min", get_family("mlp").task)


def test_a_confirm_stage_continued_confirms_the_candidates_it_began_with(write_space, tmp_path):
    """Continued, a confirm stage chose its candidates again: a plan begun before a change to how they are
    ranked compared configurations its resumed grid never trained, and plan.json lost the ones it did."""
    from search.plans import PlanRun
    from search.plans.stages.confirm import begun_with

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nstages:\n  - {name: rough, space: rough.yaml}\n"
                                 "  - {name: confirm, kind: confirm, from: rough, seeds: 2}\n", "p.yaml"))
    began = {"kind": "confirm", "status": "interrupted", "experiments": ["confirm"], "configs": [{"lr": 0.5}],
             "derived_from": {"stage": "rough", "trials": ["t1"], "stages": ["rough"]}}
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), {"stages": {"confirm": began}},
                  lambda *a: None)
    assert begun_with(run, plan.stages[1]) is None  # recorded, but its experiment never began: choose
    (tmp_path / "p" / "confirm").mkdir(parents=True)
    assert begun_with(run, plan.stages[1]) == ([{"lr": 0.5}], ["t1"], ["rough"], "")


def test_under_a_time_budget_a_running_stage_has_spent_its_time_so_far(write_space, tmp_path):
    """Each round of a bracket stage is a search of its own: under --budget 20m every round was given the
    stage's whole allowance, as the stage's seconds were counted only once it ended."""
    import time as clock

    from search.plans import PlanRun

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 1.0}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml}\n", "p.yaml"))
    state = {"stages": {}, "budget": {**Budget(1200, SECONDS).as_state({"rough": 1.0}), "allowed": {"rough": 300.0},
                                      "spent": {"rough": 50.0}}}
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), state, lambda *a: None)
    rough = plan.stages[0]
    assert run.left_for(rough) == 250.0  # its earlier runs' seconds
    run.running = ("rough", clock.monotonic() - 100)  # a round that took 100 s of this run
    assert 140 < run.left_for(rough) <= 150


def test_a_rough_stage_whose_time_ran_out_before_any_trial_ended_says_to_start_again(write_space, tmp_path):
    """`valley plan plan-mlp-digits --budget 10s`: the rough stage's 2 s were spent starting Ray, and the valley
    stage advised raising --budget and continuing the plan, which a plan's fixed budget refuses and which
    failed again the same way."""
    import shutil

    from search.plans import PlanRun

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 1.0}\nstages:\n  - {name: rough, space: "
                                 "rough.yaml}\n  - {name: valley, kind: valley, from: rough}\n", "p.yaml"))
    (tmp_path / "p" / "rough").mkdir(parents=True)  # an experiment that ended before its first trial did
    shutil.copy(tmp_path / "rough.yaml", tmp_path / "p" / "rough" / "space.yaml")
    state = {"status": "running", "stages": {"rough": {"status": "completed", "experiments": ["rough"]}},
             "budget": {**Budget(10, SECONDS).as_state({"rough": 1.0}), "allowed": {"rough": 2.0},
                        "spent": {"rough": 6.5}}}
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), state, lambda *a: None)
    with pytest.raises(SearchError) as raised:
        run_plan(run)
    assert str(raised.value) == (
        "stage valley: no trial of stage rough has a finite best_val_loss (no trials), so there is no valley to "
        "find: its share of --budget (2.0 s of 10.0 s) was spent first [the plan stopped in stage valley; its "
        "--budget is fixed when it starts, so continuing it would stop here again: start the plan again with a "
        "larger --budget]")
    state["budget"]["spent"]["rough"] = 1.0  # time left: a rough stage that trained nothing for another reason
    with pytest.raises(SearchError, match=r"\(no trials\), so there is no valley to find; see .*trials.csv \[the "
                                          r"plan stopped in stage valley; `valley plan .*` continues it from there\]"):
        run_plan(run)


def test_a_stage_whose_budget_was_spent_before_it_began_is_a_dead_end_not_a_missing_file(write_space, tmp_path):
    """`valley plan plan-mlp-digits --budget 10s` (a review): a stage begun with its share spent recorded an
    experiment it never made, so the confirm stage after it failed on "space file .../fine/space.yaml does not
    exist", and, like a confirm stage whose seeds none finished, offered a continuation that stopped there again."""
    from search.plans import PlanRun
    from search.plans.state import train_stage
    from spaces import load_space

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 0.5, confirm: 0.5}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml}\n"
                                 "  - {name: confirm, kind: confirm, from: rough}\n", "p.yaml"))
    state = {"status": "running", "stages": {},
             "budget": {**Budget(10, SECONDS).as_state({"rough": 0.5, "confirm": 0.5}),
                        "allowed": {"rough": 5.0, "confirm": 5.0}, "spent": {"rough": 5.0}}}
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), state, lambda *a: None)
    (tmp_path / "p").mkdir()
    assert train_stage(run, plan.stages[0], load_space(tmp_path / "rough.yaml"), "rough") == "completed"
    assert "experiments" not in run.stage_state("rough") and not (tmp_path / "p" / "rough").exists()
    run.record(plan.stages[0], status="completed")
    with pytest.raises(SearchError) as raised:
        run_plan(run)
    assert str(raised.value) == (
        "stage rough did not run: its share of --budget was spent before it began [the plan stopped in stage "
        "confirm; its --budget is fixed when it starts, so continuing it would stop here again: start the plan "
        "again with a larger --budget]")
    # `plan-cnn-digits --budget 1s`: rough's 0.25 s is less than a second, spent before it begins, and the
    # valley stage after it said "stage 'rough' has no results", offering a continuation that stopped again
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 1.0}\nstages:\n  - {name: rough, space: "
                                 "rough.yaml}\n  - {name: valley, kind: valley, from: rough}\n", "v.yaml"))
    state = {"status": "running", "stages": {},
             "budget": {**Budget(1, SECONDS).as_state({"rough": 1.0}), "allowed": {"rough": 0.25}, "spent": {}}}
    (tmp_path / "v").mkdir()
    run = PlanRun(plan, tmp_path / "v", SearchOptions(dataset="digits"), state, lambda *a: None)
    with pytest.raises(SearchError, match=r"^stage rough did not run: its share of --budget was spent before it "
                                          r"began \[the plan stopped in stage valley; its --budget is fixed"):
        run_plan(run)


def test_under_a_time_budget_a_killed_driver_s_stage_time_is_counted(write_space, tmp_path):
    """Its seconds were counted when the stage ended (in a `finally`), which a SIGKILL never reaches: continued,
    the plan had spent 58 s of 60 by its books and about 74 by the clock. Now plan.json says when the stage
    began, and the next driver counts it up to the stage's last result."""
    import os
    import time as clock

    from search.plans import PlanRun
    from search.plans.runner import clock_in, count_killed_stage

    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 1.0}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml}\n", "p.yaml"))
    (tmp_path / "p").mkdir()
    state = {"stages": {"rough": {"experiments": ["rough"]}},
             "budget": {**Budget(60, SECONDS).as_state({"rough": 1.0}), "allowed": {"rough": 60.0},
                        "spent": {"rough": 10.0}}}
    said = []
    run = PlanRun(plan, tmp_path / "p", SearchOptions(dataset="digits"), state, said.append)
    clock_in(run, plan.stages[0])
    saved = json.loads((tmp_path / "p" / "plan.json").read_text())["budget"]["running"]
    assert saved["stage"] == "rough" and saved["since"] <= clock.time()
    began = run.state["budget"]["running"]["since"] = clock.time() - 30  # killed 30 s after it began
    result = tmp_path / "p" / "rough" / "trial" / "result.json"  # its last result, 16 s after it began
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    os.utime(result, (began + 16, began + 16))
    count_killed_stage(run)  # the next driver, before it runs a stage
    assert run.state["budget"]["spent"]["rough"] == pytest.approx(26) and "running" not in run.state["budget"]
    assert "the driver before this one was killed in it" in said[-1]
    count_killed_stage(run)  # once
    assert run.state["budget"]["spent"]["rough"] == pytest.approx(26)


@pytest.mark.parametrize("split, message", [
    ("{rough: 0.5, fine: 0.5}", "missing: ['confirm']"),
    ("{rough: 0.3, fine: 0.3, confirm: 0.3, valley: 0.1}", "unknown: ['valley']"),
    ("{rough: 0.5, fine: 0.5, confirm: 0.5}", "shares must sum to 1, got 1.5"),
    ("{rough: 0, fine: 0.5, confirm: 0.5}", "shares must be numbers > 0"),
])
def test_a_bad_split_is_one_line(budget_plan, write_space, split, message):
    path = write_space(PLAN.replace("{rough: 0.35, fine: 0.25, confirm: 0.4}", split).replace("FINE_EPOCHS", "3"),
                       "bad.yaml")
    with pytest.raises(SearchError, match="budget_split") as err:
        load_plan(path)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", list(builtin_plans()))
def test_every_builtin_plan_takes_a_budget(name, tmp_path):
    plan = load_plan(name)
    assert set(plan.budget_split) == set(plan.training_stages())
    # the reference plans' files, small: a plan fetches, or refuses, every stage's data set as it starts
    data = reference_files(tmp_path / "data") if plan.dataset == "fashion_mnist" else None
    run = start_plan(plan, SearchOptions(storage=str(tmp_path), name="p", quiet=True, data_dir=data),
                     say=lambda *a: None, budget=Budget(1000, EPOCHS))  # plan-mlp's confirm share pays from 600
    saved = json.loads((run.folder / "plan.json").read_text())["budget"]
    assert saved["total"] == 1000 and saved["unit"] == EPOCHS and saved["split"] == plan.budget_split


@pytest.mark.parametrize("left, seeds, epochs", [(36, [0, 1, 2], 3), (24, [0, 1], 3), (13, [0], 3), (5, [0], 1)])
def test_a_grid_over_seeds_runs_fewer_seeds_before_shorter_trials(budget_plan, write_space, tmp_path, left, seeds,
                                                                 epochs):
    import dataclasses

    from search.plans.state import fewer_seeds, with_budget
    from spaces import load_space

    space = load_space(write_space(ROUGH + "  seed: {grid: [0, 1, 2]}\n", "rough.yaml"))  # 4 rows x 3 seeds
    said = []
    run = start_plan(load_plan(budget_plan()), SearchOptions(storage=str(tmp_path), name="p"), say=said.append,
                     budget=Budget(100, EPOCHS))
    opts = dataclasses.replace(run.base, max_epochs=3)
    ran = fewer_seeds(run, run.plan.stages[0], space, left, opts, "rough")
    assert list(ran.params["seed"].args) == seeds
    assert with_budget(opts, run.budget, left, ran).epochs(ran) == epochs  # shorter only when one seed is too long
    if len(seeds) < 3:
        assert said == [f"valley: stage rough: {left} trial-epochs cannot train 12 grid points for 3 epochs each; "
                        f"running seed {', '.join(map(str, seeds))} of 0, 1, 2, so that fewer replicates train longer"]
        assert load_space(tmp_path / "p" / "rough.space.yaml").params["seed"].args == tuple(seeds)  # provenance


def test_a_budget_counts_the_trials_a_set_key_leaves(budget_plan, write_space, tmp_path):
    """``--set seed=0`` on a grid over three seeds runs a third of its trials: a budget that fits those
    trains them in full, not each for a third of the epochs, and names no seeds it does not run."""
    import dataclasses

    from search.plans.state import fewer_seeds, with_budget
    from spaces import load_space

    space = load_space(write_space(ROUGH + "  seed: {grid: [0, 1, 2]}\n", "rough.yaml"))  # 4 rows x 3 seeds
    said = []
    run = start_plan(load_plan(budget_plan()), SearchOptions(storage=str(tmp_path), name="p"), say=said.append,
                     budget=Budget(100, EPOCHS))
    opts = dataclasses.replace(run.base, max_epochs=3, overrides={"seed": 0})
    ran = fewer_seeds(run, run.plan.stages[0], space, 13, opts, "rough")
    assert ran is space and not said
    assert with_budget(opts, run.budget, 13, ran).epochs(ran) == 3
    assert with_budget(opts, run.budget, 11, ran).epochs(ran) == 2  # 4 trials


def test_a_plan_without_a_split_refuses_a_budget(write_space, tmp_path):
    write_space(ROUGH, "rough.yaml")
    path = write_space("dataset: synthetic\nstages:\n  - {name: rough, space: rough.yaml}\n", "nosplit.yaml")
    with pytest.raises(SearchError, match="has no budget_split, so --budget cannot be divided"):
        start_plan(load_plan(path), SearchOptions(storage=str(tmp_path)), budget=Budget(10, EPOCHS))


def test_a_budget_whose_confirm_share_cannot_pay_for_one_configuration_is_refused_before_anything_trains(
        budget_plan, tmp_path):
    """Confirm's share, 0.4, must pay for one configuration over 2 seeds x 3 epochs: 15 is the least budget.
    Below it the plan used to train its other stages and fail at confirm, its budget spent."""
    with pytest.raises(SearchError, match=r"--budget 14: stage confirm's share \(0.4, 5.6 trial-epochs\) cannot pay "
                                          r"for one configuration over its 2 seeds \(6 trial-epochs\); give --budget "
                                          r"15 or more, or a larger share for confirm in budget_split"):
        start_plan(load_plan(budget_plan()), SearchOptions(storage=str(tmp_path), name="p"), budget=Budget(14, EPOCHS))
    assert not (tmp_path / "p").exists()  # nothing was started: the same --name can be given again
    start_plan(load_plan(budget_plan()), SearchOptions(storage=str(tmp_path), name="p"), say=lambda *a: None,
               budget=Budget(15, EPOCHS))


def test_the_least_budget_a_refusal_names_is_enough(write_space, tmp_path):
    """--budget 180 for a confirm share of 0.35 paying 3 seeds x 21 epochs: 180 x 0.35 is 62.99999999999999,
    and the budget was refused with advice to give 180."""
    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 0.65, c: 0.35}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml, max_epochs: 2}\n"
                                 "  - {name: c, kind: confirm, from: rough, seeds: 3, max_epochs: 21}\n", "p.yaml"))
    with pytest.raises(SearchError, match="give --budget 180 or more"):
        start_plan(plan, SearchOptions(storage=str(tmp_path), name="p"), budget=Budget(179, EPOCHS))
    assert start_plan(plan, SearchOptions(storage=str(tmp_path), name="p"), say=lambda *a: None,
                      budget=Budget(180, EPOCHS))


def test_a_budget_whose_share_cannot_train_a_grid_one_epoch_each_is_refused_before_anything_trains(write_space,
                                                                                                   tmp_path):
    """`--budget 40` gave the reference's 14 rough MLPs 8 trial-epochs: 8 of them trained, the largest never ran
    (a valley with no side to overfit), and the stage said each trained one epoch (found by a review)."""
    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: digits\nbudget_split: {rough: 0.1, c: 0.9}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml, max_epochs: 2}\n"
                                 "  - {name: c, kind: confirm, from: rough, seeds: 1, max_epochs: 1}\n", "p.yaml"))
    with pytest.raises(SearchError, match=r"^--budget 39: stage rough's share \(0.1, 3.9 trial-epochs\) cannot train "
                                          r"each of its 4 grid points one epoch; give --budget 40 or more, or a larger "
                                          r"share for rough in budget_split$"):
        start_plan(plan, SearchOptions(storage=str(tmp_path), name="p"), budget=Budget(39, EPOCHS))
    assert not (tmp_path / "p").exists()
    assert least_budget(plan, SearchOptions()) == 40  # what a benchmark's tiny run gives every strategy
    # a grid over 3 seeds needs one seed's 4 points: a budget runs fewer seeds (it asked for 3 x 4 / 0.1 = 120)
    write_space(ROUGH + "  seed: {grid: [0, 1, 2]}\n", "rough.yaml")
    assert least_budget(load_plan(plan.source), SearchOptions()) == 40
    assert start_plan(plan, SearchOptions(storage=str(tmp_path), name="p"), say=lambda *a: None,
                      budget=Budget(40, EPOCHS))


@pytest.mark.ray
def test_a_later_grid_its_share_cannot_train_one_epoch_each_stops_the_plan_before_it_trains(ray_session, write_space,
                                                                                            tmp_path):
    """A grid an earlier stage decides (the valley's architectures, times a grid of three learning rates) is
    known only when its stage begins; there, 2 trial-epochs are refused as the plan's start refuses them."""
    write_space(ROUGH, "rough.yaml")
    write_space("family: mlp\nmetric: val_loss\nmode: min\nparams:\n  lr: {grid: [0.01, 0.02, 0.03]}\n", "fine.yaml")
    plan = load_plan(write_space("dataset: synthetic\nbudget_split: {rough: 0.8, fine: 0.2}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml, max_epochs: 2}\n"
                                 "  - {name: valley, kind: valley, from: rough, keep: 3, threshold: 1000}\n"
                                 "  - {name: fine, space: fine.yaml, from: valley, max_epochs: 1}\n", "p.yaml"))
    run = start_plan(plan, SearchOptions(storage=str(tmp_path), name="p", quiet=True), say=lambda *a: None,
                     budget=Budget(10, EPOCHS))
    with pytest.raises(SearchError, match=r"^stage fine: its share of --budget, 2 trial-epochs, cannot train each of "
                                          r"its \d+ grid points one epoch; raise this stage's share in budget_split "
                                          r"\[the plan stopped in stage fine; its --budget is fixed when it starts"):
        run_plan(run)
    assert not (tmp_path / "p" / "fine").exists()


def reference_files(folder: Path) -> str:
    """Fashion-MNIST and CIFAR-10 in torchvision's layouts, small and synthetic."""
    import pickle

    import numpy as np
    from test_data import write_idx

    from trainables.data import CIFAR_FILES, FASHION_FILES

    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, n in zip(FASHION_FILES, (5040, 5040, 20, 20)):
        write_idx(raw / name, np.zeros((n, 28, 28)) if "images" in name else np.zeros(n), False)
    (folder / "cifar-10-batches-py").mkdir()
    for name in CIFAR_FILES:
        n = 1010 if name.startswith("data") else 20
        batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": [0] * n}
        (folder / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(batch))
    return str(folder)


def trial_epochs(folder) -> int:
    return int(sum(pd.read_csv(p)["epochs"].sum() for p in folder.rglob("trials.csv")))


@pytest.mark.ray
def test_a_grid_the_budget_cuts_short_says_so(ray_session, write_space, tmp_path):
    """`--stage rough.max_epochs=3 --budget 150` trained the rough grid 2 epochs each, without ASHA, and
    nothing said so (found by a review): the stage's line and plan.json's note (the report's stage table) do."""
    write_space(ROUGH, "rough.yaml")
    plan = load_plan(write_space("dataset: synthetic\nbudget_split: {rough: 1.0}\nstages:\n"
                                 "  - {name: rough, space: rough.yaml, max_epochs: 3, scheduler: asha}\n", "p.yaml"))
    said: list[str] = []
    folder = run_plan(start_plan(plan, SearchOptions(storage=str(tmp_path), name="short", quiet=True),
                                 say=said.append, budget=Budget(8, EPOCHS)))
    note = "the budget pays for 2 of 3 epochs for each of its 4 grid points: each trains 2, without ASHA"
    assert f"valley: stage rough: {note}" in said
    assert json.loads((folder / "plan.json").read_text())["stages"]["rough"]["note"] == note
    assert pd.read_csv(folder / "rough" / "trials.csv")["epochs"].tolist() == [2] * 4


def test_a_budgeted_plan_never_overspends_and_carries_its_incumbent(ray_session, budget_plan, tmp_path):
    run = start_plan(load_plan(budget_plan()), SearchOptions(storage=str(tmp_path), name="p", quiet=True,
                                                             overrides={"stall_epochs": 2}),
                     say=lambda *a: None, budget=Budget(40, EPOCHS))
    folder = run_plan(run)
    state = json.loads((folder / "plan.json").read_text())
    assert state["status"] == "completed"
    spent = state["budget"]["spent"]
    assert sum(spent.values()) == trial_epochs(folder) <= 40
    assert all(spent[name] <= state["budget"]["allowed"][name] for name in spent)
    # confirm's share, 16, pays for two configurations of 2 seeds x 3 epochs: the other 4 went to rough and fine
    assert state["budget"]["allowed"]["rough"] == pytest.approx((40 - 12) * 0.35 / 0.6)
    # the useless fine stage found nothing better: the rough stage's best is confirmed, and wins
    confirm = state["stages"]["confirm"]
    assert confirm["derived_from"]["stages"] == ["fine", "rough"]
    assert confirm["summary"]["winner_stage"] == "rough"
    assert "found nothing better" in confirm["summary"]["note"]
    assert "stalled at chance level" in confirm["note"]  # the fine stage's pick learned nothing: said, not hidden
    table = pd.read_csv(folder / "stage-confirm.csv")
    assert list(table["stage"]) == ["rough", "fine"]  # ranked on mean validation loss
    from search.optuna_study import load_study

    # the fine stage's trials the budget stopped, or never started, were RUNNING in its study for ever
    assert "RUNNING" not in {t.state.name for t in load_study(folder / "fine").trials}
    from analysis.report import write_report

    text = write_report(folder).read_text(encoding="utf-8")  # the budget as the plan printed it, not 16.3333
    assert f"Stages (budget: {sum(spent.values()):.0f} trial-epochs of 40 trial-epochs spent)" in text
    assert ">16 trial-epochs</td>" in text and "16.3333" not in text
    said = []
    run_plan(reopen_plan(folder, say=said.append))  # a finished plan spends nothing more
    assert trial_epochs(folder) == sum(spent.values())


def test_a_confirm_stage_the_budget_pays_one_candidate_for_confirms_the_best_by_the_evidence(
        ray_session, budget_plan, tmp_path):
    """With room for one of two candidates, a confirm stage took the best of its `from` stage before the
    rough stage's best whatever they had scored: here the fine stage cannot learn (lr 1e-7) and the rough
    stage's best, far better on the same validation loss, was left out."""
    run = start_plan(load_plan(budget_plan()), SearchOptions(storage=str(tmp_path), name="p", quiet=True),
                     say=lambda *a: None, budget=Budget(28, EPOCHS))  # confirm: 11.2 of 28 pays for 1 of 6
    folder = run_plan(run)
    confirm = json.loads((folder / "plan.json").read_text())["stages"]["confirm"]
    assert confirm["derived_from"]["stages"] == ["rough"] and confirm["summary"]["winner_stage"] == "rough"
    assert "the budget pays for 1 of the 2 candidates; chose them by best_val_loss in their own stages, " \
           "leaving out trial " in confirm["note"] and confirm["note"].endswith(" of stage fine")


def test_ctrl_c_mid_stage_then_resume_within_the_same_budget(budget_plan, tmp_path):
    """SIGINT during the fine stage: exit 130, 'interrupted'; a new --budget is refused; `valley resume FOLDER`
    (`valley plan FOLDER`) finishes the rest only, and the plan's total stays within its budget."""
    command = [sys.executable, "-m", "search.cli", "plan", str(budget_plan(fine_epochs=60)), "--storage",
               str(tmp_path), "--name", "p", "--num-cpus", "2", "--budget", "400"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = tmp_path / "p"
    deadline = time.time() + 240
    while time.time() < deadline and not list((folder / "fine").glob("*/result.json")):
        time.sleep(0.5)
    assert list((folder / "fine").glob("*/result.json")), "the fine stage never started"
    rough_before = (folder / "rough" / "trials.csv").read_text()
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "continue with `valley plan" in output
    state = json.loads((folder / "plan.json").read_text())
    assert state["status"] == "interrupted" and state["stages"]["fine"]["status"] == "interrupted"
    assert json.loads((folder / "fine" / "valley.json").read_text())["status"] == "interrupted"
    allowed = state["budget"]["allowed"]["fine"]

    again = subprocess.run([sys.executable, "-m", "search.cli", "plan", str(folder), "--budget", "10"],
                           capture_output=True, text=True, timeout=60, env={**os.environ})
    assert again.returncode == 2 and "a plan's budget is fixed when it starts" in again.stderr
    resumed = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(folder)],
                             capture_output=True, text=True, timeout=400, env={**os.environ})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "stage rough: already completed, not re-run" in resumed.stdout
    assert (folder / "rough" / "trials.csv").read_text() == rough_before
    fine = pd.read_csv(folder / "fine" / "trials.csv")
    assert fine["trial_id"].is_unique and (fine["status"] != "unfinished").all()
    state = json.loads((folder / "plan.json").read_text())
    assert state["status"] == "completed" and state["budget"]["allowed"]["fine"] == allowed
    assert sum(state["budget"]["spent"].values()) == trial_epochs(folder) <= 400
    assert state["budget"]["spent"]["fine"] <= allowed
    assert "spent" in resumed.stdout and "of 400 trial-epochs" in resumed.stdout
