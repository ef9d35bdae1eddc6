"""Stylizing a photo at the scale its network was trained at: the model file's "apply" -> "work_size".

A transformer network paints marks of a fixed size in pixels, learnt on photos whose shorter side
was scaled to a few hundred pixels (TrainConfig.content_size). A larger photo at its full size gets
the same marks, so they shrink against its subject: on a 1024x768 photo they are a fine hatching,
on a phone's 12-megapixel one they vanish. Stylizing at a small size and upscaling (what the peer
tool does, at 384 px) keeps the marks' size but blurs the photo. Here the photo goes down to the
work size (its shorter side), through the network, and back up, and then gets back its own detail
finer than that: the photo less its down-and-up copy, the top band of a Laplacian pyramid. The
network at strength 0 returns its input, so at --style-weight 0 the output is the photo exactly.

Torch-free (numpy and Pillow), so the ONNX path uses it as the PyTorch path does. A big photo is
resized and restored in bands (BAND_PIXELS), so that restoring adds the output alone (3 bytes a
pixel), not the several whole-size copies of resizing it in one piece (a 250-megapixel photo took
5.2 GB; bench/memory.py). The bands give Pillow's result exactly: its bicubic resize is a horizontal
pass (rounded to 8 bits) then a vertical one, so the first is done on bands of rows and the second
on bands of columns, each pass's weights those of the whole image. (Pillow itself takes the
vertical pass first for some shapes, so a big photo's result may differ from its one call by a level.)
"""
from __future__ import annotations

import numpy as np
from PIL import Image

BAND_PIXELS = 1 << 22  # pixels of a band (about 12 MB as uint8, 16 MB as a Pillow image)


def work_shape(height: int, width: int, apply: dict | None) -> tuple[int, int] | None:
    """The (height, width) to stylize a photo at, or None to stylize it as it is (no work size in
    the model file, or a photo no larger than it)."""
    side = (apply or {}).get("work_size")
    if not side or min(height, width) <= side:
        return None
    s = side / min(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def _whole(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))
    return np.ascontiguousarray(np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BICUBIC)).transpose(2, 0, 1))


def _step(length: int) -> int:
    """Rows (or columns) of `length` pixels in a band."""
    return max(1, BAND_PIXELS // max(1, length))


def _horizontal(x: np.ndarray, width: int) -> np.ndarray:
    """(3, H, W) -> (3, H, width): Pillow's horizontal pass, a band of rows at a time."""
    height = x.shape[1]
    out = np.empty((3, height, width), np.uint8)
    step = _step(max(x.shape[2], width))
    for top in range(0, height, step):
        out[:, top:top + step] = _whole(x[:, top:top + step], (min(step, height - top), width))
    return out


def _vertical(x: np.ndarray, height: int) -> np.ndarray:
    """(3, H, W) -> (3, height, W): Pillow's vertical pass, a band of columns at a time."""
    width = x.shape[2]
    out = np.empty((3, height, width), np.uint8)
    step = _step(max(x.shape[1], height))
    for left in range(0, width, step):
        out[:, :, left:left + step] = _whole(x[:, :, left:left + step], (height, min(step, width - left)))
    return out


def _big(*shapes: tuple[int, int]) -> bool:
    return any(h * w > BAND_PIXELS for h, w in shapes)


def resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(3, H, W) uint8 -> (3, h, w) uint8, bicubic (antialiased when it shrinks); a big photo in
    bands, with no whole-size copy of it."""
    if not _big(x.shape[1:], shape):
        return _whole(x, shape)
    out = _horizontal(x, shape[1]) if shape[1] != x.shape[2] else x
    out = _vertical(out, shape[0]) if shape[0] != x.shape[1] else out
    return out if out is not x else x.copy()


def restore(y_small: np.ndarray, x_small: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The network's output for x_small = resize(x, ...), at x's size with x's fine detail back:
    up(y_small) + x - up(x_small), (3, H, W) uint8. A big photo in bands of columns, so that the
    output is the only whole-size array it adds."""
    shape = x.shape[1:]
    if not _big(shape):
        out = _whole(y_small, shape).astype(np.int16)
        out += x
        out -= _whole(x_small, shape)
        return np.clip(out, 0, 255).astype(np.uint8)
    wide_y, wide_x = (_horizontal(a, shape[1]) if a.shape[2] != shape[1] else a for a in (y_small, x_small))
    out = np.empty_like(x)
    step = _step(shape[0])
    for left in range(0, shape[1], step):
        cols = slice(left, left + step)
        band = _whole(wide_y[:, :, cols], x[:, :, cols].shape[1:]).astype(np.int16)  # the vertical pass
        band += x[:, :, cols]
        band -= _whole(wide_x[:, :, cols], band.shape[1:])
        out[:, :, cols] = np.clip(band, 0, 255)
    return out
