"""GPU figures in one prepared run: data path, valley's loop, and 8 trainings sharing one GPU.

    python benchmarks/gpu.py              # on the GPU machine: under 6 minutes, one table
    python benchmarks/gpu.py --smoke      # a tiny CPU version (also what runs without CUDA)

Imports only torch, numpy and valley's ``trainables`` (no Ray, Optuna or plotly: the GPU image
has torch, torchvision and pandas). Measures, on CUDA, with Fashion-MNIST-sized random uint8
images (55,000 train, 5,000 val, 10,000 test) and the 784-100-200-10 MLP at batch 128:

1. one training epoch with the data resident on the GPU as uint8 (valley's path, fused Adam)
   against DataLoader loops from host memory (goal: valley's epoch <= 0.5 x the DataLoader's);
2. ``trainables.loop.train`` with a ``LocalReporter``: ``epoch_s`` as valley reports it
   (training plus validation and test evaluation);
3. 8 trainings in parallel processes on the one GPU against one alone: throughput ratio
   ``8 x T(one alone) / T(eight together)``, timed from a barrier after every process has
   loaded its data and warmed up (goal: >= 6).

bf16 autocast and channels-last are a later pass; this measures what is there. Without CUDA it
prints "no CUDA device", runs the smoke version on the CPU and exits 0.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table  # noqa: E402
from benchmarks.datapath import BATCH, measure, random_images  # noqa: E402

N_VAL, N_TEST = 5_000, 10_000


def random_splits(n_train: int, seed: int = 0) -> Any:
    """A Fashion-MNIST-shaped :class:`trainables.data.Splits` of random uint8 images."""
    from trainables.data import make_splits

    x, y = random_images(n_train + N_VAL + N_TEST, seed)
    return make_splits("random", x[:n_train + N_VAL], y[:n_train + N_VAL], x[n_train + N_VAL:],
                       y[n_train + N_VAL:], N_VAL, 10)


def mlp_config(device: str, epochs: int) -> dict[str, Any]:
    return {"family": "mlp", "dataset": "random", "hidden": [100, 200], "batch_size": BATCH, "lr": 1e-3,
            "max_epochs": epochs, "checkpoint_every": 10_000, "device": device}  # saves only at the end


def fit_epoch(device: str, n_train: int, epochs: int) -> dict[str, Any]:
    """valley's own loop: median reported ``epoch_s`` after the first epoch."""
    from trainables.loop import train
    from trainables.report import LocalReporter

    reporter = LocalReporter()
    train(mlp_config(device, epochs + 1), data=random_splits(n_train), reporter=reporter)
    times = [h["epoch_s"] for h in reporter.history[1:]]
    return {"data path": f"trainables.loop.train (epoch_s: train + val/test eval), {reporter.history[-1]['device']}",
            "epoch s": statistics.median(times), "spread s": max(times) - min(times)}


def _worker(rank: int, device: str, n_train: int, epochs: int, barrier: Any, results: Any) -> None:
    """One training process: load, warm up, wait for the others, train, send (rank, seconds, memory)."""
    from trainables.loop import train
    from trainables.report import LocalReporter

    torch.set_num_threads(1)
    data = random_splits(n_train, seed=rank)
    train(mlp_config(device, 1), data=data, reporter=LocalReporter())  # CUDA context, kernels, allocator
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    barrier.wait()
    started = time.perf_counter()
    train({**mlp_config(device, epochs), "seed": rank}, data=data, reporter=LocalReporter())
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    results.put((rank, seconds, peak))


def parallel(device: str, processes: int, n_train: int, epochs: int, timeout_s: float) -> dict[str, float]:
    """Wall seconds for ``processes`` trainings at once, from the barrier to the last one's end."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, device, n_train, epochs, barrier, results))
             for r in range(processes)]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=timeout_s)
    started = time.perf_counter()
    done = [results.get(timeout=timeout_s) for _ in procs]
    wall = time.perf_counter() - started
    for proc in procs:
        proc.join(timeout=30)
    return {"wall s": wall, "mean per training s": float(np.mean([d[1] for d in done])),
            "peak MB per process": float(np.max([d[2] for d in done]))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (what runs without CUDA)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per data path")
    parser.add_argument("--parallel", type=int, default=8, help="trainings sharing the GPU")
    parser.add_argument("--parallel-epochs", type=int, default=5, help="epochs per parallel training")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 4], help="DataLoader workers to try")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda:
        if not args.smoke:
            print("no CUDA device: running the tiny CPU smoke version instead", flush=True)
        args.epochs, args.parallel, args.parallel_epochs, args.workers = 1, 2, 1, [0]
        torch.set_num_threads(1)  # as a 1-CPU trial; 2 spinning OpenMP threads on a busy 2-core box crawl
    device = "cuda" if cuda else "cpu"
    n_train = 55_000 if cuda else 2_000
    started = time.perf_counter()
    print(f"machine: {machine()}; device {device}, {n_train:,} train images, batch {BATCH}", flush=True)

    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rows = measure(torch.device(device), args.epochs, n_train, tuple(args.workers), log)
    fit = fit_epoch(device, n_train, args.epochs)
    fit["valley / this"] = rows[0]["epoch s"] / fit["epoch s"]
    rows.append(fit)
    log(f"  {fit['data path']}: {fit['epoch s']:.3f} s/epoch")
    print(table(rows, ["data path", "epoch s", "spread s", "data MB", "valley / this"]))
    loaders = [r["epoch s"] for r in rows if str(r["data path"]).startswith("DataLoader")]
    print(f"valley's epoch / fastest DataLoader's: {rows[0]['epoch s'] / min(loaders):.2f} (goal on a GPU: <= 0.5)")

    one = parallel(device, 1, n_train, args.parallel_epochs, timeout_s=300)
    log(f"  1 training alone: {one['wall s']:.2f} s")
    many = parallel(device, args.parallel, n_train, args.parallel_epochs, timeout_s=300)
    log(f"  {args.parallel} trainings together: {many['wall s']:.2f} s")
    ratio = args.parallel * one["wall s"] / many["wall s"]
    print(table([{"trainings": 1, **one, "throughput vs one": 1.0},
                 {"trainings": args.parallel, **many, "throughput vs one": ratio}],
                ["trainings", "wall s", "mean per training s", "peak MB per process", "throughput vs one"]))
    print(f"throughput of {args.parallel} trainings on one {device} vs one: {ratio:.2f}"
          + (" (goal: >= 6)" if cuda else ""))
    from trainables import available_families

    later = [f for f in ("clock",) if f not in available_families()]
    if later:
        print(f"not measured: family {', '.join(later)} (not in this checkout yet)")
    print(f"total {time.perf_counter() - started:.0f} s")
    if not cuda and not args.smoke:
        print("no CUDA device")
    return 0


if __name__ == "__main__":
    sys.exit(main())
