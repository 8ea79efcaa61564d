"""Staged plans: rough -> valley -> fine -> confirm, each stage a Ray Tune experiment of its own.

A plan is YAML (built-in ones are ``spaces/plan-*.yaml``). Every stage that
trains writes the concrete space it ran as ``<stage>.space.yaml`` beside its
experiment, and ``plan.json`` records each stage's status and provenance (the
stage and trials it was derived from), so a plan can be inspected, resumed
after an interruption (finished stages are not re-run) or extended.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analysis.load import config_of, metric_column
from search.run import NAME_RULE, SearchError, SearchOptions, run_search, storage_root
from spaces import BUILTIN_DIR, Dist, Space, SpaceError, load_space, read_yaml
from trainables import get_family

KINDS = {
    "search": "run a space (optionally narrowed by an earlier valley stage)",
    "bracket": "tabula rasa: bisect a complexity axis from too simple to too complex",
    "valley": "pick the architectures within threshold standard errors of the best",
    "confirm": "re-train the top configurations over several seeds with fresh splits",
    "transfer": "re-run the top configurations verbatim on another data set",
}
STAGE_KEYS = {
    "name": "the stage's name, also its folder", "kind": "|".join(KINDS), "from": "the stage it builds on",
    "space": "a built-in space or YAML file (search, bracket)", "max_epochs": "epochs per trial",
    "search": "random or optuna", "scheduler": "fifo or asha", "samples": "passes or Optuna trials",
    "grace_period": "ASHA grace period", "reduction_factor": "ASHA reduction factor",
    "warm_start": "seed Optuna with earlier trials inside the new space (default true)",
    "arch_keys": "config keys that make an architecture (valley)", "threshold": "standard errors (valley)",
    "keep": "at most this many valley architectures, smallest first", "top": "configurations (confirm)",
    "seeds": "seeds per configuration (confirm)", "axis": "the complexity key (bracket)",
    "dataset": "the data set to transfer to (transfer)", "low": "too simple (bracket)", "high": "too complex (bracket)", "rounds": "bisection rounds (bracket)",
}
PLAN_KEYS = {"description": "one line", "dataset": "the default data set", "stages": "the list of stages"}


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    source: str | None = None  # "from"
    space: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str
    source: str
    stages: tuple[Stage, ...]
    description: str = ""
    dataset: str | None = None


def builtin_plans() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("plan-*.yaml"))}


def load_plan(name_or_path: str | Path) -> Plan:
    """Read and check a plan: every mistake names the file, the stage, the key and the fix."""
    plans = builtin_plans()
    text = str(name_or_path)
    path = plans.get(text) or Path(text).expanduser()
    if not path.is_file():
        close = difflib.get_close_matches(text, plans, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SearchError(f"no plan {text!r}; {hint}built-in plans: {', '.join(plans)} (or a YAML file)")
    try:
        doc = read_yaml(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise SearchError(f"{path}: line {mark.line + 1 if mark else '?'}: not valid YAML") from None
    return parse_plan(doc, str(path), path.stem)


def parse_plan(doc: Any, source: str, name: str) -> Plan:
    def fail(where: str, message: str) -> SearchError:
        return SearchError(f"{source}: {where}: {message}")

    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise fail("stages", "a plan is a mapping with a non-empty `stages:` list")
    for key in doc:
        if key not in PLAN_KEYS:
            raise fail(str(key), f"unknown key; valid keys: {', '.join(PLAN_KEYS)}")
    stages: list[Stage] = []
    for i, raw in enumerate(doc["stages"]):
        where = f"stages[{i}]"
        if not isinstance(raw, dict) or "name" not in raw:
            raise fail(where, "each stage is a mapping with at least `name:` and `kind:`")
        name_i = str(raw["name"])
        where = f"stage {name_i!r}"
        if not NAME_RULE.match(name_i):
            raise fail(where, "a stage name is letters, digits, '.', '_' or '-'")
        if name_i in {s.name for s in stages}:
            raise fail(where, "two stages share this name; rename one")
        for key in raw:
            if key not in STAGE_KEYS:
                close = difflib.get_close_matches(str(key), STAGE_KEYS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise fail(f"{where}: {key}", f"unknown key; {hint}valid keys: {', '.join(STAGE_KEYS)}")
        kind = raw.get("kind", "search")
        if kind not in KINDS:
            raise fail(f"{where}: kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        source_stage = raw.get("from")
        if source_stage is not None and source_stage not in {s.name for s in stages}:
            raise fail(f"{where}: from", f"{source_stage!r} is not an earlier stage; earlier stages: "
                                         f"{', '.join(s.name for s in stages) or 'none'}")
        if kind == "transfer" and "dataset" not in raw:
            raise fail(f"{where}: dataset", "a transfer stage needs `dataset:`, the data set to re-run on")
        if kind in ("valley", "confirm", "transfer") and source_stage is None:
            raise fail(f"{where}: from", f"a {kind} stage needs `from:` naming the stage it reads")
        if kind in ("search", "bracket") and "space" not in raw:
            raise fail(f"{where}: space", f"a {kind} stage needs `space:` (a built-in space or YAML file)")
        if kind == "bracket":
            for key in ("axis", "low", "high"):
                if key not in raw:
                    raise fail(f"{where}: {key}", f"a bracket stage needs `{key}:` ({STAGE_KEYS[key]})")
            if not (isinstance(raw["low"], int) and isinstance(raw["high"], int) and raw["low"] < raw["high"]):
                raise fail(f"{where}: low", f"low < high must hold (integers), got low={raw['low']!r}, "
                                            f"high={raw['high']!r}")
        settings = {k: v for k, v in raw.items() if k not in ("name", "kind", "from", "space")}
        space = raw.get("space")
        if space is not None:
            space = str(space)
            if space.endswith((".yaml", ".yml")) and not Path(space).is_absolute():
                space = str(Path(source).parent / space)  # relative to the plan file
            try:
                load_space(space)
            except SpaceError as err:
                raise fail(f"{where}: space", str(err)) from None
        stages.append(Stage(name_i, kind, source_stage, space, settings))
    return Plan(name, source, tuple(stages), doc.get("description", ""), doc.get("dataset"))


@dataclasses.dataclass
class PlanRun:
    """A plan being run in ``folder``; ``state`` mirrors ``plan.json``."""

    plan: Plan
    folder: Path
    base: SearchOptions
    state: dict[str, Any]
    say: Callable[..., None]

    def save(self) -> None:
        tmp = self.folder / "plan.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.folder / "plan.json")

    def record(self, stage: Stage, **fields: Any) -> None:
        self.state["stages"].setdefault(stage.name, {}).update(fields)
        self.save()

    def stage_state(self, name: str) -> dict[str, Any]:
        return self.state["stages"].get(name, {})

    def trials(self, stage_name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Every trial and epoch of a training stage (all rounds of a bracket)."""
        from analysis.load import load_experiment

        frames, curves = [], []
        for experiment in self.stage_state(stage_name).get("experiments", []):
            trials, epochs = load_experiment(self.folder / experiment)
            frames.append(trials.assign(stage=stage_name))
            curves.append(epochs)
        if not frames:
            raise SearchError(f"stage {stage_name!r} has no results in {self.folder}")
        return pd.concat(frames, ignore_index=True), pd.concat(curves, ignore_index=True)


def start_plan(plan: Plan, base: SearchOptions, say: Callable[..., None] = print) -> PlanRun:
    dataset = base.dataset or plan.dataset
    if dataset is None:
        raise SearchError(f"{plan.source} names no dataset; pass --dataset")
    name = base.name or f"{plan.name}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = storage_root(base.storage) / name
    if folder.exists():
        raise SearchError(f"plan folder {folder} already exists; continue it with `valley plan {folder}` "
                          "or choose another --name")
    folder.mkdir(parents=True)
    stages = [{"name": st.name, "kind": st.kind, **({"from": st.source} if st.source else {}),
               **({"space": st.space} if st.space else {}), **st.settings} for st in plan.stages]
    (folder / "plan.yaml").write_text(f"# {plan.source}, with space paths resolved\n" + yaml.safe_dump(
        {"description": plan.description, "dataset": dataset, "stages": stages}, sort_keys=False))
    state = {"plan": plan.name, "plan_file": plan.source, "dataset": dataset, "status": "running",
             "options": dataclasses.asdict(base), "stages": {}}
    run = PlanRun(plan, folder, dataclasses.replace(base, dataset=dataset), state, say)
    run.save()
    return run


def reopen_plan(folder: Path, say: Callable[..., None] = print) -> PlanRun:
    folder = folder.expanduser().resolve()
    state = json.loads((folder / "plan.json").read_text())
    plan = parse_plan(read_yaml(folder / "plan.yaml"), str(folder / "plan.yaml"), state["plan"])
    fields = SearchOptions.__dataclass_fields__
    base = SearchOptions(**{k: v for k, v in state["options"].items() if k in fields})
    return PlanRun(plan, folder, dataclasses.replace(base, dataset=state["dataset"]), state, say)


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


def _train(run: PlanRun, stage: Stage, space: Space, experiment: str, **changes: Any) -> str:
    """Run (or resume) one experiment of a stage; returns its status."""
    from analysis.load import read_manifest
    from search.resume import resume

    folder = run.folder / experiment
    experiments = run.stage_state(stage.name).get("experiments", [])
    if experiment not in experiments:
        run.record(stage, experiments=[*experiments, experiment])
    if folder.exists():
        status = read_manifest(folder).get("status")
        if status == "completed":
            return status
        if status is not None:
            resume(folder)
            return read_manifest(folder).get("status", "interrupted")
    options = {k: stage.get(k) for k in ("max_epochs", "search", "scheduler", "samples", "grace_period",
                                         "reduction_factor") if stage.get(k) is not None}
    opts = dataclasses.replace(run.base, name=experiment, storage=str(run.folder), **options, **changes)
    run_search(space, opts)
    return read_manifest(folder).get("status", "interrupted")


def write_space(run: PlanRun, name: str, space: Space, grid: list[dict[str, Any]],
                params: dict[str, Any], note: str, dataset: str | None = None) -> Space:
    """Write a derived space as YAML beside the plan (its provenance) and load it back, checked."""
    doc = {"description": note, "family": space.family, "metric": space.metric, "mode": space.mode,
           "dataset": dataset or run.base.dataset, "grid": grid or None, "params": _params_doc(params)}
    if space.max_epochs:
        doc["max_epochs"] = space.max_epochs
    path = run.folder / f"{name}.space.yaml"
    path.write_text(f"# written by valley plan: {note}\n" + yaml.safe_dump(
        {k: v for k, v in doc.items() if v is not None}, sort_keys=False))
    return load_space(path)


def _params_doc(params: dict[str, Any]) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, Dist):
            return {value.kind: [plain(a) for a in value.args]}
        return list(value) if isinstance(value, tuple) else value
    return {k: plain(v) for k, v in params.items()}


def _stage_search(run: PlanRun, stage: Stage) -> str:
    space = load_space(stage.space)
    grid, params, derived = list(space.grid), dict(space.params), []
    source = run.stage_state(stage.source) if stage.source else {}
    if source.get("kind") == "valley":
        archs = source["architectures"]
        arch_keys = {k for arch in archs for k in arch}
        grid = archs
        params = {k: v for k, v in params.items() if k not in arch_keys}
        derived = source.get("band", [])
    narrowed = write_space(run, stage.name, space, grid, params,
                           f"stage {stage.name}: {space.name}" + (f" over the {len(grid)} architectures of "
                                                                  f"stage {stage.source}" if derived else ""))
    changes: dict[str, Any] = {}
    if stage.get("search") == "optuna" and stage.get("warm_start", True) and source.get("kind") == "valley":
        points, rewards, note = warm_start_points(run, source, narrowed)
        run.say(f"valley: stage {stage.name}: {note}")
        if points:
            changes.update(warm_points=tuple(points), warm_rewards=tuple(rewards))
        run.record(stage, warm_start=note)
    run.record(stage, derived_from={"stage": stage.source, "trials": derived},
               space=f"{stage.name}.space.yaml")
    return _train(run, stage, narrowed, stage.name, **changes)


def warm_start_points(run: PlanRun, valley_state: dict[str, Any], space: Space
                      ) -> tuple[list[dict[str, Any]], list[float], str]:
    """Earlier trials for Optuna: those inside ``space`` with their results, else the valley's best moved in.

    Trials that fall inside the new space are told to Optuna as evaluated (points and rewards).
    When none does (the reference's rough MLP grid trains without dropout or L2, which the fine
    space's ranges exclude), the best rough trial of each valley architecture is moved into the
    space, each value clipped to its range, and evaluated first (points without rewards), so the
    sampler still starts from the rough stage's best settings rather than from nothing.
    """
    rough_name = valley_state["from"]
    trials, _ = run.trials(rough_name)
    metric_col = metric_column(space.metric)
    done = trials[trials["status"].isin(["completed", "stopped"]) & trials[metric_col].notna()]
    done = done.sort_values(metric_col, ascending=space.mode == "min")
    configs = [_with_defaults(config_of(row), space.family) for _, row in done.iterrows()]
    points, rewards = [], []
    for config, value in zip(configs, done[metric_col]):
        point = _as_point(config, space)
        if point is not None:
            points.append(point)
            rewards.append(float(value))
    if points:
        return points, rewards, (f"warm-started Optuna with {len(points)} trials of stage {rough_name} "
                                 f"({len(configs) - len(points)} fall outside the new space)")
    moved: list[dict[str, Any]] = []
    for config in configs:  # best first: one per architecture of the valley
        point = _as_point(config, space, clip=True)
        if point is not None and point.get("variant") not in [m.get("variant") for m in moved]:
            moved.append(point)
    return moved, [], (f"none of the {len(configs)} trials of stage {rough_name} falls inside the new space; "
                       f"evaluating first the best of each of {len(moved)} architectures, moved into it "
                       "(values clipped to the ranges)")


def _with_defaults(config: dict[str, Any], family: str) -> dict[str, Any]:
    """A trial's config with the family's defaults for the keys its space left out."""
    defaults = {f.name: f.default for f in dataclasses.fields(get_family(family).Config)
                if f.default is not dataclasses.MISSING}
    return {**defaults, **config}


def _as_point(config: dict[str, Any], space: Space, clip: bool = False) -> dict[str, Any] | None:
    """``config`` as a point of ``space`` (grid row index plus every sampled key), or None if outside.

    With ``clip``, a number outside a range is moved to its nearer end instead (a choice it does
    not offer still puts the config outside).
    """
    point: dict[str, Any] = {}
    if space.grid:
        matches = [i for i, row in enumerate(space.grid) if all(config.get(k) == v for k, v in row.items())]
        if not matches:
            return None
        point["variant"] = matches[0]
    for key, value in space.params.items():
        if not isinstance(value, Dist):
            if config.get(key, value) != value and not clip:
                return None
            continue
        got = config.get(key)
        if isinstance(got, tuple):
            got = list(got)
        if got is None:
            return None
        if value.kind in ("grid", "choice"):
            if got not in [list(a) if isinstance(a, tuple) else a for a in value.args]:
                return None
        elif not value.args[0] <= got <= value.args[1]:
            if not clip:
                return None
            got = min(max(got, value.args[0]), value.args[1])
        point[key] = got
    return point


def _stage_bracket(run: PlanRun, stage: Stage) -> str:
    """Evaluate too simple, too complex and the middle; bisect towards the best until it is bracketed."""
    space = load_space(stage.space)
    axis, low, high = stage.get("axis"), stage.get("low"), stage.get("high")
    rounds = stage.get("rounds", 3)
    done: dict[int, float] = dict(run.stage_state(stage.name).get("evaluated", {}).items())
    done = {int(k): v for k, v in done.items()}
    todo = sorted({low, high, (low + high) // 2} - set(done))
    for r in range(rounds):
        if todo:
            grid = [{**row, axis: value} for value in todo for row in (space.grid or [{}])]
            params = {k: v for k, v in space.params.items() if k != axis}
            derived = write_space(run, f"{stage.name}-r{r}", space, grid, params,
                                  f"stage {stage.name}, round {r}: {axis} in {todo}")
            status = _train(run, stage, derived, f"{stage.name}-r{r}")
            if status != "completed":
                return status
            trials, _ = run.trials(stage.name)
            column = trials.get(f"config/{axis}")
            for value in todo:
                losses = trials.loc[column == value, "best_val_loss"].dropna()
                done[value] = float(losses.min()) if len(losses) else math.inf
            run.record(stage, evaluated={str(k): v for k, v in sorted(done.items())})
        ordered = sorted(done)
        best = min(ordered, key=lambda v: done[v])
        i = ordered.index(best)
        neighbours = ordered[max(0, i - 1): i + 2]
        todo = sorted({(a + b) // 2 for a, b in zip(neighbours, neighbours[1:])} - set(done))
        if not todo:
            break
    ordered = sorted(done)
    best = min(ordered, key=lambda v: done[v])
    bracketed = ordered[0] < best < ordered[-1]
    message = (f"valley bracketed at {axis}={best} between {ordered[ordered.index(best) - 1]} and "
               f"{ordered[ordered.index(best) + 1]}" if bracketed else
               f"valley NOT bracketed: the best {axis}={best} is at the edge of [{low}, {high}]; widen the range")
    run.say(f"valley: stage {stage.name}: {message}")
    run.record(stage, bracket={"axis": axis, "best": best, "bracketed": bracketed, "message": message})
    return "completed"


def _stage_valley(run: PlanRun, stage: Stage) -> str:
    from analysis.valley import find_valley

    trials, epochs = run.trials(stage.source)
    family = trials["config/family"].dropna().iloc[0]
    arch_keys = stage.get("arch_keys") or ARCH_KEYS.get(family, [])
    if not arch_keys:
        raise SearchError(f"stage {stage.name}: say which config keys make an architecture with `arch_keys:`")
    source_space = _source_space(run, stage.source)
    metric = metric_column(source_space.metric)
    result = find_valley(trials, epochs, metric=metric, threshold_se=float(stage.get("threshold", 1.0)),
                         mode=source_space.mode)
    band = trials[trials["trial_id"].isin(result.members)].sort_values("n_params")
    archs: list[dict[str, Any]] = []
    for _, row in band.iterrows():
        config = config_of(row)
        arch = {k: config[k] for k in arch_keys if k in config}
        if arch and arch not in archs:
            archs.append(arch)
    archs = archs[: int(stage.get("keep", 3))]
    chosen = config_of(trials.set_index("trial_id").loc[result.chosen].rename(None))
    summary = {
        "from": stage.source, "kind": "valley", "rule": "one standard error",
        "threshold_se": float(stage.get("threshold", 1.0)), "reason": result.reason,
        "band": list(result.members), "chosen": result.chosen, "chosen_config": chosen,
        "architectures": archs,
    }
    (run.folder / f"stage-{stage.name}.json").write_text(json.dumps(summary, indent=2, default=str))
    run.record(stage, **summary)
    run.say(f"valley: stage {stage.name}: {result.reason}")
    for arch in archs:
        run.say(f"valley:   carried on: {arch}")
    return "completed"


# Config keys that make an architecture, per family (a valley stage's default `arch_keys`).
ARCH_KEYS = {"mlp": ["hidden", "layers"], "cnn": ["arch", "width", "batchnorm"],
             "clock": ["backbone", "encoding"]}


def top_configs(trials: pd.DataFrame, metric: str, mode: str, top: int, stopped: bool = False
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """The ``top`` distinct configs of completed trials, best first, with the trial each came from.

    With ``stopped``, trials that ASHA stopped early fill the places completed trials leave,
    best first after every completed one (their metric is from fewer epochs).
    """
    column = metric_column(metric)
    statuses = ["completed", "stopped"] if stopped else ["completed"]
    ranked = trials[trials["status"].isin(statuses)].dropna(subset=[column])
    ranked = ranked.assign(_late=ranked["status"] != "completed")
    ranked = ranked.sort_values(["_late", column], ascending=[True, mode == "min"])
    configs: list[dict[str, Any]] = []
    ids: list[str] = []
    for _, row in ranked.iterrows():
        config = config_of(row)
        if config not in configs:
            configs.append(config)
            ids.append(row["trial_id"])
        if len(configs) == top:
            break
    return configs, ids


def _source_space(run: PlanRun, stage_name: str) -> Space:
    """The space a training stage ran (its first experiment's copy)."""
    return load_space(run.folder / run.stage_state(stage_name)["experiments"][0] / "space.yaml")


def _stage_confirm(run: PlanRun, stage: Stage) -> str:
    trials, _ = run.trials(stage.source)
    source_space = _source_space(run, stage.source)
    seeds = int(stage.get("seeds", 5))
    top = int(stage.get("top", 3))
    configs, ids = top_configs(trials, source_space.metric, source_space.mode, top, stopped=True)
    if not configs:
        raise SearchError(f"stage {stage.name}: stage {stage.source} has no completed trial to confirm")
    early = trials[trials["trial_id"].isin(ids) & (trials["status"] == "stopped")]["trial_id"].tolist()
    if early or len(configs) < top:
        note = (f"confirming {len(configs)} configurations of stage {stage.source} (top: {top})"
                + (f"; {len(early)} of them ASHA stopped early ({', '.join(early)}): too few trials ran all "
                   f"their epochs" if early else f"; it has only {len(configs)} distinct finished ones"))
        run.say(f"valley: stage {stage.name}: {note}")
        run.record(stage, note=note)
    grid = [{**config, "seed": s, "split_seed": s} for config in configs for s in range(seeds)]
    space = write_space(run, stage.name, source_space, grid, {},
                        f"stage {stage.name}: top {len(configs)} of {stage.source} x {seeds} seeds")
    run.record(stage, derived_from={"stage": stage.source, "trials": ids},
               configs=configs, space=f"{stage.name}.space.yaml")
    status = _train(run, stage, space, stage.name, search="random", scheduler="fifo", samples=1)
    if status != "completed":
        return status
    table, summary = confirm_table(run.trials(stage.name)[0], configs, metric_column(source_space.metric),
                                   source_space.mode)
    table.to_csv(run.folder / f"stage-{stage.name}.csv", index=False)
    (run.folder / f"stage-{stage.name}.json").write_text(json.dumps(summary, indent=2, default=str))
    run.record(stage, summary=summary)
    run.say(table.to_string(index=False))
    run.say(f"valley: P(winner beats runner-up) = {summary['p_winner_beats_runner_up']}")
    return "completed"


def _stage_transfer(run: PlanRun, stage: Stage) -> str:
    """The best configurations of an earlier stage, verbatim, on another data set."""
    from search.transfer import side_by_side

    trials, _ = run.trials(stage.source)
    source_space = _source_space(run, stage.source)
    configs, ids = top_configs(trials, source_space.metric, source_space.mode, int(stage.get("top", 3)))
    if not configs:
        raise SearchError(f"stage {stage.name}: stage {stage.source} has no completed trial to transfer")
    dataset = stage.get("dataset")
    space = write_space(run, stage.name, source_space, configs, {},
                        f"stage {stage.name}: top {len(configs)} of {stage.source}, verbatim, on {dataset}",
                        dataset=dataset)
    run.record(stage, derived_from={"stage": stage.source, "trials": ids}, space=f"{stage.name}.space.yaml")
    status = _train(run, stage, space, stage.name, dataset=dataset, search="random", scheduler="fifo", samples=1)
    if status != "completed":
        return status
    before = trials[trials["trial_id"].isin(ids)]
    side = side_by_side(before, run.trials(stage.name)[0], run.base.dataset, dataset)
    side.to_csv(run.folder / f"stage-{stage.name}.csv", index=False)
    run.say(side.to_string(index=False))
    return "completed"


def confirm_table(trials: pd.DataFrame, configs: list[dict[str, Any]], select: str, select_mode: str,
                  n_boot: int = 2000) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Mean, standard deviation and bootstrap 95% interval of the test metric per configuration.

    The winner is the configuration with the best mean of ``select`` (a validation column, e.g.
    ``best_val_loss``) over the seeds: choosing by the test metric would make the reported test
    figure optimistic. Seeds are shared across configurations (seed s uses split s for every
    one), so the bootstrap resamples seeds jointly: P(winner beats runner-up) is a paired
    estimate, on the test metric.
    """
    from search.tune_space import headline_metric

    metric, mode = headline_metric(trials["config/family"].dropna().iloc[0])
    column = f"test_{metric}"
    labels = [config_of(row) for _, row in trials.iterrows()]
    by_config, chosen_by = [], []
    for config in configs:
        mine = trials[[label == config for label in labels]].set_index("config/seed")
        by_config.append(mine[column].dropna())
        chosen_by.append(mine[select].mean())
    seeds = sorted(set().union(*(values.index for values in by_config)))
    matrix = np.array([[values.get(s, np.nan) for s in seeds] for values in by_config], dtype=float)
    resample = np.random.default_rng(0).integers(0, len(seeds), size=(n_boot, len(seeds)))
    boot = np.nanmean(matrix[:, resample], axis=2)  # (configs, n_boot) means over resampled seeds
    table = pd.DataFrame({
        "config": range(1, len(configs) + 1), "label": [json.dumps(c) for c in configs],
        "seeds": np.isfinite(matrix).sum(axis=1), f"mean_{select}": chosen_by,
        f"mean_{column}": np.nanmean(matrix, axis=1),
        f"std_{column}": np.nanstd(matrix, axis=1, ddof=1) if len(seeds) > 1 else np.nan,
        "ci95_low": np.nanpercentile(boot, 2.5, axis=1), "ci95_high": np.nanpercentile(boot, 97.5, axis=1),
    })
    order = table[f"mean_{select}"].sort_values(ascending=select_mode == "min", kind="stable").index.to_list()
    table = table.loc[order].reset_index(drop=True)
    p = None
    if len(order) > 1:
        winner, runner = boot[order[0]], boot[order[1]]
        p = float(np.mean(winner > runner) if mode == "max" else np.mean(winner < runner))
    return table, {"metric": column, "mode": mode, "chosen_by": f"mean {select} ({select_mode})",
                   "winner": table.loc[0, "label"],
                   "p_winner_beats_runner_up": p, "bootstrap_resamples": n_boot, "seeds": seeds}


STAGE_RUNNERS: dict[str, Callable[[PlanRun, Stage], str]] = {
    "search": _stage_search, "bracket": _stage_bracket, "valley": _stage_valley, "confirm": _stage_confirm,
    "transfer": _stage_transfer,
}
