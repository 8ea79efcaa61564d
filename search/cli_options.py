"""The command line's shared pieces: exit statuses, ``--set`` and the flags of ``SearchOptions``."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_ALL_FAILED = 3  # a search ran, and every trial failed or diverged
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A command-line value no command can use."""


FLAG_KEYS = {"max_epochs": "use --max-epochs N", "dataset": "use --dataset NAME",
             "family": "a space trains one family; write a space for another (see `valley spaces`)"}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs, values read as YAML (``hidden=[100,200]``, ``lr=1e-3``)."""
    import yaml

    from spaces import Loader

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set takes key=value, got {item!r}; e.g. --set lr=1e-3")
        if key.strip() in FLAG_KEYS:  # the search sets these for every trial, over any --set
            raise UsageError(f"--set {key.strip()}: {FLAG_KEYS[key.strip()]}")
        key, value = key.strip(), yaml.load(value, Loader=Loader)  # noqa: S506 - a SafeLoader
        if key in overrides and overrides[key] != value:
            raise UsageError(f"--set {key} given twice, as {overrides[key]!r} and {value!r}; give it once")
        overrides[key] = value
    return overrides


def weights_kept(text: str) -> int | str:
    """``--keep-weights``: a whole number >= 0, or ``all``."""
    if text.strip().lower() == "all":
        return "all"
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise UsageError(f"--keep-weights takes a whole number >= 0 or all, got {text!r}; e.g. --keep-weights 10")
    return count


def add_search_options(parser: argparse.ArgumentParser) -> None:
    """The flags of ``SearchOptions``; their defaults are read from it, never repeated here."""
    from search.options import DEFAULTS, LOGS, MLFLOW_INSTALL, SCHEDULERS, SEARCHERS

    d = DEFAULTS  # for the help texts: each flag defaults to None, so that `given` sees what was typed
    parser.add_argument("--dataset", help="data set to train on (default: the space's); see `valley datasets`")
    parser.add_argument("--data-dir", help="folder holding the data set's files (default ~/.cache/valley/data)")
    parser.add_argument("--max-epochs", type=int, help="epochs per trial (default: the space's, else 10)")
    parser.add_argument("--samples", type=int, help="passes over the grid, each with its own seed, or Optuna "
                                                    "trials (default 1 / 20)")
    parser.add_argument("--search", choices=SEARCHERS,
                        help=f"random: Tune's grid and random sampling; optuna: TPE; bohb: BOHB (with --scheduler "
                             f"hyperband) (default {d.search})")
    parser.add_argument("--scheduler", choices=SCHEDULERS,
                        help=f"asha stops poor trials early on the space's metric (default {d.scheduler})")
    parser.add_argument("--grace-period", type=int,
                        help=f"ASHA: epochs before a trial can stop (default {d.grace_period})")
    parser.add_argument("--reduction-factor", type=float,
                        help=f"ASHA: keep 1 in this many (default {d.reduction_factor:g})")
    parser.add_argument("--cpus-per-trial", type=float, help=f"(default {d.cpus_per_trial:g})")
    parser.add_argument("--gpus-per-trial", type=float,
                        help=f"fractions pack trials on a GPU (default {d.gpus_per_trial:g})")
    parser.add_argument("--max-concurrent", type=int,
                        help=f"trials at once (default {d.max_concurrent}: as resources allow)")
    parser.add_argument("--max-failures", type=int, help=f"retries of a crashed trial (default {d.max_failures})")
    parser.add_argument("--seed", type=int, help=f"seeds the searcher and every trial (default {d.seed})")
    parser.add_argument("--name", help="experiment folder name (default: SPACE-DATASET-TIME)")
    parser.add_argument("--storage", help=f"results folder (default {d.storage}/)")
    parser.add_argument("--address", help="Ray cluster address, e.g. auto (default: a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--progress-every", dest="progress_s", type=float, metavar="SECONDS",
                        help="seconds between progress lines when the output is a file or a pipe "
                             f"(default {d.progress_s:g}; on a terminal the board is redrawn in place)")
    parser.add_argument("--quiet", action="store_true",
                        help="print nothing while it runs (no board, no per-trial lines); errors and the exit "
                             "status still tell how it ended")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                        help="write no TensorBoard event files (written by default: tensorboard --logdir results/EXP)")
    parser.add_argument("--log", action="append", default=[], choices=LOGS,
                        help=f"also record every trial in MLflow (install with {MLFLOW_INSTALL!r})")
    parser.add_argument("--mlflow-uri", help="--log mlflow: the tracking URI, e.g. sqlite:///mlflow.db or "
                                             "http://host:5000 (default: MLFLOW_TRACKING_URI, else MLflow's own)")
    parser.add_argument("--keep-weights", metavar="N|all",
                        help=f"finished trials that keep their best weights once the search completes: the best N "
                             f"by the space's metric, or all (default {d.keep_weights}); the others keep their "
                             f"metrics, learning curves and test predictions")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fix a config key for every trial, e.g. --set layers=5")


def options_from(args: argparse.Namespace) -> Any:
    """``SearchOptions`` from the flags of ``add_search_options`` (each flag is the field of that name)."""
    from search.options import SearchOptions

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchOptions)
              if getattr(args, f.name, None) is not None}
    if values.get("keep_weights") is not None:
        values["keep_weights"] = weights_kept(values["keep_weights"])
    if values.get("data_dir"):  # as valley.json keeps it for `valley resume` from anywhere: ~ expanded, absolute
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().absolute())
    return SearchOptions(**{**values, "log": tuple(dict.fromkeys(args.log)), "overrides": parse_set(args.set)})


def given(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The options of ``parser`` given on the command line (each one's value differs from its default)."""
    return [action.option_strings[-1] for action in parser._actions
            if action.option_strings and action.dest != "help"
            and getattr(args, action.dest, action.default) != action.default]
