"""Every GPU figure in one prepared run: clock quality, VGG16 throughput, data path, packed trials.

    python benchmarks/gpu.py                  # on the GPU machine: one table per part, a summary last
    python benchmarks/gpu.py --smoke          # tiny sizes on the CPU (also what runs without CUDA)
    python benchmarks/gpu.py --parts vgg16    # some parts only: clocks vgg16 datapath parallel

Imports only torch, numpy, Pillow and valley's ``trainables`` (no Ray, Optuna or plotly: the GPU
image has torch, torchvision and pandas). Parts, most important first, each timed and guarded so
that one failure or a time-out still leaves the figures before it:

1. ``clocks``: the clock quality goal (``benchmarks/clock_quality.py``): ResNet-18 with
   (class, class) heads on 18,000 synthetic 150x150 clocks, up to 60 epochs, default and hard
   presets (``--backbone vgg16_bn --clock-epochs 30`` for VGG16-BN).
2. ``vgg16``: the reference's clock model (VGG16, all but the last two convolutions frozen,
   (class, class) heads, 150x150, batch 128, x15 fixed augmentation) trained by valley's loop
   end to end (augmentation, evaluation, reporting) against a bare training step of the same
   model on resident random inputs (goal: valley >= 0.8 x the bare step's images per second).
3. ``datapath``: one MLP epoch (784-100-200-10, 55,000 Fashion-MNIST-sized images, batch 128)
   with the data resident on the GPU against DataLoader loops (goal: <= 0.5 x the fastest
   DataLoader's), and ``trainables.loop.train``'s reported ``epoch_s`` in fp32 and bf16.
4. ``parallel``: 8 MLP trainings in parallel processes on the one GPU against one alone, timed
   from a barrier after every process has warmed up (goal: throughput >= 6 x one's).
5. ``smallstep``: the same MLP epoch eager, as one CUDA graph per step and under
   ``torch.compile(mode="reduce-overhead")``, first epochs (capture, compilation) counted apart,
   against the fastest DataLoader (``benchmarks/smallstep.py``; goal: <= 0.5 x).
6. ``compile``: the clock backbones' bare training step (ResNet-18 and VGG16-BN from scratch,
   (class, class) heads, 150x150, batch 128, bf16) eager against ``torch.compile``, compilation
   counted: images/s and the steps it takes to repay the compile time.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.clock_quality import clocks, quality, setting  # noqa: E402
from benchmarks.common import machine, table  # noqa: E402
from benchmarks.datapath import BATCH, measure, random_images, sync  # noqa: E402

PARTS = ("clocks", "vgg16", "datapath", "parallel", "smallstep", "compile")
N_VAL, N_TEST = 5_000, 10_000


def random_splits(n_train: int, seed: int = 0) -> Any:
    """A Fashion-MNIST-shaped :class:`trainables.data.Splits` of random uint8 images."""
    from trainables.data import make_splits

    x, y = random_images(n_train + N_VAL + N_TEST, seed)
    return make_splits("random", x[:n_train + N_VAL], y[:n_train + N_VAL], x[n_train + N_VAL:],
                       y[n_train + N_VAL:], N_VAL, 10)


def mlp_config(device: str, epochs: int, precision: str = "auto") -> dict[str, Any]:
    return {"family": "mlp", "dataset": "random", "hidden": [100, 200], "batch_size": BATCH, "lr": 1e-3,
            "max_epochs": epochs, "device": device, "precision": precision}


# ----------------------------------------------------------------------------- 1. clock quality

def part_clocks(args: argparse.Namespace, cuda: bool, summary: list[dict[str, Any]]) -> None:
    size, per_minute, backbone = setting(cuda)
    backbone = args.backbone or backbone
    if not cuda:
        size, per_minute, args.clock_epochs = 32, 5, 1
    rows = []
    for preset in args.presets:
        data, seconds = clocks(size, per_minute, preset)
        print(f"  {720 * per_minute:,} {preset} clocks of {size}x{size} made and split in {seconds:.1f} s",
              file=sys.stderr, flush=True)
        rows.append(quality(data, preset, {"backbone": backbone, "encoding": "class_class",
                                           "max_epochs": args.clock_epochs}))
        print(f"  {preset}: test CSD {rows[-1]['test CSD min']:.3f} min", file=sys.stderr, flush=True)
    print(f"clock quality: {backbone}, class_class, {720 * per_minute:,} clocks of {size}x{size}, "
          f"up to {args.clock_epochs} epochs")
    print(table(rows), flush=True)
    for row in rows:
        default = row["preset"] == "default"
        summary.append({"goal": f"clock test CSD, {row['preset']} preset, {backbone} (min)",
                        "measured": row["test CSD min"], "target": "<= 0.1" if default else "reported",
                        "met": row["test CSD min"] <= 0.1 if default else "-"})


# ----------------------------------------------------------------------------- 2. VGG16 throughput

def vgg_config(device: str, epochs: int, expand: int) -> dict[str, Any]:
    """The reference's clock model; random weights frozen as ImageNet ones would be (no download here)."""
    return {"family": "clock", "dataset": "clocks", "backbone": "vgg16", "pretrained": False,
            "trainable_convs": 2, "encoding": "class_class", "minute_hidden": 256, "augment": "expand",
            "expand": expand, "max_epochs": epochs, "device": device, "early_stop": 0}


def bare_steps(config: dict[str, Any], data: Any, device: torch.device, steps: int,
               compile_mode: str | None = None) -> float:
    """Images per second of forward, loss, backward and fused Adam on one resident batch, bf16 on CUDA;
    with ``compile_mode`` the model runs under ``torch.compile`` (compiled in the warm-up steps)."""
    from trainables import clock
    from trainables.loop import autocast, make_optimizer, pick_precision

    cfg = clock.Config.from_dict(config)
    torch.backends.cudnn.benchmark = True
    model = clock.build_model(cfg, data).to(device).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad], device)
    if compile_mode:
        model = torch.compile(model, mode=compile_mode)
    task, precision = clock.make_task(cfg), pick_precision("auto", device, convolutional=True)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(BATCH, *data.input_shape, device=device, generator=generator)
    y = torch.stack([torch.randint(0, 12, (BATCH,), device=device, generator=generator),
                     torch.randint(0, 60, (BATCH,), device=device, generator=generator)], dim=1)

    def run(n: int) -> None:
        for _ in range(n):
            with autocast(precision, device):
                loss = task.loss(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    run(max(3, steps // 5))  # cudnn autotuning, allocator
    sync(device)
    started = time.perf_counter()
    run(steps)
    sync(device)
    return steps * BATCH / (time.perf_counter() - started)


def part_vgg16(args: argparse.Namespace, cuda: bool, summary: list[dict[str, Any]]) -> None:
    from trainables.loop import train
    from trainables.report import LocalReporter

    device = torch.device("cuda" if cuda else "cpu")
    size, per_minute, expand, steps = (150, 25, 15, 60) if cuda else (32, 5, 1, 2)
    data, _ = clocks(size, per_minute, "default")
    config = vgg_config(device.type, args.vgg_epochs, expand)
    bare = bare_steps(config, data, device, steps)
    print(f"  bare VGG16 step: {bare:,.0f} images/s", file=sys.stderr, flush=True)
    reporter = LocalReporter()
    train(config, data=data, reporter=reporter)
    last = reporter.history[-1]  # the first epoch carries cudnn autotuning
    images = len(data.x_train) * expand
    valley = images / last["epoch_s"]
    rows = [{"loop": "bare step, resident random batch", "images/s": bare, "vs bare": 1.0},
            {"loop": f"valley train(): epoch {last['epoch']} of {images:,} augmented images + val/test eval",
             "images/s": valley, "vs bare": valley / bare, "epoch s": last["epoch_s"],
             "precision": last["precision"]}]
    print(f"VGG16 clock model (trainable convs 2, class_class, minute head 256), {size}x{size}, batch {BATCH}")
    print(table(rows, ["loop", "images/s", "vs bare", "epoch s", "precision"]), flush=True)
    summary.append({"goal": "VGG16 clock trainable, images/s end to end vs bare step", "measured": valley / bare,
                    "target": ">= 0.8", "met": valley / bare >= 0.8})
    summary.append({"goal": "VGG16 bare step images/s (anchor ~16,000 on an H200)", "measured": bare,
                    "target": "reported", "met": "-"})


# ----------------------------------------------------------------------------- 3. data path

def fit_epoch(device: str, n_train: int, epochs: int, precision: str) -> dict[str, Any]:
    """valley's own loop: median reported ``epoch_s`` after the first epoch."""
    from trainables.loop import train
    from trainables.report import LocalReporter

    reporter = LocalReporter()
    train(mlp_config(device, epochs + 1, precision), data=random_splits(n_train), reporter=reporter)
    times = [h["epoch_s"] for h in reporter.history[1:]]
    return {"data path": f"trainables.loop.train, {reporter.history[-1]['precision']} (epoch_s: train + "
                         f"val/test eval), {reporter.history[-1]['device']}",
            "epoch s": statistics.median(times), "spread s": max(times) - min(times)}


def part_datapath(args: argparse.Namespace, cuda: bool, summary: list[dict[str, Any]]) -> None:
    device = "cuda" if cuda else "cpu"
    n_train = 55_000 if cuda else 2_000
    rows = measure(torch.device(device), args.epochs, n_train, tuple(args.workers),
                   lambda s: print(s, file=sys.stderr, flush=True))
    for precision in ("fp32", "bf16") if cuda else ("fp32",):
        fit = fit_epoch(device, n_train, args.epochs, precision)
        fit["valley / this"] = rows[0]["epoch s"] / fit["epoch s"]
        rows.append(fit)
    print(f"MLP 784-100-200-10, {n_train:,} images, batch {BATCH}, {device}")
    print(table(rows, ["data path", "epoch s", "spread s", "data MB", "valley / this"]), flush=True)
    loaders = [r["epoch s"] for r in rows if str(r["data path"]).startswith("DataLoader")]
    ratio = rows[0]["epoch s"] / min(loaders)
    summary.append({"goal": "MLP epoch, data on device vs fastest DataLoader", "measured": ratio,
                    "target": "<= 0.5", "met": ratio <= 0.5})


# ----------------------------------------------------------------------------- 4. packed trials

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
    try:
        barrier.wait(timeout=timeout_s)
        started = time.perf_counter()
        done = [results.get(timeout=timeout_s) for _ in procs]
        wall = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return {"wall s": wall, "mean per training s": float(np.mean([d[1] for d in done])),
            "peak MB per process": float(np.max([d[2] for d in done]))}


def part_parallel(args: argparse.Namespace, cuda: bool, summary: list[dict[str, Any]]) -> None:
    device = "cuda" if cuda else "cpu"
    n_train, processes, epochs = (55_000, args.parallel, args.parallel_epochs) if cuda else (2_000, 2, 1)
    one = parallel(device, 1, n_train, epochs, timeout_s=300)
    print(f"  1 training alone: {one['wall s']:.2f} s", file=sys.stderr, flush=True)
    many = parallel(device, processes, n_train, epochs, timeout_s=300)
    ratio = processes * one["wall s"] / many["wall s"]
    print(f"{processes} MLP trainings ({epochs} epochs each) in parallel processes on one {device}")
    print(table([{"trainings": 1, **one, "throughput vs one": 1.0},
                 {"trainings": processes, **many, "throughput vs one": ratio}],
                ["trainings", "wall s", "mean per training s", "peak MB per process", "throughput vs one"]),
          flush=True)
    summary.append({"goal": f"throughput of {processes} packed MLP trainings vs one", "measured": ratio,
                    "target": ">= 6", "met": ratio >= 6})


# ----------------------------------------------------------------------------- 5. small-model step

def part_smallstep(args: argparse.Namespace, cuda: bool, summary: list[dict[str, Any]]) -> None:
    from benchmarks.smallstep import COLUMNS
    from benchmarks.smallstep import measure as measure_steps

    device = torch.device("cuda" if cuda else "cpu")
    n_train = 55_000 if cuda else 2_000
    rows = measure_steps(device, args.epochs, n_train, tuple(args.workers),
                         lambda s: print(s, file=sys.stderr, flush=True))
    print(f"MLP 784-100-200-10, {n_train:,} images resident, batch {BATCH}, {device}: eager, CUDA graphs, compiled")
    print(table(rows, COLUMNS), flush=True)
    best = min((r for r in rows if not r["path"].startswith("DataLoader")), key=lambda r: r["epoch s"])
    summary.append({"goal": f"MLP epoch, best step ({best['path']}) vs fastest DataLoader",
                    "measured": best["vs fastest DataLoader"], "target": "<= 0.5",
                    "met": best["vs fastest DataLoader"] <= 0.5})


# ----------------------------------------------------------------------------- 6. compiled backbones

def part_compile(args: argparse.Namespace, cuda: bool, summary: list[dict[str, Any]]) -> None:
    device = torch.device("cuda" if cuda else "cpu")
    size, steps = (150, 60) if cuda else (32, 2)
    data, _ = clocks(size, 1, "default")  # bare_steps trains on one random batch: only the shape is used
    rows = []
    for backbone in args.compile_backbones:
        config = {"family": "clock", "dataset": "clocks", "backbone": backbone, "pretrained": False,
                  "encoding": "class_class", "max_epochs": 1, "device": device.type}
        measured = []  # eager, then compiled, as far as they ran
        for mode in (None, "default"):
            if mode:
                from torch import _dynamo

                _dynamo.reset()  # a cold compile for each backbone, counted in its set-up
            sync(device)
            started = time.perf_counter()
            try:
                rate = bare_steps(config, data, device, steps, compile_mode=mode)
            except Exception as err:  # noqa: BLE001 - one failed compile must not lose the other rows
                print(f"  {backbone} {mode or 'eager'}: failed ({type(err).__name__}: {str(err)[:300]})",
                      file=sys.stderr, flush=True)
                break
            total = time.perf_counter() - started  # build, warm-up (compilation) and the timed steps
            measured.append({"backbone": backbone, "step": f"torch.compile(mode={mode!r})" if mode else "eager",
                             "images/s": rate, "set-up + warm-up s": total - steps * BATCH / rate})
            print(f"  {backbone} {measured[-1]['step']}: {rate:,.0f} images/s", file=sys.stderr, flush=True)
        rows += measured
        if len(measured) < 2:
            continue
        eager, fast = measured
        fast["vs eager"] = fast["images/s"] / eager["images/s"]
        saved_per_step = BATCH / eager["images/s"] - BATCH / fast["images/s"]
        extra = fast["set-up + warm-up s"] - eager["set-up + warm-up s"]
        fast["steps to repay compile"] = extra / saved_per_step if saved_per_step > 0 else float("nan")
        summary.append({"goal": f"{backbone} step, torch.compile vs eager (images/s)", "measured": fast["vs eager"],
                        "target": "reported", "met": "-"})
    print(f"clock backbones from scratch, class_class, {size}x{size}, batch {BATCH}, bare step, {device}")
    print(table(rows, ["backbone", "step", "images/s", "vs eager", "set-up + warm-up s", "steps to repay compile"]),
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (what runs without CUDA)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--clock-epochs", type=int, default=60, help="clock quality: epochs per preset")
    parser.add_argument("--backbone", help="clock quality: backbone (resnet18 on CUDA, small_cnn on a CPU)")
    parser.add_argument("--presets", nargs="+", default=["default", "hard"], help="clock quality: presets")
    parser.add_argument("--vgg-epochs", type=int, default=2, help="VGG16: epochs (the last one is timed)")
    parser.add_argument("--epochs", type=int, default=3, help="data path: timed epochs per path")
    parser.add_argument("--parallel", type=int, default=8, help="trainings sharing the GPU")
    parser.add_argument("--parallel-epochs", type=int, default=5, help="epochs per parallel training")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 4], help="DataLoader workers to try")
    parser.add_argument("--compile-backbones", nargs="+", default=["resnet18", "vgg16_bn"],
                        help="compile: clock backbones to time eager and compiled")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda:
        print("no CUDA device: running the tiny CPU smoke version", flush=True)
        args.epochs, args.workers, args.vgg_epochs, args.compile_backbones = 1, [0], 1, ["small_cnn"]
        torch.set_num_threads(1)  # as a 1-CPU trial; 2 spinning OpenMP threads on a busy 2-core box crawl
    started = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    parts: dict[str, Callable[[argparse.Namespace, bool, list[dict[str, Any]]], None]] = {
        "clocks": part_clocks, "vgg16": part_vgg16, "datapath": part_datapath, "parallel": part_parallel,
        "smallstep": part_smallstep, "compile": part_compile}
    summary: list[dict[str, Any]] = []
    failed = []
    for name in args.parts:
        part_started = time.perf_counter()
        print(f"\n## {name}", flush=True)
        try:
            parts[name](args, cuda, summary)
        except Exception:  # noqa: BLE001 - the next part's figures are still worth having
            failed.append(name)
            traceback.print_exc()
        print(f"({name}: {time.perf_counter() - part_started:.0f} s)", flush=True)
    print(f"\n## summary ({machine()})")
    print(table(summary, ["goal", "measured", "target", "met"]))
    if failed:
        print(f"failed parts: {', '.join(failed)}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
