"""Perceptual loss: content, style (Gram or mean/std), total variation, and the strength-0 pixel term.

Departure from Johnson et al.: each content and style term is divided by the size of its target
(relative squared error), instead of using raw MSE with weights like 1e5 and 1e10. Raw magnitudes
depend on the loss network (ImageNet and random VGG features differ by orders of magnitude) and on
the layer, so relative errors let one set of weights serve every loss network and balance the layers.
"""
from __future__ import annotations

import torch
from torch import nn

from .vgg import VGGFeatures

from .settings import STYLE_LOSSES


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalized by feature size: (B, C, H, W) -> (B, C, C)."""
    b, c, h, w = f.shape
    if not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        m = f.float().permute(0, 2, 3, 1).reshape(b, h * w, c)  # NHWC features: a view, not a transpose copy
        return m.transpose(1, 2) @ m / (c * h * w)
    f = f.float().reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def mean_std(f: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise mean and standard deviation: (B, C, H, W) -> two (B, C)."""
    var, mean = torch.var_mean(f.float(), dim=(2, 3), correction=0)
    return mean, (var + eps).sqrt()


def style_stats(f: torch.Tensor, kind: str) -> torch.Tensor:
    """The statistic the style loss compares, flattened to (B, D)."""
    if kind == "gram":
        return gram(f).flatten(1)
    mean, std = mean_std(f)
    return torch.cat([mean, std], dim=1)


def total_variation(y: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, per example: (B,)."""
    dh = (y[:, :, 1:, :] - y[:, :, :-1, :]).float().pow(2).mean(dim=(1, 2, 3))
    dw = (y[:, :, :, 1:] - y[:, :, :, :-1]).float().pow(2).mean(dim=(1, 2, 3))
    return dh + dw


def relative_error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example squared error divided by the target's squared size: (B, ...) -> (B,)."""
    dims = tuple(range(1, y.dim()))
    return (y.float() - target.float()).pow(2).sum(dims) / target.float().pow(2).sum(dims).clamp_min(1e-8)


class PerceptualLoss(nn.Module):
    """Holds the loss network and the style targets; returns per-term losses averaged over the batch."""

    def __init__(self, net: VGGFeatures, content_layers, style_layers, style_loss: str = "gram"):
        super().__init__()
        if style_loss not in STYLE_LOSSES:
            raise ValueError(f"unknown style loss {style_loss!r}")
        self.net = net
        self.content_layers = list(content_layers)
        self.style_layers = list(style_layers)
        self.style_loss = style_loss
        self.targets: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def set_styles(self, images: list[torch.Tensor]) -> None:
        """Compute each style image's target statistics; images are (3, H, W), any size."""
        per_style = [self.net(img[None]) for img in images]
        self.targets = {
            layer: torch.cat([style_stats(f[layer], self.style_loss) for f in per_style])
            for layer in self.style_layers
        }

    def forward(self, y, x, style_index=None, strength=None, weights=None) -> dict[str, torch.Tensor]:
        """y: output, x: content, style_index: (B,) which style each example is trained on,
        strength: (B,) in [0, 1] scaling the style term, weights: dict of term weights."""
        fy, fx = self.net(y), self.net(x)
        b = y.shape[0]
        if style_index is None:
            style_index = torch.zeros(b, dtype=torch.long, device=y.device)
        content = sum(relative_error(fy[l], fx[l].detach()) for l in self.content_layers) / len(self.content_layers)
        style = sum(
            relative_error(style_stats(fy[l], self.style_loss), self.targets[l][style_index])
            for l in self.style_layers
        ) / len(self.style_layers)
        s = torch.ones(b, device=y.device) if strength is None else strength.float()
        terms = {
            "content": content.mean(),
            "style": (s * style).mean(),
            "tv": total_variation(y).mean(),
            # at strength s < 1 the output is pulled toward the content pixels, so strength 0 is the photo
            "pixel": ((1 - s) * (y.float() - x.float()).pow(2).mean(dim=(1, 2, 3))).mean(),
        }
        if weights is not None:
            terms["total"] = sum(weights[k] * v for k, v in terms.items())
        return terms
