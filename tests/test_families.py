"""The suite every registered family passes (STYLE rules 9 and 13): the whole record, checked.

A new family is one file ending in ``FAMILY = Family(...)`` and one line in
``trainables.FAMILIES``; this suite then tells its author what is missing or wrong.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from trainables import FAMILIES, available_families, get_family, register_family
from trainables.config import ConfigError, TrainConfig
from trainables.data import Splits, load_dataset
from trainables.family import MODES, REPORTED_KEYS, Family
from trainables.loop import count_params, to_input, train
from trainables.report import LocalReporter

NAMES = available_families()


@pytest.mark.parametrize("name", NAMES)
def test_record_declares_the_whole_contract(name):
    family = get_family(name)
    assert isinstance(family, Family) and family.name == name
    assert issubclass(family.config, TrainConfig) and family.config.__dataclass_params__.frozen
    cfg = family.make_config({})
    assert cfg.family == name
    fields = {f.name for f in dataclasses.fields(family.config)}
    assert family.arch_keys and set(family.arch_keys) <= fields, "arch_keys must be config fields"
    assert family.task.mode in MODES and family.task.headline in family.task.metrics
    assert family.task.test_metric == f"test_{family.task.headline}"
    assert family.passes(cfg) >= 1
    family.preflight(cfg)  # the defaults need nothing from outside (no download)
    tiny = family.tiny_data()
    assert isinstance(tiny, Splits)
    family.fits_shape(cfg, tiny.input_shape)  # the defaults take the family's own tiny data
    with pytest.raises(ConfigError, match="unknown key 'no_such_key'"):
        family.make_config({"no_such_key": 1})
    with pytest.raises(ConfigError, match="lr must be a number"):
        family.make_config({"lr": "abc"})


@pytest.mark.parametrize("name", NAMES)
def test_builds_from_defaults_and_trains_one_step(name):
    family = get_family(name)
    data = family.tiny_data()
    cfg = family.make_config({})
    torch.manual_seed(0)
    model = family.build_model(cfg, data)
    assert count_params(model) > 0
    x = to_input(torch.from_numpy(data.x_train[:4].copy()), data.mean, data.std)
    out = model(x)
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    task = family.make_task(cfg)
    y = torch.from_numpy(data.y_train[:4].copy())
    loss = task.loss(out, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert math.isfinite(loss.item())
    model.eval()
    pred = task.predict(model(x))
    assert set(task.metrics(pred, y)) == set(family.task.metrics), "Task.metrics must return the declared names"
    errors = task.errors(pred, y)
    assert errors.shape == (4,) and bool((errors >= 0).all())


@pytest.mark.parametrize("name", [n for n in NAMES if get_family(n).augment is not None])
def test_augmentation_keeps_the_batch_shape_and_changes_it(name):
    family = get_family(name)
    data = family.tiny_data()
    cfg = family.make_config({})
    x = to_input(torch.from_numpy(data.x_train[:8].copy()), data.mean, data.std)
    generator = torch.Generator().manual_seed(0)
    out = family.augment(cfg, x.clone(), torch.arange(8), generator, 0)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.equal(out, x), f"{name}'s default augmentation leaves the images as they are"


@pytest.mark.parametrize("name", NAMES)
def test_reports_required_keys_every_epoch(name):
    family = get_family(name)
    reporter = LocalReporter()
    train({"family": name, "max_epochs": 2}, data=family.tiny_data(), reporter=reporter)
    assert [row["epoch"] for row in reporter.history] == [1, 2]
    declared = {f"{split}_{m}" for split in ("val", "test") for m in family.task.metrics}
    for row in reporter.history:
        missing = (set(REPORTED_KEYS) | declared) - set(row)
        assert not missing, f"{name} did not report {missing}"
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))
    assert family.task.reported() <= set(reporter.history[-1])


class Crash(LocalReporter):
    """Keeps checkpoints, then dies after epoch ``at`` (a killed trial)."""

    def __init__(self, folder, at):
        super().__init__(folder)
        self.at = at

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if metrics["epoch"] == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_resumes_where_it_stopped(name, tmp_path):
    data = get_family(name).tiny_data()
    config = {"family": name, "max_epochs": 3, "checkpoint_s": 0}
    with pytest.raises(KeyboardInterrupt):
        train(config, data=data, reporter=Crash(tmp_path / "ckpt", at=2))
    second = LocalReporter(checkpoint_dir=tmp_path / "ckpt")
    train(config, data=data, reporter=second)
    assert [row["epoch"] for row in second.history] == [3]  # epochs 1-2 came from the checkpoint
    saved = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert saved["state"]["epoch"] == 3
    assert set(saved) == {"best_model", "state"}  # finished: what a user needs, not the optimiser


def test_a_record_that_breaks_the_contract_is_refused_when_declared():
    mlp = get_family("mlp")
    with pytest.raises(ValueError, match="arch_keys"):
        dataclasses.replace(mlp, arch_keys=("depth",))
    with pytest.raises(ValueError, match="mode must be min or max"):
        dataclasses.replace(mlp, task=dataclasses.replace(mlp.task, mode="up"))


def test_mlp_and_cnn_records_load_without_torch():
    """A search's driver reads a family's record, never its models: the MLP and CNN modules import torch
    where they build a model (the clock family's encodings and backbones are torch modules)."""
    import subprocess
    import sys

    code = ("import sys; from trainables import get_family; "
            "[get_family(f).make_config({'family': f, 'dataset': 'digits'}) for f in ('mlp', 'cnn')]; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_unknown_family_lists_the_valid_ones():
    with pytest.raises(KeyError, match="valid families: clock, cnn, mlp"):
        get_family("resnet")


def test_checkpoint_with_pickled_payload_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"model": Payload()}, folder / "state.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        train({"family": "mlp", "max_epochs": 1}, data=load_dataset("synthetic"),
              reporter=LocalReporter(checkpoint_dir=folder))


@pytest.fixture
def toy_family():
    """The toy family, registered as a new family is: one line."""
    register_family("toy", "tests.toy_family")
    yield get_family("toy")
    FAMILIES.pop("toy")


def test_a_new_family_is_one_file_and_one_registry_line(toy_family, ray_session, write_space, tmp_path):
    from analysis.load import load
    from search.options import SearchOptions
    from search.run import run_search
    from spaces import load_space

    reporter = LocalReporter()
    train({"family": "toy", "max_epochs": 1}, data=toy_family.tiny_data(), reporter=reporter)
    assert reporter.history[-1]["n_params"] > 0
    space = write_space("family: toy\nmetric: val_loss\nmode: min\ndataset: synthetic\nmax_epochs: 2\n"
                        "grid:\n  - {width: 2}\n  - {width: 16}\n")
    folder = run_search(load_space(space), SearchOptions(storage=str(tmp_path), name="toy", quiet=True,
                                                         num_cpus=2))
    experiment = load(folder)
    assert sorted(experiment.trials["config/width"]) == [2, 16]
    assert set(experiment.trials["status"]) == {"completed"}
    assert experiment.task.test_metric == "test_acc" and experiment.trials["test_acc"].notna().all()
