"""Data sets: shapes, splits, torchvision's on-disk formats written small, the offline error."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from trainables.data import (CIFAR_FILES, FASHION_FILES, DataError, get_dataset, is_available,
                             load_dataset)


def test_digits_is_real_and_split_without_overlap():
    data = load_dataset("digits")
    assert data.input_shape == (1, 8, 8) and data.n_classes == 10
    assert data.sizes() == get_dataset("digits").sizes == (1077, 360, 360)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    rows = {x.tobytes() for x in data.x_train}
    assert sum(x.tobytes() in rows for x in data.x_test) < 5  # digits has a few duplicate images
    assert set(np.unique(data.y_train)) == set(range(10))


def test_splits_are_fixed_by_seed():
    a, b, c = load_dataset("digits"), load_dataset("digits"), load_dataset("digits", split_seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert np.array_equal(a.x_test, c.x_test)  # only validation is re-carved


def write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_reads_torchvisions_layout(tmp_path, compress):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in zip(FASHION_FILES, (5100, 5100, 30, 30)):
        array = rng.integers(0, 256, (n, 28, 28)) if "images" in name else rng.integers(0, 10, n)
        write_idx(raw / name, array, compress)
    assert is_available("fashion_mnist", tmp_path)
    data = load_dataset("fashion_mnist", data_dir=tmp_path, download=False)
    assert data.input_shape == (1, 28, 28)
    assert data.sizes() == (100, 5000, 30)  # 5,000 validation images carved from training


@pytest.mark.parametrize("labels", [6000, 5050])
def test_fashion_mnist_training_images_and_labels_must_match(tmp_path, labels):
    """More labels than images trained on misaligned labels, unsaid; fewer raised numpy's IndexError (a review)."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in zip(FASHION_FILES, (5100, labels, 30, 30)):
        write_idx(raw / name, rng.integers(0, 256, (n, 28, 28)) if "images" in name else rng.integers(0, 10, n), True)
    with pytest.raises(DataError, match=rf"^data set 'fashion_mnist', train split: 5,100 images but {labels:,} "
                                         r"labels; the files are truncated or mixed"):
        load_dataset("fashion_mnist", data_dir=tmp_path, download=False)


def test_cifar10_reads_the_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in CIFAR_FILES:
        n = 1010 if name.startswith("data") else 20
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert data.input_shape == (3, 32, 32) and data.sizes() == (50, 5000, 20)


def test_offline_and_absent_names_folder_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "\n" not in message
    assert not is_available("cifar10", tmp_path)


def test_a_failed_download_is_said_on_one_line(tmp_path, monkeypatch):
    """torchvision's own download, from a mirror where nothing listens: its error names each mirror it
    tried on lines of their own; valley's says it on one."""
    import torchvision.datasets

    monkeypatch.delenv("VALLEY_OFFLINE")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(DataError):
        load_dataset("fashion_mnist", data_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()  # it made the folders to download into, and left them empty
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    message = str(err.value)
    assert "could not be downloaded (RuntimeError: Error downloading train-images-idx3-ubyte.gz: Tried " \
           "http://127.0.0.1:9/" in message and "\n" not in message, message
    assert message.endswith(f"into {tmp_path / 'FashionMNIST' / 'raw'} (torchvision's layout) and run again")


def test_corrupt_idx_file_says_so(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        (raw / name).write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="is not an unsigned-byte IDX file"):
        load_dataset("fashion_mnist", data_dir=tmp_path)


def test_unknown_dataset_lists_names():
    with pytest.raises(KeyError, match="valid data sets: cifar10, clocks"):
        get_dataset("mnist")
    with pytest.raises(KeyError, match=r"unknown data set 'fashion-mnist' \(did you mean 'fashion_mnist'\?\)"):
        get_dataset("fashion-mnist")


def test_clock_splits_keep_their_shares_and_a_resplit_its_strata():
    """A confirm stage's fresh validation split (split_seed) of clocks was a plain shuffle: 0 to 12 images of
    a minute instead of 5; and 7 clocks a minute at 0.6:0.2:0.2 split 5:1:1, a test set a seventh, not a fifth."""
    from trainables.data import clock_splits

    minutes = np.repeat(np.arange(720), 25)
    labels = np.stack([minutes // 60, minutes % 60], 1)
    data = clock_splits("c", np.zeros((len(labels), 2, 2), np.uint8), labels)
    again = data.resplit(3)
    assert again.split_rule == data.split_rule == "stratified by minute"
    per_minute = np.bincount(again.y_val[:, 0] * 60 + again.y_val[:, 1], minlength=720)
    assert (per_minute == 5).all() and again.sizes() == data.sizes() == (10800, 3600, 3600)
    assert np.array_equal(again.y_test, data.y_test) and again.fingerprint != data.fingerprint
    assert not np.array_equal(again.y_val, data.y_val)
    assert clock_splits("c", np.zeros((len(labels), 2, 2), np.uint8), labels).fingerprint == data.fingerprint

    seven = np.repeat(np.arange(720), 7)
    sizes = clock_splits("c", np.zeros((len(seven), 2, 2), np.uint8), np.stack([seven // 60, seven % 60], 1)).sizes()
    assert sum(sizes) == 5040 and abs(sizes[2] - 1008) < 60 and abs(sizes[1] - 1008) < 60


def test_a_plan_refuses_a_later_stages_missing_data_before_anything_trains(tmp_path, monkeypatch):
    """`plan-mlp` with Fashion-MNIST's files and not CIFAR-10's trained rough, fine and confirm, then stopped at its
    transfer stage (found by a review): the data sets of every stage are fetched, or refused, as the plan starts."""
    from search.options import SearchOptions
    from search.plans import load_plan, start_plan

    monkeypatch.setenv("VALLEY_OFFLINE", "1")
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, n in zip(FASHION_FILES, (5100, 5100, 30, 30)):
        write_idx(raw / name, np.zeros((n, 28, 28)) if "images" in name else np.zeros(n), True)
    with pytest.raises(DataError, match=r"^data set 'cifar10' is not in .*cifar-10-batches-py and downloading is off"):
        start_plan(load_plan("plan-mlp"), SearchOptions(storage=str(tmp_path / "results"), name="p",
                                                        data_dir=str(tmp_path / "data")), say=lambda *a: None)
    assert not (tmp_path / "results" / "p").exists()


@pytest.mark.ray
def test_the_folder_a_search_read_its_files_from_is_recorded(ray_session, tmp_path, monkeypatch):
    """Read through VALLEY_DATA, valley.json said `"data_dir": null`, and `valley resume` from a shell without it
    looked in ~/.cache (found by a review): the folder is kept absolute in valley.json's `data`."""
    import json

    from search.options import SearchOptions
    from search.run import run_search
    from spaces import parse_space

    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in zip(FASHION_FILES, (5100, 5100, 30, 30)):
        write_idx(raw / name, rng.integers(0, 256, (n, 28, 28)) if "images" in name else rng.integers(0, 10, n), True)
    monkeypatch.setenv("VALLEY_DATA", str(tmp_path / "data"))
    space = parse_space({"family": "mlp", "dataset": "fashion_mnist", "metric": "val_loss", "mode": "min",
                         "max_epochs": 1, "params": {"hidden": [4]}})
    folder = run_search(space, SearchOptions(storage=str(tmp_path / "results"), name="env", quiet=True))
    manifest = json.loads((folder / "valley.json").read_text())
    assert manifest["options"]["data_dir"] is None and manifest["data"]["folder"] == str(tmp_path / "data")
