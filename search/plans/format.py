"""The plan file: a YAML list of stages, each a kind (search, bracket, valley, confirm, transfer) and its settings.

Built-in plans are ``spaces/plan-*.yaml``. Every mistake names the file, the stage, the key and the fix.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from search.options import NAME_RULE, SearchError
from spaces import BUILTIN_DIR, Dist, SpaceError, did_you_mean, load_space, not_yaml, read_yaml

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
    "search": "random, optuna or bohb", "scheduler": "fifo, asha or hyperband", "samples": "passes or trials",
    "grace_period": "ASHA grace period", "reduction_factor": "ASHA reduction factor",
    "around": "log-uniform ranges moved onto the valley's best trial, key: factor, e.g. {lr: 3} (search)",
    "warm_start": "seed Optuna with earlier trials inside the new space (default true)",
    "arch_keys": "config keys that make an architecture (valley)", "threshold": "standard errors (valley)",
    "keep": "at most this many valley architectures, in `order`", "top": "configurations (confirm)",
    "order": "size (smallest first, the one-standard-error rule) or metric (best first: an axis such as the "
             "clock's label encodings, whose size says nothing of complexity) (valley)",
    "seeds": "seeds per configuration (confirm)", "axis": "the complexity key (bracket)",
    "dataset": "the data set to transfer to (transfer)", "low": "too simple (bracket)", "high": "too complex (bracket)", "rounds": "bisection rounds (bracket)",
}
# The search options a stage may set for itself, over the plan's command line (search.plans.state.stage_options),
# and what each kind of stage reads besides name, kind and from: any other key would be ignored, so it is refused.
STAGE_OPTIONS = ("max_epochs", "search", "scheduler", "samples", "grace_period", "reduction_factor")
KIND_KEYS = {
    "search": ("space", *STAGE_OPTIONS, "around", "warm_start"),
    "bracket": ("space", *STAGE_OPTIONS, "axis", "low", "high", "rounds"),
    "valley": ("arch_keys", "threshold", "keep", "order"),
    "confirm": ("top", "seeds", "max_epochs"),
    "transfer": ("dataset", "top", "max_epochs"),
}
PLAN_KEYS = {"description": "one line", "dataset": "the default data set", "stages": "the list of stages",
             "budget_split": "each training stage's share of `valley plan --budget`, e.g. {rough: 0.3, ...}"}
TRAINING_KINDS = ("search", "bracket", "confirm", "transfer")



def not_log_uniform(params: dict[str, Any], key: str, space_name: str) -> str | None:
    """Why ``around`` cannot move ``key``'s range in a space's params, or None when it can."""
    dist = params.get(key)
    if isinstance(dist, Dist) and dist.kind == "loguniform":
        return None
    given = f"gives {key} as {dist.kind}" if isinstance(dist, Dist) else (
        f"fixes {key} at {dist!r}" if key in params else f"has no {key}")
    return (f"only a log-uniform range can be moved onto the valley's best trial, and {space_name} {given}; "
            f"give {key} as {{loguniform: [low, high]}} there or drop it from around")


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
    budget_split: dict[str, float] | None = None  # training stage -> share of a --budget
    changes: tuple[str, ...] = ()  # ``--stage STAGE.KEY=VALUE``, applied to the file's stages

    def training_stages(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.kind in TRAINING_KINDS]

    def stage(self, name: str) -> Stage:
        """The stage of that name (a stage's ``from`` names one, checked when the plan was read)."""
        return next(stage for stage in self.stages if stage.name == name)


def builtin_plans() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("plan-*.yaml"))}


def load_plan(name_or_path: str | Path, changes: tuple[str, ...] = ()) -> Plan:
    """Read and check a plan, with ``changes`` (``--stage STAGE.KEY=VALUE``) made to its stages: every
    mistake names the file (or the change), the stage, the key and the fix."""
    plans = builtin_plans()
    text = str(name_or_path)
    path = plans.get(text) or Path(text).expanduser()
    if not path.is_file():
        from spaces import builtin_spaces

        if text in builtin_spaces():
            raise SearchError(f"{text!r} is a built-in search space, not a plan; run it with `valley search {text}`")
        if (path / "valley.json").is_file():  # it said "no plan 'results/...'" and listed the built-in plans
            if (path.parent / "plan.json").is_file():
                raise SearchError(f"{text} is a stage's folder of the plan in {path.parent}; `valley plan "
                                  f"{path.parent}` continues the plan")
            raise SearchError(f"{text} is an experiment's folder, not a plan's; `valley resume {text}` continues it, "
                              f"`valley report {text}` reports it")
        hint = did_you_mean(text, plans)
        raise SearchError(f"no plan {text!r}; {hint}built-in plans: {', '.join(plans)} (or a YAML file)")
    try:
        doc = read_yaml(path)
    except yaml.YAMLError as err:
        raise SearchError(not_yaml(path, err)) from None
    if not changes:
        return parse_plan(doc, str(path), path.stem)
    try:
        plan = parse_plan(with_stage_changes(doc, changes, str(path)), str(path), path.stem)
    except SearchError as err:
        if str(err).startswith("--stage "):
            raise
        raise SearchError(f"{err} (the plan as --stage {' --stage '.join(changes)} changed it)") from None
    return dataclasses.replace(plan, changes=tuple(changes))


def with_stage_changes(doc: Any, changes: tuple[str, ...], source: str) -> Any:
    """The plan document with each ``STAGE.KEY=VALUE`` set (the value read as YAML): a stage's epochs,
    samples, seeds or space without a copy of the plan. The plan's own checks then apply to it."""
    from spaces import Loader

    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, list):
        return doc  # parse_plan says what is wrong with the file
    stages = [dict(raw) if isinstance(raw, dict) else raw for raw in stages]
    by_name = {str(raw["name"]): raw for raw in stages if isinstance(raw, dict) and "name" in raw}
    for change in changes:
        target, sep, text = change.partition("=")
        name, dot, key = target.strip().rpartition(".")
        if not (sep and dot and name and key):
            raise SearchError(f"--stage takes STAGE.KEY=VALUE, got {change!r}; e.g. --stage confirm.seeds=3")
        if name not in by_name:
            hint = did_you_mean(name, by_name)
            raise SearchError(f"--stage {change}: {source} has no stage {name!r}; {hint}its stages: "
                              f"{', '.join(by_name)}")
        if key in ("name", "kind") or key not in STAGE_KEYS:
            settable = [k for k in STAGE_KEYS if k not in ("name", "kind")]
            why = (f"a stage's {key} is what the plan is made of; change it in a copy of the plan" if key in STAGE_KEYS
                   else f"unknown key; {did_you_mean(key, settable)}valid keys: {', '.join(settable)}")
            raise SearchError(f"--stage {change}: {why}")
        try:
            value = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as err:
            raise SearchError(f"--stage {change}: the value is not YAML ({str(err).splitlines()[0]})") from None
        ok, what = value_rules().get(key, (lambda v: True, ""))
        if not ok(value):
            raise SearchError(f"--stage {change}: {key} must be {what}, got {value!r}")
        if key == "space" and str(value).endswith((".yaml", ".yml")):
            value = str(Path(value).expanduser().resolve())  # from the command line: relative to where it is given
        by_name[name][key] = value
    return {**doc, "stages": stages}


def parse_plan(doc: Any, source: str, name: str, begun: bool = False) -> Plan:
    """Read and check a plan document. A plan ``begun`` before keys its stages do not read were refused (its
    folder's plan.yaml) goes on as it began, those keys ignored as they were then."""
    def fail(where: str, message: str) -> SearchError:
        return SearchError(f"{source}: {where}: {message}")

    if isinstance(doc, dict) and "stages" not in doc and any(key in doc for key in ("params", "grid")):
        raise fail("stages", f"this is a search space, not a plan; run it with `valley search {source}`")
    if not isinstance(doc, dict) or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise fail("stages", "a plan is a mapping with a non-empty `stages:` list")
    for key in doc:
        if key not in PLAN_KEYS:
            hint = did_you_mean(key, PLAN_KEYS)
            raise fail(str(key), f"unknown key; {hint}valid keys: {', '.join(PLAN_KEYS)}")
    stages: list[Stage] = []
    for i, raw in enumerate(doc["stages"]):
        stages.append(parse_stage(raw, i, stages, source, fail, begun))
    plan = Plan(name, source, tuple(stages), doc.get("description", ""), doc.get("dataset"))
    if "budget_split" in doc:
        from search.plans.budget import check_split

        split = check_split(doc["budget_split"], plan.training_stages(), source)
        plan = dataclasses.replace(plan, budget_split=split)
    return plan



def value_rules() -> dict[str, tuple[Callable[[Any], bool], str]]:
    """What each stage key's value must be (checked when the plan is read, before anything trains)."""
    from search.options import SCHEDULERS, SEARCHERS

    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    counts = ("max_epochs", "samples", "grace_period", "keep", "top", "seeds", "rounds")
    return {**{key: (whole, "a whole number of at least 1") for key in counts},
            "reduction_factor": (lambda v: number(v) and v > 1, "a number above 1"),
            "threshold": (lambda v: number(v) and v >= 0, "a number of standard errors, 0 or more"),
            "search": (lambda v: v in SEARCHERS, f"one of {', '.join(SEARCHERS)}"),
            "scheduler": (lambda v: v in SCHEDULERS, f"one of {', '.join(SCHEDULERS)}"),
            "warm_start": (lambda v: isinstance(v, bool), "true or false"),
            "order": (lambda v: v in ("size", "metric"), "size (smallest first) or metric (best first)"),
            "arch_keys": (lambda v: isinstance(v, list) and all(isinstance(k, str) for k in v),
                          "a list of config keys, e.g. [hidden, layers]")}


def parse_stage(raw: Any, i: int, earlier: list[Stage], source: str,
                fail: Callable[[str, str], SearchError], begun: bool = False) -> Stage:
    """Stage ``i`` of a plan file, checked against the stages before it."""
    where = f"stages[{i}]"
    if not isinstance(raw, dict) or "name" not in raw:
        raise fail(where, "each stage is a mapping with at least `name:` and `kind:`")
    name_i = str(raw["name"])
    where = f"stage {name_i!r}"
    if not NAME_RULE.match(name_i):
        raise fail(where, "a stage name is letters, digits, '.', '_' or '-'")
    if name_i in {s.name for s in earlier}:
        raise fail(where, "two stages share this name; rename one")
    for key in raw:
        if key not in STAGE_KEYS:
            hint = did_you_mean(key, STAGE_KEYS)
            raise fail(f"{where}: {key}", f"unknown key; {hint}valid keys: {', '.join(STAGE_KEYS)}")
    for key, (ok, what) in value_rules().items():
        if key in raw and not ok(raw[key]):
            raise fail(f"{where}: {key}", f"must be {what}, got {raw[key]!r}")
    kind = raw.get("kind", "search")
    if kind not in KINDS:
        raise fail(f"{where}: kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    unread = [key for key in raw if key not in ("name", "kind", "from", *KIND_KEYS[kind])]
    if unread and not begun:
        readers = [k for k, keys in KIND_KEYS.items() if unread[0] in keys]
        raise fail(f"{where}: {unread[0]}", f"a {kind} stage does not read {unread[0]} (only {', '.join(readers)} "
                                            f"stages do); drop it, it would be ignored")
    source_stage = raw.get("from")
    if source_stage is not None and source_stage not in {s.name for s in earlier}:
        raise fail(f"{where}: from", f"{source_stage!r} is not an earlier stage; earlier stages: "
                                     f"{', '.join(s.name for s in earlier) or 'none'}")
    if kind == "transfer" and "dataset" not in raw:
        raise fail(f"{where}: dataset", "a transfer stage needs `dataset:`, the data set to re-run on")
    if kind == "transfer":
        from trainables.data import DATASETS, unknown_dataset

        if raw["dataset"] not in DATASETS:
            raise fail(f"{where}: dataset", unknown_dataset(str(raw["dataset"])))
    if kind in ("valley", "confirm", "transfer") and source_stage is None:
        raise fail(f"{where}: from", f"a {kind} stage needs `from:` naming the stage it reads")
    read = next((s for s in earlier if s.name == source_stage), None)
    if kind in ("valley", "confirm", "transfer") and read is not None and read.kind == "valley":
        fed = [s.name for s in earlier if s.source == read.name and s.kind != "valley"]
        raise fail(f"{where}: from", f"{read.name!r} is a valley stage, which trains nothing for a {kind} stage to "
                                     f"read; set `from:` to a stage that trained: {read.source!r}, whose trials "
                                     f"it read{''.join(f', or {n!r}, which searched inside it' for n in fed[:1])}")
    if kind in ("search", "bracket") and "space" not in raw:
        raise fail(f"{where}: space", f"a {kind} stage needs `space:` (a built-in space or YAML file)")
    if kind == "bracket":
        for key in ("axis", "low", "high"):
            if key not in raw:
                raise fail(f"{where}: {key}", f"a bracket stage needs `{key}:` ({STAGE_KEYS[key]})")
        if not (isinstance(raw["low"], int) and isinstance(raw["high"], int) and raw["low"] < raw["high"]):
            raise fail(f"{where}: low", f"low < high must hold (integers), got low={raw['low']!r}, "
                                        f"high={raw['high']!r}")
    if "around" in raw:
        around = raw["around"]
        factors = around.values() if isinstance(around, dict) else ()
        if not (factors and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 1 < f < float("inf")
                                for f in factors)):
            raise fail(f"{where}: around", f"a mapping of keys to factors above 1 (the range becomes the valley's "
                                           f"best value x/÷ factor), e.g. {{lr: 3}}; got {around!r}")
        if read is None or read.kind != "valley":
            raise fail(f"{where}: around", "only a search stage `from:` a valley stage has a best trial to search "
                                           "around; drop around or set `from:` to the valley stage")
    if kind == "search" and read is not None and read.kind != "valley" and not begun:
        raise fail(f"{where}: from", f"a search stage reads only a valley stage (the architectures it searches), and "
                                     f"{read.name!r} is a {read.kind} stage; drop `from:` or name a valley stage")
    if "warm_start" in raw and (read is None or read.kind != "valley") and not begun:
        raise fail(f"{where}: warm_start", "only a search stage `from:` a valley stage has earlier trials to "
                                           "warm-start Optuna with; drop warm_start or set `from:` to the valley stage")
    if kind == "bracket" and read is not None and not begun:
        raise fail(f"{where}: from", "a bracket stage reads no earlier stage (it brackets its own space); drop `from:`")
    settings = {k: v for k, v in raw.items() if k not in ("name", "kind", "from", "space")}
    space = raw.get("space")
    if space is not None:
        space = str(space)
        if space.endswith((".yaml", ".yml")) and not Path(space).is_absolute():
            space = str((Path(source).parent / space).resolve())  # relative to the plan file; absolute in plan.yaml
        try:
            loaded = load_space(space)
        except SpaceError as err:
            raise fail(f"{where}: space", str(err)) from None
        from trainables import FAMILIES, unknown_family

        if loaded.family not in FAMILIES:
            raise fail(f"{where}: space", f"{loaded.source}: family: {unknown_family(loaded.family)}")
        for key in raw.get("around", ()):
            problem = not_log_uniform(loaded.params, key, loaded.name)
            if problem:
                raise fail(f"{where}: around: {key}", problem)
    epochs = raw.get("max_epochs") or (loaded.max_epochs if space is not None else None)
    if raw.get("scheduler") == "asha" and "grace_period" in raw and epochs and raw["grace_period"] > epochs:
        raise fail(f"{where}: grace_period", f"{raw['grace_period']} is more than the stage's max_epochs ({epochs}): "
                                             "ASHA could never stop a trial; lower grace_period or raise max_epochs")
    return Stage(name_i, kind, source_stage, space, settings)
