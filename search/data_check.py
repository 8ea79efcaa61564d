"""Load a search's data set once, and refuse broken files with one line instead of a traceback."""
from __future__ import annotations

from typing import Any

from search.options import SearchError


def load_data(dataset: str, data_dir: str | None) -> Any:
    """Load and check a data set; a broken file is a one-line :class:`SearchError`, not a traceback."""
    from trainables.data import DATASETS, DataError, data_folder, load_dataset

    registered = DATASETS[dataset]
    folder = data_folder(data_dir)
    if data_dir and not registered.reads_folder:
        readers = ", ".join(name for name, d in DATASETS.items() if d.reads_folder)
        raise SearchError(f"data set {dataset!r} reads no --data-dir (it is made here; only {readers} read their "
                          f"files from it): leave --data-dir out"
                          + (", or give --dataset clocks to train on the clocks in it" if registered.task == "clock"
                             else ""))
    if data_dir and not registered.files and not folder.is_dir():  # these never download into it
        raise SearchError(f"--data-dir {folder} is not a folder; give the folder that holds the data set's "
                          f"files, or leave --data-dir out (see `valley datasets`)")
    try:
        data = load_dataset(dataset, data_dir=data_dir)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        where = folder / registered.subdir if registered.subdir else folder
        raise SearchError(f"data set {dataset!r} in {where} cannot be read ({type(err).__name__}: "
                          f"{str(err)[:150]}); replace its files with the originals, or delete them and run "
                          "again online so they are downloaded") from None
    check_splits(data, registered.shape if registered.files else None)  # files of a fixed format
    return data


def check_splits(data: Any, shape: tuple[int, ...] | None = None) -> None:
    """Images uint8 (N, C, H, W) of the registered shape, labels integers in [0, n_classes)."""
    import numpy as np

    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        where = f"data set {data.name!r}, {split} split"
        if x.ndim != 4 or x.dtype != np.uint8:
            raise SearchError(f"{where}: images must be uint8 of shape (N, C, H, W), got {x.dtype} {x.shape}; "
                              "the files are not in the expected format")
        if shape and tuple(x.shape[1:]) != tuple(shape):
            raise SearchError(f"{where}: images must be {'x'.join(map(str, shape))}, got "
                              f"{'x'.join(map(str, x.shape[1:]))}; the files belong to another data set")
        if len(x) == 0 or len(y) != len(x):
            raise SearchError(f"{where}: {len(x)} images but {len(y)} labels; the files are truncated or mixed")
        if not np.issubdtype(y.dtype, np.integer):
            raise SearchError(f"{where}: labels must be integers, got {y.dtype}")
        if y.ndim == 1 and len(y) and (y.min() < 0 or y.max() >= data.n_classes):
            raise SearchError(f"{where}: labels must lie in [0, {data.n_classes}), got {y.min()}..{y.max()}; "
                              "the label files do not match the images")


