"""The one training loop every family shares, and the trainable Tune calls.

``train(config, data)`` is the trainable: a plain function of Tune's ``config``
dict. It builds the family's typed config, trains, and reports every epoch the
keys listed in ``trainables.family.REPORTED_KEYS``; every ``checkpoint_every`` epochs, at most every
``checkpoint_s`` seconds and always at the end, with a checkpoint (model, optimiser,
scheduler, epoch, best model so far, its test predictions) so Ray can resume and retry it.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables import get_family
from trainables.config import TrainConfig, resolve_variant
from trainables.data import Splits
from trainables.eager import defer_dynamo, eager_step
from trainables.family import Family, Task
from trainables.report import RayReporter, Reporter, default_reporter, staging

class Diverged(RuntimeError):
    """The loss became NaN or infinite: this configuration fails, the search goes on."""


class FinishedCheckpoint(RuntimeError):
    """A finished trial's slim checkpoint was asked to resume training."""


def checkpoint(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               best_model: dict[str, Any], state: dict[str, Any], test_pred: torch.Tensor | None,
               finished: bool) -> dict[str, Any]:
    """What ``state.pt`` holds: everything training needs to go on, or, once the trial has finished
    (and ``keep_optimizer`` is off), only what a user or a later stage needs (``slim``)."""
    full = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "best_model": best_model, "state": state, "test_pred": test_pred}
    return slim(full) if finished and not cfg.keep_optimizer else full


def slim(saved: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's checkpoint: its best weights and its state (its test predictions are in
    ``predictions.npz`` beside it), nothing else."""
    return {k: saved[k] for k in ("best_model", "state") if k in saved}


def train(config: dict[str, Any], data: Splits | None = None, reporter: Reporter | None = None,
          variants: list[dict[str, Any]] | None = None, family: Family | None = None) -> dict[str, Any] | None:
    """Train one configuration; returns the last report (None inside a Tune trial).

    ``data`` comes from Ray's object store (``tune.with_parameters``); outside Ray
    it is loaded from ``config['dataset']``. ``variants`` resolves a ``variant``
    index or dict (a row of a space's grid) into flat config keys. ``family`` is the
    record the search resolved (so a family registered in the driver alone trains on
    every node); without it, ``config['family']`` is looked up. Tune reports a
    dict that its trainable returns once more, as an extra iteration (the last
    epoch twice in ``result.json``), so under Tune nothing is returned.
    """
    config = resolve_variant(config, variants)
    family = family or get_family(config.get("family", ""))
    cfg = family.make_config(config)
    if data is None:
        from trainables.data import load_dataset

        data = load_dataset(cfg.dataset)
    if cfg.split_seed is not None:
        data = data.resplit(cfg.split_seed)
    reporter = reporter or default_reporter()
    last = fit(cfg, family, data, reporter)
    return None if isinstance(reporter, RayReporter) else last


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_precision(name: str, device: torch.device, convolutional: bool) -> str:
    """``auto``: bf16 autocast for convolutional models on a CUDA device that has it, else fp32.

    Measured on an H200 (benchmarks/README.md): bf16 is what makes VGG16 reach 16,000 images/s,
    but a 784-100-200-10 MLP epoch takes 0.56 s with it against 0.48 s without (the casts cost
    more than the small matrix products save).
    """
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and convolutional and torch.cuda.is_bf16_supported() else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes and losses; weights and optimiser state stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_params(model: nn.Module) -> int:
    """Trainable parameters (frozen backbone layers do not count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """The configured optimiser, eager: it does not import torch's compiler (``trainables.eager``)."""
    defer_dynamo()
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return eager_step(torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return eager_step(optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused))


def make_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> Any:
    """The learning-rate schedule: the reference's plateau rule (per epoch), or one stepped every batch.

    ``onecycle``: up from lr/25 to ``lr`` over the first 30% of the steps, then down to lr/2.5e4
    (torch's OneCycleLR); ``cosine``: a linear warm-up over ``warmup_epochs``, then half a cosine to 0.
    """
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, min_lr=cfg.min_lr)
    total = cfg.max_epochs * steps
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.3)
    warmup = round(cfg.warmup_epochs * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Keras-style kernel regulariser: sum of squared weights of layers, biases and norms excluded."""
    return sum(p.pow(2).sum() for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1)


def to_input(x: torch.Tensor, spec_mean: float, spec_std: float) -> torch.Tensor:
    """uint8 images (B, C, H, W) to standardised floats."""
    return (x.float().div_(255.0) - spec_mean) / spec_std


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, data: Splits,
             batch_size: int = 1024, precision: str = "fp32") -> tuple[dict[str, float], torch.Tensor]:
    """Mean loss and the task's metrics over a whole split, and the per-image predictions."""
    model.eval()
    total, preds = torch.zeros((), device=x.device), []
    for start in range(0, len(x), batch_size):
        with autocast(precision, x.device):
            out = model(to_input(x[start:start + batch_size], data.mean, data.std)).float()
        yb = y[start:start + batch_size]
        total += task.loss(out, yb) * len(yb)
        preds.append(task.predict(out))
    pred = torch.cat(preds)
    return {"loss": total.item() / max(1, len(x)), **task.metrics(pred, y)}, pred


def save_predictions(folder: Path, task: Task, pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     worst: int = 16) -> None:
    """The best checkpoint's test predictions beside it, with the ``worst`` worst-read images.

    ``predictions.npz``: ``pred`` and ``true`` as the task predicts and labels them (clocks:
    minutes on the 720-minute dial, and [hour, minute]), ``error`` per image (clocks: CSD in
    minutes; classes: 0 or 1), ``worst_index`` and ``worst_images`` (uint8, as stored).
    """
    error = task.errors(pred, y)
    order = torch.argsort(error, descending=True, stable=True)[:worst]
    np.savez_compressed(folder / "predictions.npz", pred=pred.cpu().numpy(), true=y.cpu().numpy(),
                        error=error.cpu().numpy(), worst_index=order.cpu().numpy(),
                        worst_images=x[order].cpu().numpy())


def fit(cfg: TrainConfig, family: Family, data: Splits, reporter: Reporter) -> dict[str, Any]:
    """Train ``cfg`` on ``data``, reporting every epoch; resumes from the reporter's checkpoint."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    task = family.make_task(cfg)
    model = family.build_model(cfg, data).to(device)
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    precision = pick_precision(cfg.precision, device, convolutional)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution once
        if convolutional:
            model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if cfg.compile else model  # ``model`` keeps plain state_dict keys
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params, device)
    augment = family.augment
    passes = family.passes(cfg)  # e.g. a fixed x15 augmentation
    steps = passes * math.ceil(len(data.x_train) / cfg.batch_size)  # optimiser steps per epoch
    scheduler = make_schedule(cfg, optimizer, steps)
    n_params = count_params(model)

    state = {"epoch": 0, "best_val_loss": math.inf, "best_epoch": -1, "bad_epochs": 0, "test": {}}
    best_model = copy.deepcopy(model.state_dict())
    test_pred: torch.Tensor | None = None  # the best model's test predictions
    with reporter.restore() as resume_dir:
        if resume_dir is not None and not (Path(resume_dir) / "state.pt").exists():
            raise FinishedCheckpoint("this checkpoint is a finished trial's whose weights were deleted when its "
                                     "search completed (only the best --keep-weights keep theirs); train the "
                                     "configuration again in a new folder, or search with --keep-weights all")
        saved = None if resume_dir is None else torch.load(Path(resume_dir) / "state.pt", map_location=device,
                                                           weights_only=True)
    if saved is not None:
        done = saved["state"]
        if done["epoch"] >= cfg.max_epochs or (cfg.early_stop and done["bad_epochs"] >= cfg.early_stop):
            return {}  # restored after it finished (a killed driver's snapshot still had it running)
        if "optimizer" not in saved:
            raise FinishedCheckpoint("this checkpoint is a finished trial's: it keeps its best weights and "
                                     "predictions, not what training needs to go on; train the configuration "
                                     "again, or set keep_optimizer: true to keep finished trials resumable")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best_model = saved["best_model"]
        state = saved["state"]
        test_pred = saved.get("test_pred")

    x_train, y_train = _tensors(data.x_train, data.y_train, device)
    x_val, y_val = _tensors(data.x_val, data.y_val, device)
    x_test, y_test = _tensors(data.x_test, data.y_test, device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + state["epoch"])
    last: dict[str, Any] = {}
    saved_at = time.perf_counter()  # checkpoints: every checkpoint_every epochs, at most every checkpoint_s
    for epoch in range(state["epoch"], cfg.max_epochs):
        started = time.perf_counter()
        # Batch order, augmentation and dropout depend on (seed, epoch) alone: a trial resumed
        # from a checkpoint (a retry, `valley resume`) trains exactly as one that never stopped.
        generator.manual_seed(cfg.seed * 1_000_003 + epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)
        model.train()
        total = torch.zeros((), device=device)
        for pass_index in range(passes):
            for idx in torch.randperm(len(x_train), device=device, generator=generator).split(cfg.batch_size):
                xb = to_input(x_train[idx], data.mean, data.std)
                if augment is not None:
                    xb = augment(cfg, xb, idx, generator, pass_index)
                yb = y_train[idx]
                with autocast(precision, device):
                    loss = task.loss(forward(xb).float(), yb)
                objective = loss + cfg.l2 * l2_penalty(model) if cfg.l2 else loss
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
                if cfg.schedule != "plateau":
                    scheduler.step()
                total += loss.detach() * len(idx)
        train_loss = total.item() / (len(x_train) * passes)
        if not math.isfinite(train_loss):
            raise Diverged(f"diverged: train loss is {train_loss} at epoch {epoch + 1} "
                           f"(lr={cfg.lr}); lower the learning rate or narrow the space")
        val, _ = evaluate(forward, task, x_val, y_val, data, precision=precision)
        if not math.isfinite(val["loss"]):
            raise Diverged(f"diverged: validation loss is {val['loss']} at epoch {epoch + 1} (lr={cfg.lr})")
        if cfg.schedule == "plateau":
            scheduler.step(val["loss"])
        if val["loss"] < state["best_val_loss"]:
            best_model = copy.deepcopy(model.state_dict())
            test, test_pred = evaluate(forward, task, x_test, y_test, data, precision=precision)
            state.update(best_val_loss=val["loss"], best_epoch=epoch + 1, bad_epochs=0, test=test)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        # epochs in a row at chance level (state saved before this key existed resumes from 0)
        at_chance = family.task.at_chance(val[family.task.headline], data.n_classes)
        state["at_chance"] = state.get("at_chance", 0) + 1 if at_chance else 0
        stop = epoch + 1 == cfg.max_epochs or (cfg.early_stop and state["bad_epochs"] >= cfg.early_stop)
        last = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            **{f"val_{k}": v for k, v in val.items()},
            **{f"test_{k}": v for k, v in state["test"].items()},
            "best_val_loss": state["best_val_loss"],
            "best_epoch": state["best_epoch"],
            "n_params": n_params,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_s": time.perf_counter() - started,
            "device": str(device),
            "precision": precision,
            "early_stopped": bool(stop and epoch + 1 < cfg.max_epochs),
            "chance_epochs": state["at_chance"],
            "stalled": bool(cfg.stall_epochs) and state["at_chance"] >= cfg.stall_epochs,
        }
        due = (epoch + 1) % cfg.checkpoint_every == 0 and time.perf_counter() - saved_at >= cfg.checkpoint_s
        if reporter.wants_checkpoints and (stop or due):
            with staging("checkpoint") as folder:
                torch.save(checkpoint(cfg, model, optimizer, scheduler, best_model, state, test_pred, stop),
                           Path(folder) / "state.pt")
                if test_pred is not None:
                    save_predictions(Path(folder), task, test_pred, x_test, y_test)
                reporter.report(last, folder)
            saved_at = time.perf_counter()
        else:
            reporter.report(last, None)
        if stop:
            break
    return last


def _tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrays from the object store (read-only) as tensors held on the device for the whole trial."""
    x = torch.from_numpy(np.array(x, copy=not x.flags.writeable)).to(device)
    y = torch.from_numpy(np.array(y, copy=not y.flags.writeable)).to(device)
    return x, y
