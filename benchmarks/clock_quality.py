"""Clock-reading quality: test CSD of the best encoding on synthetic clocks, default and hard presets.

Calls the trainable directly (no Ray), so it runs on a GPU machine that has torch only.
On CUDA it trains the issue's goal setting: ResNet-18 with (class, class) heads on 18,000
150x150 clocks, 30 epochs, batch 128. On a CPU it runs a scaled-down version (64x64,
3,600 clocks, small_cnn) and says so. Usage:

    python benchmarks/clock_quality.py            # default and hard presets
    python benchmarks/clock_quality.py --epochs 5 # quicker
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainables import clockgen  # noqa: E402
from trainables.data import load_dataset  # noqa: E402
from trainables.loop import train  # noqa: E402
from trainables.report import LocalReporter  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--encoding", default="class_class")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    size, per_minute, backbone = (150, 25, "resnet18") if gpu else (64, 5, "small_cnn")
    device = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {720 * per_minute:,} clocks of {size}x{size}, {backbone}, {args.encoding}, "
          f"up to {args.epochs} epochs" + ("" if gpu else " (CPU: scaled down from the 150x150 goal)"))
    rows = []
    for preset in ("default", "hard"):
        with tempfile.TemporaryDirectory() as folder:
            clockgen.write(folder, per_minute=per_minute, size=size, seed=0, preset=preset)
            data = load_dataset("clocks", data_dir=folder)
        reporter = LocalReporter()
        started = time.perf_counter()
        last = train({"family": "clock", "dataset": "clocks", "backbone": backbone, "encoding": args.encoding,
                      "max_epochs": args.epochs}, data=data, reporter=reporter)
        rows.append((preset, last["best_epoch"], last["epoch"], last["test_csd"], last["test_csd_median"],
                     last["test_exact_acc"], time.perf_counter() - started))
    print(f"{'preset':<8} {'best epoch':>10} {'epochs':>7} {'test CSD':>9} {'median':>7} {'exact':>6} {'train s':>8}")
    for preset, best, epochs, csd, median, exact, seconds in rows:
        print(f"{preset:<8} {best:>10} {epochs:>7} {csd:>9.3f} {median:>7.2f} {exact:>6.3f} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
