"""valley's data path against torch DataLoader loops: one training epoch of the same MLP.

    python benchmarks/datapath.py                 # CPU here; --device cuda on a GPU machine
    python benchmarks/datapath.py --epochs 3 --threads 2

valley keeps a data set as uint8 (N, C, H, W) tensors on the training device, draws batches
with ``randperm`` and standardises each batch there (``trainables.loop.fit``). The baselines
feed the same model (784-100-200-10 MLP, Adam, batch 128) from a ``DataLoader`` over a
``TensorDataset`` of standardised floats and over a per-sample dataset (what a torchvision
dataset with ``ToTensor`` and ``Normalize`` does). The data are a Fashion-MNIST-sized random
uint8 array (55,000 x 1 x 28 x 28), since the real files cannot be downloaded here.
Goal on a GPU: valley's epoch at most 0.5 x the DataLoader's; on a CPU the figure is reported.

This file imports only torch and numpy: ``benchmarks/gpu.py`` reuses it on the GPU machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, table  # noqa: E402
from trainables.loop import to_input  # noqa: E402

SHAPE = (1, 28, 28)
N_TRAIN = 55_000
BATCH = 128


def random_images(n: int = N_TRAIN, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST-sized stand-in: uint8 images (n, 1, 28, 28) and int64 labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8), rng.integers(0, 10, size=n)


def make_mlp(device: torch.device, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The reference 784-100-200-10 MLP and Adam (fused on CUDA, as valley's loop makes it)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 200), nn.ReLU(),
                          nn.Linear(200, 10)).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, **fused)


def step(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
         total: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(model(xb).float(), yb)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    total += loss.detach() * len(yb)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ValleyPath:
    """uint8 tensors resident on the device, randperm batches, standardised per batch (as fit does)."""

    label = "valley: uint8 on device, randperm, per-batch standardise"

    def __init__(self, x: np.ndarray, y: np.ndarray, device: torch.device, mean: float, std: float) -> None:
        self.x = torch.from_numpy(x).to(device)  # (N, 1, 28, 28) uint8
        self.y = torch.from_numpy(y).to(device)
        self.mean, self.std, self.device = mean, std, device
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.data_bytes = self.x.nbytes + self.y.nbytes

    def epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        total = torch.zeros((), device=self.device)
        for idx in torch.randperm(len(self.x), device=self.device, generator=self.generator).split(BATCH):
            step(model, optimizer, to_input(self.x[idx], self.mean, self.std), self.y[idx], total)
        return total.item() / len(self.x)


class PerSample(torch.utils.data.Dataset):
    """One image at a time, converted and normalised in ``__getitem__`` (torchvision's way)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, mean: float, std: float) -> None:
        self.x, self.y, self.mean, self.std = x, y, mean, std

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.x[i]).float().div_(255.0)  # (1, 28, 28), like ToTensor
        return (image - self.mean) / self.std, int(self.y[i])  # like Normalize


class LoaderPath:
    """A DataLoader in host memory, each batch copied to the device."""

    def __init__(self, kind: str, x: np.ndarray, y: np.ndarray, device: torch.device, mean: float,
                 std: float, workers: int = 0) -> None:
        pin = device.type == "cuda"
        if kind == "tensor":
            floats = (torch.from_numpy(x).float().div_(255.0) - mean) / std  # standardised once, float32
            dataset: torch.utils.data.Dataset = torch.utils.data.TensorDataset(floats, torch.from_numpy(y))
            self.data_bytes = floats.nbytes + y.nbytes
        else:
            dataset = PerSample(x, y, mean, std)
            self.data_bytes = x.nbytes + y.nbytes
        self.label = f"DataLoader({'TensorDataset, float32' if kind == 'tensor' else 'per-sample dataset'}, " \
                     f"num_workers={workers}{', pin_memory' if pin else ''})"
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=BATCH, shuffle=True, num_workers=workers, pin_memory=pin,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
        self.device = device

    def epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
        total = torch.zeros((), device=self.device)
        for xb, yb in self.loader:
            step(model, optimizer, xb.to(self.device, non_blocking=True),
                 yb.to(self.device, non_blocking=True), total)
        return total.item() / len(self.loader.dataset)


def time_epochs(path: ValleyPath | LoaderPath, device: torch.device, epochs: int) -> list[float]:
    """Seconds per training epoch, after one warm-up epoch (lazy init, DataLoader workers, caches)."""
    model, optimizer = make_mlp(device)
    times = []
    for i in range(epochs + 1):
        sync(device)
        started = time.perf_counter()
        loss = path.epoch(model, optimizer)
        sync(device)
        if i:
            times.append(time.perf_counter() - started)
        if not np.isfinite(loss):
            raise RuntimeError(f"{path.label}: loss {loss} is not finite")
    return times


def measure(device: torch.device, epochs: int, n: int = N_TRAIN, workers: tuple[int, ...] = (0, 2),
            log: Callable[[str], None] = print) -> list[dict[str, object]]:
    """One row per data path; ``ratio`` is valley's epoch time over that row's (lower is better for valley)."""
    x, y = random_images(n)
    sample = x[:10_000].astype(np.float32) / 255.0
    mean, std = float(sample.mean()), float(sample.std())
    paths: list[Callable[[], ValleyPath | LoaderPath]] = [lambda: ValleyPath(x, y, device, mean, std)]
    paths.append(lambda: LoaderPath("tensor", x, y, device, mean, std, 0))
    paths += [lambda w=w: LoaderPath("sample", x, y, device, mean, std, w) for w in workers]
    rows = []
    for make in paths:
        path = make()
        times = time_epochs(path, device, epochs)
        rows.append({"data path": path.label, "epoch s": statistics.median(times),
                     "spread s": max(times) - min(times), "data MB": path.data_bytes / 2**20})
        log(f"  {path.label}: {rows[-1]['epoch s']:.3f} s/epoch")
        del path
    valley = rows[0]["epoch s"]
    for row in rows:
        row["valley / this"] = valley / row["epoch s"]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path (median shown)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1, as a 1-CPU valley trial under Tune runs)")
    parser.add_argument("--n", type=int, default=N_TRAIN, help="training images")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine()}; device {device}, {args.threads} torch thread(s), {args.n:,} images, "
          f"batch {BATCH}", flush=True)
    rows = measure(device, args.epochs, args.n, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(table(rows, ["data path", "epoch s", "spread s", "data MB", "valley / this"]))
    print("valley / this: valley's epoch time over this path's (goal on a GPU: <= 0.5 against DataLoaders)")


if __name__ == "__main__":
    main()
