"""WCT's settings and its numpy side, torch-free: what the ONNX Runtime engine (engines/onnx_wct.py)
works out between a painting's encoder graphs and the paint graph, and what models/wct.py (PyTorch)
shares.

As models/wct.colouring: a painting's statistics summed in float32 after centring (by the encoder
graph), its covariance's square root by an eigendecomposition in float64 (eps * I added), once per
painting; ONNX has no eigendecomposition. The photo's whitening is in the paint graph (models/wct.wct).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

# EfficientNet-Lite0 expansion taps a decoder can invert: tap -> (channels, halvings of resolution)
LEVELS = {"block8_expand": (480, 4), "block5_expand": (240, 3), "block3_expand": (144, 2), "block1_expand": (96, 1)}
ENCODERS = ("efficientnet-lite0",)
EPS = 1e-5


@dataclass
class WCTConfig:
    """A WCT model's settings (its record's "net")."""
    # tap:strength, coarse to fine, as the study's --levels; a tuple of (tap, strength) pairs is taken too
    levels: str | tuple = "block5_expand:1,block3_expand:0.6,block1_expand:0.3"
    width: int = 16  # a decoder's channels at full resolution, doubled at each halving past the first
    style_size: int = 512  # the painting's longer side, in pixels, at most
    detail: float = 2.0  # radius of the Gaussian blur whose residual (the photo's finest band) is added back; 0: none
    encoder: str = "efficientnet-lite0"

    def __post_init__(self):
        pairs = self.levels
        if isinstance(pairs, str):
            try:
                pairs = tuple((t.strip(), float(s)) for t, _, s in (p.partition(":") for p in pairs.split(",")))
            except ValueError:
                raise ValueError(f"levels {self.levels!r}: not tap:strength,...") from None
        taps = [t for t, s in pairs if t in LEVELS and 0 <= s <= 1]
        if not pairs or len(set(taps)) < len(pairs):
            raise ValueError(f"levels {self.levels!r}: each of {', '.join(LEVELS)} at most once, "
                             "with a strength in [0, 1]")
        self.levels = tuple((t, float(s)) for t, s in pairs)
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder {self.encoder!r} (known: {', '.join(ENCODERS)})")
        if not (isinstance(self.width, int) and self.width >= 1 and isinstance(self.style_size, int)
                and self.style_size >= 16 and 0 <= self.detail <= 64):
            raise ValueError("width, style_size or detail out of range")

    @property
    def multiple(self) -> int:
        """Every level's decoder gives back its input's size at a multiple of this."""
        return 2 ** max(LEVELS[t][1] for t, _ in self.levels)

    def to_dict(self) -> dict:
        return {"levels": ",".join(f"{t}:{s:g}" for t, s in self.levels), "width": self.width,
                "style_size": self.style_size, "detail": self.detail, "encoder": self.encoder}


def statistics(mean: np.ndarray, gram: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Features' float32 mean (C, 1) and centred Gram matrix (C, C) over n positions (the encoder
    graph's) -> their mean and covariance in float64, as models/wct.covariance gives them."""
    return mean.astype(np.float64), gram.astype(np.float64) / max(n - 1, 1)


def mix(stats: list, weights: list[float]):
    """Several paintings' (mean, covariance) -> those of their features pooled with these weights
    (numpy arrays or torch tensors alike)."""
    mean = sum(w * m for (m, _), w in zip(stats, weights))
    return mean, sum(w * (c + (m - mean) @ (m - mean).T) for (m, c), w in zip(stats, weights))


def colouring(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A painting's (mean, covariance) -> (mean, the covariance's square root): what wct gives whitened features."""
    e, v = np.linalg.eigh(cov + EPS * np.eye(cov.shape[0]))
    return mean, (v * np.sqrt(np.maximum(e, 0))) @ v.T


def fine_band(x: np.ndarray, radius: float) -> np.ndarray:
    """(3, H, W) uint8 -> its finest band, the picture less its Gaussian blur (Pillow's), float32."""
    im = Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))
    blurred = np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), np.float32).transpose(2, 0, 1)
    return x.astype(np.float32) - blurred
