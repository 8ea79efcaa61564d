"""The shared loop's device settings and checkpoint policy: precision, compile, checkpoint_s, frozen VGG."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from trainables import clock
from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.loop import count_params, make_optimizer, make_schedule, pick_precision, train
from trainables.report import LocalReporter
from test_families import Crash  # a trial killed after an epoch

MLP = {"family": "mlp", "hidden": [16], "device": "cpu"}
ROOT = Path(__file__).resolve().parents[1]


class CountingReporter(LocalReporter):
    """A local reporter that also counts the checkpoints the loop hands it."""

    def __init__(self, checkpoint_dir=None) -> None:
        super().__init__(checkpoint_dir)
        self.saves = 0

    def report(self, metrics, checkpoint_dir) -> None:
        self.saves += checkpoint_dir is not None
        super().report(metrics, checkpoint_dir)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic")


def test_auto_precision_is_bf16_only_for_convolutions_on_cuda():
    cpu = torch.device("cpu")
    assert pick_precision("auto", cpu, convolutional=True) == "fp32"
    assert pick_precision("auto", cpu, convolutional=False) == "fp32"
    assert pick_precision("bf16", cpu, convolutional=False) == "bf16"  # asked for, so given


def learns(history: list[dict]) -> None:
    """The loss falls clearly (to a fifth of the first epoch's) and validation accuracy leaves chance (1/4)."""
    losses = [row["train_loss"] for row in history]
    assert losses[-1] < 0.2 * losses[0], f"the training loss did not fall clearly: {losses}"
    assert history[-1]["val_acc"] >= 0.9, f"validation accuracy stayed near chance: {history[-1]['val_acc']}"


CNN_BF16 = {"family": "cnn", "arch": "cnn_simple", "max_epochs": 8, "lr": 0.02, "batch_size": 32, "precision": "bf16"}


def test_bf16_autocast_trains_and_is_reported(data):
    reporter = LocalReporter()
    train({**CNN_BF16, "device": "cpu"}, data=data, reporter=reporter)
    assert [row["precision"] for row in reporter.history] == ["bf16"] * 8
    learns(reporter.history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the loop's CUDA branch)")
def test_cuda_branch_trains_channels_last_with_bf16_autocast(data):
    reporter = LocalReporter()
    train({**CNN_BF16, "precision": "auto", "device": "cuda"}, data=data, reporter=reporter)
    assert reporter.history[-1]["device"].startswith("cuda") and reporter.history[-1]["precision"] == "bf16"
    learns(reporter.history)


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
        clock.Config.from_dict({"precision": "fp16"})


def test_the_mlp_trains(data):
    reporter = LocalReporter()
    train({**MLP, "max_epochs": 8, "lr": 0.01, "batch_size": 32}, data=data, reporter=reporter)
    learns(reporter.history)


def test_checkpoints_by_time_save_the_last_epoch_only(data, tmp_path):
    hourly = CountingReporter(tmp_path / "a")
    train({**MLP, "max_epochs": 4, "checkpoint_s": 3600}, data=data, reporter=hourly)
    every = CountingReporter(tmp_path / "b")
    train({**MLP, "max_epochs": 4, "checkpoint_s": 0}, data=data, reporter=every)
    assert (hourly.saves, every.saves) == (1, 4)
    assert torch.load(tmp_path / "a" / "state.pt", weights_only=True)["state"]["epoch"] == 4


def test_no_checkpoints_are_written_for_a_reporter_that_drops_them(data):
    reporter = CountingReporter()
    assert not reporter.wants_checkpoints
    train({**MLP, "max_epochs": 2, "checkpoint_s": 0}, data=data, reporter=reporter)
    assert reporter.saves == 0 and len(reporter.history) == 2


def test_compiled_model_checkpoints_with_plain_keys(data, tmp_path):
    """torch.compile wraps the model for speed; checkpoints resume without it."""
    config = {**MLP, "max_epochs": 2, "checkpoint_s": 0}
    with pytest.raises(KeyboardInterrupt):
        train({**config, "compile": True}, data=data, reporter=Crash(tmp_path / "ckpt", at=1))
    second = LocalReporter(tmp_path / "ckpt")
    train(config, data=data, reporter=second)
    assert [row["epoch"] for row in second.history] == [2]


def test_vgg_freezes_all_but_the_last_convolutions_when_asked():
    data = load_dataset("clocks-tiny")
    full = clock.build_model(clock.Config.from_dict({"backbone": "vgg16"}), data)
    frozen = clock.build_model(clock.Config.from_dict({"backbone": "vgg16", "trainable_convs": 2}), data)
    convs = [m for m in frozen.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False] * 11 + [True] * 2
    assert count_params(frozen) < count_params(full)


def test_precision_is_reported_but_is_no_metric_to_search_on():
    reported = clock.FAMILY.task.reported()
    assert "precision" not in reported and "device" not in reported
    assert {"val_csd", "epoch_s"} <= reported


def test_a_trial_at_chance_level_is_marked_stalled(data):
    """lr 1e-9 learns nothing: after stall_epochs epochs at chance (accuracy 1/4 here) it reads stalled."""
    still = LocalReporter()
    train({**MLP, "max_epochs": 3, "lr": 1e-9, "stall_epochs": 2}, data=data, reporter=still)
    assert [row["stalled"] for row in still.history] == [False, True, True]
    assert [row["chance_epochs"] for row in still.history] == [1, 2, 3]  # epochs in a row at chance
    learning = LocalReporter()
    train({**MLP, "max_epochs": 8, "lr": 0.01, "batch_size": 32, "stall_epochs": 2}, data=data, reporter=learning)
    assert not learning.history[-1]["stalled"] and learning.history[-1]["chance_epochs"] == 0
    never = LocalReporter()
    train({**MLP, "max_epochs": 3, "lr": 1e-9, "stall_epochs": 0}, data=data, reporter=never)
    assert not any(row["stalled"] for row in never.history)


def test_chance_level_is_the_tasks_own():
    from trainables.family import CLASSIFICATION

    assert CLASSIFICATION.at_chance(0.12, n_classes=10) and not CLASSIFICATION.at_chance(0.30, n_classes=10)
    task = clock.FAMILY.task  # CSD: 180 minutes guessing, 0 reading every clock right
    assert task.at_chance(175.0, n_classes=720) and task.at_chance(200.0, n_classes=720)
    assert not task.at_chance(150.0, n_classes=720)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_modern_schedules_step_every_batch_and_resume_exactly(schedule, data, tmp_path):
    config = {**MLP, "max_epochs": 4, "lr": 0.01, "batch_size": 32, "schedule": schedule, "optimizer": "adamw",
              "warmup_epochs": 1 if schedule == "cosine" else 0, "checkpoint_s": 0}
    whole = LocalReporter()
    train(config, data=data, reporter=whole)
    lrs = [row["lr"] for row in whole.history]  # at the end of each epoch
    assert lrs[-1] < 1e-4 and max(lrs) <= 0.01 and lrs[1:] == sorted(lrs[1:], reverse=True)  # then down to ~0
    learns(whole.history)
    with pytest.raises(KeyboardInterrupt):
        train(config, data=data, reporter=Crash(tmp_path / "ckpt", at=2))
    resumed = LocalReporter(tmp_path / "ckpt")
    train(config, data=data, reporter=resumed)
    assert [row["epoch"] for row in resumed.history] == [3, 4]
    assert [row["lr"] for row in resumed.history] == pytest.approx(lrs[2:], rel=1e-9)
    assert [row["train_loss"] for row in resumed.history] == pytest.approx(
        [row["train_loss"] for row in whole.history[2:]], rel=1e-5)


def test_unknown_schedule_is_refused():
    with pytest.raises(ConfigError, match="schedule must be one of plateau, onecycle, cosine"):
        clock.Config.from_dict({"schedule": "step"})


def test_a_finished_trial_keeps_its_best_weights_and_says_how_to_go_on(data, tmp_path):
    from trainables.loop import FinishedCheckpoint

    train({**MLP, "max_epochs": 2}, data=data, reporter=LocalReporter(tmp_path / "slim"))
    saved = torch.load(tmp_path / "slim" / "state.pt", weights_only=True)
    assert set(saved) == {"best_model", "state"} and (tmp_path / "slim" / "predictions.npz").exists()
    with pytest.raises(FinishedCheckpoint, match="set keep_optimizer: true"):
        train({**MLP, "max_epochs": 3}, data=data, reporter=LocalReporter(tmp_path / "slim"))
    # its search deleted its weights (--keep-weights): it trained from scratch, over its kept predictions
    (tmp_path / "slim" / "state.pt").unlink()
    predictions = (tmp_path / "slim" / "predictions.npz").read_bytes()
    with pytest.raises(FinishedCheckpoint, match="weights were deleted when its search completed"):
        train({**MLP, "max_epochs": 3}, data=data, reporter=LocalReporter(tmp_path / "slim"))
    assert (tmp_path / "slim" / "predictions.npz").read_bytes() == predictions
    assert not (tmp_path / "slim" / "state.pt").exists()
    train({**MLP, "max_epochs": 2, "keep_optimizer": True}, data=data, reporter=LocalReporter(tmp_path / "full"))
    more = LocalReporter(tmp_path / "full")
    train({**MLP, "max_epochs": 3, "keep_optimizer": True}, data=data, reporter=more)  # a finished trial, extended
    assert [row["epoch"] for row in more.history] == [3]
    # restored after its own early stop (a killed driver's snapshot still had it running), a trial that kept
    # its optimiser trained on past it, and a better epoch then changed its best weights and test metrics
    stopped = {**MLP, "max_epochs": 30, "early_stop": 1, "lr": 0.5, "keep_optimizer": True}
    first = LocalReporter(tmp_path / "stopped")
    train(stopped, data=data, reporter=first)
    assert first.history[-1]["early_stopped"]
    again = LocalReporter(tmp_path / "stopped")
    train(stopped, data=data, reporter=again)
    assert again.history == []


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_eager_optimisers_update_as_torch_does_to_the_bit(optimizer):
    """The loop's optimisers (no torch._dynamo) step, schedule and save exactly as torch's own, and
    run the step hooks a user registers."""
    from trainables.config import TrainConfig

    cfg = TrainConfig.from_dict({"family": "mlp", "optimizer": optimizer, "momentum": 0.9, "weight_decay": 1e-3,
                                 "schedule": "onecycle", "max_epochs": 1})
    x, y = torch.randn(32, 8, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3
    runs = []
    for eager in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        opt = make_optimizer(cfg, list(model.parameters()), torch.device("cpu"))
        if not eager:
            del opt.step  # torch's own step, graph breaks and all
        steps = []
        opt.register_step_post_hook(lambda *_: steps.append(1))
        schedule = make_schedule(cfg, opt, steps=5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
            for _ in range(5):
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step()
                schedule.step()
        runs.append((list(model.parameters()), opt.state_dict(), len(steps)))
    (eager_params, eager_state, eager_steps), (params, state, steps) = runs
    assert all(torch.equal(a, b) for a, b in zip(eager_params, params))
    assert eager_steps == steps == 5
    assert str(eager_state) == str(state)


def test_training_never_imports_torchs_compiler(tmp_path):
    """Building, stepping, checkpointing and resuming an optimiser leave torch._dynamo unloaded
    (1.3 s of a fresh worker's CPU on the way to its first result)."""
    code = f"""
import sys
from tests.test_families import Crash
from trainables.loop import train
from trainables.report import LocalReporter

config = {{"family": "mlp", "hidden": [16], "dataset": "synthetic", "max_epochs": 2, "checkpoint_s": 0}}
try:
    train(config, reporter=Crash({str(tmp_path)!r}, at=1))
except KeyboardInterrupt:
    pass
resumed = LocalReporter({str(tmp_path)!r})
train(config, reporter=resumed)
assert [row["epoch"] for row in resumed.history] == [2], resumed.history
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
