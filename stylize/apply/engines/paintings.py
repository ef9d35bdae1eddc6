"""What the PyTorch engines share: masks, the weights of paintings given at apply time, and a cache
of each painting's statistics (AdaIN's and WCT's), keyed by content, not by id()."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stylize.apply import mixing, recipe
from stylize.errors import StylizeError
from stylize.images import _as_uint8, load_image, load_style

CACHED_PAINTINGS = 8  # a long-lived process (stylize serve) sees many paintings


def load_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """A greyscale mask (white = first style) of the photo's size: (H, W) in [0, 1]."""
    m, _ = load_image(path)
    (mh, mw), (h, w) = m.shape[1:], size
    if (mh, mw) != (h, w):
        # the photo's shape at another size (--max-size scaled the photo): scaled with it
        if abs(mw * h - mh * w) > max(mw, mh, w, h):
            raise StylizeError(f"{path}: mask is {mw}x{mh}, the photo is {w}x{h} (a mask has the photo's shape)")
        m = F.interpolate(m[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    return m.mean(0)


def mask_array(path, size: tuple[int, int]) -> np.ndarray:
    """load_mask as the recipe takes it (recipe.Stylizer.load_mask)."""
    return load_mask(path, size).numpy()


def run(engine, x, look: recipe.Look, strength: float) -> torch.Tensor:
    """recipe.run for a (3, H, W) tensor (uint8, or float in [0, 1]) -> uint8 tensor."""
    return torch.from_numpy(recipe.run(engine, _as_uint8(x), look, strength))


def painting_weights(weights: list[float], specs: list[str], mask) -> np.ndarray:
    """Paintings' weights (N,), or with a mask (H, W) the first painting's [mask, 1 - mask]."""
    if mask is None:
        return np.asarray(weights, dtype=np.float32)
    if len(specs) != 2:
        raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
    mask = np.asarray(mask, dtype=np.float32)
    return np.stack([mask, 1 - mask])


class PaintingStats:
    """A painting's statistics (what `compute` makes of it, read at `style_size`), recoloured to a
    photo first when one is given (--color-method match). Cached by the file's content and the
    photo's: with ids, a later photo in a freed one's place got its colours. One photo's at a time."""

    def __init__(self, compute: Callable[[torch.Tensor], object], style_size: int | None):
        self.compute, self.style_size, self._stats = compute, style_size, {}

    def get(self, path: str, photo=None, photo_key: tuple | None = None):
        from stylize.apply.color import match_colors

        key = (recipe.file_key(path), photo_key)
        if key not in self._stats:
            _, style = load_style(path, self.style_size)
            if photo is not None:
                style = match_colors(style, photo)
            if photo_key is not None:
                self._stats = {k: v for k, v in self._stats.items() if k[1] is None}
            while len(self._stats) >= CACHED_PAINTINGS:
                self._stats.pop(next(iter(self._stats)))
            with torch.inference_mode():
                self._stats[key] = self.compute(style)
        return self._stats[key]

    def of_request(self, model: str, specs: list[str] | None, photo=None, match_color: bool = False):
        """--style PATH[=W] values -> (paths, weights summing to 1, each painting's statistics)."""
        if not specs:
            raise StylizeError(f"model {model} is adaptive: give a style image with --style PAINTING.jpg")
        paths, weights = mixing.painting_weights(specs)
        photo = photo if match_color else None
        photo_key = recipe.content_key(photo) if photo is not None else None
        return paths, weights, [self.get(p, photo, photo_key) for p in paths]
