"""Stylizing a photo at the scale its network was trained at: the model file's "apply" -> "work_size".

A transformer network paints marks of a fixed size in pixels, learnt on photos whose shorter side
was scaled to a few hundred pixels (TrainConfig.content_size). A larger photo at its full size gets
the same marks, so they shrink against its subject: on a 1024x768 photo they are a fine hatching,
on a phone's 12-megapixel one they vanish. Stylizing at a small size and upscaling (what the peer
tool does, at 384 px) keeps the marks' size but blurs the photo. Here the photo goes down to the
work size (its shorter side), through the network, and back up, and then gets back its own detail
finer than that: the photo less its down-and-up copy, the top band of a Laplacian pyramid. The
network at strength 0 returns its input, so at --style-weight 0 the output is the photo exactly.

Torch-free (numpy and Pillow), so the ONNX path uses it as the PyTorch path does.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def work_shape(height: int, width: int, apply: dict | None) -> tuple[int, int] | None:
    """The (height, width) to stylize a photo at, or None to stylize it as it is (no work size in
    the model file, or a photo no larger than it)."""
    side = (apply or {}).get("work_size")
    if not side or min(height, width) <= side:
        return None
    s = side / min(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def resize(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(3, H, W) uint8 -> (3, h, w) uint8, bicubic (antialiased when it shrinks)."""
    im = Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))
    out = np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def restore(y_small: np.ndarray, x_small: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The network's output for x_small = resize(x, ...), at x's size with x's fine detail back:
    up(y_small) + x - up(x_small), (3, H, W) uint8."""
    shape = x.shape[1:]
    out = resize(y_small, shape).astype(np.int16)
    out += x
    out -= resize(x_small, shape)
    return np.clip(out, 0, 255).astype(np.uint8)
