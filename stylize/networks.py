"""The feed-forward style network of Johnson et al. (2016), with a selectable norm (see norms.py).

Departures from the paper, and why:
- upsampling is nearest-neighbour followed by a convolution, not a transposed convolution, which
  leaves checkerboard artefacts (Odena et al. 2016);
- reflection padding everywhere instead of zero padding, which darkens borders;
- the output is a plain convolution on [0, 1] images (clamped at apply time) rather than a scaled
  tanh, which saturates and slows early training;
- a strength-conditioned network (NetConfig.strength) outputs photo + s * residual(photo, s): strength
  0 is the photo exactly, and the residual itself depends on s through the norm layers (norms.py), so
  intermediate strengths are a stylization trained for that strength, not a cross-fade of pixels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .norms import Condition, make_norm


@dataclass
class NetConfig:
    norm: str = "instance"
    num_styles: int = 1
    strength: bool = True  # conditioned on style strength (see norms.py)
    width: int = 32  # channels of the first layer; Johnson et al. used 32

    def to_dict(self) -> dict:
        return asdict(self)


class ConvNorm(nn.Module):
    def __init__(self, cin, cout, kernel, stride, cfg: NetConfig, relu=True, upsample=False):
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)
        self.norm = make_norm(cfg.norm, cout, cfg.num_styles, cfg.strength)
        self.relu = relu

    def forward(self, x: torch.Tensor, cond: Condition | None) -> torch.Tensor:
        return self.finish(self.convolve(x), cond)

    # the two halves are separate so that tiling.py can measure the norm's input between them
    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(self.pad(x))

    def finish(self, z: torch.Tensor, cond: Condition | None) -> torch.Tensor:
        z = self.norm(z, cond)
        return torch.relu(z) if self.relu else z


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, cfg: NetConfig):
        super().__init__()
        self.a = ConvNorm(channels, channels, 3, 1, cfg)
        self.b = ConvNorm(channels, channels, 3, 1, cfg, relu=False)

    def forward(self, x, cond):
        return x + self.b(self.a(x, cond), cond)


class TransformerNet(nn.Module):
    """Image in [0, 1] -> stylized image in [0, 1] (unclamped during training)."""

    def __init__(self, cfg: NetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or NetConfig()
        w = cfg.width
        self.down = nn.ModuleList([
            ConvNorm(3, w, 9, 1, cfg),
            ConvNorm(w, 2 * w, 3, 2, cfg),
            ConvNorm(2 * w, 4 * w, 3, 2, cfg),
        ])
        self.res = nn.ModuleList([ResidualBlock(4 * w, cfg) for _ in range(5)])
        self.up = nn.ModuleList([
            ConvNorm(4 * w, 2 * w, 3, 1, cfg, upsample=True),
            ConvNorm(2 * w, w, 3, 1, cfg, upsample=True),
        ])
        self.out_pad = nn.ReflectionPad2d(4)
        self.out = nn.Conv2d(w, 3, 9, 1)

    def forward(self, x: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        h = x
        for layer in (*self.down, *self.res, *self.up):
            h = layer(h, cond)
        return self.head(x, h, cond)

    def head(self, x: torch.Tensor, h: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """The output layer: photo x and last features h -> image."""
        y = self.out(self.out_pad(h))
        if not self.cfg.strength:
            return y
        s = cond.strength if cond is not None and cond.strength is not None else None
        return x + y if s is None else x + s.to(y.dtype).view(-1, 1, 1, 1) * y

    def norms(self):
        return [m for m in self.modules() if hasattr(m, "affine") and hasattr(m, "stat")]
