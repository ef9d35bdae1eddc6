"""The feed-forward style network of Johnson et al. (2016), with a selectable norm (see norms.py).

Departures from the paper, and why:
- upsampling is nearest-neighbour followed by a convolution, not a transposed convolution, which
  leaves checkerboard artefacts (Odena et al. 2016);
- reflection padding everywhere instead of zero padding, which darkens borders;
- the output is a plain convolution on [0, 1] images (clamped at apply time) rather than a scaled
  tanh, which saturates and slows early training;
- a strength-conditioned network (NetConfig.strength) outputs (1 - s) * photo + s * image(photo, s)
  (NetConfig.output "blend"): strength 0 is the photo exactly, and the image itself depends on s
  through the norm layers (norms.py), so intermediate strengths are a stylization trained for that
  strength, not a cross-fade of pixels. Models before it output photo + s * residual(photo, s)
  ("residual"): at full strength the network had to cancel the photo's own colours to repaint it,
  and saturated ones (an orange bridge, a purple sky) survived every painting's palette.

Two architectures (NetConfig.network): "johnson", the paper's, and "light", for CPUs, chosen by
measured apply time (bench/networks.py) and pictures:
- depthwise-separable residual convolutions (MobileNet's 3x3 depthwise then 1x1 pointwise), 5x5
  instead of 9x9 kernels at full resolution, and the last upsampling after the last 3x3 convolution
  instead of before it; at width 16, an eleventh of the paper's FLOPs at width 32;
- instance statistics only in the three encoder layers; the residual blocks and the upsampling
  layers keep their conditional scale and shift (styles, strength) but normalize nothing. With
  statistics there, training makes "droplets", bright saturated blobs in flat areas: the network
  hides a strong local spike in a feature map to control that layer's statistics (Karras et al.,
  StyleGAN2, 2020, who removed the normalization for the same reason). Measured with
  studies/droplets.py (before the late upsampling was adopted): the decoder's channel kurtosis falls
  from 26 (72 for "johnson" at width 16) to 8.5 and the blobs are gone (docs/droplets.jpg).
  "light-instance" keeps the statistics everywhere: the ablation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from stylize.models.norms import Condition, make_norm


@dataclass(frozen=True)
class Architecture:
    end_kernel: int  # kernel of the first and the last convolution (full resolution)
    blocks: int  # residual blocks at quarter resolution
    separable: bool  # residual convolutions depthwise-separable
    # the layers that normalize with statistics: "all", or "encoder" (the three downsampling layers;
    # the residual blocks and the upsampling layers keep only their conditional scale and shift)
    stats: str = "all"
    # the last upsampling comes after the last 3x3 convolution, not before it: that convolution runs
    # at half resolution, which saves a full-resolution tensor of twice the width (a CPU's memory traffic)
    late_upsample: bool = False


ARCHITECTURES = {
    "johnson": Architecture(9, 5, False),
    "light": Architecture(5, 5, True, "encoder", True),
    # the droplet ablation: the light network with instance statistics in every layer (studies/droplets.py)
    "light-instance": Architecture(5, 5, True, "all", True),
}


@dataclass
class NetConfig:
    norm: str = "instance"
    num_styles: int = 1
    strength: bool = True  # conditioned on style strength (see norms.py)
    width: int = 32  # channels of the first layer; Johnson et al. used 32
    network: str = "johnson"  # a key of ARCHITECTURES; model files from before it are johnson
    style_dim: int = 0  # > 0: an arbitrary-style network, its norm parameters predicted from an embedding
    output: str = "residual"  # with strength: "blend" or "residual" (model files from before it; see above)

    def to_dict(self) -> dict:
        return asdict(self)


class Separable(nn.Sequential):
    """A depthwise convolution then a pointwise one: about k*k/cout + 1/k^2 of a full convolution's cost."""

    def __init__(self, cin, cout, kernel, stride):
        super().__init__(nn.Conv2d(cin, cin, kernel, stride, groups=cin, bias=False), nn.Conv2d(cin, cout, 1))


class ConvNorm(nn.Module):
    def __init__(self, cin, cout, kernel, stride, cfg: NetConfig, relu=True, upsample=False, separable=False):
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = (Separable if separable else nn.Conv2d)(cin, cout, kernel, stride)
        self.norm = make_norm(cfg.norm, cout, cfg.num_styles, cfg.strength, cfg.style_dim)
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
    """Two units, a and b, whose output is added to the block's input (TransformerNet.units runs it)."""

    def __init__(self, channels: int, cfg: NetConfig, separable: bool = False):
        super().__init__()
        self.a = ConvNorm(channels, channels, 3, 1, cfg, separable=separable)
        self.b = ConvNorm(channels, channels, 3, 1, cfg, relu=False, separable=separable)


class TransformerNet(nn.Module):
    """Image in [0, 1] -> stylized image in [0, 1] (unclamped during training)."""

    def __init__(self, cfg: NetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or NetConfig()
        if cfg.network not in ARCHITECTURES:
            raise ValueError(f"unknown network {cfg.network!r}; choose one of {', '.join(ARCHITECTURES)}")
        arch, w = ARCHITECTURES[cfg.network], cfg.width
        first, rest = (replace(cfg, norm="instance"), replace(cfg, norm="batch")) if cfg.norm == "ibn" else (cfg, cfg)
        self.down = nn.ModuleList([
            ConvNorm(3, w, arch.end_kernel, 1, first),
            ConvNorm(w, 2 * w, 3, 2, first),
            ConvNorm(2 * w, 4 * w, 3, 2, first),
        ])
        after = rest if arch.stats == "all" else replace(cfg, norm="none")  # the layers after the encoder
        self.res = nn.ModuleList([ResidualBlock(4 * w, after, arch.separable) for _ in range(arch.blocks)])
        self.late_upsample = arch.late_upsample
        self.up = nn.ModuleList([
            ConvNorm(4 * w, 2 * w, 3, 1, after, upsample=True),
            ConvNorm(2 * w, w, 3, 1, after, upsample=not arch.late_upsample),
        ])
        self.out_pad = nn.ReflectionPad2d(arch.end_kernel // 2)
        self.out = nn.Conv2d(w, 3, arch.end_kernel, 1)

    def units(self) -> list[tuple[ConvNorm, str]]:
        """The forward pass as the sequence of its ConvNorm units, each with its role: "plain", or a
        residual block's first ("a") or second ("b") unit; the stream entering an "a" unit is added
        to the output of the "b" unit after it. forward() runs exactly this sequence, and tiling.py
        steps through it one convolution at a time, so a layer added here is in both."""
        return ([(m, "plain") for m in self.down]
                + [(u, role) for block in self.res for u, role in ((block.a, "a"), (block.b, "b"))]
                + [(m, "plain") for m in self.up])

    def forward(self, x: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        h, skip = x, None
        for unit, role in self.units():
            if role == "a":
                skip = h
            h = unit(h, cond)
            if role == "b":
                h = skip + h
        return self.head(x, h, cond)

    def head(self, x: torch.Tensor, h: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        """The output layer: photo x and last features h -> image."""
        if self.late_upsample:
            h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
        y = self.out(self.out_pad(h))
        if not self.cfg.strength:
            return y
        s = cond.strength if cond is not None and cond.strength is not None else None
        if self.cfg.output == "blend":  # y is the stylized image
            return y if s is None else x + s.to(y.dtype).view(-1, 1, 1, 1) * (y - x)
        return x + y if s is None else x + s.to(y.dtype).view(-1, 1, 1, 1) * y  # y is a residual

    def norms(self):
        return [m for m in self.modules() if hasattr(m, "affine") and hasattr(m, "stat")]
