"""Clock-reading quality: test CSD of the best encoding on synthetic clocks, default and hard presets.

Calls the trainable directly (no Ray), so it runs on a GPU machine that has torch only.
On CUDA it trains the issue's goal setting: ResNet-18 with (class, class) heads on 18,000
150x150 clocks, up to 60 epochs, batch 128 (``benchmarks/gpu.py`` runs it as its first part).
On a CPU it runs a scaled-down version (64x64, 3,600 clocks, small_cnn, 30 epochs) and says so.
Usage:

    python benchmarks/clock_quality.py            # default and hard presets
    python benchmarks/clock_quality.py --epochs 5 # quicker
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import table  # noqa: E402
from trainables import clockgen  # noqa: E402
from trainables.data import Splits, load_dataset  # noqa: E402
from trainables.loop import train  # noqa: E402
from trainables.report import LocalReporter  # noqa: E402


def clocks(size: int, per_minute: int, preset: str, seed: int = 0) -> tuple[Splits, float]:
    """A synthetic clock set in the course format, loaded and split as ``--data-dir`` would; seconds taken."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        clockgen.write(folder, per_minute=per_minute, size=size, seed=seed, preset=preset)
        data = load_dataset("clocks", data_dir=folder)
    return data, time.perf_counter() - started


def quality(data: Splits, preset: str, config: dict[str, Any]) -> dict[str, Any]:
    """Train one configuration on ``data``; the test metrics of its best-validation epoch."""
    started = time.perf_counter()
    last = train({"family": "clock", "dataset": "clocks", **config}, data=data, reporter=LocalReporter())
    return {"preset": preset, "best epoch": last["best_epoch"], "epochs": last["epoch"],
            "test CSD min": last["test_csd"], "median": last["test_csd_median"], "p90": last["test_csd_p90"],
            "exact": last["test_exact_acc"], "train s": time.perf_counter() - started,
            "precision": last["precision"]}


def setting(gpu: bool) -> tuple[int, int, str]:
    """(size, clocks per minute, backbone): the goal's on a GPU, scaled down on a CPU."""
    return (150, 25, "resnet18") if gpu else (64, 5, "small_cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="default: 60 on CUDA, 30 on a CPU")
    parser.add_argument("--encoding", default="class_class")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    size, per_minute, backbone = setting(gpu)
    args.epochs = args.epochs or (60 if gpu else 30)
    device = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {720 * per_minute:,} clocks of {size}x{size}, {backbone}, {args.encoding}, "
          f"up to {args.epochs} epochs" + ("" if gpu else " (CPU: scaled down from the 150x150 goal)"))
    rows = []
    for preset in ("default", "hard"):
        data, _ = clocks(size, per_minute, preset)
        rows.append(quality(data, preset, {"backbone": backbone, "encoding": args.encoding,
                                           "max_epochs": args.epochs}))
    print(table(rows))


if __name__ == "__main__":
    main()
