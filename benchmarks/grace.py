"""How long must ASHA wait in a rough stage? Every rough architecture trained to the end, then asked epoch by epoch.

For each task's rough grid (run with FIFO, every trial to ``max_epochs``), and each candidate
grace period g: would ASHA's first rung at epoch g, keeping the best 1 in 3 by validation loss,
have kept the architecture that is best at the end? Also the rank at epoch g of that final best.
The tasks are the three of ``strategies.py``: the MLP and CNN grids on digits (CNN channels
x 0.25) and the clock encodings on 32x32 clocks. Usage (about 6 minutes on 2 CPU cores):

    python benchmarks/grace.py
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import HERE, machine, table  # noqa: E402
from search.options import SearchOptions  # noqa: E402
from search.ray_start import start_ray  # noqa: E402
from search.run import run_search  # noqa: E402
from spaces import load_space  # noqa: E402

TASKS = {  # task -> (space, data set, epochs, fixed keys)
    "mlp-digits": ("mlp-rough", "digits", 10, {}),
    "cnn-digits": ("cnn-rough", "digits", 6, {"width": 0.25}),
    "clock-tiny": ("clock-encodings", "clocks-tiny", 6, {"seed": 0, "width": 8}),
}


def curves(task: str, root: Path) -> pd.DataFrame:
    space, dataset, epochs, fixed = TASKS[task]
    folder = run_search(load_space(space), SearchOptions(dataset=dataset, max_epochs=epochs, storage=str(root),
                                                         name=task, overrides=fixed, quiet=True))
    frames = [pd.read_json(p, lines=True).assign(trial_id=p.parent.name) for p in folder.glob("*/result.json")]
    return pd.concat(frames)[["trial_id", "epoch", "val_loss"]]


def verdicts(task: str, epochs: pd.DataFrame, reduction: int = 3) -> list[dict]:
    by_epoch = epochs.pivot_table(index="trial_id", columns="epoch", values="val_loss")
    final = by_epoch[by_epoch.columns.max()]
    best = final.idxmin()
    rows = []
    for g in by_epoch.columns[:-1]:
        ranks = by_epoch[g].rank(method="min")
        kept = math.ceil(len(ranks) / reduction)
        rows.append({"task": task, "grace": int(g), "trials": len(ranks), "kept_at_rung": kept,
                     "final_best_rank": int(ranks[best]), "final_best_kept": bool(ranks[best] <= kept)})
    return rows


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    start_ray(SearchOptions())
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for task in TASKS:
            rows += verdicts(task, curves(task, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{machine()}, {time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s")
    print(table(rows))
    (HERE / "grace.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
