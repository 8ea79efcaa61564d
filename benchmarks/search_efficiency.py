"""Search strategies replayed on one recorded grid of learning curves (digits, no Ray).

    python benchmarks/search_efficiency.py            # replay benchmarks/curves-digits.csv (seconds)
    python benchmarks/search_efficiency.py --record   # train the grid again first (minutes, 2 processes)

The grid: the 14 rows of ``spaces/mlp-rough.yaml`` crossed with learning rates and dropouts
(the rows that set a dropout fall into the crossing: 11 architectures, 66 configs), ``EPOCHS`` epochs each at batch 32 on ``digits``, trained
once with ``trainables.loop.train`` and a ``LocalReporter`` that also records the standard error
of the validation loss, cached in ``benchmarks/curves-digits.csv`` (how it was made:
``curves-digits.json``). Strategies replayed on the table, each over ``--seeds`` random orders:

* grid: every config, every epoch (the reference pick and the 100 % budget);
* random: a random quarter of the configs, every epoch;
* asha: every config under ASHA (grace 1, reduction factor 3, 2 trials at a time);
* staged: rough (each row at lr 1e-3, ASHA over ``--rough-epochs``), then the valley: the rows
  within one standard error of the best validation loss (``band``) or only the smallest of
  them (``smallest``), every config of those rows under ASHA over ``EPOCHS``.

Goal: the staged plan within 0.3 percentage points of the grid's pick in test accuracy with at
most 25 % of the grid's trial-epochs. Writes ``search-efficiency-digits.csv`` (mean best-so-far
against trial-epochs spent) and ``search-efficiency-digits.html`` (the same, plotted).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import HERE, machine, table  # noqa: E402
from benchmarks.replay import (  # noqa: E402
    Replay, curves_from_table, run_asha, run_full, run_staged, summarise)

CURVES = HERE / "curves-digits.csv"
EPOCHS = 20  # per trial, as mlp-rough
LRS = (3e-4, 1e-3, 3e-3)  # learning rates crossed with every row
DROPOUTS = (0.0, 0.2)  # crossed with rows that set no dropout
BATCH = 32  # images per step: 34 steps per epoch on digits' 1,077 training images
ROUGH_LR = 1e-3  # the rough stage trains each row at mlp-rough's own lr
FLOAT_DIGITS = 6


# ---- recording ------------------------------------------------------------------------------------

def grid_configs() -> list[dict[str, Any]]:
    """The recorded configs: rows of mlp-rough x LRS x DROPOUTS, duplicates dropped.

    A row that sets a dropout is another row's config (``layers: 1, dropout: 0.2`` is
    ``layers: 1`` at dropout 0.2), so the 14 rows make 11 architectures (``arch``). ``rough_row``
    marks the config each mlp-rough row trains in the rough stage (its own values, lr 1e-3).
    """
    from spaces import load_space

    def flat(row: dict[str, Any], lr: float, dropout: float) -> dict[str, Any]:
        return {"family": "mlp", "dataset": "digits", "max_epochs": EPOCHS, "batch_size": BATCH, "seed": 0,
                "lr": lr, "dropout": dropout, **row}

    rows = load_space("mlp-rough").grid
    configs: list[dict[str, Any]] = []
    index: dict[str, int] = {}  # config as JSON -> config_id
    archs: dict[str, int] = {}  # label -> arch
    for row in rows:
        base = {k: v for k, v in row.items() if k != "dropout"}
        arch = archs.setdefault(_label(base), len(archs))
        for lr in LRS:
            for dropout in DROPOUTS:
                config = flat(base, lr, dropout)
                key = json.dumps(config, sort_keys=True)
                if key not in index:
                    index[key] = len(configs)
                    configs.append({"config_id": len(configs), "arch": arch, "arch_label": _label(base),
                                    "rough_row": -1, "config": config})
    for k, row in enumerate(rows):
        key = json.dumps(flat(row, ROUGH_LR, row.get("dropout", 0.0)), sort_keys=True)
        configs[index[key]]["rough_row"] = k
    return configs


def _label(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.items())


class SEReporter:
    """A LocalReporter that also records the standard error of the mean validation loss.

    Each epoch's checkpoint holds the model; its per-sample validation losses give the spread.
    """

    def __init__(self, config: dict[str, Any], data: Any) -> None:
        import torch

        from trainables import get_family
        from trainables.report import LocalReporter

        family = get_family(config["family"])
        self.local = LocalReporter()
        self.history = self.local.history
        self.model = family.build_model(family.make_config(config), data)
        self.x_val = torch.from_numpy(np.array(data.x_val))
        self.y_val = torch.from_numpy(np.array(data.y_val))
        self.mean, self.std = data.mean, data.std

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import torch

        from trainables.loop import to_input

        self.local.report(metrics, None)
        se = math.nan
        if checkpoint_dir:
            state = torch.load(Path(checkpoint_dir) / "state.pt", map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            self.model.eval()
            with torch.no_grad():
                out = self.model(to_input(self.x_val, self.mean, self.std))
                losses = torch.nn.functional.cross_entropy(out.float(), self.y_val, reduction="none")
            se = float(losses.std() / math.sqrt(len(losses)))
        self.history[-1]["val_loss_se"] = se

    def restore(self) -> None:
        return None


_DATA: Any = None


def _init_worker() -> None:
    global _DATA
    import torch

    from trainables.data import load_dataset

    torch.set_num_threads(1)
    _DATA = load_dataset("digits")


def _record_one(item: dict[str, Any]) -> list[dict[str, Any]]:
    from trainables.loop import Diverged, train

    reporter = SEReporter(item["config"], _DATA)
    status = "completed"
    try:
        # every epoch's own weights, the last one's too: a finished trial's slim checkpoint keeps only the best
        train({**item["config"], "keep_optimizer": True}, data=_DATA, reporter=reporter)
    except Diverged:
        status = "diverged"
    keep = ("epoch", "train_loss", "val_loss", "val_acc", "val_loss_se", "test_loss", "test_acc",
            "best_val_loss", "best_epoch", "n_params", "lr", "epoch_s")
    config = item["config"]
    return [{"config_id": item["config_id"], "arch": item["arch"], "arch_label": item["arch_label"],
             "rough_row": item["rough_row"], "lr0": config["lr"], "dropout": config["dropout"], "l2": config.get("l2", 0.0),
             **{k: h[k] for k in keep}, "status": status} for h in reporter.history]


def record(path: Path = CURVES, processes: int = 2) -> pd.DataFrame:
    """Train every grid config once (``processes`` at a time) and write the curve table."""
    from trainables.data import load_dataset
    from trainables.report import environment

    items = sorted(grid_configs(), key=lambda i: -_cost(i["config"]))  # longest first: even finish
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with multiprocessing.get_context("spawn").Pool(processes, _init_worker) as pool:
        for k, part in enumerate(pool.imap_unordered(_record_one, items)):
            rows += part
            print(f"  recorded {k + 1}/{len(items)} configs", file=sys.stderr, flush=True)
    curves = pd.DataFrame(rows).sort_values(["config_id", "epoch"]).reset_index(drop=True)
    floats = curves.select_dtypes("float").columns
    curves[floats] = curves[floats].apply(lambda c: c.map(lambda v: float(f"{v:.{FLOAT_DIGITS}g}")))
    curves.to_csv(path, index=False)
    made = {"dataset": "digits", "data_fingerprint": load_dataset("digits").fingerprint,
            "epochs": EPOCHS, "batch_size": BATCH, "lrs": LRS, "dropouts": DROPOUTS, "seed": 0,
            "rows": "spaces/mlp-rough.yaml", "configs": len(items), "processes": processes,
            "torch_threads": 1, "wall_s": round(time.perf_counter() - started, 1),
            "machine": machine(), "environment": environment(), "git_commit": _git_commit(),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path.with_suffix(".json").write_text(json.dumps(made, indent=2))
    return curves


def _cost(config: dict[str, Any]) -> int:
    widths = config.get("hidden") or [100 * k for k in range(1, config.get("layers", 2) + 1)]
    sizes = [64, *widths, 10]
    return sum(a * b for a, b in zip(sizes, sizes[1:]))


def _git_commit() -> str:
    try:
        from search.manifest import git_commit

        return git_commit()
    except ImportError:
        return "unknown"


# ---- replay ---------------------------------------------------------------------------------------

def replay_all(curves_table: pd.DataFrame, seeds: int, rough_epochs: int, random_share: float = 0.25,
               concurrency: int = 2) -> tuple[Replay, dict[str, list[Replay]], Counter]:
    """The grid's replay, and each strategy's replay for every seed; plus the valley bands seen."""
    curves = curves_from_table(curves_table)
    ids = sorted(curves)
    grid = run_full(curves, ids, EPOCHS, "grid")
    firsts = curves_table.drop_duplicates("config_id")
    rough = {int(r.rough_row): int(r.config_id) for r in firsts.itertuples() if r.rough_row >= 0}  # row -> config
    results: dict[str, list[Replay]] = {}
    bands: Counter = Counter()
    n_random = max(1, round(random_share * len(ids)))
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        order = [ids[i] for i in rng.permutation(len(ids))]
        results.setdefault(f"random ({n_random} configs)", []).append(
            run_full(curves, order[:n_random], EPOCHS, f"random ({n_random} configs)"))
        results.setdefault("asha", []).append(run_asha(curves, order, EPOCHS, concurrency=concurrency))
        for fine in ("band", "smallest"):
            replay, archs = run_staged(curves, rough, np.random.default_rng(seed), rough_epochs, EPOCHS, fine,
                                       concurrency=concurrency)
            results.setdefault(replay.strategy, []).append(replay)
            if fine == "band":
                bands[tuple(archs)] += 1
    return grid, results, bands


def best_so_far(grid: Replay, results: dict[str, list[Replay]]) -> pd.DataFrame:
    """Mean over seeds of the incumbent's val loss and test accuracy after each trial-epoch spent."""
    frames = []
    for name, replays in [("grid", [grid]), *results.items()]:
        horizon = max(r.epochs_spent for r in replays)
        losses = np.full((len(replays), horizon), np.nan)
        accs = np.full((len(replays), horizon), np.nan)
        for k, r in enumerate(replays):
            spent, loss, acc = (np.array(v, dtype=float) for v in zip(*r.trace))
            idx = spent.astype(int) - 1
            losses[k, idx], accs[k, idx] = loss, acc * 100
        losses = pd.DataFrame(losses.T).ffill().to_numpy()  # a finished run keeps its last incumbent
        accs = pd.DataFrame(accs.T).ffill().to_numpy()
        frames.append(pd.DataFrame({"strategy": name, "epochs_spent": np.arange(1, horizon + 1),
                                    "best_val_loss": losses.mean(axis=1).round(5),
                                    "test_acc_pct": accs.mean(axis=1).round(3)}))
    return pd.concat(frames, ignore_index=True)


def write_plot(trace: pd.DataFrame, path: Path) -> bool:
    """Plotly HTML of ``trace`` (plotly.js from its CDN, to keep the file small); False without plotly."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        return False
    fig = make_subplots(rows=1, cols=2, subplot_titles=("best validation loss so far",
                                                        "test accuracy of that config (%)"))
    for k, (name, part) in enumerate(trace.groupby("strategy", sort=False)):
        for col, key in ((1, "best_val_loss"), (2, "test_acc_pct")):
            fig.add_trace(go.Scatter(x=part["epochs_spent"], y=part[key], name=name, legendgroup=name,
                                     showlegend=col == 1, line={"color": f"hsl({k * 67 % 360},70%,45%)"}),
                          row=1, col=col)
    fig.update_xaxes(type="log", title_text="trial-epochs spent")
    fig.update_layout(title="Search strategies replayed on the digits grid (mean over seeds)")
    fig.write_html(path, include_plotlyjs="cdn")
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"train the grid again into {CURVES.name}")
    parser.add_argument("--curves", type=Path, default=CURVES)
    parser.add_argument("--seeds", type=int, default=20, help="random orders per strategy")
    parser.add_argument("--rough-epochs", type=int, default=9, help="epochs per trial in the rough stage")
    parser.add_argument("--processes", type=int, default=2, help="trainings at a time when recording")
    args = parser.parse_args(argv)
    os.environ.setdefault("VALLEY_OFFLINE", "1")
    if args.record or not args.curves.exists():
        print(f"recording {len(grid_configs())} configs x {EPOCHS} epochs into {args.curves} ...", flush=True)
        record(args.curves, args.processes)
    curves_table = pd.read_csv(args.curves)
    n_configs = curves_table["config_id"].nunique()
    grid, results, bands = replay_all(curves_table, args.seeds, args.rough_epochs)
    grid_epochs = grid.epochs_spent
    labels = curves_table.drop_duplicates("arch").set_index("arch")["arch_label"]
    best_test = curves_table[curves_table.epoch == curves_table.groupby("config_id").epoch.transform("max")]
    print(f"{n_configs} configs x {EPOCHS} epochs = {grid_epochs} trial-epochs; grid's pick: config "
          f"{grid.pick} ({labels[curves_table.loc[curves_table.config_id == grid.pick, 'arch'].iloc[0]]}, "
          f"lr {curves_table.loc[curves_table.config_id == grid.pick, 'lr0'].iloc[0]:g}), val loss "
          f"{grid.val_loss:.4f}, val acc {grid.val_acc:.2%}, test acc {grid.test_acc:.2%} (best test acc of "
          f"any config: {best_test.test_acc.max():.2%}); {args.seeds} seeds, rough stage {args.rough_epochs} epochs")
    rows = [{"strategy": "grid", "trial-epochs": float(grid_epochs), **summarise([grid], grid, grid_epochs)}]
    for name, replays in results.items():
        rows.append({"strategy": name, "trial-epochs": float(np.mean([r.epochs_spent for r in replays])),
                     **summarise(replays, grid, grid_epochs)})
    for row, replays in zip(rows, [[grid], *results.values()]):
        row["pick val loss"] = float(np.mean([r.val_loss for r in replays]))
        row["goal met"] = ("yes" if row["budget %"] <= 25 and row["test gap pp"] >= -0.3 else "no") \
            if row["strategy"].startswith("staged") else "-"
    print(table(rows, ["strategy", "trial-epochs", "budget %", "compute %", "pick val loss", "test acc %", "test gap pp",
                       "test gap sd", "worst gap pp", "val gap pp", "goal met"]))
    print("budget %: trial-epochs against the grid's; compute %: the same weighted by each config's recorded "
          "epoch time; pick val loss: the chosen config's lowest validation loss; test gap: its test accuracy minus the "
          "grid pick's, percentage points, mean (sd, worst) over seeds; val gap: the same for validation "
          "accuracy; goal (staged): budget <= 25 % and mean test gap >= -0.3 pp (one digits test image is "
          f"{100 / 360:.2f} pp)")
    shown = ", ".join(f"[{'; '.join(labels[a] for a in band)}] x{n}" for band, n in bands.most_common(3))
    print(f"valley bands chosen by the rough stage (rows, seeds): {shown}")
    trace = best_so_far(grid, results)
    trace.to_csv(HERE / "search-efficiency-digits.csv", index=False)
    plotted = write_plot(trace, HERE / "search-efficiency-digits.html")
    print(f"wrote {HERE / 'search-efficiency-digits.csv'}" + (" and .html" if plotted else ""))


if __name__ == "__main__":
    main()
