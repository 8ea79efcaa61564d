"""What each ``valley`` command does, given its parsed arguments; returns the exit status."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from search.cli_options import EXIT_ALL_FAILED, EXIT_INTERRUPTED, UsageError, options_from, weights_kept


# What transfer fixes for every configuration it re-trains.
TRANSFER_FIXED = ("--search", "--samples", "--scheduler", "--grace-period", "--reduction-factor")


def cmd_search(args: argparse.Namespace) -> int:
    from spaces import load_space

    space = load_space(args.space)
    from search.run import run_search

    opts = options_from(args)
    for flag, readers in (("--grace-period", ("asha",)), ("--reduction-factor", ("asha", "hyperband"))):
        if flag in args.given and opts.scheduler not in readers:  # any other scheduler would ignore it
            raise UsageError(f"{flag} is read only by --scheduler {' or '.join(readers)}, and this search runs "
                             f"{opts.scheduler}; add --scheduler {readers[0]} or leave out {flag}")
    folder = run_search(space, opts)
    return exit_status(folder)


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The offline first run: the valley of the MLP grid, then telling the time, then one report."""
    import time

    from analysis.report import write_report
    from search.run import SearchOptions, run_search
    from spaces import load_space

    if args.clock_epochs < 1:  # said before the MLP grid trains, not after it
        raise UsageError(f"--clock-epochs must be at least 1, got {args.clock_epochs}")
    folder = Path(args.storage).resolve() / f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    base = SearchOptions(storage=str(folder), scheduler="asha", num_cpus=args.num_cpus)
    print("valley quickstart 1/2: the reference MLP grid on digits; where is the valley?", flush=True)
    run_search(load_space("mlp-rough"), dataclasses.replace(base, name="mlp-rough", dataset="digits",
                                                            max_epochs=10))
    if exit_status(folder / "mlp-rough") == EXIT_INTERRUPTED:  # Ctrl-C stops the quickstart, not only its search
        return EXIT_INTERRUPTED
    print("\nvalley quickstart 2/2: tell the time from 64x64 synthetic clocks, every label encoding "
          f"(one seed, a small_cnn of width 8, {args.clock_epochs} epochs: a demo; the study is plan-clock)",
          flush=True)
    clocks = run_search(load_space("clock-encodings"), dataclasses.replace(
        base, name="clock-encodings", dataset="clocks-small", max_epochs=args.clock_epochs,
        scheduler="fifo", overrides={"seed": 0, "width": 8}))
    status = max(exit_status(folder / "mlp-rough"), exit_status(clocks))
    if status == EXIT_INTERRUPTED:  # Ctrl-C in the clocks: their table would read as the answer
        print(f"\nthe clock encodings were interrupted: `valley resume {clocks}` trains the rest; their reports:")
    else:
        print("\n" + by_configuration(clocks))
    print(f"clock report: {write_report(clocks)}")
    print(f"report: {write_report(folder / 'mlp-rough')}")  # the valley, last: what to open first
    return status


def by_configuration(folder: Path) -> str:
    """The test metrics of every trial of an experiment, by what its configurations vary, best first."""
    from analysis.load import load

    experiment = load(folder)
    trials, task = experiment.trials, experiment.task
    varied = [c for c in trials.columns if c.startswith("config/") and c != "config/variant"
              and trials[c].astype(str).nunique(dropna=False) > 1]
    metrics = [f"test_{m}" for m in task.metrics if f"test_{m}" in trials]
    table = trials[[*varied, *metrics, "epochs"]].rename(columns=lambda c: c.removeprefix("config/"))
    if task.test_metric in trials:
        table = table.sort_values(task.test_metric, ascending=task.mode == "min")
    return (f"test metrics by configuration ({task.test_metric}: {'lower' if task.mode == 'min' else 'higher'} "
            "is better):\n" + table.to_string(index=False, na_rep="-", float_format="{:.3f}".format))


def cmd_resume(args: argparse.Namespace) -> int:
    from analysis.format import PLAN_STATE
    from search.resume import resume

    folder = Path(args.experiment).expanduser()
    keep = None if args.keep_weights is None else weights_kept(args.keep_weights)
    if (folder / PLAN_STATE).exists():  # a plan goes on where it stopped, as `valley plan FOLDER` does
        for flag, given in (("--retry-failed", args.retry_failed), ("--keep-weights", keep is not None)):
            if given:
                raise UsageError(f"{flag} applies to one experiment; give a stage's folder inside the plan, "
                                 f"e.g. `valley resume {folder / 'fine'} {flag}{' N' * (flag == '--keep-weights')}`")
        return plan_status(run_plan_of(folder))
    done = resume(folder, retry_failed=args.retry_failed, keep_weights=keep)
    if (done.parent / PLAN_STATE).exists():  # it ended "completed", its plan still running, the next stage not run
        print(f"valley: {done.name} is a stage of the plan in {done.parent}; `valley plan {done.parent}` continues "
              "the plan", flush=True)
    return exit_status(done)


def cmd_plan(args: argparse.Namespace) -> int:
    from analysis.format import PLAN_STATE
    from search.plans import load_plan, run_plan, start_plan
    from search.plans.budget import Budget
    from search.plans.format import STAGE_OPTIONS

    target = Path(args.plan).expanduser()
    if (target / PLAN_STATE).exists():
        if args.budget:
            raise UsageError(f"a plan's budget is fixed when it starts; continue it with `valley plan {target}` "
                             "and no --budget")
        given = [flag for flag in args.given if flag != "--quiet"]
        if given:  # it goes on with the options it started with, which plan.json holds
            raise UsageError(f"a plan continues with the options it started with; continue it with "
                             f"`valley plan {target}` and no {', '.join(given)}")
        return plan_status(run_plan_of(target, quiet=args.quiet))
    budget = Budget.parse(args.budget) if args.budget else None
    plan = load_plan(args.plan, tuple(args.stage))
    for stage in plan.stages:  # an option a stage sets itself would be overruled by it, without a word
        for key in STAGE_OPTIONS:
            flag = f"--{key.replace('_', '-')}"
            if flag in args.given and stage.get(key) is not None:
                raise UsageError(f"{flag}: stage {stage.name} of {plan.source} sets its own ({key}: "
                                 f"{stage.get(key)}); leave out {flag}, or give --stage {stage.name}.{key}=VALUE")
    return plan_status(run_plan(start_plan(plan, options_from(args), budget=budget)))


def run_plan_of(folder: Path, quiet: bool = False) -> Path:
    """Continue the plan in ``folder``: stages that completed are not re-run."""
    from search.plans import reopen_plan, run_plan

    return run_plan(reopen_plan(folder, quiet=quiet))


def plan_status(folder: Path) -> int:
    from analysis.format import COMPLETED, PLAN_STATE, read_state

    return EXIT_INTERRUPTED if read_state(folder / PLAN_STATE)["status"] != COMPLETED else 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from search.transfer import transfer

    ignored = [flag for flag in args.given if flag in TRANSFER_FIXED]
    if ignored:
        raise UsageError(f"transfer re-trains each configuration once, as it was (random, one sample, fifo); "
                         f"leave out {', '.join(ignored)}")
    from trainables.config import TrainConfig

    opts = options_from(args)
    changed = [key for key in opts.overrides if key not in TrainConfig.RUN_KEYS]
    if changed:
        raise UsageError(f"transfer re-trains each configuration verbatim, and --set {changed[0]}=... would change it; "
                         f"leave it out (--set takes only how a trial runs: {', '.join(TrainConfig.RUN_KEYS)})")
    return exit_status(transfer(Path(args.experiment), args.top, opts))


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report

    print(write_report(Path(args.experiment), out=Path(args.out) if args.out else None,
                       images=not args.no_images))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from analysis.dashboard import serve

    serve(Path(args.results), host=args.host, port=args.port)
    return 0


def cmd_data_clocks(args: argparse.Namespace) -> int:
    import time

    from trainables import clockgen

    if not 0 <= args.seed < 2**32:  # NumPy's generator says only "expected non-negative integer"
        raise UsageError(f"--seed must be a whole number from 0 to {2**32 - 1}, got {args.seed}")
    started = time.perf_counter()
    try:
        folder = clockgen.write(Path(args.out), per_minute=args.per_minute, size=args.size, seed=args.seed,
                                preset=args.preset, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:  # clockgen states the rule and the value (a size < 16, files there)
        raise UsageError(str(err)) from None
    except OSError as err:
        raise UsageError(f"cannot write the clocks to {args.out} ({err.strerror or err}); pass --out with a "
                         "folder you can write") from None
    n = 720 * args.per_minute
    print(f"{n:,} clocks of {args.size}x{args.size} ({args.preset}) in {time.perf_counter() - started:.1f} s: "
          f"{folder / 'images.npy'}, {folder / 'labels.npy'}")
    if args.sheet:
        import numpy as np

        images, labels = np.load(folder / "images.npy"), np.load(folder / "labels.npy")
        clockgen.contact_sheet(images, labels, folder / "contact_sheet.png")
        print(f"contact sheet: {folder / 'contact_sheet.png'}")
    return 0


def exit_status(folder: Path) -> int:
    """130 for an interrupted search; 3 for one whose every trial failed or diverged; else 0."""
    import pandas as pd

    from analysis.format import FAILED, INTERRUPTED, read_manifest

    if read_manifest(folder).get("status") == INTERRUPTED:
        return EXIT_INTERRUPTED
    try:
        statuses = pd.read_csv(folder / "trials.csv", usecols=["status"])["status"]
    except (OSError, ValueError):
        return 0
    return EXIT_ALL_FAILED if len(statuses) and statuses.isin(FAILED).all() else 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from spaces import builtin_spaces, load_space

    for name in builtin_spaces():
        space = load_space(name)
        n = space.grid_size()
        size = f"{n} grid point{'' if n == 1 else 's'}" if not space.is_sampled() else "sampled"
        print(f"{name:<18} {space.family:<6} {size:<16} {space.description}")
    from search.plans import builtin_plans, load_plan

    print("\nplans (valley plan NAME):")
    for name in builtin_plans():
        plan = load_plan(name)
        stages = " -> ".join(stage.name for stage in plan.stages)
        print(f"{name:<24} {stages:<40} {plan.description}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    """Every data set: shape, split sizes, whether it loads offline. Given --data-dir, a data set that reads
    its files from there (the course's clocks, Fashion-MNIST's and CIFAR-10's files) is described as a search
    would read and split them, or said to be unusable and why."""
    from search.data_check import load_data
    from search.options import SearchError
    from trainables.data import DATASETS, DataError, data_folder, is_available

    folder = data_folder(args.data_dir)
    print(f"data folder: {folder}")
    for name, dataset in DATASETS.items():
        shape, sizes, description = dataset.shape, dataset.sizes, dataset.description
        where = "offline" if is_available(name, folder) else "needs download"
        if args.data_dir and dataset.reads_folder and where == "offline":
            try:
                splits = load_data(name, str(folder))  # as a search reads and checks it; never downloads here
            except (DataError, SearchError) as err:
                where, description = "unusable", str(err)
            else:
                shape, sizes = splits.input_shape, splits.sizes()
                description = (f"{sum(sizes):,} {'clocks' if dataset.task == 'clock' else 'images'} from "
                               f"{folder / dataset.subdir}, {splits.split_rule}")
        sizes_text = "/".join(f"{n:,}" for n in sizes)
        print(f"{name:<14} {'x'.join(map(str, shape)):<9} {sizes_text:<22} {where:<15} {description}")
    return 0
