"""Shared fixtures: one Ray instance per test session, offline data only."""
from __future__ import annotations

import os

import pytest

os.environ["VALLEY_OFFLINE"] = "1"  # tests never try to download


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, shared by every test that runs a search."""
    import ray

    from search.options import SearchOptions
    from search.ray_start import start_ray

    start_ray(SearchOptions(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.fixture
def write_space(tmp_path):
    """Write a YAML space into tmp_path and return its path."""
    def write(text: str, name: str = "space.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return path
    return write


@pytest.fixture
def events():
    """TensorBoard's own reader of one trial folder's event files (an EventAccumulator, loaded)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(trial):
        accumulator = EventAccumulator(str(trial), size_guidance={"scalars": 0})
        accumulator.Reload()
        return accumulator
    return read
