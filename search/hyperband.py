"""BOHB's HyperBand, saved with the experiment and put back when it resumes.

Ray Tune 2.60 saves the searcher with the experiment but not the scheduler (ray-project/ray#30838).
A fresh ``HyperBandForBOHB`` put every restored trial into new brackets, the finished ones too;
a bracket then waited for finished trials to reach its milestone, and a resumed BOHB search hung
with every trial pending. Tune does save its callbacks' state with each experiment snapshot, in
the same step as the trial list, so ``BracketKeeper`` saves the brackets there (trial ids in place
of trials) and the restored scheduler puts every trial back where it was: in its bracket, with
its last result, paused if it was paused, stopped if its bracket had stopped it (Tune's own
record of the trial can still say otherwise). Trials the snapshot does not know (one can be written
after the other when the driver is killed between them) start anew in the current bracket if
unfinished, and stay out of the brackets if finished.
"""
from __future__ import annotations

import copy
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandForBOHB
from ray.tune.schedulers.hyperband import _Bracket


class BracketKeeper(Callback):
    """A Tune callback whose state is its scheduler's brackets, so Tune saves them with the experiment."""

    def __init__(self, scheduler: ValleyHyperBand) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return self.scheduler.snapshot()

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.saved = state


class FullBracket(_Bracket):
    """A HyperBand bracket whose last round trains to ``max_t``. Ray's rounds multiply up from
    ``int(max_t / eta**s)``, so with 10 epochs and a reduction factor of 3 two brackets of three
    ended at 9: their survivors, the best configurations, read 'stopped' one epoch short."""

    def successive_halving(self, metric: str, metric_op: float) -> tuple[list[Trial], list[Trial]]:
        kept = super().successive_halving(metric, metric_op)
        if self._halves == 0:
            self._r = self._cumul_r = self._max_t_attr
        return kept


class ValleyHyperBand(HyperBandForBOHB):
    """``HyperBandForBOHB`` on ``training_iteration`` whose brackets survive ``valley resume`` and
    whose every bracket ends at ``max_t``."""

    def __init__(self, quiet: bool = False, **hyperband: Any) -> None:
        super().__init__(time_attr="training_iteration", **hyperband)
        self.quiet = quiet
        self.keeper = BracketKeeper(self)
        self.saved: dict[str, Any] | None = None  # set on resume; used once every restored trial is added
        self.restored: list[Trial] = []

    def _create_bracket(self, s: int) -> FullBracket:
        bracket = super()._create_bracket(s)
        bracket.__class__ = FullBracket  # the same state; a resumed search's saved brackets keep theirs
        return bracket

    def snapshot(self) -> dict[str, Any] | None:
        """The brackets with trial ids for trials, the current bracket's place, who was paused."""
        if not self._trial_info:
            return None

        def frozen(bracket: Any) -> Any:
            saved = copy.copy(bracket)
            saved._live_trials = {t.trial_id: result for t, result in bracket._live_trials.items()}
            saved._all_trials = [t.trial_id for t in bracket._all_trials]
            saved.trials_to_unpause = {t.trial_id for t in bracket.trials_to_unpause}
            return saved

        places = {id(b): (i, j) for i, band in enumerate(self._hyperbands) for j, b in enumerate(band) if b}
        current = self._state["bracket"]
        return {"bands": [[frozen(b) if b else None for b in band] for band in self._hyperbands],
                "current": places.get(id(current)), "band_idx": self._state["band_idx"],
                "places": {t.trial_id: places[id(b)] for t, (b, _) in self._trial_info.items() if id(b) in places},
                "paused": [t.trial_id for t, _ in self._trial_info.items() if t.status == Trial.PAUSED]}

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        if self.saved is not None:  # restoring: placed together once all are added
            self.restored.append(trial)
            return
        super().on_trial_add(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any, allow_recurse: bool = True) -> Trial | None:
        if self.saved is not None:
            self.put_back(tune_controller)
        return super().choose_trial_to_run(tune_controller, allow_recurse)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        if self.saved is not None:
            self.put_back(tune_controller)
        return super().on_trial_result(tune_controller, trial, result)

    def put_back(self, tune_controller: Any) -> None:
        """Rebuild the saved brackets with the restored trials in them."""
        saved, trials = self.saved, {t.trial_id: t for t in self.restored}
        self.saved, self.restored = None, []
        assert saved is not None

        def thawed(frozen: Any) -> Any:
            bracket = copy.copy(frozen)
            bracket._live_trials = {trials[i]: r for i, r in frozen._live_trials.items() if i in trials}
            bracket._all_trials = [trials[i] for i in frozen._all_trials if i in trials]
            bracket.trials_to_unpause = {trials[i] for i in frozen.trials_to_unpause if i in trials}
            return bracket

        self._hyperbands = [[thawed(b) if b else None for b in band] for band in saved["bands"]]
        self._state = {"bracket": None, "band_idx": saved["band_idx"]}
        if saved["current"]:
            self._state["bracket"] = self._hyperbands[saved["current"][0]][saved["current"][1]]
        self._trial_info = {}
        for trial_id, (i, j) in saved["places"].items():
            if trial_id in trials:
                self._trial_info[trials[trial_id]] = self._hyperbands[i][j], i
        for trial_id in saved["paused"]:  # Tune restores an unfinished trial as pending
            if trial_id in trials and trials[trial_id].status == Trial.PENDING:
                tune_controller._set_trial_status(trials[trial_id], Trial.PAUSED)
        for trial, (bracket, _) in list(self._trial_info.items()):  # stopped by a bracket, not yet by Tune
            if not trial.is_finished() and trial not in bracket._live_trials:
                tune_controller.stop_trial(trial)
        unknown = [t for t in trials.values() if t not in self._trial_info]
        for trial in unknown:
            if not trial.is_finished():
                super().on_trial_add(tune_controller, trial)
        if not self.quiet:
            print(f"valley: note: Ray does not save BOHB's HyperBand brackets; valley's copy from the last "
                  f"snapshot holds {len(trials) - len(unknown)} of the {len(trials)} restored trials"
                  + (f"; {len(unknown)} newer ones start in the current bracket" if unknown else ""), flush=True)
