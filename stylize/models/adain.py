"""Arbitrary style transfer with adaptive instance norm (Huang & Belongie 2017).

A fixed VGG-19 encoder (up to relu4_1) encodes photo and style; AdaIN gives the photo's features the
channel-wise mean and standard deviation of the style's; a trained decoder turns them into an image.

Why an encoder-decoder and not the Johnson transformer with AdaIN layers: in the transformer, every
norm layer would need style statistics of its own channels, which a style image does not give
directly (it would take a style-prediction network, as in Ghiasi et al. 2017, that must generalise to
unseen paintings). The encoder-decoder takes statistics straight from the style image's VGG features,
so any painting works with no extra network, and alpha and style interpolation act on features.

Departure from the paper: the encoder's weights are stored in the model file, so `apply` needs
neither torchvision nor a download, and a model trained on random VGG features (offline) carries
exactly the encoder it was trained with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stylize.features.losses import mean_std
from stylize.features.vgg import vgg_features

ENCODER_TAPS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]


@dataclass
class AdaINConfig:
    encoder: str = "vgg19"  # the loss network it was built from (its weights are in the file)
    width: int = 64  # decoder channels at full resolution (the paper: 64)

    def to_dict(self) -> dict:
        return asdict(self)


def adain(content: torch.Tensor, style_mean: torch.Tensor, style_std: torch.Tensor) -> torch.Tensor:
    """Give content features (B, C, H, W) the per-channel mean and std (B, C) of the style."""
    mean, std = mean_std(content)
    normalized = (content.float() - mean[..., None, None]) / std[..., None, None]
    return (normalized * style_std[..., None, None] + style_mean[..., None, None]).to(content.dtype)


class Encoder(nn.Module):
    """VGG-19 conv layers up to relu4_1 on [0, 1] images, ImageNet input normalization."""

    def __init__(self):
        super().__init__()
        self.features = vgg_features("vgg19")[:21]  # to relu4_1; torchvision's indices, so its weights load
        for m in self.features:
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.tap_index = {1: "relu1_1", 6: "relu2_1", 11: "relu3_1", 20: "relu4_1"}
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, all_taps: bool = False):
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        taps = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.tap_index and all_taps:
                taps[self.tap_index[i]] = x
        return taps if all_taps else x


class Decoder(nn.Module):
    """Mirror of the encoder: relu4_1 features (512 channels) back to an image; nearest upsampling."""

    def __init__(self, width: int = 64):
        super().__init__()
        w = width
        plan = [(8 * w, 4 * w), "up", (4 * w, 4 * w), (4 * w, 4 * w), (4 * w, 4 * w), (4 * w, 2 * w), "up",
                (2 * w, 2 * w), (2 * w, w), "up", (w, w), (w, 3)]
        layers = []
        for i, p in enumerate(plan):
            if p == "up":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                continue
            cin, cout = p
            cin = 512 if i == 0 else cin
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3)]
            if i < len(plan) - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        for m in self.net:  # signal-preserving start: PyTorch's default init shrinks it layer by layer
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        last = self.net[-1]  # start near mid-grey, far from the [0, 1] clamp, so early outputs still differ
        last.weight.data.mul_(0.05)
        last.bias.data.fill_(0.5)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t)


class AdaINNet(nn.Module):
    def __init__(self, cfg: AdaINConfig | None = None):
        super().__init__()
        self.cfg = cfg or AdaINConfig()
        self.encoder = Encoder()
        self.decoder = Decoder(self.cfg.width)

    def style_stats(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) style images -> relu4_1 mean and std, each (B, 512)."""
        return mean_std(self.encoder(style))

    def target(self, content_feat, stats, weights=None, masks=None, alpha: float | torch.Tensor = 1.0):
        """The decoder's input: AdaIN targets of one or more styles, mixed, then blended with the photo.

        stats: list of (mean, std) per style; weights: per-style floats (interpolation, sum 1);
        masks: per-style (B, 1, h, w) maps in [0, 1] (spatial control) instead of weights.
        """
        parts = [adain(content_feat, m, s) for m, s in stats]
        if masks is not None:
            size = content_feat.shape[-2:]
            masks = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in masks]
            t = sum(m * p for m, p in zip(masks, parts))
        else:
            weights = weights or [1.0 / len(parts)] * len(parts)
            t = sum(w * p for w, p in zip(weights, parts))
        if not torch.is_tensor(alpha):
            alpha = torch.tensor(alpha, device=content_feat.device)
        alpha = alpha.to(content_feat.dtype).view(-1, 1, 1, 1)
        return alpha * t + (1 - alpha) * content_feat

    def forward(self, x, stats, weights=None, masks=None, alpha=1.0):
        return self.decoder(self.target(self.encoder(x), stats, weights, masks, alpha))
