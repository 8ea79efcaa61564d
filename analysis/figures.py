"""Plotly figures of an experiment: each a function of the frames of ``analysis.load``.

Every function returns a ``plotly.graph_objects.Figure`` and never raises on
thin data: a figure that cannot be drawn yet (no finished trial, too few
trials) says why in its place. Text from the user (config values, names) is
HTML-escaped, since plotly reads labels as a small subset of HTML.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

from analysis.format import FAILED, Task, guess_mode, guess_task, trained
from analysis.load import RUN_KEYS, mixed
from analysis.valley import ValleyResult, find_valley, is_seed, run_key, seeds_of_config

PALETTE = qualitative.Plotly
REGIONS = {"underfit": "rgba(66, 133, 244, 0.09)", "valley": "rgba(52, 168, 83, 0.16)",
           "overfit": "rgba(234, 67, 53, 0.09)"}
MINUTES = 720  # minutes on a 12-hour dial
MANY_CURVES = 150  # learning curves of more trials are drawn as one trace per colour
LAYOUT = dict(template="plotly_white", margin=dict(l=70, r=30, t=70, b=60), font=dict(size=13))


# --- helpers ---------------------------------------------------------------------------------------

def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A config value as short text: 0.001 -> '0.001', 5.0 -> '5'."""
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def varied_columns(trials: pd.DataFrame, seed: bool = False) -> list[str]:
    """The ``config/`` columns that differ between trials (seeds only when ``seed``)."""
    return [c for c in trials.columns if c.startswith("config/") and (seed or not is_seed(c))
            and trials[c].astype(str).nunique(dropna=False) > 1]


def config_labels(trials: pd.DataFrame) -> pd.Series:
    """'layers=2, dropout=0.2' per trial: the varied config values (within its stage), missing ones left out."""
    if "stage" in trials and trials["stage"].nunique() > 1:
        parts = [config_labels(part.drop(columns="stage")) for _, part in trials.groupby("stage", sort=False)]
        return pd.concat(parts).reindex(trials.index)
    columns = varied_columns(trials)
    if not columns:  # one configuration (a confirm stage's, over seeds): its values, the same for every trial
        columns = [c for c in trials.columns if c.startswith("config/") and not is_seed(c)
                   and c.removeprefix("config/") not in RUN_KEYS]
    labels = []
    for row in trials[columns].itertuples(index=False):
        parts = [f"{c.removeprefix('config/')}={fmt(v)}" for c, v in zip(columns, row) if not _missing(v)]
        labels.append(", ".join(parts) or "defaults")
    return pd.Series(labels, index=trials.index, dtype=str)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def pretty(metric: str) -> str:
    """'best_val_loss' -> 'best validation loss'."""
    return metric.replace("val_", "validation ").replace("_", " ").replace("acc", "accuracy").strip()


def _keys(trials: pd.DataFrame, epochs: pd.DataFrame) -> list[str]:
    """The columns that name a trial in both frames (a plan's trial ids are unique per experiment)."""
    return [c for c in ("stage", "experiment") if c in trials and c in epochs] + ["trial_id"]


def _hover(trials: pd.DataFrame, metric: str) -> list[str]:
    """Each trial's whole config, not only what varied among ``trials`` (a figure's part: one stage's trials, those
    ASHA stopped), where a value the others share told it from another stage's trial of the same look."""
    # a grid row's index, where no manifest resolves it, is what tells rows apart
    columns = [c for c in trials.columns if c.startswith("config/") and c.removeprefix("config/") not in RUN_KEYS
               or c == "config/variant"]
    lines = []
    for row in trials.to_dict("records"):
        text = [f"<b>trial {escape(row['trial_id'])}</b>"]
        if "stage" in row:
            text.append(f"stage {escape(row['stage'])}")
        config = ", ".join(f"{c.removeprefix('config/')}={fmt(row[c])}" for c in columns if not _missing(row[c]))
        text += [escape(line) for line in _wrap(config or "defaults", 60)]
        if not _missing(row.get("n_params")):
            text.append(f"{int(row['n_params']):,} parameters")
        if not _missing(row.get(metric)):
            text.append(f"{pretty(metric)} {row[metric]:.4g}")
        epochs = row.get("epochs")
        text.append(f"{escape(row.get('status', ''))}, {0 if _missing(epochs) else int(epochs)} epochs")
        lines.append("<br>".join(text))
    return lines


def message(title: str, text: str, height: int = 260) -> go.Figure:
    """A figure that says why it is empty."""
    fig = go.Figure()
    fig.add_annotation(text=escape(text), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#666"))
    fig.update_layout(**LAYOUT, title=title, height=height, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def _group_column(trials: pd.DataFrame, color: str | None) -> str | None:
    if color is not None:
        return color if color in trials else None
    if "stage" in trials and trials["stage"].nunique() > 1:
        return "stage"
    return "config/family" if "config/family" in trials else None


def _best_epoch_rows(trials: pd.DataFrame, epochs: pd.DataFrame | None) -> pd.DataFrame | None:
    """Each trial's epochs row at its best epoch (for the training loss there)."""
    if epochs is None or epochs.empty or "train_loss" not in epochs or "epoch" not in epochs:
        return None
    keys = _keys(trials, epochs)
    wanted = trials[[*keys, "best_epoch"]].dropna().rename(columns={"best_epoch": "epoch"})
    wanted["epoch"] = wanted["epoch"].astype(epochs["epoch"].dtype)
    return wanted.merge(epochs[[*keys, "epoch", "train_loss"]], on=[*keys, "epoch"], how="left")


# --- loss against parameter count ------------------------------------------------------------------

def loss_vs_params(trials: pd.DataFrame, epochs: pd.DataFrame | None = None, metric: str = "best_val_loss",
                   color: str | None = None, valley: ValleyResult | None = None, mode: str | None = None,
                   title: str | None = None) -> go.Figure:
    """Validation (and training) loss per trial against trainable parameters, log x, with the valley.

    The valley band (trials within one standard error of the best), the one-
    standard-error choice, and the underfit and overfit regions come from
    ``find_valley`` unless ``valley`` is given.
    """
    title = title or f"{pretty(metric).capitalize()} against model size"
    if trials.empty or "n_params" not in trials or metric not in trials:
        return message(title, f"no trial has reported n_params and {metric} yet")
    shown = trials[~trials["status"].isin(FAILED)] if "status" in trials else trials
    shown = shown[pd.to_numeric(shown["n_params"], errors="coerce").gt(0)
                  & np.isfinite(pd.to_numeric(shown[metric], errors="coerce"))]
    if shown.empty:
        return message(title, f"no finished trial with n_params and a finite {metric} yet")
    if valley is None:
        try:
            valley = find_valley(trials, epochs, metric=metric, mode=mode)
        except ValueError:
            valley = None
    fig = go.Figure()
    sizes = shown["n_params"].astype(float)
    low, high = float(sizes.min()) / 1.8, float(sizes.max()) * 1.8
    if valley is not None:
        _shade_regions(fig, valley, sizes, low, high)
    group = _group_column(shown, color)
    groups = [(None, shown)] if group is None else list(shown.groupby(group, sort=False))
    train = _best_epoch_rows(shown, epochs) if "loss" in metric else None
    for i, (name, part) in enumerate(groups):
        colour = PALETTE[i % len(PALETTE)]
        suffix = "" if name is None else f" · {escape(name)}"
        stopped = part["status"].eq("stopped") if "status" in part else pd.Series(False, index=part.index)
        for rows, label, symbol in ((part[~stopped], "validation", "circle"),
                                    (part[stopped], "validation, stopped early", "x")):
            if len(rows):
                fig.add_trace(go.Scatter(
                    x=rows["n_params"], y=rows[metric], mode="markers", name=f"{label}{suffix}",
                    legendgroup=str(name), marker=dict(color=colour, size=10, symbol=symbol,
                                                       line=dict(width=1, color="white")),
                    text=_hover(rows, metric), hovertemplate="%{text}<extra></extra>"))
        if train is not None:
            keys = [c for c in train.columns if c not in ("epoch", "train_loss")]
            rows = part[keys].merge(train, on=keys, how="left")
            fig.add_trace(go.Scatter(
                x=part["n_params"], y=rows["train_loss"], mode="markers", name=f"training{suffix}",
                legendgroup=str(name), marker=dict(color=colour, size=9, symbol="circle-open", line=dict(width=2)),
                text=_hover(part, metric), hovertemplate="training loss %{y:.4g}<br>%{text}<extra></extra>"))
    if valley is not None:
        _mark_choice(fig, valley, shown, metric)
    fig.update_layout(**LAYOUT, title=title, height=600, hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0))
    fig.update_xaxes(type="log", title="trainable parameters (log scale)", range=[math.log10(low), math.log10(high)])
    fig.update_yaxes(title="loss" if train is not None else pretty(metric))
    return fig


def _shade_regions(fig: go.Figure, valley: ValleyResult, sizes: pd.Series, low: float, high: float) -> None:
    """Underfit, valley and overfit as vertical bands; edges halfway (in log) to the next model size."""
    smaller = sizes[sizes < valley.low_params]
    larger = sizes[sizes > valley.high_params]
    left = math.sqrt(valley.low_params * smaller.max()) if len(smaller) else valley.low_params / 1.3
    right = math.sqrt(valley.high_params * larger.min()) if len(larger) else valley.high_params * 1.3
    for name, x0, x1 in (("underfit", low, left), ("valley", left, right), ("overfit", right, high)):
        if x1 <= x0:
            continue
        fig.add_vrect(x0=x0, x1=x1, fillcolor=REGIONS[name], line_width=0, layer="below")
        centre = (math.log10(x0) + math.log10(x1)) / 2  # annotations on a log axis take log10 positions
        fig.add_annotation(x=centre, y=1.0, xref="x", yref="paper", yanchor="top", showarrow=False,
                           text=f"<b>{name}</b>", font=dict(color="#555", size=12))
    edge = "+" if valley.mode == "min" else "−"
    fig.add_hline(y=valley.cutoff, line=dict(color="rgba(52, 168, 83, 0.9)", dash="dash", width=1.5),
                  annotation_text=f"band edge: best {edge} {valley.threshold_se:g} SE = {valley.cutoff:.4g}",
                  annotation_position="bottom right", annotation_font=dict(size=11, color="#2d7d46"))


def _mark_choice(fig: go.Figure, valley: ValleyResult, shown: pd.DataFrame, metric: str) -> None:
    for trial_id, name, symbol, size in ((valley.best, "best", "diamond-open", 20),
                                         (valley.chosen, "1-SE choice", "star", 22)):
        row = shown[shown["trial_id"].astype(str) == trial_id]
        if row.empty:
            continue
        text = escape(valley.reason) if name == "1-SE choice" else f"best trial {escape(trial_id)}"
        fig.add_trace(go.Scatter(
            x=row["n_params"].iloc[:1], y=row[metric].iloc[:1], mode="markers", name=name,
            marker=dict(symbol=symbol, size=size, color="#f2b701" if symbol == "star" else "#222",
                        line=dict(width=1.5, color="#222")),
            text=["<br>".join(_wrap(text, 70))], hovertemplate="%{text}<extra></extra>"))


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if len(line) + len(word) > width and line:
            lines.append(line)
            line = ""
        line = f"{line} {word}".strip()
    return [*lines, line]


# --- learning curves -------------------------------------------------------------------------------

def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, y: str = "val_loss",
                    title: str | None = None, legend_max: int = 16, log_y: bool = False) -> go.Figure:
    """``y`` per epoch, one line per trial coloured by model size; where ASHA or a budget stopped a trial, an x."""
    title = title or f"Learning curves: {pretty(y)} per epoch"
    if epochs is None or epochs.empty or y not in epochs:
        return message(title, f"no trial has reported {y} yet")
    x = "epoch" if "epoch" in epochs else "training_iteration"
    keys = _keys(trials, epochs)
    info = trials.set_index(keys)
    labels = config_labels(trials).set_axis(info.index)
    sizes = pd.to_numeric(info["n_params"], errors="coerce") if "n_params" in info else None
    many = len(info) > MANY_CURVES  # then one trace per colour, not per trial: thousands of traces are slow
    sized = sizes is not None and sizes.dropna().nunique() > 1  # one model size: colours by trial, no size scale
    if sized:
        logs = np.log10(sizes.clip(lower=1))
        span = (logs.min(), max(logs.max(), logs.min() + 1e-9))
        shade = ((logs - span[0]) / (span[1] - span[0])).fillna(0)
        colours = pd.Series(sample_colorscale("Viridis", list((shade * 9).round() / 9 if many else shade)),
                            index=info.index)
    else:
        colours = pd.Series([PALETTE[i % len(PALETTE)] for i in range(len(info))], index=info.index)
    fig = go.Figure()
    show_legend = len(info) <= legend_max
    ends: dict[str, list[tuple[float, float, str]]] = {status: [] for status in ("stopped", *FAILED)}
    merged: dict[str, tuple[list, list, list]] = {}  # colour -> x, y, hover text, curves split by None
    status_of = info["status"].to_dict() if "status" in info else {}
    label_of, colour_of = labels.to_dict(), colours.to_dict()  # per-trial lookups: thousands of trials
    for key, curve in epochs.sort_values([*keys, x]).groupby(keys, sort=False):
        key = key if len(keys) > 1 else key[0] if isinstance(key, tuple) else key
        if key not in label_of:
            continue
        trial_id = key[-1] if isinstance(key, tuple) else key
        label = escape(label_of[key])
        text = f"trial {escape(trial_id)}<br>{label}"
        xs_, ys_ = curve[x].tolist(), curve[y].tolist()
        if many:
            xs, ys, texts = merged.setdefault(colour_of[key], ([], [], []))
            xs += [*xs_, None]
            ys += [*ys_, None]
            texts += [text] * len(xs_) + [""]
        else:
            fig.add_trace(go.Scatter(
                x=xs_, y=ys_, mode="lines", name=f"{label}", showlegend=show_legend,
                line=dict(color=colour_of[key], width=1.6), opacity=0.85,
                hovertemplate=f"{text}<br>{x} %{{x}}: %{{y:.4g}}<extra></extra>"))
        status = status_of.get(key)
        if status in ends and xs_:
            ends[status].append((xs_[-1], ys_[-1], text))
    for colour, (xs, ys, texts) in merged.items():
        fig.add_trace(go.Scattergl(x=xs, y=ys, text=texts, mode="lines", showlegend=False, opacity=0.6,
                                   line=dict(color=colour, width=1.2),
                                   hovertemplate=f"%{{text}}<br>{x} %{{x}}: %{{y:.4g}}<extra></extra>"))
    styles = {"stopped": ("stopped early (by ASHA or a budget)", "x", "#d62728"),
              **{status: (status, symbol, "#7f0000")
                 for status, symbol in zip(FAILED, ("triangle-down", "triangle-up"))}}
    for status, points in ends.items():
        if points:
            name, symbol, colour = styles[status]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", name=name,
                marker=dict(symbol=symbol, size=11, color=colour, line=dict(width=1, color=colour)),
                text=[p[2] for p in points], hovertemplate=f"{name}<br>%{{text}}<extra></extra>"))
    if sized:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(colorscale="Viridis", cmin=span[0], cmax=span[1], color=[span[0]],
                                             colorbar=dict(title="log10<br>params", thickness=12))))
    fig.update_layout(**LAYOUT, title=title, height=560, hovermode="closest",
                      legend=dict(orientation="h", yanchor="top", y=-0.16, x=0, font=dict(size=11)))
    fig.update_xaxes(title=x.replace("_", " "))
    fig.update_yaxes(title=pretty(y), type="log" if log_y else "linear")
    return fig


# --- parallel coordinates and importance -----------------------------------------------------------

def _dimension(values: pd.Series, label: str) -> dict[str, Any]:
    """A parallel-coordinates axis: numbers (log10 when they span 100x or more; a '-' tick below the
    range for trials that lack the key), else categories."""
    numeric = pd.to_numeric(values, errors="coerce")
    is_number = values.map(lambda v: _missing(v) or (isinstance(v, (int, float, np.number))
                                                      and not isinstance(v, (bool, np.bool_))))
    if not (is_number.all() and numeric.notna().any()):
        text = values.map(fmt)
        choices = sorted(text.unique(), key=lambda v: (pd.to_numeric(v, errors="coerce"), v))
        codes = text.map({c: i for i, c in enumerate(choices)})
        return dict(label=escape(label), values=codes, tickvals=list(range(len(choices))),
                    ticktext=[escape(c) for c in choices], range=[-0.5, len(choices) - 0.5])
    low, high = float(numeric.min()), float(numeric.max())
    log = low > 0 and high / low >= 100
    shown = np.log10(numeric) if log else numeric
    lo, hi = (math.log10(low), math.log10(high)) if log else (low, high)
    ticks = list(np.linspace(lo, hi, 5)) if hi > lo else [lo]
    text = [fmt(float(f"{(10 ** t if log else t):.2g}")) for t in ticks]
    if numeric.isna().any():
        missing = lo - 0.15 * ((hi - lo) or 1.0)
        shown = shown.fillna(missing)
        ticks, text, lo = [missing, *ticks], ["-", *text], missing
    if not log and not numeric.isna().any():
        return dict(label=escape(label), values=shown)
    return dict(label=escape(label), values=shown, tickvals=ticks, ticktext=text, range=[lo, hi])


def parallel_coordinates(trials: pd.DataFrame, metric: str = "best_val_loss", mode: str | None = None,
                         title: str | None = None) -> go.Figure:
    """One line per trial through its varied hyperparameters, model size and the metric."""
    title = title or f"Hyperparameters against {pretty(metric)}"
    shown = trials[np.isfinite(pd.to_numeric(trials[metric], errors="coerce"))] if metric in trials else trials[:0]
    columns = varied_columns(shown)
    if len(shown) < 2 or not columns:
        return message(title, "needs at least 2 trials with a result and a hyperparameter that varies")
    dims = [_dimension(shown[c], c.removeprefix("config/")) for c in columns]
    if "n_params" in shown and shown["n_params"].notna().all():
        dims.append(dict(label="log10 params", values=np.log10(shown["n_params"].astype(float).clip(lower=1))))
    dims.append(dict(label=escape(pretty(metric)), values=shown[metric].astype(float)))
    mode = mode or guess_mode(metric)
    fig = go.Figure(go.Parcoords(
        dimensions=dims, line=dict(color=shown[metric].astype(float), colorscale="Viridis",
                                   reversescale=mode == "min", showscale=True,
                                   colorbar=dict(title=escape(pretty(metric)).replace(" ", "<br>", 1)))))
    fig.update_layout(**{**LAYOUT, "margin": dict(l=70, r=130, t=100, b=40)}, title=title, height=460)
    return fig


def param_importance(trials: pd.DataFrame, metric: str = "best_val_loss", mode: str | None = None,
                     min_trials: int = 4, seed: int = 0) -> dict[str, float]:
    """fANOVA importance (share of the metric's variance) of each varied hyperparameter.

    Builds an in-memory Optuna study from the trials frame; raises ValueError when
    fewer than ``min_trials`` trials have a result or no hyperparameter varies.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    shown = trials[np.isfinite(pd.to_numeric(trials[metric], errors="coerce"))] if metric in trials else trials[:0]
    if "status" in shown:
        shown = shown[~shown["status"].isin(FAILED)]
    columns = varied_columns(shown)
    if len(shown) < min_trials or not columns:
        raise ValueError(f"hyperparameter importance needs at least {min_trials} trials with a finite {metric} and "
                         f"a hyperparameter that varies, got {len(shown)} trials and {len(columns)} varied "
                         "hyperparameters; run more trials")
    distributions, values = {}, {}
    for column in columns:
        name = column.removeprefix("config/")
        raw = shown[column]
        numeric = pd.to_numeric(raw, errors="coerce")
        if raw.notna().all() and numeric.notna().all() and raw.map(lambda v: not isinstance(v, bool)).all():
            low, high = float(numeric.min()), float(numeric.max())
            if (numeric % 1 == 0).all():
                distributions[name] = IntDistribution(int(low), int(high))
                values[name] = numeric.astype(int).tolist()
            else:
                distributions[name] = FloatDistribution(low, high, log=low > 0 and high / low >= 100)
                values[name] = numeric.astype(float).tolist()
        else:
            text = raw.map(fmt)
            distributions[name] = CategoricalDistribution(sorted(text.unique()))
            values[name] = text.tolist()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if (mode or guess_mode(metric)) == "max" else "minimize"
    study = optuna.create_study(direction=direction)
    for i, value in enumerate(shown[metric].astype(float)):
        study.add_trial(optuna.trial.create_trial(
            params={name: values[name][i] for name in distributions}, distributions=distributions, value=value))
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=32, seed=seed)  # 64 by default; ample here
    scores = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return {name: float(score) for name, score in scores.items()}


def importance(trials: pd.DataFrame, metric: str = "best_val_loss", mode: str | None = None,
               title: str | None = None) -> go.Figure:
    """Bar chart of ``param_importance``; says why when there are too few trials."""
    title = title or f"Hyperparameter importance for {pretty(metric)} (fANOVA)"
    try:
        scores = param_importance(trials, metric, mode)
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return message(title, str(err).split(";")[0])
    names = list(scores)[::-1]
    fig = go.Figure(go.Bar(x=[scores[n] for n in names], y=[escape(n) for n in names], orientation="h",
                           marker_color="#4c78a8", hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    fig.update_layout(**LAYOUT, title=title, height=max(220, 120 + 40 * len(names)))
    fig.update_xaxes(title="share of the metric's variance", range=[0, 1])
    return fig


# --- results table ---------------------------------------------------------------------------------

def results_frame(trials: pd.DataFrame, metric: str = "best_val_loss", mode: str | None = None,
                  max_rows: int = 60, task: Task | None = None) -> pd.DataFrame:
    """The reference's results table: model, parameters, the task's headline and loss (test, best checkpoint).

    One row per trial, smallest model first; beyond ``max_rows`` trials, the best
    ``max_rows`` by ``metric``. ``task`` defaults to ``guess_task`` on the columns.
    """
    task = task or guess_task(trials.columns)
    headline = pretty(task.headline) if task.test_metric else "accuracy"  # the reference's column, left empty
    if trials.empty:
        return pd.DataFrame(columns=["model", "parameters", headline, "loss", "status"])
    test = task.test_metric if task.test_metric in trials else None
    rows = trials.copy()
    if len(rows) > max_rows and metric in rows:
        rows = rows.sort_values(metric, ascending=(mode or guess_mode(metric)) == "min",
                                na_position="last").head(max_rows)
    frame = pd.DataFrame({
        "model": config_labels(rows), "parameters": rows.get("n_params"), headline: rows[test] if test else None,
        "loss": rows.get("test_loss"), "status": rows.get("status")})
    if "stage" in rows and rows["stage"].nunique() > 1:
        frame.insert(0, "stage", pd.Categorical(rows["stage"], categories=list(dict.fromkeys(rows["stage"]))))
    sort = [c for c in ("stage", "parameters", "model") if c in frame]
    return frame.sort_values(sort, na_position="last").reset_index(drop=True)


def results_table(trials: pd.DataFrame, metric: str = "best_val_loss", mode: str | None = None,
                  title: str = "Results: test metrics of each trial's best checkpoint",
                  task: Task | None = None) -> go.Figure:
    frame = results_frame(trials, metric, mode, task=task)
    if frame.empty:
        return message(title, "no trials yet")
    cells = []
    for column in frame.columns:
        values = frame[column]
        if column == "parameters":
            cells.append([f"{int(v):,}" if not _missing(v) else "-" for v in values])
        elif pd.api.types.is_float_dtype(values):
            cells.append([f"{v:.4f}" if not _missing(v) else "-" for v in values])
        else:
            cells.append([escape(fmt(v)) for v in values])
    fig = go.Figure(go.Table(
        columnwidth=[3 if c == "model" else 1 for c in frame.columns],
        header=dict(values=[f"<b>{escape(c.capitalize())}</b>" for c in frame.columns], fill_color="#e8edf3",
                    align="left", height=30),
        cells=dict(values=cells, align="left", height=26, fill_color=[["#ffffff", "#f6f8fa"] * len(frame)])))
    fig.update_layout(**{**LAYOUT, "margin": dict(l=20, r=20, t=60, b=10)}, title=title,
                      height=min(110 + 27 * len(frame), 1400))
    return fig


# --- seeds and confidence intervals ----------------------------------------------------------------

def seed_frame(trials: pd.DataFrame, value: str, min_seeds: int = 1) -> pd.DataFrame:
    """(config, seed, value) per trained trial (``format.trained``: a seed ASHA or a budget cut short is
    no repeat of the others) of configs run with ``min_seeds`` or more such seeds: the input of
    ``confidence_intervals``."""
    if trials.empty or value not in trials:
        return pd.DataFrame(columns=["config", "seed", value])
    usable = trials[trained(trials)] if "status" in trials else trials
    labels = config_labels(usable)
    if "stage" in usable and usable["stage"].nunique() > 1:
        labels = usable["stage"].astype(str) + ": " + labels
    seeds = usable["config/seed"] if "config/seed" in usable else pd.Series(0, index=usable.index)
    frame = pd.DataFrame({"config": labels, "seed": seeds, value: pd.to_numeric(usable[value], errors="coerce")})
    frame = frame.dropna(subset=[value])
    frame = frame[~run_key(usable).loc[frame.index].duplicated().to_numpy()]  # one seed twice: one training twice
    counts = frame.groupby("config")[value].transform("size")
    return frame[counts >= min_seeds].reset_index(drop=True)


def has_repeats(trials: pd.DataFrame) -> bool:
    """True when some config trained with two or more seeds (not one seed twice)."""
    usable = trials[trained(trials)] if "status" in trials else trials
    return bool((seeds_of_config(usable) >= 2).any())


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 2000,
                 random_state: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the percentile bootstrap interval of the mean; one value gives (v, v, v)."""
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}; e.g. 0.95")
    if len(data) == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if len(data) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(random_state)
    means = rng.choice(data, size=(n_boot, len(data)), replace=True).mean(axis=1)  # (n_boot,)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return mean, float(low), float(high)


def seed_summary(frame: pd.DataFrame, value: str, label: str = "config", level: float = 0.95,
                 n_boot: int = 2000, random_state: int = 0) -> pd.DataFrame:
    """Per config: seeds, mean, and the bootstrap interval of the mean (columns n, mean, low, high)."""
    for column in (label, value):
        if column not in frame:
            raise ValueError(f"seed_summary needs a {column!r} column, got {list(frame.columns)}; "
                             "build the frame with seed_frame(trials, value)")
    rows = []
    for name, part in frame.groupby(label, sort=False):
        mean, low, high = bootstrap_ci(part[value], level, n_boot, random_state)
        rows.append({label: name, "n": int(part[value].notna().sum()), "mean": mean, "low": low, "high": high})
    return pd.DataFrame(rows, columns=[label, "n", "mean", "low", "high"])


def confidence_intervals(frame: pd.DataFrame, value: str, label: str = "config", seed: str = "seed",
                         level: float = 0.95, n_boot: int = 2000, random_state: int = 0, mode: str | None = None,
                         title: str | None = None) -> go.Figure:
    """Mean over seeds per config with its bootstrap interval (best on top), and each seed's value as a dot;
    ``mode`` (min or max for ``value``) says which is best."""
    title = title or f"{pretty(value).capitalize()} over seeds: mean and {level:.0%} bootstrap interval"
    if frame.empty or value not in frame:
        return message(title, f"no {value} values yet")
    summary = seed_summary(frame, value, label, level, n_boot, random_state)
    summary = summary.sort_values("mean", ascending=(mode or guess_mode(value)) == "max")  # best last = top
    order = list(summary[label])
    rows = frame.assign(_y=frame[label].map({name: i for i, name in enumerate(order)}))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(rows))
    seed_text = rows[seed].map(fmt) if seed in rows else pd.Series("?", index=rows.index)
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=rows[value], y=rows["_y"] + jitter, mode="markers", name="one seed",
        marker=dict(color="rgba(90, 90, 90, 0.45)", size=7), text=[f"seed {escape(s)}" for s in seed_text],
        hovertemplate="%{text}: %{x:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=summary["mean"], y=list(range(len(order))), mode="markers", name=f"mean, {level:.0%} CI",
        marker=dict(color="#1f77b4", size=12, symbol="diamond"),
        # one seed has no interval: a bar of width 0 read as a certain mean
        error_x=dict(type="data", symmetric=False, array=(summary["high"] - summary["mean"]).where(summary["n"] > 1),
                     arrayminus=(summary["mean"] - summary["low"]).where(summary["n"] > 1), thickness=2, width=8),
        text=[f"{escape(name)}<br>" + (f"n={n}, [{lo:.4g}, {hi:.4g}]" if n > 1 else "n=1: one seed, no interval")
              for name, n, lo, hi in zip(order, summary["n"], summary["low"], summary["high"])],
        hovertemplate="mean %{x:.4g}<br>%{text}<extra></extra>"))
    fig.update_layout(**LAYOUT, title=title, height=140 + 60 * len(order),
                      legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0))
    fig.update_yaxes(tickvals=list(range(len(order))), ticktext=["<br>".join(_wrap(escape(o), 40)) for o in order],
                     automargin=True, range=[-0.6, len(order) - 0.4])
    fig.update_xaxes(title=pretty(value))
    return fig


# --- two or more experiments -----------------------------------------------------------------------

def compare_experiments(experiments: Mapping[str, Any], metric: str = "best_val_loss",
                        mode: str | None = None, title: str | None = None) -> go.Figure:
    """Several experiments' loss against model size on one log axis; a line joins each one's best per size.

    ``experiments`` maps a name to a trials frame or to what ``analysis.load.load`` returns. Experiments on
    different data sets or of different families are not drawn together: their losses do not compare."""
    title = title or f"{pretty(metric).capitalize()} against model size, by experiment"
    frames = {name: getattr(value, "trials", value) for name, value in experiments.items()}
    if not all(isinstance(frame, pd.DataFrame) for frame in frames.values()):
        raise TypeError("compare_experiments takes {name: trials frame or analysis.load.load(folder)}, got "
                        f"{sorted({type(v).__name__ for v in experiments.values()})}")
    what = mixed(pd.concat(list(frames.values()), ignore_index=True)) if frames else {}
    if what:  # digits MLPs' losses beside clocks' on one axis, where the report refuses to draw them
        return message(title, "not drawn across experiments of different "
                              + "; ".join(f"{key} ({', '.join(values)})" for key, values in what.items())
                              + ": their losses do not compare")
    fig = go.Figure()
    ascending = (mode or guess_mode(metric)) == "min"
    for i, (name, trials) in enumerate(frames.items()):
        if trials.empty or "n_params" not in trials or metric not in trials:
            continue
        shown = trials[~trials["status"].isin(FAILED)] if "status" in trials else trials
        shown = shown[pd.to_numeric(shown["n_params"], errors="coerce").gt(0)
                      & np.isfinite(pd.to_numeric(shown[metric], errors="coerce"))]
        if shown.empty:
            continue
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(
            x=shown["n_params"], y=shown[metric], mode="markers", name=escape(name), legendgroup=escape(name),
            marker=dict(color=colour, size=9, opacity=0.7), text=_hover(shown, metric),
            hovertemplate="%{text}<extra></extra>"))
        best = shown.sort_values(metric, ascending=ascending).groupby("n_params").head(1).sort_values("n_params")
        fig.add_trace(go.Scatter(
            x=best["n_params"], y=best[metric], mode="lines", name=f"{escape(name)}: best per size",
            legendgroup=escape(name), line=dict(color=colour, width=2), hoverinfo="skip"))
    if not fig.data:
        return message(title, f"no experiment has trials with n_params and {metric}")
    fig.update_layout(**LAYOUT, title=title, height=500)
    fig.update_xaxes(type="log", title="trainable parameters (log scale)")
    fig.update_yaxes(title=pretty(metric))
    return fig


# --- clock reading (per-image predictions; minutes on the 720-minute dial) --------------------------

def minutes_of(labels: Any) -> np.ndarray:
    """Minutes 0-719 from minutes (N,) or [hour 0-11, minute 0-59] pairs (N, 2). Unsigned integers are read as
    int64: uint8 pairs overflowed at hour * 60, and uint16 differences wrapped (0 against 719: 1439 minutes)."""
    array = np.asarray(labels)
    if array.dtype.kind in "ub":
        array = array.astype(np.int64)
    if array.ndim == 2 and array.shape[1] == 2:
        array = array[:, 0] * 60 + array[:, 1]
    if array.ndim != 1:
        raise ValueError(f"clock labels must be minutes (N,) or [hour, minute] pairs (N, 2), got shape {array.shape}")
    return np.mod(array, MINUTES)


def csd(true: Any, pred: Any) -> np.ndarray:
    """Common-sense difference (CSD) in minutes: min(|p - t|, 720 - |p - t|), 0 to 360."""
    t, p = minutes_of(true), minutes_of(pred)
    if t.shape != p.shape:
        raise ValueError(f"true and predicted times must have the same length, got {len(t)} and {len(p)}")
    d = np.abs(p - t)
    return np.minimum(d, MINUTES - d)


def clock_time(minutes: float) -> str:
    """'12:05' for minute 5 on the dial (hour 0 reads 12)."""
    m = int(round(minutes)) % MINUTES
    return f"{m // 60 or 12}:{m % 60:02d}"


def csd_histogram(true: Any, pred: Any, bin_minutes: int = 5, title: str = "Common-sense difference") -> go.Figure:
    distance = csd(true, pred)
    fig = go.Figure(go.Histogram(x=distance, xbins=dict(start=0, end=360 + bin_minutes, size=bin_minutes),
                                 marker_color="#4c78a8", hovertemplate="%{x} min: %{y} images<extra></extra>"))
    median, mean = float(np.median(distance)), float(distance.mean())
    fig.add_vline(x=median, line=dict(dash="dash", color="#d62728"))
    fig.add_vline(x=mean, line=dict(dash="dot", color="#d62728"))
    fig.update_layout(**LAYOUT, height=380, bargap=0.05,
                      title=f"{title}: {len(distance)} images, median {median:.1f} min (dashed), "
                            f"mean {mean:.1f} (dotted)")
    fig.update_xaxes(title="common-sense difference (minutes, 0-360)", range=[0, 360 + bin_minutes])
    fig.update_yaxes(title="images")
    return fig


def csd_by_hour(true: Any, pred: Any, title: str = "Common-sense difference by true hour") -> go.Figure:
    t = minutes_of(true)
    distance = csd(true, pred)
    hours = t // 60
    fig = go.Figure()
    for hour in range(12):
        fig.add_trace(go.Box(y=distance[hours == hour], name=str(hour or 12), marker_color="#4c78a8",
                             boxmean=True, showlegend=False))
    fig.update_layout(**LAYOUT, title=title, height=400)
    fig.update_xaxes(title="true hour", categoryorder="array", categoryarray=[str(h or 12) for h in range(12)])
    fig.update_yaxes(title="common-sense difference (minutes)")
    return fig


def hour_minute_confusion(true: Any, pred: Any, title: str = "Hour and minute confusion") -> go.Figure:
    """Counts of (true, read) hour (12 x 12) and minute (60 x 60); real-valued reads round to a minute."""
    t, p = (np.rint(minutes_of(v)).astype(int) % MINUTES for v in (true, pred))
    hours = np.zeros((12, 12), dtype=int)  # (true hour, read hour)
    np.add.at(hours, (t // 60, p // 60), 1)
    minutes = np.zeros((60, 60), dtype=int)  # (true minute, read minute)
    np.add.at(minutes, (t % 60, p % 60), 1)
    names = [str(h or 12) for h in range(12)]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.42, 0.58], horizontal_spacing=0.1,
                        subplot_titles=("hour", "minute"))
    fig.add_trace(go.Heatmap(z=hours, x=names, y=names, colorscale="Blues", showscale=False,
                             hovertemplate="true %{y}, read %{x}: %{z}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Heatmap(z=minutes, colorscale="Blues", colorbar=dict(title="images"),
                             hovertemplate="true :%{y:02d}, read :%{x:02d}: %{z}<extra></extra>"), row=1, col=2)
    fig.update_layout(**LAYOUT, title=title, height=460)
    fig.update_xaxes(title="read")
    fig.update_yaxes(title="true", autorange="reversed")
    return fig


def _rgb(images: Any) -> np.ndarray:
    """(N, H, W, 3) uint8 from (N, H, W), (N, H, W, 1|3) or (N, 1|3, H, W), uint8 or floats in 0-1."""
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, got {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array


def worst_reads(images: Any, true: Any, pred: Any, n: int = 12, columns: int = 6,
                title: str = "Worst reads") -> go.Figure:
    """The ``n`` images with the largest common-sense difference, titled with the true and read times."""
    distance = csd(true, pred)
    rgb = _rgb(images)
    if len(rgb) != len(distance):
        raise ValueError(f"images and labels must have the same length, got {len(rgb)} images and "
                         f"{len(distance)} labels")
    order = np.argsort(-distance, kind="stable")[:n]
    if len(order) == 0:
        return message(title, "no images")
    t, p = minutes_of(true), minutes_of(pred)
    rows = math.ceil(len(order) / columns)
    names = [f"true {clock_time(t[i])} · read {clock_time(p[i])}<br>CSD {distance[i]:.0f} min" for i in order]
    fig = make_subplots(rows=rows, cols=min(columns, len(order)), subplot_titles=names,
                        horizontal_spacing=0.02, vertical_spacing=0.12 / max(rows, 1) + 0.04)
    for k, i in enumerate(order):
        fig.add_trace(go.Image(z=rgb[i], hoverinfo="skip"), row=k // columns + 1, col=k % columns + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(**{**LAYOUT, "margin": dict(l=10, r=10, t=90, b=10)}, title=title, height=60 + 200 * rows)
    return fig
