from __future__ import annotations

import pytest

from trainables.config import ConfigError
from trainables.mlp import Config


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key 'dropuot'.*did you mean 'dropout'"):
        Config.from_dict({"dropuot": 0.2})


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"batch_size must be int, got batch_size='big'"):
        Config.from_dict({"batch_size": "big"})


def test_ints_pass_as_floats_and_lists_as_tuples():
    cfg = Config.from_dict({"lr": 1, "hidden": [10, 20], "batch_size": 64.0})
    assert cfg.lr == 1.0 and cfg.hidden == (10, 20) and cfg.batch_size == 64


def test_k_times_100_rule():
    assert Config.from_dict({"layers": 3}).widths == (100, 200, 300)
    assert Config.from_dict({}).widths == (100, 200)


@pytest.mark.parametrize("bad, message", [
    ({"hidden": [10], "layers": 2}, "give hidden or layers, not both"),
    ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
    ({"lr": -1}, "lr must be a positive number"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of adam, adamw, sgd"),
    ({"early_stop": -1}, r"early_stop must be >= 0 epochs \(0: never stop early\), got early_stop=-1"),  # 1 epoch each
    ({"lr_patience": -2}, "lr_patience must be >= 0 epochs"),
    ({"momentum": 2}, r"momentum must lie in \[0, 1\)"),
    ({"min_lr": -1e-6}, "min_lr must be >= 0"),
    ({"device": "tpu"}, r"device must be auto, cpu, cuda or cuda:N \(N the GPU's index\), got device='tpu'"),
    ({"device": "cuda:x"}, "device must be auto, cpu, cuda or cuda:N"),
])
def test_range_rules(bad, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(bad)


def test_numpy_scalars_from_tunes_samplers_are_accepted():
    """Tune's random choice draws numpy scalars (str_, bool_, int64): they are the values they hold."""
    import numpy as np

    from trainables import get_family

    cfg = get_family("cnn").make_config({"arch": np.str_("cnn_gap"), "batchnorm": np.bool_(True),
                                         "batch_size": np.int64(64), "lr": np.float64(0.01)})
    assert (cfg.arch, cfg.batchnorm, cfg.batch_size, cfg.lr) == ("cnn_gap", True, 64, 0.01)
    assert type(cfg.arch) is str and type(cfg.batchnorm) is bool and type(cfg.batch_size) is int
