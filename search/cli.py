"""The ``valley`` command line.

Every refusal is one line, ``valley: error: <what was wrong and how to fix it>``,
with exit status 2; a search that was interrupted exits with status 130.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs, values read as YAML (``hidden=[100,200]``, ``lr=1e-3``)."""
    import yaml

    from spaces import Loader

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes key=value, got {item!r}; e.g. --set lr=1e-3")
        overrides[key.strip()] = yaml.load(value, Loader=Loader)  # noqa: S506 - a SafeLoader
    return overrides


def add_search_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="data set to train on (default: the space's); see `valley datasets`")
    parser.add_argument("--data-dir", help="folder holding the data set's files (default ~/.cache/valley/data)")
    parser.add_argument("--max-epochs", type=int, help="epochs per trial (default: the space's, else 10)")
    parser.add_argument("--samples", type=int, help="passes over the grid, or Optuna trials (default 1 / 20)")
    parser.add_argument("--search", choices=["random", "optuna"], default="random",
                        help="random: Tune's grid and random sampling; optuna: TPE")
    parser.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                        help="asha stops poor trials early on the space's metric")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial can stop")
    parser.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: keep 1 in this many")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions pack trials on a GPU")
    parser.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as resources allow)")
    parser.add_argument("--max-failures", type=int, default=1, help="retries of a crashed trial")
    parser.add_argument("--seed", type=int, default=0, help="seeds the searcher and every trial")
    parser.add_argument("--name", help="experiment folder name (default: SPACE-DATASET-TIME)")
    parser.add_argument("--storage", default="results", help="results folder (default results/)")
    parser.add_argument("--address", help="Ray cluster address, e.g. auto (default: a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a config key for every trial, e.g. --set layers=5")


def options_from(args: argparse.Namespace, **changes: Any) -> Any:
    from search.run import SearchOptions

    values = dict(
        dataset=args.dataset, data_dir=args.data_dir, max_epochs=args.max_epochs, samples=args.samples,
        search=args.search, scheduler=args.scheduler, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
        max_failures=args.max_failures, seed=args.seed, name=args.name, storage=args.storage,
        address=args.address, num_cpus=args.num_cpus, overrides=parse_set(args.set))
    values.update(changes)
    return SearchOptions(**values)


def cmd_search(args: argparse.Namespace) -> int:
    from spaces import load_space

    space = load_space(args.space)
    from search.run import run_search

    folder = run_search(space, options_from(args))
    return exit_status(folder)


def cmd_quickstart(args: argparse.Namespace) -> int:
    """The offline first run: the valley of the MLP grid, then telling the time, then one report."""
    import time

    from analysis.report import write_report
    from search.run import SearchOptions, run_search
    from spaces import load_space

    folder = Path(args.storage) / f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    base = SearchOptions(storage=str(folder), scheduler="asha", num_cpus=args.num_cpus)
    print("valley quickstart 1/2: the reference MLP grid on digits; where is the valley?", flush=True)
    run_search(load_space("mlp-rough"), dataclasses.replace(base, name="mlp-rough", dataset="digits",
                                                            max_epochs=10))
    print("\nvalley quickstart 2/2: tell the time from 64x64 synthetic clocks, every label encoding "
          f"(one seed, a small_cnn of width 8, {args.clock_epochs} epochs: a demo; the study is plan-clock)",
          flush=True)
    clocks = run_search(load_space("clock-encodings"), dataclasses.replace(
        base, name="clock-encodings", dataset="clocks-small", max_epochs=args.clock_epochs,
        scheduler="fifo", overrides={"seed": 0, "width": 8}))
    print("\n" + csd_by_encoding(clocks))
    status = max(exit_status(folder / "mlp-rough"), exit_status(clocks))
    print(f"clock report: {write_report(clocks)}")
    print(f"report: {write_report(folder / 'mlp-rough')}")  # the valley, last: what to open first
    return status


def csd_by_encoding(folder: Path) -> str:
    """Test CSD (minutes) and accuracies per label encoding of a clock experiment, best first."""
    from analysis.load import load_experiment

    trials, _ = load_experiment(folder)
    columns = {"config/encoding": "encoding", "config/csd_weight": "csd_weight", "test_csd": "CSD (min)",
               "test_csd_median": "median", "test_exact_acc": "exact", "test_hour_acc": "hour",
               "test_minute_acc": "minute", "epochs": "epochs"}
    table = trials[[c for c in columns if c in trials]].rename(columns=columns).sort_values("CSD (min)")
    return "test CSD by encoding:\n" + table.to_string(index=False, na_rep="-", float_format="{:.3f}".format)


def cmd_resume(args: argparse.Namespace) -> int:
    from search.resume import resume

    return exit_status(resume(Path(args.experiment), retry_failed=args.retry_failed))


def cmd_plan(args: argparse.Namespace) -> int:
    from search.plan import load_plan, reopen_plan, run_plan, start_plan

    target = Path(args.plan).expanduser()
    if (target / "plan.json").exists():
        run = reopen_plan(target)
    else:
        run = start_plan(load_plan(args.plan), options_from(args))
    folder = run_plan(run)
    import json

    return EXIT_INTERRUPTED if json.loads((folder / "plan.json").read_text())["status"] != "completed" else 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from search.transfer import transfer

    return exit_status(transfer(Path(args.experiment), args.top, options_from(args)))


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

    started = time.perf_counter()
    folder = clockgen.write(Path(args.out), per_minute=args.per_minute, size=args.size, seed=args.seed,
                            preset=args.preset)
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
    from analysis.load import read_manifest

    return EXIT_INTERRUPTED if read_manifest(folder).get("status") == "interrupted" else 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from spaces import builtin_spaces, load_space

    for name in builtin_spaces():
        space = load_space(name)
        size = f"{space.grid_size()} grid points" if not space.is_sampled() else "sampled"
        print(f"{name:<18} {space.family:<6} {size:<16} {space.description}")
    from search.plan import builtin_plans, load_plan

    print("\nplans (valley plan NAME):")
    for name in builtin_plans():
        plan = load_plan(name)
        stages = " -> ".join(stage.name for stage in plan.stages)
        print(f"{name:<24} {stages:<40} {plan.description}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from trainables.data import DATASETS, default_data_dir, is_available

    folder = Path(args.data_dir) if args.data_dir else default_data_dir()
    print(f"data folder: {folder}")
    for name, dataset in DATASETS.items():
        shape = "x".join(map(str, dataset.shape))
        sizes = "/".join(f"{n:,}" for n in dataset.sizes)
        where = "offline" if is_available(name, folder) else "needs download"
        print(f"{name:<14} {shape:<9} {sizes:<22} {where:<15} {dataset.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="valley", description="Rough-then-fine hyperparameter search on Ray Tune")
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="run one search space as a Ray Tune experiment")
    search.add_argument("space", help="a built-in space (see `valley spaces`) or a YAML file")
    add_search_options(search)
    search.set_defaults(run=cmd_search)

    quick = commands.add_parser("quickstart", help="the offline first run: the MLP valley on digits, "
                                                   "then clock encodings, then a report")
    quick.add_argument("--storage", default="results")
    quick.add_argument("--clock-epochs", type=int, default=5, help="epochs per clock trial (default 5)")
    quick.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    quick.set_defaults(run=cmd_quickstart)

    resume = commands.add_parser("resume", help="continue an interrupted experiment")
    resume.add_argument("experiment", help="the experiment folder, e.g. results/mlp-rough-digits-...")
    resume.add_argument("--retry-failed", action="store_true",
                        help="also re-run failed trials from their last checkpoint (kept as they are by default)")
    resume.set_defaults(run=cmd_resume)

    plan = commands.add_parser("plan", help="run a staged plan (rough -> valley -> fine -> confirm), "
                                             "or continue one given its folder")
    plan.add_argument("plan", help="a built-in plan (see `valley spaces`), a plan YAML, or a plan folder")
    add_search_options(plan)
    plan.set_defaults(run=cmd_plan)

    transfer = commands.add_parser("transfer", help="re-run the best configs of an experiment on another data set")
    transfer.add_argument("experiment", help="an experiment or plan folder")
    transfer.add_argument("--top", type=int, default=3, help="how many of the best configurations")
    add_search_options(transfer)
    transfer.set_defaults(run=cmd_transfer)

    report = commands.add_parser("report", help="write one self-contained HTML report of an experiment or plan")
    report.add_argument("experiment", help="an experiment or plan folder")
    report.add_argument("--out", help="the HTML file (default: EXPERIMENT/report.html)")
    report.add_argument("--no-images", action="store_true", help="skip PNG/SVG export of each figure")
    report.set_defaults(run=cmd_report)

    dashboard = commands.add_parser("dashboard", help="serve a local page of every experiment and plan")
    dashboard.add_argument("--results", default="results", help="the results folder (default results/)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1 only)")
    dashboard.add_argument("--port", type=int, default=8050)
    dashboard.set_defaults(run=cmd_dashboard)

    data = commands.add_parser("data", help="make data sets")
    kinds = data.add_subparsers(dest="kind", required=True)
    clocks = kinds.add_parser("clocks", help="synthetic analog clocks in the course format "
                                             "(images.npy uint8 N x S x S, labels.npy int64 N x 2)")
    clocks.add_argument("--out", required=True, help="folder to write images.npy and labels.npy into")
    clocks.add_argument("--per-minute", type=int, default=25, help="images per minute of the dial (25)")
    clocks.add_argument("--size", type=int, default=150, help="pixels, square (150)")
    clocks.add_argument("--seed", type=int, default=0)
    clocks.add_argument("--preset", default="default", help="easy, default or hard")
    clocks.add_argument("--sheet", action="store_true", help="also write contact_sheet.png")
    clocks.set_defaults(run=cmd_data_clocks)

    spaces = commands.add_parser("spaces", help="list the built-in search spaces and plans")
    spaces.set_defaults(run=cmd_spaces)

    datasets = commands.add_parser("datasets", help="list data sets and whether each is available offline")
    datasets.add_argument("--data-dir")
    datasets.set_defaults(run=cmd_datasets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search.run import SearchError
    from spaces import SpaceError
    from trainables.config import ConfigError
    from trainables.data import DataError

    try:
        return args.run(args)
    except (SearchError, SpaceError, ConfigError, DataError, ValueError) as err:
        print(f"valley: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("valley: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
