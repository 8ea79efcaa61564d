"""Ray's ASHA with its rungs rebuilt from disk when an experiment resumes.

Ray Tune 2.60 saves the searcher's state with the experiment but not the scheduler's
(ray-project/ray#30838): a restored ASHA starts with empty rungs, so the first trials after a
resume are compared against nothing and never stopped. valley replays every restored trial's
results on disk (``result.json``) through the trial's bracket, which records exactly what the
live run recorded: at each result, the highest milestone reached that holds no value yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler


class ValleyASHA(ASHAScheduler):
    """ASHA on ``training_iteration``; a restored trial's results on disk go back into its rungs."""

    def __init__(self, quiet: bool = False, **asha: Any) -> None:
        super().__init__(time_attr="training_iteration", **asha)
        self.quiet = quiet
        self.rebuilt = 0  # restored trials whose results went back into the rungs

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.storage is not None and trial.storage.trial_dir_name:  # restored: its folder has a name
            self.replay(trial)  # its results, also any written after the snapshot it was restored from

    def replay(self, trial: Any) -> None:
        from analysis.load import read_results

        rows = [r for r in read_results(Path(trial.path))  # the results folder (valley storage is a folder)
                if self._metric in r and self._time_attr in r]
        bracket = self._trial_info[trial.trial_id]
        for row in rows:  # a stop decision here was taken in the live run already: only the records count
            bracket.on_result(trial, row[self._time_attr], self._metric_op * row[self._metric])
        if rows and not self.rebuilt and not self.quiet:
            print("valley: note: Ray does not save ASHA's rungs with the experiment; rebuilding them from "
                  "the results on disk", flush=True)
        self.rebuilt += bool(rows)

    def recorded(self) -> list[dict[str, float]]:
        """Each rung's recorded values by trial id (lowest milestone first), in the metric's own sign."""
        return [{t: self._metric_op * v for t, v in recorded.items()}
                for bracket in self._brackets for _, recorded in reversed(bracket._rungs)]
