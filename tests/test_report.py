"""The HTML report: written, self-contained, escaped, and rendered by headless Chromium without errors."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from analysis import report
from analysis.report import write_report

DATA = Path(__file__).parent / "data"
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = "<script>alert('x')<img src=x onerror=alert(1)>"  # a folder name cannot hold '/', so no </script>
PLOT_DIV = 'class="plotly-graph-div"'


@pytest.fixture(scope="module")
def asha_report(tmp_path_factory) -> tuple[Path, str]:
    folder = shutil.copytree(DATA / "asha-digits", tmp_path_factory.mktemp("r") / "asha-digits")
    path = write_report(folder)
    return path, path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def plan_report(tmp_path_factory) -> tuple[Path, str]:
    plan = tmp_path_factory.mktemp("p") / "plan"
    shutil.copytree(DATA / "asha-digits", plan / "1-rough")
    shutil.copytree(DATA / "seeds-digits", plan / "2-confirm")
    stages = {"1-rough": {"kind": "search", "status": "completed", "experiments": ["1-rough"],
                          "around": {"lr": [0.000333, 0.003]}, "warm_start": "warm-started Optuna with 14 trials"},
              "valley": {"kind": "valley", "status": "completed", "from": "1-rough", "reason": "chose <the small one>"},
              "2-confirm": {"kind": "confirm", "status": "completed", "experiments": ["2-confirm"],
                            "summary": {"winner": '{"layers": 2}', "p_winner_beats_runner_up": 0.97,
                                        "incomplete": "compared on the seeds every configuration finished (0, 1)"},
                            "note": "1 of them ASHA stopped early"}}
    (plan / "plan.json").write_text(json.dumps({"plan": "p", "status": "completed", "stages": stages,
                                                "stage_changes": ["2-confirm.seeds=2"]}))
    path = write_report(plan, out=plan / "out" / "plan-report.html")
    return path, path.read_text(encoding="utf-8")


def test_report_is_written_beside_the_experiment(asha_report):
    path, _ = asha_report
    assert path.name == "report.html" and path.parent.name == "asha-digits"


def test_report_is_self_contained(asha_report):
    _, page = asha_report
    plotlyjs = get_plotlyjs()
    assert page.count(plotlyjs) == 1  # plotly's JavaScript, inlined once
    rest = page.replace(plotlyjs, "")  # (plotly's own code names its logo's and map tiles' URLs)
    assert not re.search(r"<script[^>]+src=", rest)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", rest)


def test_report_holds_summary_figures_and_tables(asha_report):
    _, page = asha_report
    assert page.count(PLOT_DIV) == 5  # valley, learning curves, parallel coordinates, importance, results
    order = [page.index(f'<section id="{key}">') for key in ("valley", "learning-curves", "parallel", "top")]
    assert order == sorted(order)
    for text in ("<h1>asha-digits</h1>", "completed", "digits", "mlp-rough", "edf38bbff7834287",
                 "56ed6eb07cca5ce5c35d6f43a91d0bd3ce236f7a", "chose trial 9f306_00006", "Top 10 of 14 trials",
                 "Failed and stalled trials (1)"):
        assert text in page, text


def test_plan_report_compares_stages_and_shows_seed_intervals(plan_report):
    path, page = plan_report
    assert path.name == "plan-report.html"
    assert page.count(PLOT_DIV) == 7  # + stages side by side, confidence intervals over seeds
    assert '<section id="stages">' in page and '<section id="seeds">' in page
    assert "1-rough" in page and "2-confirm" in page
    assert '<section id="plan-stages">' in page and "chose &lt;the small one&gt;" in page
    assert "Stages as the command line changed them: --stage 2-confirm.seeds=2" in page
    assert ("P(winner beats runner-up) = 0.97 (1 of them ASHA stopped early) (compared on the seeds every "
            "configuration finished (0, 1))") in page
    assert "searched lr in [0.000333, 0.003], around the valley&#x27;s best trial; warm-started Optuna" in page
    # the confirm seeds' validation metric, each on a split of its own, ranked beside the rough trials (a review)
    top = page[page.index('<section id="top">'):].split("</section>")[0]
    assert "Top 10 of 14 trials by best_val_loss" in top and "Stage 2-confirm is left out" in top
    assert '<td class="text">1-rough</td>' in top and '<td class="text">2-confirm</td>' not in top


def test_report_of_a_plain_ray_experiment(tmp_path):
    path = write_report(DATA / "plain-ray", out=tmp_path / "plain.html")
    page = path.read_text()
    assert page.count(PLOT_DIV) == 5 and "Ray Tune experiment" in page and "best_loss" in page


def test_report_escapes_everything_from_disk(tmp_path):
    folder = shutil.copytree(DATA / "asha-digits", tmp_path / HOSTILE)
    params = folder / "9f306_00003" / "params.json"
    params.write_text(json.dumps({**json.loads(params.read_text()), "note": "</script><script>alert(2)</script>"}))
    (folder / "9f306_00013" / "error.txt").write_text("RuntimeError: <img src=y onerror=alert(3)>\n")
    page = write_report(folder).read_text()
    for raw in ("<script>alert(", "<img src=x", "<img src=y", "</script><script>"):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(&#x27;x&#x27;)" in page and "&lt;img src=y onerror=alert(3)&gt;" in page


def test_image_export_is_skipped_or_reported_never_fatal(tmp_path, monkeypatch):
    sections = [report.Section("valley", "Valley", go.Figure(go.Scatter(x=[1], y=[2])))]
    monkeypatch.setattr(report, "kaleido_installed", lambda: False)
    notes = report.export_images(sections, tmp_path / "figures")
    assert "PNG/SVG export skipped" in notes[0] and not (tmp_path / "figures").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("Kaleido requires Google Chrome")

    monkeypatch.setattr(report, "kaleido_installed", lambda: True)
    monkeypatch.setattr(go.Figure, "write_image", broken)
    notes = report.export_images(sections, tmp_path / "figures")
    assert notes == ["PNG/SVG export stopped after 0 files: RuntimeError: Kaleido requires Google Chrome"]


def test_report_lists_notes_and_warnings(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "kaleido_installed", lambda: False)
    folder = shutil.copytree(DATA / "seeds-digits", tmp_path / "seeds")
    result = folder / "f0f6b_00004" / "result.json"
    result.write_text(result.read_text()[:-100])
    page = write_report(folder).read_text()
    assert '<section id="warnings">' in page and "PNG/SVG export skipped" in page
    assert "f0f6b_00004: result.json has a half-written last line" in page


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                    reason="headless Chromium is not installed (/usr/bin/chromium); run tests/install_chromium.sh "
                           "(in CI, where CI is set, this test runs and fails instead)")
def test_report_renders_in_headless_chromium(plan_report, tmp_path):
    assert CHROMIUM.exists(), "CI needs /usr/bin/chromium for this test: run tests/install_chromium.sh first"
    path, page = plan_report
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--enable-unsafe-swiftshader",  # software WebGL, for the parallel-coordinates figure
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=10000", "--dump-dom", path.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    dom, log = done.stdout, done.stderr
    plots = page.count(PLOT_DIV)
    assert done.returncode == 0, log[-2000:]
    assert dom.count('class="plot-container plotly"') == plots, "every figure should be drawn"
    assert dom.count('class="main-svg"') >= plots
    errors = [line for line in log.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "Error" in line
                                                                          and "GL Driver" not in line)]
    assert not errors, "\n".join(errors)


def sections_of(experiment) -> list[str]:
    return [section.key for section in report.build_sections(experiment)]


def test_the_report_leads_with_the_question_the_search_asked(tmp_path):
    """Architectures varied: the valley first. One architecture, a categorical key varied (as the clock
    encodings on one backbone): that key compared over seeds first, the valley further down. Only
    continuous keys varied: the hyperparameters first. A plan: stage against stage."""
    from analysis.load import load

    sized = load(DATA / "seeds-digits")  # 760 to 28,000 parameters
    assert report.lead(sized) == "valley" and sections_of(sized)[0] == "valley"

    encodings = load(DATA / "seeds-digits")  # the same trials, as if each row were an encoding of one model
    trials = encodings.trials
    kind = {"[10]": "class720", "1": "regression", "2": "class_class"}
    key = trials["config/hidden"].fillna(trials["config/layers"].astype(str)).astype(str).str.replace(".0", "", regex=False)
    encodings.trials = trials.drop(columns=["config/hidden", "config/layers"]).assign(
        **{"config/encoding": key.map(kind), "n_params": 550_000 + trials["n_params"]})
    assert report.lead(encodings) == "compare"
    keys = sections_of(encodings)
    assert keys[0] == "compare" and keys.index("valley") > 0 and "seeds" not in keys

    tuned = load(DATA / "seeds-digits")
    tuned.trials = tuned.trials.drop(columns=["config/hidden", "config/layers"]).assign(
        n_params=1000, **{"config/lr": [1e-3 * (1 + i) for i in range(len(tuned.trials))]})
    assert report.lead(tuned) == "hyperparameters" and sections_of(tuned)[:2] == ["parallel", "importance"]
    # an Optuna search over lr with a three-way batch size: still the hyperparameters, not batch_size compared
    tuned.trials["config/batch_size"] = [32, 64, 128] * 3
    assert report.lead(tuned) == "hyperparameters"
    # two Optuna trials drew two values of each of lr, l2 and dropout: not a comparison of dropout ("The search
    # varied dropout"); the top configurations of a confirm stage over seeds are one, each key named
    pair = load(DATA / "seeds-digits")
    pair.trials = pair.trials.drop(columns=["config/hidden", "config/layers"]).head(2).assign(
        n_params=1000, **{"config/lr": [1e-3, 2e-3], "config/l2": [1e-4, 1e-5], "config/dropout": [0.1, 0.2]})
    assert report.lead(pair) == "hyperparameters"
    confirmed = load(DATA / "seeds-digits")
    confirmed.trials = confirmed.trials.drop(columns=["config/hidden", "config/layers"]).assign(
        n_params=1000, **{"config/lr": [1e-3, 2e-3, 3e-3] * 3, "config/l2": [1e-4, 1e-5, 0.0] * 3,
                          "config/batch_size": [32, 64, 128] * 3})
    compared = report.build_sections(confirmed)[0]
    assert compared.key == "compare" and compared.heading.startswith("configurations compared")
    assert "The search varied batch_size, lr and l2:" in compared.note
    one_size = report._valley_section(tuned).note
    assert one_size == "Every trial has one model size (1,000 parameters): there is no valley over model sizes to read here."
    # trials that diverged at their first epoch have no size: "every trial" was false of a grid of three sizes
    diverged = load(DATA / "seeds-digits")
    diverged.trials = tuned.trials.assign(**{"status": ["diverged", "diverged"] + ["completed"] * 7})
    diverged.trials.loc[diverged.trials["status"] == "diverged", ["n_params", "best_val_loss"]] = np.nan
    assert report._valley_section(diverged).note == (
        "Every trial with a best_val_loss has one model size (1,000 parameters); 2 more failed or diverged without "
        "one: there is no valley over model sizes to read here.")
    diverged.trials["status"] = "diverged"
    assert report._valley_section(diverged).note.startswith("No trial has a finite best_val_loss: each of the 9 "
                                                            "failed, diverged or reported no epoch")


def test_a_plan_report_leads_with_its_stages(plan_report):
    _, text = plan_report
    assert text.index('<section id="stages">') < text.index('<section id="valley">')


@pytest.mark.parametrize("reported", ["nothing", "no epoch"])
def test_a_clock_experiment_without_a_result_reads_as_such(tmp_path, reported):
    """A clock search ranks on val_csd, whose column exists only once a trial has reported: the report,
    the dashboard's page and the table a search ends with raised KeyError when none had (every trial
    failed before its first epoch, or the search had just started)."""
    from analysis.load import load, top_table

    folder = shutil.copytree(DATA / "asha-digits", tmp_path / "clocks")
    manifest = json.loads((folder / "valley.json").read_text())
    manifest.update(family="clock", metric="val_csd", dataset="clocks-tiny", status="running")
    (folder / "valley.json").write_text(json.dumps(manifest))
    for trial in [p for p in folder.iterdir() if p.is_dir()]:
        if reported == "nothing":
            shutil.rmtree(trial)
        else:
            (trial / "result.json").unlink()
    text = write_report(folder).read_text(encoding="utf-8")
    assert "No trial has a result yet" in text
    assert "No trial has reported a best_val_csd yet." in text and "find_valley needs" not in text
    trials = load(folder).trials
    assert top_table(trials, folder).startswith("no trial")


def test_a_folder_of_experiments_on_different_data_sets_reads_no_valley_across_them(tmp_path):
    """`valley report results` pooled digits MLPs with a synthetic search into one valley, shading every digits
    model 'overfit' beside a synthetic trial's loss, under a 'plan' badge."""
    from analysis.load import load

    shutil.copytree(DATA / "asha-digits", tmp_path / "multi" / "a")
    shutil.copytree(DATA / "seeds-digits", tmp_path / "multi" / "b")
    folder = load(tmp_path / "multi")
    # a 6-epoch search beside 8-epoch seeds: a model trained longer sits lower (found by a review)
    assert report._valley_section(folder).note.startswith(
        "No valley is read across experiments trained for different epochs (6, 8): a model trained longer sits lower")
    folder.trials["config/max_epochs"] = 6
    section = report._valley_section(folder)
    assert "Valley:" in section.note  # one data set, one training length: one valley
    folder.trials.loc[folder.trials["experiment"] == "b", "config/dataset"] = "synthetic"
    section = report._valley_section(folder)
    assert section.note.startswith("No valley is read across experiments of different data sets (dataset digits, "
                                   "synthetic)")
    text = write_report(tmp_path / "multi").read_text(encoding="utf-8")
    assert '<span class="kind">folder of experiments</span>' in text and "23 trials: 22 done (4 stopped early)" in text
    # nor one top table, nor the dashboard one best: the folder's experiments came first in one ranking
    assert "<h2>Top trials</h2>" in report._top_trials(folder) and "No trials are ranked across" in \
        report._top_trials(folder)
    # nor figures on one scale: the stages side by side, parallel coordinates and importance (encoding 0.82,
    # dataset 0.06 in a folder of MLP digits and clocks) say why they are not drawn
    drawn = {section.key: section.note for section in report.build_sections(folder)}
    assert {key: drawn.get(key, "").startswith("Not drawn across experiments of different data sets") for key in
            ("stages", "parallel", "importance")} == {"stages": True, "parallel": True, "importance": True}
    assert not drawn["learning-curves"].startswith("Not drawn")  # each trial's own curve still is
    # nor a clock folder's reads of "the best" trial of two data sets (clocks-tiny's beside clocks-small's)
    assert [(s.key, s.note.split(":")[0]) for s in report.clock_sections(folder)] == [
        ("clock-reads", "No one best clock model is read across experiments of different data sets (dataset digits, "
                        "synthetic)")]
    from analysis.dashboard import _index_row

    assert "<td>per experiment</td>" in _index_row(folder, "/exp/multi", "multi", False)
    assert "<td>folder</td>" in _index_row(folder, "/exp/multi", "multi", False)  # not "plan": it has no plan.json
    alike = load(tmp_path / "multi")  # one data set: ranked together
    assert "Top 10 of 23 trials" in report._top_trials(alike)
    assert "best_val_loss" in _index_row(alike, "/exp/multi", "multi", False)


def test_a_plan_report_draws_the_valley_its_valley_stage_drew(tmp_path):
    """The report redrew a plan's valley with one standard error whatever the stage's threshold was, so its note
    and star named another model than the one the plan carried on."""
    from analysis.load import load

    plan = tmp_path / "plan"
    shutil.copytree(DATA / "asha-digits", plan / "rough")
    valley = {"kind": "valley", "status": "completed", "from": "rough", "threshold_se": 0.0}
    (plan / "plan.json").write_text(json.dumps({"plan": "p", "status": "completed", "stages": {
        "rough": {"kind": "search", "status": "completed", "experiments": ["rough"]}, "valley": valley}}))
    note = report._valley_section(load(plan)).note
    assert "(0 SE) holds 1 of" in note
    valley["threshold_se"] = 3.0
    (plan / "plan.json").write_text(json.dumps({"plan": "p", "status": "completed", "stages": {
        "rough": {"kind": "search", "status": "completed", "experiments": ["rough"]}, "valley": valley}}))
    assert "(3 SE) holds" in report._valley_section(load(plan)).note


def test_a_quickstart_whose_clocks_were_interrupted_prints_no_answer_table(tmp_path, monkeypatch, capsys):
    """After Ctrl-C in the clock encodings the quickstart printed 'test metrics by configuration' of two
    one-epoch trials as if they were its answer. (valley's own run_search stands in for the two searches:
    each returns a copy of a finished experiment, the second read 'interrupted'.)"""
    import argparse

    from search import commands, run

    def search(space, opts):
        folder = Path(opts.storage) / opts.name
        shutil.copytree(DATA / ("asha-digits" if opts.name == "mlp-rough" else "seeds-digits"), folder)
        if opts.name != "mlp-rough":
            manifest = json.loads((folder / "valley.json").read_text())
            (folder / "valley.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
        return folder

    monkeypatch.setattr(run, "run_search", search)
    args = argparse.Namespace(storage=str(tmp_path), num_cpus=2, clock_epochs=1)
    assert commands.cmd_quickstart(args) == 130
    out = capsys.readouterr().out
    assert "the clock encodings were interrupted: `valley resume " in out and "test metrics by" not in out
    assert out.rstrip().splitlines()[-1].startswith("report: ")


def test_a_plan_without_a_valley_stage_reads_its_valley_from_its_first_training_stage(tmp_path):
    """An a priori plan (fine-tune, then confirm) read its valley across both stages: one seed's lucky run
    beside the confirm stage's means over several seeds."""
    from analysis.load import load

    plan = tmp_path / "plan"
    shutil.copytree(DATA / "asha-digits", plan / "fine")
    shutil.copytree(DATA / "seeds-digits", plan / "confirm")
    (plan / "plan.json").write_text(json.dumps({"plan": "p", "status": "completed", "stages": {
        "fine": {"kind": "search", "status": "completed", "experiments": ["fine"]},
        "confirm": {"kind": "confirm", "status": "completed", "experiments": ["confirm"]}}}))
    experiment = load(plan)
    note = report._valley_section(experiment).note
    fine = experiment.trials[experiment.trials["stage"] == "fine"]
    assert note.startswith("Valley of stage fine: "), note
    assert note.split("chose trial ")[1].split(",")[0] in set(fine["trial_id"])


def test_a_killed_plans_stage_says_to_continue_the_plan_not_to_resume_the_stage(tmp_path):
    """`valley resume STAGE` finished the stage and said 'completed'; the plan stayed 'running', its next stage
    never run."""
    from analysis import format as fmt
    from analysis.load import load

    plan = tmp_path / "plan"
    shutil.copytree(DATA / "asha-digits", plan / "fine")
    gone = {**fmt.driver(), "since": -1}  # its driver killed outright
    manifest = json.loads((plan / "fine" / "valley.json").read_text())
    (plan / "fine" / "valley.json").write_text(json.dumps({**manifest, "status": "running", "driver": gone}))
    (plan / "plan.json").write_text(json.dumps({"plan": "p", "status": "running", "driver": gone, "stages": {
        "fine": {"kind": "search", "status": "running", "experiments": ["fine"]}}}))
    for loaded in (load(plan / "fine"), load(plan)):
        said = " ".join(loaded.warnings)
        assert f"`valley plan {plan}` continues it" in said and "valley resume" not in said, said


def test_the_valley_section_is_headed_by_what_its_y_axis_holds(tmp_path):
    """A val_acc space's section read "Loss against model size" over an axis of accuracy (found by a review)."""
    import dataclasses

    from analysis.load import load

    loaded = load(shutil.copytree(DATA / "asha-digits", tmp_path / "asha-digits"))
    assert report.build_sections(loaded)[0].heading.startswith("Loss against model size")
    accuracy = dataclasses.replace(loaded, manifest={**loaded.manifest, "metric": "val_acc", "mode": "max"})
    section = next(s for s in report.build_sections(accuracy) if s.key == "valley")
    assert section.heading.startswith("Best validation accuracy against model size"), section.heading
