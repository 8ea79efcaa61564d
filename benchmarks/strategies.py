"""Rough, then fine, against every search a user would pick instead, on the same budget, in one run.

Three offline tasks, each a combined space (architecture x regularisation x optimisation) that a
user would search in one go: the MLP grid's architectures x mlp-fine's distributions on digits;
the CNN grid's variants x cnn-fine's distributions on digits (channels x 0.25, so five repetitions
fit on 2 cores); the clock encodings x clock-fine's distributions on 32x32 clocks (small_cnn of
width 8). Each distribution is widened to every value valley's plan can train (the rough grid's
own settings, the fine stage's ``around`` range), and every strategy ranks on the fine space's
metric (the clocks' val_csd). Strategies, each given the same budget in trial-epochs (every epoch
counts, the confirmation of its pick over 5 seeds included) and the same parallelism (2 trials at
a time):

- ``random``: Tune's random search, FIFO, trials of E epochs;
- ``random+asha``: the same under ASHA (grace 2, as valley's rough stages, keep 1 in 3), as many
  trials as the budget pays for;
- ``tpe+asha``: Tune's OptunaSearch with Optuna 5's defaults (multivariate TPE, 10 random
  start-up trials) under the same ASHA;
- ``optuna``: a plain Optuna study, TPESampler + HyperbandPruner, no Ray (two threads);
- ``bohb``: Tune's TuneBOHB + HyperBandForBOHB (needs ``pip install hpbandster ConfigSpace``);
- ``valley``: the task's built-in plan with ``--budget`` (its confirm stage over the same 5
  seeds is its confirmation: those trainings are not repeated).

Every pick is confirmed the same way: seeds 0-4, each with its own fresh validation split
(``split_seed``), E epochs; the test metric is read once, never used for choosing. valley's confirm
stage is that confirmation, and it also chooses among its candidates on those seeds' validation
metric; so valley's pick is trained once more on seeds 5-9 outside its budget (``test_fresh``, the
row "valley, seeds 5-9"), which no choice has seen. Repetition r
seeds every strategy's searcher with r (paired by seed). Intervals are Student's t over the
repetitions; "1 - p" is that of a one-sided exact sign-flip test of the paired differences. Writes ``strategies.csv`` (every run),
``strategies.md`` (a table per task) and ``strategies.html`` (anytime curves) beside this file.

    python benchmarks/strategies.py                 # 5 repetitions, about 70 minutes on 2 cores
    python benchmarks/strategies.py --quick --out DIR   # one tiny repetition of each (tests)
    python benchmarks/strategies.py --fresh CSV     # a saved run's valley picks on seeds 5-9, then the tables
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import dataclasses
import json
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import HERE, machine, table  # noqa: E402
from search.manifest import git_commit  # noqa: E402
from search.options import SearchOptions  # noqa: E402
from search.plans import least_budget, load_plan, run_plan, start_plan, top_configs  # noqa: E402
from search.plans.budget import EPOCHS, Budget  # noqa: E402
from search.ray_start import start_ray  # noqa: E402
from search.run import run_search  # noqa: E402
from spaces import BUILTIN_DIR, Dist, load_space, read_yaml  # noqa: E402
from trainables import get_family  # noqa: E402

SEEDS = 5
FRESH = range(SEEDS, 2 * SEEDS)  # valley's pick once more, on seeds its confirm stage did not choose on
FRESH_ROW = "valley, seeds 5-9"  # its row in the tables
# Tune hands Optuna the MLP widths as a choice of lists, which Optuna warns it could not store in a database
warnings.filterwarnings("ignore", message="Choices for a categorical distribution")
STRATEGIES = ("random", "random+asha", "tpe+asha", "optuna", "bohb", "valley")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    plan: str  # valley's built-in plan
    rough: str  # the space whose grid rows are the architectures
    arch_key: str  # the one key the architectures become a choice of
    fine: str  # the space whose distributions are searched with them
    epochs: int  # E: epochs of a full trial and of each confirmation seed
    budget: int  # trial-epochs per strategy, confirmation included
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # keys every trial shares
    n_test: int = 360


# Sized so that 5 repetitions of 6 strategies fit in 90 minutes on 2 cores: a peer's budget pays for its pick's
# confirmation (5 x E) and 20 to 25 full trials; the CNNs have a quarter of the channels, the clocks are 32x32
# with a small_cnn of width 8. The MLP grid keeps the reference's 12- and 15-layer giants (9.3 million
# parameters), which cost most of its time.
TASKS = {
    "mlp-digits": Task("mlp-digits", "digits", "plan-mlp-digits", "mlp-rough", "hidden", "mlp-fine", 6, 150),
    "cnn-digits": Task("cnn-digits", "digits", "plan-cnn-digits", "cnn-rough", "arch", "cnn-fine", 4, 120,
                       {"width": 0.25}),
    "clock-tiny": Task("clock-tiny", "clocks-tiny", "plan-clock-small", "clock-encodings", "encoding", "clock-fine",
                       4, 120, {"width": 8}, n_test=720),
}


def quick(task: Task) -> Task:
    """One tiny repetition: 2 epochs a trial, a budget that pays for a few trials and one confirmation, and no less
    than valley's plan takes (a share that cannot train its rough grid one epoch a point is refused)."""
    task = dataclasses.replace(task, epochs=2)
    with tempfile.TemporaryDirectory() as tmp:
        least = least_budget(load_plan(plan_file(task, Path(tmp), quick_run=True)),
                             SearchOptions(dataset=task.dataset, overrides=dict(task.fixed)))
    return dataclasses.replace(task, budget=max(SEEDS * 2 + 24, least))


# ----------------------------------------------------------------------------- the spaces

def architectures(task: Task) -> list[Any]:
    """The rough grid's rows as values of one key (MLP depth rows as their k x 100 widths)."""
    values = []
    for row in load_space(task.rough).grid:
        if task.arch_key == "hidden":
            value = row.get("hidden") or [100 * k for k in range(1, row["layers"] + 1)]
        else:
            value = row[task.arch_key]
        if value not in values:
            values.append(value)
    return values


def reach(task: Task, key: str, dist: Dist) -> list[Any]:
    """A fine range widened to take in every value valley's plan can train for ``key``: the rough grid's own
    (its fixed value, its rows', the family's default where a row sets none) and, where the plan's fine stage
    searches ``around`` the rough best, that range. valley's fine stage reached learning rates up to 3e-3
    (1e-3 x 3) and its confirm stage the rough grid's settings without dropout, which the fine spaces'
    1e-6..1e-3 and 0.1..0.7 kept from the peers; a peer searches everything valley can."""
    low, high = dist.args[0], dist.args[1]
    if dist.kind not in ("uniform", "loguniform"):
        return list(dist.args)
    rough = load_space(task.rough)
    default = getattr(get_family(rough.family).config, key, None)
    values = [row[key] for row in rough.grid if key in row]
    values += [rough.params[key]] if key in rough.params and not isinstance(rough.params[key], Dist) else []
    values += [default or 0.0] if any(key not in row for row in rough.grid) and key not in rough.params else []
    factor = next((stage["around"][key] for stage in read_yaml(BUILTIN_DIR / f"{task.plan}.yaml")["stages"]
                   if key in stage.get("around", {})), None)
    for value in values:
        if not isinstance(value, (int, float)) or (dist.kind == "loguniform" and value <= 0):
            continue
        low, high = min(low, value), max(high, value)
        if factor:
            low, high = min(low, value / factor), max(high, value * factor)
    return [low, high]


def combined_space(task: Task, folder: Path) -> Path:
    """The architectures as one categorical, crossed with the fine space's distributions, each widened to
    what valley can reach (:func:`reach`), ranked on the fine space's metric (the clocks' val_csd: losses of
    different encodings do not compare, and the peers chose a clock on val_loss where valley chose on CSD)."""
    fine = load_space(task.fine)
    params: dict[str, Any] = {task.arch_key: {"choice": architectures(task)}}
    for key, value in fine.params.items():
        if key in ("layers", "arch", "encoding"):
            continue
        params[key] = {value.kind: reach(task, key, value)} if isinstance(value, Dist) else value
    params.update(task.fixed)
    doc = {"description": f"{task.rough} x {task.fine}, flat", "family": fine.family, "dataset": task.dataset,
           "metric": fine.metric, "mode": fine.mode, "max_epochs": task.epochs, "params": params}
    path = folder / f"{task.name}-combined.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def plan_file(task: Task, folder: Path, quick_run: bool) -> Path:
    """The task's plan with trials of at most E epochs and its confirm stage over the benchmark's seeds."""
    doc = read_yaml(BUILTIN_DIR / f"{task.plan}.yaml")
    for stage in doc["stages"]:
        if "max_epochs" in stage:
            stage["max_epochs"] = min(stage["max_epochs"], task.epochs)
        if quick_run and "grace_period" in stage:
            stage["grace_period"] = 1
        if stage.get("kind") == "confirm":
            stage.update(seeds=SEEDS, max_epochs=task.epochs)
        if stage.get("space") and not str(stage["space"]).endswith(".yaml"):
            stage["space"] = str(BUILTIN_DIR / f"{stage['space']}.yaml")
    path = folder / f"{task.name}-plan.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- what a run spent

def results(folder: Path) -> pd.DataFrame:
    """Every epoch reported under ``folder`` (all experiments, all stages), in the order they came."""
    frames = [pd.read_json(p, lines=True, dtype=False) for p in sorted(folder.rglob("result.json"))
              if p.stat().st_size]
    if not frames:
        return pd.DataFrame(columns=["timestamp", "val_loss"])
    return pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable")


def anytime(rows: pd.DataFrame, metric: str, mode: str, started: float) -> pd.DataFrame:
    """Best validation metric so far against trial-epochs and wall seconds."""
    best = rows[metric].cummin() if mode == "min" else rows[metric].cummax()
    return pd.DataFrame({"trial_epochs": np.arange(1, len(rows) + 1), "wall_s": rows["timestamp"] - started,
                         "best_val": best.to_numpy()})


def trial_epochs(folder: Path) -> int:
    """Epochs trained: each trial's last epoch, summed (a trial resumed from a checkpoint counts once)."""
    return int(sum(pd.read_csv(p)["epochs"].sum() for p in folder.rglob("trials.csv")))


# ----------------------------------------------------------------------------- the strategies

def ray_search(task: Task, space: Path, root: Path, name: str, seed: int, **options: Any) -> dict[str, Any]:
    opts = SearchOptions(storage=str(root), name=name, seed=seed, quiet=True, max_epochs=task.epochs,
                         dataset=task.dataset, **options)
    searched = load_space(space)
    folder = run_search(searched, opts)
    (pick,), _ = top_configs(pd.read_csv(folder / "trials.csv"), searched.metric, searched.mode, 1, stopped=True)
    return {"pick": pick, "folder": folder}


def plain_optuna(task: Task, space_path: Path, seed: int, budget: int) -> dict[str, Any]:
    """What an Optuna user writes: TPE + Hyperband pruning, the trainable called directly, 2 threads."""
    import optuna
    import torch

    from trainables.data import load_dataset
    from trainables.loop import Diverged, train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    space = load_space(space_path)
    family = get_family(space.family)
    data = load_dataset(task.dataset)
    lock, spent, curve = threading.Lock(), [0], []
    started = time.time()

    class Pruning:
        wants_checkpoints = False

        def __init__(self, trial: optuna.Trial) -> None:
            self.trial = trial

        def restore(self) -> contextlib.nullcontext[None]:
            return contextlib.nullcontext()

        def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
            with lock:
                spent[0] += 1
                curve.append((time.time(), metrics[family.task.val_metric]))
                over = spent[0] >= budget - 1  # the other thread may be in an epoch too: never overspend
            if metrics["best_epoch"] == metrics["epoch"]:
                self.trial.set_user_attr("at_best", metrics[space.metric])  # the checkpoint that is confirmed
            self.trial.report(metrics[space.metric], metrics["epoch"])
            if over:
                self.trial.study.stop()
                raise optuna.TrialPruned()
            if self.trial.should_prune():
                raise optuna.TrialPruned()

    def objective(trial: optuna.Trial) -> float:
        config = {"family": space.family, "dataset": task.dataset, "max_epochs": task.epochs, "seed": seed}
        for key, value in space.params.items():
            config[key] = suggest(trial, key, value) if isinstance(value, Dist) else value
        try:
            train(config, data=data, reporter=Pruning(trial), family=family)
        except Diverged:
            raise optuna.TrialPruned() from None
        return trial.user_attrs["at_best"]  # the space's metric at the best checkpoint, as valley ranks it

    direction = "maximize" if space.mode == "max" else "minimize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=task.epochs))
    study.optimize(objective, n_trials=10_000, n_jobs=2)
    config = {k: json.loads(v) if isinstance(v, str) and v.startswith("[") else v
              for k, v in study.best_trial.params.items()}
    fixed = {k: v for k, v in space.params.items() if not isinstance(v, Dist)}
    pick = {**fixed, **config}
    rows = pd.DataFrame(curve, columns=["timestamp", "val"])
    return {"pick": pick, "spent": spent[0], "rows": rows, "started": started}


def suggest(trial: Any, key: str, dist: Dist) -> Any:
    kind, args = dist.kind, dist.args
    if kind in ("choice", "grid"):
        options = [json.dumps(a) if isinstance(a, (list, tuple)) else a for a in args]
        value = trial.suggest_categorical(key, options)
        return json.loads(value) if isinstance(value, str) and value.startswith("[") else value
    if kind in ("uniform", "loguniform"):
        return trial.suggest_float(key, args[0], args[1], log=kind == "loguniform")
    if kind in ("randint", "lograndint"):
        return trial.suggest_int(key, args[0], args[1] - 1, log=kind == "lograndint")
    raise ValueError(f"the plain Optuna strategy does not draw {kind!r} ({key})")


def run_valley(task: Task, root: Path, seed: int, quick_run: bool) -> dict[str, Any]:
    opts = SearchOptions(storage=str(root), name="valley", seed=seed, quiet=True, dataset=task.dataset,
                         overrides=dict(task.fixed))
    run = start_plan(load_plan(plan_file(task, root, quick_run)), opts, say=lambda *a: None,
                     budget=Budget(task.budget, EPOCHS))
    folder = run_plan(run)
    state = json.loads((folder / "plan.json").read_text())
    confirm = next(name for name, stage in state["stages"].items() if stage["kind"] == "confirm")
    summary = state["stages"][confirm]["summary"]
    trials = pd.read_csv(folder / confirm / "trials.csv")
    config = json.loads(summary["winner"])
    return {"pick": config, "folder": folder, "confirm_trials": trials, "summary": summary,
            "spent_plan": sum(state["budget"]["spent"].values())}


# ----------------------------------------------------------------------------- confirmation

def confirm(task: Task, pick: dict[str, Any], root: Path, name: str, seeds: range = range(SEEDS)
            ) -> tuple[list[float], Path]:
    """The pick over seeds 0-4 (or ``seeds``), each with its own validation split: the test metric of each."""
    family = get_family(load_space(task.fine).family)
    grid = [{**task.fixed, **pick, "seed": s, "split_seed": s} for s in seeds]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"family": family.name, "dataset": task.dataset, "metric": "val_loss",
                                    "mode": "min", "max_epochs": task.epochs, "grid": grid}, sort_keys=False))
    folder = run_search(load_space(path), SearchOptions(storage=str(root), name=name, quiet=True))
    trials = pd.read_csv(folder / "trials.csv").sort_values("config/seed")
    return trials[family.task.test_metric].tolist(), folder


def winner_seeds(task: Task, trials: pd.DataFrame, pick: dict[str, Any]) -> list[float]:
    """A valley winner's confirm-stage rows: the same seeds, splits and epochs as ``confirm``."""
    from analysis.load import config_of

    family = get_family(load_space(task.fine).family)
    mine = trials[[config_of(row) == pick for _, row in trials.iterrows()]].sort_values("config/seed")
    return mine[family.task.test_metric].tolist()


def repetition(task: Task, strategy: str, seed: int, root: Path, quick_run: bool) -> dict[str, Any]:
    family = get_family(load_space(task.fine).family)
    metric, mode = family.task.val_metric, family.task.mode
    search_budget = task.budget - SEEDS * task.epochs
    space = combined_space(task, root)
    grace = 1 if quick_run else 2  # as valley's rough stages wait: at 1 ASHA cut the best MLP (benchmarks/grace.py)
    started = time.time()
    fresh: list[float] = []
    fresh_s = 0.0  # outside the budget, and the wall time
    if strategy == "valley":
        out = run_valley(task, root, seed, quick_run)
        seeds = winner_seeds(task, out["confirm_trials"], out["pick"])
        spent, rows = out["spent_plan"], results(out["folder"])
        fresh_s = time.time()
        fresh = confirm(task, out["pick"], root, "fresh", FRESH)[0]
        fresh_s = time.time() - fresh_s
    elif strategy == "optuna":
        out = plain_optuna(task, space, seed, search_budget)
        rows = out["rows"].rename(columns={"val": metric})
        seeds, confirmed = confirm(task, out["pick"], root, "confirm")
        spent = out["spent"] + trial_epochs(confirmed)
    else:
        options = {
            "random": dict(samples=max(1, search_budget // task.epochs)),
            "random+asha": dict(scheduler="asha", grace_period=grace, samples=search_budget,
                                budget_epochs=search_budget),
            "tpe+asha": dict(search="optuna", scheduler="asha", grace_period=grace, samples=search_budget,
                             budget_epochs=search_budget),
            "bohb": dict(search="bohb", scheduler="hyperband", samples=search_budget, budget_epochs=search_budget),
        }[strategy]
        out = ray_search(task, space, root, strategy.replace("+", "-"), seed, **options)
        rows = results(out["folder"])
        seeds, confirmed = confirm(task, out["pick"], root, "confirm")
        spent = trial_epochs(out["folder"]) + trial_epochs(confirmed)
    wall = time.time() - started - fresh_s
    curve = anytime(rows, metric, mode, started)
    return {"task": task.name, "strategy": strategy, "repetition": seed, "test": float(np.mean(seeds)),
            "test_by_seed": json.dumps(seeds), "test_fresh": float(np.mean(fresh)) if fresh else np.nan,
            "trial_epochs": int(spent), "budget": task.budget, "wall_s": wall,
            "pick": json.dumps(out["pick"]), "curve": curve.to_json(orient="split", index=False)}


# ----------------------------------------------------------------------------- the tables

def t_interval(values: np.ndarray) -> tuple[float, float]:
    """The mean's 95% interval by Student's t (a percentile bootstrap over 5 values is too narrow: it cannot
    reach beyond the values themselves)."""
    from scipy import stats

    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return mean, mean
    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n))
    return mean - half, mean + half


def sign_flip_p(diffs: np.ndarray) -> float:
    """One-sided exact paired permutation p-value: the share of the 2^n sign flips of the differences whose
    mean is at least the observed one (the chance of a lead this large were the two strategies exchangeable;
    1/32 at best with 5 pairs)."""
    flips = np.array(np.meshgrid(*[[1, -1]] * len(diffs))).reshape(len(diffs), -1).T
    means = (flips * diffs).mean(axis=1)
    return float((means >= diffs.mean() - 1e-12).mean())


def task_table(runs: pd.DataFrame, task: Task) -> tuple[str, dict[str, Any]]:
    """Mean test metric with its 95% t interval; the paired difference to valley, its t interval, and 1 - p of
    the one-sided exact sign-flip test that valley is better."""
    family = get_family(load_space(task.fine).family)
    sign = 1 if family.task.mode == "max" else -1  # differences in "better is positive" units
    mine = with_fresh(runs[runs["task"] == task.name])
    ours = mine[mine["strategy"] == "valley"].set_index("repetition")["test"]
    rows, verdict = [], {}
    for strategy, group in mine.groupby("strategy", sort=False):
        test = group.set_index("repetition")["test"]
        low, high = t_interval(test.to_numpy())
        row = {"strategy": strategy, "runs": len(test), f"mean {family.task.test_metric}": test.mean(),
               "95% CI": f"[{low:.4g}, {high:.4g}]", "trial-epochs": group["trial_epochs"].mean(),
               "wall s": group["wall_s"].mean()}
        if strategy != "valley":
            paired = (sign * (ours - test)).dropna()
            if len(paired):
                d_low, d_high = t_interval(paired.to_numpy())
                p = sign_flip_p(paired.to_numpy())
                row.update({"valley - it (better +)": paired.mean(), "diff 95% CI": f"[{d_low:.4g}, {d_high:.4g}]",
                            "1 - p (valley better)": 1 - p})
                verdict[strategy] = {"diff": paired.mean(), "low": d_low, "p": 1 - p}
        rows.append(row)
    return table(rows), verdict


def with_fresh(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` and, where valley's rows have ``test_fresh``, a row per repetition for its pick on seeds 5-9:
    its "valley - it" is what choosing on the seeds whose test is reported adds (with the seeds' own noise)."""
    if "test_fresh" not in runs:
        return runs
    fresh = runs[(runs["strategy"] == "valley") & runs["test_fresh"].notna()]
    return pd.concat([runs, fresh.assign(strategy=FRESH_ROW, test=fresh["test_fresh"])], ignore_index=True)


def goal(runs: pd.DataFrame, task: Task, verdict: dict[str, Any]) -> str:
    """The issue's goal on one task, line by line: a loss stated as plainly as a win."""
    family = get_family(load_space(task.fine).family)
    mine = runs[runs["task"] == task.name]
    means = mine.groupby("strategy")["test"].mean()
    peers = means.drop("valley", errors="ignore")
    if peers.empty or "valley" not in means:
        return ""
    best = peers.idxmax() if family.task.mode == "max" else peers.idxmin()
    one_image = (1 if family.task.mode == "max" else 360) / task.n_test  # one test image, in metric units
    v = verdict[best]
    spent = mine.groupby("strategy")["trial_epochs"].mean()
    reach = half_budget_reach(mine, best, family.task.mode)
    return "\n".join([
        f"- best peer: {best} (mean {means[best]:.4g}); valley {means['valley']:.4g}",
        f"- at least as good (lower end of the paired difference >= -1 test image = {-one_image:.3g}): "
        f"{'met' if v['low'] >= -one_image else 'NOT met'} ({v['low']:.4g})",
        f"- better with 1 - p >= 0.9 (one-sided exact sign-flip test over the paired repetitions): "
        f"{'yes' if v['p'] >= 0.9 else 'no'} (1 - p = {v['p']:.3f})",
        f"- no more trial-epochs than the peers: {'met' if spent['valley'] <= spent.drop('valley').min() else 'NOT met'}"
        f" (valley {spent['valley']:.0f}, peers {spent.drop('valley').min():.0f} to {spent.drop('valley').max():.0f})",
        f"- reaches {best}'s final validation metric within half its trial-epochs: {reach}",
        *fresh_line(mine, best, family.task.mode),
    ])


def fresh_line(runs: pd.DataFrame, best: str, mode: str) -> list[str]:
    """valley's pick on seeds 5-9 against the best peer: the comparison no choice has seen."""
    if "test_fresh" not in runs or runs.loc[runs["strategy"] == "valley", "test_fresh"].isna().all():
        return []
    ours = runs[runs["strategy"] == "valley"].set_index("repetition")["test_fresh"]
    theirs = runs[runs["strategy"] == best].set_index("repetition")["test"]
    paired = ((1 if mode == "max" else -1) * (ours - theirs)).dropna()
    if paired.empty:  # a partial CSV: no repetition has both
        return []
    low, high = t_interval(paired.to_numpy())
    return [f"- valley's pick on seeds 5-9, which its confirm stage did not choose on: mean {ours.mean():.4g} "
            f"(on seeds 0-4 {runs[runs['strategy'] == 'valley']['test'].mean():.4g}); against {best}: "
            f"{paired.mean():+.4g} [{low:.4g}, {high:.4g}], 1 - p = {1 - sign_flip_p(paired.to_numpy()):.3f}"]


def half_budget_reach(runs: pd.DataFrame, peer: str, mode: str) -> str:
    """Per repetition, whether valley's best validation so far reaches the peer's final one by half its epochs."""
    hits = []
    for rep, group in runs.groupby("repetition"):
        by = {row["strategy"]: pd.read_json(io.StringIO(row["curve"]), orient="split") for _, row in group.iterrows()}
        if peer not in by or "valley" not in by or by[peer].empty or by["valley"].empty:
            continue
        target, half = by[peer]["best_val"].iloc[-1], by[peer]["trial_epochs"].iloc[-1] / 2
        ours = by["valley"][by["valley"]["trial_epochs"] <= half]["best_val"]
        hits.append(bool(len(ours)) and (ours.max() >= target if mode == "max" else ours.min() <= target))
    return f"{sum(hits)} of {len(hits)} repetitions"


def figure(runs: pd.DataFrame, out: Path) -> None:
    """Anytime curves: best validation metric so far against trial-epochs and wall seconds, mean and band."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    tasks = list(dict.fromkeys(runs["task"]))
    fig = make_subplots(rows=len(tasks), cols=2, subplot_titles=[f"{t}: {x}" for t in tasks
                                                                for x in ("trial-epochs", "wall seconds")])
    colours = dict(zip(STRATEGIES, ("#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#d62728")))
    for r, task in enumerate(tasks, 1):
        for strategy, group in runs[runs["task"] == task].groupby("strategy", sort=False):
            curves = [pd.read_json(io.StringIO(c), orient="split") for c in group["curve"]]
            for col, x in ((1, "trial_epochs"), (2, "wall_s")):
                grid = np.linspace(0, max(c[x].max() for c in curves if len(c)) or 1, 60)
                values = np.array([np.interp(grid, c[x], c["best_val"], left=np.nan) if len(c) else grid * np.nan
                                   for c in curves])
                with warnings.catch_warnings():  # before any repetition's first result a column is all NaN:
                    warnings.simplefilter("ignore", RuntimeWarning)  # no line there, as meant
                    mean, low, high = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
                show = r == 1 and col == 1
                fig.add_trace(go.Scatter(x=grid, y=mean, name=strategy, legendgroup=strategy, showlegend=show,
                                         line=dict(color=colours.get(strategy))), row=r, col=col)
                fig.add_trace(go.Scatter(x=np.r_[grid, grid[::-1]], y=np.r_[high, low[::-1]], fill="toself",
                                         line=dict(width=0), fillcolor=colours.get(strategy), opacity=0.15,
                                         legendgroup=strategy, showlegend=False, hoverinfo="skip"), row=r, col=col)
    fig.update_layout(height=360 * len(tasks), title="Best validation metric so far (mean, band: min to max over "
                                                     "repetitions)")
    fig.write_html(out, include_plotlyjs="cdn")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--quick", action="store_true", help="one tiny repetition of each strategy (tests)")
    parser.add_argument("--out", default=str(HERE), help="folder for strategies.csv, .md and .html")
    parser.add_argument("--tables-only", metavar="CSV", help="rebuild the tables and figure from a saved CSV")
    parser.add_argument("--fresh", metavar="CSV", help="train a saved run's valley picks on seeds 5-9 (test_fresh, "
                                                       "written into the CSV), then rebuild the tables (with "
                                                       "--quick for a --quick run's CSV)")
    args = parser.parse_args(argv)
    if args.fresh:
        frame = add_fresh(Path(args.fresh), args.quick)
        args.tasks = [t for t in args.tasks if t in set(frame["task"])]
        return write_outputs(frame, args, f"tables rebuilt from {args.fresh}, valley's picks on seeds 5-9 added at "
                                          f"commit {git_commit()}", list(dict.fromkeys(frame["strategy"])))
    if args.tables_only:
        return write_outputs(pd.read_csv(args.tables_only), args, f"tables rebuilt from {args.tables_only}",
                             list(dict.fromkeys(pd.read_csv(args.tables_only)["strategy"])))
    repetitions = 1 if args.quick else args.repetitions
    strategies = [s for s in args.strategies if s != "bohb" or bohb_available()]
    commit = git_commit()  # the code the run starts with
    start_ray(SearchOptions(num_cpus=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, runs = time.time(), []
    for seed in range(repetitions):  # repetitions outermost: a run stopped early leaves whole, paired ones
        for name in args.tasks:
            task = quick(TASKS[name]) if args.quick else TASKS[name]
            for strategy in strategies:
                with tempfile.TemporaryDirectory() as tmp:
                    runs.append(repetition(task, strategy, seed, Path(tmp), args.quick))
                shown = {k: v for k, v in runs[-1].items() if k not in ("curve", "test_by_seed")}
                print(json.dumps(shown), flush=True)
                pd.DataFrame(runs).to_csv(out / "strategies.csv", index=False)  # nothing lost if stopped
    header = (f"`python benchmarks/strategies.py{' --quick' if args.quick else ''}`, {machine()}, "
              f"{time.strftime('%Y-%m-%d')}, commit {commit}, {time.time() - started:.0f} s in all, "
              f"{repetitions} repetition(s)")
    return write_outputs(pd.DataFrame(runs), args, header, strategies)


def add_fresh(csv: Path, quick_run: bool) -> pd.DataFrame:
    """A saved run's valley picks trained on seeds 5-9 (those without ``test_fresh``), the CSV rewritten."""
    frame = pd.read_csv(csv)
    if "test_fresh" not in frame:
        frame["test_fresh"] = np.nan
    start_ray(SearchOptions(num_cpus=2))
    for i, row in frame[(frame["strategy"] == "valley") & frame["test_fresh"].isna()].iterrows():
        with tempfile.TemporaryDirectory() as tmp:
            task = quick(TASKS[row["task"]]) if quick_run else TASKS[row["task"]]  # the run's own epochs
            seeds, _ = confirm(task, json.loads(row["pick"]), Path(tmp), "fresh", FRESH)
        frame.loc[i, "test_fresh"] = float(np.mean(seeds))
        print(json.dumps({"task": row["task"], "repetition": int(row["repetition"]), "test": row["test"],
                          "test_fresh": frame.loc[i, "test_fresh"]}), flush=True)
        frame.to_csv(csv, index=False)  # nothing lost if stopped
    return frame


def write_outputs(frame: pd.DataFrame, args: argparse.Namespace, header: str, strategies: list[str]) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # --tables-only / --fresh into a new folder
    sections = [f"# Strategies on the same budget\n\n{header}\n"]
    if "bohb" in args.strategies and "bohb" not in strategies:
        sections.append("bohb: not run, `hpbandster` and `ConfigSpace` are not installed "
                        "(`pip install hpbandster ConfigSpace`)\n")
    for name in [n for n in args.tasks if n in set(frame["task"])]:
        task = quick(TASKS[name]) if args.quick else TASKS[name]
        text, verdict = task_table(frame, task)
        sections.append(f"## {name}\n\n{text}\n\n{goal(frame, task, verdict)}\n")
    (out / "strategies.md").write_text("\n".join(sections))
    figure(frame, out / "strategies.html")
    print("\n".join(sections))
    return out


def bohb_available() -> bool:
    return all(importlib.util.find_spec(name) for name in ("hpbandster", "ConfigSpace"))


if __name__ == "__main__":
    main()
