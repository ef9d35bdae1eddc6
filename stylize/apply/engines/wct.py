"""The WCT engine (recipe.Stylizer): a WCT model (models/wct.py) paints any painting, given at apply time.

It runs on PyTorch, untiled: on GPUs, under --runtime torch, and for what onnx_wct.py (the CPU engine,
torch-free) does not cover, masks and --color-method match (choose.py sends it here). A painting's
statistics are read once per content (recipe.file_key) and kept; condition() mixes them into one
colouring per level.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stylize.apply.engines import paintings
from stylize.apply.recipe import Look
from stylize.devices import pick_device
from stylize.images import read_array
from stylize.models import modelfile


class WCTStylizer:
    """A loaded WCT model: the paintings' statistics at condition(), the levels at network()."""

    budget = 1 << 62  # runs untiled: the transform needs the whole photo's statistics

    def __init__(self, record: dict, device: str = "auto", style_size: int | None = None):
        from stylize.models.wct import WCTNet
        from stylize.models.whitening import WCTConfig

        self.record, self.device = record, pick_device(device)
        self.name = Path(record["path"]).stem
        self.has_strength = True  # every level's strength times --style-weight
        self.styles: list[str] = []
        self.apply = record.get("apply") or {}
        self.net = modelfile.build(record, lambda: WCTNet(WCTConfig(**record["net"])), record["state_dict"])
        self.net.eval().requires_grad_(False).to(self.device)
        # every decoder gives back its input's size; the coarsest level's features are at least 2x2 (a
        # reflection pad of 1 needs 2)
        self.multiple = self.net.multiple
        self.least = 2 * self.multiple
        self.style_size = style_size or self.net.cfg.style_size
        # a painting's mean and covariance per level
        self._stats = paintings.PaintingStats(lambda style: self.net.style_stats(style[None].to(self.device)),
                                              self.style_size)

    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False) -> Look:
        """Paintings (PATH or PATH=W) -> a Look: their weights, or with a mask [mask, 1 - mask]; its
        data one {tap: (mean, colouring)} per part: the paintings' mixed statistics, or with a mask
        each painting's own."""
        from stylize.models.wct import colouring
        from stylize.models.whitening import mix

        _, weights, stats = self._stats.of_request(self.name, specs, photo, match_color)
        parts = [[s] for s in stats] if mask is not None else [stats]
        part_weights = [[1.0]] * len(stats) if mask is not None else [weights]
        targets = [{t: colouring(*mix([s[t] for s in part], w)) for t in self.net.taps}
                   for part, w in zip(parts, part_weights)]
        return Look(paintings.painting_weights(weights, specs, mask), None, tuple(specs), targets)

    def load(self, path, max_size: int | None = None):
        return read_array(path, max_size, uint8=True)

    load_mask = staticmethod(paintings.mask_array)
    run = paintings.run

    def network(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        """(3, H, W) uint8, H and W multiples of `multiple` -> models/wct.picture, uint8."""
        from stylize.models.wct import picture

        masks = None
        if look.weights.ndim == 3:
            masks = list(torch.from_numpy(look.weights)[:, None, None].to(self.device))
        return picture(self.net, x, look.data, strength, masks)
