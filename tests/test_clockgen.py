from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables import clockgen

# every nuisance off: one upright, centred face, so where the hands point can be checked
PLAIN = dict(faces=1, rotation=0.0, shear=0.0, stretch=0.0, translate=0.0, perspective=0.0, glare_prob=0.0,
             blur=0.0, noise=0.0, background=0.0, clutter=0.0, second_hand=0.0, shadow=0.0, lighting=0.0,
             zoom=(0.9, 0.9), contrast=(1.0, 1.0))


@pytest.fixture(scope="module")
def plain() -> np.ndarray:
    return clockgen.generate(per_minute=1, size=64, seed=0, preset="easy", **PLAIN)[0]


def test_format_matches_the_course_data() -> None:
    images, labels = clockgen.generate(per_minute=2, size=16, seed=0)
    assert images.dtype == np.uint8 and images.shape == (1440, 16, 16)
    assert labels.dtype == np.int64 and labels.shape == (1440, 2)
    t = labels[:, 0] * 60 + labels[:, 1]
    assert (np.diff(t) >= 0).all()
    np.testing.assert_array_equal(np.bincount(t, minlength=720), np.full(720, 2))
    assert labels[:, 0].min() == 0 and labels[:, 0].max() == 11 and labels[:, 1].max() == 59
    assert 30 < images.mean() < 225 and images.std() > 20


def test_speed_and_determinism() -> None:
    start = time.process_time()  # CPU seconds of all threads, so a busy machine does not fail it
    a, la = clockgen.generate(per_minute=1, size=150, seed=3)
    assert time.process_time() - start < 5.0, "720 images of 150x150 must take under 5 CPU seconds"
    b, lb = clockgen.generate(per_minute=1, size=150, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    c, _ = clockgen.generate(per_minute=1, size=150, seed=4)
    assert (a != c).mean() > 0.5


@pytest.mark.parametrize("preset", list(clockgen.PRESETS))
def test_presets_render(preset: str) -> None:
    images, _ = clockgen.generate(per_minute=1, size=24, seed=0, preset=preset)
    assert images.shape == (720, 24, 24) and images.std() > 10


def test_hands_point_clockwise_from_twelve(plain: np.ndarray) -> None:
    c = 32  # the face's centre; both hands reach beyond 12 px, the numerals sit beyond 16 px

    def darker(t: int) -> dict[str, float]:
        """Mean grey of four short arms from the centre."""
        i = plain[t].astype(float)
        return {"right": i[c - 2:c + 2, c + 4:c + 12].mean(), "left": i[c - 2:c + 2, c - 12:c - 4].mean(),
                "up": i[c - 12:c - 4, c - 2:c + 2].mean(), "down": i[c + 4:c + 12, c - 2:c + 2].mean()}

    three, nine, quarter, half = darker(3 * 60), darker(9 * 60), darker(15), darker(6 * 60 + 30)
    assert three["right"] < three["left"] - 30 and three["up"] < three["down"] - 30  # 3:00
    assert nine["left"] < nine["right"] - 30 and nine["up"] < nine["down"] - 30  # 9:00
    assert quarter["right"] < quarter["left"] - 30  # 0:15, the minute hand points at 3
    assert half["down"] < half["up"] - 30  # 6:30, both hands point down


def test_hour_hand_moves_with_the_minutes(plain: np.ndarray) -> None:
    # at 2:00, 2:30 and 2:59 the hour hand sweeps from 2 towards 3 through the box right of
    # the centre, while the minute hand (at 12, 6 and nearly 12) stays out of it
    c = 32
    box = (slice(c - 10, c + 2), slice(c + 2, c + 14))
    dark = [255 - plain[t][box].astype(float) for t in (120, 150, 179)]
    rows = np.arange(box[0].start, box[0].stop)[:, None]
    heights = [float((d * rows).sum() / d.sum()) for d in dark]
    assert heights[0] < heights[1] < heights[2]  # the dark mass goes down towards 3 o'clock


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown preset 'medium'; valid: easy, default, hard"):
        clockgen.generate(per_minute=1, size=16, preset="medium")
    with pytest.raises(ValueError, match="unknown Difficulty override 'glint'; valid: faces, rotation"):
        clockgen.generate(per_minute=1, size=16, glint=0.5)
    with pytest.raises(ValueError, match="zoom needs 0 < low <= high"):
        clockgen.generate(per_minute=1, size=16, zoom=(0.9, 0.5))
    with pytest.raises(ValueError, match=r"glare_prob must lie in \[0, 1\]"):
        clockgen.Difficulty(glare_prob=2.0)
    with pytest.raises(ValueError, match="per_minute must be an int >= 1"):
        clockgen.generate(per_minute=0)


def test_write_and_contact_sheet(tmp_path: Path) -> None:
    out = clockgen.write(tmp_path / "clocks", per_minute=1, size=24, seed=1, preset="easy")
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    assert images.shape == (720, 24, 24) and labels.shape == (720, 2) and labels.dtype == np.int64
    sheet = clockgen.contact_sheet(images, labels, tmp_path / "sheet.png", n=12, cols=4)
    with Image.open(sheet) as im:
        assert im.mode == "L" and im.size[0] == 4 * (24 + 4) + 4
