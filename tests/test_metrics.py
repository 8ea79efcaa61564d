from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.metrics import accuracy, csd, csd_summary, to_minutes


def test_reference_examples() -> None:
    # true 12:05 (hour 0), predicted 11:55: 10 minutes, not 710
    assert csd(to_minutes(11, 55), to_minutes(0, 5)) == 10
    # true 11:50, predicted 12:10: the reference's text says 10, its formula gives 20
    assert csd(to_minutes(0, 10), to_minutes(11, 50)) == 20


def test_matches_the_formula_on_every_pair_of_hours() -> None:
    t = np.arange(0, 720, 7)
    pred, true = np.meshgrid(t, t)
    d = np.abs(pred - true)
    np.testing.assert_array_equal(csd(pred, true), np.minimum(d, 720 - d))
    assert csd(pred, true).max() <= 360


def test_torch_and_numpy_agree_for_integers_and_reals() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 720, 50)
    for pred in (rng.integers(0, 720, 50), rng.uniform(-800, 1500, 50)):
        a = csd(pred, true)
        b = csd(torch.as_tensor(pred), torch.as_tensor(true))
        assert isinstance(b, torch.Tensor)
        np.testing.assert_allclose(a, b.numpy(), atol=1e-9)
        assert (a >= 0).all() and (a <= 360).all()


def test_real_predictions_wrap_modulo_720() -> None:
    assert csd(np.array([-5.0]), np.array([0]))[0] == pytest.approx(5.0)
    assert csd(np.array([725.5]), np.array([0]))[0] == pytest.approx(5.5)
    assert csd(torch.tensor([1439.0]), torch.tensor([0])).item() == pytest.approx(1.0)
    assert csd(np.array([359.5]), np.array([0]))[0] == pytest.approx(359.5)


def test_mixed_types_give_a_tensor() -> None:
    out = csd(torch.tensor([10.0]), np.array([700]))
    assert isinstance(out, torch.Tensor) and out.item() == pytest.approx(30.0)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        csd(np.zeros(3), np.zeros(4))


def test_summary() -> None:
    true = np.array([0, 60, 125, 719])
    pred = np.array([719.6, 61.0, 125.4, 710.0])  # 0:00 (wraps), 1:01, 2:05, 11:50
    s = csd_summary(pred, true)
    assert set(s) == {"csd", "csd_median", "csd_p90", "exact_acc", "hour_acc", "minute_acc"}
    assert s["csd"] == pytest.approx((0.4 + 1.0 + 0.4 + 9.0) / 4)
    assert s["csd_median"] == pytest.approx(0.7)
    assert s["exact_acc"] == pytest.approx(0.5)  # 0:00 and 2:05
    assert s["hour_acc"] == pytest.approx(1.0)
    assert s["minute_acc"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in s.values())
    t = csd_summary(torch.as_tensor(pred), torch.as_tensor(true))
    assert t == pytest.approx(s)


def test_summary_hour_accuracy_reads_the_rounded_prediction() -> None:
    s = csd_summary(np.array([59.6]), np.array([59]))  # rounds to 1:00, the true time is 0:59
    assert s["hour_acc"] == 0.0 and s["minute_acc"] == 0.0 and s["csd"] == pytest.approx(0.6)


def test_summary_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        csd_summary(np.array([]), np.array([]))


def test_accuracy() -> None:
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == pytest.approx(0.75)
    assert accuracy(torch.tensor([1, 2]), torch.tensor([1, 0])) == pytest.approx(0.5)
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0]])
    assert accuracy(logits, torch.tensor([1, 2])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shaped like the labels"):
        accuracy(np.array([1, 2, 3]), np.array([1, 2]))


def test_unsigned_and_real_labels_read_as_minutes() -> None:
    """uint16 0 against 719 read 1439 minutes apart (their difference wrapped), and a real true minute of
    359.7 was truncated to 359, 0.7 minutes from a prediction of 359.7."""
    for kind in (np.uint16, np.uint32):
        assert csd(np.array([0], kind), np.array([719], kind)).tolist() == [1]
    assert csd(torch.tensor([0], dtype=torch.uint8), torch.tensor([250], dtype=torch.uint8)).tolist() == [250]
    assert csd_summary(np.array([359.7]), np.array([359.7]))["csd"] == 0.0
    assert csd_summary(np.array([360.0]), np.array([359.7]))["exact_acc"] == 1.0
