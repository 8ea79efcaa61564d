"""The pure parts of benchmarks/: replaying strategies on a synthetic curve table, the table printer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package

from benchmarks.common import table  # noqa: E402
from benchmarks.replay import (  # noqa: E402
    asha_rungs, curves_from_table, run_asha, run_full, run_staged, summarise, valley_band)

EPOCHS = 9


def synthetic_table(n_arch: int = 6, configs_per_arch: int = 3, seed: int = 0) -> pd.DataFrame:
    """Curves that fall to a floor set by the architecture (arch 3 best) plus a config offset."""
    rng = np.random.default_rng(seed)
    rows, cid = [], 0
    for arch in range(n_arch):
        floor = 0.2 + 0.05 * abs(arch - 3)
        for k in range(configs_per_arch):
            offset = 0.02 * k  # config 0 of each architecture is its best (and its rough config)
            best_test = 0.0
            for epoch in range(1, EPOCHS + 1):
                loss = floor + offset + 1.0 / epoch + rng.normal(0, 0.002)
                best_test = max(best_test, 1 - loss / 2)
                rows.append({"config_id": cid, "arch": arch, "arch_label": f"a{arch}", "lr0": 1e-3 * (k + 1),
                             "dropout": 0.0, "n_params": 100 * (arch + 1), "epoch": epoch, "val_loss": loss,
                             "val_acc": 1 - loss / 2, "test_acc": best_test, "val_loss_se": 0.03,
                             "epoch_s": 0.1 * (arch + 1)})
            cid += 1
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def curves():
    return curves_from_table(synthetic_table())


def test_rungs_match_tune_for_the_defaults():
    assert asha_rungs(20, 1, 3) == [1, 3, 9]
    assert asha_rungs(9, 1, 3)[:2] == [1, 3]
    assert asha_rungs(4, 1, 2) == [1, 2, 4]


def test_grid_runs_everything_and_picks_the_lowest_val_loss(curves):
    grid = run_full(curves, sorted(curves), EPOCHS)
    assert grid.epochs_spent == len(curves) * EPOCHS
    assert curves[grid.pick].arch == 3 and grid.pick_epochs == EPOCHS
    losses = [t[1] for t in grid.trace]
    assert losses == sorted(losses, reverse=True)  # best-so-far never gets worse


def test_asha_stops_a_worse_trial_at_the_first_rung():
    table_ = synthetic_table(n_arch=1, configs_per_arch=1)
    worse = table_.assign(config_id=1, val_loss=table_.val_loss + 1.0)
    curves = curves_from_table(pd.concat([table_, worse]))
    replay = run_asha(curves, [0, 1], EPOCHS, grace=1, rf=3, concurrency=1)
    assert replay.ran == {0: EPOCHS, 1: 1}  # trial 1 is below the rung-1 cutoff set by trial 0
    assert replay.epochs_spent == EPOCHS + 1 and replay.pick == 0


def test_asha_spends_less_than_the_grid(curves):
    order = list(np.random.default_rng(1).permutation(sorted(curves)))
    replay = run_asha(curves, order, EPOCHS)
    assert replay.epochs_spent < len(curves) * EPOCHS
    assert max(replay.ran.values()) == EPOCHS


def test_valley_band_is_one_standard_error_wide(curves):
    ran = {cid: EPOCHS for cid, c in curves.items() if c.config_id % 3 == 0}
    band, smallest = valley_band(curves, ran)
    assert 3 in band and all(abs(a - 3) <= 1 for a in band)  # floors 0.05 apart, se 0.03: neighbours out
    assert smallest == min(band)  # n_params grows with arch


def test_staged_plan_fine_tunes_only_the_valley(curves):
    rough = {a: 3 * a for a in range(6)}
    replay, archs = run_staged(curves, rough, np.random.default_rng(0), rough_epochs=3, max_t=EPOCHS,
                               fine="smallest")
    assert len(archs) == 1
    fine_ids = {cid for cid, c in curves.items() if c.arch in archs}
    assert {cid for cid, e in replay.ran.items() if e > 3} <= fine_ids
    assert replay.epochs_spent < len(curves) * EPOCHS
    grid = run_full(curves, sorted(curves), EPOCHS)
    summary = summarise([replay], grid, grid.epochs_spent)
    assert 0 < summary["budget %"] < 100


def test_curve_table_needs_its_columns():
    with pytest.raises(ValueError, match="val_loss_se"):
        curves_from_table(synthetic_table().drop(columns="val_loss_se"))


def test_table_prints_markdown():
    text = table([{"variant": "bare", "wall s": 4.1234, "ratio": 1.0}, {"variant": "valley", "wall s": 1234.5}])
    lines = text.splitlines()
    assert lines[0].startswith("| variant") and "4.12" in lines[2] and "1,234" in lines[3] and "-" in lines[3]


def test_overhead_ratios_pair_each_round_with_its_own_bare_run():
    from benchmarks.overhead import paired

    bare = [{"round": 0, "wall": 10.0}, {"round": 1, "wall": 20.0}, {"round": 2, "wall": 10.0}]
    mine = [{"round": 0, "wall": 99.0}, {"round": 0, "wall": 11.0},  # round 0 was retried: the last run counts
            {"round": 1, "wall": 22.0}, {"round": 2, "wall": 13.0}]
    ratio, fixed = paired(mine, bare, trials=2)
    assert ratio == pytest.approx(1.1)  # median of 1.1, 1.1, 1.3
    assert fixed == pytest.approx(1.0)  # median of 0.5, 1.0, 1.5


@pytest.mark.ray
def test_strategies_bookkeeping_on_one_tiny_repetition(ray_session, tmp_path):
    """benchmarks/strategies.py --quick: every strategy within the same budget, paired by seed, the tables.

    Who wins and how fast are not checked: one tiny repetition says nothing about either.
    """
    from benchmarks import strategies

    out = strategies.main(["--quick", "--tasks", "mlp-digits", "--strategies", "random", "optuna", "valley",
                           "--out", str(tmp_path)])
    runs = pd.read_csv(out / "strategies.csv")
    assert list(runs["strategy"]) == ["random", "optuna", "valley"]
    budget = strategies.quick(strategies.TASKS["mlp-digits"]).budget
    assert (runs["budget"] == budget).all() and (runs["trial_epochs"] <= budget).all()
    assert (runs["trial_epochs"] >= strategies.SEEDS * 2).all()  # every pick's confirmation is paid for
    assert (runs["repetition"] == 0).all()  # paired: the same seed for every strategy
    seeds = runs["test_by_seed"].map(lambda text: len(json.loads(text)))
    assert (seeds == strategies.SEEDS).all() and runs["test"].between(0, 1).all()
    # valley's pick once more on seeds its confirm stage did not choose on; the peers' picks need not be
    assert runs.set_index("strategy")["test_fresh"].notna().to_dict() == {"random": False, "optuna": False,
                                                                          "valley": True}
    text = (out / "strategies.md").read_text()
    assert "## mlp-digits" in text and "1 - p (valley better)" in text and "best peer:" in text
    assert "\n| valley, seeds 5-9 " in text and "- valley's pick on seeds 5-9, which its confirm stage" in text
    assert text.count("\n| random") == 1 and text.count("\n| optuna") == 1
    assert (out / "strategies.html").stat().st_size > 1000


def test_strategy_tables_pair_repetitions_and_state_the_goal():
    from benchmarks import strategies

    def curve(values):
        return pd.DataFrame({"trial_epochs": [1, 2], "wall_s": [0.5, 1.0], "best_val": values}).to_json(
            orient="split", index=False)

    curves = {"valley": curve([0.92, 0.95]), "random": curve([0.5, 0.9])}  # valley passes 0.9 by epoch 1
    rows = [{"task": "mlp-digits", "strategy": s, "repetition": r, "test": t, "trial_epochs": 100, "wall_s": 1.0,
             "curve": curves[s]} for s, base in (("valley", 0.95), ("random", 0.90)) for r, t in
            enumerate(base + np.array([0.0, 0.01, -0.01]))]
    frame = pd.DataFrame(rows)
    task = strategies.TASKS["mlp-digits"]
    text, verdict = strategies.task_table(frame, task)
    assert verdict["random"]["diff"] == pytest.approx(0.05)
    assert verdict["random"]["p"] == pytest.approx(1 - 1 / 8)  # 3 pairs, all for valley: 1 of 8 sign flips
    assert verdict["random"]["low"] == pytest.approx(0.05)  # the same lead in every pair: no spread
    frame.loc[(frame["strategy"] == "random") & (frame["repetition"] == 0), "test"] = 0.96  # one pair lost
    _, mixed = strategies.task_table(frame, task)
    assert mixed["random"]["p"] == pytest.approx(1 - 2 / 8) and mixed["random"]["low"] < 0
    frame.loc[(frame["strategy"] == "random") & (frame["repetition"] == 0), "test"] = 0.90
    goal = strategies.goal(frame, task, verdict)
    assert "best peer: random" in goal and "at least as good" in goal and ": met" in goal
    assert "within half its trial-epochs: 3 of 3 repetitions" in goal


def test_the_gpu_scripts_need_only_what_the_gpu_image_has():
    """The GPU machine has torch, torchvision, numpy and pandas, not Ray, Optuna, plotly or PyYAML:
    the scripts prepared for it must import without them."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    code = ("import sys; import benchmarks.gpu, benchmarks.smallstep, benchmarks.regime; "
            "print(sorted(m for m in ('ray', 'optuna', 'plotly', 'yaml', 'sklearn') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stderr
