from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.encodings import ENCODINGS, Encoding, Split, get_encoding

NAMES = list(ENCODINGS)
CLASSIFYING = ["class720", "class_class", "class_reg", "reg_class", "class_periodic"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: an OpenMP team costs more than it gives, and stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _labels(times: list[int] | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(times)
    return torch.stack([t // 60, t % 60], dim=1)


def _ideal(enc: Encoding, y: torch.Tensor) -> torch.Tensor:
    """Outputs that state the labels exactly (confident logits, exact numbers)."""
    h, m = y[:, 0], y[:, 1]
    position = h + m / 60

    def onehot(k: torch.Tensor, n: int) -> torch.Tensor:
        return 20.0 * F.one_hot(k, n).float()

    def pair(turns: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.sin(turns * 2 * math.pi), torch.cos(turns * 2 * math.pi)], dim=1)

    if enc.name == "class720":
        return onehot(h * 60 + m, 720)
    if enc.name == "regression":
        return position[:, None]
    assert isinstance(enc, Split)
    hour = {"class": lambda: onehot(h, 12), "reg": lambda: position[:, None], "periodic": lambda: pair(position / 12)}
    minute = {"class": lambda: onehot(m, 60), "reg": lambda: (m / 60)[:, None], "periodic": lambda: pair(m / 60)}
    return torch.cat([hour[enc.hour](), minute[enc.minute]()], dim=1)


@pytest.mark.parametrize("name", NAMES)
def test_decodes_every_time_of_the_dial(name: str) -> None:
    enc = get_encoding(name)
    t = torch.arange(720)
    out = _ideal(enc, _labels(t))
    assert out.shape == (720, enc.n_out)
    decoded = enc.decode(out)
    assert decoded.shape == (720,) and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, t.float(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("name,out", [
    ("class720", 20.0 * F.one_hot(torch.tensor([225]), 720).float()),
    ("regression", torch.tensor([[3.75]])),
    ("regression", torch.tensor([[3.75 - 24]])),  # wrapped modulo 12 hours
    ("class_class", torch.cat([20.0 * F.one_hot(torch.tensor([3]), 12), 20.0 * F.one_hot(torch.tensor([45]), 60)], 1)),
    ("class_reg", torch.cat([20.0 * F.one_hot(torch.tensor([3]), 12), torch.tensor([[0.75]])], 1)),
    ("reg_class", torch.cat([torch.tensor([[3.75]]), 20.0 * F.one_hot(torch.tensor([45]), 60)], 1)),
    ("reg_reg", torch.tensor([[3.75, 1.75]])),  # the minute wraps modulo one hour
    ("periodic", torch.tensor([[2 * math.sin(math.radians(112.5)), 2 * math.cos(math.radians(112.5)),
                                -3.0, 0.0]])),  # unnormalised pairs: 3.75 h is 112.5 deg, 45 min 270 deg
    ("class_periodic", torch.cat([20.0 * F.one_hot(torch.tensor([3]), 12), torch.tensor([[-1.0, 0.0]])], 1)),
])
def test_hand_built_outputs_read_3_45(name: str, out: torch.Tensor) -> None:
    assert get_encoding(name).decode(out).item() == pytest.approx(225.0, abs=1e-3)


def test_hour_class_near_the_boundary_follows_the_minute() -> None:
    enc = get_encoding("class_class")
    hour = torch.full((1, 12), -20.0)
    hour[0, 3] = hour[0, 4] = 0.0  # the head cannot tell 3 from 4
    late, early = (torch.cat([hour, 20.0 * F.one_hot(torch.tensor([m]), 60)], 1) for m in (58, 2))
    assert enc.decode(late).item() == 3 * 60 + 58
    assert enc.decode(early).item() == 4 * 60 + 2
    confident = torch.cat([20.0 * F.one_hot(torch.tensor([4]), 12), late[:, 12:]], 1)
    assert enc.decode(confident).item() == 4 * 60 + 58  # a sure head is not overruled
    wraps = torch.full((1, 12), -20.0)
    wraps[0, 0] = wraps[0, 11] = 0.0
    assert enc.decode(torch.cat([wraps, late[:, 12:]], 1)).item() == 11 * 60 + 58


@pytest.mark.parametrize("name", ["class_reg", "class_periodic"])
def test_a_continuous_minute_a_hair_off_the_hour_reads_a_hair_off(name: str) -> None:
    """At 3:00 a minute head saying -0.01 (59.99 once wrapped) read 3:59.99 under a sure hour class: a CSD of
    60 for half the clocks on the hour."""
    enc = get_encoding(name)
    y = _labels(torch.arange(0, 720, 60))
    for shift in (-0.01, 0.01, -0.4, 0.4):  # minutes
        out = _ideal(enc, torch.stack([y[:, 0], y[:, 1]], 1))
        turns = (y[:, 1] + shift) / 60
        out[:, 12:] = turns[:, None] if enc.minute == "reg" else torch.stack(
            [torch.sin(turns * 2 * math.pi), torch.cos(turns * 2 * math.pi)], dim=1)
        error = (enc.decode(out) - (y[:, 0] * 60 + y[:, 1]).float() + 360) % 720 - 360
        torch.testing.assert_close(error, torch.full((12,), shift), atol=1e-3, rtol=0)


def test_continuous_hour_is_unwrapped_with_the_minute() -> None:
    enc = get_encoding("reg_class")
    minute = lambda m: 20.0 * F.one_hot(torch.tensor([m]), 60)  # noqa: E731
    assert enc.decode(torch.cat([torch.tensor([[4.02]]), minute(58)], 1)).item() == 3 * 60 + 58
    assert enc.decode(torch.cat([torch.tensor([[3.9]]), minute(2)], 1)).item() == 4 * 60 + 2
    assert enc.decode(torch.cat([torch.tensor([[11.98]]), minute(59)], 1)).item() == 11 * 60 + 59
    assert enc.decode(torch.cat([torch.tensor([[0.01]]), minute(59)], 1)).item() == 11 * 60 + 59


def test_regression_loss_is_circular() -> None:
    enc = get_encoding("regression")
    y = torch.tensor([[0, 6]])  # 0:06 = 0.1 h
    assert enc.loss(torch.tensor([[11.9]]), y).item() == pytest.approx(0.2, abs=1e-5)
    assert enc.loss(torch.tensor([[0.1]]), y).item() == pytest.approx(0.0, abs=1e-6)
    assert enc.loss(torch.tensor([[6.1]]), y).item() == pytest.approx(6.0, abs=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("minute_hidden", [0, 16])
def test_loss_is_finite_decreases_and_reaches_every_parameter(name: str, minute_hidden: int) -> None:
    torch.manual_seed(0)
    enc = get_encoding(name)
    x = torch.randn(31, 10)  # odd, so the signs of an L1 gradient cannot cancel out exactly
    y = _labels(torch.randint(0, 720, (31,)))
    head = enc.head(10, minute_hidden=minute_hidden, minute_dropout=0.0)
    out = head(x)
    assert out.shape == (31, enc.n_out)
    first = enc.loss(out, y, csd_weight=0.5)
    assert first.ndim == 0 and torch.isfinite(first)
    first.backward()
    for pname, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        opt.zero_grad()
        loss = enc.loss(head(x), y, csd_weight=0.5)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and loss.item() < 0.9 * first.item()


@pytest.mark.parametrize("name", CLASSIFYING)
def test_csd_term_is_small_when_right_and_grows_with_the_error(name: str) -> None:
    enc = get_encoding(name)
    y = _labels([225])  # 3:45
    extra = lambda out: (enc.loss(out, y, csd_weight=1.0) - enc.loss(out, y)).item()  # noqa: E731
    right = extra(_ideal(enc, y))
    near = extra(_ideal(enc, _labels([160])))  # 2:40: one hour class off, five minute classes off
    far = extra(_ideal(enc, _labels([555])))  # 9:15: six hours and thirty minutes off
    assert 0 <= right < 1e-3
    assert right < near < far


@pytest.mark.parametrize("name", ["regression", "reg_reg", "periodic"])
def test_csd_weight_leaves_distance_losses_alone(name: str) -> None:
    enc = get_encoding(name)
    y = _labels([225, 10])
    out = torch.randn(2, enc.n_out)
    assert enc.loss(out, y, csd_weight=3.0).item() == pytest.approx(enc.loss(out, y).item())


def test_minute_hidden_inserts_a_layer_before_the_minute_head_only() -> None:
    head = get_encoding("class_class").head(20, minute_hidden=16, minute_dropout=0.7)
    assert isinstance(head.hour, nn.Linear) and head.hour.out_features == 12
    kinds = [type(m) for m in head.minute]
    assert kinds == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert head.minute[3].p == 0.7 and head.minute[4].out_features == 60
    plain = get_encoding("class_class").head(20)
    assert isinstance(plain.minute, nn.Linear)


def test_bad_arguments_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="unknown encoding 'clock'; valid: class720, regression"):
        get_encoding("clock")
    enc = get_encoding("class_class")
    with pytest.raises(ValueError, match=r"needs outputs \(B, 72\)"):
        enc.loss(torch.zeros(2, 70), _labels([1, 2]))
    with pytest.raises(ValueError, match="integer labels"):
        enc.loss(torch.zeros(2, 72), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="minute_dropout"):
        enc.head(8, minute_dropout=1.0)
    with pytest.raises(ValueError, match="minute_hidden"):
        enc.head(8, minute_hidden=-1)
    with pytest.raises(ValueError, match="hour part"):
        Split("bad", "angle", "class")
