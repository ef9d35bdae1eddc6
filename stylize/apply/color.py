"""Colour preservation (Gatys et al. 2016, "Preserving color in neural artistic style transfer").

luminance: stylize, then keep the output's luminance (Y of YCbCr) with the photo's chroma (CbCr).
match: before stylizing, give the style image the photo's colour mean and covariance (palette.py), so
the style contributes strokes and texture but no new palette (needs a style image: adaptive models).
"""
from __future__ import annotations

import torch

COLOR_METHODS = ("luminance", "match")
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> YCbCr with Cb, Cr centred on 0."""
    return torch.einsum("ij,jhw->ihw", _RGB_TO_YCBCR.to(x), x)


def to_rgb(y: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,jhw->ihw", torch.linalg.inv(_RGB_TO_YCBCR).to(y), y)


def keep_luminance(output: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """The output's luminance with the photo's chroma (float in [0, 1] or uint8 in; float out)."""
    output, photo = (t.float() / 255 if t.dtype == torch.uint8 else t for t in (output, photo))
    y = to_ycbcr(output)
    y[1:] = to_ycbcr(photo)[1:]
    return to_rgb(y).clamp(0, 1)


def match_colors(style: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """Linearly map the style's RGB distribution onto the photo's mean and covariance (palette.py)."""
    from stylize.apply import palette

    a, b = palette.transfer(palette.stats(style.detach().cpu().double().numpy()),
                            palette.stats(photo.detach().cpu().double().numpy()))
    out = torch.einsum("ij,jhw->ihw", torch.from_numpy(a), style.double().cpu()) + torch.from_numpy(b)[:, None, None]
    return out.to(style.dtype).clamp(0, 1).to(style.device)
