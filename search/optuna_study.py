"""Ray's OptunaSearch with the study in a journal file inside the experiment folder.

``optuna-dashboard results/EXP/optuna.journal`` opens it while the search runs and after.
A driver killed between two of Tune's snapshots leaves the journal ahead of the pickled
searcher; ``restore`` reconciles the two so that the study holds each trial once.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from analysis.format import OPTUNA_JOURNAL, at_best_checkpoint
from search.ray_start import drop_messages

TRIAL_ID = "ray_trial_id"  # a study trial's user attribute: the Tune trial it is


def journal(folder: Path) -> JournalStorage:
    """The experiment's Optuna storage: one append-only file, ``folder/optuna.journal``."""
    folder.mkdir(parents=True, exist_ok=True)
    optuna_says_only_what_matters()
    return JournalStorage(JournalFileBackend(str(folder / OPTUNA_JOURNAL)))


def optuna_says_only_what_matters() -> None:
    """Two things Optuna says on every search that are noise in valley's output:

    * that a categorical choice other than None, bool, int, float or str (a list, such as an MLP's
      hidden widths) may not survive persistent storage, once per choice, and again whenever the
      study is loaded or resumed. The journal is JSON, which keeps a list as it was
      (``tests/test_search.py``), so only that warning, for lists, is dropped;
    * its timestamped line on creating the study, which ``search.tuner.searcher`` replaces with
      valley's own, saying where the study is and what opens it;
    * that a trial resumed from its checkpoint reports an epoch it had reported before the
      interruption, once per epoch: the study keeps the first value, which is the same epoch's.
    """
    warnings.filterwarnings("ignore", message=r"Choices for a categorical distribution .* of type list\.",
                            category=UserWarning)
    warnings.filterwarnings("ignore", message=r"The reported value is ignored because this `step=\d+` is already "
                                              r"reported\.", category=UserWarning)
    drop_messages("optuna.storages.journal._storage", "A new study created in Journal")


def load_study(folder: str | Path) -> optuna.Study:
    """The study of an experiment folder, as optuna-dashboard shows it."""
    folder = Path(folder).expanduser()
    if not (folder / OPTUNA_JOURNAL).is_file():
        raise FileNotFoundError(f"{folder} holds no {OPTUNA_JOURNAL}: give the folder of a search or plan stage "
                                "run with --search optuna")
    return optuna.load_study(study_name=folder.name, storage=journal(folder))


def close_unfinished(folder: Path) -> int:
    """Once a search has completed, end the study trials still RUNNING as PRUNED: a trial its budget stopped
    (Tune tells the searcher nothing of it; ``stopped`` in trials.csv) or one asked and never started.
    optuna-dashboard showed them running for ever. Returns how many."""
    study = load_study(folder)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=TrialState.PRUNED)
    return len(running)


class ValleyOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, except that:

    * a trial whose metric is not finite ends FAIL (Ray's own tells Optuna the NaN, Optuna
      refuses it, and the study trial stays RUNNING for ever; valley's loop raises
      ``Diverged`` first, this is the second line of defence);
    * a finished trial's value is its best checkpoint's (the metric at the epoch of its best
      validation loss: ``best_val_loss`` itself, or ``val_csd`` or ``val_acc`` then), as trials.csv
      ranks it and a plan's warm start tells earlier trials, not its last epoch's (Ray's), which
      is worse for a trial its own patience ended;
    * a study that its storage already holds (``valley resume``) is not warm-started twice;
    * after a restore, a study trial Tune no longer knows (asked after the snapshot the
      driver was killed behind) is marked failed, and a trial the journal already finished
      (after that snapshot) is neither reported to nor told again while Tune reruns its end.

    Pickled with the experiment, so ``valley resume`` gets it back.
    """

    quiet = False
    _told: frozenset[str] = frozenset()  # Tune trial ids the journal finished after the restored snapshot
    _lost: frozenset[int] = frozenset()  # study trial ids whose Tune trials a crash lost (said once)
    _at_best: dict[str, Any] | None = None  # unfinished Tune trial id -> its metric at its best checkpoint so far

    def _setup_study(self, mode: Any) -> None:
        points, rewards = self._points_to_evaluate, self._evaluated_rewards
        if self._storage is not None and self._study_name in {
                s.study_name for s in self._storage.get_all_studies()}:
            self._points_to_evaluate = self._evaluated_rewards = None  # in the journal already
        try:
            super()._setup_study(mode)
        finally:
            self._points_to_evaluate, self._evaluated_rewards = points, rewards

    def suggest(self, trial_id: str) -> dict | None:
        found = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # which Tune trial each study trial is, in optuna-dashboard too
            self._ot_trials[trial_id].set_user_attr(TRIAL_ID, trial_id)
        return found

    def restore(self, checkpoint_path: str) -> None:
        optuna_says_only_what_matters()
        super().restore(checkpoint_path)
        if self._storage is None or self._ot_study is None:
            return
        in_journal = self._ot_study.get_trials(deepcopy=False)
        finished = {t._trial_id for t in in_journal if t.state.is_finished()}
        self._told = frozenset(tid for tid, trial in self._ot_trials.items()
                               if trial._trial_id in finished and tid not in self._completed_trials)
        known = {t._trial_id for t in self._ot_trials.values()} | self._lost  # lost by an earlier crash
        running = [t for t in in_journal if t.state == TrialState.RUNNING and t._trial_id not in known]
        lost = running + [t for t in in_journal if t.state.is_finished() and TRIAL_ID in t.user_attrs
                          and t._trial_id not in known]  # (a driver killed right after asking: no id yet)
        self._lost = self._lost | {t._trial_id for t in lost}
        for trial in running:
            self._ot_study.tell(trial.number, state=TrialState.FAIL)
        if lost and not self.quiet:
            print(f"valley: note: {len(lost)} Optuna trial(s) began after Ray's last snapshot, and the restored "
                  f"search does not know them: those still running are marked failed in {OPTUNA_JOURNAL}; those that "
                  "finished keep their values in the study (the training happened) but have no row in "
                  "trials.csv", flush=True)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._note_best(trial_id, result)
        if trial_id not in self._told:
            super().on_trial_result(trial_id, result)

    def _note_best(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, str) and at_best_checkpoint(result) and self.metric in result:
            if self._at_best is None:  # an instance's own dict, not the class's
                self._at_best = {}
            self._at_best[trial_id] = result[self.metric]

    def _report_last(self, trial_id: str, result: dict) -> None:
        """The last result as the trial's intermediate value at its epoch, as every other epoch is."""
        trial, step = self._ot_trials.get(trial_id), result.get(TRAINING_ITERATION)
        if trial is not None and isinstance(step, int) and isinstance(self.metric, str) and self.metric in result:
            with warnings.catch_warnings():  # a step on_trial_result reported already: Optuna keeps that one
                warnings.simplefilter("ignore")
                trial.report(result[self.metric], step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._told:
            self._completed_trials.add(trial_id)
            return None
        value = (result or {}).get(self.metric) if isinstance(self.metric, str) else None
        if not error and isinstance(value, (int, float)) and not math.isfinite(value):
            result, error = None, True
        if result and not error:  # Tune hands a trial's last result (its max_epochs, an ASHA stop) to this alone
            self._note_best(trial_id, result)
            self._report_last(trial_id, result)
        best = None
        if isinstance(self.metric, str):
            best = (result or {}).get(f"best_{self.metric}", (self._at_best or {}).pop(trial_id, None))
        if not error and isinstance(best, (int, float)) and math.isfinite(best):
            result = {**result, self.metric: best}  # the best checkpoint's, as trials.csv and warm starts rank it
        return super().on_trial_complete(trial_id, result=result, error=error)
