"""Calibrating a model: measuring, on photos it was not trained on, how it should apply, and setting
that in its file (the "apply" block, modelfile.APPLY; `stylize calibrate`, studies/calibration.py).

A network trained for minutes on a CPU can overshoot (its marks bury the photo at full strength) or
fall short of the painting's palette. For every pair of a network strength (what --style-weight 1
runs it at) and a palette amount (how far the output then moves to the painting's colours,
palette.recolour), each photo is stylized with each painting, at the work size the model applies at
(scale.py), and scored: style_match, how much of the gap between the photo and the painting the
output closes (0: the photo's, 1: the painting's), and structure, how much of the photo's layout
survives. The pair chosen (choose) has the most style_match among those that keep structure at
MIN_STRUCTURE or more (the rule of the model card), or else the most structure.

For a model trained on its paintings, `paintings` are those paintings, one per style in the model's
order (by default the files its training read, where they still are), and the file keeps their
colours for the palette step; for the model that takes any painting, they are any paintings.

Library only: progress goes through a callback and nothing is printed here.
"""
from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

from stylize.apply import palette
from stylize.errors import StylizeError
from stylize.images import find_images, read_array
from stylize.models import modelfile

STRENGTHS = (1.0, 0.8, 0.6, 0.5, 0.4)
AMOUNTS = (0.0, 0.5, 0.75, 1.0)
MIN_STRUCTURE = 0.70
MODEL_WORK_SIZE = -1  # work_size: the one the model file has (0: every photo at its full size)


@dataclass
class Step:
    """One output of the grid, as the progress callback gets it."""
    done: int
    total: int
    photo: Path
    painting: Path
    strength: float
    amount: float
    output: np.ndarray  # (3, H, W) uint8
    scores: dict  # {"style_match", "structure"}


@dataclass
class Calibration:
    apply: dict  # the block to write (modelfile.write_apply)
    table: dict  # {(strength, amount): {"style_match", "structure"}}, means over photos and paintings
    chosen: tuple[float, float]  # (strength, amount)


# --- the scores: network-free, numpy and Pillow ---------------------------------------------------

def _pil(x: np.ndarray, side: int) -> Image.Image:
    """A (3, H, W) uint8 image with its longest side at `side`."""
    im = Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))
    s = side / max(im.size)
    return im.resize((max(8, round(im.width * s)), max(8, round(im.height * s))), Image.Resampling.BICUBIC)


def _patches(im: Image.Image, k: int = 5, n: int = 2048) -> np.ndarray:
    """n random k x k colour patches (n, 3 k k), the same places for images of one size."""
    a = np.asarray(im, dtype=np.float32) / 255
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, a.shape[0] - k + 1, n), rng.integers(0, a.shape[1] - k + 1, n)
    i = np.arange(k)
    return a[ys[:, None, None] + i[None, :, None], xs[:, None, None] + i[None, None, :]].reshape(n, -1)


def _distance(a: np.ndarray, b: np.ndarray, side: int) -> float:
    """Sliced Wasserstein distance between two images' patch distributions at one scale."""
    pa, pb = _patches(_pil(a, side)), _patches(_pil(b, side))
    d = np.random.default_rng(1).normal(size=(pa.shape[1], 64)).astype(np.float32)
    d /= np.linalg.norm(d, axis=0, keepdims=True)
    return float(np.abs(np.sort(pa @ d, axis=0) - np.sort(pb @ d, axis=0)).mean())


def _edges(im: Image.Image) -> np.ndarray:
    g = np.asarray(im.convert("L").filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    gy, gx = np.gradient(g)
    return np.hypot(gx, gy).ravel()


@functools.lru_cache(maxsize=16)
def _image(path: Path) -> np.ndarray:
    return read_array(path, 512, uint8=True)[0]  # the scores look at 256 px at most


def score(photo: Path, painting: Path, output: np.ndarray) -> dict:
    """style_match and structure of an output ((3, H, W) uint8) of a photo with a painting.
    style_match: 1 - d(output, painting) / d(photo, painting), d the distance between their colour
    patches' distributions at two scales; structure: the correlation of the output's and the
    photo's edge strengths."""
    photo_, painting_ = _image(Path(photo)), _image(Path(painting))
    sides = (128, 256)
    base = sum(_distance(photo_, painting_, s) for s in sides)
    match = 1 - sum(_distance(output, painting_, s) for s in sides) / base if base > 0 else float("nan")
    c = _pil(photo_, 256)
    o = Image.fromarray(np.ascontiguousarray(output.transpose(1, 2, 0))).resize(c.size, Image.Resampling.BICUBIC)
    e, f = _edges(o), _edges(c)
    structure = float(np.corrcoef(e, f)[0, 1]) if e.std() > 0 and f.std() > 0 else float("nan")
    return {"style_match": float(match), "structure": structure}


# --- the grid ------------------------------------------------------------------------------------

def photo_files(photos: list[str | Path] | str | Path) -> list[Path]:
    """Photos given as files or folders (every image below a folder)."""
    out = []
    for p in map(Path, [photos] if isinstance(photos, (str, Path)) else photos):
        found = find_images(p) if p.is_dir() else [p] if p.is_file() else None
        if not found:
            raise StylizeError(f"{p}: {'no images in this folder' if p.is_dir() else 'no such photo'}")
        out += found
    if not out:
        raise StylizeError("calibrating needs photos: give a folder of them")
    return out


def model_paintings(record: dict) -> list[Path]:
    """A trained model's paintings, one per style in its order, as its training read them (its
    train.style: files or folders), if they are still there."""
    from stylize.images import style_files

    styles = list(record["styles"])
    try:
        found = {p.stem: p for p in style_files(record.get("train", {}).get("style") or [])}
    except (StylizeError, OSError):
        found = {}
    missing = [s for s in styles if s not in found or not found[s].is_file()]
    if missing:
        raise StylizeError(f"{record['path']}: the paintings it was trained on are not where its training read them "
                           f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); give them, one per "
                           f"style in this order: {', '.join(styles)}")
    return [found[s] for s in styles]


def painting_colours(record: dict, paintings: list[Path]) -> list:
    """A trained model's styles' colour statistics (palette.stats), from its paintings at its
    training style size."""
    styles = list(record["styles"])
    if len(paintings) != len(styles):
        raise StylizeError(f"{record['path']}: give one painting per style ({len(styles)}: {', '.join(styles)})")
    size = record.get("train", {}).get("style_size") or 1024
    return [palette.stats(read_array(p, size)[0]) for p in paintings]


def _stylizer(model, device: str, work_size: int):
    """The model's network alone (its file's calibration dropped: the grid is what chooses it), at
    the work size it is to apply at."""
    from stylize.apply.engines.pytorch import ArbitraryStylizer, Stylizer

    record = modelfile.load(model)
    if record.get("kind") != "transformer":
        raise StylizeError(f"{record['path']}: a {record.get('kind')} model applies as it is; only transformer "
                           "networks are calibrated")
    old = record.pop("apply", None) or {}
    size = old.get("work_size", 0) if work_size == MODEL_WORK_SIZE else work_size
    if size and not (isinstance(size, int) and 16 <= size <= 100_000):
        raise StylizeError(f"work size {size}: give a shorter side of 16 to 100000 pixels, or 0 for full size")
    record["apply"] = {"work_size": size} if size else {}
    arbitrary = bool(record["net"].get("style_dim"))
    return (ArbitraryStylizer if arbitrary else Stylizer)(record, device), size


def measure(stylizer, photos: list[Path], paintings: list[Path], strengths=STRENGTHS, amounts=AMOUNTS,
            score: Callable = score, progress: Callable[[Step], None] | None = None,
            max_size: int | None = None) -> tuple[dict, list]:
    """The grid: {(strength, amount): mean scores} over every photo and painting, and for a trained
    model its paintings' colour statistics (else None)."""
    import torch

    progress = progress or (lambda step: None)
    record = stylizer.record
    arbitrary = bool(record["net"].get("style_dim"))
    styles = list(record["styles"])
    if arbitrary and not paintings:
        raise StylizeError(f"{record['path']}: the model takes any painting; give paintings to calibrate it with")
    strengths = strengths if stylizer.has_strength else (1.0,)  # trained at full strength only
    own = None if arbitrary else painting_colours(record, paintings)
    results: dict = {}
    total, done = len(paintings) * len(photos) * len(strengths) * len(amounts), 0
    for k, painting in enumerate(paintings):
        for photo in photos:
            # (3, H, W) uint8 as a tensor, whichever the engine's load() gives
            x = torch.from_numpy(np.ascontiguousarray(np.asarray(stylizer.load(photo, max_size)[0])))
            cond = stylizer.condition([str(painting)] if arbitrary else [styles[k]])
            target = palette.stats(stylizer.painting(str(painting)).numpy()) if arbitrary else own[k]
            for strength in strengths:
                with torch.inference_mode():
                    y = stylizer.run(x, cond, strength).numpy()
                for amount in amounts:
                    out = palette.recolour(y, [target], [1.0], amount)
                    scores = score(Path(photo), Path(painting), out)
                    results.setdefault((strength, amount), []).append(scores)
                    done += 1
                    progress(Step(done, total, Path(photo), Path(painting), strength, amount, out, scores))
    table = {key: {m: _mean([r[m] for r in rs]) for m in ("style_match", "structure")} for key, rs in results.items()}
    return table, own


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return round(statistics.mean(finite), 4) if finite else float("nan")


def choose(table: dict, min_structure: float = MIN_STRUCTURE) -> tuple[float, float]:
    """The (strength, amount) with the most style_match among those with structure >= min_structure;
    if none keeps that much structure, the one that keeps the most."""
    scored = {k: v for k, v in table.items()
              if v["style_match"] == v["style_match"] and v["structure"] == v["structure"]}  # not NaN
    if not scored:
        raise StylizeError("no output could be scored (are the photos all of one colour?)")
    kept = [k for k, v in scored.items() if v["structure"] >= min_structure]
    if kept:
        return max(kept, key=lambda k: (scored[k]["style_match"], k))
    return max(scored, key=lambda k: (scored[k]["structure"], k))


def calibrate(model: str | Path, photos, paintings: list[str | Path] | None = None, *,
              strengths=STRENGTHS, amounts=AMOUNTS, work_size: int = MODEL_WORK_SIZE,
              min_structure: float = MIN_STRUCTURE, score: Callable = score,
              progress: Callable[[Step], None] | None = None, device: str = "cpu",
              max_size: int | None = None) -> Calibration:
    """Measure the grid for a model and choose how it applies: the apply block to write into it
    (modelfile.write_apply). photos: files or folders; paintings: see the module's note (None: a
    trained model's own); work_size: the shorter side to apply at (MODEL_WORK_SIZE: the file's)."""
    if not strengths or not amounts or any(not 0 < s <= 1 for s in strengths) or any(not 0 <= a <= 1 for a in amounts):
        raise StylizeError("strengths must be in (0, 1] and palette amounts in [0, 1], at least one of each")
    stylizer, size = _stylizer(model, device, work_size)
    photos = photo_files(photos)
    paintings = [Path(p) for p in paintings] if paintings else \
        ([] if stylizer.record["net"].get("style_dim") else model_paintings(stylizer.record))
    table, own = measure(stylizer, photos, paintings, strengths, amounts, score, progress, max_size)
    strength, amount = choose(table, min_structure)
    apply = {"full_strength": float(strength), "palette": float(amount), **({"work_size": size} if size else {})}
    if own is not None:  # a trained model keeps its paintings' colours for the palette step
        apply["colours"] = [palette.as_record(c) for c in own]
    return Calibration(apply, table, (strength, amount))
