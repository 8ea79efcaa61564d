"""Where a trainable sends its per-epoch results: Ray Tune, or a plain list.

The training loop only calls ``reporter.report(metrics, checkpoint_dir)`` and
``with reporter.restore() as folder``, so the same function runs under Tune, in a benchmark
or on a GPU machine that has torch but not Ray.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, ContextManager, Protocol


class Reporter(Protocol):
    wants_checkpoints: bool  # False: checkpoints would be dropped, so the loop writes none

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def restore(self) -> ContextManager[Path | None]:
        """The folder of the checkpoint to resume from, if any, while the ``with`` block runs."""
        ...


def staging(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A folder for one checkpoint on its way to Tune or back from it, removed when the block ends.

    It lies in this process's own folder under the system's temporary one. Ray kills a trial's
    worker while it waits in ``tune.report`` (Ctrl-C, a lost driver, the end of a search), so a
    block may never end: the first folder a process asks for sweeps away those of this machine's
    processes that are gone, instead of leaving a checkpoint's copy behind per killed trial.
    """
    return tempfile.TemporaryDirectory(prefix=f"{kind}-", dir=_own_staging())


_swept_by: int | None = None  # the process that swept (a forked child sweeps again)


def staging_root(pid: int) -> Path:
    """Process ``pid``'s staging folder: ``valley-staging-<host>-<pid namespace>-<pid>`` in the temporary
    folder. Host and pid namespace say whose pids a sweep can see: two containers can share a /tmp and
    a host name (host networking), and one must not take the other's live processes for dead."""
    try:
        pids = re.sub(r"\D", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        pids = ""
    return Path(tempfile.gettempdir()) / f"valley-staging-{socket.gethostname()}-{pids}-{pid}"


def _own_staging() -> Path:
    global _swept_by
    mine = staging_root(os.getpid())
    if _swept_by != os.getpid():
        for folder in mine.parent.glob(mine.name.rpartition("-")[0] + "-*"):
            pid = folder.name.rpartition("-")[2]
            if pid.isdigit() and (folder == mine or not _alive(int(pid))):
                shutil.rmtree(folder, ignore_errors=True)  # ``mine``: a dead process's, its pid now ours
        _swept_by = os.getpid()
    mine.mkdir(exist_ok=True)
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


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

    def restore(self) -> ContextManager[Path | None]:
        # predictions without state.pt: a finished trial whose weights its search deleted (the loop refuses it)
        found = self.checkpoint_dir and any((self.checkpoint_dir / name).exists() for name in ("state.pt",
                                                                                             "predictions.npz"))
        return contextlib.nullcontext(self.checkpoint_dir if found else None)


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

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        checkpoint = self._tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with staging("restore") as local:
            yield Path(checkpoint.to_directory(local))


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
