"""Style transfer by optimization (Gatys et al. 2016): `stylize apply --style PAINTING --optimize STEPS`.

No network paints here: the output's pixels themselves are optimized, step by step, under the loss the
models train with (losses.PerceptualLoss: content, Gram style and total variation on the loss
network's features). It is slow (seconds per photo on a GPU, a minute or two on a CPU) but it takes
each painting's own marks, which the arbitrary-style network, trained for hours on a CPU and a few
dozen paintings, does not yet: it paints one family of strokes for every painting (weights/README.md).

Departures from the paper, and why:
- EfficientNet-Lite0 features (settings.LOSS_NET_LAYERS), not VGG-19: its ImageNet weights install
  with pip, so it works offline; the same layers and weights as the trained models;
- Adam on the pixels, from the photo, not L-BFGS from noise: a few hundred steps from the photo keep
  it recognisable, and Adam's steps cost one forward and backward pass each (L-BFGS's line search more);
- at a fixed work size (OPTIMIZE_SIZE, the photo's shorter side), then back to the photo's size with
  its own fine detail (scale.restore), so the marks have one size and the time one bound for any photo;
- output and photo translated by up to OPTIMIZE_JITTER pixels before the loss network, anew each step
  (losses.PerceptualLoss): without it the optimizer meets the Gram targets with a rainbow speckle the
  features cannot tell from paint; with it the same loss paints the painting's strokes (issue 29);
- each step's gradient smoothed by a 3x3 binomial filter (OPTIMIZE_SMOOTH passes) before Adam's
  step, and total variation at OPTIMIZE_TV_WEIGHT, not the models' 2: Adam scales each pixel's step
  alike, so the loss network's blind spot (a pixel-by-pixel colour grain it cannot see) filled with noise, 12.6 levels of it from
  the 3x3 median on a Udnie crop against the painting's 1.9. The network distilled from such
  pictures met that grain with a uniform fine diagonal hatching (issue 29, seventh session).
  Smoothed: 3.2-3.3 levels, with the same sharp planes. By eye the TV weight pales colourful
  paintings (Kandinsky, Matisse); more passes of the filter at the models' TV of 2 take the grain
  about as far and keep their colour (Matisse: 2 passes 6.0 levels, 4 passes 4.8; the painting 3.9),
  which the training teacher takes for some styles (TrainConfig.teacher_smooth, teacher_tv).

Library only: progress goes through a callback.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from stylize.apply import recipe, scale
from stylize.apply.recipe import Look
from stylize.features.losses import draw_shift
from stylize.settings import (LOSS_NET_LAYERS, OPTIMIZE_JITTER, OPTIMIZE_SIZE, OPTIMIZE_SMOOTH, OPTIMIZE_TV_WEIGHT,
                               STYLE_SIZE, TrainConfig)

LOSS_NET = "efficientnet-lite0"
LR = 0.02  # Adam's step on pixels in [0, 1]: 200 steps at it settle the marks (measured by eye on 4 paintings)
_BINOMIAL = torch.tensor([1.0, 2.0, 1.0])


class Optimizer:
    """The loss network and one painting's targets, ready to optimize photos toward it."""

    def __init__(self, painting: torch.Tensor, device: torch.device | str = "cpu",
                 smooth: int = OPTIMIZE_SMOOTH, tv: float = OPTIMIZE_TV_WEIGHT):
        """painting: (3, H, W) float in [0, 1], its longest side about STYLE_SIZE["adaptive"]; smooth:
        passes of the gradient filter, tv: the total variation weight (see above)."""
        from stylize.features.losses import PerceptualLoss
        from stylize.features.vgg import loss_network

        content, style = LOSS_NET_LAYERS[LOSS_NET]
        self.device, self.smooth, self.tv = torch.device(device), smooth, tv
        self.loss = PerceptualLoss(loss_network(LOSS_NET, content + style), content, style, "gram").to(self.device)
        self.loss.requires_grad_(False)
        self.loss.set_styles([painting.float().to(self.device)])

    def __call__(self, photo: torch.Tensor, steps: int, strength: float = 1.0,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """photo (3, H, W) uint8 (or float in [0, 1]) -> the stylized photo, (3, H, W) uint8, blended
        with the photo by `strength` as the models' outputs are (networks.py; 0 gives back the photo:
        scaling the style term instead barely shows, the optimum at a fifth of it looks like the
        whole); progress(step, steps) after every step."""
        if photo.dtype != torch.uint8:  # float in [0, 1], as the Stylizers take too
            photo = photo.mul(255).round().clamp(0, 255).to(torch.uint8)
        if strength == 0 or steps == 0:
            return photo.clone()
        x = photo.numpy()
        shape = scale.work_shape(x.shape[1], x.shape[2], {"work_size": OPTIMIZE_SIZE})
        small = scale.resize(x, shape) if shape else x
        y = self.optimize(torch.from_numpy(small), steps, progress)
        y = scale.restore(y, small, x) if shape else y
        if strength < 1:
            y = np.clip(np.rint(x + strength * (y.astype(np.float32) - x)), 0, 255).astype(np.uint8)
        return torch.from_numpy(y)

    def optimize(self, photo: torch.Tensor, steps: int, progress: Callable[[int, int], None] | None) -> np.ndarray:
        """Photo (3, h, w) uint8 at the size it is optimized at -> (3, h, w) uint8 array."""
        t = TrainConfig()  # the models' content and style weights: one place for them
        weights = {"content": t.content_loss_weight, "style": t.style_loss_weight, "tv": self.tv}
        kernel = (_BINOMIAL[:, None] * _BINOMIAL[None] / 16).expand(3, 1, 3, 3).to(self.device)
        x = photo[None].float().div(255).to(self.device)
        y = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([y], lr=LR)
        draws = torch.Generator().manual_seed(0)  # the same photo gives the same picture
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            shift = (*draw_shift(OPTIMIZE_JITTER, draws), OPTIMIZE_JITTER)  # a new view each step (losses.py)
            self.loss(y, x, weights=weights, shift=shift)["total"].backward()
            for _ in range(self.smooth):
                y.grad = torch.nn.functional.conv2d(torch.nn.functional.pad(y.grad, (1, 1, 1, 1), mode="replicate"),
                                                    kernel, groups=3)
            opt.step()
            with torch.no_grad():
                y.clamp_(0, 1)
            if progress:
                progress(step + 1, steps)
        return y.detach()[0].mul(255).round().to(torch.uint8).cpu().numpy()


def painting_for(path: str, photo=None) -> torch.Tensor:
    """A painting as the optimization reads it (longest side STYLE_SIZE["adaptive"]); with a photo
    (uint8), recoloured to the photo's colours (--preserve-color --color-method match)."""
    from stylize.apply.color import match_colors
    from stylize.images import load_style

    painting = load_style(path, STYLE_SIZE["adaptive"])[1]
    return painting if photo is None else match_colors(painting, photo)


class OptimizingStylizer:
    """The engine (recipe.Stylizer) for --optimize: one painting, no model. It works at its own size
    (OPTIMIZE_SIZE, in Optimizer), so the recipe's work size, padding and palette do not apply."""

    name, has_strength, styles = "optimize", True, []
    apply: dict = {}
    multiple, least = 1, 0
    budget = 0  # every photo is read, optimized and written on its own: minutes each, nothing to queue

    def __init__(self, steps: int, device: str = "auto", progress: Callable[[int, int], None] | None = None):
        from stylize.devices import pick_device

        self.steps, self.device, self.progress = steps, pick_device(device), progress
        self._optimizers: dict = {}

    def load(self, path, max_size: int | None = None):
        from stylize.images import read_array

        return read_array(path, max_size, uint8=True)

    @staticmethod
    def load_mask(path, size):
        from stylize.errors import StylizeError

        raise StylizeError("--optimize takes one painting, without --mask")

    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False) -> Look:
        """The painting's Optimizer (its targets), cached by the painting's and the photo's content."""
        from stylize.errors import StylizeError
        from stylize.apply.mixing import style_image

        if not specs or len(specs) != 1:
            raise StylizeError("--optimize takes one painting: --style PAINTING.jpg")
        path = style_image(specs[0])[0]
        photo = photo if match_color else None
        key = (recipe.file_key(path), recipe.content_key(photo) if photo is not None else None)
        if key not in self._optimizers:
            self._optimizers = {key: Optimizer(painting_for(path, photo), self.device)}  # one at a time
        return Look(np.ones(1, np.float32), None, tuple(specs), self._optimizers[key])

    def network(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        return look.data(torch.from_numpy(x), self.steps, strength, self.progress).numpy()

    def run(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        """recipe.run with this engine."""
        return recipe.run(self, x, look, strength)
