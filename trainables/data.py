"""Data sets, registered by name, loaded once per search into :class:`Splits`.

Images are kept as uint8 (N, C, H, W) and standardised per batch on the
training device, so a data set costs a quarter of its float size in Ray's
object store and on the GPU. Fashion-MNIST and CIFAR-10 are read from
torchvision's on-disk format; torchvision downloads them when online.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np


class DataError(RuntimeError):
    """A data set that cannot be loaded; the message says what to put where."""


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train, validation and test arrays of one data set, plus what models need to know."""

    name: str
    x_train: np.ndarray  # (N, C, H, W) uint8
    y_train: np.ndarray  # (N,) int64 classes, or (N, 2) int64 [hour, minute] for clocks
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    mean: float  # of the training pixels in [0, 1], for standardising
    std: float
    fingerprint: str  # blake2b of every array: which data a result was made with

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> tuple[int, int, int]:
        return len(self.x_train), len(self.x_val), len(self.x_test)

    def resplit(self, split_seed: int) -> Splits:
        """A fresh validation set of the same size carved from train + val; the test set stays."""
        return make_splits(self.name, np.concatenate([self.x_train, self.x_val]),
                           np.concatenate([self.y_train, self.y_val]), self.x_test, self.y_test,
                           len(self.x_val), self.n_classes, split_seed)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    shape: tuple[int, int, int]
    sizes: tuple[int, int, int]  # train / val / test
    load: Callable[..., Splits]
    files: tuple[str, ...] = ()  # what must be in the folder when it cannot be downloaded
    subdir: str = ""  # that folder, under the data directory


def default_data_dir() -> Path:
    return Path(os.environ.get("VALLEY_DATA", Path.home() / ".cache" / "valley" / "data"))


def make_splits(name: str, x_trainval: np.ndarray, y_trainval: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, n_val: int, n_classes: int, split_seed: int = 0) -> Splits:
    """Carve ``n_val`` validation samples from the training set with a fixed seed."""
    order = np.random.default_rng(split_seed).permutation(len(x_trainval))
    val, train = order[:n_val], order[n_val:]
    x_train = x_trainval[train]
    sample = x_train[: min(len(x_train), 10_000)].astype(np.float32) / 255.0
    digest = hashlib.blake2b(digest_size=8)
    for array in (x_train, y_trainval[train], x_trainval[val], y_trainval[val], x_test, y_test):
        digest.update(np.ascontiguousarray(array).data)
    return Splits(name, x_train, y_trainval[train], x_trainval[val], y_trainval[val], x_test, y_test,
                  n_classes, float(sample.mean()), float(sample.std() or 1.0), digest.hexdigest())


def _digits(data_dir: Path | None = None, split_seed: int = 0, **_: object) -> Splits:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images * (255 / 16)).round().astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(1234).permutation(len(x))  # a fixed test set, whatever split_seed
    test, rest = order[:360], order[360:]
    return make_splits("digits", x[rest], y[rest], x[test], y[test], 360, 10, split_seed)


def _synthetic(data_dir: Path | None = None, split_seed: int = 0, **_: object) -> Splits:
    """4 classes of noisy 8x8 blobs: learnable in one epoch, for tests."""
    rng = np.random.default_rng(7)
    centres = rng.uniform(0, 255, size=(4, 1, 8, 8))
    y = rng.integers(0, 4, size=320)
    x = np.clip(centres[y] + rng.normal(0, 40, size=(320, 1, 8, 8)), 0, 255).astype(np.uint8)
    return make_splits("synthetic", x[:256], y[:256], x[256:], y[256:], 64, 4, split_seed)


FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), plain or ``.gz``."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic {raw[:4].hex()}); "
                        "download it again or delete it so valley can")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    return None


def _fashion_mnist(data_dir: Path | None = None, split_seed: int = 0, download: bool = True,
                   **_: object) -> Splits:
    root = Path(data_dir or default_data_dir())
    raw = root / DATASETS["fashion_mnist"].subdir
    if any(_find(raw, f) is None for f in FASHION_FILES):
        _download("fashion_mnist", root, raw, FASHION_FILES, download,
                  lambda: _torchvision("FashionMNIST", root))
    x_train, y_train, x_test, y_test = (read_idx(_find(raw, f)) for f in FASHION_FILES)
    return make_splits("fashion_mnist", x_train[:, None], y_train.astype(np.int64), x_test[:, None],
                       y_test.astype(np.int64), 5000, 10, split_seed)


def _cifar10(data_dir: Path | None = None, split_seed: int = 0, download: bool = True,
             **_: object) -> Splits:
    root = Path(data_dir or default_data_dir())
    folder = root / DATASETS["cifar10"].subdir
    if any(not (folder / f).exists() for f in CIFAR_FILES):
        _download("cifar10", root, folder, CIFAR_FILES, download, lambda: _torchvision("CIFAR10", root))
    parts = []
    for name in CIFAR_FILES:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")  # the official format is a pickle
        parts.append((np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32),
                      np.asarray(batch[b"labels"], dtype=np.int64)))
    x_train = np.concatenate([x for x, _ in parts[:-1]])
    y_train = np.concatenate([y for _, y in parts[:-1]])
    return make_splits("cifar10", x_train, y_train, parts[-1][0], parts[-1][1], 5000, 10, split_seed)


def _torchvision(cls_name: str, root: Path) -> None:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, cls_name)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _download(name: str, root: Path, folder: Path, files: tuple[str, ...], download: bool,
              fetch: Callable[[], None]) -> None:
    missing = f"put {', '.join(files)} into {folder} (torchvision's layout) and run again"
    if not download or os.environ.get("VALLEY_OFFLINE") == "1":
        raise DataError(f"data set {name!r} is not in {folder} and downloading is off; {missing}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as err:  # noqa: BLE001 - any download failure means the same thing to the user
        raise DataError(f"data set {name!r} is not in {folder} and could not be downloaded "
                        f"({type(err).__name__}: {str(err)[:120]}); {missing}") from None
    finally:
        socket.setdefaulttimeout(previous)


DATASETS: dict[str, Dataset] = {
    "digits": Dataset("digits", "scikit-learn's 8x8 handwritten digits, bundled (offline)",
                      (1, 8, 8), (1077, 360, 360), _digits),
    "fashion_mnist": Dataset("fashion_mnist", "Zalando's 28x28 clothing images, 10 classes",
                             (1, 28, 28), (55000, 5000, 10000), _fashion_mnist, FASHION_FILES, "FashionMNIST/raw"),
    "cifar10": Dataset("cifar10", "32x32 colour images, 10 classes", (3, 32, 32),
                       (45000, 5000, 10000), _cifar10, CIFAR_FILES, "cifar-10-batches-py"),
    "synthetic": Dataset("synthetic", "4 classes of noisy 8x8 blobs, for tests (offline)",
                         (1, 8, 8), (192, 64, 64), _synthetic),
}


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise KeyError(f"unknown data set {name!r}; valid data sets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def is_available(name: str, data_dir: Path | None = None) -> bool:
    """Whether ``name`` loads without a download."""
    dataset = get_dataset(name)
    if not dataset.files:
        return True
    folder = Path(data_dir or default_data_dir()) / dataset.subdir
    return all(_find(folder, f) is not None for f in dataset.files)


def load_dataset(name: str, data_dir: str | Path | None = None, split_seed: int = 0,
                 download: bool = True) -> Splits:
    """Load ``name`` once; the search shares the result with every trial through Ray's object store."""
    return get_dataset(name).load(data_dir=Path(data_dir) if data_dir else None,
                                  split_seed=split_seed, download=download)
