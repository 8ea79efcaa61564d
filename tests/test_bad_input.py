"""Misconfigured searches stop before Ray starts, with one line naming the problem and the fix.

Each case goes through the command line (``search.cli.main``) in this process, with Ray's start
replaced by a tripwire, so the check is "refused before Ray", not "refused eventually". A few
cases also run as a real ``python -m search.cli`` to hold the whole refusal under 5 s.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from search import cli
from trainables.config import ConfigError
from trainables.data import FASHION_FILES

ROOT = Path(__file__).resolve().parent.parent
HEADER = "family: mlp\ndataset: synthetic\nmetric: val_loss\nmode: min\nmax_epochs: 1\n"


@pytest.fixture
def refuse(monkeypatch, capsys, tmp_path):
    """Run ``valley search ...`` (or another command); assert one error line and exit status 2."""
    def tripwire(opts):
        raise AssertionError("Ray was started for a search that should have been refused")

    monkeypatch.setattr("search.run.start_ray", tripwire)
    monkeypatch.setattr("search.resume.start_ray", tripwire)
    monkeypatch.setenv("VALLEY_OFFLINE", "1")

    def run(*argv: str, storage: Path | str | None = None) -> str:
        storage = storage or tmp_path / "results"
        args = [*argv] if argv[0] in ("resume", "report", "dashboard", "data", "plan", "transfer", "quickstart") else [
            "search", *argv, "--storage", str(storage)]
        code = cli.main(args)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == cli.EXIT_USAGE, captured.err
        assert len(lines) == 1 and lines[0].startswith("valley: error: "), captured.err
        return lines[0]

    return run


def space(write_space, body: str, header: str = HEADER) -> str:
    return str(write_space(header + body + "\n"))


@pytest.mark.parametrize("body, expected", [
    ("params:\n  lr: [0.1, 0.2\n", ["line", "not valid YAML", "fix the syntax"]),
    ("params:\n  lr: {loguniform: [1.0e-4, 1.0e-2]}\n  lr: 0.01", ["line", "'lr' is given twice in one mapping; keep one"]),
    ("paramz: {}", ["paramz: unknown key", "did you mean 'params'"]),
    ("params: {dropuot: 0.1}", ["unknown key 'dropuot'", "did you mean 'dropout'? valid keys: batch_size"]),
    ("params: {zzz: 0.1}", ["unknown key 'zzz' for family 'mlp'; valid keys: batch_size"]),  # it ran on: "'mlp' valid"
    ("params: {batch_size: abc}", ["batch_size must be int", "'abc'"]),
    ("params: {batch_size: {uniform: [16, 64]}}", ["params.batch_size", "must be int", "use randint or qrandint"]),
    ("params: {optimizer: {choice: [adam, rmsprop]}}", ["params.optimizer", "'rmsprop'", "adam, adamw, sgd"]),
    ("params: {dropout: {grid: [0.0, 1.5]}}", ["dropout must lie in [0, 1)", "1.5"]),
    ("params: {lr: {uniform: [0.1, 0.01]}}", ["params.lr: low <= high must hold", "swap the bounds"]),
    ("params: {lr: {loguniform: [0, 0.01]}}", ["params.lr: a log range must be > 0", "use uniform"]),
    ("params: {batch_size: {choice: []}}", ["params.batch_size: choice is empty"]),
    ("params: {lr: {grid: []}}", ["params.lr: grid is empty"]),
    ("grid: []", ["grid: is empty"]),
    ("params: {layers: {randint: [5, 5]}}", ["low < high must hold (high is exclusive)", "layers: 5"]),
    # Ray's own checks of these failed inside the search, a traceback called a bug in valley
    ("params: {dropout: {quniform: [0.0, 0.5, 0.2]}}", ["params.dropout: quniform draws multiples of q", "q=0.2",
                                                          "e.g. [0.0, 0.4, 0.2]"]),
    ("params: {lr: {qloguniform: [0.0001, 0.001, 0.01]}}", ["params.lr: no multiple of q=0.01 lies from 0.0001 to "
                                                             "0.001", "use a smaller q"]),
    ("params: {early_stop: {qrandint: [2, 5, 10]}}", ["params.early_stop: no multiple of q=10 lies from 2 to 5"]),
    ("params: {early_stop: {qrandint: [1, 10, 3]}}", ["multiples of q=3 too, got low=1, high=10; e.g. [3, 9, 3]"]),
    ("params: {lr: {uniform: [.nan, 1]}}", ["params.lr: bounds must be finite"]),
    ("params: {lr: {loguniform: [1.0e-4, .inf]}}", ["params.lr: bounds must be finite"]),
    ("params: {lr: .nan}", ["params.lr: must be finite"]),
    ("params: {device: tpu}", ["device must be auto, cpu, cuda or cuda:N", "'tpu'"]),  # every trial failed in Ray
])
def test_space_mistakes(refuse, write_space, body, expected):
    line = refuse(space(write_space, body))
    assert all(part in line for part in expected), line
    # the keys a search sets at a space's top level are no valid keys of params (they are refused there)
    assert "for family" not in line or not any(f" {key}," in line or line.endswith(f" {key}")
                                               for key in ("dataset", "family", "max_epochs")), line


def test_a_space_file_that_is_not_text_a_folder_or_ranks_backwards(refuse, write_space, tmp_path):
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    assert "image.yaml: not valid YAML (not UTF-8 text (byte 0 is 0x89); is it a YAML file?)" in refuse(str(binary))
    assert "is a folder, not a file" in refuse(str(tmp_path))
    backwards = HEADER.replace("metric: val_loss", "metric: val_acc")
    assert "mode: val_acc is better higher, so mode: min would rank the worst trials first; set mode: max" in refuse(
        space(write_space, "", header=backwards))


def test_unknown_names(refuse, write_space):
    assert "unknown space 'mlp-ruogh'; did you mean 'mlp-rough'?" in refuse("mlp-ruogh")
    assert "does not exist" in refuse("no/such/space.yaml")
    line = refuse(space(write_space, "", header=HEADER.replace("family: mlp", "family: mpl")))
    assert "unknown family 'mpl'; did you mean 'mlp'? valid families: " in line and "mlp" in line
    assert "--dataset: unknown data set 'mnist'; valid data sets: " in refuse("mlp-rough", "--dataset", "mnist")
    written = space(write_space, "", header=HEADER.replace("dataset: synthetic", "dataset: mnist"))
    assert f"{written}: dataset: unknown data set 'mnist'" in refuse(written)  # the file and its key named
    assert "family 'mlp' classifies images, but data set 'clocks-tiny' has hour and minute labels" in refuse(
        "mlp-rough", "--dataset", "clocks-tiny")
    assert "family 'clock' reads clocks, but data set 'digits' has class labels; give it one of clocks" in refuse(
        "clock-encodings", "--dataset", "digits")
    line = refuse(space(write_space, "", header=HEADER.replace("val_loss", "val_los")))
    assert "metric: 'val_los' is not reported by family 'mlp'; rank on one of " in line and "val_loss" in line
    assert "mode: must be min or max, got 'lowest'" in refuse(
        space(write_space, "", header=HEADER.replace("mode: min", "mode: lowest")))


def test_options_out_of_range(refuse, write_space):
    path = space(write_space, "")
    assert "--gpus-per-trial 1 asks for more GPUs than this machine has" in refuse(
        path, "--gpus-per-trial", "1") or os.environ.get("CUDA_VISIBLE_DEVICES")
    assert "--cpus-per-trial 512 asks for more CPUs than the local Ray has" in refuse(
        path, "--cpus-per-trial", "512")
    assert "--max-failures must be >= 0" in refuse(path, "--max-failures", "-2")
    assert "--seed must be a whole number from 0 to 4294967295, got -1" in refuse(path, "--seed", "-1")
    assert "--max-epochs must be at least 1" in refuse(path, "--max-epochs", "0")
    for bad in ("-1", "best", "2.5"):
        assert f"--keep-weights takes a whole number >= 0 or all, got '{bad}'" in refuse(path, "--keep-weights", bad)
    assert "--name must be letters, digits" in refuse(path, "--name", "../../etc")
    assert "--name must be letters, digits" in refuse(path, "--name", "")  # not the default name, unasked
    assert "--name must be letters, digits" in refuse("plan", "plan-mlp-digits", "--name", "", "--storage",
                                                      str(Path(path).parent / "results"))
    assert "seed must be a whole number from 0 to 4294967295, got seed=-1" in refuse(path, "--set", "seed=-1")
    assert "--storage must be a folder" in refuse(path, storage="s3://bucket/results")
    assert "--set takes key=value" in refuse(path, "--set", "lr")
    assert "unknown key 'lrr'" in refuse(path, "--set", "lrr=0.1")
    assert "lr must be a number, got lr='abc'" in refuse("mlp-rough", "--dataset", "digits", "--set", "lr=abc")
    assert "batch_size must be int, got batch_size=0.5" in refuse(path, "--set", "batch_size=0.5")
    assert "hidden must be a list" in refuse(path, "--set", "hidden=7")
    # a random search's passes, each of its own seed, are a grid Tune lays out whole first: 100000 sat for minutes
    assert refuse(path, "--samples", "100000").endswith(
        "--samples 100000 passes over 1 grid point ask for 100,000 trials, each pass with a seed of its own, and Tune "
        "lays them all out before the first starts (minutes from about 5,000); give --samples 5000 or fewer, and run "
        "more as further searches")
    # passes alike: the same seed, nothing drawn (`--set seed=3 --samples 3` read as 3 seeds, spread 0)
    assert refuse(path, "--samples", "3", "--set", "seed=3").endswith(
        "--samples 3 passes over a grid whose seed is fixed (--set seed) and that draws nothing train each "
        "configuration alike; give --samples 1, or leave the seed to the search (each pass then takes its own)")
    assert refuse(path, "--num-cpus", "2", "--address", "127.0.0.1:1").endswith(  # ignored, unsaid
        "--num-cpus sizes the local Ray a search starts, and --address 127.0.0.1:1 joins a running one, whose nodes "
        "have their own; leave out --num-cpus")
    results = Path(path).parent / "plans"  # a plan too, before its folder is made: its continuation kept them
    assert refuse("plan", "plan-mlp-digits", "--num-cpus", "2", "--address", "127.0.0.1:1", "--storage",
                  str(results)).endswith("leave out --num-cpus")
    assert not results.exists() or not any(results.iterdir())
    from search.options import SearchOptions  # a plan begun with both: it goes on, as it ran, without --num-cpus
    assert SearchOptions.from_dict({"address": "auto", "num_cpus": 2}).num_cpus is None
    seeds = str(write_space(HEADER + "params:\n  seed: {grid: [0, 1, 2]}\n", "seeds.yaml"))  # it said "fixed"
    assert refuse(seeds, "--samples", "2").endswith(
        f"--samples 2: {seeds} runs each configuration over its own grid of 3 seeds, and each pass would train them "
        "alike again; add seeds to that grid, or give --samples 1")
    # the second of two --set lr= won, unsaid
    assert "--set lr given twice, as 0.001 and 0.01; give it once" in refuse(path, "--set", "lr=1e-3", "--set",
                                                                             "lr=1e-2")


def test_a_search_or_plan_still_running_is_not_resumed_beside_it(refuse, tmp_path):
    """Two drivers on one folder would both write it: `valley resume` (or `valley plan FOLDER`) of one whose
    driver is alive on this machine is refused, naming it; once that process is gone it goes on."""
    import json
    import subprocess

    from analysis import format as fmt

    alive = subprocess.Popen(["sleep", "60"])
    try:
        here = {**fmt.driver(), "pid": alive.pid, "since": fmt._process_start(alive.pid)}
        experiment, plan = tmp_path / "results" / "e", tmp_path / "results" / "p"
        experiment.mkdir(parents=True)
        plan.mkdir()
        (experiment / "valley.json").write_text(json.dumps({"status": "running", "driver": here, "options": {}}))
        (plan / "plan.json").write_text(json.dumps({"plan": "p", "status": "running", "driver": here}))
        assert refuse("resume", str(experiment)).endswith(
            f"{experiment} is still running (its driver, pid {alive.pid}, is alive on this machine); stop it first "
            f"(Ctrl-C where it runs, or `kill {alive.pid}`), then `valley resume {experiment}`")
        assert f"then `valley plan {plan}`" in refuse("plan", str(plan))
        assert fmt.driver_gone({"status": "running", "driver": here}) is None
    finally:
        alive.kill()
        alive.wait()
    assert "is gone" in fmt.driver_gone({"status": "running", "driver": here})  # and its pid reused: still gone
    assert fmt.driver_gone({"status": "running", "driver": {**fmt.driver(), "since": -1}})
    assert fmt.driver_gone({"status": "completed", "driver": here}) is None
    assert fmt.driver_gone({"status": "running", "driver": {**here, "host": "elsewhere"}}) is None  # no telling
    assert fmt.driver_gone({"status": "running", "driver": {**here, "pids": "pid:[1]"}}) is None  # another container


def test_a_stage_change_names_what_it_cannot_change(refuse, tmp_path):
    storage = str(tmp_path / "results")

    def stage(change: str) -> str:
        return refuse("plan", "plan-mlp-digits", "--stage", change, "--storage", storage)

    assert "--stage takes STAGE.KEY=VALUE, got 'rough'; e.g. --stage confirm.seeds=3" in stage("rough")
    assert "has no stage 'rugh'; did you mean 'rough'? its stages: rough, valley, fine, confirm" in stage(
        "rugh.max_epochs=1")
    assert "--stage rough.max_epoch=1: unknown key; did you mean 'max_epochs'?" in stage("rough.max_epoch=1")
    assert "a stage's kind is what the plan is made of" in stage("rough.kind=bracket")
    assert "--stage confirm.seeds=0: seeds must be a whole number of at least 1, got 0" in stage("confirm.seeds=0")
    assert stage("rough.space=mlp-ruff").endswith(
        "(the plan as --stage rough.space=mlp-ruff changed it)") and "stage 'rough': space: unknown space" in stage(
        "rough.space=mlp-ruff")
    assert not (tmp_path / "results").exists()


def test_a_plan_given_to_search_and_a_space_given_to_plan_say_which_command_runs_them(refuse, write_space, tmp_path):
    """`valley search myplan.yaml` said "budget_split: unknown key" (found by a review); the other way round,
    "a plan is a mapping with a non-empty `stages:` list"; a built-in name, "unknown space"."""
    plan = write_space("dataset: digits\nbudget_split: {rough: 1.0}\nstages:\n  - {name: rough, space: mlp-rough}\n",
                       "myplan.yaml")
    assert refuse(str(plan)).endswith(f"{plan}: stages: this is a plan, not a search space; run it with "
                                      f"`valley plan {plan}`")
    assert refuse("plan-mlp-digits").endswith("'plan-mlp-digits' is a built-in plan, not a search space; run it "
                                              "with `valley plan plan-mlp-digits`")
    space_file = write_space(HEADER + "params: {lr: 0.01}\n", "s.yaml")
    storage = ("--storage", str(tmp_path / "results"))
    assert refuse("plan", str(space_file), *storage).endswith(
        f"{space_file}: stages: this is a search space, not a plan; run it with `valley search {space_file}`")
    assert refuse("plan", "mlp-rough", *storage).endswith(
        "'mlp-rough' is a built-in search space, not a plan; run it with `valley search mlp-rough`")
    experiment = tmp_path / "results" / "mlp-rough-digits"  # it said "no plan ...", listing the built-in plans
    experiment.mkdir(parents=True)
    (experiment / "valley.json").write_text('{"status": "completed"}')
    assert refuse("plan", str(experiment), *storage).endswith(
        f"{experiment} is an experiment's folder, not a plan's; `valley resume {experiment}` continues it, "
        f"`valley report {experiment}` reports it")
    (experiment.parent / "plan.json").write_text("{}")  # a plan's stage: its plan goes on
    assert refuse("plan", str(experiment), *storage).endswith(
        f"{experiment} is a stage's folder of the plan in {experiment.parent}; `valley plan {experiment.parent}` "
        "continues the plan")
    # an integer log range from 0: randint, not uniform (which draws fractions, refused for an int key)
    assert refuse(space(write_space, "params: {layers: {lograndint: [0, 5]}}")).endswith(
        "use randint for a range that touches 0")


def test_what_a_command_would_not_honour_is_refused_not_ignored(refuse, write_space, tmp_path):
    """A plan's stages overruled --scheduler and --max-epochs without a word; a plan folder continued with
    the options it started with, whatever was given; transfer ran random, one sample, fifo regardless."""
    storage = str(tmp_path / "results")
    assert refuse("plan", "plan-mlp-digits", "--scheduler", "fifo", "--storage", storage).endswith(
        "--scheduler: stage rough of " + str(ROOT / "spaces" / "plan-mlp-digits.yaml") + " sets its own (scheduler: "
        "asha); leave out --scheduler, or give --stage rough.scheduler=VALUE")
    assert "--max-epochs: stage rough" in refuse("plan", "plan-mlp-digits", "--max-epochs", "1", "--storage", storage)
    folder = tmp_path / "results" / "p"
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text("{}")
    assert refuse("plan", str(folder), "--dataset", "synthetic", "--set", "lr=0.5").endswith(
        f"a plan continues with the options it started with; continue it with `valley plan {folder}` and no "
        "--dataset, --set")
    assert refuse("transfer", str(folder), "--dataset", "synthetic", "--search", "optuna", "--samples", "5").endswith(
        "transfer re-trains each configuration once, as it was (random, one sample, fifo); leave out --samples, "
        "--search")
    from search.cli import build_parser

    assert refuse("transfer", str(folder), "--dataset", "synthetic", "--set", "lr=0.5").endswith(
        "transfer re-trains each configuration verbatim, and --set lr=... would change it; leave it out (--set takes "
        "only how a trial runs: device, compile, checkpoint_every, checkpoint_s, keep_optimizer, stall_epochs)")
    transfer_help = build_parser()._subparsers._group_actions[0].choices["transfer"].format_help()
    assert "SOURCE-to-" in transfer_help and "TIME" not in transfer_help  # its own default name, not a search's
    assert "--dataset" in transfer_help and not any(flag in transfer_help for flag in (  # offered only to be refused
        "--search", "--samples", "--scheduler", "--grace-period", "--reduction-factor"))
    assert "--name must be letters" in refuse("plan", "plan-mlp-digits", "--name", "../x", "--storage", storage)
    assert refuse(space(write_space, ""), "--grace-period", "2").endswith(  # FIFO ignored it without a word
        "--grace-period is read only by --scheduler asha, and this search runs fifo; add --scheduler asha or leave "
        "out --grace-period")
    assert "--reduction-factor is read only by --scheduler asha or hyperband" in refuse(
        space(write_space, ""), "--reduction-factor", "4")
    assert refuse("quickstart", "--clock-epochs", "0", "--storage", storage).endswith(  # before the MLP grid trains
        "--clock-epochs must be at least 1, got 0")
    # the step of a q-distribution, dropped by Ray's conversions with a warning of Ray's (found by a review)
    stepped = space(write_space, "params:\n  momentum: {quniform: [0.0, 0.9, 0.3]}\n  l2: {qloguniform: [1.0e-4, "
                                 "1.0e-2, 1.0e-4]}")
    assert refuse(stepped, "--search", "bohb", "--scheduler", "hyperband").endswith(
        "params.momentum: --search bohb cannot draw quniform's multiples of q (Ray's conversion drops the step); use "
        "uniform: [0.0, 0.9] (no step) or a choice of the multiples, or --search optuna or random")
    assert refuse(stepped, "--search", "optuna").endswith(
        "params.l2: --search optuna cannot draw qloguniform's multiples of q (Ray's conversion drops the step); use "
        "quniform or loguniform, or --search random")
    # q=1 is Tune's randint to high + 1, a step nothing drops: the refusal is of the next key
    every = space(write_space, "params:\n  layers: {qrandint: [1, 3, 1]}\n  stall_epochs: {qrandint: [0, 10, 5]}")
    assert "params.stall_epochs: --search bohb cannot draw qrandint's multiples of q (Ray's conversion drops the " \
           "step); use randint: [0, 11] (no step)" in refuse(every, "--search", "bohb", "--scheduler", "hyperband")
    # a --set that clashes with a plan's first grid: refused before the plan's folder is made (it was made, then
    # the plan stopped, offering a continuation that stopped there again)
    assert refuse("plan", "plan-mlp-digits", "--set", "layers=2", "--storage", storage).endswith(
        "stage rough: --set layers=2 with " + str(ROOT / "spaces" / "mlp-rough.yaml") + ": grid row {'hidden': "
        "[2]}: give hidden or layers, not both, got hidden=[2], layers=2")
    assert not (tmp_path / "x").exists() and sorted(p.name for p in (tmp_path / "results").iterdir()) == ["p"]


def test_mistakes_are_blamed_where_they_are_and_each_end_of_a_range_is_tried(refuse, write_space, tmp_path):
    gridded = space(write_space, "grid:\n  - {hidden: [4]}\nparams: {dropuot: 0.1}")
    assert ": params: unknown key 'dropuot'" in refuse(gridded)  # not "grid row {'hidden': [4]}"
    clean = str(write_space(HEADER + "grid:\n  - {hidden: [4]}\nparams: {dropout: 0.1}\n", "clean.yaml"))
    assert refuse(clean, "--set", "lr=abc").startswith("valley: error: --set lr=abc: lr must be a number")
    # a --set that clashes with a sound row names both (it blamed the row alone, of a built-in file the user
    # cannot edit: `valley search mlp-rough --set layers=5`)
    assert refuse(clean, "--set", "layers=5").startswith(
        f"valley: error: --set layers=5 with {clean}: grid row {{'hidden': [4]}}: give hidden or layers, not both")
    assert "params.dropout: uniform can draw values just below 1.5: dropout must lie in [0, 1)" in refuse(
        space(write_space, "params: {dropout: {uniform: [0, 1.5]}}"))  # not "1.4999999999999998"
    assert "device cuda needs a GPU for each trial, and --gpus-per-trial is 0" in refuse(
        space(write_space, ""), "--set", "device=cuda")
    assert "--storage is empty" in refuse(space(write_space, ""), storage=" ")
    empty = tmp_path / "course"
    empty.mkdir()
    assert f"{empty} lacks images.npy, labels.npy" in refuse("clock-encodings", "--data-dir", str(empty))
    assert "--seed must be a whole number from 0 to 4294967295, got -1" in refuse(
        "data", "clocks", "--out", str(tmp_path / "c"), "--seed", "-1")
    plan = write_space("dataset: synthetic\nstages:\n  - {name: rough, space: mlp-rough, seeds: 0}\n", "p.yaml")
    assert "stage 'rough': seeds: must be a whole number of at least 1, got 0" in refuse(
        "plan", str(plan), "--storage", str(tmp_path / "results"))


def test_an_address_where_no_cluster_answers_is_said_at_once():
    from search.options import SearchError
    from search.ray_start import join_cluster

    with pytest.raises(SearchError, match=r"^--address 127.0.0.1:1: no Ray cluster answers there \(.*\); start one "
                                          r"\(`ray up cluster.yaml`"):
        join_cluster("127.0.0.1:1")
    with pytest.raises(SearchError, match=r"^--address http://127.0.0.1:8265 is a web address \(Ray's dashboard\); "
                                          r"give the cluster's GCS address, host:6379"):
        join_cluster("http://127.0.0.1:8265")  # a ValueError from inside Ray, called a bug in valley


def test_an_address_where_something_else_listens_is_said_at_once(monkeypatch):
    """A web server or a silent listener at --address: Ray's init waited on it for minutes (over 200 s here),
    logging 'Timed out while waiting for GCS to become available'. Ray's own GCS passes: tests/test_cluster_sim.py."""
    import http.server
    import socket

    from search import ray_start
    from search.options import SearchError

    monkeypatch.delenv("RAY_USE_TLS", raising=False)
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

    web = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog) and never speaks
    monkeypatch.setattr(ray_start, "not_grpc", functools.partial(ray_start.not_grpc, timeout=0.5))
    try:
        with pytest.raises(SearchError, match=rf"^--address 127.0.0.1:{web.server_port}: something listens there but "
                                              r"it is not a Ray cluster \(it answered '<!DOCTYPE'\); give the "
                                              r"cluster's"):
            ray_start.join_cluster(f"127.0.0.1:{web.server_port}")
        with pytest.raises(SearchError, match=r"not a Ray cluster \(it said nothing in 0.5 s to a gRPC client\)"):
            ray_start.join_cluster(f"127.0.0.1:{silent.getsockname()[1]}")
    finally:
        web.shutdown()
        silent.close()


@pytest.mark.parametrize("argv, expected", [
    (["search", "mlp-rough", "--searcher", "optuna"],
     "valley search: error: unrecognized arguments: --searcher optuna (--searcher: did you mean --search?)"),
    (["plan", "plan-mlp-digits", "--budgett=60"],
     "valley plan: error: unrecognized arguments: --budgett=60 (--budgett: did you mean --budget?)"),
    (["data", "clocks", "--out", "x", "--sizes", "3"],
     "valley data clocks: error: unrecognized arguments: --sizes 3 (--sizes: did you mean --size?)"),
    (["search", "mlp-rough", "--foo"], "valley search: error: unrecognized arguments: --foo"),
])
def test_a_mistyped_option_is_refused_by_its_command_with_the_nearest_one(capsys, argv, expected):
    """The command's own usage and the option it has nearest to the typo, not valley's top-level usage."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2
    assert err[0].startswith(f"usage: {expected.split(':')[0]} ") and err[-1] == expected


def test_a_bug_is_a_traceback_that_says_so(monkeypatch, capsys, write_space, tmp_path):
    """An internal error is not dressed up as a user mistake: traceback, a line naming it a bug, exit 1."""
    def broken(space, overrides):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr("search.tune_space.check_space", broken)
    code = cli.main(["search", space(write_space, ""), "--storage", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BUG
    assert "Traceback (most recent call last)" in err and "ValueError: an internal invariant broke" in err
    assert err.strip().splitlines()[-1].startswith("valley: internal error (ValueError): this is a bug in valley")


def test_results_folder_unwritable_and_name_taken_lose_nothing(refuse, write_space, tmp_path):
    path = space(write_space, "")
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert "is not writable" in refuse(path, storage=blocker / "results")
    assert blocker.read_text() == "keep me"

    taken = tmp_path / "results" / "taken"
    taken.mkdir(parents=True)
    (taken / "valley.json").write_text('{"status": "completed"}')
    before = hashlib.sha256((taken / "valley.json").read_bytes()).hexdigest()
    line = refuse(path, "--name", "taken")
    assert "already exists; continue it with `valley resume" in line
    assert hashlib.sha256((taken / "valley.json").read_bytes()).hexdigest() == before
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["taken"]  # nothing else made

    assert "not a valley experiment" in refuse("resume", str(tmp_path))
    assert "is not a folder" in refuse("resume", str(tmp_path / "nowhere"))
    assert "--keep-weights takes a whole number >= 0 or all, got 'some'" in refuse("resume", str(taken),
                                                                                   "--keep-weights", "some")
    plan = tmp_path / "a-plan"
    plan.mkdir()
    (plan / "plan.json").write_text("{}")
    assert refuse("resume", str(plan), "--keep-weights", "2").endswith(
        f"--keep-weights applies to one experiment; give a stage's folder inside the plan, e.g. `valley resume "
        f"{plan / 'fine'} --keep-weights N`")


def test_reports_dashboards_and_clocks_refuse_what_they_cannot_do(refuse, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    experiment = str(ROOT / "tests" / "data" / "asha-digits")
    assert "cannot write the report to" in refuse("report", experiment, "--out", str(blocker / "r.html"))
    assert "--port must be 0 to 65535" in refuse("dashboard", "--results", str(tmp_path), "--port", "70000")
    # the searches' --storage, which it refused ("unrecognized arguments")
    assert "--port must be 0 to 65535" in refuse("dashboard", "--storage", str(tmp_path), "--port", "70000")
    assert "cannot write the clocks to" in refuse("data", "clocks", "--out", str(blocker / "c"), "--size", "16",
                                                  "--per-minute", "1")
    assert "GiB of memory, more than the" in refuse("data", "clocks", "--out", str(tmp_path / "c"), "--size",
                                                    "100000", "--per-minute", "1")
    assert f"{blocker} is a file; --out is the folder to write images.npy and labels.npy into" in refuse(
        "data", "clocks", "--out", str(blocker), "--size", "16", "--per-minute", "1")
    assert blocker.read_text() == "keep me" and not (tmp_path / "c").exists()
    course = tmp_path / "course"  # a course's real clocks are not replaced by synthetic ones unasked
    course.mkdir()
    (course / "labels.npy").write_bytes(b"the course's labels")
    assert f"{course} already holds labels.npy; choose another folder, or pass --overwrite" in refuse(
        "data", "clocks", "--out", str(course), "--size", "16", "--per-minute", "1")
    assert (course / "labels.npy").read_bytes() == b"the course's labels" and not (course / "images.npy").exists()
    experiment_copy = tmp_path / "experiment"  # nor an experiment's own files by a report
    shutil.copytree(experiment, experiment_copy)
    manifest = (experiment_copy / "valley.json").read_bytes()
    for name in ("valley.json", "trials.csv"):
        assert "a report is one HTML file; give a path ending in .html" in refuse(
            "report", str(experiment_copy), "--out", str(experiment_copy / name))
    assert (experiment_copy / "valley.json").read_bytes() == manifest


# --- data folders: missing, truncated, of another shape, labels out of range ---------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def fashion(folder: Path, n_train: int = 5100, size: int = 28, labels: int = 10,
            n_labels: int | None = None) -> Path:
    """A Fashion-MNIST folder in torchvision's layout, small and synthetic."""
    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / FASHION_FILES[0], rng.integers(0, 256, (n_train, size, size)))
    write_idx(raw / FASHION_FILES[1], rng.integers(0, labels, n_labels or n_train))
    write_idx(raw / FASHION_FILES[2], rng.integers(0, 256, (50, size, size)))
    write_idx(raw / FASHION_FILES[3], rng.integers(0, 10, 50))
    return raw


def test_data_folder_missing_or_malformed(refuse, write_space, tmp_path):
    line = refuse("clock-encodings", "--data-dir", str(tmp_path / "nowhere"))
    assert f"--data-dir {tmp_path / 'nowhere'} is not a folder" in line
    # a data set made here reads no folder: clocks-small trained on DIR's clocks under its own name
    assert refuse(space(write_space, ""), "--data-dir", str(tmp_path)).endswith(
        "data set 'synthetic' reads no --data-dir (it is made here; only fashion_mnist, cifar10, clocks read their "
        "files from it): leave --data-dir out")
    assert refuse("clock-encodings", "--dataset", "clocks-small", "--data-dir", str(tmp_path)).endswith(
        "leave --data-dir out, or give --dataset clocks to train on the clocks in it")
    path = space(write_space, "", header=HEADER.replace("synthetic", "fashion_mnist"))
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "nowhere", tmp_path / "empty"):  # offline: nothing downloads into them
        line = refuse(path, "--data-dir", str(folder))
        assert "is not in" in line and "train-images-idx3-ubyte" in line and "downloading is off" in line

    fashion(tmp_path / "small", size=8)
    line = refuse(path, "--data-dir", str(tmp_path / "small"))
    assert "images must be 1x28x28, got 1x8x8" in line

    fashion(tmp_path / "few", n_train=1000)  # it said "train split: 0 images but 0 labels"
    assert refuse(path, "--data-dir", str(tmp_path / "few")).endswith(
        "data set 'fashion_mnist' has 1,000 training images and sets 5,000 of them aside for validation, so it "
        "needs more than 5,000; its files are cut short or a subset: replace them with the originals")

    fashion(tmp_path / "labels", labels=12)
    assert "labels must lie in [0, 10), got 0..11" in refuse(path, "--data-dir", str(tmp_path / "labels"))

    fashion(tmp_path / "short", n_labels=4000)
    line = refuse(path, "--data-dir", str(tmp_path / "short"))
    assert "train split: 5,100 images but 4,000 labels; the files are truncated or mixed" in line

    raw = fashion(tmp_path / "truncated")
    images = raw / FASHION_FILES[0]
    images.write_bytes(images.read_bytes()[:100_000])
    line = refuse(path, "--data-dir", str(tmp_path / "truncated"))
    assert "cannot be read" in line and str(raw) in line

    raw = fashion(tmp_path / "floats")
    (raw / FASHION_FILES[0]).write_bytes(bytes([0, 0, 0x0D, 3]) + b"\0" * 12)
    assert "is not an unsigned-byte IDX file" in refuse(path, "--data-dir", str(tmp_path / "floats"))


def test_datasets_describes_the_files_in_data_dir_as_a_search_would_read_them(capsys, tmp_path):
    """`valley datasets --data-dir DIR` listed the built-in sizes whatever DIR held (150x150 clocks for a
    folder of 16-pixel ones, 55,000 Fashion-MNIST images for a subset a search refuses)."""
    from trainables import clockgen

    clockgen.write(tmp_path / "clocks", per_minute=1, size=16)
    fashion(tmp_path / "clocks")
    raw = fashion(tmp_path / "few", n_train=1000)

    def listing(folder: Path) -> dict[str, str]:
        assert cli.main(["datasets", "--data-dir", str(folder)]) == 0
        return {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}

    lines = listing(tmp_path / "clocks")
    assert lines["clocks"].split()[1:4] == ["1x16x16", "432/144/144", "offline"]
    assert lines["clocks"].endswith(f"720 clocks from {tmp_path / 'clocks'}, stratified by hour")
    assert lines["fashion_mnist"].split()[1:4] == ["1x28x28", "100/5,000/50", "offline"]
    assert "cifar10        3x32x32   45,000/5,000/10,000    needs download" in lines["cifar10"]
    assert lines["digits"].split()[1:3] == ["1x8x8", "1,077/360/360"]  # made here, whatever the folder
    lines = listing(tmp_path / "few")
    assert "unusable" in lines["fashion_mnist"] and "has 1,000 training images" in lines["fashion_mnist"]
    assert f"unusable        {raw.parent.parent} lacks images.npy, labels.npy" in lines["clocks"]


# --- the same refusals as a user sees them: a fresh process, one line, before Ray starts ----------

@pytest.mark.parametrize("extra, body, expected", [
    ([], "family: mpl\ndataset: digits\nmetric: val_loss\nmode: min\n", "unknown family 'mpl'"),
    (["--gpus-per-trial", "1"], HEADER, "asks for more GPUs than this machine has"),
    (["--dataset", "fashion_mnist", "--data-dir", "EMPTY"], HEADER, "downloading is off"),
])
def test_refusal_in_a_fresh_process_comes_before_ray_starts(tmp_path, extra, body, expected):
    """Ray starting would make a refusal take seconds: it has not when Ray's temporary folder (RAY_TMPDIR,
    where every start writes its session) is still absent. Not timed: a loaded machine made 3.5 s 17."""
    if "--gpus-per-trial" in extra and os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1"):
        pytest.skip("this machine may have a GPU")
    (tmp_path / "empty").mkdir()
    spec = tmp_path / "space.yaml"
    spec.write_text(body)
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in extra]
    env = {**os.environ, "VALLEY_OFFLINE": "1", "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(tmp_path / "ray")}
    run = subprocess.run([sys.executable, "-m", "search.cli", "search", str(spec), "--storage",
                          str(tmp_path / "results"), *argv], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and expected in lines[0], run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "results").exists() or \
        not any((tmp_path / "results").iterdir())
    assert not (tmp_path / "ray").exists()


def test_missing_pretrained_weights_stop_the_search_before_ray(refuse, write_space, monkeypatch, tmp_path):
    """The family's preflight runs before Ray starts: no trial is left to find out."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    header = "family: clock\ndataset: clocks-tiny\nmetric: val_csd\nmode: min\nmax_epochs: 1\n"
    line = refuse(space(write_space, "params: {backbone: resnet18, pretrained: true}", header=header))
    assert "pretrained ResNet18_Weights weights are not in torchvision's cache" in line
    assert "set `pretrained: false` to train the backbone from scratch" in line


def test_a_model_too_deep_for_the_images_is_refused_with_the_data_set_in_hand(refuse, write_space, tmp_path):
    """A VGG16 on clocks under 32 pixels failed every trial inside Ray, in torch's words ("Given input size:
    (512x1x1). Calculated output size: (512x0x0)"); the check needs the data set, so it runs once it is loaded."""
    from trainables import clockgen

    clockgen.write(tmp_path / "c16", per_minute=1, size=16)
    header = ("family: clock\ndataset: clocks\nmetric: val_csd\nmode: min\nmax_epochs: 1\n")
    data = ("--data-dir", str(tmp_path / "c16"))
    line = refuse(space(write_space, "params: {backbone: vgg16}", header=header), *data)
    assert line.endswith("params: on data set 'clocks', backbone vgg16 needs images of at least 32 pixels a side, "
                         "got images of 16x16 pixels; set resize to 32 or more (e.g. --set resize=64), or use "
                         "backbone small_cnn or resnet18")
    rows = space(write_space, "grid:\n  - {backbone: small_cnn}\n  - {backbone: vgg16_bn}", header=header)
    assert "grid row {'backbone': 'vgg16_bn'}: on data set 'clocks'" in refuse(rows, *data)
    drawn = space(write_space, "params: {backbone: vgg16, resize: {choice: [64, 16]}}", header=header)
    assert "params.resize: choice can draw 16: on data set 'clocks', backbone vgg16 needs" in refuse(drawn, *data)
    assert "--set backbone=vgg16: on data set" in refuse("clock-fine", "--set", "backbone=vgg16", *data)
    assert "got resize=16" in refuse("clock-fine", "--set", "backbone=vgg16", "--set", "resize=16", "--samples", "1",
                                      "--dataset", "clocks-tiny")


def test_a_vgg_resized_to_32_pixels_builds_on_16_pixel_clocks():
    import torch

    from trainables import get_family
    from trainables.data import load_dataset

    family = get_family("clock")
    data = load_dataset("clocks-tiny")
    small = dataclasses.replace(data, x_train=data.x_train[:, :, :16, :16])
    model = family.build_model(family.make_config({"backbone": "vgg16", "resize": 32}), small)
    assert model(torch.zeros(2, 1, 16, 16)).shape[0] == 2
    with pytest.raises(ConfigError, match="backbone vgg16 needs images of at least 32 pixels"):
        family.build_model(family.make_config({"backbone": "vgg16"}), small)


def test_a_manifest_or_plan_state_cut_short_is_one_line_not_a_bug(refuse, tmp_path):
    """A truncated valley.json or plan.json gave a JSONDecodeError traceback calling itself a bug in valley."""
    experiment = tmp_path / "experiment"
    shutil.copytree(ROOT / "tests" / "data" / "asha-digits", experiment)
    (experiment / "valley.json").write_text('{"status": ')
    line = refuse("resume", str(experiment))
    assert line.startswith(f"valley: error: {experiment / 'valley.json'} is unreadable (") and "restore it" in line
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "plan.json").write_text('{"plan": ')
    for argv in (("plan", str(plan)), ("resume", str(plan)), ("transfer", str(plan), "--dataset", "synthetic")):
        assert f"{plan / 'plan.json'} is unreadable (" in refuse(*argv), argv


def test_a_family_file_with_a_mistake_is_one_line_naming_it(refuse, write_space, monkeypatch, tmp_path):
    """A user's own family module that is missing, raises on import (its record's own checks do), has no
    FAMILY or names it otherwise: one line naming the module, where each was a traceback called a bug in valley."""
    from trainables import FAMILIES

    (tmp_path / "fam_none.py").write_text("X = 1\n")
    (tmp_path / "fam_raises.py").write_text("raise ValueError(\"family 'wide': arch_keys ['widht'] are not fields\")\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {"no_such_family_module": "importing no_such_family_module failed: ModuleNotFoundError",
             "fam_none": "fam_none has no FAMILY; end it with FAMILY = Family(...)",
             "fam_raises": "importing fam_raises failed: ValueError: family 'wide': arch_keys ['widht']",
             "tests.toy_family": "tests.toy_family.FAMILY is named 'toy'; register it under that name"}
    for module, said in cases.items():
        monkeypatch.setitem(FAMILIES, "mine", module)
        line = refuse(space(write_space, "", header=HEADER.replace("family: mlp", "family: mine")))
        assert line.startswith("valley: error: ") and f"family 'mine': {said}" in line, line
