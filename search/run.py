"""Run one space as one Ray Tune experiment and write its tidy results.

Everything that can be wrong with a search (space, data, folder, resources)
is checked before Ray starts; a trial that fails is recorded and the search
goes on.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from spaces import Space, SpaceError

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Tune's automatic CSV and TensorBoard loggers cost time per result and nothing reads them;
# the JSON logger (result.json, params.json) is added back explicitly.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# num_to_keep forces an experiment snapshot per checkpoint; valley wants that, without the warning
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class SearchError(ValueError):
    """A search that cannot start; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    dataset: str | None = None  # None: the space's own
    data_dir: str | None = None
    max_epochs: int | None = None  # None: the space's own, else 10
    samples: int | None = None  # None: 1 pass over the grid, or 20 Optuna trials
    search: str = "random"  # random (Tune's grid and random sampling) | optuna
    scheduler: str = "fifo"  # fifo | asha
    grace_period: int = 1  # ASHA: epochs before a trial can be stopped
    reduction_factor: float = 3.0  # ASHA: keep 1 in this many at each rung
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many as the resources allow
    max_failures: int = 1  # retries of a crashed trial from its last checkpoint
    seed: int = 0
    name: str | None = None
    storage: str = "results"
    address: str | None = None  # None: a local Ray started here
    num_cpus: int | None = None  # local Ray only
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # --set key=value
    warm_points: tuple[dict[str, Any], ...] = ()  # Optuna: configs already evaluated (a plan's warm start)
    warm_rewards: tuple[float, ...] = ()  # their metric values
    quiet: bool = False


def experiment_name(space: Space, dataset: str) -> str:
    return f"{space.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def git_commit() -> str:
    """The commit the code ran at, with '+dirty' when files differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def prepare(space: Space, opts: SearchOptions) -> tuple[Path, str, int]:
    """Check everything that does not need Ray; returns (experiment folder, data set, epochs)."""
    from search.tune_space import check_space
    from trainables.data import DATASETS

    if opts.search not in ("random", "optuna"):
        raise SearchError(f"--search must be random or optuna, got {opts.search!r}")
    if opts.scheduler not in ("fifo", "asha"):
        raise SearchError(f"--scheduler must be fifo or asha, got {opts.scheduler!r}")
    dataset = opts.dataset or space.dataset
    if dataset is None:
        raise SearchError(f"{space.source} names no dataset; pass --dataset ({', '.join(DATASETS)})")
    if dataset not in DATASETS:
        raise SearchError(f"unknown data set {dataset!r}; valid data sets: {', '.join(sorted(DATASETS))}")
    epochs = opts.max_epochs or space.max_epochs or 10
    if epochs < 1:
        raise SearchError(f"--max-epochs must be at least 1, got {epochs}")
    if opts.scheduler == "asha" and opts.grace_period > epochs:
        raise SearchError(f"--grace-period ({opts.grace_period}) must be <= --max-epochs ({epochs})")
    if opts.reduction_factor <= 1:
        raise SearchError(f"--reduction-factor must be > 1, got {opts.reduction_factor}")
    if opts.samples is not None and opts.samples < 1:
        raise SearchError(f"--samples must be at least 1, got {opts.samples}")
    if opts.cpus_per_trial <= 0 or opts.gpus_per_trial < 0:
        raise SearchError(f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got "
                          f"{opts.cpus_per_trial} and {opts.gpus_per_trial}")
    check_space(space, {**opts.overrides, "dataset": dataset, "max_epochs": epochs})
    name = opts.name or experiment_name(space, dataset)
    if not NAME_RULE.match(name):
        raise SearchError(f"--name must be letters, digits, '.', '_' or '-' (at most 100, not starting "
                          f"with a dot), got {name!r}")
    folder = storage_root(opts.storage) / name
    if folder.exists():
        raise SearchError(f"experiment {folder} already exists; continue it with `valley resume {folder}` "
                          "or choose another --name")
    return folder, dataset, epochs


def storage_root(storage: str) -> Path:
    """The results folder, created and checked writable."""
    if "://" in storage:
        raise SearchError(f"--storage must be a folder, got {storage!r}: valley writes its manifest and "
                          "tables with plain file I/O; mount the bucket or use shared NFS (e.g. EFS at "
                          "/mnt/valley) and pass that path")
    root = Path(storage).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".valley-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SearchError(f"results folder {root} is not writable ({err.strerror}); pass --storage "
                          "with a folder you can write") from None
    return root


def start_ray(opts: SearchOptions) -> None:
    """Join ``--address`` or start a local Ray bound to the loopback, dashboard off."""
    import ray

    if ray.is_initialized():
        return
    if opts.address:
        ray.init(address=opts.address, log_to_driver=False)
    else:
        ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=True, logging_level="WARNING")


def run_search(space: Space, opts: SearchOptions) -> Path:
    """Run ``space``; returns the experiment folder, which holds trials.csv when it finishes."""
    folder, dataset, epochs = prepare(space, opts)
    from trainables.data import load_dataset

    data = load_dataset(dataset, data_dir=opts.data_dir)
    say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, flush=True))
    say(f"valley: {space.name} on {dataset} ({len(data.x_train)} train / {len(data.x_val)} val / "
        f"{len(data.x_test)} test), {epochs} epochs per trial -> {folder}")
    start_ray(opts)
    from search.progress import Progress

    progress = Progress(total_trials(space, opts), space.metric, say)
    tuner = build_tuner(space, opts, folder, dataset, epochs, data, progress)
    write_manifest(folder, space, opts, dataset, epochs, data.fingerprint, status="running")
    return fit_and_finish(tuner, folder, say)


def fit_and_finish(tuner: Any, folder: Path, say: Any) -> Path:
    """Run the tuner; the experiment reads 'completed' only if no Ctrl-C came and every trial ended."""
    from search.progress import INTERRUPTED

    status = "interrupted"
    INTERRUPTED.clear()
    try:
        grid = tuner.fit()
        trials = grid._experiment_analysis.trials
        if not INTERRUPTED.is_set() and all(t.status in ("TERMINATED", "ERROR") for t in trials):
            status = "completed"
    finally:
        update_status(folder, status)
    return finish(folder, status, say)


def total_trials(space: Space, opts: SearchOptions) -> int:
    samples = opts.samples or (20 if opts.search == "optuna" else 1)
    return samples if opts.search == "optuna" else samples * space.grid_size()


def build_tuner(space: Space, opts: SearchOptions, folder: Path, dataset: str, epochs: int, data: Any,
                progress: Any) -> Any:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from search.tune_space import param_space
    from trainables.loop import train

    overrides = {**opts.overrides, "family": space.family, "dataset": dataset, "max_epochs": epochs}
    params, rows = param_space(space, overrides, opts.search)
    params.setdefault("seed", opts.seed)
    samples = opts.samples or (20 if opts.search == "optuna" else 1)
    scheduler = None
    if opts.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                  grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)
    if opts.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=opts.seed),
                                points_to_evaluate=list(opts.warm_points) or None,
                                evaluated_rewards=list(opts.warm_rewards) or None)
        if rows:
            progress.say(f"valley: note: Optuna samples the {len(rows)} grid rows as a categorical choice")
    else:
        from ray.tune.search import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=opts.seed)
    trainable = tune.with_resources(
        tune.with_parameters(train, data=data, variants=rows),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    return tune.Tuner(
        trainable,
        param_space=params,
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=samples, search_alg=searcher,
            scheduler=scheduler, max_concurrent_trials=opts.max_concurrent or None, reuse_actors=True,
            trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(
            name=folder.name, storage_path=str(folder.parent), verbose=0,
            callbacks=[JsonLoggerCallback(), progress],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures)),
    )


def write_manifest(folder: Path, space: Space, opts: SearchOptions, dataset: str, epochs: int,
                   fingerprint: str, status: str) -> None:
    """``valley.json``: how the experiment was made, beside its results."""
    from trainables.loop import environment

    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "space": space.name, "space_file": space.source, "family": space.family,
        "metric": space.metric, "mode": space.mode, "dataset": dataset, "max_epochs": epochs,
        "grid": [dict(row) for row in space.grid], "options": dataclasses.asdict(opts),
        "data_fingerprint": fingerprint, "git_commit": git_commit(), "command": sys.argv,
        "environment": environment(), "status": status, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (folder / "valley.json").write_text(json.dumps(manifest, indent=2, default=str))
    (folder / "space.yaml").write_text(Path(space.source).read_text())


def update_status(folder: Path, status: str) -> None:
    path = folder / "valley.json"
    manifest = json.loads(path.read_text())
    manifest.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    path.write_text(json.dumps(manifest, indent=2, default=str))


def finish(folder: Path, status: str, say: Any) -> Path:
    """Write trials.csv and trials.parquet from what is on disk and print the best five."""
    from analysis.load import top_table, write_tables

    trials = write_tables(folder)
    say(top_table(trials, folder))
    if status == "interrupted":
        say(f"valley: interrupted; continue with `valley resume {folder}`")
    say(f"valley: {status}: {len(trials)} trials in {folder / 'trials.csv'}")
    return folder


__all__ = ["SearchError", "SearchOptions", "SpaceError", "run_search"]
