"""Search strategies replayed on a recorded table of learning curves, without training.

A curve table has one row per (config, epoch) with at least ``config_id``, ``arch``,
``n_params``, ``epoch``, ``val_loss``, ``val_acc``, ``test_acc`` (of the best checkpoint so far,
as valley reports it) and ``val_loss_se`` (standard error of the mean validation loss). Every
strategy returns a :class:`Replay`: the trial-epochs it spent, its best-so-far trace and the
config it would pick (lowest validation loss seen), with that config's test accuracy.

ASHA is Ray Tune's ``AsyncHyperBandScheduler`` rule (one bracket, rungs at
``grace * rf**k``, stop a trial whose metric is worse than the ``1 - 1/rf`` quantile of those
already recorded at that rung), run asynchronously with ``concurrency`` trials at a time on a
simulated clock where an epoch takes its recorded ``epoch_s``.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

REQUIRED = ("config_id", "arch", "n_params", "epoch", "val_loss", "val_acc", "test_acc", "val_loss_se")


@dataclasses.dataclass
class Curve:
    """One config's recorded epochs (index 0 is epoch 1)."""

    config_id: int
    arch: int
    n_params: int
    val_loss: np.ndarray
    val_acc: np.ndarray
    test_acc: np.ndarray  # of the best checkpoint so far
    val_loss_se: np.ndarray
    epoch_s: float  # simulated seconds per epoch

    @property
    def epochs(self) -> int:
        return len(self.val_loss)

    def best_at(self, epochs: int) -> tuple[float, int]:
        """(lowest val loss, its epoch index) within the first ``epochs`` epochs."""
        i = int(np.argmin(self.val_loss[:epochs]))
        return float(self.val_loss[i]), i


def curves_from_table(table: pd.DataFrame) -> dict[int, Curve]:
    """Split a curve table into one :class:`Curve` per ``config_id``."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"a curve table needs columns {', '.join(REQUIRED)}; missing {', '.join(missing)}")
    curves = {}
    for cid, rows in table.sort_values(["config_id", "epoch"]).groupby("config_id", sort=True):
        epoch_s = float(rows["epoch_s"].median()) if "epoch_s" in rows else 1.0
        curves[int(cid)] = Curve(int(cid), int(rows["arch"].iloc[0]), int(rows["n_params"].iloc[0]),
                                 rows["val_loss"].to_numpy(float), rows["val_acc"].to_numpy(float),
                                 rows["test_acc"].to_numpy(float), rows["val_loss_se"].to_numpy(float),
                                 epoch_s if math.isfinite(epoch_s) and epoch_s > 0 else 1.0)
    return curves


@dataclasses.dataclass
class Replay:
    """What one strategy spent and found."""

    strategy: str
    epochs_spent: int
    seconds_spent: float  # recorded epoch times of the epochs spent: compute, not just epochs
    pick: int  # config_id of the chosen config
    pick_epochs: int  # epochs that config ran
    val_loss: float  # its lowest validation loss
    val_acc: float  # its validation accuracy at that epoch
    test_acc: float  # test accuracy of its best checkpoint
    trace: list[tuple[int, float, float]]  # (epochs spent, best val loss so far, its test acc)
    ran: dict[int, int]  # config_id -> epochs run


class _Ledger:
    """Epochs spent, in the order they finished, and the incumbent after each."""

    def __init__(self, name: str, curves: dict[int, Curve]) -> None:
        self.name, self.curves = name, curves
        self.ran: dict[int, int] = {}
        self.spent = 0
        self.seconds = 0.0
        self.best: tuple[float, int] | None = None  # (val loss, config_id)
        self.trace: list[tuple[int, float, float]] = []

    def epoch_done(self, cid: int, epoch: int) -> None:
        """Config ``cid`` finished its ``epoch``-th epoch (1-based)."""
        curve = self.curves[cid]
        self.ran[cid] = max(self.ran.get(cid, 0), epoch)
        self.spent += 1
        self.seconds += curve.epoch_s
        loss = float(curve.val_loss[epoch - 1])
        if self.best is None or loss < self.best[0]:
            self.best = (loss, cid)
        best_curve = self.curves[self.best[1]]
        self.trace.append((self.spent, self.best[0], float(best_curve.test_acc[self.ran[self.best[1]] - 1])))

    def result(self) -> Replay:
        if self.best is None:
            raise ValueError(f"{self.name}: no epoch was run")
        cid = self.best[1]
        curve, epochs = self.curves[cid], self.ran[cid]
        loss, i = curve.best_at(epochs)
        return Replay(self.name, self.spent, self.seconds, cid, epochs, loss, float(curve.val_acc[i]),
                      float(curve.test_acc[epochs - 1]), self.trace, dict(self.ran))


def run_full(curves: dict[int, Curve], order: Sequence[int], max_t: int, name: str = "grid",
             ledger: _Ledger | None = None) -> Replay:
    """Every config in ``order`` for ``max_t`` epochs (grid search, or random search on a sample)."""
    ledger = ledger or _Ledger(name, curves)
    for cid in order:
        for epoch in range(1, min(max_t, curves[cid].epochs) + 1):
            ledger.epoch_done(cid, epoch)
    return ledger.result()


def asha_rungs(max_t: int, grace: int, rf: float) -> list[float]:
    """Tune's rung milestones for one bracket, ascending: ``grace * rf**k`` below ``max_t``."""
    count = int(math.log(max_t / grace) / math.log(rf) + 1)
    return [grace * rf ** k for k in range(count)]


def run_asha(curves: dict[int, Curve], order: Sequence[int], max_t: int, grace: int = 1, rf: float = 3.0,
             concurrency: int = 2, name: str = "asha", ledger: _Ledger | None = None) -> Replay:
    """Asynchronous successive halving over ``order`` (the searcher's order), minimising val loss."""
    ledger = ledger or _Ledger(name, curves)
    rungs = {m: {} for m in asha_rungs(max_t, grace, rf)}  # milestone -> {config_id: reward}
    pending = list(order)
    running: list[tuple[float, int, int, int]] = []  # (finish time, tie-break, config_id, epoch)
    tick = 0

    def start(now: float) -> None:
        nonlocal tick
        while pending and len(running) < concurrency:
            cid = pending.pop(0)
            heapq.heappush(running, (now + curves[cid].epoch_s, tick, cid, 1))
            tick += 1

    start(0.0)
    while running:
        now, _, cid, epoch = heapq.heappop(running)
        ledger.epoch_done(cid, epoch)
        curve = curves[cid]
        stop = epoch >= min(max_t, curve.epochs)
        if not stop:
            reward = -float(curve.val_loss[epoch - 1])  # Tune negates a metric to minimise
            for milestone in sorted(rungs, reverse=True):  # the highest rung reached, as Tune does
                recorded = rungs[milestone]
                if epoch < milestone or cid in recorded:
                    continue
                if recorded and reward < np.nanpercentile(list(recorded.values()), (1 - 1 / rf) * 100):
                    stop = True
                recorded[cid] = reward
                break
        if stop:
            start(now)
        else:
            heapq.heappush(running, (now + curve.epoch_s, tick, cid, epoch + 1))
            tick += 1
    return ledger.result()


def valley_band(curves: dict[int, Curve], ran: dict[int, int]) -> tuple[list[int], int]:
    """Architectures within one standard error of the best (by lowest val loss), and the smallest.

    The standard error is the best trial's, at its best epoch: the spread of its per-sample
    validation losses over the square root of the validation set size.
    """
    best_by_arch: dict[int, tuple[float, float, int]] = {}  # arch -> (loss, se, n_params)
    for cid, epochs in ran.items():
        curve = curves[cid]
        loss, i = curve.best_at(epochs)
        if curve.arch not in best_by_arch or loss < best_by_arch[curve.arch][0]:
            best_by_arch[curve.arch] = (loss, float(curve.val_loss_se[i]), curve.n_params)
    best_loss, best_se, _ = min(best_by_arch.values())
    band = sorted(a for a, (loss, _, _) in best_by_arch.items() if loss <= best_loss + best_se)
    smallest = min(band, key=lambda a: (best_by_arch[a][2], a))
    return band, smallest


def run_staged(curves: dict[int, Curve], rough: dict[int, int], rng: np.random.Generator, rough_epochs: int,
               max_t: int, fine: str = "band", grace: int = 1, rf: float = 3.0,
               concurrency: int = 2) -> tuple[Replay, list[int]]:
    """Rough (one config per architecture, ASHA, ``rough_epochs``) then fine (ASHA, ``max_t``).

    ``rough`` maps each architecture to its rough-stage config_id. The fine stage runs every
    config of the architectures in the valley band (``fine='band'``) or of the smallest
    architecture in it (``fine='smallest'``), rough configs included (retrained: a curve does
    not depend on ``max_epochs``, so one ledger serves both stages). Returns the replay and the
    fine stage's architectures.
    """
    if fine not in ("band", "smallest"):
        raise ValueError(f"fine must be 'band' or 'smallest', got {fine!r}")
    ledger = _Ledger(f"staged ({fine})", curves)
    rough_order = [rough[a] for a in rng.permutation(sorted(rough))]
    run_asha(curves, rough_order, rough_epochs, grace, rf, concurrency, ledger=ledger)
    band, smallest = valley_band(curves, dict(ledger.ran))
    archs = band if fine == "band" else [smallest]
    fine_ids = [cid for cid, c in curves.items() if c.arch in archs]
    run_asha(curves, [fine_ids[i] for i in rng.permutation(len(fine_ids))], max_t, grace, rf,
             concurrency, ledger=ledger)
    return ledger.result(), archs


def summarise(replays: Sequence[Replay], grid: Replay, grid_epochs: int) -> dict[str, float]:
    """Mean and spread over seeds of one strategy against the grid's pick."""
    gaps = np.array([(r.test_acc - grid.test_acc) * 100 for r in replays])
    val_gaps = np.array([(r.val_acc - grid.val_acc) * 100 for r in replays])
    spent = np.array([r.epochs_spent / grid_epochs * 100 for r in replays])
    seconds = np.array([r.seconds_spent / grid.seconds_spent * 100 for r in replays])
    return {"test acc %": float(np.mean([r.test_acc for r in replays]) * 100),
            "test gap pp": float(gaps.mean()), "test gap sd": float(gaps.std()),
            "worst gap pp": float(gaps.min()), "val gap pp": float(val_gaps.mean()),
            "budget %": float(spent.mean()), "budget sd": float(spent.std()), "compute %": float(seconds.mean())}
