"""The clock family: course files, the stratified split, augmentation, backbones, the search."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from trainables import clock, clockgen
from trainables.config import ConfigError
from trainables.data import DataError, clock_splits, load_dataset, read_clock_files


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory):
    """A course-format folder: images.npy uint8 (3600, 32, 32), labels.npy int64 sorted by time."""
    folder = tmp_path_factory.mktemp("course")
    clockgen.write(folder, per_minute=5, size=32, seed=3)
    return folder


def test_course_files_load_with_a_stratified_split(course_dir):
    data = load_dataset("clocks", data_dir=course_dir)
    assert data.sizes() == (2160, 720, 720) and data.input_shape == (1, 32, 32)
    for y in (data.y_train, data.y_val, data.y_test):  # every minute of the dial in every split
        assert len(np.unique(y[:, 0] * 60 + y[:, 1])) == 720
    assert not np.array_equal(data.y_train[:25], np.sort(data.y_train[:25], axis=0))  # shuffled


def test_split_ratios_and_seed():
    labels = np.stack(np.divmod(np.repeat(np.arange(720), 25), 60), axis=1)
    images = np.zeros((len(labels), 4, 4), np.uint8)
    a = clock_splits("c", images, labels, split_seed=42)
    assert a.sizes() == (10800, 3600, 3600)  # the reference's 60:20:20 of 18,000
    b = clock_splits("c", images, labels, split_seed=43)
    assert a.fingerprint != b.fingerprint
    c = clock_splits("c", images, labels, ratios=(0.8, 0.1, 0.1))
    assert c.sizes()[0] == 14400 and sum(c.sizes()[1:]) == 3600  # 2.5 a minute: val takes the third


def course_folder(folder, labels, size=16, rgb=False):
    """A course-format folder with one synthetic-looking image per label row."""
    rng = np.random.default_rng(0)
    shape = (len(labels), size, size, 3) if rgb else (len(labels), size, size)
    np.save(folder / "images.npy", rng.integers(0, 256, size=shape, dtype=np.uint8))
    np.save(folder / "labels.npy", np.asarray(labels, np.int64))
    return folder


def every_minute(per_minute=1):
    return np.stack(np.divmod(np.repeat(np.arange(720), per_minute), 60), axis=1)


def test_one_clock_a_minute_splits_by_hour(tmp_path):
    """720 clocks, 1 a minute: no minute can give every split an image, every hour can (60 each)."""
    data = load_dataset("clocks", data_dir=course_folder(tmp_path, every_minute()))
    assert data.split_rule == "stratified by hour" and data.sizes() == (432, 144, 144)
    for y in (data.y_train, data.y_val, data.y_test):
        assert len(np.unique(y[:, 0])) == 12


@pytest.mark.parametrize("case", ["shuffled", "uneven", "missing minutes", "75x75"])
def test_course_files_as_users_have_them(tmp_path, case):
    labels = every_minute(per_minute=5)
    rng = np.random.default_rng(1)
    if case == "shuffled":
        labels = labels[rng.permutation(len(labels))]
    elif case == "uneven":  # a few photographs an hour, unevenly: 1 to 9 for each of 200 minutes
        minutes = rng.choice(720, size=200, replace=False)
        labels = every_minute()[np.repeat(minutes, rng.integers(1, 10, size=200))]
    elif case == "missing minutes":  # the afternoon only, 5 a minute
        labels = labels[labels[:, 0] < 6]
    data = load_dataset("clocks", data_dir=course_folder(tmp_path, labels, size=75 if case == "75x75" else 16))
    assert sum(data.sizes()) == len(labels) and min(data.sizes()) > 0
    expected = {"uneven": "stratified by hour"}.get(case, "stratified by minute")
    assert data.split_rule == expected
    if case == "75x75":
        assert data.input_shape == (1, 75, 75)
    if case == "missing minutes":
        assert set(np.unique(data.y_test[:, 0] * 60 + data.y_test[:, 1])) == set(range(360))


def test_rgb_clocks_are_read_as_grayscale_with_a_note(tmp_path):
    course_folder(tmp_path, every_minute(), rgb=True)
    rgb = np.load(tmp_path / "images.npy")
    images, labels, notes = read_clock_files(tmp_path)
    assert images.shape == rgb.shape[:3] and images.dtype == np.uint8
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    assert np.abs(images.astype(float) - luma).max() <= 0.5 + 1e-3
    assert len(notes) == 1 and "RGB images read as grayscale" in notes[0]
    assert load_dataset("clocks", data_dir=tmp_path).notes == notes


def test_a_folder_too_small_to_split_says_how_many_it_needs(tmp_path):
    course_folder(tmp_path, every_minute()[:30])
    with pytest.raises(DataError, match="has 30 clocks, too few to train and evaluate on; it needs at least 50"):
        load_dataset("clocks", data_dir=tmp_path)


def test_a_few_clocks_an_hour_are_shuffled_not_refused(tmp_path):
    data = load_dataset("clocks", data_dir=course_folder(tmp_path, every_minute()[::12]))  # 60: 5 an hour
    assert data.split_rule == "stratified by hour"
    data = load_dataset("clocks", data_dir=course_folder(tmp_path, every_minute()[::14][:52]))  # 4-5 an hour
    assert data.split_rule == "seeded shuffle" and sum(data.sizes()) == 52


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((10, 8, 8, 4), np.uint8), np.zeros((10, 2), np.int64), "or \\(N, S, S, 3\\) for RGB"),
    (np.zeros((10, 8, 8), np.float32), np.zeros((10, 2), np.int64), "must be uint8 of shape"),
    (np.zeros((10, 8, 6), np.uint8), np.zeros((10, 2), np.int64), "must be uint8 of shape"),
    (np.zeros((10, 8, 8), np.uint8), np.zeros((10, 3), np.int64), "integers of shape \\(N, 2\\)"),
    (np.zeros((10, 8, 8), np.uint8), np.zeros((9, 2), np.int64), "10 images but 9 labels"),
    (np.zeros((2, 8, 8), np.uint8), np.array([[12, 0], [0, 0]]), "hours must lie in 0..11"),
    (np.zeros((2, 8, 8), np.uint8), np.array([[1, 60], [0, 0]]), "minutes 0..60"),
])
def test_malformed_course_files_say_what_is_wrong(tmp_path, images, labels, message):
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    with pytest.raises(DataError, match=message):
        read_clock_files(tmp_path)


def test_missing_and_pickled_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="lacks images.npy, labels.npy"):
        read_clock_files(tmp_path)
    np.save(tmp_path / "images.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "labels.npy", np.zeros((1, 2), np.int64))
    with pytest.raises(DataError, match="must be plain numpy arrays"):
        read_clock_files(tmp_path)


def test_augmentation_is_batched_and_expansion_is_fixed():
    x = torch.rand(6, 1, 32, 32)
    idx = torch.arange(6)
    gen = torch.Generator().manual_seed(0)
    cfg = clock.Config.from_dict({"augment": "none"})
    assert torch.equal(clock.augment(cfg, x, idx, gen, 0), x)
    still = clock.Config.from_dict({"rotation": 0, "shear": 0, "zoom_low": 1, "zoom_high": 1})
    assert torch.allclose(clock.augment(still, x, idx, gen, 0), x, atol=1e-5)
    fresh = clock.Config.from_dict({"augment": "fresh"})
    assert not torch.allclose(clock.augment(fresh, x, idx, gen, 0), clock.augment(fresh, x, idx, gen, 0))
    fixed = clock.Config.from_dict({"augment": "expand", "expand": 3})
    first, again = clock.augment(fixed, x, idx, gen, 1), clock.augment(fixed, x, idx, gen, 1)
    assert torch.equal(first, again) and not torch.equal(first, clock.augment(fixed, x, idx, gen, 2))
    assert clock.passes(fixed) == 3 and clock.passes(fresh) == 1


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18", "vgg16_bn", "vgg16"])
def test_backbones_build_from_scratch_on_grayscale(backbone):
    data = load_dataset("clocks-tiny")
    cfg = clock.Config.from_dict({"backbone": backbone, "encoding": "class_class", "minute_hidden": 256})
    model = clock.build_model(cfg, data).eval()
    out = model(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 72) and torch.isfinite(out).all()


@pytest.mark.parametrize("encoding", ["regression", "class_reg"])
def test_the_encodings_outputs_stay_fp32_under_bf16_autocast(encoding):
    """On a GPU a convolutional model runs under bf16 autocast (``precision: auto``): the head's bf16 outputs
    could not say a decimal hour of 8-12 finer than 1/16 h, 3.75 minutes."""
    cfg = clock.Config.from_dict({"backbone": "small_cnn", "encoding": encoding})
    model = clock.build_model(cfg, load_dataset("clocks-tiny")).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 1, 32, 32))
        assert model.trunk(model.backbone(torch.rand(2, 1, 32, 32))).dtype == torch.bfloat16  # autocast is on
    assert out.dtype == torch.float32


def test_pretrained_vgg16_freezes_all_but_the_last_two_convolutions(monkeypatch, tmp_path):
    """With weights in torchvision's cache (here: saved from a fresh model), only two convs train."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.vgg16().state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    cfg = clock.Config.from_dict({"backbone": "vgg16", "pretrained": True})
    model = clock.build_model(cfg, load_dataset("clocks-tiny"))
    convs = [m for m in model.backbone[1] if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.requires_grad for c in convs] == [False] * 11 + [True] * 2


def test_missing_pretrained_weights_name_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VALLEY_OFFLINE", "1")
    cfg = clock.Config.from_dict({"backbone": "resnet18", "pretrained": True})
    with pytest.raises(ConfigError, match="set `pretrained: false` to train the backbone from scratch"):
        clock.build_model(cfg, load_dataset("clocks-tiny"))
    with pytest.raises(ConfigError, match="pretrained: false"):
        clock.preflight(cfg)


@pytest.mark.parametrize("bad, message", [
    ({"backbone": "vgg19"}, "unknown backbone 'vgg19'; valid: small_cnn, resnet18"),
    ({"encoding": "clock12"}, "unknown encoding 'clock12'; valid:"),
    ({"augment": "sometimes"}, "unknown augment 'sometimes'"),
    ({"zoom_low": 1.2, "zoom_high": 1.1}, "0 < zoom_low <= zoom_high must hold"),
    # trainable_convs=20 on vgg16 left 7 of 13 trainable (a negative slice); on resnet18 it was ignored
    ({"backbone": "vgg16", "trainable_convs": 20}, r"trainable_convs must lie in \[0, 13\] \(VGG16 has 13"),
    ({"backbone": "resnet18", "trainable_convs": 0}, "trainable_convs freezes a VGG16's convolutions, and backbone "
                                                     "resnet18 trains every layer; drop it or use vgg16"),
])
def test_config_rules(bad, message):
    with pytest.raises(ConfigError, match=message):
        clock.Config.from_dict(bad)


def test_task_reports_csd_on_the_dial():
    task = clock.make_task(clock.Config.from_dict({"encoding": "class720"}))
    y = torch.tensor([[0, 5], [11, 50]])  # 12:05 and 11:50
    logits = torch.full((2, 720), -10.0)
    logits[0, 11 * 60 + 55] = 10  # 11:55: 10 minutes from 12:05
    logits[1, 10] = 10  # 12:10: 20 minutes from 11:50
    metrics = task.metrics(task.predict(logits), y)
    assert metrics["csd"] == pytest.approx(15.0) and metrics["exact_acc"] == 0.0


@pytest.mark.ray
def test_clock_encodings_on_course_files(ray_session, course_dir, tmp_path):
    """`valley search clock-encodings --data-dir DIR`: per encoding, CSD with its spread over seeds."""
    from search.run import SearchOptions, run_search
    from spaces import load_space

    folder = run_search(load_space("clock-encodings"), SearchOptions(
        data_dir=str(course_dir), max_epochs=1, storage=str(tmp_path), name="enc", quiet=True,
        overrides={"width": 4, "head_width": 32}))
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 27 and set(trials["status"]) == {"completed"}
    assert trials["config/encoding"].nunique() == 8
    assert (trials["seeds"] == 3).all()
    per_encoding = trials.groupby(["config/encoding", "config/csd_weight"], dropna=False)
    assert per_encoding["seeds_std_test_csd"].first().notna().all()
    assert trials["test_csd"].between(0, 360).all()
    # the report shows how the best trial reads the test images, from predictions.npz
    from analysis.load import load
    from analysis.report import write_report

    experiment = load(folder)
    best = trials.sort_values("best_val_csd").iloc[0]["trial_id"]
    saved = experiment.predictions(best)
    assert saved["true"].shape == (len(saved["pred"]), 2) and len(saved["worst_images"]) == 16
    page = write_report(folder, images=False).read_text(encoding="utf-8")
    for key in ("csd-histogram", "csd-by-hour", "confusion", "worst-reads"):
        assert f'<section id="{key}">' in page, key


def test_best_checkpoint_keeps_its_test_predictions(tmp_path):
    from trainables.loop import train
    from trainables.metrics import csd
    from trainables.report import LocalReporter

    data = clock.tiny_data()
    reporter = LocalReporter(tmp_path / "ckpt")
    train({"family": "clock", "max_epochs": 2, "width": 4, "head_width": 32, "encoding": "regression"},
          data=data, reporter=reporter)
    saved = np.load(tmp_path / "ckpt" / "predictions.npz")
    true = saved["true"][:, 0] * 60 + saved["true"][:, 1]
    assert len(saved["pred"]) == len(data.x_test) and (saved["true"] == data.y_test).all()
    assert saved["error"] == pytest.approx(csd(saved["pred"], true), abs=1e-3)
    assert saved["error"].mean() == pytest.approx(reporter.history[-1]["test_csd"], rel=1e-4)
    worst = saved["worst_index"]
    assert saved["error"][worst[0]] == saved["error"].max()
    assert (saved["worst_images"] == data.x_test[worst]).all()


@pytest.mark.ray
def test_a_search_on_photographed_clocks_says_how_it_split_them(ray_session, write_space, tmp_path):
    """720 RGB clocks, one a minute: the search runs, and the manifest and report say what loading did."""
    import json

    from analysis.report import write_report
    from search.run import SearchOptions, run_search
    from spaces import load_space

    course = tmp_path / "photos"
    course.mkdir()
    course_folder(course, every_minute(), size=32, rgb=True)
    space = write_space("family: clock\ndataset: clocks\nmetric: val_csd\nmode: min\nmax_epochs: 1\n"
                        "params: {width: 4, head_width: 16, encoding: regression}\n")
    folder = run_search(load_space(space), SearchOptions(data_dir=str(course), storage=str(tmp_path / "r"),
                                                         name="photos", quiet=True))
    manifest = json.loads((folder / "valley.json").read_text())
    assert manifest["data"]["split"] == "stratified by hour" and manifest["data"]["sizes"] == [432, 144, 144]
    assert "RGB images read as grayscale" in manifest["data"]["notes"][0]
    page = write_report(folder, images=False).read_text(encoding="utf-8")
    assert "stratified by hour" in page and "RGB images read as grayscale" in page
