"""Perceptual loss: content, style (Gram, mean/std or sliced Wasserstein), total variation, and the
strength-0 pixel term.

Departure from Johnson et al.: each content and style term is divided by the size of its target
(relative squared error), instead of using raw MSE with weights like 1e5 and 1e10. Raw magnitudes
depend on the loss network (ImageNet and random VGG features differ by orders of magnitude) and on
the layer, so relative errors let one set of weights serve every loss network and balance the layers.

The sliced style loss (Heitz et al. 2021, "A Sliced Wasserstein Loss for Neural Texture Synthesis")
compares the whole distribution of a layer's feature vectors, not only its second moments: project
them on random directions, sort, and compare with the style's sorted projections at the same ranks.
Departures: the style's projections are sorted once, on a fixed pool of directions, and kept as 1024
quantiles (each step uses a random subset; the paper draws new directions every step, which re-sorts
the style's features every step), and the distance is relative like the other terms. It is the
default on random features, where Gram matrices give fine speckle (README, studies/loss_nets.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stylize.features.vgg import VGGFeatures

from stylize.settings import CONTEXT_BANDWIDTH, CONTEXT_SAMPLES, STYLE_LOSSES, TEACHER_STATS_WEIGHT


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalized by feature size: (B, C, H, W) -> (B, C, C)."""
    b, c, h, w = f.shape
    if not torch.is_autocast_enabled(f.device.type):  # autocast multiplies in bf16 anyway: no fp32 copy then
        f = f.float()
    if not f.is_contiguous() and f.is_contiguous(memory_format=torch.channels_last):
        m = f.permute(0, 2, 3, 1).reshape(b, h * w, c)  # NHWC features: a view, not a transpose copy
        return m.transpose(1, 2) @ m / (c * h * w)
    f = f.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def mean_std(f: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise mean and standard deviation: (B, C, H, W) -> two (B, C)."""
    var, mean = torch.var_mean(f.float(), dim=(2, 3), correction=0)
    return mean, (var + eps).sqrt()


def style_stats(f: torch.Tensor, kind: str) -> torch.Tensor:
    """The statistic the style loss compares, flattened to (B, D)."""
    if kind == "gram":
        return gram(f).flatten(1)
    mean, std = mean_std(f)
    return torch.cat([mean, std], dim=1)


def total_variation(y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per example: (B,).

    The absolute (L1, anisotropic) form, not Johnson et al.'s squared one: it costs a fine speckle as
    much as it costs a few strong edges of the same total change, so it removes speckle without
    blurring outlines (Rudin, Osher & Fatemi's reason for it)."""
    dh = (y[:, :, 1:, :] - y[:, :, :-1, :]).float().abs().mean(dim=(1, 2, 3))
    dw = (y[:, :, :, 1:] - y[:, :, :, :-1]).float().abs().mean(dim=(1, 2, 3))
    return dh + dw


def translate(t: torch.Tensor, dy: int, dx: int, reach: int) -> torch.Tensor:
    """t (B, C, H, W) moved by (dy, dx) pixels, |dy|, |dx| <= reach, its edges filled by reflection; the
    same size."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (reach,) * 4, mode="reflect")
    return padded[..., reach - dy: reach - dy + h, reach - dx: reach - dx + w]


def draw_shift(reach: int, generator: torch.Generator | None = None) -> tuple[int, int]:
    """A random translation (dy, dx), each in [-reach, reach]."""
    dy, dx = torch.randint(-reach, reach + 1, (2,), generator=generator).tolist()
    return dy, dx


def relative_error(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example squared error divided by the target's squared size: (B, ...) -> (B,)."""
    dims = tuple(range(1, y.dim()))
    return (y.float() - target.float()).pow(2).sum(dims) / target.float().pow(2).sum(dims).clamp_min(1e-8)


SLICED_LEVELS = 1024  # quantiles kept per direction of a style's feature distribution
# Directions kept per channel. Each step projects on a random C of them: as good as fresh directions
# every step (Heitz et al.), which would re-sort the style's features every step, and better than one
# fixed set (measured: style_match 0.75 vs 0.69, same structure; studies/loss_nets.py).
SLICED_POOL = 4


def sliced_directions(channels: int, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """`count` (default: `channels`) random unit directions in feature space, (C, count); a pure
    function of the seed."""
    d = torch.randn(channels, count or channels, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=0, keepdim=True)


def sorted_projections(f: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Every position's feature vector projected on each direction, sorted: (B, C, H, W) -> (B, K, H*W)."""
    b, c = f.shape[:2]
    return torch.sort(directions.T @ f.float().reshape(b, c, -1), dim=2).values


def quantiles(p: torch.Tensor, levels: int = SLICED_LEVELS) -> torch.Tensor:
    """Evenly spaced order statistics of sorted values: (B, K, N) -> (B, K, min(levels, N))."""
    n = p.shape[-1]
    return p[..., torch.linspace(0, n - 1, min(levels, n), device=p.device).round().long()]


def sliced_distance(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared sliced Wasserstein-2 distance, relative to the target's size: sorted projections
    (B, K, N) against target quantiles (B, K, Q), read at the same ranks -> (B,)."""
    if target.shape[-1] != p.shape[-1]:
        target = F.interpolate(target, size=p.shape[-1], mode="linear", align_corners=True)
    return (p - target).pow(2).sum((1, 2)) / target.pow(2).sum((1, 2)).clamp_min(1e-8)


def color_directions() -> torch.Tensor:
    """16 fixed unit directions in RGB: the three axes, grey, and 12 more drawn once."""
    d = torch.cat([torch.eye(3), torch.ones(3, 1), sliced_directions(3, 12, seed=7)], dim=1)
    return d / d.norm(dim=0, keepdim=True)


class PerceptualLoss(nn.Module):
    """Holds the loss network and the style targets; returns per-term losses averaged over the batch."""

    def __init__(self, net: VGGFeatures, content_layers, style_layers, style_loss: str = "gram"):
        super().__init__()
        if style_loss not in STYLE_LOSSES:
            raise ValueError(f"unknown style loss {style_loss!r}")
        self.net = net
        self.content_layers = list(content_layers)
        self.style_layers = list(style_layers)
        self.style_loss = style_loss
        self.targets: dict[str, torch.Tensor] = {}
        self.directions: dict[str, torch.Tensor] = {}  # sliced: the fixed projection directions per layer
        self.colors: torch.Tensor | None = None  # per style: quantiles of its pixels' colours (color_targets)

    @torch.no_grad()
    def set_styles(self, images: list[torch.Tensor]) -> None:
        """Compute each style image's target statistics; images are (3, H, W), any size."""
        self.set_style_features([self.net(img[None]) for img in images])
        self.set_colors(images)

    @torch.no_grad()
    def set_colors(self, images: list[torch.Tensor]) -> None:
        """The colour term's targets: each image's pixel colours, projected on COLOR_DIRECTIONS, sorted."""
        d = color_directions().to(images[0].device)
        self.colors = torch.cat([quantiles(sorted_projections(img[None].float(), d), 256) for img in images])

    @torch.no_grad()
    def set_style_features(self, per_style: list[dict[str, torch.Tensor]]) -> None:
        """The targets from each style image's loss-network features (computed by the caller)."""
        if self.style_loss == "sliced":
            device = per_style[0][self.style_layers[0]].device
            self.directions = {l: sliced_directions(c, SLICED_POOL * c).to(device)
                               for l in self.style_layers for c in [per_style[0][l].shape[1]]}
            self.targets = {}
            for l in self.style_layers:
                p = [sorted_projections(f[l], self.directions[l]) for f in per_style]
                levels = min([SLICED_LEVELS] + [x.shape[-1] for x in p])  # one count for all styles: stackable
                self.targets[l] = torch.cat([quantiles(x, levels) for x in p])
            return
        self.targets = {
            layer: torch.cat([style_stats(f[layer], self.style_loss) for f in per_style])
            for layer in self.style_layers
        }

    def draw_directions(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
        """Sliced loss: which of each layer's directions a step projects on (as many as it has
        channels), drawn from `generator`; None for the other style losses."""
        if self.style_loss != "sliced":
            return None
        return {l: torch.randperm(d.shape[1], generator=generator)[: d.shape[0]].to(d.device)
                for l, d in self.directions.items()}

    def style_distance(self, f: torch.Tensor, layer: str, style_index: torch.Tensor,
                       directions: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-example style loss of one layer's features: (B,)."""
        if self.style_loss == "sliced":
            pick = directions[layer] if directions else slice(0, f.shape[1])
            return sliced_distance(sorted_projections(f, self.directions[layer][:, pick]),
                                   self.targets[layer][style_index][:, pick])
        return relative_error(style_stats(f, self.style_loss), self.targets[layer][style_index])

    def forward(self, y, x, style_index=None, strength=None, weights=None, directions=None,
                shift=None) -> dict[str, torch.Tensor]:
        """y: output, x: content, style_index: (B,) which style each example is trained on,
        strength: (B,) in [0, 1] scaling the style term, weights: dict of term weights,
        directions: draw_directions() for the sliced loss (None: the first C of each layer's),
        shift: (dy, dx, reach), output and photo both translated by (dy, dx) before the loss network.

        Departure from Johnson et al. and Gatys et al.: the shift ("transformation robustness" of
        feature visualization). The loss network's features are not robust to sub-pixel patterns, and
        an image optimized (or a network trained) against one fixed alignment learns to exploit them:
        a rainbow speckle or a uniform fine hatching that meets the Gram targets cheaply. A new
        translation every step takes that away (issue 29: on pixels it turns the speckle into swirls)."""
        if shift is not None:
            y, x = translate(y, *shift), translate(x, *shift)
        fy = self.net(y)
        with torch.no_grad():
            fx = self.net(x)
        b = y.shape[0]
        if style_index is None:
            style_index = torch.zeros(b, dtype=torch.long, device=y.device)
        content = sum(relative_error(fy[l], fx[l].detach()) for l in self.content_layers) / len(self.content_layers)
        style = sum(self.style_distance(fy[l], l, style_index, directions)
                    for l in self.style_layers) / len(self.style_layers)
        s = torch.ones(b, device=y.device) if strength is None else strength.float()
        terms = {
            "content": content.mean(),
            "style": (s * style).mean(),
            # the palette: how far the output's colours are distributed from the style's (only where
            # the run weights it; 1-D sliced Wasserstein on a few fixed colour directions)
            **({"color": (s * sliced_distance(sorted_projections(y.float(), color_directions().to(y.device)),
                                              self.colors[style_index])).mean()}
               if weights and weights.get("color") and self.colors is not None else {}),
            "tv": total_variation(y).mean(),
            # at strength s < 1 the output is pulled toward the content pixels, so strength 0 is the photo
            "pixel": ((1 - s) * (y.float() - x.float()).pow(2).mean(dim=(1, 2, 3))).mean(),
        }
        if weights is not None:
            terms["total"] = sum(weights.get(k, 0.0) * v for k, v in terms.items())
        return terms


def structure(photo: torch.Tensor, edge: float) -> torch.Tensor:
    """(B, 3, H, W) photo in [0, 1] -> (B, 1, H, W) where it has structure: the mean absolute
    difference of each pixel's luminance to its right and lower neighbours, averaged over 9x9 pixels,
    over `edge`, clamped at 1; plus 0.001, so that a flat photo still weighs every pixel alike."""
    lum = (0.299 * photo[:, 0] + 0.587 * photo[:, 1] + 0.114 * photo[:, 2])[:, None].float()
    gx = F.pad((lum[..., :, 1:] - lum[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((lum[..., 1:, :] - lum[..., :-1, :]).abs(), (0, 0, 0, 1))
    local = F.avg_pool2d(gx + gy, 9, 1, 4, count_include_pad=False)
    return (local / edge).clamp(max=1) + 1e-3


def median3(x: torch.Tensor) -> torch.Tensor:
    """The 3x3 median of each channel of (B, C, H, W), edges replicated. It keeps a step (a mark's
    edge) where it is and takes out what is finer than 3 pixels: a picture's pixel grain."""
    return F.pad(x, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1).flatten(-2).median(-1).values


def weighted_stats(f: torch.Tensor, w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel means and standard deviations of f (B, C, H, W), each pixel weighted by w (B, 1, h, w),
    average-pooled to f's size; None: unweighted. -> ((B, C), (B, C))."""
    if w is None:
        return f.mean((2, 3)), f.std((2, 3))
    if w.shape[-2:] != f.shape[-2:]:
        w = F.adaptive_avg_pool2d(w, f.shape[-2:])
    total = w.sum((2, 3))
    mean = (f * w).sum((2, 3)) / total
    var = ((f - mean[..., None, None]) ** 2 * w).sum((2, 3)) / total
    return mean, (var + 1e-8).sqrt()


def contextual(fx: torch.Tensor, fy: torch.Tensor, samples: int, generator: torch.Generator,
               bandwidth: float = CONTEXT_BANDWIDTH) -> torch.Tensor:
    """The contextual loss of Mechrez, Talmi and Zelnik-Manor (ECCV 2018, "The Contextual Loss for Image
    Transformation with Non-Aligned Data") between output features fx and target features fy (B, C, H, W):
    each target position must find a close match among the output's positions, wherever it is. Each
    side keeps `samples` positions drawn from `generator` (all, if it has fewer), so the cost stays
    at samples^2 comparisons an example."""
    x, y = fx.flatten(2), fy.flatten(2)
    n = x.shape[-1]
    if n > samples:
        i, j = torch.randperm(n, generator=generator)[:samples], torch.randperm(n, generator=generator)[:samples]
        x, y = x[..., i.to(x.device)], y[..., j.to(y.device)]
    mu = y.mean(-1, keepdim=True)
    x, y = F.normalize(x - mu, dim=1), F.normalize(y - mu, dim=1)
    d = 1 - torch.einsum("bci,bcj->bij", x, y)  # cosine distance, output position i to target position j
    d = d / (d.min(-1, keepdim=True).values + 1e-5)
    w = torch.exp((1 - d) / bandwidth)
    cx = w / w.sum(-1, keepdim=True)
    return -torch.log(cx.max(1).values.mean(-1) + 1e-5).mean()


class TeacherLoss(nn.Module):
    """Distillation's loss (train/teacher.py): the output against the teacher's picture, L1 on the
    pixels, times the content weight L1 on the loss network's features at `layers`, and times
    TEACHER_STATS_WEIGHT the per-channel means and standard deviations of the pixels and of the
    features at `stats_layers`. L1 rather than squared error: a squared error averages the teacher's
    bright marks away into a grey blur. The statistics term because L1 alone still regresses to the
    mean where the teacher's marks cannot be placed exactly: without it the student kept 0.85 of the
    teacher's contrast; it asks for the contrast and colour without asking where each mark goes.

    With `edge`, those statistics weigh each pixel by the photo's structure (structure()). A teacher
    that paints different random marks in each part of a flat sky (--optimize) cannot be followed
    there by a network, which answers the same input the same way; asked for the marks' contrast over
    the whole picture, it lays one uniform lattice over every sky (issue 29). Weighted, flat areas are
    held by the L1 terms, which average the random marks to a calm paint.

    With `grain`, the output's distance from its own 3x3 median (median3) is a term of that weight:
    the fine hatching a student lays over skies and faces where its teacher had pixel grain, taken out
    without softening the marks, as filtering the teacher's pictures does (not in Johnson et al.).

    With `context`, the features' statistics give way to the contextual loss (contextual()) at that
    weight, at the statistics layers but the finest (too many positions to compare), and the pixels'
    statistics stay, unweighted. The statistics can be met by any texture of the right contrast, and
    a student that cannot reproduce its teacher's planes meets them with one small facet stamped over
    grass and gravel (issue 29); the contextual loss asks for the teacher's own features, wherever
    they are, and a stamped facet has no match among them. Its `style` term is then the contextual
    loss. A departure from Johnson et al. and from distillation as usual."""

    def __init__(self, net: nn.Module, layers: list[str], stats_layers: list[str], edge: float = 0.0,
                 grain: float = 0.0, context: float = 0.0):
        super().__init__()
        self.net, self.layers, self.stats_layers, self.edge = net, list(layers), list(stats_layers), edge
        self.grain, self.context = grain, context

    def forward(self, y: torch.Tensor, target: torch.Tensor, content_weight: float = 1.0,
                photo: torch.Tensor | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """y: output, target: the teacher's picture, photo: what both were made from (for `edge`), seed:
        the step's draw of the positions `context` compares (a step's, so that a resumed run draws alike)."""
        fy = self.net(y)
        with torch.no_grad():
            ft = self.net(target)
        features = sum(F.l1_loss(fy[l], ft[l]) for l in self.layers) / len(self.layers)
        pixel = F.l1_loss(y, target)
        w = structure(photo, self.edge) if self.edge and not self.context else None
        pairs = [(y, target)] + ([] if self.context else [(fy[l], ft[l]) for l in self.stats_layers])
        stats = 0
        for a, b in pairs:
            (ma, sa), (mb, sb) = weighted_stats(a, w), weighted_stats(b, w)
            stats = stats + F.l1_loss(ma, mb) + F.l1_loss(sa, sb)
        stats = stats / len(pairs)
        total = pixel + content_weight * features + TEACHER_STATS_WEIGHT * stats
        if self.context:
            draws, layers = torch.Generator().manual_seed(seed), self.stats_layers[1:] or self.stats_layers
            style = sum(contextual(fy[l], ft[l], CONTEXT_SAMPLES, draws) for l in layers) / len(layers)
            total = total + self.context * style
        terms = {"content": features, "pixel": pixel, "style": style if self.context else stats, "total": total}
        if self.grain:
            terms["grain"] = (y - median3(y).detach()).abs().mean()
            terms["total"] = terms["total"] + self.grain * terms["grain"]
        return terms


class Critic(nn.Module):
    """A patch critic (Isola et al. 2017's PatchGAN, with spectral norm, Miyato et al. 2018, and the
    hinge loss): five convolutions, four of stride 2, each output judging a patch of about 80 px of
    the picture. Distillation's --teacher-critic: the critic learns to tell the teacher's pictures
    from the student's, and the student is asked to fool it. Where the teacher places its marks at
    random (--optimize's blocks), the L1 terms of TeacherLoss can only ask for the average of those
    places, and a student meets them with small blurred marks of one size, which judges call a stamp
    (issue 29); a critic asks for marks like the teacher's, crisp and of their sizes, wherever the
    student puts them. Not in Johnson et al.; it trains in step with the student, on its own Adam."""

    def __init__(self, width: int = 32, lr: float = 2e-4):
        super().__init__()
        sn, w = nn.utils.spectral_norm, width
        chans = [3, w, 2 * w, 4 * w, 4 * w]
        layers: list[nn.Module] = []
        for a, b in zip(chans, chans[1:]):
            layers += [sn(nn.Conv2d(a, b, 4, 2, 1)), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, sn(nn.Conv2d(4 * w, 1, 3, 1, 1)))
        self.opt = torch.optim.Adam(self.net.parameters(), lr, betas=(0.5, 0.999))

    def learn(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """One step of the critic on a batch of pictures (the student's detached); its hinge loss."""
        loss = F.relu(1 - self.net(teacher)).mean() + F.relu(1 + self.net(student.detach())).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def forward(self, student: torch.Tensor) -> torch.Tensor:
        """The student's term: low where the critic takes its pictures for the teacher's."""
        return -self.net(student).mean()

    def state(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
