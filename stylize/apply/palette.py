"""A painting's palette on an image: the linear colour map that gives one RGB distribution another's
mean and covariance (Gatys et al. 2017, "Controlling Perceptual Factors in Neural Style Transfer",
colour by histogram matching; Reinhard et al. 2001 for the idea).

Two uses, one rule:
- colour preservation (color.match_colors): the painting takes the photo's colours before stylizing;
- the arbitrary-style model's palette step (`recolour`): after the network, the output takes the
  painting's colours. A network trained on a few dozen paintings learns their marks better than their
  palettes, which the map gives exactly (the model card measures it).

Torch-free (numpy), so the ONNX Runtime path and the PyTorch path share it; statistics are gathered
and maps applied a band of rows at a time, so a huge photo costs a band's memory, not a copy.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-5
_BAND = 256  # rows per band
_SAMPLE = 250_000  # pixels an image's own statistics are taken from (recolour): 1024x768 -> every other pixel


def _bands(image: np.ndarray):
    for top in range(0, image.shape[1], _BAND):
        yield top, image[:, top:top + _BAND]


def _unit(a: np.ndarray) -> np.ndarray:
    """(3, ...) uint8 or float in [0, 1] -> float64 in [0, 1]."""
    return a.astype(np.float64) / 255 if a.dtype == np.uint8 else a.astype(np.float64)


def stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (3,) and covariance (3, 3) of a (3, H, W) image's colours, uint8 or float in [0, 1]."""
    n, s1, s2 = 0, np.zeros(3), np.zeros((3, 3))
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    for _, band in _bands(image):
        f = band.reshape(3, -1).astype(np.float32)  # float32 products, float64 sums: exact enough, fast
        n, s1, s2 = n + f.shape[1], s1 + f.sum(1, dtype=np.float64), s2 + (f @ f.T).astype(np.float64)
    mean = s1 / n / scale
    return mean, s2 / n / scale ** 2 - np.outer(mean, mean)


def _sqrtm(c: np.ndarray, inverse: bool = False) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c + EPS * np.eye(3))
    vals = np.clip(vals, EPS, None) ** (-0.5 if inverse else 0.5)
    return vecs @ np.diag(vals) @ vecs.T


def transfer(source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(A, b): colours c of `source` statistics mapped to A c + b have `target`'s mean and covariance."""
    a = _sqrtm(target[1]) @ _sqrtm(source[1], inverse=True)
    return a, target[0] - a @ source[0]


def recolour(image: np.ndarray, targets: list[tuple[np.ndarray, np.ndarray]], weights, amount: float) -> np.ndarray:
    """A (3, H, W) uint8 image moved `amount` (0: unchanged, 1: all the way) toward the palettes
    `targets` (stats of each painting), mixed by `weights`: one per painting (N,), or per pixel
    (N, H, W) for a mask. Returns uint8."""
    if amount == 0:
        return image
    weights = np.asarray(weights, dtype=np.float64)
    step = max(1, int((image.shape[1] * image.shape[2] / _SAMPLE) ** 0.5))  # a regular grid is enough for 12 numbers
    source = stats(image[:, ::step, ::step])
    maps = [transfer(source, t) for t in targets]
    out = np.empty_like(image)
    if weights.ndim == 1:  # one affine map in pixel levels for the whole image: (1 - t) c + t (A c + b)
        a = (1 - amount) * np.eye(3) + amount * sum(w * m[0] for w, m in zip(weights, maps))
        b = amount * 255 * sum(w * m[1] for w, m in zip(weights, maps))
        a, b = a.astype(np.float32), b.astype(np.float32)[:, None]
        for top, band in _bands(image):
            g = a @ band.reshape(3, -1).astype(np.float32)
            g += b
            np.clip(g, 0, 255, out=g)
            out[:, top:top + band.shape[1]] = np.rint(g, out=g).reshape(band.shape)
        return out
    for top, band in _bands(image):  # per-pixel weights: each painting's map, mixed pixel by pixel
        f = _unit(band)
        moved = np.zeros_like(f)
        for i, (a, b) in enumerate(maps):
            moved += weights[i, top:top + band.shape[1]] * (np.einsum("ij,jhw->ihw", a, f) + b[:, None, None])
        f += amount * (moved - f)
        out[:, top:top + band.shape[1]] = np.round(np.clip(f, 0, 1) * 255)
    return out


def colours(apply: dict) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The styles' colour statistics a model file keeps for its palette step (record["apply"]
    ["colours"]: one {"mean", "cov"} per style, in style order), or None."""
    found = (apply or {}).get("colours")
    return [(np.asarray(c["mean"], dtype=np.float64), np.asarray(c["cov"], dtype=np.float64)) for c in found] \
        if found else None


def as_record(stats_: tuple[np.ndarray, np.ndarray]) -> dict:
    """Colour statistics as a model file stores them (plain lists: JSON and the restricted unpickler)."""
    return {"mean": [float(v) for v in stats_[0]], "cov": [[float(v) for v in row] for row in stats_[1]]}
