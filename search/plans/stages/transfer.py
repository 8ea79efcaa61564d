"""A transfer stage: the best configurations of an earlier stage, verbatim, on another data set."""
from __future__ import annotations

from search.options import SearchError
from search.plans.format import Stage
from search.plans.select import confirmed_order, seeds_of, side_by_side, top_configs
from search.plans.state import PlanRun, stage_epochs, train_stage, write_space
from search.plans.state import source_space as source_space_of
from trainables import get_family


def run(run: PlanRun, stage: Stage) -> str:
    """The best configurations of an earlier stage, verbatim, on another data set."""
    trials, _ = run.trials(stage.source)
    source_space = source_space_of(run, stage.source)
    top = int(stage.get("top", 3))
    ranked = run.folder / f"stage-{stage.source}.csv"  # a confirm stage's order: the mean over seeds
    source_kind = run.plan.stage(stage.source).kind
    if source_kind == "confirm" and ranked.exists():
        configs, ids = confirmed_order(ranked, trials, top)
    else:
        configs, ids = top_configs(trials, source_space.metric, source_space.mode, top)
    if not configs:
        raise SearchError(f"stage {stage.name}: stage {stage.source} has no completed trial to transfer")
    dataset = stage.get("dataset")
    space = write_space(run, stage.name, source_space, configs, {},
                        f"stage {stage.name}: top {len(configs)} of {stage.source}, verbatim, on {dataset}",
                        dataset=dataset)
    run.record(stage, derived_from={"stage": stage.source, "trials": ids}, space=f"{stage.name}.space.yaml")
    # verbatim: as many epochs as the configurations trained where they were chosen (not their space file's)
    epochs = {} if stage.get("max_epochs") else {"max_epochs": stage_epochs(run, stage.source)}
    status = train_stage(run, stage, space, stage.name, dataset=dataset, search="random", scheduler="fifo", samples=1,
                         **epochs)
    if status != "completed":
        return status
    task = get_family(source_space.family).task
    side = side_by_side(seeds_of(trials, ids), run.trials(stage.name)[0], run.base.dataset, dataset,
                        task.test_metric, task.val_metric)
    side.to_csv(run.folder / f"stage-{stage.name}.csv", index=False)
    run.say(side.to_string(index=False))
    return "completed"
