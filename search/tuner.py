"""Assemble Ray Tune's Tuner for a space: the trainable, its searcher, its scheduler, its run config."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from analysis.format import OPTUNA_JOURNAL, failure_kind
from search.options import SearchOptions, sample_count, sets, total_trials
from spaces import Dist, Space
from trainables.family import Family


def trainable(family: Family, data: Any, rows: list[dict[str, Any]], opts: SearchOptions) -> Any:
    """``trainables.loop.train`` (as ``trainables.train``, which imports it in the trial) with the data
    (shared through Ray's object store), the grid rows and the family record bound, and one trial's
    resources; the same for a new search and for ``valley resume``."""
    from ray import tune

    from trainables import train

    return tune.with_resources(tune.with_parameters(train, data=data, variants=rows, family=family),
                               {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})


def scheduler(opts: SearchOptions, epochs: int) -> Any:
    """ASHA (its rungs rebuilt from disk on resume) or BOHB's HyperBand (its brackets saved with the
    experiment) on training iterations (epochs), or None for FIFO."""
    if opts.scheduler == "hyperband":
        from search.hyperband import ValleyHyperBand

        return ValleyHyperBand(opts.quiet, max_t=epochs, reduction_factor=opts.reduction_factor)
    if opts.scheduler != "asha":
        return None
    from search.asha import ValleyASHA

    return ValleyASHA(opts.quiet, max_t=epochs, grace_period=opts.grace_period,
                      reduction_factor=opts.reduction_factor)


def searcher(opts: SearchOptions, n_rows: int, say: Any, folder: Path, grids: tuple[str, ...] = ()) -> Any:
    """Optuna's TPE (warm-started with a plan's points; its study in ``folder/optuna.journal``), BOHB,
    or Tune's grid and random sampling. ``grids``: the keys of the space's ``grid`` distributions."""
    if opts.search == "random":
        from ray.tune.search import BasicVariantGenerator

        # a search generator, not a Searcher: Tune ignores its max_concurrent_trials (with a warning)
        return BasicVariantGenerator(random_state=opts.seed, max_concurrent=opts.max_concurrent)
    # a grid promises every value tried: `optimizer: {grid: [adam, sgd, adamw]}` never tried adamw, unsaid
    drawn = [f"the {n_rows} grid rows"] * (n_rows > 1) + [f"the grid over {key}" for key in grids]
    if drawn:
        say(f"valley: note: {opts.search} samples {' and '.join(drawn)} as "
            f"{'a categorical choice' if len(drawn) == 1 else 'categorical choices'}, not every value in turn")
    if opts.search == "bohb":
        from search.bohb import ValleyBOHB

        return ValleyBOHB(opts.quiet, seed=opts.seed)
    import optuna

    from search.optuna_study import ValleyOptunaSearch, journal

    # TPE models the results after n_startup_trials random ones: Optuna's 10 would leave a 12-trial
    # fine stage random, so a third of the budget (at most 10) starts it; warm-start points count.
    startup = min(10, max(2, sample_count(opts) // 3))
    sampler = optuna.samplers.TPESampler(seed=opts.seed, n_startup_trials=startup)
    found = ValleyOptunaSearch(sampler=sampler, points_to_evaluate=list(opts.warm_points) or None,
                               evaluated_rewards=list(opts.warm_rewards) or None,
                               storage=journal(folder), study_name=folder.name)
    found.quiet = opts.quiet
    say(f"valley: Optuna's study: `optuna-dashboard {folder / OPTUNA_JOURNAL}`")
    return found


class EpochBudget(Stopper):
    """A Tune stopper: ends the search once its trials have trained ``budget`` epochs in all.

    A trial's epochs are its highest ``training_iteration`` (a trial resumed from a checkpoint
    retrains nothing it has reported). Tune asks after each result, and on ``stop_all`` stops every
    live trial at once, dropping the epochs they are in: the trials never record more than the
    budget, and spend all of it (a margin of one epoch per trial running at once, kept before
    this was read from Tune's controller, stopped a budget below the CPUs after its first epoch).
    Pickled with the experiment, so ``valley resume`` keeps the count.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.epochs: dict[str, int] = {}

    def spent(self) -> int:
        return sum(self.epochs.values())

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        done = int(result.get("training_iteration", 0))
        self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), done)
        return self.stop_all()

    def stop_all(self) -> bool:
        return self.spent() >= self.budget


def needs_stopper(space: Any, opts: SearchOptions, epochs: int) -> bool:
    """Whether an epoch budget needs ``EpochBudget``: not for a grid whose every trial's epochs fit it (a
    confirm stage's, sized to its allowance)."""
    if not opts.budget_epochs:
        return False
    return opts.search != "random" or space.is_sampled() or total_trials(space, opts) * epochs > opts.budget_epochs


def concurrency(opts: SearchOptions) -> int:
    """How many trials may train at once: --max-concurrent, else what the CPUs of a local Ray allow."""
    from search.cluster import local_cpus

    if opts.max_concurrent:
        return opts.max_concurrent
    if opts.address is None:
        return max(1, int((opts.num_cpus or local_cpus()) // opts.cpus_per_trial))
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1) // opts.cpus_per_trial))


def seeded(params: dict[str, Any], rows: list[dict[str, Any]], opts: SearchOptions) -> tuple[dict[str, Any], int]:
    """``params`` with the trials' seed, and Tune's num_samples. Where neither the space nor its grid rows set
    a seed, every trial takes --seed; but each of several passes over a grid takes its own (--seed, --seed + 1,
    ...): passes of one seed repeated the same trainings, and their spread read as zero."""
    from ray import tune

    samples = sample_count(opts)
    if "seed" in params or any("seed" in row for row in rows):
        return params, samples
    if opts.search == "random" and samples > 1:
        return {**params, "seed": tune.grid_search([opts.seed + i for i in range(samples)])}, 1
    return {**params, "seed": opts.seed}, samples


def distinct_configs(params: dict[str, Any]) -> int | None:
    """How many configurations a Tune ``param_space`` of choices and constants holds; None where a key is
    drawn from a range."""
    from ray.tune.search.sample import Categorical, Domain

    count = 1
    for value in params.values():
        if isinstance(value, Categorical):
            count *= len(value.categories)
        elif isinstance(value, Domain) or (isinstance(value, dict) and "grid_search" in value):
            return None
    return count


def build_tuner(space: Space, family: Family, opts: SearchOptions, folder: Path, dataset: str, epochs: int,
                data: Any, progress: Any) -> Any:
    from ray import tune

    from search.loggers import callbacks
    from search.tune_space import param_space

    overrides = {**opts.overrides, "family": space.family, "dataset": dataset, "max_epochs": epochs}
    if opts.scheduler == "hyperband" and not sets(space, opts, "checkpoint_s"):
        # HyperBand pauses trials at its rungs and Tune resumes them from their last checkpoint: one
        # written at most every 30 s was older than the pause, or none, and the trial trained again
        overrides["checkpoint_s"] = 0
        progress.say("valley: note: BOHB's HyperBand pauses trials between rounds, so every epoch saves a "
                     "checkpoint (checkpoint_s=0) for a paused trial to go on from")
    params, rows = param_space(space, overrides, opts.search)
    params, samples = seeded(params, rows, opts)
    distinct = distinct_configs(params)
    if opts.search != "random" and distinct is not None and samples > distinct:
        from search.run import tell

        tell(progress.say, f"valley: warning: the space holds {distinct} distinct configurations and {opts.search} "
             f"is asked for {samples} trials, so it will repeat some, each repeat the same training (the same "
             f"seed); give --samples {distinct} or fewer, or let the seed vary in the space")
    schedule = scheduler(opts, epochs)
    keepers = [schedule.keeper] if hasattr(schedule, "keeper") else []  # saves BOHB's brackets with the experiment
    at_once = concurrency(opts)
    if opts.budget_epochs and opts.budget_epochs < at_once:
        # more trials at once than the budget has epochs would start trials whose first epoch the
        # stopper drops when the budget is spent: fewer trials run at once instead
        at_once = opts.budget_epochs
        opts = dataclasses.replace(opts, max_concurrent=at_once)
        progress.say(f"valley: note: a budget of {at_once} trial-epoch{'s' * (at_once > 1)} trains "
                     f"{at_once} trial{'s' * (at_once > 1)} at a time")
    grids = tuple(key for key, value in space.params.items()
                  if isinstance(value, Dist) and value.kind == "grid" and key not in opts.overrides)
    search_alg = searcher(opts, len(rows), progress.say, folder, grids)
    # Tune limits a Searcher with max_concurrent_trials; its own generator (grid and random) is given the limit itself
    limited = (opts.max_concurrent or None) if isinstance(search_alg, Searcher) else None
    return tune.Tuner(
        trainable(family, data, rows, opts),
        param_space=params,
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, num_samples=samples,
            search_alg=search_alg, scheduler=schedule, max_concurrent_trials=limited, reuse_actors=True,
            time_budget_s=opts.budget_s, trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(
            name=folder.name, storage_path=str(folder.parent), verbose=0,
            stop=EpochBudget(opts.budget_epochs) if needs_stopper(space, opts, epochs) else None,
            callbacks=[*callbacks(opts, folder, rows, family.task.reported()), *keepers, progress],
            # Tune keeps every checkpoint; search.progress prunes those the snapshot on disk no
            # longer names (Tune's own num_to_keep can delete the one a killed driver's snapshot names)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures)),
    )


def fail_diverged_trials_at_once() -> None:
    """Tune retries every failed trial up to --max-failures times; a diverged one is not retried.

    Training restarts from the checkpoint before the divergence and, being seeded, diverges
    again: retrying costs epochs and changes nothing. Ray has no per-exception retry rule, so
    ``Trial.handle_error`` is wrapped to count a divergence as the last allowed failure.
    """
    from ray.tune.experiment.trial import Trial

    if getattr(Trial.handle_error, "_valley", False):
        return
    original = Trial.handle_error

    def handle_error(self: Any, exc: Any = None) -> None:
        original(self, exc)
        if failure_kind(f"{getattr(exc, 'cause', '')}\n{exc}") == "diverged" and self.max_failures >= 0:
            self.run_metadata.num_failures = max(self.run_metadata.num_failures, self.max_failures + 1)

    handle_error._valley = True  # type: ignore[attr-defined]
    Trial.handle_error = handle_error


def keep_workers_already_starting() -> None:
    """A trial whose worker is already starting waits for it instead of taking an idle one.

    With actor reuse, Tune hands a worker freed by a finished trial to the next trial that waits,
    and stops the worker that trial had been given. When that worker had its CPUs already and was
    importing torch, that work is lost and a new worker starts for the next trial, importing it
    again: in a search of short trials (the reference MLPs for one epoch) one worker then did all
    the training while a third imported torch in vain. Only a trial whose worker still waits for
    its resources (costing nothing to drop) now takes an idle one; the idle one goes to the next.
    """
    from ray.tune.execution.tune_controller import TuneController

    original = getattr(TuneController, "_maybe_reuse_cached_actor", None)
    if original is None or getattr(original, "_valley", False):  # a Ray without this step is left as it is
        return

    def maybe_reuse_cached_actor(self: Any, trial: Any) -> bool:
        own = self._trial_to_actor.get(trial)
        if own is not None and trial not in self._resetting_trials and self._actor_manager.is_actor_started(own):
            return False
        return original(self, trial)

    maybe_reuse_cached_actor._valley = True  # type: ignore[attr-defined]
    TuneController._maybe_reuse_cached_actor = maybe_reuse_cached_actor


def retry_trials_killed_while_starting() -> None:
    """A trial whose reused worker dies while being reset for it is retried like any other.

    With actor reuse, Tune resets an idle worker for the next trial while that trial is still
    PENDING, and a failure then bypasses the retry rule, which asks for a RUNNING trial: the
    trial ends failed at its first crash whatever --max-failures says. Tune itself sets a trial
    RUNNING before handling a failure in its worker's creation (``_actor_failed``); this does the
    same for the reset (found by tests/test_chaos.py, which kills trial workers at random).
    """
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment.trial import Trial

    if getattr(TuneController._process_trial_failure, "_valley", False):
        return
    original = TuneController._process_trial_failure

    def process_trial_failure(self: Any, trial: Any, exception: Any) -> None:
        if trial.status == Trial.PENDING:
            self._set_trial_status(trial, Trial.RUNNING)
        original(self, trial, exception)

    process_trial_failure._valley = True  # type: ignore[attr-defined]
    TuneController._process_trial_failure = process_trial_failure
