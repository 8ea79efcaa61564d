"""``valley.json``: how an experiment was made, written beside its results (format: analysis.format)."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from analysis import format as fmt

if TYPE_CHECKING:  # git_commit is imported where only torch is installed (benchmarks on the GPU machine)
    from search.options import SearchOptions
    from spaces import Space
    from trainables.data import Splits
    from trainables.family import Family


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


def files_folder(dataset: str, opts: SearchOptions) -> str | None:
    """The folder a data set read from files was read from, absolute: --data-dir's, else VALLEY_DATA's or the
    default, which `valley resume` from another shell would not know (None for a data set made here)."""
    from trainables.data import DATASETS, data_folder

    return str(data_folder(opts.data_dir).absolute()) if DATASETS[dataset].reads_folder else None


def write_manifest(folder: Path, space: Space, family: Family, opts: SearchOptions, dataset: str, epochs: int,
                   data: Splits, status: str) -> None:
    """The manifest and a copy of the space file."""
    from search.options import total_trials
    from trainables.report import environment

    fmt.write_manifest(folder, {
        "space": space.name, "space_file": space.source, "family": space.family,
        "metric": space.metric, "mode": space.mode, "task": family.task.as_manifest(),
        "dataset": dataset, "max_epochs": epochs, "grid": [dict(row) for row in space.grid],
        "options": dataclasses.asdict(opts), "data_fingerprint": data.fingerprint,
        # a running search's folder holds only the trials begun: the dashboard's denominator (none under a
        # budget, which may stop it sooner)
        "trials_planned": None if opts.budget_epochs or opts.budget_s else total_trials(space, opts),
        "data": {"sizes": list(data.sizes()), "split": data.split_rule, "notes": list(data.notes),
                 **({"folder": files} if (files := files_folder(dataset, opts)) else {})}, "git_commit": git_commit(),
        "command": sys.argv, "environment": environment(), "status": status,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **({"driver": fmt.driver()} if status == fmt.RUNNING else {}),
    })
    import yaml

    source = Path(space.source)  # a space made in Python (spaces.parse_space) has no file: its document, then
    (folder / fmt.SPACE_COPY).write_text(source.read_text() if source.is_file()
                                         else yaml.safe_dump(space.as_doc(), sort_keys=False))
