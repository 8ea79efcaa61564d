"""The small-model step on a GPU: one MLP epoch eager, as one CUDA graph per step, and compiled.

    python benchmarks/smallstep.py --device cuda          # what ``gpu.py --parts smallstep`` runs
    python benchmarks/smallstep.py --device cpu --n 2000  # the eager and compiled rows, tiny (no graphs)

An epoch of the reference's 784-100-200-10 MLP (55,000 Fashion-MNIST-sized images, batch 128, Adam)
is bound by kernel launches on a GPU: with the data resident (valley's path) it took 0.72 x the
fastest DataLoader's, and issue 15 asks for 0.5. Every row trains the same model on the same
resident uint8 data, standardising each batch on the device as ``trainables.loop.fit`` does:

- ``eager``: valley's path today (``benchmarks/datapath.py``'s ``ValleyPath``);
- ``CUDA graph``: the whole step (gather the batch, standardise, forward, loss, backward, fused
  capturable Adam, the running loss) captured once and replayed per batch, so a step is two
  launches: the batch's indices copied in, and the replay. The short last batch runs eagerly;
- ``torch.compile(mode="reduce-overhead")``: the batch's loss compiled (Inductor's kernels, run as
  CUDA graphs), backward and fused Adam as they are;
- ``DataLoader``: the fastest of datapath's loaders tried, the figure the goal is a fraction of.

The first epoch of a row carries its capture or compilation and is reported apart ("first epoch
s"), with the epochs a row needs to win that time back against eager. torch and numpy only (the
GPU image has no Ray): ``benchmarks/gpu.py`` runs it with the other GPU parts.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table  # noqa: E402
from benchmarks.datapath import (BATCH, N_TRAIN, LoaderPath, ValleyPath, make_mlp, random_images,  # noqa: E402
                                 sync)
from trainables.loop import to_input  # noqa: E402

Epoch = Callable[[], float]  # trains one epoch, returns the mean training loss


def eager(x: np.ndarray, y: np.ndarray, device: torch.device, mean: float, std: float) -> Epoch:
    path = ValleyPath(x, y, device, mean, std)
    model, optimizer = make_mlp(device)
    return lambda: path.epoch(model, optimizer)


def cuda_graph(x: np.ndarray, y: np.ndarray, device: torch.device, mean: float, std: float) -> Epoch:
    """One training step captured as a CUDA graph (PyTorch's whole-network capture), replayed per batch."""
    images, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    model, _ = make_mlp(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
    batch = torch.zeros(BATCH, dtype=torch.long, device=device)  # the step's indices, refilled per batch
    total = torch.zeros((), device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    n, full = len(images), len(images) // BATCH * BATCH

    def step(index: torch.Tensor) -> None:
        loss = F.cross_entropy(model(to_input(images[index], mean, std)).float(), labels[index])
        loss.backward()
        optimizer.step()
        total.add_(loss.detach() * len(index))

    side = torch.cuda.Stream(device)  # warm-up off the default stream before capture, as the docs say
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step(batch)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # backward inside the capture writes the gradients afresh
    with torch.cuda.graph(graph):
        step(batch)

    def epoch() -> float:
        total.zero_()
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, full, BATCH):
            batch.copy_(order[start:start + BATCH])
            graph.replay()
        if full < n:  # the short last batch: eagerly, adding into the graph's zeroed gradients
            optimizer.zero_grad(set_to_none=False)
            step(order[full:])
        return total.item() / n

    return epoch


def compiled(x: np.ndarray, y: np.ndarray, device: torch.device, mean: float, std: float,
             mode: str = "reduce-overhead") -> Epoch:
    """The batch's loss under ``torch.compile``; backward and fused Adam as valley runs them."""
    images, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    model, optimizer = make_mlp(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(to_input(xb, mean, std)).float(), yb)

    # dynamic=False: the short last batch gets a graph of its own, and the full batches keep theirs (a
    # dynamic recompile would otherwise run every later full batch on size-generic kernels)
    loss_of = torch.compile(batch_loss, mode=mode, dynamic=False)

    def epoch() -> float:
        total = torch.zeros((), device=device)
        for index in torch.randperm(len(images), device=device, generator=generator).split(BATCH):
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last one's graph outputs are free
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(images[index], labels[index])
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(index)
        return total.item() / len(images)

    return epoch


def loader(kind: str, workers: int) -> Callable[..., Epoch]:
    def make(x: np.ndarray, y: np.ndarray, device: torch.device, mean: float, std: float) -> Epoch:
        path = LoaderPath(kind, x, y, device, mean, std, workers)
        model, optimizer = make_mlp(device)
        return lambda: path.epoch(model, optimizer)
    return make


def timed(make: Callable[[], Epoch], device: torch.device, epochs: int) -> dict[str, float]:
    """Set-up plus first epoch (capture, compilation, DataLoader workers) apart; then the median epoch."""
    sync(device)
    started = time.perf_counter()
    epoch = make()
    loss = epoch()
    sync(device)
    first = time.perf_counter() - started
    times = []
    for _ in range(epochs):
        sync(device)
        started = time.perf_counter()
        loss = epoch()
        sync(device)
        times.append(time.perf_counter() - started)
    if not np.isfinite(loss):
        raise RuntimeError(f"loss {loss} is not finite")
    return {"first epoch s": first, "epoch s": statistics.median(times), "spread s": max(times) - min(times),
            "last loss": loss}


def measure(device: torch.device, epochs: int, n: int, workers: tuple[int, ...],
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per path; ``vs fastest DataLoader`` is the row's epoch time over the fastest loader's."""
    x, y = random_images(n)
    sample = x[:10_000].astype(np.float32) / 255.0
    mean, std = float(sample.mean()), float(sample.std())
    paths: list[tuple[str, Callable[..., Epoch]]] = [("eager (valley today)", eager)]
    if device.type == "cuda":
        paths.append(("CUDA graph per step", cuda_graph))
    paths.append(('torch.compile(mode="reduce-overhead")' if device.type == "cuda" else "torch.compile()",
                  lambda *a: compiled(*a, mode="reduce-overhead" if device.type == "cuda" else "default")))
    paths += [(f"DataLoader {kind}, {w} workers", loader(kind, w)) for kind in ("tensor", "sample")
              for w in (workers if kind == "sample" else (0,))]
    rows = []
    for label, make in paths:
        try:
            row = timed(lambda make=make: make(x, y, device, mean, std), device, epochs)
        except Exception as err:  # noqa: BLE001 - one path failing (a torch version without a feature) leaves the rest
            log(f"  {label}: failed ({type(err).__name__}: {str(err)[:200]})")
            continue
        rows.append({"path": label, **row})
        log(f"  {label}: {row['epoch s']:.3f} s/epoch, first {row['first epoch s']:.2f} s")
    loaders = [r["epoch s"] for r in rows if r["path"].startswith("DataLoader")]
    eager_s = rows[0]["epoch s"] if rows and rows[0]["path"].startswith("eager") else float("nan")
    for row in rows:
        row["vs fastest DataLoader"] = row["epoch s"] / min(loaders) if loaders else float("nan")
        gained = eager_s - row["epoch s"]
        row["epochs to repay first"] = ((row["first epoch s"] - row["epoch s"]) / gained
                                        if gained > 0 and not row["path"].startswith(("eager", "DataLoader"))
                                        else float("nan"))
    return rows


COLUMNS = ["path", "epoch s", "spread s", "first epoch s", "vs fastest DataLoader", "epochs to repay first",
           "last loss"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per path, after the first")
    parser.add_argument("--n", type=int, default=N_TRAIN, help="training images")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 4], help="per-sample DataLoader workers")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"machine: {machine()}; {device}, {args.n:,} images, batch {BATCH}", flush=True)
    rows = measure(device, args.epochs, args.n, tuple(args.workers), lambda s: print(s, file=sys.stderr, flush=True))
    print(table(rows, COLUMNS))
    print("goal (issue 15): the best path's epoch <= 0.5 x the fastest DataLoader's, on a GPU")


if __name__ == "__main__":
    main()
