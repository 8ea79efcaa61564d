"""Run a plan's stages in order; each kind of stage is one module under ``search/plans/stages``."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from search.plans.format import Stage
from search.plans.state import PlanRun
from search.plans.stages import bracket, confirm, search, transfer, valley

STAGE_RUNNERS: dict[str, Callable[[PlanRun, Stage], str]] = {
    "search": search.run, "bracket": bracket.run, "valley": valley.run, "confirm": confirm.run,
    "transfer": transfer.run,
}


def run_plan(run: PlanRun) -> Path:
    """Run every stage not yet completed; returns the plan folder."""
    run.state["status"] = "running"
    run.save()
    for stage in run.plan.stages:
        if run.stage_state(stage.name).get("status") == "completed":
            run.say(f"valley: stage {stage.name}: already completed, not re-run")
            continue
        run.say(f"valley: stage {stage.name} ({stage.kind})" + (f" from {stage.source}" if stage.source else ""))
        run.record(stage, status="running", kind=stage.kind, derived_from={"stage": stage.source})
        status = STAGE_RUNNERS[stage.kind](run, stage)
        run.record(stage, status=status)
        if status != "completed":
            run.state["status"] = status
            run.save()
            run.say(f"valley: plan {status} in stage {stage.name}; continue with `valley plan {run.folder}`")
            return run.folder
    run.state["status"] = "completed"
    run.save()
    run.say(f"valley: plan completed: {run.folder}")
    return run.folder
