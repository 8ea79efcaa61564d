"""BOHB's searcher, able to take back a trial that its saved state does not know.

Tune saves the searcher with the experiment, but the trial list it saves with it can be newer: a
trial suggested after the searcher's snapshot comes back on ``valley resume`` as a trial the
restored ``TuneBOHB`` never suggested, and its first result crashed the resumed search
(``KeyError`` in ``TuneBOHB.to_wrapper``). Its parameters are in its config, which every result
carries; valley reads them back from there and says so.
"""
from __future__ import annotations

from typing import Any

from ray.tune.search.bohb import TuneBOHB


class ValleyBOHB(TuneBOHB):
    """``TuneBOHB`` that adopts a restored trial it did not suggest, from the config in its results."""

    def __init__(self, quiet: bool = False, **bohb: Any) -> None:
        super().__init__(**bohb)
        self.quiet = quiet
        self.adopted: set[str] = set()  # trials whose parameters were read back from their results

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.adopt(trial_id, result)
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
