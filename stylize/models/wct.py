"""Any painting with no painting at training time: WCT on EfficientNet-Lite0 features (Li et al. 2017,
"Universal Style Transfer via Feature Transforms"; issue 30, studies/wct_decoders.py).

At each of a few encoder levels, coarse to fine, the picture so far is encoded, its features are
whitened and given the painting's covariance and mean, and that level's decoder turns them back
into a picture; last, the photo's finest band (the photo less its Gaussian blur), which the
decoders lose, is added back. Each decoder was trained only to invert the frozen encoder, on photos.

Departures from the paper, and why:
- The encoder is ImageNet EfficientNet-Lite0 (features/efficientnet.py; VGG's weights cannot be had
  offline here), its ReLU6 expansion taps (LEVELS); its weights are stored in the model file, as
  AdaIN's are, so a file carries exactly the encoder its decoders invert.
- Three levels at strengths 1, 0.6 and 0.3 (WCTConfig.levels), not five at full strength: block8
  (1/16) at full strength lost the photo's subject in the pilot, and the finer levels at full
  strength added speckle more than style.
- The transform (wct): an eigendecomposition of each covariance (symmetric: the same as the paper's
  SVD), in float64, with a small eps * I added and the photo's eigenvalues clamped to at least eps
  rather than truncated, so the matrices keep their size and a flat photo (rank-deficient features)
  gives no infinities.
- Several paintings are mixed by their statistics: the weighted mixture's mean and covariance (as if
  their features were pooled), one colouring per level, where the paper blends the separately
  transformed features; a mask blends each painting's colouring of the one whitened photo.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stylize.features.efficientnet import LiteFeatures
# the settings, mixing and the finest band are torch-free, shared with the ONNX Runtime engine
from stylize.models.whitening import EPS, LEVELS, WCTConfig


def decoder(level: str, width: int = 16) -> nn.Sequential:
    """One level's features back to a picture: 3x3 convolutions and nearest upsampling, the channels
    halving with each doubling of resolution down to `width` (the study's 128, 64, 32, 16 at 16)."""
    channels, halvings = LEVELS[level]

    def at(h: int) -> int:  # channels at 1/2**h resolution
        return width << max(h - 1, 0)

    c = at(halvings)
    layers = [nn.ReflectionPad2d(1), nn.Conv2d(channels, c, 3), nn.ReLU()]
    for h in range(halvings - 1, -1, -1):
        out = at(h)
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(c, out, 3), nn.ReLU(),
                   nn.ReflectionPad2d(1), nn.Conv2d(out, out, 3), nn.ReLU()]
        c = out
    return nn.Sequential(*layers, nn.ReflectionPad2d(1), nn.Conv2d(c, 3, 3))


def covariance(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, H, W) features -> their mean (C, 1) and covariance (C, C), float64 on the CPU (summed
    in float32, centred first: a float64 copy of a photo's fine level took 0.2 s and 200 MB more)."""
    a = features[0].reshape(features.shape[1], -1).float()
    mean = a.mean(1, keepdim=True)
    a = a - mean
    return mean.double().cpu(), (a @ a.T).double().cpu() / max(a.shape[1] - 1, 1)


def colouring(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A painting's (mean, covariance) -> (mean, the covariance's square root): what wct gives whitened features."""
    e, v = torch.linalg.eigh(cov + EPS * torch.eye(cov.shape[0], dtype=cov.dtype))
    return mean, (v * e.clamp_min(0).sqrt()) @ v.T


def wct(content: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]], alpha: float,
        masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The photo's features (1, C, H, W) whitened and given each target's (mean, colouring), blended
    by `masks` ((1, 1, H, W) each; without them, one target), then blended with the features: alpha of
    the transform. Whitening and colouring are one C x C matrix, made in float64 and applied in float32."""
    c, h, w = content.shape[1:]
    mean, cov = covariance(content)
    e, v = torch.linalg.eigh(cov + EPS * torch.eye(c, dtype=cov.dtype))
    whiten = (v * e.clamp_min(EPS).rsqrt()) @ v.T
    a = content[0].reshape(c, -1).float()
    out = 0
    for i, (m, colour) in enumerate(targets):
        t = colour @ whiten
        shift, t = (m - t @ mean).float().to(a.device), t.float().to(a.device)
        y = torch.addmm(shift, t, a).reshape(1, c, h, w)
        out = out + (y if masks is None else masks[i] * y)
    return alpha * out + (1 - alpha) * content


def picture(net: "WCTNet", x, targets: list[dict], strength: float = 1.0, masks: list[torch.Tensor] | None = None):
    """(3, H, W) uint8 numpy photo, H and W multiples of net.multiple -> what the model paints, uint8:
    the levels' picture plus the photo's finest band (which the decoders lose). At strength 0 the photo
    itself: the decoders' reconstruction would be a slightly softer copy of it. The PyTorch engine
    (apply/engines/wct.py) and the distillation teacher (train/teacher.py) both paint with this."""
    import numpy as np

    from stylize.models.whitening import fine_band

    if strength == 0:
        return x
    device = next(net.parameters()).device
    with torch.inference_mode():
        y = net(torch.from_numpy(x)[None].to(device).float().div_(255), targets, strength, masks)
        y = y[0].mul_(255).cpu().numpy()
    if net.cfg.detail:
        y += fine_band(x, net.cfg.detail)
    return np.clip(y, 0, 255).round().astype(np.uint8)


class WCTNet(nn.Module):
    """The frozen encoder and one decoder per level."""

    def __init__(self, cfg: WCTConfig | None = None):
        super().__init__()
        self.cfg = cfg or WCTConfig()
        self.taps = [t for t, _ in self.cfg.levels]
        self.encoder = LiteFeatures(self.taps)  # its weights come from the model file
        self.decoders = nn.ModuleDict({t: decoder(t, self.cfg.width) for t in self.taps})
        self.multiple = self.cfg.multiple  # every level's decoder gives back its size

    def style_stats(self, painting: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(1, 3, H, W) painting in [0, 1] -> each level's (mean, covariance)."""
        feats = self.encoder(painting)
        return {t: covariance(feats[t]) for t in self.taps}

    def forward(self, x: torch.Tensor, targets: list[dict], strength: float = 1.0,
                masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(1, 3, H, W) in [0, 1], H and W multiples of `multiple` -> the picture in [0, 1] before the
        band is added back; targets: per painting (one without masks) {tap: (mean, colouring)};
        masks: per painting (1, 1, H, W); each level's strength times `strength`."""
        for t, s in self.cfg.levels:
            f = self.encoder(x, last=t)[t]
            m = None if masks is None else [F.interpolate(k, size=f.shape[-2:], mode="bilinear", align_corners=False)
                                            for k in masks]
            x = self.decoders[t](wct(f, [p[t] for p in targets], s * strength, m)).clamp(0, 1)
        return x
