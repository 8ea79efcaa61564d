"""The suite every registered family passes (STYLE rule 11): a new family gets it for free."""
from __future__ import annotations

import math

import pytest
import torch

from trainables import available_families, get_family
from trainables.data import load_dataset
from trainables.loop import REPORTED_KEYS, count_params, train
from trainables.report import LocalReporter

FAMILIES = available_families()


def tiny_data(family_name: str):
    family = get_family(family_name)
    return family.tiny_data() if hasattr(family, "tiny_data") else load_dataset("synthetic")


@pytest.mark.parametrize("name", FAMILIES)
def test_builds_from_defaults_and_trains_one_step(name):
    family = get_family(name)
    data = tiny_data(name)
    cfg = family.Config.from_dict({"family": name})
    torch.manual_seed(0)
    model = family.build_model(cfg, data)
    assert count_params(model) > 0
    x = torch.from_numpy(data.x_train[:4].copy()).float() / 255
    out = model(x)
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    task = family.make_task(cfg) if hasattr(family, "make_task") else None
    y = torch.from_numpy(data.y_train[:4].copy())
    loss = task.loss(out, y) if task else torch.nn.functional.cross_entropy(out, y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert math.isfinite(loss.item())


@pytest.mark.parametrize("name", FAMILIES)
def test_reports_required_keys_every_epoch(name):
    reporter = LocalReporter()
    train({"family": name, "max_epochs": 2}, data=tiny_data(name), reporter=reporter)
    assert [row["epoch"] for row in reporter.history] == [1, 2]
    family = get_family(name)
    metric = (family.make_task(family.Config.from_dict({"family": name})).metric
              if hasattr(family, "make_task") else "acc")
    for row in reporter.history:
        missing = (set(REPORTED_KEYS) | {f"val_{metric}", f"test_{metric}"}) - set(row)
        assert not missing, f"{name} did not report {missing}"
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoint_resumes_where_it_stopped(name, tmp_path):
    data = tiny_data(name)
    first = LocalReporter(checkpoint_dir=tmp_path / "ckpt")
    train({"family": name, "max_epochs": 2}, data=data, reporter=first)
    second = LocalReporter(checkpoint_dir=tmp_path / "ckpt")
    train({"family": name, "max_epochs": 3}, data=data, reporter=second)
    assert [row["epoch"] for row in second.history] == [3]  # epochs 1-2 came from the checkpoint
    saved = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert saved["state"]["epoch"] == 3


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
