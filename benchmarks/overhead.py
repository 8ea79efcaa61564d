"""Per-trial overhead of a valley search against a bare PyTorch loop with the same concurrency.

    python benchmarks/overhead.py            # both workloads, every variant, 3 rounds (about 15 min on 2 quiet cores)
    python benchmarks/overhead.py --quick    # the fixed-cost workload only, fewer variants

Two workloads, the same configurations in every variant (a grid over ``seed``):

* ``fixed``: 20 trials that do almost nothing (1 epoch on ``synthetic``, a 4-unit MLP), so
  ``(wall - bare) / trials`` is valley's fixed cost per trial. Goal: at most 0.2 s.
* ``5s``: 8 trials of about 5 s (20 epochs on ``digits``, 5 hidden layers, batch 32).
  Goal: wall time at most 1.15 x bare.

``bare`` trains with ``multiprocessing.Pool(2)`` calling ``trainables.loop.train`` with a
``LocalReporter`` (pool start counted, as Tune's actor start is). Every Tune variant runs on one
local Ray (2 CPUs, 1 CPU per trial) started before any timing, and times ``Tuner.fit()`` only.
``valley`` is ``search.run.run_search`` on a space written to a temporary YAML file, as
``valley search`` runs it (``Tuner.fit()`` timed inside it); the other ``valley ...`` rows change
one thing through options or environment variables, to show what each part costs. CPU seconds of the whole process tree (Ray's daemons and workers
included) are measured beside wall time: on a shared machine they are the steadier figure.
``tune defaults`` is a plain ``tune.Tuner`` with Tune's defaults (no actor reuse, CSV, JSON and
TensorBoard loggers, console progress).

``--workloads e2e`` measures what a user feels, each in a fresh process, from the command to its
exit: ``valley search mlp-rough --dataset digits --max-epochs 1`` (the reference's 14 MLPs, one
epoch each; also the time to its first trial's line and what it leaves on disk) against ``bare``,
the same 14 trainings in one plain Python process (``trainables.loop.train``, imports counted),
with Ray's own start-up (``ray.init`` and ``ray.shutdown`` in a fresh process) beside them. Goals:
the first result within Ray's start-up + 1 s, the whole search within bare + Ray's start-up + 2 s.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import CpuMeter, machine, table, wait_for_quiet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_RUNS = itertools.count()  # a fresh experiment name per run: valley never overwrites one


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    trials: int
    dataset: str
    epochs: int
    row: dict[str, Any]  # the architecture, one grid row
    batch_size: int

    def configs(self) -> list[dict[str, Any]]:
        """The flat configs every variant trains, one per trial."""
        return [{"family": "mlp", "dataset": self.dataset, "max_epochs": self.epochs,
                 "batch_size": self.batch_size, "seed": seed, **self.row} for seed in range(self.trials)]

    def yaml(self) -> str:
        row = ", ".join(f"{k}: {v}" for k, v in self.row.items())
        return (f"family: mlp\ndataset: {self.dataset}\nmetric: val_loss\nmode: min\n"
                f"max_epochs: {self.epochs}\ngrid:\n  - {{{row}}}\nparams:\n"
                f"  batch_size: {self.batch_size}\n  seed: {{grid: {list(range(self.trials))}}}\n")


WORKLOADS = {
    "fixed": Workload("fixed", 20, "synthetic", 1, {"hidden": [4]}, 64),
    "5s": Workload("5s", 8, "digits", 20, {"layers": 5}, 32),
}


# ---- bare: the same trainable in a process pool, no Ray -------------------------------------------

_POOL_DATA: Any = None


def _pool_init(dataset: str) -> None:
    global _POOL_DATA
    import torch

    from trainables.data import load_dataset

    torch.set_num_threads(1)  # as RayReporter does for a 1-CPU trial
    _POOL_DATA = load_dataset(dataset)


def _pool_train(config: dict[str, Any]) -> tuple[float, float]:
    """(seconds inside ``train``, sum of its reported ``epoch_s``)."""
    from trainables.loop import train
    from trainables.report import LocalReporter

    reporter = LocalReporter()
    started = time.perf_counter()
    train(config, data=_POOL_DATA, reporter=reporter)
    return time.perf_counter() - started, sum(h["epoch_s"] for h in reporter.history)


def run_bare(work: Workload, overrides: dict[str, Any]) -> dict[str, float]:
    """Wall seconds to train every config with 2 spawned processes, pool start included."""
    configs = [{**c, **overrides} for c in work.configs()]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2, _pool_init, (work.dataset,)) as pool:
        done = pool.map(_pool_train, configs, chunksize=1)
    wall = time.perf_counter() - started
    assert len(done) == work.trials
    return {"wall": wall, "e2e": wall, "in_trial": sum(d[0] for d in done), "train": sum(d[1] for d in done)}


def trial_times(folder: Path) -> dict[str, float]:
    """From Tune's result.json files: summed ``time_total_s`` (in the trial) and ``epoch_s`` (training)."""
    in_trial = train = 0.0
    for path in folder.glob("*/result.json"):
        results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if results:
            in_trial += results[-1]["time_total_s"]
            train += sum(r["epoch_s"] for r in results)
    return {"in_trial": in_trial, "train": train}


# ---- Tune variants --------------------------------------------------------------------------------

@contextlib.contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the duration of one variant."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def timed_fit(times: list[float]) -> Iterator[None]:
    """Append the wall seconds of every ``Tuner.fit()`` call made inside to ``times``."""
    from ray.tune import Tuner

    original = Tuner.fit

    def fit(self: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self)
        finally:
            times.append(time.perf_counter() - started)

    Tuner.fit = fit
    try:
        yield
    finally:
        Tuner.fit = original


def run_valley(work: Workload, root: Path, name: str, overrides: dict[str, Any] | None = None,
               **options: Any) -> dict[str, float]:
    """Seconds of ``Tuner.fit()`` and of the whole ``run_search`` (Ray already started)."""
    import pandas as pd

    from search.run import SearchOptions, run_search
    from spaces import load_space

    space_file = root / f"{work.name}.yaml"
    space_file.write_text(work.yaml())
    opts = SearchOptions(storage=str(root / "results"), name=f"{name}-{next(_RUNS)}", num_cpus=2, quiet=True,
                         overrides=dict(overrides or {}), **options)
    fits: list[float] = []
    started = time.perf_counter()
    with timed_fit(fits):
        folder = run_search(load_space(space_file), opts)
    end_to_end = time.perf_counter() - started
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == work.trials and (trials["status"] == "completed").all(), trials["status"]
    return {"wall": fits[0], "e2e": end_to_end, **trial_times(folder)}


def run_tune_defaults(work: Workload, root: Path, name: str) -> dict[str, float]:
    """Wall seconds of ``Tuner.fit()`` with Tune's defaults and the same trainable and configs."""
    from ray import tune

    from trainables.data import load_dataset
    from trainables.loop import train

    data = load_dataset(work.dataset)
    params = {**work.configs()[0], "seed": tune.grid_search(list(range(work.trials)))}
    name = f"{name}-{next(_RUNS)}"
    tuner = tune.Tuner(tune.with_parameters(train, data=data), param_space=params,
                       tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
                       run_config=tune.RunConfig(name=name, storage_path=str(root / "results")))
    log = open(root / f"{name}.log", "w")  # Tune's console tables, kept out of ours
    with environ(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="0", RAY_AIR_NEW_OUTPUT=None), \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        started = time.perf_counter()
        grid = tuner.fit()
        wall = time.perf_counter() - started
    log.close()
    assert len(grid) == work.trials and not grid.errors, grid.errors
    return {"wall": wall, "e2e": wall, **trial_times(root / "results" / name)}


# ---- end to end: the command a user types, in fresh processes -----------------------------------------

E2E_BARE = """
import time; started = time.perf_counter()
from spaces import load_space
from trainables.data import load_dataset
from trainables.loop import train
from trainables.report import LocalReporter
space, data = load_space("mlp-rough"), load_dataset("digits")
for row in space.grid:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in {**space.params, **row}.items()}
    train({**config, "family": "mlp", "dataset": "digits", "max_epochs": 1}, data=data, reporter=LocalReporter())
"""
E2E_RAY = "import ray; ray.init(num_cpus=2, include_dashboard=False); ray.shutdown()"


def python(code: str) -> float:
    """Seconds from starting ``python -c code`` (in the repository) to its exit."""
    import subprocess

    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e2e_env(), check=True, capture_output=True)
    return time.perf_counter() - started


def e2e_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": str(ROOT), "VALLEY_OFFLINE": "1"}


def run_e2e(root: Path) -> dict[str, float]:
    """``valley search mlp-rough --dataset digits --max-epochs 1``: wall, first trial line, disk (MB)."""
    import re
    import subprocess

    folder = root / "results" / f"e2e-{next(_RUNS)}"
    command = [sys.executable, "-m", "search.cli", "search", "mlp-rough", "--dataset", "digits", "--max-epochs",
               "1", "--num-cpus", "2", "--storage", str(folder.parent), "--name", folder.name]
    started, first = time.perf_counter(), float("nan")
    with subprocess.Popen(command, cwd=ROOT, env=e2e_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as run:
        for line in run.stdout:
            if first != first and re.match(r"\[\s*1/", line):
                first = time.perf_counter() - started
    wall = time.perf_counter() - started
    assert run.returncode == 0, f"valley search exited with {run.returncode}"
    disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    return {"wall": wall, "first": first, "disk": disk}


def end_to_end(rounds: int, max_wait: float) -> None:
    """Rounds of (bare, Ray's start-up, valley search), each in fresh processes; a table of medians."""
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="valley-e2e-") as tmp:
        for round_ in range(rounds):
            wait_for_quiet(max_wait)
            bare, ray_start = python(E2E_BARE), python(E2E_RAY)
            wait_for_quiet(max_wait)
            runs.append({"bare": bare, "ray": ray_start, **run_e2e(Path(tmp))})
            print(f"  e2e round {round_ + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(table([{"end to end (median of rounds)": "valley search mlp-rough --dataset digits --max-epochs 1",
                  "bare s": median["bare"], "ray start s": median["ray"], "valley s": median["wall"],
                  "ratio vs bare": median["wall"] / median["bare"],
                  "valley - bare - ray start s": median["wall"] - median["bare"] - median["ray"],
                  "first result s": median["first"], "first - ray start s": median["first"] - median["ray"],
                  "disk MB": median["disk"]}]))
    print("goals: valley - bare - ray start <= 2 s; first - ray start <= 1 s; disk <= 60 MB")


def variants(work: Workload, root: Path, quick: bool) -> list[tuple[str, Callable[[], dict[str, float]]]]:
    """(label, run) for every row of one workload; ``bare`` first."""
    runs: list[tuple[str, Callable[[], dict[str, float]]]] = [
        ("bare (Pool(2), LocalReporter)", functools.partial(run_bare, work, {})),
        ("valley (run_search as is)", functools.partial(run_valley, work, root, "valley")),
        ("valley, --no-tensorboard", functools.partial(run_valley, work, root, "valley-no-tb", tensorboard=False)),
    ]
    if work.epochs > 1:
        runs += [  # as is, these trials checkpoint once, at the end (checkpoint_s: 30 s)
            ("valley, --set checkpoint_s=0 (a checkpoint every epoch)",
             functools.partial(run_valley, work, root, "valley-ckpt-every", {"checkpoint_s": 0})),
            ("valley, TUNE_GLOBAL_CHECKPOINT_S=auto",
             _patched(functools.partial(environ, TUNE_GLOBAL_CHECKPOINT_S="auto"),
                      functools.partial(run_valley, work, root, "valley-snapshot-auto"))),
        ]
    if not quick or work.epochs == 1:
        runs.append(("tune defaults (no reuse, all loggers)",
                     functools.partial(run_tune_defaults, work, root, "defaults")))
    return runs


def _patched(context: Callable[[], contextlib.AbstractContextManager],
             run: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    """``run`` inside a fresh ``context()`` each time (a run may be repeated)."""
    def wrapped() -> dict[str, float]:
        with context():
            return run()
    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the fixed-cost workload only")
    parser.add_argument("--workloads", nargs="+", choices=[*sorted(WORKLOADS), "e2e"], default=None)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds (every row once per round); the table shows medians and the range")
    parser.add_argument("--attempts", type=int, default=3,
                        help="runs of a row at most: a run that other jobs disturbed is run again")
    parser.add_argument("--max-others", type=float, default=0.3,
                        help="cores other jobs may use during a run before it counts as disturbed")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="only rows whose label contains one of these words (bare always runs)")
    parser.add_argument("--profile", action="store_true",
                        help="also print each row's CPU seconds per kind of process (driver, raylet, trials...)")
    parser.add_argument("--max-wait", type=float, default=60.0,
                        help="seconds to wait before each run for other jobs to leave the CPUs")
    args = parser.parse_args(argv)
    names = args.workloads or (["fixed"] if args.quick else ["fixed", "5s", "e2e"])
    os.environ.setdefault("VALLEY_OFFLINE", "1")
    from search.manifest import git_commit

    print(f"machine: {machine()}, {time.strftime('%Y-%m-%d')}, commit {git_commit()}", flush=True)
    if "e2e" in names:
        end_to_end(args.repeats, args.max_wait)
        names = [n for n in names if n != "e2e"]
        if not names:
            return
    runs_of: dict[tuple[str, str], list[dict[str, float]]] = {}

    def measure_once(work: Workload, label: str, run: Callable[[], dict[str, float]], round_: int) -> None:
        """Run until one run is undisturbed by other jobs, or ``--attempts`` runs were made."""
        for _ in range(args.attempts):
            wait_for_quiet(args.max_wait)
            with CpuMeter() as meter:
                result = run()
            runs_of.setdefault((work.name, label), []).append(
                {**result, "cpu": meter.mine_s, "others": meter.others_cores, "kinds": meter.by_kind(),
                 "round": round_})
            print(f"  {work.name:<5} {label}: {result['wall']:.2f} s ({result['e2e']:.2f} s end to end, "
                  f"{result['in_trial']:.1f} s in trials, {result['train']:.1f} s training), {meter.mine_s:.1f} "
                  f"CPU s; other jobs used {meter.others_cores:.2f} cores meanwhile", file=sys.stderr, flush=True)
            if meter.others_cores <= args.max_others:
                break

    with tempfile.TemporaryDirectory(prefix="valley-overhead-") as tmp:
        plans = []
        for name in names:
            (Path(tmp) / name).mkdir()
            runs = variants(WORKLOADS[name], Path(tmp) / name, args.quick)
            if args.variants:
                runs = [runs[0]] + [(label, run) for label, run in runs[1:]
                                    if any(word in label for word in args.variants)]
            plans.append((WORKLOADS[name], runs))
        import ray

        from search.options import SearchOptions
        from search.ray_start import start_ray

        # Rounds: every row once per round, so that a machine whose speed drifts (a VM's host is
        # shared) slows each row alike; ratios are paired within a round. Bare runs before Ray starts,
        # so Ray's daemons never run beside it; Ray restarts each round (its start is not counted).
        for round_ in range(args.repeats):
            for work, runs in plans:
                for label, run in runs:
                    if label.startswith("bare"):
                        measure_once(work, label, run, round_)
            started = time.perf_counter()
            start_ray(SearchOptions(num_cpus=2))
            print(f"round {round_ + 1}: ray start {time.perf_counter() - started:.1f} s (not counted)", flush=True)
            for work, runs in plans:
                for label, run in runs:
                    if not label.startswith("bare"):
                        measure_once(work, label, run, round_)
            ray.shutdown()

    rows = []
    for work, runs in plans:
        chosen = {label: representative(runs_of[(work.name, label)], args.max_others) for label, _ in runs}
        bare = chosen[runs[0][0]]
        for label, _ in runs:
            best = chosen[label]
            ratio, fixed = paired(runs_of[(work.name, label)], runs_of[(work.name, runs[0][0])], work.trials)
            rows.append({"workload": work.name, "variant": label, "trials": work.trials, "wall s": best["wall"],
                         "per-trial s": best["wall"] / work.trials, "ratio vs bare": ratio,
                         "fixed s/trial": fixed, "range s": best["range"],
                         "e2e s": best["e2e"],
                         "CPU s": best["cpu"], "CPU ratio": best["cpu"] / bare["cpu"],
                         "train s": best["train"], "in-trial s": best["in_trial"],
                         "idle slot s": 2 * best["wall"] - best["in_trial"],
                         "others' cores": best["others"]})
    print(table(rows, ["workload", "variant", "trials", "wall s", "range s", "per-trial s", "ratio vs bare",
                       "fixed s/trial", "e2e s", "CPU s", "CPU ratio", "train s", "in-trial s", "idle slot s", "others' cores"]))
    if args.profile:
        for row in rows:
            kinds = representative(runs_of[(row["workload"], row["variant"])], args.max_others)["kinds"]
            shown = ", ".join(f"{k} {v:.1f}" for k, v in kinds.items() if v >= 0.05)
            print(f"CPU s by process, {row['workload']} / {row['variant']}: {shown}")
    print("wall s: Tuner.fit() (or the pool), the median undisturbed run (range s: fastest-slowest of those); "
          "ratio vs bare and fixed s/trial = (wall - bare) / trials: medians over the rounds of each round's "
          "pair (the row's last run and bare's in that round); e2e s: the whole "
          "run_search (data, manifest, fit, trials.csv), Ray already started; CPU s: this process and its "
          "descendants (Ray's daemons and workers) during the run; train s: sum of reported epoch_s (training and "
          "evaluation); in-trial s: sum of each trial's time from its start to its last report (Tune's "
          "time_total_s; for bare, the time inside train()); idle slot s: 2 x wall - in-trial, time the 2 "
          "slots spent outside any trial (start-up, scheduling, teardown); others' cores: what other jobs on the "
          "machine used meanwhile (a run above --max-others is retried; the least disturbed is shown)")


def paired(results: list[dict[str, Any]], bare: list[dict[str, Any]], trials: int) -> tuple[float, float]:
    """Median over rounds of (wall / bare wall) and of (wall - bare wall) / trials, each round's last runs."""
    mine = {r["round"]: r["wall"] for r in results}  # the last run of a round is its accepted one
    base = {r["round"]: r["wall"] for r in bare}
    rounds = sorted(set(mine) & set(base))
    return (statistics.median(mine[r] / base[r] for r in rounds),
            statistics.median((mine[r] - base[r]) / trials for r in rounds))


def representative(results: list[dict[str, Any]], max_others: float) -> dict[str, Any]:
    """The median-wall run among the undisturbed ones (else the least disturbed run), with their range."""
    calm = [r for r in results if r["others"] <= max_others] or [min(results, key=lambda r: r["others"])]
    calm = sorted(calm, key=lambda r: r["wall"])
    walls = [r["wall"] for r in calm]
    return {**calm[(len(calm) - 1) // 2], "range": f"{walls[0]:.1f}-{walls[-1]:.1f}" if len(walls) > 1 else "-"}


if __name__ == "__main__":
    main()
