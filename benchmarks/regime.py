"""The reference's training regime against a modern one, side by side, over seeds, on hard clocks.

Reference: Adam, lr 1e-3, divided by 10 after 3 flat epochs, early stop after 9 (the clock
family's defaults). Modern: AdamW (weight decay 0.05), a one-cycle schedule peaking at 2e-3.
Each regime trains the same backbone on the same hard-preset clocks for every seed; the table
gives the test CSD per seed, its mean and spread, and how many seeds stayed at chance level
(``stalled``). Calls the trainable directly (no Ray), so it also runs on a GPU machine:

    python benchmarks/regime.py                                  # CPU: small_cnn, 64x64, 5 seeds, 30 epochs
    python benchmarks/regime.py --size 150 --per-minute 25 --backbone resnet18 --epochs 30   # GPU
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.clock_quality import clocks  # noqa: E402
from benchmarks.common import HERE, machine, table  # noqa: E402
from search.manifest import git_commit  # noqa: E402
from trainables.loop import train  # noqa: E402
from trainables.report import LocalReporter  # noqa: E402

REGIMES = {
    "reference": {"optimizer": "adam", "lr": 1e-3, "schedule": "plateau", "early_stop": 9},
    "modern": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "schedule": "onecycle", "early_stop": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-minute", type=int, default=5)
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--preset", default="hard")
    args = parser.parse_args()
    commit = git_commit()
    data, _ = clocks(args.size, args.per_minute, args.preset)
    rows, started = [], time.time()
    for name, regime in REGIMES.items():
        results = []
        for seed in range(args.seeds):
            t = time.time()
            last = train({"family": "clock", "dataset": "clocks", "backbone": args.backbone, "seed": seed,
                          "max_epochs": args.epochs, **regime}, data=data, reporter=LocalReporter())
            results.append({"csd": last["test_csd"], "stalled": last["stalled"], "epochs": last["epoch"],
                            "s": time.time() - t})
            print(json.dumps({"regime": name, "seed": seed, **results[-1]}), flush=True)
        csd = np.array([r["csd"] for r in results])
        rows.append({"regime": name, "seeds": len(csd), "mean test CSD": float(csd.mean()),
                     "std": float(csd.std(ddof=1)) if len(csd) > 1 else float("nan"),
                     "worst seed": float(csd.max()), "stalled seeds": sum(r["stalled"] for r in results),
                     "per seed": ", ".join(f"{v:.1f}" for v in csd), "s per run": np.mean([r["s"] for r in results])})
    print(f"\n`python benchmarks/regime.py {' '.join(sys.argv[1:])}`, {machine()}, {time.strftime('%Y-%m-%d')}, "
          f"commit {commit}, {time.time() - started:.0f} s; {args.backbone} on {args.size}x{args.size} {args.preset} clocks, "
          f"{args.epochs} epochs")
    print(table(rows))
    (HERE / "regime.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
