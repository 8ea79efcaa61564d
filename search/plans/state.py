"""A plan being run: its folder, ``plan.json`` (its state), and what every stage kind shares.

Every stage that trains writes the concrete space it ran as ``<stage>.space.yaml`` beside its
experiment, and ``plan.json`` records each stage's status and provenance (the stage and trials
it was derived from), so a plan can be inspected, resumed after an interruption (finished
stages are not re-run) or extended.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis import format as fmt
from search.options import SearchError, SearchOptions, check_name, total_trials
from search.plans.budget import SECONDS, Budget
from search.plans.format import STAGE_OPTIONS, TRAINING_KINDS, Plan, Stage, parse_plan
from search.run import check_task, sayer, silent, storage_root
from spaces import Dist, Space, load_space, read_yaml


@dataclasses.dataclass
class PlanRun:
    """A plan being run in ``folder``; ``state`` mirrors ``plan.json``."""

    plan: Plan
    folder: Path
    base: SearchOptions
    state: dict[str, Any]
    say: Callable[..., None]
    running: tuple[str, float] | None = None  # the stage running now and when it began (time.monotonic)

    def save(self) -> None:
        tmp = self.folder / f"{fmt.PLAN_STATE}.tmp"
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.folder / fmt.PLAN_STATE)

    def record(self, stage: Stage, **fields: Any) -> None:
        self.state["stages"].setdefault(stage.name, {}).update(fields)
        self.save()

    def stage_state(self, name: str) -> dict[str, Any]:
        return self.state["stages"].get(name, {})

    @property
    def budget(self) -> Budget | None:
        saved = self.state.get("budget")
        return Budget(saved["total"], saved["unit"]) if saved else None

    def spent(self, stage_name: str) -> float:
        """What a stage has spent of the budget: its trial-epochs on disk, or its seconds so far (those of its
        earlier runs, and of this one while it runs: each round of a bracket stage had its whole allowance)."""
        budget = self.budget
        if budget is None or budget.unit == SECONDS:
            now = time.monotonic() - self.running[1] if self.running and self.running[0] == stage_name else 0.0
            return float(self.state.get("budget", {}).get("spent", {}).get(stage_name, 0.0)) + now
        if not self.stage_state(stage_name).get("experiments"):  # none yet (or none, its share spent first)
            return 0.0
        try:
            trials, _ = self.trials(stage_name)
        except SearchError:
            return 0.0
        return float(trials["epochs"].sum()) if "epochs" in trials else 0.0

    def label(self, stage: Stage) -> str:
        """What the live board calls a stage's search: its place in the plan and the plan's budget spent
        before the search began (the board adds the search's own trial-epochs as they are trained)."""
        names = [s.name for s in self.plan.stages]
        text = f"stage {stage.name} ({names.index(stage.name) + 1} of {len(names)})"
        budget = self.budget
        if budget is not None:
            spent = sum(self.spent(name) for name in self.state["budget"]["split"])
            text += f", {budget.describe(spent)} of the plan's {budget.describe(budget.total)} spent before this search"
        return text

    def left_for(self, stage: Stage) -> float | None:
        """What the stage may still spend (its allowance less what it has spent), or None without a budget."""
        if self.budget is None or stage.kind not in TRAINING_KINDS:
            return None
        return max(0.0, self.state["budget"]["allowed"][stage.name] - self.spent(stage.name))

    def spent_out(self, stage: Stage) -> bool:
        """Whether a training stage's share of the plan's budget is spent: less than a trial-epoch, or a
        second, is left (under a budget; never without one)."""
        left = self.left_for(stage)
        return left is not None and left < 1

    def not_run(self, stage_name: str) -> SearchError:
        """The error for a training stage with no experiment: its budget was spent before it began, or (without
        one) it has not run."""
        if self.spent_out(self.plan.stage(stage_name)):
            return BudgetRanOut(f"stage {stage_name} did not run: its share of --budget was spent before it began")
        return SearchError(f"stage {stage_name!r} has not run; continue the plan (`valley plan {self.folder}`)")

    def trials(self, stage_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Every trial and epoch of a training stage (all rounds of a bracket)."""
        from analysis.load import load_experiment

        frames, curves = [], []
        for experiment in self.stage_state(stage_name).get("experiments", []):
            trials, epochs = load_experiment(self.folder / experiment)
            frames.append(trials.assign(stage=stage_name))
            curves.append(epochs)
        if not frames:
            raise self.not_run(stage_name)
        return pd.concat(frames, ignore_index=True), pd.concat(curves, ignore_index=True)


class BudgetRanOut(SearchError):
    """A stage without what it needs because a share of the plan's budget ran out first (a valley whose rough
    stage finished no trial, a confirm stage whose seeds none finished or whose source never ran): a plan's
    --budget is fixed when it starts, so no continuation gets past it, and continuing is not offered."""


def start_plan(plan: Plan, base: SearchOptions, say: Callable[..., None] | None = None,
               budget: Budget | None = None) -> PlanRun:
    from trainables.data import DATASETS, unknown_dataset

    base.check()  # before the folder is made: a stage refused them, and the plan's continuation kept them
    dataset = base.dataset or plan.dataset
    if dataset is None:
        raise SearchError(f"{plan.source} names no dataset; pass --dataset")
    if dataset not in DATASETS:  # whose: --dataset's, or the plan file's
        raise SearchError(f"{'--dataset' if base.dataset else f'{plan.source}: dataset'}: {unknown_dataset(dataset)}")
    if budget is not None and plan.budget_split is None:
        raise SearchError(f"{plan.source} has no budget_split, so --budget cannot be divided among its stages; add "
                          f"e.g. `budget_split: {{{', '.join(f'{n}: ...' for n in plan.training_stages())}}}`")
    named = plan.name if dataset == plan.dataset else f"{plan.name}-{dataset}"  # not plan-mlp-digits-digits
    name = check_name(f"{named}-{time.strftime('%Y%m%d-%H%M%S')}" if base.name is None else base.name)
    folder = storage_root(base.storage) / name
    if folder.exists():
        raise SearchError(f"plan folder {folder} already exists; continue it with `valley plan {folder}` "
                          "or choose another --name")
    probe = PlanRun(plan, folder, dataclasses.replace(base, dataset=dataset), {"stages": {}}, silent)
    by_name = {stage.name: stage for stage in plan.stages}
    for stage in plan.stages:  # a clock family on digits fails here, not after the stages before it have trained
        source = stage
        while source.space is None and source.source in by_name:  # a transfer stage's family is its source's
            source = by_name[source.source]
        if source.space is not None:
            try:
                check_task(load_space(source.space).family, stage.get("dataset") if stage.kind == "transfer"
                           else dataset)
            except SearchError as err:
                raise SearchError(f"{plan.source}: stage {stage.name}: {err}") from None
        if stage.kind == "search" and stage.space is not None and not stage.source:
            check_stage_space(probe, stage)
        searcher = stage.get("search") or base.search
        if stage.get("warm_start") and searcher != "optuna":
            raise SearchError(f"{plan.source}: stage {stage.name}: warm_start seeds Optuna, and the stage runs the "
                              f"{searcher} search; drop warm_start or set the stage's search: optuna")
    if budget is not None and budget.unit != SECONDS:
        check_shares(probe, budget)
    fetch_data(plan, dataset, base.data_dir)
    folder.mkdir(parents=True)
    stages = [{"name": st.name, "kind": st.kind, **({"from": st.source} if st.source else {}),
               **({"space": st.space} if st.space else {}), **st.settings} for st in plan.stages]
    doc = {"description": plan.description, "dataset": dataset, "stages": stages}
    if plan.budget_split:
        doc["budget_split"] = plan.budget_split
    changed = "".join(f" --stage {change}" for change in plan.changes)
    (folder / "plan.yaml").write_text(f"# {plan.source}, with space paths resolved{changed and ' and' + changed}\n"
                                      + yaml.safe_dump(doc, sort_keys=False))
    state = {"plan": plan.name, "plan_file": plan.source, **({"stage_changes": list(plan.changes)} if plan.changes else {}),
             "dataset": dataset, "status": "running",
             "options": dataclasses.asdict(base), "stages": {}}
    if budget is not None:
        state["budget"] = budget.as_state(plan.budget_split)
    run = PlanRun(plan, folder, dataclasses.replace(base, dataset=dataset), state, say or sayer(base))
    run.save()
    return run


def fetch_data(plan: Plan, dataset: str, data_dir: str | None) -> None:
    """Every data set the plan's stages train on whose files are not here is downloaded now, or refused in one
    line, before anything trains: `plan-mlp` without CIFAR-10's files trained three stages, then stopped at the
    fourth for want of them."""
    from search.data_check import load_data
    from trainables.data import is_available

    for name in dict.fromkeys([dataset, *(stage.get("dataset") for stage in plan.stages
                                          if stage.kind == "transfer" and stage.get("dataset"))]):
        if not is_available(name, Path(data_dir).expanduser() if data_dir else None):
            load_data(name, data_dir)


def check_stage_space(run: PlanRun, stage: Stage) -> None:
    """What ``valley search`` checks before anything is written, of a stage whose space runs as it is: `valley plan
    plan-mlp-digits --set layers=2` made the plan's folder, then stopped on the rough grid's rows, and offered a
    continuation that stopped there again."""
    from search.run import check_laid_out, check_steps_drawn
    from search.tune_space import check_space
    from spaces import SpaceError
    from trainables.config import ConfigError

    space, opts = load_space(stage.space), stage_options(run, stage)
    try:
        check_laid_out(space, opts)
        check_steps_drawn(space, opts)
        check_space(space, {**opts.overrides, "dataset": opts.dataset, "max_epochs": opts.epochs(space)})
    except (SearchError, SpaceError, ConfigError) as err:
        raise SearchError(f"{run.plan.source}: stage {stage.name}: {err}") from None


def check_shares(run: PlanRun, budget: Budget) -> None:
    """Refuse, before anything trains, a trial-epoch budget whose share for a stage cannot pay for what the stage
    must train (:func:`budget_needs`). The least budget named is the one every stage's share pays for."""
    short = [need for need in budget_needs(run) if round(budget.total * need[2], 9) < need[4]]  # 180 x 0.35 is 62.9..
    if short:
        least, name, share, what, _ = max(short)
        raise SearchError(f"--budget {budget.total:g}: stage {name}'s share ({share:g}, {budget.total * share:g} "
                          f"trial-epochs) cannot {what}; give --budget {least} or more, or a larger share for "
                          f"{name} in budget_split")


def least_budget(plan: Plan, base: SearchOptions) -> int:
    """The least trial-epoch budget ``valley plan`` takes for ``plan`` with ``base``'s options (0: any)."""
    run = PlanRun(plan, Path(), dataclasses.replace(base, dataset=base.dataset or plan.dataset), {"stages": {}},
                  silent)
    return max((need[0] for need in budget_needs(run)), default=0)


def budget_needs(run: PlanRun) -> list[tuple[int, str, float, str, int]]:
    """(the least budget, stage, share, what, its cost in trial-epochs) of each stage whose share must pay for
    something whole: a confirm stage's one configuration over its seeds (it failed at the end of the plan, its
    budget spent), a grid's every point for one epoch (it trained the first rows only: a rough sweep without
    its largest models, said to have trained them all)."""
    from search.plans.stages.confirm import candidate_cost

    needs = []
    for stage in run.plan.stages:
        share = (run.plan.budget_split or {}).get(stage.name, 0.0)
        cost = candidate_cost(run, stage) if stage.kind == "confirm" else grid_points(run, stage)
        if cost and share:
            what = (f"pay for one configuration over its {stage.get('seeds', 5)} seeds ({cost} trial-epochs)"
                    if stage.kind == "confirm" else f"train each of its {cost} grid points one epoch")
            needs.append((math.ceil(cost / share - 1e-9), stage.name, share, what, cost))
    return needs


def grid_points(run: PlanRun, stage: Stage) -> int | None:
    """The fewest points of a search stage's own grid a budget lets it run (None for a stage whose space an earlier
    stage decides, or that samples): each needs a trial-epoch. A grid over seeds may run one seed of them
    (:func:`fewer_seeds`): `plan-clock-small --budget 60` trains its 9 encodings, not 27 points."""
    if stage.kind != "search" or stage.source or not stage.space:
        return None
    space, opts = load_space(stage.space), stage_options(run, stage)
    if not is_grid(space, opts):
        return None
    seeds = replicate_seeds(space, opts)
    return total_trials(space, opts) // max(1, len(seeds))


def is_grid(space: Space, opts: SearchOptions) -> bool:
    """Whether a search runs its space's grid point by point (random search that draws nothing)."""
    return opts.search == "random" and not space.is_sampled()


def replicate_seeds(space: Space, opts: SearchOptions) -> tuple[Any, ...]:
    """The seeds of a grid over several seeds that a budget may thin (:func:`fewer_seeds`); () where there are
    none to thin (``--set seed`` replaces the grid; a space that draws keys gets new configs, not replicates)."""
    seeds = space.params.get("seed")
    if (space.is_sampled() or "seed" in opts.overrides
            or not (isinstance(seeds, Dist) and seeds.kind == "grid" and len(seeds.args) > 1)):
        return ()
    return seeds.args


def reopen_plan(folder: Path, say: Callable[..., None] | None = None, quiet: bool = False) -> PlanRun:
    """The plan in ``folder``, to continue with the options it started with (``quiet`` aside: it is how
    this run speaks, not what it trains)."""
    from search.resume import refuse_while_running

    folder = folder.expanduser().resolve()
    state = fmt.read_state(folder / fmt.PLAN_STATE)
    refuse_while_running(folder, state, "valley plan")
    doc, source = read_yaml(folder / "plan.yaml"), str(folder / "plan.yaml")
    base = dataclasses.replace(SearchOptions.from_dict(state["options"]), quiet=quiet)
    say = say or sayer(base)
    try:
        plan = parse_plan(doc, source, state["plan"])
    except SearchError as err:  # begun before a key it holds was refused: it goes on as it began, and says so
        plan = parse_plan(doc, source, state["plan"], begun=True)
        say(f"valley: note: {err}; the plan began before that was refused, and goes on as it began")
    return PlanRun(plan, folder, dataclasses.replace(base, dataset=state["dataset"]), state, say)


def stage_options(run: PlanRun, stage: Stage, **changes: Any) -> SearchOptions:
    """The options a stage's searches run with: the plan's, what the stage sets itself, then ``changes``."""
    options = {k: stage.get(k) for k in STAGE_OPTIONS if stage.get(k) is not None}
    return dataclasses.replace(run.base, **{**options, **changes})


def train_stage(run: PlanRun, stage: Stage, space: Space, experiment: str, **changes: Any) -> str:
    """Run (or resume) one experiment of a stage; returns its status."""
    from search.resume import resume
    from search.run import run_search

    folder = run.folder / experiment
    experiments = run.stage_state(stage.name).get("experiments", [])
    left = run.left_for(stage)
    if run.spent_out(stage) and not folder.exists():  # recorded, a later stage looked for its folder
        run.say(f"valley: stage {stage.name}: its budget is spent; {experiment} is not run")
        return "completed"
    if experiment not in experiments:
        run.record(stage, experiments=[*experiments, experiment])
    if folder.exists():
        status = fmt.read_manifest(folder).get("status")
        if status == "completed":
            return status
        if status is not None:
            resume(folder)
            return fmt.read_manifest(folder).get("status", "interrupted")
    opts = dataclasses.replace(stage_options(run, stage, **changes), name=experiment, storage=str(run.folder),
                               label=run.label(stage))
    if left is not None:
        if run.budget.unit != SECONDS:
            space = fewer_seeds(run, stage, space, int(left), opts, experiment)
            too_small(run, stage, space, opts, left)
        asked = opts
        opts = with_budget(opts, run.budget, left, space)
        if opts.epochs(space) < asked.epochs(space):  # a --stage rough.max_epochs=3 trained 2, without a word
            note = (f"the budget pays for {opts.epochs(space)} of {asked.epochs(space)} epochs for each of its "
                    f"{total_trials(space, opts)} grid points: each trains {opts.epochs(space)}"
                    + (", without ASHA" if asked.scheduler == "asha" and opts.scheduler != "asha" else ""))
            run.say(f"valley: stage {stage.name}: {note}")
            run.record(stage, note=note)
    epochs = opts.epochs(space)
    if space.max_epochs != epochs and (run.folder / f"{experiment}.space.yaml").exists():
        # the stage's file says what it ran: the epochs of its own max_epochs, --max-epochs or a budget,
        # not those of the space it was derived from
        space = write_space(run, experiment, dataclasses.replace(space, max_epochs=epochs), list(space.grid),
                            dict(space.params), space.description, dataset=space.dataset)
    run_search(space, opts)
    return fmt.read_manifest(folder).get("status", "interrupted")


def too_small(run: PlanRun, stage: Stage, space: Space, opts: SearchOptions, left: float) -> None:
    """A grid whose every point a trial-epoch allowance cannot train one epoch is refused before it trains:
    it trained the first rows only (a rough sweep without its largest models, so a valley with no side to
    overfit), and said it had given each an epoch."""
    points = total_trials(space, opts)
    if not is_grid(space, opts) or points <= left:
        return
    state = run.state["budget"]
    allowed = float(state["allowed"][stage.name])
    first = not any(state.get("spent", {}).values())  # later stages' shares are of what the earlier left
    needed = math.ceil(points * run.budget.total / allowed - 1e-9) if first and allowed > 0 else None
    raise BudgetRanOut(f"stage {stage.name}: its share of --budget, {run.budget.describe(left)}, cannot train each "
                       f"of its {points} grid points one epoch; "
                       + (f"a --budget of {needed} or more can, at this budget_split, or " if needed else "")
                       + "raise this stage's share in budget_split")


def fewer_seeds(run: PlanRun, stage: Stage, space: Space, left: int, opts: SearchOptions, name: str) -> Space:
    """A grid over seeds that ``left`` trial-epochs cannot train in full: fewer seeds, each trained longer.

    Seeds are replicates: three one-epoch trials of each clock encoding (the encoding table at a
    third of a tight budget) separate the encodings less than one trial of each for three epochs.
    Only when one seed still does not fit does :func:`with_budget` shorten the trials.
    """
    seeds = replicate_seeds(space, opts)
    if not seeds:
        return space
    points, epochs = total_trials(space, opts), opts.epochs(space)
    if points * epochs <= left:
        return space
    kept = seeds[: max(1, left // (points // len(seeds) * epochs))]
    note = (f"{left} trial-epochs cannot train {points} grid points for {epochs} epochs each; running "
            f"seed {', '.join(map(str, kept))} of {', '.join(map(str, seeds))}, so that fewer replicates "
            "train longer")
    run.say(f"valley: stage {stage.name}: {note}")
    run.record(stage, note=note)
    return write_space(run, name, space, list(space.grid), {**space.params, "seed": Dist("grid", kept)},
                       f"{space.description}; {note}")


def with_budget(opts: SearchOptions, budget: Budget, left: float, space: Space) -> SearchOptions:
    """The options of a search that may spend ``left``: a stopper on trial-epochs, or a time limit.

    A grid (a rough sweep) whose every point cannot get its full epochs gives each point the same
    shorter training, FIFO, so that the sweep covers the whole grid rather than its first rows.
    An Optuna search gets enough samples to spend it (as many trials as could stop at the first
    rung), since the budget, not the sample count, is then what ends it.
    """
    if budget.unit == SECONDS:
        return dataclasses.replace(opts, budget_s=left)
    opts = dataclasses.replace(opts, budget_epochs=int(left))
    points = total_trials(space, opts)  # a ``--set`` key replaces its grid
    if is_grid(space, opts) and points * opts.epochs(space) > left:
        opts = dataclasses.replace(opts, max_epochs=max(1, int(left) // points), scheduler="fifo")
    if opts.search == "optuna":
        shortest = opts.grace_period if opts.scheduler == "asha" else opts.epochs(space)
        opts = dataclasses.replace(opts, samples=max(opts.samples or 1, int(left) // max(1, shortest)))
    return opts


def write_space(run: PlanRun, name: str, space: Space, grid: list[dict[str, Any]],
                params: dict[str, Any], note: str, dataset: str | None = None) -> Space:
    """Write a derived space as YAML beside the plan (its provenance) and load it back, checked. Where the
    experiment of that name has begun (a continued plan), the file it began from is kept and loaded: it
    is what runs (rewritten, it lost what a budget had changed, e.g. fewer seeds)."""
    path = run.folder / f"{name}.space.yaml"
    if path.exists() and (run.folder / name / fmt.MANIFEST).exists():
        return load_space(path)
    derived = dataclasses.replace(space, description=note, dataset=dataset or run.base.dataset, grid=tuple(grid),
                                  params=params)
    path.write_text(f"# written by valley plan: {note}\n" + yaml.safe_dump(derived.as_doc(), sort_keys=False))
    return load_space(path)


def source_space(run: PlanRun, stage_name: str) -> Space:
    """The space a training stage ran (its first experiment's copy)."""
    experiments = run.stage_state(stage_name).get("experiments")
    if not experiments:
        raise run.not_run(stage_name)
    return load_space(run.folder / experiments[0] / fmt.SPACE_COPY)


def stage_epochs(run: PlanRun, stage_name: str) -> int | None:
    """The epochs a training stage's trials train: what its experiment recorded once it began, else its own
    max_epochs, --max-epochs or its space's; None while that rests on a stage before it that has not run."""
    experiments = run.stage_state(stage_name).get("experiments")
    if experiments:
        recorded = fmt.read_manifest(run.folder / experiments[0]).get("max_epochs")
        return int(recorded) if recorded else source_space(run, stage_name).max_epochs
    stage = run.plan.stage(stage_name)
    epochs = stage.get("max_epochs") or run.base.max_epochs
    if not epochs and stage.space:
        epochs = load_space(stage.space).max_epochs
    return int(epochs) if epochs else None
