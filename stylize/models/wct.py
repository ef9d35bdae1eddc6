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
- The transform (wct): the painting's covariance's square root by an eigendecomposition (symmetric:
  the same as the paper's SVD), in float64, once per painting; the photo's inverse square root by
  the coupled Newton-Schulz iteration (inverse_sqrt), matrix products in float32, so that an ONNX
  graph, which has no eigendecomposition, carries the whole photo side (engines/export.py, "paint").
  Both with a small eps * I added rather than small eigenvalues truncated, so the matrices keep
  their size and a flat photo (rank-deficient features) gives no infinities. Against the photo's
  eigendecomposition in float64, the shipped model's whitened features differed by 0.02%, 0.01%
  and 0.4% at its three levels (relative; three photos; half of the last is the float32 covariance's
  own rounding), and its pictures by at most 2 levels of 255 (0.05% of values off at all).
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
    in float32, centred first: a float64 copy of a photo's fine level took 0.2 s and 200 MB more).
    A painting's, for `colouring`; wct takes the photo's in float32 itself."""
    a = features[0].reshape(features.shape[1], -1).float()
    mean = a.mean(1, keepdim=True)
    a = a - mean
    return mean.double().cpu(), (a @ a.T).double().cpu() / max(a.shape[1] - 1, 1)


def colouring(mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A painting's (mean, covariance) -> (mean, the covariance's square root): what wct gives whitened features."""
    e, v = torch.linalg.eigh(cov + EPS * torch.eye(cov.shape[0], dtype=cov.dtype))
    return mean, (v * e.clamp_min(0).sqrt()) @ v.T


# Newton-Schulz steps: an eigenvalue x of the trace-scaled matrix grows about 2.25-fold a step until
# near 1, then converges quadratically. Features are ReLU6 outputs (each channel's variance at most
# 9), so x >= EPS / (9 C): for block8's 480 channels 28 steps bring the smallest within 1e-4; on real
# features the error stopped falling after 24 (the float32 covariance's own error remains).
NS_STEPS = 28


def inverse_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """(C, C) covariance -> (cov + EPS * I)^(-1/2) by the coupled Newton-Schulz iteration (Higham,
    "Functions of Matrices", 2008; matrix products only, so an ONNX graph carries it). Scaled by the
    trace, a positive definite matrix's eigenvalues lie in (0, 1], where it converges; EPS * I also
    lifts a float32 covariance's rounding (eigenvalues down to -1e-7 on real features) above 0, where
    a negative eigenvalue would make it diverge."""
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    a = cov + EPS * eye
    n = (a * eye).sum()  # the trace, written so the ONNX exporter takes it
    y, z = a / n, eye
    for _ in range(NS_STEPS):
        t = 1.5 * eye - 0.5 * (z @ y)
        y, z = y @ t, t @ z
    return z / n.sqrt()


def wct(content: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]], alpha,
        masks: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The photo's features (1, C, H, W) whitened and given each target's (mean, colouring), blended
    by `masks` ((1, 1, H, W) each; without them, one target), then blended with the features: alpha
    (a number or a (1,) tensor) of the transform. All in the features' float32, traceable: the
    exported graph (engines/export.py, "paint") runs this very function."""
    c, h, w = content.shape[1:]
    a = content[0].reshape(c, -1).float()
    mean = a.mean(1, keepdim=True)
    a = a - mean  # centred first: the covariance summed in float32 loses less
    whiten = inverse_sqrt(a @ a.T / max(h * w - 1, 1))
    out = 0
    for i, (m, colour) in enumerate(targets):
        # the one C x C matrix applied to the centred features: no large shift to cancel in float32
        y = torch.addmm(m.to(a), colour.to(a) @ whiten, a).reshape(1, c, h, w)
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
