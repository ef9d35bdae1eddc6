"""The apply block's `flow`: the network's output smoothed along the photo's lines, a line integral
convolution (Cabral and Leedom 1993) along the tangent of the photo's smoothed structure tensor, the
flow field of Kyprianidis, Kang and Döllner's anisotropic Kuwahara filter (2009).

From every pixel a streamline follows the photo's edges and its texture's direction both ways, and the
pixel takes the Gaussian-weighted mean of the colours along it. Why it is a step of the recipe (issue
29, the model card): `flatten` paints a network's stamped facets flat, but in patches of one size and
round shape, which blind judges at 100% still called "uniform confetti dabs" and "sky tiled with
diamond blocks"; smoothed along the photo's lines first, the marks become strokes that follow the
forms, and `flatten` then gives them their crisp edges. The streamlines come from the photo, not from
the network's output, whose own lines are the stamp's. A short length: at 4 px judges preferred the
pictures to the files without it 196 of 240 times over five styles; at 8 px they called them a
"liquify filter" and preferred them 10 of 96 times.

Where it departs from the papers: the streamline takes nearest-pixel steps of one pixel (one table
lookup a step instead of bilinear interpolation: five times faster, within a level on average), and
every pixel smooths the same length, however coherent the photo's direction is there (weighting by
the anisotropy, as Kyprianidis et al. do, left round dabs where the photo is busy, by eye).

Torch-free (numpy), at the work size, in bands of rows: 0.27 s at length 4 on 640x480 (a 1024x768 photo
at the work size) on one core.
"""
from __future__ import annotations

import numpy as np

from stylize.apply.flatten import bands

NOISE_SIGMA = 1.0  # the photo's luminance blurred before its gradient, so that noise gives no direction
TENSOR_SIGMA = 3.0  # the structure tensor's smoothing (rho): how far a direction carries
_BAND = 256  # rows of output a band computes


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian on the last two axes, separable, mirrored at the borders."""
    k = int(3 * sigma + 0.5)
    taps = np.exp(-np.arange(-k, k + 1) ** 2 / (2 * sigma * sigma)).astype(np.float32)
    taps /= taps.sum()
    for axis in (-2, -1):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (k, k)
        p = np.pad(a, pad, mode="reflect")
        n = a.shape[axis]
        a = sum(t * np.take(p, range(i, i + n), axis=axis) for i, t in enumerate(taps))
    return a


def tangents(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) uint8 -> the unit tangent (ty, tx) of the photo's lines at every pixel: the
    eigenvector of its smoothed structure tensor with the smaller eigenvalue. Where the photo is flat
    (no gradient at all), horizontal."""
    lum = np.einsum("c,chw->hw", np.array([0.299, 0.587, 0.114], np.float32), photo.astype(np.float32) / 255)
    lum = _blur(lum, NOISE_SIGMA)
    gy, gx = np.zeros_like(lum), np.zeros_like(lum)
    gy[1:-1] = (lum[2:] - lum[:-2]) / 2
    gx[:, 1:-1] = (lum[:, 2:] - lum[:, :-2]) / 2
    e, f, g = _blur(np.stack([gx * gx, gx * gy, gy * gy]), TENSOR_SIGMA)
    across = 0.5 * np.arctan2(2 * f, e - g)  # the direction of the larger eigenvalue's eigenvector
    flat = e + g < 1e-12
    return np.where(flat, 0, np.cos(across)).astype(np.float32), np.where(flat, 1, -np.sin(across)).astype(np.float32)


def follow(picture: np.ndarray, photo: np.ndarray, length: float) -> np.ndarray:
    """(3, H, W) uint8 picture smoothed along the lines of the (3, H, W) photo of its size, by a
    Gaussian of sigma `length` pixels along each streamline (0: the picture as it is) -> uint8.
    In bands of rows, each with the rows its streamlines and its tangents reach: the picture in one
    piece, at a band's memory."""
    if length <= 0:
        return picture
    steps = int(np.ceil(2 * length))
    margin = steps + int(3 * NOISE_SIGMA + 0.5) + int(3 * TENSOR_SIGMA + 0.5) + 1  # + the gradient's row
    out = np.empty_like(picture)
    for top, rows, lo, hi in bands(picture.shape[1], _BAND, margin):
        out[:, top:top + rows] = _follow(picture[:, lo:hi], photo[:, lo:hi], length, steps)[:, top - lo:top - lo + rows]
    return out


def _follow(picture: np.ndarray, photo: np.ndarray, length: float, steps: int) -> np.ndarray:
    ty, tx = tangents(photo)
    c, h, w = picture.shape
    # one row per pixel: its colour and the tangent there, so that a step is one lookup
    table = np.concatenate([picture.reshape(c, -1).T.astype(np.float32) / 255,
                            np.stack([ty.ravel(), tx.ravel()], 1)], 1)
    total, weight = table[:, :c].copy(), np.float32(1)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    for sign in (1, -1):
        y, x = rows.ravel(), cols.ravel()
        dy, dx = sign * ty.ravel(), sign * tx.ravel()
        for step in range(1, steps + 1):
            y, x = np.clip(y + dy, 0, h - 1), np.clip(x + dx, 0, w - 1)
            here = table[(y + 0.5).astype(np.int32) * w + (x + 0.5).astype(np.int32)]
            k = np.float32(np.exp(-step * step / (2 * length * length)))
            total += k * here[:, :c]
            weight += k
            # a tangent has no sign: keep going the way the streamline came
            turn = np.where(here[:, c] * dy + here[:, c + 1] * dx < 0, np.float32(-1), np.float32(1))
            dy, dx = here[:, c] * turn, here[:, c + 1] * turn
    out = (total / weight).T.reshape(c, h, w)
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
