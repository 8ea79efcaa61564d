"""Run a plan's stages in order; each kind of stage is one module under ``search/plans/stages``."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from analysis import format as fmt
from search.options import OUTPUT_GONE, SearchError, user_errors
from search.plans.budget import SECONDS, allowance
from search.plans.format import TRAINING_KINDS, Stage
from search.plans.state import BudgetRanOut, PlanRun
from search.plans.stages import bracket, confirm, search, transfer, valley
from search.run import tell

STAGE_RUNNERS: dict[str, Callable[[PlanRun, Stage], str]] = {
    "search": search.run, "bracket": bracket.run, "valley": valley.run, "confirm": confirm.run,
    "transfer": transfer.run,
}


def allow(run: PlanRun, stage: Stage) -> None:
    """Fix the stage's allowance when it first starts (a resumed stage keeps its own)."""
    budget = run.state.get("budget")
    if budget is None or stage.kind not in TRAINING_KINDS or stage.name in budget["allowed"]:
        return
    training = run.plan.training_stages()
    later = training[training.index(stage.name) + 1:]
    units, most = {}, {}
    if budget["unit"] != SECONDS:  # a later confirm stage pays for whole configurations over its seeds
        for later_stage in run.plan.stages:
            if later_stage.name in later and later_stage.kind == "confirm":
                units[later_stage.name] = confirm.candidate_cost(run, later_stage) or 0
                most[later_stage.name] = confirm.most_candidates(run, later_stage)
    budget["allowed"][stage.name] = allowance(budget, stage.name, later, units, most)
    run.save()
    run.say(f"valley: stage {stage.name}: may spend {run.budget.describe(budget['allowed'][stage.name])} "
            f"of the plan's {run.budget.describe(budget['total'])}")


def account(run: PlanRun, stage: Stage, seconds: float) -> None:
    """Record what the stage spent: its trial-epochs on disk, or the seconds it ran (added up over resumes)."""
    budget = run.state.get("budget")
    if budget is None or stage.kind not in TRAINING_KINDS:
        return
    if run.budget.unit == SECONDS:
        budget["spent"][stage.name] = budget["spent"].get(stage.name, 0.0) + seconds
    else:
        budget["spent"][stage.name] = run.spent(stage.name)
    budget.pop("running", None)
    run.save()


def clock_in(run: PlanRun, stage: Stage) -> None:
    """Under a time budget, record in plan.json when the stage began, before it trains: a driver killed
    outright (SIGKILL, the OOM killer) never reaches ``account``, and its seconds were never counted."""
    budget = run.state.get("budget")
    if budget is not None and run.budget.unit == SECONDS and stage.kind in TRAINING_KINDS:
        budget["running"] = {"stage": stage.name, "since": time.time()}
        run.save()


def count_killed_stage(run: PlanRun) -> None:
    """The seconds of a stage whose driver was killed outright, from when it began to its last result on
    disk (what it trained after that is lost with it), added to what the stage spent."""
    budget = run.state.get("budget")
    killed = budget.pop("running", None) if budget is not None else None
    if not killed:
        return
    name, since = killed["stage"], float(killed["since"])
    files = [p for experiment in run.stage_state(name).get("experiments", [])
             for p in (run.folder / experiment).rglob("*.json")]
    last = max((p.stat().st_mtime for p in files), default=since)
    seconds = max(0.0, min(last, time.time()) - since)
    budget["spent"][name] = budget["spent"].get(name, 0.0) + seconds
    run.save()
    run.say(f"valley: stage {name}: the driver before this one was killed in it; counted its "
            f"{run.budget.describe(seconds)} up to its last result")


def stopped_by(run: PlanRun, stage: Stage, err: BaseException) -> NoReturn:
    """A stage that raised or was interrupted outside Tune's fit (Ctrl-C, SIGTERM): the plan reads
    'interrupted' with the error in plan.json (not 'running' for ever), and what is printed says how to
    continue the plan from this stage: on the error's one line for a mistake in the input (data files
    missing offline), as a note under the traceback of a bug in valley, on a line of its own after Ctrl-C."""
    run.state.update(status="interrupted", error=f"stage {stage.name}: {err or type(err).__name__}")
    run.record(stage, status="interrupted", error=str(err or type(err).__name__))  # saves plan.json, once
    how = f"the plan stopped in stage {stage.name}; `valley plan {run.folder}` continues it from there"
    if isinstance(err, BudgetRanOut) and run.budget is not None:  # continuing it stopped here again, for ever
        raise SearchError(f"{err} [the plan stopped in stage {stage.name}; its --budget is fixed when it starts, "
                          "so continuing it would stop here again: start the plan again with a larger --budget]"
                          ) from err
    if isinstance(err, user_errors()):
        raise SearchError(f"{err} [{how}]") from err
    if isinstance(err, Exception):
        err.add_note(f"valley: {how}")
    else:
        tell(run.say, f"valley: {how}")
    raise err


def run_plan(run: PlanRun) -> Path:
    """Run every stage not yet completed; returns the plan folder."""
    run.state.update(status="running", driver=fmt.driver())
    run.state.pop("error", None)  # what stopped it last time, put right
    run.save()
    count_killed_stage(run)
    for stage in run.plan.stages:
        if run.stage_state(stage.name).get("status") == "completed":
            run.say(f"valley: stage {stage.name}: already completed, not re-run")
            continue
        if OUTPUT_GONE.is_set():  # no one reads the output any more: stop before a stage, as Ctrl-C would in one
            run.state["status"] = "interrupted"
            run.save()
            return run.folder
        run.say(f"valley: stage {stage.name} ({stage.kind})" + (f" from {stage.source}" if stage.source else ""))
        run.stage_state(stage.name).pop("error", None)
        run.record(stage, status="running", kind=stage.kind, derived_from={"stage": stage.source})
        allow(run, stage)
        clock_in(run, stage)
        started = time.monotonic()
        run.running = (stage.name, started)
        try:
            status = STAGE_RUNNERS[stage.kind](run, stage)
        except (Exception, KeyboardInterrupt) as err:
            stopped_by(run, stage, err)
        finally:
            run.running = None
            account(run, stage, time.monotonic() - started)
        run.record(stage, status=status)
        if status != "completed":
            run.state["status"] = status
            run.save()
            tell(run.say, f"valley: plan {status} in stage {stage.name}; continue with `valley plan {run.folder}`")
            return run.folder
    run.state["status"] = "completed"
    run.save()
    budget = run.state.get("budget")
    if budget is not None:
        run.say(f"valley: spent {run.budget.describe(sum(budget['spent'].values()))} of "
                f"{run.budget.describe(budget['total'])}: " + ", ".join(
                    f"{name} {run.budget.describe(value)}" for name, value in budget["spent"].items()))
    run.say(f"valley: plan completed: {run.folder}")
    return run.folder
