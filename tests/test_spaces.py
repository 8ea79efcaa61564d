"""Spaces: the built-in grids, every YAML mistake's message, and draws inside their bounds."""
from __future__ import annotations

import pytest

from spaces import SpaceError, builtin_spaces, load_space, parse_space

HEADER = "family: mlp\ndataset: digits\nmetric: val_loss\nmode: min\n"


def test_mlp_rough_is_the_reference_grid_of_14():
    space = load_space("mlp-rough")
    points = space.grid_points()
    assert len(points) == space.grid_size() == 14
    assert [p.get("hidden") for p in points[:3]] == [[2], [5], [10]]
    assert sum(1 for p in points if p.get("l2") == 0.01) == 3
    assert sum(1 for p in points if p.get("dropout") == 0.2) == 3
    assert {p.get("layers") for p in points} == {None, 1, 2, 5, 12, 15}
    assert not space.is_sampled()


def test_every_builtin_space_loads():
    for name in builtin_spaces():
        assert load_space(name).family


@pytest.mark.parametrize("body, message", [
    ("params: {lr: {uniform: [0.1, 0.01]}}", r"params.lr: low <= high must hold, got low=0.1, high=0.01"),
    ("params: {lr: {loguniform: [0, 0.01]}}", r"params.lr: a log range must be > 0 at both ends"),
    ("params: {batch_size: {choice: []}}", r"params.batch_size: choice is empty"),
    ("params: {layers: {randint: [5, 5]}}", r"params.layers: low < high must hold \(high is exclusive\)"),
    ("params: {lr: {uniform: [0, .inf]}}", r"params.lr: bounds must be finite"),
    ("params: {lr: {unifrom: [0, 1]}}", r"unknown distribution 'unifrom'; did you mean 'uniform'"),
    ("params: {lr: {uniform: [0]}}", r"uniform takes \[low, high\]"),
    ("params: {layers: {randint: [1.5, 4]}}", r"randint takes integers"),
    ("grid: []", r"grid: is empty"),
    # each trained the same configuration twice, unsaid
    ("params: {lr: {grid: [0.001, 1e-2, 1e-3]}}", r"params.lr: grid lists 0.001 twice; remove the repeat"),
    ("grid:\n  - {hidden: [4]}\n  - {hidden: [8]}\n  - {hidden: [4]}",
     r"grid\[2\]: repeats grid\[0\] \({'hidden': \[4\]}\); remove it \(--samples N runs every row"),
    ("paramz: {}", r"paramz: unknown key; did you mean 'params'"),
    # the search overruled these under params, and a row's epochs were not those ASHA, budgets and the board counted
    ("params: {max_epochs: 4}", r"params.max_epochs: epochs are the whole search's: give `max_epochs:` at the space's"),
    ("grid:\n  - {hidden: [4], max_epochs: 5}", r"grid\[0\].max_epochs: epochs are the whole search's"),
    ("params: {dataset: digits}", r"params.dataset: the data set is the whole search's: give `dataset:` at"),
])
def test_yaml_mistakes_name_file_key_rule_and_value(write_space, body, message):
    path = write_space(HEADER + body + "\n")
    with pytest.raises(SpaceError, match=message) as err:
        load_space(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_syntax_error_names_the_line(write_space):
    path = write_space(HEADER + "params:\n  lr: [0.1, 0.2\n")
    with pytest.raises(SpaceError, match=r"line \d+: not valid YAML"):
        load_space(path)


def test_mode_and_missing_keys(write_space):
    with pytest.raises(SpaceError, match="mode: must be min or max, got 'lowest'"):
        load_space(write_space("family: mlp\nmetric: val_loss\nmode: lowest\n"))
    with pytest.raises(SpaceError, match="metric: missing"):
        load_space(write_space("family: mlp\nmode: min\n"))
    with pytest.raises(SpaceError, match=r"metric, mode: missing; add `metric:` \(the validation metric .*\); "
                                         r"`mode:` \(min or max\)"):  # both at once, not one run each
        load_space(write_space("family: mlp\nparams: {lr: 0.1}\n"))


def test_python_tags_are_refused(write_space):
    path = write_space(HEADER + "params:\n  lr: !!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)


def test_unknown_space_lists_builtins():
    with pytest.raises(SpaceError, match=r"unknown space 'mlp-rouhg'; did you mean 'mlp-rough'"):
        load_space("mlp-rouhg")


def test_numbers_read_as_a_person_writes_them():
    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min",
                         "params": {"lr": {"loguniform": [1e-6, 1e-3]}}})
    assert space.params["lr"].args == (1e-6, 1e-3)


def test_draws_stay_inside_bounds_and_reproduce():
    from search.tune_space import param_space

    space = load_space("mlp-fine")
    params, _ = param_space(space, {}, "random")
    for key, low, high in [("lr", 1e-6, 1e-3), ("dropout", 0.1, 0.7), ("l2", 1e-6, 1e-2)]:
        draws = params[key].sample(size=500, random_state=1)
        assert all(low <= d <= high for d in draws)
        assert list(draws) == list(params[key].sample(size=500, random_state=1))
    assert set(params["batch_size"].sample(size=100, random_state=0)) == {64, 128}


def test_qrandint_draws_its_high_whatever_its_step():
    """Ray's qrandint leaves out its high for q=1 alone, and failed for [2, 2, 1] inside the search;
    valley's is inclusive as written, for every searcher."""
    from search.tune_space import param_space

    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min",
                         "params": {"early_stop": {"qrandint": [2, 3, 1]}, "layers": {"qrandint": [2, 2, 1]},
                                    "batch_size": {"qrandint": [16, 48, 16]}}})
    params, _ = param_space(space, {}, "random")
    assert set(params["early_stop"].sample(size=200, random_state=0)) == {2, 3}
    assert set(params["layers"].sample(size=20, random_state=0)) == {2}
    assert set(params["batch_size"].sample(size=200, random_state=0)) == {16, 32, 48}


def test_family_checks_happen_before_ray(write_space):
    from search.tune_space import check_space

    space = load_space(write_space(HEADER + "params: {dropuot: 0.2}\n"))
    with pytest.raises(SpaceError, match=r"unknown key 'dropuot'.*did you mean 'dropout'"):
        check_space(space, {})
    space = load_space(write_space("family: mlp\nmetric: val_accuracy\nmode: max\n"))
    with pytest.raises(SpaceError, match=r"metric: 'val_accuracy' is not reported by family 'mlp'; rank on one "
                                         r"of best_val_loss, val_acc, val_loss$"):
        check_space(space, {})
    # a training loss, or a test metric, ranked nothing: the trials table has no column of the first, and the
    # second would choose on the split that judges the choice
    space = load_space(write_space("family: mlp\nmetric: train_loss\nmode: min\n"))
    with pytest.raises(SpaceError, match=r"metric: 'train_loss' is reported but not a validation metric"):
        check_space(space, {})
    space = load_space(write_space("family: mlp\nmetric: test_acc\nmode: max\n"))
    with pytest.raises(SpaceError, match=r"'test_acc' would choose models by the test split.*rank on val_acc"):
        check_space(space, {})
    space = load_space(write_space("family: rnn\nmetric: val_loss\nmode: min\n"))
    with pytest.raises(SpaceError, match=r"unknown family 'rnn'; did you mean 'cnn'\? valid families"):
        check_space(space, {})


def test_a_space_made_in_python_is_a_document_yaml_writes():
    """numpy's numbers (np.logspace's) pass the checks, and YAML refused them once the search had begun."""
    import numpy as np
    import yaml

    from spaces import parse_space

    space = parse_space({"family": "mlp", "metric": "val_loss", "mode": "min",
                         "params": {"lr": {"grid": list(np.logspace(-3, -2, 2))}, "batch_size": np.int64(32)}})
    assert yaml.safe_load(yaml.safe_dump(space.as_doc())) == {
        "family": "mlp", "metric": "val_loss", "mode": "min", "params": {"lr": {"grid": [0.001, 0.01]},
                                                                       "batch_size": 32}}
