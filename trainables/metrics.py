"""Metrics of the tell-the-time task on the 720-minute dial, for torch tensors and numpy arrays.

The common-sense difference (CSD) is the reference's: with t = hour * 60 + minute,
``d = |pred - true|; csd = min(d, 720 - d)``, so 11:55 against 12:05 is 10 minutes, not 710.
Both arguments are first wrapped modulo 720 (a no-op for valid integer labels), so a real
prediction of -5.0 reads as 715.0 (11:55).
"""
from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

MINUTES = 720  # minutes on a 12-hour dial
CSD_METRICS = ("csd", "csd_median", "csd_p90", "exact_acc", "hour_acc", "minute_acc")  # csd_summary's keys

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)


def to_minutes(hour: ArrayT, minute: ArrayT) -> ArrayT:
    """Minute of the 12-hour dial, hour * 60 + minute (hour 0-11, minute 0-59)."""
    return hour * 60 + minute


def csd(pred_minutes: ArrayT, true_minutes: ArrayT) -> ArrayT:
    """Element-wise common-sense difference in minutes, 0..360; a tensor if either input is one."""
    pred, true = _pair(pred_minutes, true_minutes)
    if isinstance(pred, torch.Tensor):
        d = (pred % MINUTES - true % MINUTES).abs()
        return torch.minimum(d, MINUTES - d)
    d = np.abs(pred % MINUTES - true % MINUTES)
    return np.minimum(d, MINUTES - d)


def csd_summary(pred_minutes: ArrayT, true_minutes: ArrayT) -> dict[str, float]:
    """Mean, median and 90th percentile CSD (minutes), exact, hour and minute accuracy (fractions).

    The accuracies read the prediction rounded to the nearest minute (half up) and wrapped to
    0..719, so 719.6 counts as 0:00.
    """
    pred, true = _pair(pred_minutes, true_minutes)
    pred = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.float64)
    true = np.asarray(true.detach().cpu() if isinstance(true, torch.Tensor) else true, dtype=np.float64)
    if pred.size == 0:
        raise ValueError("csd_summary needs at least one prediction, got 0; pass a non-empty batch")
    dist = csd(pred, true)
    read = np.floor(pred + 0.5).astype(np.int64) % MINUTES
    true = np.floor(true + 0.5).astype(np.int64) % MINUTES  # read as the prediction is (359.7 is 6:00)
    return {
        "csd": float(dist.mean()),
        "csd_median": float(np.median(dist)),
        "csd_p90": float(np.percentile(dist, 90)),
        "exact_acc": float((read == true).mean()),
        "hour_acc": float((read // 60 == true // 60).mean()),
        "minute_acc": float((read % 60 == true % 60).mean()),
    }


def accuracy(pred_class: ArrayT, true_class: ArrayT) -> float:
    """Fraction of equal classes; ``pred_class`` may also be logits (..., C), read by argmax."""
    pred, true = _pair_any(pred_class, true_class)
    if pred.ndim == true.ndim + 1:
        pred = pred.argmax(-1)
    if pred.shape != true.shape:
        raise ValueError(f"accuracy needs predictions shaped like the labels (or logits with one more "
                         f"axis), got {tuple(pred.shape)} and {tuple(true.shape)}")
    if len(true.reshape(-1)) == 0:
        raise ValueError("accuracy needs at least one prediction, got 0; pass a non-empty batch")
    return float((pred == true).float().mean() if isinstance(pred, torch.Tensor) else (pred == true).mean())


def _pair(pred: ArrayT, true: ArrayT) -> tuple[ArrayT, ArrayT]:
    pred, true = _pair_any(pred, true)
    if pred.shape != true.shape:
        raise ValueError(f"predictions and labels must have the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(true.shape)}; pass (N,) minutes for both")
    return pred, true


def _pair_any(pred: ArrayT, true: ArrayT) -> tuple[ArrayT, ArrayT]:
    """Both as tensors (on ``pred``'s device) if either is one, else both as numpy arrays; unsigned
    integers as int64, whose differences do not wrap (uint16 0 against 719 read 1439 minutes apart)."""
    if isinstance(pred, torch.Tensor) or isinstance(true, torch.Tensor):
        device = pred.device if isinstance(pred, torch.Tensor) else true.device
        pred, true = (torch.as_tensor(x, device=device) for x in (pred, true))
        return tuple(x if x.dtype.is_signed else x.long() for x in (pred, true))  # type: ignore[return-value]
    return tuple(x.astype(np.int64) if x.dtype.kind in "ub" else x  # type: ignore[return-value]
                 for x in (np.asarray(pred), np.asarray(true)))
