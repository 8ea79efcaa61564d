"""The options of a search, their checks, the few numbers derived from them, and how a running
search hears Ctrl-C and SIGTERM.

``SearchOptions`` is the one place their defaults live: the command line reads them from
here, and ``valley resume`` and plans rebuild options from a manifest with ``from_dict``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

from spaces import Space

NAME_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SEARCHERS = ("random", "optuna", "bohb")  # Tune's grid and random sampling; Optuna's TPE; TuneBOHB
SCHEDULERS = ("fifo", "asha", "hyperband")  # hyperband: HyperBandForBOHB, the scheduler BOHB needs
MLFLOW_INSTALL = "pip install -e '.[mlflow]'"
LOGS = ("mlflow",)  # --log: where else every trial is recorded (TensorBoard files are written unless switched off)


# Set by the command line when the reader of its output goes away (``valley search ... | head``): a
# search that is running (SEARCHING, set by search.run.fit_and_finish around Tune's fit) then stops as
# Ctrl-C stops it, and a plan starts no further stage (search.cli).
OUTPUT_GONE = threading.Event()
SEARCHING = threading.Event()


@contextlib.contextmanager
def search_signals() -> Iterator[None]:
    """While a search (or the ``valley`` command) runs, SIGTERM (``kill``, ``timeout``, a batch system's
    time limit) ends it as Ctrl-C does: finished trials kept, trials.csv written, 'interrupted', the
    resume command printed (Ray's driver answers SIGTERM with ``sys.exit``, its core worker then with
    a stack dump and an abort, leaving no trials.csv). Afterwards the process's handlers are what they
    were: Tune leaves its own for SIGINT and SIGUSR1 installed, so in a notebook or a program that
    called ``run_search`` the next Ctrl-C went on stopping a search that had ended."""
    if threading.current_thread() is not threading.main_thread():  # Python runs handlers there only
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _as_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: to whoever handles SIGINT now (Tune, during its fit), else as Python's Ctrl-C. A
    program started in the background by a script inherits SIGINT ignored, where SIGTERM passed on as
    SIGINT did nothing: a search went on to its end, a dashboard served on."""
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean the user's input was wrong: each prints one line, exit status 2."""
    from analysis.format import UnreadableState
    from analysis.load import ResultsError
    from search.cli_options import UsageError
    from spaces import SpaceError
    from trainables import FamilyError
    from trainables.config import ConfigError
    from trainables.data import DataError

    return UsageError, SearchError, SpaceError, ConfigError, DataError, FamilyError, ResultsError, UnreadableState


class SearchError(ValueError):
    """A search that cannot start; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    dataset: str | None = None  # None: the space's own
    data_dir: str | None = None
    max_epochs: int | None = None  # None: the space's own, else 10
    samples: int | None = None  # None: 1 pass over the grid, or 20 Optuna (BOHB) trials
    search: str = "random"  # one of SEARCHERS
    scheduler: str = "fifo"  # one of SCHEDULERS
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
    budget_epochs: int | None = None  # stop the search once its trials have trained this many epochs in all
    budget_s: float | None = None  # or once this many seconds have passed (Tune's time_budget_s)
    quiet: bool = False
    progress_s: float = 30.0  # seconds between board lines when the output is not a terminal
    label: str = ""  # what the board calls this search (a plan: its stage and budget)
    tensorboard: bool = True  # event files in every trial folder: `tensorboard --logdir results/EXP`
    log: tuple[str, ...] = ()  # more places to record every trial (LOGS)
    mlflow_uri: str | None = None  # --log mlflow: the tracking URI (None: MLflow's own default)
    keep_weights: int | str = 5  # finished trials that keep their best weights: the best this many, or "all"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchOptions:
        """Options as a manifest or plan.json stored them (JSON lists back to tuples; unknown keys dropped).
        One stored before ``keep_weights`` existed began under the promise that every trial keeps its weights."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kept = {"keep_weights": "all", **{k: v for k, v in values.items() if k in fields}}
        for key in ("warm_points", "warm_rewards", "log"):
            kept[key] = tuple(kept.get(key) or ())
        if kept.get("address") is not None:  # ignored beside --address before it was refused: a plan goes on
            kept["num_cpus"] = None
        return cls(**kept)

    def check(self) -> None:
        """Refuse values no search can run with, naming the flag and the fix."""
        checks = [
            (self.search in SEARCHERS, f"--search must be {' or '.join(SEARCHERS)}, got {self.search!r}"),
            (self.scheduler in SCHEDULERS, f"--scheduler must be {' or '.join(SCHEDULERS)}, got {self.scheduler!r}"),
            (self.reduction_factor > 1, f"--reduction-factor must be > 1, got {self.reduction_factor}"),
            (self.grace_period >= 1, f"--grace-period must be at least 1 epoch, got {self.grace_period}"),
            ((self.search == "bohb") == (self.scheduler == "hyperband"),
             f"--search bohb goes with --scheduler hyperband (BOHB's own), and only it; got --search {self.search} "
             f"--scheduler {self.scheduler}"),
            (self.samples is None or self.samples >= 1, f"--samples must be at least 1, got {self.samples}"),
            (self.cpus_per_trial > 0 and self.gpus_per_trial >= 0,
             f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got {self.cpus_per_trial} and "
             f"{self.gpus_per_trial}"),
            (self.max_failures >= 0,
             f"--max-failures must be >= 0 (retries of a crashed trial), got {self.max_failures}"),
            (self.max_concurrent >= 0,
             f"--max-concurrent must be >= 0 (0: as many as resources allow), got {self.max_concurrent}"),
            (self.num_cpus is None or self.num_cpus >= 1, f"--num-cpus must be at least 1, got {self.num_cpus}"),
            (self.num_cpus is None or self.address is None,  # it was ignored, unsaid
             f"--num-cpus sizes the local Ray a search starts, and --address {self.address} joins a running one, "
             "whose nodes have their own; leave out --num-cpus"),
            (self.budget_epochs is None or self.budget_epochs >= 1,
             f"a budget must be at least 1 trial-epoch, got {self.budget_epochs}"),
            (self.budget_s is None or self.budget_s > 0, f"a time budget must be > 0 seconds, got {self.budget_s}"),
            (set(self.log) <= set(LOGS), f"--log must be {' or '.join(LOGS)}, got {', '.join(self.log)}"),
            (self.keep_weights == "all" or (type(self.keep_weights) is int and self.keep_weights >= 0),
             f"--keep-weights must be a whole number >= 0 or all, got {self.keep_weights!r}"),
            (self.progress_s > 0, f"--progress-every must be > 0 seconds, got {self.progress_s:g}"),
            # NumPy's and Tune's random states take seeds from 0 to 2**32 - 1
            (0 <= self.seed < 2**32, f"--seed must be a whole number from 0 to {2**32 - 1}, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SearchError(message)

    def epochs(self, space: Space) -> int:
        """Epochs per trial: --max-epochs, else the space's, else 10; checked against the grace period."""
        epochs = self.max_epochs if self.max_epochs is not None else space.max_epochs or 10
        if epochs < 1:
            raise SearchError(f"--max-epochs must be at least 1, got {epochs}")
        if self.scheduler == "asha" and self.grace_period > epochs:
            raise SearchError(f"--grace-period ({self.grace_period}) must be <= --max-epochs ({epochs})")
        return epochs


DEFAULTS = SearchOptions()


def check_name(name: str) -> str:
    """``name`` if it can be a folder's name inside the results folder, else a one-line refusal."""
    if not NAME_RULE.match(name):
        raise SearchError(f"--name must be letters, digits, '.', '_' or '-' (at most 100, not starting "
                          f"with a dot), got {name!r}")
    return name


def sets(space: Space, opts: SearchOptions, key: str) -> bool:
    """Whether the user chose ``key``: in the space's params, a grid row, or ``--set``."""
    return key in opts.overrides or key in space.params or any(key in row for row in space.grid)


def sample_count(opts: SearchOptions) -> int:
    """Tune's num_samples: --samples, else 20 Optuna trials or 1 pass over the grid."""
    return opts.samples or (1 if opts.search == "random" else 20)


def total_trials(space: Space, opts: SearchOptions) -> int:
    """Trials the search will run; a --set key replaces its grid, as in ``param_space``."""
    samples = sample_count(opts)
    kept = {k: v for k, v in space.params.items() if k not in opts.overrides}
    return samples if opts.search != "random" else samples * dataclasses.replace(space, params=kept).grid_size()
