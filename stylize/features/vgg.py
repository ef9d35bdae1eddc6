"""The perceptual (loss) network: VGG features with named taps, and where its weights come from.

ImageNet weights are torchvision's, resolved in this order: an explicit file, torchvision's cache
under TORCH_HOME, a download with progress. `random` is a fixed-seed random-weight VGG-19 for offline
machines: random convolutional features still carry texture statistics (He et al. 2016; Ustyuzhaninov
et al. 2017), though they capture style less faithfully than ImageNet features. With it the style loss
defaults to the sliced Wasserstein distance (settings.AUTO_STYLE_LOSS, losses.py), measured to close
more of that gap than Gram matrices (README, studies/loss_nets.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from stylize.errors import StylizeError

from stylize.settings import LOSS_NETS
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_SEED = 0


def layer_names(features: nn.Sequential) -> list[str]:
    """relu1_1, conv1_2, pool1, ... for each module of a torchvision VGG `features` block."""
    names, block, i = [], 1, 1
    for m in features:
        if isinstance(m, nn.Conv2d):
            names.append(f"conv{block}_{i}")
        elif isinstance(m, nn.ReLU):
            names.append(f"relu{block}_{i}")
            i += 1
        else:
            names.append(f"pool{block}")
            block, i = block + 1, 1
    return names


class VGGFeatures(nn.Module):
    """Frozen VGG truncated after the deepest requested tap; input is an RGB image in [0, 1]."""

    def __init__(self, features: nn.Sequential, taps: list[str], description: str):
        super().__init__()
        names = layer_names(features)
        unknown = [t for t in taps if t not in names]
        if unknown:
            raise StylizeError(f"unknown VGG layer(s) {', '.join(unknown)}; known: {', '.join(names)}")
        last = max(names.index(t) for t in taps)
        self.features = features[: last + 1]
        self.names = names[: last + 1]
        self.taps = set(taps)
        for i, m in enumerate(self.features):  # in place saves a copy per layer, unless it would overwrite a tap
            if isinstance(m, nn.ReLU):
                m.inplace = i > 0 and self.names[i - 1] not in self.taps
        self.description = description
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = x.to(self.features[0].weight.dtype)  # weights stored in bf16 on CUDA (speed.py); a no-op otherwise
        out = {}
        for name, m in zip(self.names, self.features):
            x = m(x)
            if name in self.taps:
                out[name] = x
        return out


# Convolution widths per block of torchvision's VGG configurations D (VGG-16) and E (VGG-19).
VGG_BLOCKS = {"vgg16": [[64] * 2, [128] * 2, [256] * 3, [512] * 3, [512] * 3],
              "vgg19": [[64] * 2, [128] * 2, [256] * 4, [512] * 4, [512] * 4]}


def vgg_features(arch: str, blocks: int = 5) -> nn.Sequential:
    """torchvision's VGG `features` (same layer indices, so its state dicts load) without building the
    120M-parameter classifier that torchvision.models.vgg16() would allocate only to be thrown away."""
    layers, cin = [], 3
    for b, widths in enumerate(VGG_BLOCKS[arch][:blocks]):
        for w in widths:
            layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True)]
            cin = w
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def _torchvision_vgg(arch: str):
    from torchvision import models  # imported here: torchvision is slow to import and apply never needs it

    weights = {"vgg16": models.VGG16_Weights, "vgg19": models.VGG19_Weights}[arch].IMAGENET1K_V1
    return vgg_features(arch), weights.url


def _load_state(features: nn.Sequential, state: dict, source: str) -> None:
    if not isinstance(state, dict):
        raise StylizeError(f"{source} does not hold a VGG state dict (it holds a {type(state).__name__})")
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier")}
    try:
        features.load_state_dict(state)
    except RuntimeError as e:
        raise StylizeError(f"{source} does not hold {len(features)}-layer VGG weights ({str(e).splitlines()[0]})")


def imagenet_features(arch: str, weights_file: str | Path | None = None, download: bool = True) -> tuple[nn.Sequential, str]:
    features, url = _torchvision_vgg(arch)
    fix = (f"pass --vgg-weights FILE (torchvision's {Path(url).name}), put that file in "
           f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or train offline with --loss-net efficientnet-lite0 "
           "(ImageNet features that install with pip)")
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise StylizeError(f"VGG weights file {path} not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise StylizeError(f"cannot read VGG weights from {path}: {type(e).__name__}")
        _load_state(features, state, str(path))
        return features, f"{arch} ImageNet weights from {path.name}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file() and (not download or os.environ.get("STYLIZE_OFFLINE")):
        raise StylizeError(f"ImageNet {arch} weights are not cached and downloads are off; {fix}")
    try:
        state = torch.hub.load_state_dict_from_url(url, progress=True, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StylizeError(f"could not download ImageNet {arch} weights ({type(e).__name__}); {fix}")
    _load_state(features, state, str(cached))
    return features, f"{arch} ImageNet weights ({Path(url).name})"


def random_features(arch: str = "vgg19", seed: int = RANDOM_SEED) -> tuple[nn.Sequential, str]:
    """A random-weight VGG whose activations keep unit scale through depth.

    Kaiming initialisation alone keeps the second moment only on average; each conv is then rescaled
    so its ReLU output has unit root-mean-square on a fixed smooth-noise image (a data-free version of
    LSUV, Mishkin & Matas 2016), so no layer's Gram matrix dominates the style loss by scale alone.
    """
    features = vgg_features(arch)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 16, 16, generator=g)
    x = nn.functional.interpolate(x, size=128, mode="bilinear", align_corners=False)
    with torch.no_grad():
        for m in features:
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                m.bias.zero_()
                y = torch.relu(m(x))
                m.weight.div_(y.pow(2).mean().sqrt().clamp_min(1e-8))
            x = m(x)
    return features, f"random {arch} features (seed {seed})"


def vgg16_available(weights_file=None, download: bool = True) -> tuple[bool, str]:
    """Whether ImageNet VGG-16 weights are at hand (a file, torchvision's cache, or a download that
    can start), and why, for loss_net="auto". Nothing is loaded here: loss_network() does that once."""
    if weights_file is not None:
        return True, f"--vgg-weights {weights_file} given"
    from torchvision.models import VGG16_Weights

    url = VGG16_Weights.IMAGENET1K_V1.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file():
        return True, "ImageNet VGG-16 weights cached"
    if download and not os.environ.get("STYLIZE_OFFLINE") and _reachable(url):
        return True, "ImageNet VGG-16 weights downloadable"
    return False, "no ImageNet VGG-16 weights cached or downloadable"


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a download could start: a HEAD request answered within `timeout` seconds. Without
    it, a machine whose network drops packets would wait on torch.hub's download for minutes."""
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        return True
    except Exception:
        return False


def resolve_loss_net(name: str, weights_file=None, download: bool = True) -> tuple[str, str]:
    """The loss network "auto" stands for, and why: VGG-16 where its ImageNet weights are at hand,
    else EfficientNet-Lite0 (its weights install with pip). Other names stand for themselves."""
    if name not in LOSS_NETS:
        raise StylizeError(f"unknown loss network {name!r}; choose one of {', '.join(LOSS_NETS)}")
    if name != "auto":
        return name, "chosen with --loss-net"
    ok, why = vgg16_available(weights_file, download)
    return ("vgg16", why) if ok else ("efficientnet-lite0", why)


def loss_network(name: str, taps: list[str], weights_file=None, download: bool = True) -> nn.Module:
    """The frozen perceptual network `name` (not "auto": resolve_loss_net first), returning {tap: features}."""
    if name not in LOSS_NETS or name == "auto":
        raise StylizeError(f"unknown loss network {name!r}; choose one of {', '.join(LOSS_NETS[1:])}")
    if name == "efficientnet-lite0":
        from stylize.features.efficientnet import lite0_features

        return lite0_features(taps)
    if name == "random":
        features, desc = random_features()
    else:
        features, desc = imagenet_features(name, weights_file, download)
    return VGGFeatures(features, taps, desc)
