"""Normalization layers for the transformer network, chosen by name through `make_norm`.

Every norm is two parts: a statistic that normalizes the features (instance, batch, layer, group or
none) and a `ConditionalAffine` that scales and shifts them. The affine is where styles live:

- one (gamma, beta) pair per style (Dumoulin et al.'s conditional instance norm; a single-style model
  is the N=1 case, so "instance" and "conditional" differ only in how many styles they hold);
- mixing styles is a weighted sum of those pairs, and a spatial weight map gives masks for free;
- an arbitrary-style model (`style_dim` > 0) has no table: each layer maps a painting's style
  embedding (style_prediction.py) to its pairs with a linear layer (Ghiasi et al. 2017). The map is
  affine, so mixing embeddings and mixing the pairs they give are the same thing, and `bake` turns a
  model and N paintings into an ordinary N-style network (so tiling, masks and export need nothing new);
- with `strength=True` there is one more pair for "no style", and a strength s in [0, 1] interpolates
  from it to the style's pair (after Babaeizadeh & Ghiasi's adjustable style transfer, which predict
  the norm parameters from s with a small network; a linear map is enough here and keeps mixing linear).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from stylize.settings import TRANSFORMER_NORMS


@dataclass
class Condition:
    """What a forward pass is conditioned on.

    styles: (B, N) mixing weights, or (B, N, H, W) spatial weight maps (masks); rows sum to 1.
    strength: (B,) style strength in [0, 1], or None for full strength.
    embeddings: (N, D) the N styles' embeddings, for an arbitrary-style network (style_dim > 0).
    """

    styles: torch.Tensor | None = None
    strength: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


class ConditionalAffine(nn.Module):
    def __init__(self, channels: int, num_styles: int = 1, strength: bool = False, style_dim: int = 0):
        super().__init__()
        if style_dim:  # pairs predicted from an embedding; starts near the identity (scale 1, shift 0)
            self.project = nn.Linear(style_dim, 2 * channels)
            nn.init.normal_(self.project.weight, std=0.01)
            with torch.no_grad():
                self.project.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        else:
            self.project = None
            self.weight = nn.Parameter(torch.ones(num_styles, channels))
            self.bias = nn.Parameter(torch.zeros(num_styles, channels))
        if strength:
            self.weight0 = nn.Parameter(torch.ones(channels))
            self.bias0 = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight0", None)
            self.register_parameter("bias0", None)

    def _mix(self, params: torch.Tensor, styles: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if styles is None:  # the first style, the common single-style case
            return params[0].view(1, -1, 1, 1)
        styles = styles.to(params.dtype)
        if styles.dim() == 2:
            return (styles @ params)[:, :, None, None]
        if styles.shape[-2:] != x.shape[-2:]:
            styles = F.interpolate(styles, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.einsum("bnhw,nc->bchw", styles, params)

    def tables(self, embeddings: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (scale, shift) pairs, (N, C) each: the stored table, or predicted from (N, D) embeddings."""
        if self.project is None:
            return self.weight, self.bias
        if embeddings is None:
            raise ValueError("an arbitrary-style network needs the styles' embeddings (Condition.embeddings)")
        return self.project(embeddings).chunk(2, dim=-1)

    def forward(self, x: torch.Tensor, cond: Condition | None) -> torch.Tensor:
        styles = cond.styles if cond is not None else None
        weight, bias = self.tables(cond.embeddings if cond is not None else None)
        w = self._mix(weight, styles, x)
        b = self._mix(bias, styles, x)
        if self.weight0 is not None and cond is not None and cond.strength is not None:
            s = cond.strength.to(w.dtype).view(-1, 1, 1, 1)
            w = self.weight0.view(1, -1, 1, 1) + s * (w - self.weight0.view(1, -1, 1, 1))
            b = self.bias0.view(1, -1, 1, 1) + s * (b - self.bias0.view(1, -1, 1, 1))
        return x * w.to(x.dtype) + b.to(x.dtype)


class InstanceStat(nn.Module):
    """Instance normalization without affine parameters.

    Statistics can be frozen (`frozen_stats`) so that a tiled apply normalizes every tile with the
    statistics of the whole image rather than its own (see inference.py).
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.record: list | None = None  # when a list, forward appends its (mean, var)
        self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None:
            mean, var = self.frozen
        else:
            var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
            if self.record is not None:
                self.record.append((mean, var))
        return ((x.float() - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)


class Norm(nn.Module):
    def __init__(self, stat: nn.Module, affine: ConditionalAffine):
        super().__init__()
        self.stat = stat
        self.affine = affine

    def forward(self, x: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        return self.affine(self.stat(x), cond)


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


def make_norm(kind: str, channels: int, num_styles: int = 1, strength: bool = False, style_dim: int = 0) -> Norm:
    """The one factory for every normalization the transformer network can use."""
    if kind in ("instance", "conditional", "adaptive"):
        stat: nn.Module = InstanceStat()
    elif kind == "batch":
        stat = nn.BatchNorm2d(channels, affine=False)
    elif kind == "layer":
        stat = nn.GroupNorm(1, channels, affine=False)
    elif kind == "group":
        stat = nn.GroupNorm(_groups(channels), channels, affine=False)
    elif kind == "none":
        stat = nn.Identity()
    else:
        raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(TRANSFORMER_NORMS)}")
    return Norm(stat, ConditionalAffine(channels, num_styles, strength, style_dim))
