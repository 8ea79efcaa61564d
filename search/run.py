"""Run one space as one Ray Tune experiment and write its tidy results.

Everything that can be wrong with a search (space, data, folder, resources)
is checked before Ray starts; a trial that fails is recorded and the search
goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spaces import Space, SpaceError

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Tune's automatic CSV and TensorBoard loggers cost time per result and nothing reads them;
# the JSON logger (result.json, params.json) is added back explicitly.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune writes its experiment snapshot, and copies result.json into the experiment folder, at most
# this often (seconds); its "auto" (>= 10 s) leaves what a killed driver can resume, and what
# readers of a running search see, that far behind.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")


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
    """SPACE-DATASET-TIME, with anything but letters, digits, '.', '_' and '-' in a file name made '-'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", space.name).strip(".-")[:60] or "space"
    return f"{stem}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


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
    """Check everything that does not need Ray; returns (experiment folder, data set, epochs).

    Cheap checks come first, so that most refusals come before torch is even imported.
    """
    from trainables import FAMILIES
    from trainables.data import DATASETS

    if opts.search not in ("random", "optuna"):
        raise SearchError(f"--search must be random or optuna, got {opts.search!r}")
    if opts.scheduler not in ("fifo", "asha"):
        raise SearchError(f"--scheduler must be fifo or asha, got {opts.scheduler!r}")
    if space.family not in FAMILIES:
        raise SpaceError(f"{space.source}: family: unknown family {space.family!r}; valid families: "
                         f"{', '.join(sorted(FAMILIES))}")
    dataset = opts.dataset or space.dataset
    if dataset is None:
        raise SearchError(f"{space.source} names no dataset; pass --dataset ({', '.join(DATASETS)})")
    if dataset not in DATASETS:
        raise SearchError(f"unknown data set {dataset!r}; valid data sets: {', '.join(sorted(DATASETS))}")
    epochs = opts.max_epochs if opts.max_epochs is not None else space.max_epochs or 10
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
    if opts.max_failures < 0:
        raise SearchError(f"--max-failures must be >= 0 (retries of a crashed trial), got {opts.max_failures}")
    if opts.max_concurrent < 0:
        raise SearchError(f"--max-concurrent must be >= 0 (0: as many as resources allow), got "
                          f"{opts.max_concurrent}")
    name = opts.name or experiment_name(space, dataset)
    if not NAME_RULE.match(name):
        raise SearchError(f"--name must be letters, digits, '.', '_' or '-' (at most 100, not starting "
                          f"with a dot), got {name!r}")
    folder = storage_root(opts.storage) / name
    if folder.exists():
        raise SearchError(f"experiment {folder} already exists; continue it with `valley resume {folder}` "
                          "or choose another --name")
    if opts.address is None:
        check_local_resources(opts)
    from search.tune_space import check_space  # imports torch, through the family

    check_space(space, {**opts.overrides, "dataset": dataset, "max_epochs": epochs})
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


def local_cpus() -> int:
    """CPUs this process may run on (what a local Ray gets without --num-cpus, cgroup quotas aside)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def check_local_resources(opts: SearchOptions) -> None:
    """Before a local Ray starts: one trial must fit this machine, or it would wait forever."""
    cpus = opts.num_cpus or local_cpus()
    if opts.num_cpus is not None and opts.num_cpus < 1:
        raise SearchError(f"--num-cpus must be at least 1, got {opts.num_cpus}")
    if opts.cpus_per_trial > cpus:
        raise SearchError(f"--cpus-per-trial {opts.cpus_per_trial:g} asks for more CPUs than the local Ray has "
                          f"({cpus}); lower --cpus-per-trial or raise --num-cpus")
    if opts.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if opts.gpus_per_trial > max(gpus, 1) or gpus == 0:
            raise SearchError(f"--gpus-per-trial {opts.gpus_per_trial:g} asks for more GPUs than this machine has "
                              f"({gpus} visible to torch); use --gpus-per-trial 0 here, a fraction such as 0.5 "
                              "to pack trials on one GPU, or a GPU cluster with --address")


def load_data(dataset: str, data_dir: str | None) -> Any:
    """Load and check a data set; a broken file is a one-line :class:`SearchError`, not a traceback."""
    from trainables.data import DATASETS, DataError, default_data_dir, load_dataset

    registered = DATASETS[dataset]
    folder = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if data_dir and not registered.files and not folder.is_dir():  # these never download into it
        raise SearchError(f"--data-dir {folder} is not a folder; give the folder that holds the data set's "
                          f"files, or leave --data-dir out (see `valley datasets`)")
    try:
        data = load_dataset(dataset, data_dir=data_dir)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        where = folder / registered.subdir if registered.subdir else folder
        raise SearchError(f"data set {dataset!r} in {where} cannot be read ({type(err).__name__}: "
                          f"{str(err)[:150]}); replace its files with the originals, or delete them and run "
                          "again online so they are downloaded") from None
    check_splits(data, registered.shape if registered.files else None)  # files of a fixed format
    return data


def check_splits(data: Any, shape: tuple[int, ...] | None = None) -> None:
    """Images uint8 (N, C, H, W) of the registered shape, labels integers in [0, n_classes)."""
    import numpy as np

    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        where = f"data set {data.name!r}, {split} split"
        if x.ndim != 4 or x.dtype != np.uint8:
            raise SearchError(f"{where}: images must be uint8 of shape (N, C, H, W), got {x.dtype} {x.shape}; "
                              "the files are not in the expected format")
        if shape and tuple(x.shape[1:]) != tuple(shape):
            raise SearchError(f"{where}: images must be {'x'.join(map(str, shape))}, got "
                              f"{'x'.join(map(str, x.shape[1:]))}; the files belong to another data set")
        if len(x) == 0 or len(y) != len(x):
            raise SearchError(f"{where}: {len(x)} images but {len(y)} labels; the files are truncated or mixed")
        if not np.issubdtype(y.dtype, np.integer):
            raise SearchError(f"{where}: labels must be integers, got {y.dtype}")
        if y.ndim == 1 and len(y) and (y.min() < 0 or y.max() >= data.n_classes):
            raise SearchError(f"{where}: labels must lie in [0, {data.n_classes}), got {y.min()}..{y.max()}; "
                              "the label files do not match the images")


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """While a local Ray starts, make it take 127.0.0.1 as its node address.

    Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` into the machine's routable
    address, so its gRPC servers (GCS, raylet, every worker) listen on all
    interfaces. With its "no cluster" switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``,
    the default on macOS and Windows) the node address is 127.0.0.1 and every
    server binds there. The switch is read when ``ray`` is imported, so the
    constant is set for the duration of ``ray.init`` instead.
    """
    from ray._private import ray_constants

    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if saved is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


def auth_token_path() -> Path | None:
    """The token file Ray's token authentication reads, unless the token comes from the environment."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def protect_auth_token(create: bool = False) -> None:
    """Keep Ray's auth token readable by its owner only (Ray writes it with the default umask, 0644).

    With ``create``, a missing default token is written here, 0600 from the start, so Ray finds
    it instead of writing a world-readable one.
    """
    path = auth_token_path()
    if path is None or os.environ.get("RAY_AUTH_MODE", "token").lower() == "disabled":
        return
    try:
        if create and not path.exists() and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        if path.exists() and path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except FileExistsError:
        pass
    except OSError as err:
        print(f"valley: warning: could not restrict {path} to its owner ({err.strerror}); "
              f"run `chmod 600 {path}`", file=sys.stderr)


# Runs beside a driver that started a local Ray: when the driver dies (even by SIGKILL), Ray's
# raylet, GCS and workers follow within seconds, but its dashboard and runtime-env agents wait
# a minute on a dead GCS. This ends the processes the driver started, checked by start time.
REAPER = r"""# valley: ends the local Ray of its driver (argv[1]) when the driver dies
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops Ray itself
driver, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def started(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
starts = {pid: started(pid) for pid in pids}
while os.getppid() == driver:
    time.sleep(0.5)
time.sleep(0.5)
for pid, start in starts.items():
    if start is not None and started(pid) == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def descendants() -> set[int]:
    """Process ids of everything this process has started, and they in turn."""
    import psutil  # Ray's own copy, importable once ray is

    return {child.pid for child in psutil.Process().children(recursive=True)}


def reap_local_ray_with_driver(before: set[int]) -> None:
    """Start the reaper for the processes that appeared while Ray started (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    pids = sorted(descendants() - before)
    if pids:
        subprocess.Popen([sys.executable, "-c", REAPER, str(os.getpid()), *map(str, pids)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         close_fds=True)


def start_ray(opts: SearchOptions) -> None:
    """Join ``--address``, or start a local Ray: loopback only, dashboard off, token file private."""
    import ray

    if ray.is_initialized():
        return
    if opts.address:
        ray.init(address=opts.address, log_to_driver=False)
        return
    protect_auth_token(create=True)
    before = descendants()
    with loopback_only():  # address="local": a new Ray, even where RAY_ADDRESS or a `ray start` points elsewhere
        ray.init(address="local", num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=True, logging_level="WARNING")
    protect_auth_token()
    reap_local_ray_with_driver(before)


def autoscaler_node_types() -> list[dict[str, float]]:
    """Resources of the node types the cluster launcher's autoscaler may add (on the head only)."""
    import yaml

    path = Path.home() / "ray_bootstrap_config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        return []
    types = (config or {}).get("available_node_types") or {}
    return [dict(node.get("resources") or {}) for node in types.values() if isinstance(node, dict)]


def check_cluster(opts: SearchOptions, root: Path) -> None:
    """After Ray starts, before any trial: one trial fits a node, and every node sees the results folder."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    capacity = [node.get("Resources", {}) for node in nodes] + autoscaler_node_types()
    for key, flag, asked in (("CPU", "--cpus-per-trial", opts.cpus_per_trial),
                             ("GPU", "--gpus-per-trial", opts.gpus_per_trial)):
        largest = max((float(res.get(key, 0)) for res in capacity), default=0.0)
        if asked > 0 and largest + 1e-9 < asked:
            where = "the local Ray" if opts.address is None else "any node of the cluster at --address"
            fix = ("use --gpus-per-trial 0, or a fraction such as 0.5 to pack trials on one GPU"
                   if key == "GPU" else "lower --cpus-per-trial")
            raise SearchError(f"{flag} {asked:g} asks for more {key}s than {where} has (at most {largest:g} "
                              f"per node); {fix}")
    if opts.address and len(nodes) > 1:
        check_shared_storage(root, nodes)


def check_shared_storage(root: Path, nodes: list[dict[str, Any]]) -> None:
    """Since Ray 2.7 trials write checkpoints straight to --storage: every node must see the same folder."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = root / f".valley-shared-{uuid.uuid4().hex[:12]}"
    probe.write_text("")

    def sees(path: str) -> bool:
        import os

        return os.path.exists(path)

    remote = ray.remote(num_cpus=0, max_retries=0)(sees)
    try:
        refs = {node["NodeID"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(str(probe)) for node in nodes}
        blind = [node for node, ref in refs.items() if not ray.get(ref, timeout=60)]
    except Exception as err:  # noqa: BLE001 - a node that cannot answer cannot be trusted with checkpoints
        raise SearchError(f"could not check that every node sees --storage {root} ({type(err).__name__}); "
                          "check the cluster with `ray status`") from None
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise SearchError(f"--storage {root} is not visible on {len(blind)} of {len(nodes)} nodes (e.g. node "
                          f"{blind[0][:12]}); a multi-node search needs one shared folder for checkpoints: mount "
                          "NFS (e.g. EFS at /mnt/valley) on every node and pass --storage /mnt/valley/results")


def run_search(space: Space, opts: SearchOptions) -> Path:
    """Run ``space``; returns the experiment folder, which holds trials.csv when it finishes."""
    folder, dataset, epochs = prepare(space, opts)
    data = load_data(dataset, opts.data_dir)
    say = (lambda *a: None) if opts.quiet else (lambda *a: print(*a, flush=True))
    say(f"valley: {space.name} on {dataset} ({len(data.x_train)} train / {len(data.x_val)} val / "
        f"{len(data.x_test)} test), {epochs} epochs per trial -> {folder}")
    start_ray(opts)
    check_cluster(opts, folder.parent)
    from search.progress import Progress

    progress = Progress(total_trials(space, opts), space.metric, say)
    tuner = build_tuner(space, opts, folder, dataset, epochs, data, progress)
    write_manifest(folder, space, opts, dataset, epochs, data.fingerprint, status="running")
    return fit_and_finish(tuner, folder, say)


def fit_and_finish(tuner: Any, folder: Path, say: Any) -> Path:
    """Run the tuner; the experiment reads 'completed' only if no Ctrl-C came and every trial ended."""
    from search.progress import INTERRUPTED, prune_checkpoints

    status = "interrupted"
    INTERRUPTED.clear()
    fail_diverged_trials_at_once()
    try:
        grid = tuner.fit()
        trials = grid._experiment_analysis.trials
        if not INTERRUPTED.is_set() and all(t.status in ("TERMINATED", "ERROR") for t in trials):
            status = "completed"
    finally:
        update_status(folder, status)
    prune_checkpoints(folder)  # Tune's last snapshot is on disk now
    return finish(folder, status, say)


def fail_diverged_trials_at_once() -> None:
    """Tune retries every failed trial up to --max-failures times; a diverged one is not retried.

    Training restarts from the checkpoint before the divergence and, being seeded, diverges
    again: retrying costs epochs and changes nothing. Ray has no per-exception retry rule, so
    ``Trial.handle_error`` is wrapped to count a divergence as the last allowed failure.
    """
    from ray.tune.experiment.trial import Trial

    if getattr(Trial.handle_error, "_valley", False):
        return
    original = Trial.handle_error

    def handle_error(self: Any, exc: Any = None) -> None:
        original(self, exc)
        cause = getattr(exc, "cause", None)
        if type(cause).__name__ == "Diverged" or "trainables.loop.Diverged" in str(exc):
            if self.max_failures >= 0:
                self.run_metadata.num_failures = max(self.run_metadata.num_failures, self.max_failures + 1)

    handle_error._valley = True  # type: ignore[attr-defined]
    Trial.handle_error = handle_error


def sample_count(opts: SearchOptions) -> int:
    """Tune's num_samples: --samples, else 20 Optuna trials or 1 pass over the grid."""
    return opts.samples or (20 if opts.search == "optuna" else 1)


def total_trials(space: Space, opts: SearchOptions) -> int:
    """Trials the search will run; a --set key replaces its grid, as in ``param_space``."""
    samples = sample_count(opts)
    kept = {k: v for k, v in space.params.items() if k not in opts.overrides}
    return samples if opts.search == "optuna" else samples * dataclasses.replace(space, params=kept).grid_size()


def build_tuner(space: Space, opts: SearchOptions, folder: Path, dataset: str, epochs: int, data: Any,
                progress: Any) -> Any:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from search.tune_space import param_space
    from trainables.loop import train

    overrides = {**opts.overrides, "family": space.family, "dataset": dataset, "max_epochs": epochs}
    params, rows = param_space(space, overrides, opts.search)
    params.setdefault("seed", opts.seed)
    samples = sample_count(opts)
    scheduler = None
    if opts.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=epochs,
                                  grace_period=opts.grace_period, reduction_factor=opts.reduction_factor)
    if opts.search == "optuna":
        import optuna

        from search.tune_space import ValleyOptunaSearch

        # TPE models the results after n_startup_trials random ones: Optuna's 10 would leave a 12-trial
        # fine stage random, so a third of the budget (at most 10) starts it; warm-start points count.
        startup = min(10, max(2, samples // 3))
        sampler = optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=startup)
        searcher = ValleyOptunaSearch(sampler=sampler, points_to_evaluate=list(opts.warm_points) or None,
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
            # Tune keeps every checkpoint; search.progress prunes those the snapshot on disk no
            # longer names (Tune's own num_to_keep can delete the one a killed driver's snapshot names)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
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
