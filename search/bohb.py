"""BOHB's searcher, able to take back a trial that its saved state does not know.

Tune saves the searcher with the experiment, but the trial list it saves with it can be newer: a
trial suggested after the searcher's snapshot comes back on ``valley resume`` as a trial the
restored ``TuneBOHB`` never suggested, and its first result crashed the resumed search
(``KeyError`` in ``TuneBOHB.to_wrapper``). Its parameters are in its config, which every result
carries; valley reads them back from there and says so.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from ray.tune.search.bohb import TuneBOHB

from search.ray_start import drop_messages

# hpbandster's dump when a sampled point's expected improvement is infinite, line by line
KDE_DUMP = ("sampled vector: ", "data in the KDEs:", "bandwidth of the KDEs:", "l(x) = ", "g(x) = ")


def quiet_kde() -> None:
    """Drop what BOHB's density models print that a user can do nothing about, and only that.

    * statsmodels' ``FutureWarning``, each time a model is fitted, that its KDE's default random
      generator will change (after 0.17 or January 2028);
    * hpbandster's five lines of arrays when a sampled point's expected improvement is infinite (one
      of its two models has not seen a value of a choice; it then takes the point, as its own
      comment says it should), and statsmodels' divide-by-zero ``RuntimeWarning`` on the way there.
    """
    warnings.filterwarnings("ignore", message=r"After 0\.17 or January 2028", category=FutureWarning)
    warnings.filterwarnings("ignore", message="divide by zero encountered in divide", category=RuntimeWarning,
                            module=r"statsmodels\.nonparametric\.kernels")
    for prefix in KDE_DUMP:
        drop_messages("hpbandster", prefix)


class ValleyBOHB(TuneBOHB):
    """``TuneBOHB`` that adopts a restored trial it did not suggest, from the config in its results, and
    draws from a random stream of its own, seeded with ``seed``: hpbandster draws its samples from
    numpy's global generator, which nothing seeded, so ``--seed`` did not repeat a BOHB search (and
    the search moved a notebook's global stream). The stream is saved with the searcher, so a resumed
    search goes on with it."""

    stream: tuple | None = None  # numpy's generator state between draws (None: saved before there was one)

    def __init__(self, quiet: bool = False, **bohb: Any) -> None:
        super().__init__(**bohb)
        quiet_kde()
        self.quiet = quiet
        self.adopted: set[str] = set()  # trials whose parameters were read back from their results
        self.stream = np.random.RandomState(bohb.get("seed")).get_state()

    @contextlib.contextmanager
    def own_stream(self) -> Iterator[None]:
        outer = np.random.get_state()
        if self.stream is None:  # saved by a valley before the stream was its own
            self.stream = np.random.RandomState().get_state()
        np.random.set_state(self.stream)
        try:
            yield
        finally:
            self.stream = np.random.get_state()
            np.random.set_state(outer)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        with self.own_stream():
            return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.adopt(trial_id, result)
        with self.own_stream():
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        self.trial_to_params.setdefault(trial_id, {})  # TuneBOHB deletes the entry, known or not
        super().on_trial_complete(trial_id, result, error)

    def adopt(self, trial_id: str, result: dict[str, Any]) -> None:
        """Record the searched parameters of a trial this searcher does not know, from ``config/...``."""
        if trial_id in self.trial_to_params:
            return
        names = self._space.get_hyperparameter_names()
        self.trial_to_params[trial_id] = {n: result[f"config/{n}"] for n in names if f"config/{n}" in result}
        if not self.adopted and not self.quiet:
            print("valley: note: the BOHB searcher's saved state is older than the trials saved with it; "
                  "trials it does not know are taken back with the parameters in their results", flush=True)
        self.adopted.add(trial_id)
