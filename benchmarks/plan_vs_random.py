"""Rough-then-fine against a flat random search of the combined space, on the same budget.

For each repetition (seed): run the offline MLP plan (`plan-mlp-digits`: rough -> valley ->
fine -> confirm), count the trial-epochs it spent (every epoch of every trial of every stage,
its confirmation of 3 configurations over 5 seeds included), then give a flat random search of
the combined space (every rough architecture crossed with the fine space's distributions) the
same trial-epochs, less the 5 x 15 its own winner's confirmation costs. Both winners are then
re-trained over the same 5 seeds and fresh validation splits, as the confirm stage does, and
compared on mean test accuracy (the plan's winner is chosen among its 3 by mean validation
loss, the flat one by its search's validation loss). Also prints the ratio of the plan's trial-epochs to a full grid of the combined
space. Usage (about 10 minutes on 2 CPU cores):

    python benchmarks/plan_vs_random.py [--repetitions 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.plans import load_plan, run_plan, start_plan, top_configs  # noqa: E402
from search.ray_start import start_ray  # noqa: E402
from search.run import SearchOptions, run_search  # noqa: E402
from spaces import load_space  # noqa: E402

EPOCHS = 15  # the plan's fine and confirm budget per trial
SEEDS = 5
# The full grid the staged plan is compared with: 8 distinct architectures of mlp-rough
# crossed with 3 learning rates, 3 dropouts, 3 L2 weights and 2 batch sizes, at EPOCHS each.
FULL_GRID_TRIALS = 8 * 3 * 3 * 3 * 2


def combined_space(folder: Path) -> Path:
    """mlp-rough's architectures as one categorical, crossed with mlp-fine's distributions."""
    rough, fine = load_space("mlp-rough"), load_space("mlp-fine")
    archs = []
    for row in rough.grid:
        hidden = row.get("hidden") or [100 * k for k in range(1, row["layers"] + 1)]
        if hidden not in archs:
            archs.append(hidden)
    params = {"hidden": {"choice": archs}}
    for key, value in fine.params.items():
        if key != "layers":
            params[key] = {value.kind: list(value.args)} if hasattr(value, "kind") else value
    doc = {"description": "mlp-rough architectures x mlp-fine distributions, flat", "family": "mlp",
           "dataset": "digits", "metric": "val_loss", "mode": "min", "max_epochs": EPOCHS, "params": params}
    path = folder / "combined.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def trial_epochs(folder: Path) -> int:
    return int(sum(pd.read_csv(p)["epochs"].sum() for p in folder.rglob("trials.csv")))


def confirm(config: dict, folder: Path, name: str, opts: SearchOptions) -> float:
    """Mean test accuracy of ``config`` over SEEDS seeds with fresh validation splits."""
    grid = [{**config, "seed": s, "split_seed": s} for s in range(SEEDS)]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"family": "mlp", "dataset": "digits", "metric": "val_loss", "mode": "min",
                                    "max_epochs": EPOCHS, "grid": grid}, sort_keys=False))
    out = run_search(load_space(path), dataclasses.replace(opts, name=name))
    return float(pd.read_csv(out / "trials.csv")["test_acc"].mean())


def repetition(seed: int, root: Path) -> dict:
    opts = SearchOptions(storage=str(root), seed=seed, quiet=True)
    plan_folder = run_plan(start_plan(load_plan("plan-mlp-digits"), dataclasses.replace(opts, name="plan"),
                                      say=lambda *a: None))
    spent = trial_epochs(plan_folder)
    summary = json.loads((plan_folder / "stage-confirm.json").read_text())
    plan_acc = float(pd.read_csv(plan_folder / "stage-confirm.csv").iloc[0]["mean_test_acc"])

    samples = max(1, (spent - SEEDS * EPOCHS) // EPOCHS)  # the flat winner's confirmation is paid from it too
    flat = run_search(load_space(combined_space(root)),
                      dataclasses.replace(opts, name="flat", samples=samples, max_epochs=EPOCHS))
    trials = pd.read_csv(flat / "trials.csv")
    (best,), _ = top_configs(trials, "val_loss", "min", 1)
    flat_acc = confirm(best, root, "flat-confirm", opts)
    return {"seed": seed, "plan_trial_epochs": spent, "flat_trials": samples,
            "flat_trial_epochs": trial_epochs(flat) + SEEDS * EPOCHS, "plan_test_acc": plan_acc, "flat_test_acc": flat_acc,
            "plan_winner": summary["winner"], "flat_winner": json.dumps(best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    start_ray(SearchOptions())
    rows = []
    for seed in range(args.repetitions):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(repetition(seed, Path(tmp)))
        print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    full = FULL_GRID_TRIALS * EPOCHS
    print("\nstaged plan against a flat random search, same trial-epochs (confirmation included), winners "
          f"confirmed over {SEEDS} seeds (digits):")
    print(table[["seed", "plan_trial_epochs", "flat_trials", "flat_trial_epochs", "plan_test_acc", "flat_test_acc"]]
          .to_string(index=False, float_format="{:.4f}".format))
    print(f"mean test accuracy: plan {table.plan_test_acc.mean():.4f}, flat random {table.flat_test_acc.mean():.4f}"
          f" (difference {100 * (table.plan_test_acc.mean() - table.flat_test_acc.mean()):+.2f} points)")
    print(f"plan trial-epochs / full grid ({FULL_GRID_TRIALS} configs x {EPOCHS} epochs = {full}): "
          f"{table.plan_trial_epochs.mean() / full:.3f}")


if __name__ == "__main__":
    main()
