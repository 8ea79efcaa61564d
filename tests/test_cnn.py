"""The CNN family: every architecture on every input size, its config rules and its spaces."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from spaces import Dist, load_space
from trainables import cnn
from trainables.config import ConfigError
from trainables.data import Splits, make_splits
from trainables.loop import count_params

SHAPES = [(1, 28, 28), (3, 32, 32), (1, 8, 8)]  # Fashion-MNIST, CIFAR-10, digits


def splits(shape: tuple[int, int, int], n_classes: int = 10) -> Splits:
    """A tiny data set of the given (C, H, W): only its shape and class count matter to the builder."""
    x = np.zeros((4, *shape), dtype=np.uint8)
    y = np.arange(4, dtype=np.int64) % n_classes
    return make_splits("tiny", x, y, x[:2], y[:2], n_val=2, n_classes=n_classes)


def forward_backward(model: nn.Module, shape: tuple[int, int, int]) -> torch.Tensor:
    torch.manual_seed(0)
    out = model(torch.randn(2, *shape))
    out.square().mean().backward()
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", list(cnn.ARCHS))
def test_every_arch_forward_backward(arch: str, shape: tuple[int, int, int]) -> None:
    model = cnn.build_model(cnn.Config(arch=arch), splits(shape))
    out = forward_backward(model, shape)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 3), (1, 64, 64)])
def test_odd_and_tiny_inputs_skip_pools(shape: tuple[int, int, int]) -> None:
    model = cnn.build_model(cnn.Config(arch="cnn_increasing"), splits(shape, n_classes=4))
    assert forward_backward(model, shape).shape == (2, 4)


def test_pools_stop_at_one_pixel_on_8x8() -> None:
    model = cnn.build_model(cnn.Config(arch="cnn_increasing"), splits((1, 8, 8)))
    pools = [m for m in model if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # 8 -> 4 -> 2 -> 1, the fourth pool skipped
    assert [m for m in model if isinstance(m, nn.Linear)][0].in_features == 512  # 512 x 1 x 1


@pytest.mark.parametrize(("arch", "expected"), [("cnn_simple", 7_800), ("cnn_complex", 7_600_000)])
def test_extreme_sizes_match_the_reference(arch: str, expected: int) -> None:
    n = count_params(cnn.build_model(cnn.Config(arch=arch), splits((1, 28, 28))))
    assert abs(n - expected) <= 0.1 * expected, n


def test_options_kernel_dropout_width_batchnorm() -> None:
    cfg = cnn.Config(arch="cnn_residual10", kernel=5, dropout=0.3, width=0.5, batchnorm=True)
    model = cnn.build_model(cfg, splits((3, 32, 32)))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert {m.kernel_size for m in convs} == {(5, 5), (1, 1)}  # 1x1 projections stay 1x1
    assert max(m.out_channels for m in convs) == 128  # 256 x 0.5
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert forward_backward(model, (3, 32, 32)).shape == (2, 10)


def test_a_residual_model_pickles_whole(tmp_path) -> None:
    """The residual block's class is defined at first use (the module imports without torch); a whole
    model still saves and loads with torch.save, as a user may save one."""
    model = cnn.build_model(cnn.Config(arch="cnn_residual10", width=0.25), splits((1, 8, 8)))
    torch.save(model, tmp_path / "model.pt")
    again = torch.load(tmp_path / "model.pt", weights_only=False)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(again.eval()(x), model.eval()(x))


def test_dropout_override_adds_and_removes() -> None:
    complex_ = cnn.build_model(cnn.Config(arch="cnn_complex", dropout=0.2), splits((1, 8, 8)))
    assert sum(isinstance(m, nn.Dropout) for m in complex_) == 2  # after d768 and d256
    base = cnn.build_model(cnn.Config(arch="cnn_base", dropout=0.0), splits((1, 8, 8)))
    assert not any(isinstance(m, nn.Dropout) for m in base)


def test_kernel1_arch_ignores_kernel_override() -> None:
    model = cnn.build_model(cnn.Config(arch="cnn_kernel1", kernel=5), splits((1, 8, 8)))
    assert {m.kernel_size for m in model if isinstance(m, nn.Conv2d)} == {(1, 1)}


@pytest.mark.parametrize(("config", "key"), [
    ({"arch": "cnn_bse"}, "arch"),
    ({"kernel": 4}, "kernel"),
    ({"kernel": 0}, "kernel"),
    ({"dropout": 1.0}, "dropout"),
    ({"width": 0}, "width"),
    ({"arhc": "cnn_base"}, "arhc"),
])
def test_bad_config_names_the_key(config: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as err:
        cnn.Config.from_dict({"family": "cnn", **config})
    if key == "arch":
        assert "cnn_base" in str(err.value) and "cnn_complex" in str(err.value)


def test_describe() -> None:
    line = cnn.describe("cnn_base")
    assert line.startswith("cnn_base:") and "(5 convolutions)" in line and "\n" not in line
    assert "(10 convolutions)" in cnn.describe("cnn_residual10")
    with pytest.raises(ConfigError, match="valid archs"):
        cnn.describe("nope")


def test_rough_space_has_one_row_per_arch() -> None:
    space = load_space("cnn-rough")
    assert (space.family, space.metric, space.mode, space.max_epochs) == ("cnn", "val_loss", "min", 10)
    assert len(space.grid) == 12  # the base, nine one-change variants, cnn_simple and cnn_complex
    assert [row["arch"] for row in space.grid] == list(cnn.ARCHS)
    for row in space.grid:
        cfg = cnn.Config.from_dict({**row, **space.params, "family": "cnn"})
        assert cfg.arch == row["arch"]


def test_fine_space_values_are_valid() -> None:
    space = load_space("cnn-fine")
    fields = {f.name for f in dataclasses.fields(cnn.Config)}
    assert space.keys() <= fields
    assert space.params["arch"] == "cnn_base"
    ends = {k: (v.args if v.kind == "choice" else v.args[:2]) if isinstance(v, Dist) else (v,)
            for k, v in space.params.items()}
    for i in range(2):  # every low end, then every high end
        cfg = cnn.Config.from_dict({"family": "cnn", **{k: v[min(i, len(v) - 1)] for k, v in ends.items()}})
        assert forward_backward(cnn.build_model(cfg, splits((1, 8, 8))), (1, 8, 8)).shape == (2, 10)
