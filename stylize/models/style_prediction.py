"""Arbitrary style transfer with a style-prediction network (Ghiasi et al. 2017).

A painting goes through the frozen loss network; the channel-wise means and standard deviations of
its style layers, through one linear bottleneck, make a style embedding (100 numbers). Every norm
layer of the fast transformer network (networks.py) maps the embedding to its scale and shift
(norms.ConditionalAffine with `style_dim`). Training draws a different painting, augmented, every
step, so one network learns to follow any painting.

Departures from the paper, and why:
- the features are the loss network's own style layers (EfficientNet-Lite0 on an offline machine),
  not a separate Inception-v3: one forward pass of the painting gives both the prediction's input
  and the style loss's targets, and the model file stores only the bottleneck (the loss network's
  weights come with its pip package);
- means and standard deviations at five depths, not only the means of one deep layer: colour and
  brush marks live in the shallow layers, and the paintings a CPU can train on are few;
- a few dozen paintings, each seen through random crops, hue rotations and saturation changes, and
  procedurally made textures (tools/textures.py), instead of 80,000 paintings: the augmentations
  fill the space between paintings that a small set leaves empty.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from stylize.features.losses import mean_std


# A painting is cropped to multiples of this at apply time (at most 15 pixels off its right and bottom
# edges): EfficientNet's stride at block 8. Its padding is then a constant, which is what lets the
# ONNX graph (export.py) take paintings of any size.
MULTIPLE = 16


def crop_to_multiple(style: torch.Tensor) -> torch.Tensor:
    h, w = style.shape[-2:]
    return style[..., : h - h % MULTIPLE, : w - w % MULTIPLE]


@dataclass
class PredictorConfig:
    loss_net: str = "efficientnet-lite0"  # whose style layers the embedding is read from
    layers: tuple[str, ...] = ()  # those layers
    channels: tuple[int, ...] = ()  # their channel counts
    style_dim: int = 100  # the embedding's size (Ghiasi et al.: 100)
    style_size: int = 384  # longest side of a painting when its embedding is taken

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"], d["channels"] = list(self.layers), list(self.channels)
        return d


class StylePredictor(nn.Module):
    """Loss-network features of paintings -> style embeddings (N, style_dim)."""

    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        self.bottleneck = nn.Linear(2 * sum(cfg.channels), cfg.style_dim)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        stats = []
        for layer in self.cfg.layers:
            mean, std = mean_std(features[layer])
            stats += [mean, std.log()]
        # standardized over the vector: a painting with extreme statistics (a near-flat texture, a
        # saturated one) gives an input of the usual size, not an embedding far outside the trained range
        stats = torch.cat(stats, dim=1)
        return self.bottleneck(F.layer_norm(stats, stats.shape[1:]))


class ArbitraryNet(nn.Module):
    """The trained parts: the transformer network and the predictor's bottleneck."""

    def __init__(self, transformer: nn.Module, predictor: StylePredictor):
        super().__init__()
        self.transformer, self.predictor = transformer, predictor

    def forward(self, x: torch.Tensor, features: dict[str, torch.Tensor], strength: torch.Tensor | None = None):
        """Photos (B, 3, H, W), all toward the painting whose loss-network features are given."""
        from stylize.models.norms import Condition

        embedding = self.predictor(features)
        styles = torch.ones(len(x), len(embedding), device=x.device) / len(embedding)
        return self.transformer(x, Condition(styles, strength, embedding))


def bake(net: nn.Module, embeddings: torch.Tensor) -> nn.Module:
    """An arbitrary-style transformer network and N embeddings (N, D) -> an ordinary N-style network
    whose tables hold the predicted pairs: mixing, masks, strength, tiling and export then work as
    for any trained set of styles."""
    from stylize.models.networks import TransformerNet

    n = embeddings.shape[0]
    cfg = replace(net.cfg, norm="conditional" if n > 1 else "instance", num_styles=n, style_dim=0)
    out = TransformerNet(cfg).to(embeddings.device)
    state = {k: v for k, v in net.state_dict().items() if ".project." not in k}
    with torch.no_grad():
        for name, module in net.named_modules():
            if getattr(module, "project", None) is not None:
                w, b = module.tables(embeddings)
                state[f"{name}.weight"], state[f"{name}.bias"] = w, b
    out.load_state_dict(state)
    return out.eval().requires_grad_(False)


# -- paintings for training ----------------------------------------------------------------------------

def augment(painting: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """A random view of a (3, H, W) painting, its longest side `size`: a crop of 40-100% of each side,
    a mirror image half the time, and half the time a rotation of its hues (with a saturation change),
    so that the network meets palettes between and beyond the training paintings'."""
    from torchvision.transforms.functional import adjust_hue, adjust_saturation

    u = torch.rand(6, generator=g).tolist()
    _, h, w = painting.shape
    f = 0.4 + 0.6 * u[0]
    ch, cw = max(16, round(h * f)), max(16, round(w * f))
    top, left = round((h - ch) * u[1]), round((w - cw) * u[2])
    x = painting[:, top:top + ch, left:left + cw]
    if u[3] < 0.5:
        x = x.flip(-1)
    s = size / max(ch, cw)
    x = F.interpolate(x[None], size=(max(16, round(ch * s)), max(16, round(cw * s))), mode="bilinear",
                      antialias=s < 1, align_corners=False)[0]
    if u[4] < 0.5:
        x = adjust_hue(x.clamp(0, 1), u[5] - 0.5)
        x = adjust_saturation(x, 0.6 + 0.8 * torch.rand(1, generator=g).item())
    return x.clamp(0, 1).contiguous()
