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
import importlib.util
import os
import pickle
import shutil
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
    split_rule: str = "seeded shuffle"  # how validation and test were carved (clocks: stratified by time)
    notes: tuple[str, ...] = ()  # what loading changed about the files (e.g. RGB read as grayscale)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> tuple[int, int, int]:
        return len(self.x_train), len(self.x_val), len(self.x_test)

    def resplit(self, split_seed: int) -> Splits:
        """A fresh validation set of the same size carved from train + val, by the same rule (clocks:
        stratified by time); the test set stays."""
        x, y = np.concatenate([self.x_train, self.x_val]), np.concatenate([self.y_train, self.y_val])
        if not self.split_rule.startswith("stratified"):
            return make_splits(self.name, x, y, self.x_test, self.y_test, len(self.x_val), self.n_classes, split_seed)
        key = y[:, 0] * 60 + y[:, 1] if self.split_rule == "stratified by minute" else y[:, 0]
        share = len(self.x_val) / len(x)
        train, val = _carve(key, (1 - share, share), split_seed)
        x_train = x[train]
        mean, std, fingerprint = _statistics(x_train, (x, y, train, val, self.x_test, self.y_test))
        return dataclasses.replace(self, x_train=x_train, y_train=y[train], x_val=x[val], y_val=y[val],
                                   mean=mean, std=std, fingerprint=fingerprint)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    shape: tuple[int, int, int]
    sizes: tuple[int, int, int]  # train / val / test
    load: Callable[..., Splits]
    files: tuple[str, ...] = ()  # what must be in the folder when it cannot be downloaded
    subdir: str = ""  # that folder, under the data directory
    task: str = "classification"  # what its labels are: a family's ``task.kind`` must match
    reads_dir: bool = False  # reads its files from --data-dir (those with ``files`` do as well)

    @property
    def reads_folder(self) -> bool:
        """Whether it reads files from a data folder (--data-dir, VALLEY_DATA or the default), not made here."""
        return bool(self.files) or self.reads_dir


def default_data_dir() -> Path:
    return Path(os.environ.get("VALLEY_DATA", Path.home() / ".cache" / "valley" / "data"))


def data_folder(data_dir: str | Path | None) -> Path:
    """The data folder ``--data-dir`` names (``~`` expanded), else VALLEY_DATA's or the default."""
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def make_splits(name: str, x_trainval: np.ndarray, y_trainval: np.ndarray, x_test: np.ndarray,
                y_test: np.ndarray, n_val: int, n_classes: int, split_seed: int = 0) -> Splits:
    """Carve ``n_val`` validation samples from the training set with a fixed seed."""
    if len(x_trainval) != len(y_trainval):  # shuffled together, labels beyond the images were dropped unsaid
        raise DataError(f"data set {name!r}, train split: {len(x_trainval):,} images but {len(y_trainval):,} labels; "
                        "the files are truncated or mixed: replace them with the originals")
    if len(x_trainval) <= n_val:  # else "train split: 0 images but 0 labels", after numpy's warning on the mean
        raise DataError(f"data set {name!r} has {len(x_trainval):,} training images and sets {n_val:,} of them "
                        f"aside for validation, so it needs more than {n_val:,}; its files are cut short or a "
                        "subset: replace them with the originals")
    order = np.random.default_rng(split_seed).permutation(len(x_trainval))
    val, train = order[:n_val], order[n_val:]
    x_train = x_trainval[train]
    statistics = _statistics(x_train, (x_train, y_trainval[train], x_trainval[val], y_trainval[val], x_test, y_test))
    return Splits(name, x_train, y_trainval[train], x_trainval[val], y_trainval[val], x_test, y_test,
                  n_classes, *statistics)


def _statistics(x_train: np.ndarray, fingerprinted: tuple[np.ndarray, ...]) -> tuple[float, float, str]:
    """The training pixels' mean and standard deviation in [0, 1] (over at most 10,000 images), and the
    blake2b of ``fingerprinted``: which data a result was made with."""
    sample = x_train[:10_000].astype(np.float32) / 255.0
    digest = hashlib.blake2b(digest_size=8)
    for array in fingerprinted:
        digest.update(np.ascontiguousarray(array).data)
    return float(sample.mean()), float(sample.std() or 1.0), digest.hexdigest()


def _digits(data_dir: Path | None = None, split_seed: int = 0, **_: object) -> Splits:
    # the file behind sklearn.datasets.load_digits (64 pixels in 0..16, then the label per row),
    # read directly: importing sklearn.datasets takes a second, the file 20 ms
    package = importlib.util.find_spec("sklearn")
    if package is None or not package.submodule_search_locations:
        raise DataError("data set 'digits' comes with scikit-learn; install it with `pip install scikit-learn`")
    table = np.loadtxt(Path(package.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz",
                       delimiter=",")
    x = (table[:, :64].reshape(-1, 1, 8, 8) * (255 / 16)).round().astype(np.uint8)  # (1797, 1, 8, 8)
    y = table[:, 64].astype(np.int64)
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


CLOCK_FILES = ("images.npy", "labels.npy")


def _clocks(size: int, per_minute: int, preset: str) -> Callable[..., Splits]:
    """Course clock files from ``data_dir`` when one is given (a folder without them is refused: training
    on synthetic clocks instead would answer another question), else synthetic clocks (cached)."""
    def load(data_dir: Path | None = None, split_seed: int = 0, **_: object) -> Splits:
        if data_dir is not None:
            images, labels, notes = read_clock_files(Path(data_dir))
            return clock_splits(f"clocks:{Path(data_dir).name}", images, labels, split_seed, notes=notes)
        from trainables import clockgen

        cache = (default_data_dir() / "synthetic-clocks"
                 / f"{size}px-{per_minute}pm-{preset}-seed0-v{clockgen.VERSION}")
        if not all((cache / f).exists() for f in CLOCK_FILES):
            clockgen.write(cache, per_minute=per_minute, size=size, seed=0, preset=preset, overwrite=True)  # ours
        images, labels, _ = read_clock_files(cache)
        return clock_splits(f"clocks-{size}px-{preset}", images, labels, split_seed)
    return load


MIN_CLOCKS = 50  # fewer cannot give a training, a validation and a test set worth the name
PER_STRATUM = 5  # images a minute (or an hour) needs so that every split gets one of it


def read_clock_files(folder: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The course format, checked: images.npy uint8 (N, S, S), labels.npy int (N, 2) [hour, minute].

    Any square size (the 150x150 and the 75x75 releases), labels in any order and any number of
    images a minute load as they are; RGB images (N, S, S, 3) are read as grayscale (the course's
    photographs are), which the returned notes say.
    """
    missing = [f for f in CLOCK_FILES if not (folder / f).exists()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; a clock folder holds images.npy "
                        "(uint8, N x 150 x 150 or N x 75 x 75) and labels.npy (int, N x 2: hour, minute); "
                        "`valley data clocks --out DIR` writes one, and without --data-dir the clocks are synthetic")
    try:
        images = np.load(folder / "images.npy", allow_pickle=False)
        labels = np.load(folder / "labels.npy", allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{folder}: images.npy and labels.npy must be plain numpy arrays ({err})") from None
    notes: tuple[str, ...] = ()
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.dtype == np.uint8:
        if images.shape[-1] == 3:
            notes = (f"{folder / 'images.npy'}: RGB images read as grayscale (luma 0.299 R + 0.587 G + 0.114 B)",)
            images = np.rint(images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
            images = np.clip(images, 0, 255).astype(np.uint8)
        else:
            images = images[..., 0]
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise DataError(f"{folder / 'images.npy'} must be uint8 of shape (N, S, S), or (N, S, S, 3) for RGB, got "
                        f"{images.dtype} {images.shape}; save the images as uint8 squares")
    if labels.ndim != 2 or labels.shape[1] != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{folder / 'labels.npy'} must be integers of shape (N, 2) [hour, minute], got "
                        f"{labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels; they must match one to one")
    if not len(labels):
        raise DataError(f"{folder}: images.npy holds no images; a clock folder needs at least {MIN_CLOCKS}")
    hours, minutes = labels[:, 0], labels[:, 1]
    if hours.min() < 0 or hours.max() > 11 or minutes.min() < 0 or minutes.max() > 59:
        raise DataError(f"{folder / 'labels.npy'}: hours must lie in 0..11 and minutes in 0..59, got hours "
                        f"{hours.min()}..{hours.max()}, minutes {minutes.min()}..{minutes.max()}")
    return images, labels.astype(np.int64), notes


def clock_splits(name: str, images: np.ndarray, labels: np.ndarray, split_seed: int = 0,
                 ratios: tuple[float, float, float] = (0.6, 0.2, 0.2), notes: tuple[str, ...] = ()) -> Splits:
    """Shuffled split, stratified by time as finely as the files allow.

    Each minute of the dial splits ``ratios`` on its own when every minute present has at least
    PER_STRATUM images (the course's 25 a minute); otherwise each hour does, when every hour has
    that many (one image a minute, a few photographs an hour); otherwise a seeded shuffle. The
    course files are sorted by time, so an unshuffled cut would put whole hours in the test set.
    Fewer than MIN_CLOCKS images are refused.
    """
    if len(labels) < MIN_CLOCKS:
        raise DataError(f"data set {name!r} has {len(labels)} clocks, too few to train and evaluate on; it needs at "
                        f"least {MIN_CLOCKS} (60% train, 20% validation, 20% test)")
    minutes = labels[:, 0] * 60 + labels[:, 1]
    for rule, key in (("stratified by minute", minutes), ("stratified by hour", labels[:, 0]),
                      ("seeded shuffle", np.zeros(len(labels), np.int64))):
        present = np.bincount(key)
        if present[present > 0].min() >= PER_STRATUM:
            break
    train, val, test = _carve(key, ratios, split_seed)
    x = images[:, None]  # (N, 1, S, S)
    x_train = x[train]
    return Splits(name, x_train, labels[train], x[val], labels[val], x[test], labels[test], 720,
                  *_statistics(x_train, (images, labels, train, val, test)), rule, notes)


def _carve(key: np.ndarray, ratios: tuple[float, ...], split_seed: int) -> list[np.ndarray]:
    """Indices split by ``ratios`` within each stratum of ``key``, shuffled with ``split_seed``. A stratum
    whose share is not a whole number of images rounds up or down at random, in proportion, so that
    the sizes are right on average (always rounding the same way made the test set of 7 clocks a
    minute at 0.6:0.2:0.2 a seventh, not a fifth)."""
    rng = np.random.default_rng(split_seed)
    order = rng.permutation(len(key))
    order = order[np.argsort(key[order], kind="stable")]  # grouped by stratum, shuffled within
    counts = np.bincount(key)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offset = np.random.default_rng([split_seed, 1]).random(len(counts))  # its own stream: whole shares split
    share = (np.arange(len(order)) - starts[key[order]] + offset[key[order]]) / counts[key[order]]  # as before
    bounds = np.cumsum([0.0, *ratios[:-1]])
    return [rng.permutation(order[(share >= low) & (share < high)])
            for low, high in zip(bounds, [*bounds[1:], np.inf])]


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
    made = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)  # the first it makes
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as err:  # noqa: BLE001 - any download failure means the same thing to the user
        if made is not None and made.is_dir() and not any(p.is_file() for p in made.rglob("*")):
            shutil.rmtree(made, ignore_errors=True)  # a failed download leaves no empty folders behind
        reason = " ".join(str(err).split())  # torchvision's says each mirror it tried on a line of its own
        raise DataError(f"data set {name!r} is not in {folder} and could not be downloaded "
                        f"({type(err).__name__}: {reason[:200]}); {missing}") from None
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
    "clocks": Dataset("clocks", "analog clocks, 150x150: course files from --data-dir, else synthetic "
                      "(offline)", (1, 150, 150), (10800, 3600, 3600), _clocks(150, 25, "default"), task="clock",
                      reads_dir=True),
    "clocks-hard": Dataset("clocks-hard", "synthetic clocks, 150x150, hard preset (glare, perspective, "
                           "clutter)", (1, 150, 150), (10800, 3600, 3600), _clocks(150, 25, "hard"), task="clock"),
    "clocks-small": Dataset("clocks-small", "synthetic clocks, 64x64, 5 per minute, for CPUs (offline)",
                            (1, 64, 64), (2160, 720, 720), _clocks(64, 5, "default"), task="clock"),
    "clocks-tiny": Dataset("clocks-tiny", "synthetic clocks, 32x32, 5 per minute, for tests (offline)",
                           (1, 32, 32), (2160, 720, 720), _clocks(32, 5, "default"), task="clock"),
}


def unknown_dataset(name: str) -> str:
    """The one line that refuses a data set name: the names there are, and the nearest if one is near."""
    import difflib

    names = {n.replace("-", "_"): n for n in DATASETS}  # fashion-mnist is as near fashion_mnist as can be
    near = difflib.get_close_matches(name.lower().replace("-", "_"), list(names), n=1)
    hint = f" (did you mean {names[near[0]]!r}?)" if near else ""
    return f"unknown data set {name!r}{hint}; valid data sets: {', '.join(sorted(DATASETS))}"


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise KeyError(unknown_dataset(name))
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
