"""Where a trainable sends its per-epoch results: Ray Tune, or a plain list.

The training loop only calls ``reporter.report(metrics, checkpoint_dir)`` and
``reporter.restore()``, so the same function runs under Tune, in a benchmark
or on a GPU machine that has torch but not Ray.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    wants_checkpoints: bool  # False: checkpoints would be dropped, so the loop writes none

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def restore(self) -> Path | None:
        """The folder of the checkpoint to resume from, if any."""
        ...


class LocalReporter:
    """Keeps every report in ``history``; keeps the latest checkpoint in ``checkpoint_dir``."""

    def __init__(self, checkpoint_dir: str | Path | None = None, verbose: bool = False) -> None:
        self.history: list[dict[str, Any]] = []
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.verbose = verbose

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir and self.checkpoint_dir:
            staged = self.checkpoint_dir.with_name(self.checkpoint_dir.name + ".new")
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(checkpoint_dir, staged)
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            staged.rename(self.checkpoint_dir)  # a crash mid-copy never leaves half a checkpoint
        if self.verbose:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
            print(shown, file=sys.stderr)

    @property
    def wants_checkpoints(self) -> bool:
        return self.checkpoint_dir is not None

    def restore(self) -> Path | None:
        if self.checkpoint_dir and (self.checkpoint_dir / "state.pt").exists():
            return self.checkpoint_dir
        return None


class RayReporter:
    """Reports through ``ray.tune.report``; resumes from ``ray.tune.get_checkpoint``.

    Adds ``node_id`` (Ray's id of the node the trial runs on) to every report: ``node_ip``
    alone cannot tell apart two nodes on one machine, or a trial that moved after a node died.
    """

    def __init__(self) -> None:
        import ray
        from ray import tune

        self._tune = tune
        self.wants_checkpoints = True
        self._node_id = ray.get_runtime_context().get_node_id()
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
        import torch

        torch.set_num_threads(max(1, int(cpus)))

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = self._tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        self._tune.report({**metrics, "node_id": self._node_id}, checkpoint=checkpoint)

    def restore(self) -> Path | None:
        checkpoint = self._tune.get_checkpoint()
        if checkpoint is None:
            return None
        local = tempfile.mkdtemp(prefix="valley-restore-")
        return Path(checkpoint.to_directory(local))


def default_reporter() -> Reporter:
    """Ray's reporter inside a Tune trial, a silent local one elsewhere."""
    if "ray" in sys.modules or os.environ.get("TUNE_ORIG_WORKING_DIR"):
        try:
            from ray.tune.trainable.trainable_fn_utils import _in_tune_session
        except ImportError:
            return LocalReporter()
        if _in_tune_session():
            return RayReporter()
    return LocalReporter()


def environment() -> dict[str, str]:
    """What a result was made with, recorded beside it. Read without importing torch or starting CUDA:
    a search's driver needs neither (on a GPU node it would hold a CUDA context all search long)."""
    return {"torch": torch_version(), "python": platform.python_version(), "cuda": gpu_name()}


def torch_version() -> str:
    """``torch.__version__`` (with its build, such as ``+cu130``) read from torch's ``version.py``."""
    spec = importlib.util.find_spec("torch")
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()  # type: ignore[union-attr, arg-type]
        return re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", text, re.MULTILINE)[1]  # type: ignore[index]
    except (OSError, TypeError, AttributeError):
        return version("torch")


def gpu_name() -> str:
    """The machine's first NVIDIA GPU as its Linux driver lists it (whatever CUDA_VISIBLE_DEVICES says),
    or "none"."""
    try:
        for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return "unknown"
    return "none"
