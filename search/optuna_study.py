"""Ray's OptunaSearch with the study in a journal file inside the experiment folder.

``optuna-dashboard results/EXP/optuna.journal`` opens it while the search runs and after.
A driver killed between two of Tune's snapshots leaves the journal ahead of the pickled
searcher; ``restore`` reconciles the two so that the study holds each trial once.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

JOURNAL = "optuna.journal"


def journal(folder: Path) -> JournalStorage:
    """The experiment's Optuna storage: one append-only file, ``folder/optuna.journal``."""
    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))


def load_study(folder: Path) -> optuna.Study:
    """The study of an experiment folder, as optuna-dashboard shows it."""
    return optuna.load_study(study_name=folder.name, storage=journal(folder))


class ValleyOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, except that:

    * a trial whose metric is not finite ends FAIL (Ray's own tells Optuna the NaN, Optuna
      refuses it, and the study trial stays RUNNING for ever; valley's loop raises
      ``Diverged`` first, this is the second line of defence);
    * a study that its storage already holds (``valley resume``) is not warm-started twice;
    * after a restore, a study trial Tune no longer knows (asked after the snapshot the
      driver was killed behind) is marked failed, and a trial the journal already finished
      is not told again.

    Pickled with the experiment, so ``valley resume`` gets it back.
    """

    quiet = False

    def _setup_study(self, mode: Any) -> None:
        points, rewards = self._points_to_evaluate, self._evaluated_rewards
        if self._storage is not None and self._study_name in {
                s.study_name for s in self._storage.get_all_studies()}:
            self._points_to_evaluate = self._evaluated_rewards = None  # in the journal already
        try:
            super()._setup_study(mode)
        finally:
            self._points_to_evaluate, self._evaluated_rewards = points, rewards

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._storage is None or self._ot_study is None:
            return
        known = {t._trial_id for t in self._ot_trials.values()}
        orphans = [t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t._trial_id not in known]
        for trial in orphans:
            self._ot_study.tell(trial.number, state=TrialState.FAIL)
        if orphans and not self.quiet:
            print(f"valley: note: the Optuna study held {len(orphans)} trial(s) asked after Ray's last snapshot, "
                  f"which the restored search does not know; marked them failed in {JOURNAL}", flush=True)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result=result, error=error)
        if self._storage is not None:
            told = self._storage.get_trial(self._ot_trials[trial_id]._trial_id)
            if told.state.is_finished():  # before the crash, after the last snapshot
                self._completed_trials.add(trial_id)
                return None
        value = (result or {}).get(self.metric) if isinstance(self.metric, str) else None
        if not error and isinstance(value, (int, float)) and not math.isfinite(value):
            result, error = None, True
        return super().on_trial_complete(trial_id, result=result, error=error)
