"""Search spaces: plain data, read from YAML and checked before Ray starts.

A space names a family, a data set, the metric to optimise, and the trial
configs: ``grid`` rows (partial configs, one trial each) and ``params``
(fixed values or distributions). ``search/`` turns a :class:`Space` into Ray
Tune's ``param_space``; nothing here imports Ray or torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import re
import typing
from pathlib import Path
from typing import Any

import yaml

BUILTIN_DIR = Path(__file__).parent

# distribution name -> (number of arguments, what they are)
DISTRIBUTIONS: dict[str, tuple[int, str]] = {
    "grid": (-1, "a non-empty list of values, each tried"),
    "choice": (-1, "a non-empty list of values, one drawn per trial"),
    "uniform": (2, "[low, high]"),
    "loguniform": (2, "[low, high], both > 0"),
    "randint": (2, "[low, high], integers, high exclusive"),
    "lograndint": (2, "[low, high], integers > 0, high exclusive"),
    "quniform": (3, "[low, high, q]"),
    "qloguniform": (3, "[low, high, q], low and high > 0"),
    "qrandint": (3, "[low, high, q], integers, high inclusive"),
}
TOP_KEYS = {
    "description": "one line shown by `valley spaces`",
    "family": "the model family trained (mlp, cnn, clock)",
    "dataset": "the data set trained on, unless --dataset says otherwise",
    "metric": "the validation metric to optimise: val_loss, best_val_loss or val_<the task's metric>",
    "mode": "min or max",
    "max_epochs": "epochs per trial, unless --max-epochs says otherwise",
    "grid": "a list of partial configs, one trial each (times --samples)",
    "params": "config keys: fixed values or distributions",
}
REQUIRED = ("family", "metric", "mode")


def did_you_mean(word: Any, names: Any) -> str:
    """"did you mean 'x'? " naming the one of ``names`` nearest ``word``, or "" when none is near."""
    close = difflib.get_close_matches(str(word), list(names), n=1)
    return f"did you mean {close[0]!r}? " if close else ""
# Config keys the whole search shares, set at a space's top level or on the command line: under params or in
# a grid row the search overruled them (params) or trained on other epochs than ASHA, budgets and the board
# counted (a row's max_epochs), without a word.
SEARCH_WIDE = {
    "max_epochs": "epochs are the whole search's: give `max_epochs:` at the space's top level, or --max-epochs",
    "dataset": "the data set is the whole search's: give `dataset:` at the space's top level, or --dataset",
    "family": "a space trains one family: give `family:` at its top level, and write a space for another",
}


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a number (YAML 1.2), as users expect, and refuses a key
    written twice in one mapping (YAML forbids it; PyYAML kept the last: a range then a fixed ``lr``
    searched nothing)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice in one mapping; keep "
                                                        "one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file safely (no ``!!python`` tags) with numbers as a person writes them; a file
    that is not UTF-8 text raises ``yaml.YAMLError`` like any other that is not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise yaml.YAMLError(f"not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); is it a "
                             "YAML file?") from None
    return yaml.load(text, Loader=Loader)  # noqa: S506 - Loader derives from SafeLoader


def not_yaml(path: Path, err: yaml.YAMLError) -> str:
    """What :func:`read_yaml` refused in ``path``, where and why, e.g. ``f.yaml: line 3: not valid YAML (...)``."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}: line {mark.line + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{where}: not valid YAML ({problem})"


class SpaceError(ValueError):
    """A space that no search could run: raised before Ray starts."""


@dataclasses.dataclass(frozen=True)
class Dist:
    """One distribution of a space, e.g. ``Dist('loguniform', (1e-6, 1e-3))``."""

    kind: str
    args: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Space:
    name: str
    family: str
    metric: str
    mode: str
    source: str  # the file it was read from
    description: str = ""
    dataset: str | None = None
    max_epochs: int | None = None
    grid: tuple[dict[str, Any], ...] = ()
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # values or Dist

    def keys(self) -> set[str]:
        """Every config key the space sets."""
        return set(self.params) | {k for row in self.grid for k in row}

    def grid_size(self) -> int:
        """Trials per sample: grid rows times the product of ``grid`` distributions."""
        size = max(1, len(self.grid))
        for value in self.params.values():
            if isinstance(value, Dist) and value.kind == "grid":
                size *= len(value.args)
        return size

    def is_sampled(self) -> bool:
        """Whether any key is drawn at random (so --samples > 1 gives new configs)."""
        return any(isinstance(v, Dist) and v.kind != "grid" for v in self.params.values())

    def as_doc(self) -> dict[str, Any]:
        """The space as the YAML document ``parse_space`` reads back (keys it leaves unset left out)."""
        def plain(value: Any) -> Any:
            if isinstance(value, Dist):
                return {value.kind: [plain(a) for a in value.args]}
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            return value.item() if hasattr(value, "item") and hasattr(value, "dtype") else value  # numpy's: YAML's

        doc = {"description": self.description or None, "family": self.family, "metric": self.metric,
               "mode": self.mode, "dataset": self.dataset, "max_epochs": self.max_epochs,
               "grid": [dict(row) for row in self.grid] or None,
               "params": {k: plain(v) for k, v in self.params.items()} or None}
        return {k: v for k, v in doc.items() if v is not None}

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid combination as a partial config (rows merged with grid distributions)."""
        rows = list(self.grid) or [{}]
        axes = {k: v.args for k, v in self.params.items() if isinstance(v, Dist) and v.kind == "grid"}
        return [{**row, **dict(zip(axes, combo))}
                for row in rows for combo in itertools.product(*axes.values())]


def builtin_spaces() -> dict[str, Path]:
    """Built-in spaces by name (a file's stem)."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml")) if not p.stem.startswith("plan-")}


def resolve(name_or_path: str | Path) -> Path:
    """The file of a built-in space name, or a user's YAML path."""
    text = str(name_or_path)
    builtins = builtin_spaces()
    if text in builtins:
        return builtins[text]
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise SpaceError(f"space file {path} {what}; give a YAML file or a built-in space "
                             f"({', '.join(builtins)})")
        return path
    if (BUILTIN_DIR / f"{text}.yaml").is_file():  # a built-in plan (plan-*.yaml beside the spaces)
        raise SpaceError(f"{text!r} is a built-in plan, not a search space; run it with `valley plan {text}`")
    hint = did_you_mean(text, builtins)
    raise SpaceError(f"unknown space {text!r}; {hint}built-in spaces: {', '.join(builtins)} "
                     "(or give the path of a YAML file)")


def load_space(name_or_path: str | Path) -> Space:
    """Read and check a space; every mistake raises :class:`SpaceError` naming file, key and fix."""
    path = resolve(name_or_path)
    try:
        doc = read_yaml(path)
    except yaml.YAMLError as err:
        raise SpaceError(f"{not_yaml(path, err)}; fix the syntax there") from None
    except OSError as err:
        raise SpaceError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_space(doc, source=str(path), name=path.stem)


def parse_space(doc: Any, source: str = "<space>", name: str = "space") -> Space:
    """Check a YAML document's structure and every distribution's rule."""
    def fail(key: str, message: str) -> SpaceError:
        return SpaceError(f"{source}: {key}: {message}")

    if not isinstance(doc, dict):
        raise fail("top level", f"a space is a mapping of {', '.join(TOP_KEYS)}, got {type(doc).__name__}")
    if "stages" in doc and not any(key in doc for key in ("params", "grid")):  # it said "budget_split: unknown key"
        raise fail("stages", f"this is a plan, not a search space; run it with `valley plan {source}`")
    for key in doc:
        if key not in TOP_KEYS:
            hint = did_you_mean(key, TOP_KEYS)
            raise fail(str(key), f"unknown key; {hint}valid keys: {', '.join(TOP_KEYS)}")
    missing = [key for key in REQUIRED if key not in doc]  # all at once: one run to learn each was one too many
    if missing:
        raise fail(", ".join(missing), f"missing; add {'; '.join(f'`{key}:` ({TOP_KEYS[key]})' for key in missing)}")
    for key in ("family", "metric", "description", "dataset"):
        if key in doc and not isinstance(doc[key], str):
            raise fail(key, f"must be a string, got {doc[key]!r}")
    if doc["mode"] not in ("min", "max"):
        raise fail("mode", f"must be min or max, got {doc['mode']!r}")
    max_epochs = doc.get("max_epochs")
    if max_epochs is not None and (not isinstance(max_epochs, int) or isinstance(max_epochs, bool)
                                   or max_epochs < 1):
        raise fail("max_epochs", f"must be a whole number >= 1, got {max_epochs!r}")

    grid = doc.get("grid") or []
    if not isinstance(grid, list) or not all(isinstance(row, dict) for row in grid):
        raise fail("grid", "must be a list of mappings (partial configs), e.g. `- {hidden: [100]}`")
    if "grid" in doc and not grid:
        raise fail("grid", "is empty; list at least one row or remove the key")
    for i, row in enumerate(grid):
        for key, value in row.items():
            if isinstance(value, dict):
                raise fail(f"grid[{i}].{key}", "grid rows hold fixed values; put distributions under params")
            if key in SEARCH_WIDE:
                raise fail(f"grid[{i}].{key}", SEARCH_WIDE[key])
        if row in grid[:i]:  # it trained the same configuration twice, unsaid
            raise fail(f"grid[{i}]", f"repeats grid[{grid.index(row)}] ({row}); remove it (--samples N runs "
                                     f"every row N times, each with its own seed)")

    raw_params = doc.get("params") or {}
    if not isinstance(raw_params, dict):
        raise fail("params", f"must be a mapping of config keys, got {raw_params!r}")
    for key in raw_params:
        if key in SEARCH_WIDE:
            raise fail(f"params.{key}", SEARCH_WIDE[key])
    params = {str(k): _parse_value(f"params.{k}", v, fail) for k, v in raw_params.items()}
    return Space(name=name, family=doc["family"], metric=doc["metric"], mode=doc["mode"],
                 source=source, description=doc.get("description", ""), dataset=doc.get("dataset"),
                 max_epochs=max_epochs, grid=tuple(grid), params=params)


def _parse_value(key: str, value: Any, fail: Any) -> Any:
    if not isinstance(value, dict):
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(key, f"must be finite, got {value}")
        return value
    if len(value) != 1:
        raise fail(key, f"a distribution is one of {', '.join(DISTRIBUTIONS)} with its arguments, "
                        f"e.g. {{loguniform: [1e-6, 1e-3]}}, got {value!r}")
    (kind, args), = value.items()
    if kind not in DISTRIBUTIONS:
        hint = did_you_mean(kind, DISTRIBUTIONS)
        raise fail(key, f"unknown distribution {kind!r}; {hint}valid: {', '.join(DISTRIBUTIONS)}")
    arity, shape = DISTRIBUTIONS[kind]
    if not isinstance(args, list):
        raise fail(key, f"{kind} takes {shape}, got {args!r}")
    if arity == -1:
        if not args:
            raise fail(key, f"{kind} is empty; list at least one value")
        repeated = [a for i, a in enumerate(args) if a in args[:i]]
        if kind == "grid" and repeated:  # one trial per value: a repeat trained the same configuration twice
            raise fail(key, f"grid lists {repeated[0]!r} twice; remove the repeat (--samples N runs every "
                            f"value N times, each with its own seed)")
        return Dist(kind, tuple(tuple(a) if isinstance(a, list) else a for a in args))
    if len(args) != arity:
        raise fail(key, f"{kind} takes {shape}, got {args!r}")
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise fail(key, f"{kind} takes numbers {shape}, got {args!r}")
    if not all(math.isfinite(a) for a in args):
        raise fail(key, f"bounds must be finite, got {args!r}")
    low, high = args[0], args[1]
    if "int" in kind and not all(float(a).is_integer() for a in args):
        raise fail(key, f"{kind} takes integers {shape}, got {args!r}")
    if kind.startswith("log") or kind == "qloguniform":
        if low <= 0:
            raise fail(key, f"a log range must be > 0 at both ends, got low={low}, high={high}; "
                            f"use {'randint' if 'int' in kind else 'uniform'} for a range that touches 0")
    if kind in ("randint", "lograndint"):
        if not low < high:
            raise fail(key, f"low < high must hold (high is exclusive), got low={low}, high={high}; "
                            f"for the single value {low} write `{key.split('.')[-1]}: {low}`")
    elif not low <= high:
        raise fail(key, f"low <= high must hold, got low={low}, high={high}; swap the bounds")
    if arity == 3 and args[2] <= 0:
        raise fail(key, f"the step q must be > 0, got q={args[2]}")
    if arity == 3:
        _check_steps(key, kind, low, high, args[2], fail)
    return Dist(kind, tuple(args))


def _quantised_ends(low: float, high: float, q: float) -> tuple[float, float]:
    """The smallest and largest multiples of ``q`` from ``low`` to ``high`` (the first above the second
    when there is none), as a person writes them: whole numbers for whole ones, 0.4 not 0.4000000000000001."""
    first, last = math.ceil(low / q - 1e-9) * q, math.floor(high / q + 1e-9) * q
    if all(isinstance(v, int) for v in (low, high, q)):
        return int(first), int(last)
    return float(f"{first:.12g}"), float(f"{last:.12g}")


def _check_steps(key: str, kind: str, low: float, high: float, q: float, fail: Any) -> None:
    """A quantised range draws multiples of q: there must be one, and its bounds must be multiples too. Ray
    Tune's quniform and qloguniform refuse others inside the search (a traceback); for qrandint, Tune draws
    multiples of q where Optuna and BOHB draw low + k q, the same values only when low is a multiple."""
    first, last = _quantised_ends(low, high, q)
    if first > last or (kind == "qloguniform" and last <= 0):
        raise fail(key, f"no multiple of q={q} lies from {low} to {high}, so {kind} has nothing to draw; "
                        f"use a smaller q or a wider range")
    if not all(math.isclose(end / q, round(end / q)) for end in (low, high)):  # Ray's own test
        first = first if first > 0 or kind != "qloguniform" else q
        raise fail(key, f"{kind} draws multiples of q, and its low and high must be multiples of q={q} too, "
                        f"got low={low}, high={high}; e.g. [{first!r}, {last!r}, {q!r}]")
