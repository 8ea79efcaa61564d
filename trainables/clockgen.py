"""Synthetic analog kitchen clocks: the offline default data of the tell-the-time task.

``generate`` returns arrays in the course format: grayscale ``images`` uint8 (N, size, size)
and ``labels`` int64 (N, 2) holding [hour 0-11, minute 0-59], sorted by time with
``per_minute`` images per minute (N = 720 * per_minute). The hour hand points at
(h + m/60) * 30 degrees, the minute hand at m * 6 degrees, clockwise from 12; an optional
second hand points anywhere. ``Difficulty`` holds the ranges of every nuisance and
``PRESETS`` three settings of them; the same seed gives the same arrays.

How it is fast: a few clock faces (rim, bevel, 60 ticks, numerals, brand) are drawn once
with PIL at 4x and box-filtered into textures in clock units (face radius 1). Each image is
one camera pose, a homography (rotation, shear, stretch, zoom, shift, keystone) from output
pixels to clock coordinates. Everything affine in those coordinates (texture coordinates,
the distance along and across each hand, ...) comes out of one matrix product per chunk;
one batched ``grid_sample`` reads the faces, and the hands are drawn analytically as
anti-aliased tapered segments (signed distances), as sharp as the camera allows. Wall
texture, clutter and glare come from small banks drawn once; gradients, lighting, blur,
noise and quantisation are batched tensor ops, over chunks of a few images that stay in cache.
"""
from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

MINUTES = 720  # minutes on a 12-hour dial
VERSION = 1  # bump when the images for a seed change: it keys the cache of generated data sets
_EXT = 1.25  # half-width of a face texture in clock units (face radius 1, rim up to 1.14)
_SS = 4  # supersampling of the PIL drawings
_CHUNK = 4  # images rendered together; few enough that their planes stay in cache
_BANK = 32  # entries in the clutter, wall and glare banks
_NOISE = 1 << 21  # length of the noise bank


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """Ranges of the nuisance factors; every random draw is uniform within its range."""

    faces: int = 12  # distinct clock faces ("base photographs") per data set
    rotation: float = 20.0  # max |in-plane rotation|, degrees
    shear: float = 0.08  # max |shear| (x += shear * y)
    stretch: float = 0.08  # max |log aspect ratio|
    zoom: tuple[float, float] = (0.72, 0.95)  # outer rim radius / image half-width
    translate: float = 0.05  # max |shift| of the centre, fraction of the image half-width
    perspective: float = 0.05  # max |keystone coefficient| per axis (< 0.45)
    glare_prob: float = 0.4  # probability of a highlight on the glass
    glare: float = 0.35  # max peak brightness added by the highlight (0..1)
    blur: float = 0.7  # max Gaussian blur sigma, pixels at 150 px (scaled with size)
    noise: float = 0.025  # max per-pixel Gaussian noise sigma (intensity 0..1)
    background: float = 0.2  # amplitude of background gradient and texture (0..1)
    clutter: float = 0.2  # probability of clutter (lines, frames, blobs) behind the clock
    second_hand: float = 0.4  # probability that a second hand (random angle) is drawn
    shadow: float = 0.3  # max darkness of the clock's drop shadow on the wall (0..1)
    lighting: float = 0.15  # max illumination change across the image (0..1)
    contrast: tuple[float, float] = (0.8, 1.1)  # multiplies intensities about mid-grey
    dark_face: float = 0.1  # probability that a face is dark with light marks and hands
    roman: float = 0.2  # probability that a face has Roman numerals
    sparse_numerals: float = 0.1  # probability that a face shows only 12, 3, 6 and 9
    minute_jitter: float = 0.0  # minute hand runs U(0, jitter) minutes past the label

    def __post_init__(self) -> None:
        for name in ("zoom", "contrast"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ValueError(f"Difficulty.{name} must be a pair (low, high), got {name}={value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
            if not 0 < value[0] <= value[1]:
                raise ValueError(f"Difficulty.{name} needs 0 < low <= high, got {name}={value!r}; "
                                 f"swap or raise the bounds")
        if not (isinstance(self.faces, int) and self.faces >= 1):
            raise ValueError(f"Difficulty.faces must be an int >= 1, got faces={self.faces!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("faces", "zoom", "contrast"):
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Difficulty.{f.name} must be a number >= 0, got {f.name}={value!r}")
        for name in ("glare_prob", "glare", "background", "clutter", "second_hand", "shadow",
                     "lighting", "dark_face", "roman", "sparse_numerals", "minute_jitter"):
            if getattr(self, name) > 1:
                raise ValueError(f"Difficulty.{name} must lie in [0, 1], got {name}={getattr(self, name)!r}")
        if self.perspective >= 0.45:
            raise ValueError(f"Difficulty.perspective must be < 0.45 (the image would fold), "
                             f"got perspective={self.perspective!r}")
        if self.roman + self.sparse_numerals > 1:
            raise ValueError(f"Difficulty.roman + sparse_numerals must be <= 1, got "
                             f"roman={self.roman!r}, sparse_numerals={self.sparse_numerals!r}")


PRESETS: dict[str, Difficulty] = {
    "easy": Difficulty(faces=4, rotation=5.0, shear=0.02, stretch=0.02, zoom=(0.85, 0.95),
                       translate=0.02, perspective=0.0, glare_prob=0.0, glare=0.0, blur=0.3,
                       noise=0.01, background=0.1, clutter=0.0, second_hand=0.0, shadow=0.15,
                       lighting=0.05, contrast=(0.95, 1.05), dark_face=0.0, roman=0.0,
                       sparse_numerals=0.0),
    "default": Difficulty(),
    "hard": Difficulty(faces=24, rotation=40.0, shear=0.15, stretch=0.15, zoom=(0.55, 1.05),
                       translate=0.15, perspective=0.25, glare_prob=0.8, glare=0.7, blur=1.8,
                       noise=0.06, background=0.35, clutter=0.8, second_hand=0.7, shadow=0.5,
                       lighting=0.35, contrast=(0.55, 1.15), dark_face=0.2, roman=0.25,
                       sparse_numerals=0.2, minute_jitter=1.0),
}


def generate(per_minute: int = 25, size: int = 150, seed: int = 0, preset: str = "default",
             **overrides: Any) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (720 * per_minute, size, size) and labels int64 (N, 2) [hour, minute], sorted by time.

    ``overrides`` replace fields of the preset's ``Difficulty`` (e.g. ``noise=0.0``). Chunks
    render on ``torch.get_num_threads()`` Python threads with torch set to one thread meanwhile
    (restored after), which keeps a busy machine from stalling OpenMP teams.
    """
    diff = _difficulty(preset, overrides)
    _check_counts(per_minute, size)
    face_seq, image_seq = np.random.SeedSequence(seed).spawn(2)
    minutes = np.repeat(np.arange(MINUTES), per_minute)
    labels = np.stack([minutes // 60, minutes % 60], axis=1).astype(np.int64)

    face_rng = np.random.default_rng(face_seq)
    faces = _sample_faces(face_rng, diff)
    banks = _make_banks(face_rng, faces, diff, size)
    params = _sample_images(np.random.default_rng(image_seq), minutes, faces, diff, size)
    n = len(minutes)
    images = np.empty((n, size, size), np.uint8)

    def render(start: int) -> None:
        sl = slice(start, min(start + _CHUNK, n))
        images[sl] = _render({k: torch.from_numpy(v[sl]) for k, v in params.items()}, banks, size).numpy()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # chunks in parallel, each op on one core: OpenMP teams stall on busy machines
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(render, range(0, n, _CHUNK)))
    finally:
        torch.set_num_threads(threads)
    return images, labels


def write(out_dir: str | Path, per_minute: int = 25, size: int = 150, seed: int = 0,
          preset: str = "default", overwrite: bool = False) -> Path:
    """Generate and save ``images.npy`` and ``labels.npy`` into ``out_dir`` (created); return it. A folder
    that holds either already (a course's real clocks, say) is refused unless ``overwrite``."""
    out = Path(out_dir)
    _difficulty(preset, {})
    _check_counts(per_minute, size)  # before the folder is made
    if out.exists() and not out.is_dir():  # mkdir said only "[Errno 17] File exists"
        raise FileExistsError(f"{out} is a file; --out is the folder to write images.npy and labels.npy into")
    held = [name for name in ("images.npy", "labels.npy") if (out / name).exists()]
    if held and not overwrite:
        raise FileExistsError(f"{out} already holds {' and '.join(held)}; choose another folder, or pass --overwrite "
                              "to replace them with synthetic clocks")
    out.mkdir(parents=True, exist_ok=True)
    images, labels = generate(per_minute=per_minute, size=size, seed=seed, preset=preset)
    np.save(out / "images.npy", images)
    np.save(out / "labels.npy", labels)
    return out


def _check_counts(per_minute: int, size: int) -> None:
    if not (isinstance(per_minute, int) and per_minute >= 1):
        raise ValueError(f"per_minute must be an int >= 1, got per_minute={per_minute!r}")
    if not (isinstance(size, int) and size >= 16):
        raise ValueError(f"size must be an int >= 16 pixels, got size={size!r}")
    need, free = MINUTES * per_minute * size * size, available_memory()
    if free is not None and need > free:
        raise ValueError(f"{MINUTES * per_minute:,} clocks of {size}x{size} need {need / 2**30:,.1f} GiB of memory, "
                         f"more than the {free / 2**30:,.1f} GiB available; lower size or per_minute")


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new allocation can have (Linux's MemAvailable); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def contact_sheet(images: np.ndarray, labels: np.ndarray, path: str | Path, n: int = 24,
                  cols: int = 6) -> Path:
    """Write a PNG grid of ``n`` samples (a fixed random pick), each captioned "H:MM" (hour 0 shown as 12)."""
    if images.ndim != 3 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need images (N, H, W) and labels (N, 2) with the same N > 0, "
                         f"got images {images.shape} and labels {labels.shape}")
    pick = np.sort(np.random.default_rng(0).choice(len(images), size=min(n, len(images)), replace=False))
    h, w = images.shape[1:]
    cap = max(12, h // 8)
    rows = (len(pick) + cols - 1) // cols
    sheet = Image.new("L", (cols * (w + 4) + 4, rows * (h + cap + 4) + 4), 255)
    draw = ImageDraw.Draw(sheet)
    font = _font(cap - 2)
    for j, i in enumerate(pick):
        x, y = 4 + (j % cols) * (w + 4), 4 + (j // cols) * (h + cap + 4)
        sheet.paste(Image.fromarray(images[i]), (x, y))
        hour, minute = int(labels[i][0]), int(labels[i][1])
        draw.text((x + w / 2, y + h + cap / 2), f"{hour or 12}:{minute:02d}", fill=0, font=font, anchor="mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


def _difficulty(preset: str, overrides: dict[str, Any]) -> Difficulty:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    valid = [f.name for f in dataclasses.fields(Difficulty)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown Difficulty override {unknown[0]!r}; valid: {', '.join(valid)}")
    return dataclasses.replace(PRESETS[preset], **overrides)


class _Banks(NamedTuple):
    """Things drawn once per data set and picked per image."""

    faces: torch.Tensor  # (F, 1, R, R) face luminance premultiplied by alpha, +-_EXT clock units
    clutter: torch.Tensor  # (K, 2, S*S) luminance and alpha of things on the wall
    walls: torch.Tensor  # (K, S*S) smooth wall texture, unit spread
    glares: torch.Tensor  # (K, S*S) highlight shapes, peak 1
    noise: torch.Tensor  # (L,) standard normal; each image reads S*S values from a random offset
    xyr: torch.Tensor  # (3, S*S) x and y of pixel centres in [-1, 1], and x**2 + y**2


def _make_banks(rng: np.random.Generator, faces: dict[str, np.ndarray], d: Difficulty, size: int) -> _Banks:
    res = int(math.ceil(size * 1.05 * _EXT))  # texels span the face at least as finely as pixels
    face_tex = np.stack([_draw_face(res, {k: v[i] for k, v in faces.items()}) for i in range(d.faces)])
    clutter = np.stack([_draw_clutter(rng, size) for _ in range(_BANK)])
    coords = torch.arange(size, dtype=torch.float32) * (2 / size) + (1 / size - 1)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    blobs = torch.from_numpy(rng.standard_normal((_BANK, 1, 5, 5), dtype=np.float32))
    walls = F.interpolate(blobs, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    walls = walls / walls.std(dim=(1, 2), keepdim=True)
    g = {k: torch.from_numpy(v.astype(np.float32)).view(-1, 1, 1) for k, v in {
        "x": rng.uniform(-0.5, 0.5, _BANK), "y": rng.uniform(-0.5, 0.5, _BANK),
        "angle": rng.uniform(0, np.pi, _BANK), "a": rng.uniform(0.15, 0.5, _BANK),
        "ratio": rng.uniform(0.15, 0.6, _BANK), "sharp": rng.uniform(2, 10, _BANK)}.items()}
    dx, dy = gx - g["x"], gy - g["y"]
    u = (dx * g["angle"].cos() + dy * g["angle"].sin()) / g["a"]
    v = (dy * g["angle"].cos() - dx * g["angle"].sin()) / (g["a"] * g["ratio"])
    glares = torch.sigmoid((1 - u * u - v * v) * g["sharp"])  # a soft blob (sharp 2) to a crisp window (10)
    glares = glares / glares.amax(dim=(1, 2), keepdim=True)
    glares[glares < 1e-6] = 0  # no denormals: they are slow to multiply
    noise = rng.standard_normal(_NOISE + _CHUNK * size * size, dtype=np.float32)
    x, y = gx.reshape(-1), gy.reshape(-1)
    return _Banks(torch.from_numpy(face_tex), torch.from_numpy(clutter).flatten(2), walls.flatten(1),
                  glares.flatten(1), torch.from_numpy(noise), torch.stack([x, y, x * x + y * y]))


def _font(px: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font, the same on every machine (Pillow >= 10.1 with FreeType)."""
    return ImageFont.load_default(size=max(1, int(px)))


def _sample_faces(rng: np.random.Generator, d: Difficulty) -> dict[str, np.ndarray]:
    """Per face: drawing style and hand geometry (clock units, face radius 1)."""
    n = d.faces
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    dark = rng.random(n) < d.dark_face
    minute_w = u(0.035, 0.055)
    numerals = rng.choice(3, n, p=[1 - d.roman - d.sparse_numerals, d.roman, d.sparse_numerals])
    return {
        "dark": dark,
        "rim_w": u(0.04, 0.14),
        "rim_level": rng.choice([0.12, 0.45, 0.85], n) + u(-0.08, 0.08),
        "face_level": np.where(dark, u(0.08, 0.22), u(0.8, 0.97)),
        "mark_level": np.where(dark, u(0.8, 0.95), u(0.02, 0.28)),
        "hand_level": np.where(dark, u(0.85, 1.0), u(0.0, 0.15)),
        "second_level": u(0.3, 0.6),
        "inner_ring": rng.random(n) < 0.5,
        "dot_ticks": rng.random(n) < 0.25,
        "tick_out": u(0.94, 0.97),
        "minute_tick": u(0.04, 0.07),
        "minute_tick_w": u(0.008, 0.016),
        "hour_tick": u(0.08, 0.15),
        "hour_tick_w": u(0.025, 0.05),
        "numerals": numerals,  # 0 arabic, 1 roman, 2 only 12 3 6 9
        "font_h": u(0.13, 0.2),
        "bold": rng.random(n) < 0.5,
        "brand": rng.integers(0, 4, n),  # 0 none, else one of three names
        "hour_len": u(0.45, 0.58),
        "hour_w": minute_w * u(1.6, 2.2),
        "minute_len": u(0.74, 0.88),
        "minute_w": minute_w,
        "taper": u(0.25, 0.7),  # tip width / base width
        "tail": u(0.06, 0.18),
        "cap": u(0.04, 0.065),
        "second_len": u(0.8, 0.92),
        "second_w": u(0.012, 0.02),
    }


def _draw_face(res: int, f: dict[str, Any]) -> np.ndarray:
    """(1, res, res) float32: face luminance premultiplied by alpha, spanning +-_EXT clock units."""
    s = res * _SS
    px = s / (2 * _EXT)  # pixels per clock unit
    c = s / 2
    lum, alpha = Image.new("L", (s, s), 0), Image.new("L", (s, s), 0)
    dl, da = ImageDraw.Draw(lum), ImageDraw.Draw(alpha)
    g = lambda level: int(round(255 * float(np.clip(level, 0, 1))))  # noqa: E731

    def disk(r: float, level: float) -> None:
        dl.ellipse([c - r * px, c - r * px, c + r * px, c + r * px], fill=g(level))

    def polar(r: float, theta: float) -> tuple[float, float]:
        return c + r * px * math.sin(theta), c - r * px * math.cos(theta)

    outer = 1 + f["rim_w"]
    da.ellipse([c - outer * px, c - outer * px, c + outer * px, c + outer * px], fill=255)
    steps = 8  # bevelled rim: dark outer edge, light inner edge
    for k in range(steps):
        r = outer - f["rim_w"] * k / steps
        disk(r, f["rim_level"] * (0.6 + 0.6 * k / steps))
    disk(1.0, f["face_level"])
    ink = g(f["mark_level"])
    if f["inner_ring"]:
        r = 0.985
        dl.ellipse([c - r * px, c - r * px, c + r * px, c + r * px], outline=ink, width=max(1, int(0.012 * px)))
    for k in range(60):
        theta = k * math.pi / 30
        out = f["tick_out"]
        if k % 5 == 0:
            dl.line([polar(out, theta), polar(out - f["hour_tick"], theta)], fill=ink,
                    width=max(1, int(f["hour_tick_w"] * px)))
        elif f["dot_ticks"]:
            r, rad = out - f["minute_tick"] / 2, f["minute_tick_w"] * 0.9
            x, y = polar(r, theta)
            dl.ellipse([x - rad * px, y - rad * px, x + rad * px, y + rad * px], fill=ink)
        else:
            dl.line([polar(out, theta), polar(out - f["minute_tick"], theta)], fill=ink,
                    width=max(1, int(f["minute_tick_w"] * px)))
    arabic = [str(h or 12) for h in range(12)]
    roman = ["XII", "I", "II", "III", "IIII", "V", "VI", "VII", "VIII", "IX", "X", "XI"]
    text = roman if f["numerals"] == 1 else arabic
    shown = [0, 3, 6, 9] if f["numerals"] == 2 else list(range(12))
    stroke = max(1, int(0.01 * px)) if f["bold"] else 0
    r_limit = f["tick_out"] - f["hour_tick"] - 0.03  # numerals stay inside the hour ticks
    font_h = f["font_h"] * (0.8 if f["numerals"] == 1 else 1.0)
    for _ in range(12):  # shrink the font until neighbouring numerals keep apart
        font = _font(font_h * px / 0.72)  # cap height is about 0.72 em
        boxes = []  # centre x, y, half-width, half-height in pixels, and the glyph offset
        for h in shown:
            left, top, right, bottom = dl.textbbox((0, 0), text[h], font=font, anchor="mm", stroke_width=stroke)
            hw, hh = (right - left) / 2 + 0.01 * px, (bottom - top) / 2 + 0.01 * px
            theta = h * math.pi / 6
            x, y = polar(r_limit - (hw * abs(math.sin(theta)) + hh * abs(math.cos(theta))) / px, theta)
            boxes.append((x, y, hw, hh, (left + right) / 2, (top + bottom) / 2))
        clash = any(abs(p[0] - q[0]) < p[2] + q[2] and abs(p[1] - q[1]) < p[3] + q[3]
                    for p, q in zip(boxes, boxes[1:] + boxes[:1]))
        if not clash:
            break
        font_h *= 0.9
    for h, (x, y, _, _, ox, oy) in zip(shown, boxes):
        dl.text((x - ox, y - oy), text[h], fill=ink, font=font, anchor="mm", stroke_width=stroke, stroke_fill=ink)
    if f["brand"]:
        name = ("QUARTZ", "KITCHEN", "VALLEY")[int(f["brand"]) - 1]
        dl.text((c, c + 0.33 * px), name, fill=ink, font=_font(0.07 * px / 0.72), anchor="mm")
    small = (res, res)
    lum_a = np.asarray(lum.resize(small, Image.BOX), np.float32) / 255
    alpha_a = np.asarray(alpha.resize(small, Image.BOX), np.float32) / 255
    return (lum_a * alpha_a)[None]


def _draw_clutter(rng: np.random.Generator, size: int) -> np.ndarray:
    """(2, size, size) float32: luminance and alpha of things on the wall (lines, frames, blobs, tiles)."""
    s = size * 2
    lum, alpha = Image.new("L", (s, s), 0), Image.new("L", (s, s), 0)
    for _ in range(int(rng.integers(3, 9))):
        level = int(rng.integers(0, 256))
        kind = int(rng.integers(0, 5))
        pts = [tuple(p) for p in rng.uniform(-0.2, 1.2, (4, 2)) * s]
        xs, ys = sorted(p[0] for p in pts[:2]), sorted(p[1] for p in pts[:2])
        box = [xs[0], ys[0], xs[1], ys[1]]
        width = int(rng.uniform(0.01, 0.06) * s) + 1
        step = int(rng.uniform(0.15, 0.35) * s)
        for d, fill in ((ImageDraw.Draw(lum), level), (ImageDraw.Draw(alpha), 255)):
            if kind == 0:
                d.line(pts[:2], fill=fill, width=width)
            elif kind == 1:
                d.rectangle(box, outline=fill, width=width)
            elif kind == 2:
                d.ellipse(box, fill=fill)
            elif kind == 3:
                d.polygon(pts, fill=fill)
            else:  # tiled wall
                for x in range(step // 2, s, step):
                    d.line([(x, 0), (x, s)], fill=fill, width=max(1, width // 3))
                    d.line([(0, x), (s, x)], fill=fill, width=max(1, width // 3))
    return np.stack([np.asarray(im.resize((size, size), Image.BOX), np.float32) / 255 for im in (lum, alpha)])


def _sample_images(rng: np.random.Generator, minutes: np.ndarray, faces: dict[str, np.ndarray],
                   d: Difficulty, size: int) -> dict[str, np.ndarray]:
    """Per image: camera pose, hands, wall, lighting, glare, blur and noise, as render-ready numbers."""
    n = len(minutes)
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    face = rng.integers(0, d.faces, n)
    fv = {k: v[face] for k, v in faces.items()}
    p: dict[str, np.ndarray] = {"face": face}

    # camera: clock units -> output coords [-1, 1] is keystone(A @ clock + shift); we need the inverse
    rot = np.deg2rad(u(-d.rotation, d.rotation))
    shear, stretch = u(-d.shear, d.shear), np.exp(u(-d.stretch, d.stretch))
    scale = u(*d.zoom) / (1 + fv["rim_w"])
    sx, sy = scale * np.sqrt(stretch), scale / np.sqrt(stretch)
    cr, sr = np.cos(rot), np.sin(rot)
    a = np.stack([[cr * sx, (cr * shear - sr) * sy], [sr * sx, (sr * shear + cr) * sy]])  # (2, 2, n)
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    inv = np.stack([[a[1, 1], -a[0, 1]], [-a[1, 0], a[0, 0]]]) / det
    tx, ty = u(-d.translate, d.translate), u(-d.translate, d.translate)
    k0, k1 = u(-d.perspective, d.perspective), u(-d.perspective, d.perspective)
    # pixels from the clock's centre as (a * x + b * y + c) / (1 - k0 * x - k1 * y) of the output coords
    ip = size / 2 * np.sqrt(np.abs(det))  # pixels per clock unit
    ax, bx, ay, by = ip * inv[0, 0], ip * inv[0, 1], ip * inv[1, 0], ip * inv[1, 1]
    cx, cy = -(ax * tx + bx * ty), -(ay * tx + by * ty)
    p.update(ax=ax - cx * k0, bx=bx - cx * k1, cx=cx, ay=ay - cy * k0, by=by - cy * k1, cy=cy, k0=k0, k1=k1)
    p["keystone"] = (k0 != 0) | (k1 != 0)
    p["tex_scale"] = 1 / (ip * _EXT)  # texture units (+-1 spans +-_EXT clock units) per pixel

    # hands: angle clockwise from 12 (y points down); the hour hand moves on with the minutes
    minute = minutes % 60 + u(0, d.minute_jitter) if d.minute_jitter else (minutes % 60).astype(float)
    angles = ((minutes // 60 + minute / 60) * (2 * np.pi / 12), minute * (2 * np.pi / 60), u(0, 2 * np.pi))
    second_on = rng.random(n) < d.second_hand
    for h, angle, length, width, taper, tail, level in (
        ("h", angles[0], fv["hour_len"], fv["hour_w"], fv["taper"], fv["tail"], fv["hand_level"]),
        ("m", angles[1], fv["minute_len"], fv["minute_w"], fv["taper"], fv["tail"], fv["hand_level"]),
        ("s", angles[2], fv["second_len"], fv["second_w"], np.ones(n), 0.25 * fv["second_len"], fv["second_level"]),
    ):  # pixels; the half-pixel of anti-aliasing is folded into the half-width and half-length
        mid = (length - tail) / 2 * ip  # the segment's centre, along the hand
        if h == "s":
            mid = np.where(second_on, mid, 1e6)  # far away: not drawn
        p[h + "_sin"], p[h + "_cos"], p[h + "_mid"] = np.sin(angle), np.cos(angle), mid
        p[h + "_invlen"] = 1 / (length * ip)
        p[h + "_frac0"] = mid * p[h + "_invlen"]
        p[h + "_hw0"], p[h + "_dhw"] = width / 2 * ip + 0.5, width / 2 * (taper - 1) * ip
        p[h + "_half"], p[h + "_level"] = (length + tail) / 2 * ip + 0.5, level
    p["second"] = second_on.astype(float)
    p["cap"], p["outer"] = fv["cap"] * ip + 0.5, (1 + fv["rim_w"]) * ip + 0.5

    # drop shadow of the clock on the wall: darken by s where |pixel - shift| < rim (soft edge)
    strength, soft = u(0, d.shadow), u(0.03, 0.1) * ip
    direction, dist = u(0, 2 * np.pi), u(0.03, 0.1) * ip
    p["shadow_dx"], p["shadow_dy"] = dist * np.cos(direction), dist * np.sin(direction)
    p["shadow"] = strength
    p["shadow_a"], p["shadow_b"] = strength / (2 * soft), 1 - strength * (p["outer"] + soft) / (2 * soft)

    # wall grey level and gradient; lighting and contrast, scaled to 0..255
    gain = u(*d.contrast)
    phi, light = u(0, 2 * np.pi), u(0, d.lighting)
    p["wall_x"], p["wall_y"] = u(-d.background, d.background), u(-d.background, d.background)
    p["wall_level"] = u(0.15, 0.85)
    p["light_x"], p["light_y"] = 255 * gain * light * np.cos(phi) / 2, 255 * gain * light * np.sin(phi) / 2
    p["light_r2"], p["light"] = -255 * gain * u(0, d.lighting) / 2, 255 * gain
    p["offset"] = 255 * (0.5 - 0.5 * gain + u(-0.06, 0.06))
    p["wall_tex"], p["wall"] = u(0, d.background), rng.integers(0, _BANK, n)
    p["clutter"] = rng.integers(0, _BANK, n)
    p["clutter_a"] = (rng.random(n) < d.clutter) * u(0.4, 1.0)
    p["glare"] = (rng.random(n) < d.glare_prob) * u(0.3, 1.0) * d.glare
    p["glare_idx"] = rng.integers(0, _BANK, n)
    p["blur"] = u(0, d.blur) * size / 150  # pixels
    p["noise"] = 255 * u(0, d.noise)
    p["noise_at"] = rng.integers(0, _NOISE, n)
    ints = ("face", "wall", "clutter", "glare_idx", "noise_at", "keystone")  # the rest as float32
    return {k: (v if k in ints else v.astype(np.float32)) for k, v in p.items()}


def _render(p: dict[str, torch.Tensor], banks: _Banks, size: int) -> torch.Tensor:
    """(B, size, size) uint8 images for one chunk of per-image parameters; planes are (B, S*S)."""
    b = len(p["face"])
    col = {k: v.view(-1, 1) for k, v in p.items()}
    gx, gy, r2 = banks.xyr  # (S*S,) output coords in [-1, 1]

    # pixels from the clock's centre, along the clock's own axes (in-place ops with a (B, 1)
    # operand last are the fast kind on CPU; addcmul with a broadcast first operand is not)
    x = (gx * col["ax"]).addcmul_(gy, col["bx"]).add_(col["cx"])
    y = (gx * col["ay"]).addcmul_(gy, col["by"]).add_(col["cy"])
    if bool(p["keystone"].any()):
        w = (gx * col["k0"]).addcmul_(gy, col["k1"]).sub_(1).reciprocal_().neg_()  # 1 / (1 - k0 x - k1 y)
        x.mul_(w)
        y.mul_(w)
    grid = torch.empty(b, size * size, 2)
    torch.mul(x, col["tex_scale"], out=grid[..., 0])
    torch.mul(y, col["tex_scale"], out=grid[..., 1])
    lum = F.grid_sample(banks.faces[p["face"]], grid.view(b, size, size, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=False).view(b, -1)  # premultiplied by alpha
    r = (x * x).addcmul_(y, y).sqrt_()
    alpha = (col["outer"] - r).clamp_(0, 1)

    def hand(h: str, taper: bool = True) -> torch.Tensor:
        """Signed distance (pixels, minus half a pixel) to a tapered segment; below 0 is inside."""
        sin, cos = col[h + "_sin"], col[h + "_cos"]
        along = (x * sin).addcmul_(y, cos, value=-1).sub_(col[h + "_mid"])  # from the segment's centre
        across = (x * cos).addcmul_(y, sin).abs_()
        if taper:  # the half-width shrinks linearly from base to tip
            frac = (along * col[h + "_invlen"]).add_(col[h + "_frac0"]).clamp_(0, 1)
            across.addcmul_(frac, col[h + "_dhw"], value=-1)
        across.sub_(col[h + "_hw0"])
        along.abs_().sub_(col[h + "_half"])
        return torch.maximum(across, along, out=along)

    dist = hand("h")
    torch.minimum(dist, hand("m"), out=dist)  # a union is the minimum of distances
    torch.minimum(dist, r - col["cap"], out=dist)
    lum.addcmul_(col["h_level"] - lum, dist.neg_().clamp_(0, 1))
    if bool(p["second"].any()):
        lum.addcmul_(col["s_level"] - lum, hand("s", taper=False).neg_().clamp_(0, 1))

    wall = (gx * col["wall_x"]).addcmul_(gy, col["wall_y"]).add_(col["wall_level"])
    wall.addcmul_(banks.walls[p["wall"]], col["wall_tex"])
    if bool((p["clutter_a"] > 0).any()):
        things = banks.clutter[p["clutter"]]
        wall.addcmul_(things[:, 0] - wall, things[:, 1].mul_(col["clutter_a"]))
    if bool((p["shadow"] > 0).any()):  # |pixel - shift| ~ r - shift . pixel / r for a shift << r
        shade = (x * col["shadow_dx"]).addcmul_(y, col["shadow_dy"]).div_(r).neg_().add_(r)
        shade.mul_(col["shadow_a"]).add_(col["shadow_b"]).clamp_(max=1)
        wall.mul_(torch.maximum(shade, 1 - col["shadow"], out=shade))

    img = torch.addcmul(wall, wall, alpha, value=-1).add_(lum)
    if bool((p["glare"] > 0).any()):  # a highlight on the glass: screen blend over the clock
        img.addcmul_(banks.glares[p["glare_idx"]].mul_(alpha).mul_(col["glare"]), 1 - img)
    light = (gx * col["light_x"]).addcmul_(gy, col["light_y"]).addcmul_(r2, col["light_r2"]).add_(col["light"])
    img.mul_(light).add_(col["offset"])  # now 0..255
    img = _blur(img.view(b, size, size), p["blur"]).reshape(b, -1)
    start = int(p["noise_at"][0])  # one run of the noise bank per chunk
    img.addcmul_(banks.noise[start:start + img.numel()].view_as(img), col["noise"])
    return img.add_(0.5).clamp_(0, 255).to(torch.uint8).view(b, size, size)


def _blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, S, S) with one sigma (pixels) per image; edges replicated."""
    top = float(sigma.max())
    if top < 0.25:
        return img
    radius = int(math.ceil(2.5 * top))
    size = img.shape[-1]
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma.clamp(min=0.2).view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).T.reshape(-1, len(sigma), 1, 1)  # (taps, B, 1, 1)
    padded = F.pad(img[:, None], (radius,) * 4, mode="replicate")[:, 0]  # (B, S+2r, S+2r)
    rows = padded[:, :, :size] * kernel[0]
    for k in range(1, 2 * radius + 1):
        rows.addcmul_(padded[:, :, k:k + size], kernel[k])
    out = rows[:, :size] * kernel[0]
    for k in range(1, 2 * radius + 1):
        out.addcmul_(rows[:, k:k + size], kernel[k])
    return out
