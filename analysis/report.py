"""One self-contained HTML report of an experiment or plan: opens offline, no server needed.

The first figure answers the question the search asked (``lead``): stage against
stage for a plan, the valley when the architecture varies, a categorical key's
configurations over seeds when that is what varied, the hyperparameters
otherwise; then the rest, the results table, the top trials, failed trials and
loading warnings. Plotly's JavaScript is inlined once; every string from disk is
HTML-escaped.
"""
from __future__ import annotations

import dataclasses
import datetime
import errno
import html
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from analysis import figures
from analysis.format import DONE, FAILED, budget_amount, confirm_verdict, metric_column, trained
from analysis.load import NO_METRIC, Experiment, ResultsError, load, mixed, progress
from analysis.valley import ValleyResult, chance_warning, find_valley, not_learning, usable_trials

PLOT_CONFIG = {"displaylogo": False, "responsive": True,
               "toImageButtonOptions": {"format": "png", "scale": 2}}  # the camera button saves a PNG offline


@dataclasses.dataclass
class Section:
    key: str  # file name of the exported image
    heading: str
    figure: go.Figure
    note: str = ""  # plain text shown under the heading


def lead(experiment: Experiment) -> str:
    """The question the search asked, which the report answers first.

    ``stages`` for a plan of several stages; ``valley`` when the architecture varies (model size
    spans at least a factor of 2); ``compare`` when only categorical keys vary (an encoding, a
    backbone, an optimizer); otherwise ``hyperparameters``.
    """
    trials = experiment.trials
    if "stage" in trials and trials["stage"].nunique() > 1:
        return "stages"
    sizes = pd.to_numeric(trials.get("n_params", pd.Series(dtype=float)), errors="coerce").dropna()
    if len(sizes) and sizes.min() > 0 and sizes.max() / sizes.min() >= 2:
        return "valley"
    varied = figures.varied_columns(trials)
    # a number is a category where few values repeat (a 3-way batch size over 9 trials), not where two trials
    # drew two learning rates
    categorical = [c for c in varied if not pd.api.types.is_numeric_dtype(trials[c])
                   or trials[c].nunique() < min(4, trials[c].count())]
    if categorical and len(categorical) == len(varied):  # beside a sampled lr, a 3-way batch size is one more knob
        return "compare"
    return "hyperparameters"


def build_sections(experiment: Experiment) -> list[Section]:
    """The report's figures, the one that answers what the search asked first (see ``lead``)."""
    trials, epochs, metric, mode = experiment.trials, experiment.epochs, experiment.metric, experiment.mode
    task = experiment.task
    asked = lead(experiment)
    sections = [_valley_section(experiment)]
    curve = metric.removeprefix("best_")
    if epochs.empty or curve not in epochs:
        curve = "val_loss"
    sections.append(Section("learning-curves", "Learning curves", figures.learning_curves(trials, epochs, curve),
                            "x marks where ASHA or a budget stopped a trial; triangles mark failures."))
    if asked == "stages":
        by_stage = dict(list(trials.groupby("stage", sort=False)))
        sections.insert(0, Section("stages", "Stages side by side", figures.compare_experiments(by_stage, metric, mode),
                                   "Each stage's trials against model size; a line joins each stage's best per size."))
    if asked == "compare" and task.test_metric in trials:
        seeds = figures.seed_frame(trials, task.test_metric)
        names = [c.removeprefix("config/") for c in figures.varied_columns(trials)]
        varied = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        title = varied if len(names) <= 2 else "configurations"  # a confirm stage's top configurations
        sections.insert(0, Section("compare", f"{title} compared: {task.test_metric} over seeds",
                                   figures.confidence_intervals(seeds, task.test_metric, mode=task.mode),
                                   f"The search varied {varied}: each configuration's test metric per seed, its mean "
                                   "and a bootstrap 95% interval (the valley over model sizes is further down)."
                                   + _cut_short(trials)))
    hyper = [Section("parallel", "Hyperparameters", figures.parallel_coordinates(trials, metric, mode),
                     "Drag along an axis to select a range of trials."),
             Section("importance", "Hyperparameter importance", figures.importance(trials, metric, mode))]
    sections = hyper + sections if asked == "hyperparameters" else sections + hyper
    if asked != "compare" and task.test_metric in trials and figures.has_repeats(trials):
        seeds = figures.seed_frame(trials, task.test_metric, min_seeds=2)
        sections.append(Section("seeds", "Confidence intervals over seeds",
                                figures.confidence_intervals(seeds, task.test_metric, mode=task.mode),
                                _cut_short(trials, repeated=True).strip()))
    sections.append(Section("results", "Results table", figures.results_table(trials, metric, mode, task=task),
                            "Test metrics of each trial's best checkpoint (by validation loss)."))
    if task.kind == "clock":
        sections += clock_sections(experiment)
    what = mixed(trials)
    if what:  # a folder of experiments: no figure puts their metrics on one scale (the valley says why itself)
        why = (f"Not drawn across experiments of different {_differ(what)}: their {metric} do not compare. Open "
               "each experiment's own report for it.")
        sections = [Section(s.key, s.heading, figures.message(s.heading, why), why)
                    if s.key in ("stages", "parallel", "importance", "compare") else s for s in sections]
    for section in sections:
        section.figure.update_layout(title_text="", margin_t=50)  # the section heading names it
    return sections


def _valley_section(experiment: Experiment) -> Section:
    """Loss against model size with the valley marked (for a plan: its valley stage's valley)."""
    trials, epochs, metric, mode = experiment.trials, experiment.epochs, experiment.metric, experiment.mode
    # what the y axis holds: a val_acc space's was headed "Loss"
    heading = f"{'Loss' if 'loss' in metric else figures.pretty(metric).capitalize()} against model size"
    if metric not in trials:  # a search that has just started
        text = f"No trial has reported a {metric} yet."
        return Section("valley", heading, figures.message(heading, text), text)
    valley: ValleyResult | None = None
    scope_trials, scope_epochs, scope = trials, epochs, "Valley"
    source, threshold = _valley_source(experiment)
    if source is not None:  # the valley the plan's own valley stage found, among every stage's trials
        scope_trials = trials[trials["stage"] == source]
        scope_epochs = epochs[epochs["stage"] == source] if "stage" in epochs else epochs
        scope = f"Valley of stage {source}"
    what = mixed(scope_trials)
    usable = usable_trials(scope_trials, metric)
    sizes = usable["n_params"].unique() if "n_params" in usable else []
    none = None  # why there is no valley to read
    trained_for = sorted(pd.to_numeric(scope_trials.get("config/max_epochs", pd.Series(dtype=float)),
                                       errors="coerce").dropna().astype(int).unique())
    if what:  # a folder of experiments: one loss scale per data set and family, no valley across them
        none = (f"No valley is read across experiments of different {_differ(what)}: their losses do not "
                "compare. Open each experiment's own report for its valley.")
    elif len(trained_for) > 1:  # a folder's 2-epoch and 3-epoch searches read as one valley
        none = (f"No valley is read across experiments trained for different epochs "
                f"({', '.join(map(str, trained_for))}): a model trained longer sits lower. Open each experiment's "
                "own report for its valley.")
    elif usable.empty:  # find_valley's own words asked to wait for an epoch
        none = (f"No trial has a finite {metric}: each of the {len(scope_trials)} failed, diverged or reported no "
                "epoch (the failed-and-stalled table says why), so there is no valley to read.")
    elif len(sizes) == 1:
        without = len(scope_trials) - len(usable)  # diverged at their first epoch: no size, no metric
        those = f"Every trial with a {metric}" if without else "Every trial"
        none = (f"{those} has one model size ({int(sizes[0]):,} parameters)"
                + (f"; {without} more failed or diverged without one" if without else "")
                + ": there is no valley over model sizes to read here.")
    if none:
        return Section("valley", heading, figures.loss_vs_params(trials, epochs, metric, mode=mode), none)
    try:
        valley = find_valley(scope_trials, scope_epochs, metric=metric, threshold_se=threshold, mode=mode)
        note = f"{scope}: {valley.reason}."
        untrained = not_learning(usable, valley.chosen)
        if untrained:
            note += f" Warning: {untrained}; train them longer before reading a valley from them."
    except ValueError as err:
        note = str(err)
    return Section("valley", f"{heading}: the valley",
                   figures.loss_vs_params(trials, epochs, metric, valley=valley, mode=mode), note)


def stopped_early(trials: pd.DataFrame) -> int:
    """How many trials a scheduler or a budget stopped before their last epoch (they finished; they did not
    train all their epochs)."""
    return int((trials["status"].isin(DONE) & ~trained(trials)).sum()) if "status" in trials else 0


def _cut_short(trials: pd.DataFrame, repeated: bool = False) -> str:
    """What intervals over seeds leave out: the trials a scheduler or a budget stopped before their last epoch,
    and those that have not finished (an interrupted search's). ``repeated``: of configs run with several seeds
    only (the others are not drawn at all: a plan's rough and fine trials beside its confirm seeds)."""
    from analysis.valley import seeds_of_config

    if "status" not in trials:
        return ""
    if repeated:
        trials = trials[seeds_of_config(trials) >= 2]
    cut = stopped_early(trials)
    unfinished = int((~trials["status"].isin([*DONE, *FAILED])).sum())
    said = [f"{cut} trial(s) ASHA or a budget stopped early are left out: a seed trained for fewer epochs is no "
            "repeat of the others."] if cut else []
    if unfinished:
        said.append(f"{unfinished} unfinished trial(s) (still running, or cut off by an interruption) are left out.")
    return "".join(f" {line}" for line in said)


def clock_sections(experiment: Experiment) -> list[Section]:
    """How the best clock model reads the test images: CSD histogram, by hour, confusion, worst reads."""
    trials, metric, mode = experiment.trials, experiment.metric, experiment.mode
    if "status" not in trials or metric not in trials:  # no trial has reported an epoch yet
        return []
    done = trials[trials["status"].isin(DONE)].dropna(subset=[metric])
    if done.empty:
        return []
    what = mixed(trials)
    if what:  # "the best" of clocks-tiny and clocks-small trials is one of no ranking
        why = (f"No one best clock model is read across experiments of different {_differ(what)}: their {metric} "
               "do not compare. Open each experiment's own report for its reads.")
        return [Section("clock-reads", "Clock reads", figures.message("Clock reads", why), why)]
    best = done.sort_values(metric, ascending=mode == "min").iloc[0]
    saved = experiment.predictions(best["trial_id"])
    label = f"trial {best['trial_id']} ({figures.pretty(metric)} {figures.fmt(best[metric])})"
    if saved is None:
        return [Section("clock-reads", "Clock reads", figures.message(
            "Clock reads", f"{label} has no saved test predictions (predictions.npz beside its last "
                           "checkpoint): it ran before valley saved them, or its checkpoints were deleted"))]
    true, pred, worst = saved["true"], saved["pred"], saved["worst_index"]
    note = f"The test images as {label} reads them, at its best epoch by validation loss."
    return [
        Section("csd-histogram", "Common-sense difference", figures.csd_histogram(true, pred), note),
        Section("csd-by-hour", "Common-sense difference by hour", figures.csd_by_hour(true, pred)),
        Section("confusion", "Hour and minute confusion", figures.hour_minute_confusion(true, pred)),
        Section("worst-reads", "Worst reads",
                figures.worst_reads(saved["worst_images"], true[worst], pred[worst], n=len(worst)),
                f"The {len(worst)} test images {label} reads worst, with true and read times."),
    ]


def _valley_source(experiment: Experiment) -> tuple[str | None, float]:
    """The stage that a plan's valley stage read (plan.json), when its trials are loaded, and the band's
    width in standard errors that stage used (the one-standard-error rule where nothing says otherwise).
    A plan without one (a priori: fine-tune a known architecture, then confirm) reads its first training
    stage's: across stages, one seed's lucky run stood beside the confirm stage's means of several."""
    stages = experiment.manifest.get("stages") if experiment.kind == "plan" else None
    if not isinstance(stages, dict) or "stage" not in experiment.trials:
        return None, 1.0
    loaded = set(experiment.trials["stage"])
    for state in stages.values():
        if isinstance(state, dict) and state.get("kind") == "valley":
            source = state.get("from") or (state.get("derived_from") or {}).get("stage")
            if source in loaded:
                return str(source), float(state.get("threshold_se", 1.0))
    first = [name for name, state in stages.items()
             if isinstance(state, dict) and state.get("kind") in ("search", "bracket") and name in loaded]
    return (first[0] if first else None), 1.0


def kaleido_installed() -> bool:
    """Whether plotly's image export backend is importable (it is not a dependency of valley)."""
    return importlib.util.find_spec("kaleido") is not None


def export_images(sections: list[Section], folder: Path, formats: tuple[str, ...] = ("png", "svg")) -> list[str]:
    """Write each figure as PNG and SVG where plotly's image export (kaleido) works; returns notes."""
    if not kaleido_installed():
        return ["PNG/SVG export skipped: plotly's image export needs the kaleido package, which is not "
                "installed (pip install kaleido); the camera button on each figure saves a PNG."]
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for section in sections:
        for fmt in formats:
            try:
                section.figure.write_image(folder / f"{section.key}.{fmt}")
                written += 1
            except Exception as err:  # kaleido fails in many ways (no Chrome, sandbox, timeouts): never fatal
                return [f"PNG/SVG export stopped after {written} files: {type(err).__name__}: {err}"]
    return [f"{written} figure images written to {folder}"]


def render_report(experiment: Experiment | str | Path, plotlyjs: str = "inline", refresh_s: int | None = None,
                  notes: list[str] | None = None, sections: list[Section] | None = None,
                  index_url: str | None = None) -> str:
    """The report as one HTML page; ``plotlyjs`` is "inline" (self-contained) or a script URL.

    ``refresh_s`` reloads the page that often; ``index_url`` adds a link back to a list of experiments.
    """
    if not isinstance(experiment, Experiment):
        experiment = load(experiment)
    sections = build_sections(experiment) if sections is None else sections
    e = html.escape
    if plotlyjs == "inline":
        from plotly.offline import get_plotlyjs

        script = f"<script>{get_plotlyjs()}</script>"
    else:
        script = f'<script src="{e(plotlyjs)}"></script>'
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    counts = progress(experiment.trials)
    early = ", ".join([*([f"{counts['stalled']} stalled at chance level"] if counts["stalled"] else []),
                       *([f"{cut} stopped early"] if (cut := stopped_early(experiment.trials)) else [])])
    early = f" ({early})" if early else ""
    nav = f'<nav><a href="{e(index_url)}">&larr; all experiments</a></nav>' if index_url else ""
    body = [nav, f"<header><h1>{e(experiment.name)}</h1>",
            f'<span class="status {e(experiment.status)}">{e(experiment.status)}</span>',
            f'<span class="kind">{e(kind_name(experiment))}</span>',
            f"<p class=\"counts\">{counts['total']} trials: {counts['done']} done{early}, "
            f"{counts['active']} running or unfinished, {counts['failed']} failed</p>{_chance(experiment)}</header>",
            _summary(experiment)]
    figure_html = []
    for section in sections:
        div = section.figure.to_html(full_html=False, include_plotlyjs=False, config=PLOT_CONFIG,
                                     div_id=f"fig-{section.key}")
        note = f'<p class="note">{e(section.note)}</p>' if section.note else ""
        figure_html.append(f'<section id="{e(section.key)}"><h2>{e(section.heading)}</h2>{note}{div}</section>')
    body += figure_html
    body.append(_top_trials(experiment))
    body.append(_failures(experiment.trials))
    messages = experiment.warnings + (notes or [])
    if messages:
        items = "".join(f"<li>{e(m)}</li>" for m in messages)
        body.append(f'<section id="warnings"><h2>Notes and warnings</h2><ul>{items}</ul></section>')
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body.append(f"<footer>valley report of {e(str(experiment.path))}, made {made}</footer>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
            f"<title>{e(experiment.name)} · valley report</title><style>{CSS}</style>{script}</head>"
            f'<body><main>{"".join(body)}</main></body></html>\n')


def write_report(folder: str | Path, out: str | Path | None = None, images: bool = True) -> Path:
    """Write ``folder/report.html`` (or ``out``): one file that opens offline; PNG/SVG beside it if possible."""
    if out is not None and Path(out).suffix.lower() not in (".html", ".htm"):  # not valley.json, not trials.csv
        raise ResultsError(f"--out {out}: a report is one HTML file; give a path ending in .html")
    experiment = load(folder)
    out = Path(out) if out is not None else experiment.path / "report.html"
    try:  # a folder that cannot be written is said before the figures are built, where it can be
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as err:
        raise unwritable(out, err) from None
    sections = build_sections(experiment)
    notes = export_images(sections, out.with_name(f"{out.stem}-figures")) if images else []
    try:
        out.write_text(render_report(experiment, notes=notes, sections=sections), encoding="utf-8")
    except OSError as err:
        raise unwritable(out, err) from None
    return out


def unwritable(out: Path, err: OSError) -> ResultsError:
    return ResultsError(f"cannot write the report to {out} ({err.strerror or err}); pass --out with a file in a "
                        "folder you can write")


KIND_NAMES = {"valley": "valley experiment", "ray": "Ray Tune experiment", "plan": "plan"}


def kind_name(experiment: Experiment) -> str:
    """What the folder is: a plan only where it has a plan.json, else a folder of experiments."""
    if experiment.kind == "plan" and not experiment.manifest:
        return "folder of experiments"
    return KIND_NAMES[experiment.kind]

SUMMARY_KEYS = (("dataset", "dataset"), ("family", "family"), ("space", "space"), ("metric", "metric"),
                ("mode", "mode"), ("max_epochs", "epochs per trial"), ("git_commit", "git commit"),
                ("data_fingerprint", "data fingerprint"), ("started", "started"), ("finished", "finished"))


def _summary(experiment: Experiment) -> str:
    e = html.escape
    if experiment.kind == "plan":
        return _plan_stages(experiment) + _plan_experiments(experiment)
    manifest = experiment.manifest
    pairs = [(label, manifest[key]) for key, label in SUMMARY_KEYS if manifest.get(key) not in (None, "")]
    options = manifest.get("options") or {}
    pairs += [(k, options[k]) for k in ("search", "scheduler", "samples", "seed") if options.get(k) is not None]
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    if data.get("sizes"):
        pairs.append(("train / val / test", " / ".join(f"{n:,}" for n in data["sizes"]) + f", {data.get('split')}"))
    pairs += [("data note", note) for note in data.get("notes", [])]
    if experiment.kind == "ray":
        chosen = any(w.startswith(NO_METRIC) for w in experiment.warnings)  # val_loss, as Tune recorded none
        source = "; Ray Tune recorded none, see the warnings" if chosen else ", from Ray Tune's state"
        pairs.append(("metric", f"{experiment.metric} ({experiment.mode}{source})" if experiment.ray_metric
                      else "none: Ray Tune recorded no metric (see the warnings)"))
    if not pairs:
        return ""
    cells = "".join(f"<div><dt>{e(str(k))}</dt><dd title=\"{e(str(v))}\">{e(str(v))}</dd></div>" for k, v in pairs)
    return f'<dl class="summary">{cells}</dl>'


def _plan_stages(plan: Experiment) -> str:
    """plan.json's stages: kind, status and what each decided."""
    declared = plan.manifest.get("stages")
    if not isinstance(declared, dict) or not declared:
        return ""
    budget = plan.manifest.get("budget") if isinstance(plan.manifest.get("budget"), dict) else None
    rows = []
    for name, state in declared.items():
        state = state if isinstance(state, dict) else {}
        summary = state.get("summary") if isinstance(state.get("summary"), dict) else {}
        bracket = state.get("bracket") if isinstance(state.get("bracket"), dict) else {}
        outcome = state.get("reason") or bracket.get("message") or (
            confirm_verdict(summary) if summary.get("winner") else state.get("warm_start", ""))
        around = state.get("around") if isinstance(state.get("around"), dict) else {}
        if around:
            moved = ", ".join(f"{key} in [{low:.3g}, {high:.3g}]" for key, (low, high) in around.items())
            outcome = f"searched {moved}, around the valley's best trial; {outcome}"
        for note in (state.get("note"), summary.get("incomplete"), summary.get("note")):
            if note:
                outcome = f"{outcome} ({note})" if outcome else note
        row = {"stage": name, "kind": state.get("kind"), "status": state.get("status"),
               "from": (state.get("derived_from") or {}).get("stage") or state.get("from"),
               "experiments": ", ".join(map(str, state.get("experiments", []))), "outcome": outcome}
        if budget and name in budget.get("split", {}):
            allowed, spent = budget.get("allowed", {}).get(name), budget.get("spent", {}).get(name)
            row.update({"budget share": budget["split"][name],
                        "allowed": None if allowed is None else budget_amount(allowed, budget["unit"]),
                        "spent": None if spent is None else budget_amount(spent, budget["unit"])})
        rows.append(row)
    heading = "Stages"
    if budget:
        spent = sum((budget.get("spent") or {}).values())
        unit = budget["unit"]
        heading += f" (budget: {budget_amount(spent, unit)} of {budget_amount(budget['total'], unit)} spent)"
    changes = plan.manifest.get("stage_changes")
    changed = (f"<p>Stages as the command line changed them: "
               f"{html.escape(' '.join(f'--stage {change}' for change in changes))}</p>"
               if isinstance(changes, list) and changes else "")
    return (f'<section id="plan-stages"><h2>{html.escape(heading)}</h2>{changed}'
            f'{_html_table(pd.DataFrame(rows))}</section>')


def _plan_experiments(plan: Experiment) -> str:
    columns = {"experiment", "stage"}
    stage_of = dict(zip(plan.trials["experiment"], plan.trials["stage"])) if columns <= set(plan.trials) else {}
    rows = []
    for name, sub in plan.stages.items():
        m, counts = sub.manifest, progress(sub.trials)
        rows.append({"experiment": name, "stage": stage_of.get(name, name), "status": sub.status,
                     "space": m.get("space"), "dataset": m.get("dataset"), "metric": m.get("metric", sub.metric),
                     "trials": counts["total"], "done": counts["done"], "failed": counts["failed"],
                     "git commit": m.get("git_commit"),
                     "data fingerprint": m.get("data_fingerprint")})
    if not rows:
        return ""
    return f'<section id="plan-experiments"><h2>Experiments</h2>{_html_table(pd.DataFrame(rows))}</section>'


def _differ(what: dict[str, list[str]]) -> str:
    """What :func:`analysis.load.mixed` found in words: "data sets (dataset digits, synthetic)"."""
    plural = {"dataset": "data sets", "family": "families"}
    return (f"{' and '.join(plural[key] for key in what)} "
            f"({'; '.join(key + ' ' + ', '.join(values) for key, values in what.items())})")


def _top_trials(experiment: Experiment, n: int = 10) -> str:
    trials, metric = experiment.trials, experiment.metric
    if trials.empty or metric not in trials:
        return '<section id="top"><h2>Top trials</h2><p class="note">No trial has a result yet.</p></section>'
    what = mixed(trials)
    if what:
        return (f'<section id="top"><h2>Top trials</h2><p class="note">No trials are ranked across experiments of '
                f"different {html.escape(_differ(what))}: their {html.escape(metric)} do not compare. Open "
                "each experiment's own report for its top trials.</p></section>")
    # a confirm stage's seeds each chose on a validation split of its own: their metric does not rank beside the
    # other stages' (they filled a plan's top table, its winner's luckiest seed first)
    stages = experiment.manifest.get("stages") if experiment.kind == "plan" else None
    confirm = [name for name, state in (stages or {}).items() if isinstance(state, dict)
               and state.get("kind") == "confirm"]
    note = ""
    confirming = trials["stage"].isin(confirm) if confirm and "stage" in trials else None
    if confirming is not None and confirming.any() and not confirming.all():
        trials = trials[~confirming]
        note = (f'<p class="note">Stage {html.escape(", ".join(confirm))} is left out: each of its seeds chose on a '
                f"validation split of its own, so its {html.escape(metric)} does not rank beside the other stages'; "
                "the stages table gives its verdict, the intervals over seeds its configurations.</p>")
    ranked = trials[~trials["status"].isin(FAILED)].dropna(subset=[metric])
    ranked = ranked.sort_values(metric, ascending=experiment.mode == "min").head(n)
    table = pd.DataFrame({"trial": ranked["trial_id"]})
    if "stage" in ranked:
        table["stage"] = ranked["stage"]
    table["config"] = figures.config_labels(trials).loc[ranked.index]
    task = experiment.task
    val = metric_column(f"val_{task.headline}") if task.test_metric else None
    scores = (metric, val, "test_loss", task.test_metric)
    for column, name in (("n_params", "parameters"), ("epochs", "epochs"), ("status", "status"),
                         *((c, c) for c in scores if c), ("wall_s", "wall s")):
        if column in ranked and name not in table:
            table[name] = ranked[column]
    return (f'<section id="top"><h2>Top {len(table)} of {len(trials)} trials by {html.escape(metric)}</h2>'
            f"{note}{_html_table(table)}</section>")


def _chance(experiment: Experiment) -> str:
    """The header's warning of trials that never left chance level (a plan's: each stage's), else ""."""
    parts = [experiment.trials] if "stage" not in experiment.trials else [
        part for _, part in experiment.trials.groupby("stage", sort=False)]
    said = [(str(part["stage"].iloc[0]) if "stage" in part else "", chance_warning(part)) for part in parts]
    lines = [f"{f'stage {stage}: ' if stage else ''}{text}" for stage, text in said if text]
    return "".join(f'<p class="warning">Warning: {html.escape(line)}</p>' for line in lines)


def _failures(trials: pd.DataFrame) -> str:
    if trials.empty or "status" not in trials:
        return ""
    failed = trials[trials["status"].isin((*FAILED, "stalled"))]
    if failed.empty:
        return ""
    error = failed.get("error", pd.Series("", index=failed.index)).fillna("")
    error = error.where(failed["status"] != "stalled", "validation metric at chance level: it learned nothing")
    table = pd.DataFrame({"trial": failed["trial_id"], "status": failed["status"],
                          "config": figures.config_labels(trials).loc[failed.index],
                          "epochs": failed.get("epochs"), "error": error})
    return (f'<section id="failed"><h2>Failed and stalled trials ({len(failed)})</h2>{_html_table(table)}'
            '</section>')


def _html_table(frame: pd.DataFrame) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(frame.columns, row):
            text = _cell(column, value)
            kind = "num" if _is_number(value) else "long" if len(text) > 40 else "text"
            cells.append(f'<td class="{kind}">{e(text)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "parameters" and _is_number(value):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "wall s" else f"{value:.4f}"
    return str(value)


CSS = """
:root { --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb; --bg: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 40px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 10px 14px; margin-bottom: 6px; }
h1 { margin: 0; font-size: 26px; word-break: break-all; }
h2 { margin: 0 0 6px; font-size: 19px; }
.counts { flex-basis: 100%; margin: 0; color: var(--muted); }
header .warning { flex-basis: 100%; margin: 0; color: #8a5a00; }
.status, .kind { padding: 2px 10px; border-radius: 12px; font-size: 13px; font-weight: 600; }
.kind { background: #e4e7eb; color: var(--muted); font-weight: 500; }
.status { background: #e4e7eb; }
.status.completed { background: #d3f2dc; color: #1e6b36; }
.status.running { background: #dbeafe; color: #1d4ed8; }
.status.interrupted, .status.unknown { background: #fdebc8; color: #8a5a00; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 18px 10px;
          margin: 18px 0; box-shadow: 0 1px 2px rgba(0, 0, 0, 0.03); }
.note { margin: 0 0 6px; color: var(--muted); font-size: 14px; }
dl.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 2px 18px;
              margin: 12px 0 4px; padding: 10px 16px; background: #fff; border: 1px solid var(--line);
              border-radius: 8px; font-size: 14px; }
dl.summary div { display: flex; gap: 10px; min-width: 0; }
dl.summary dt { color: var(--muted); white-space: nowrap; }
dl.summary dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px;
                overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.table { overflow-x: auto; }
.table table { border-collapse: collapse; width: 100%; font-size: 13.5px; }
.table th { text-align: left; border-bottom: 2px solid var(--line); padding: 6px 10px; white-space: nowrap; }
.table td { border-bottom: 1px solid var(--line); padding: 5px 10px; vertical-align: top; }
.table td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.table td.text { white-space: nowrap; }
.table td.long { min-width: 260px; overflow-wrap: anywhere; }
#warnings ul { margin: 4px 0 8px; padding-left: 20px; color: #8a5a00; }
nav { margin-bottom: 10px; font-size: 14px; }
a { color: #1d4ed8; text-decoration: none; }
a:hover { text-decoration: underline; }
footer { color: var(--muted); font-size: 12px; margin-top: 20px; word-break: break-all; }
"""
