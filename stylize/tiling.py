"""Tiled apply: stylize an image of any size in bounded memory.

Why a statistics pass. Instance norm (and layer and group norm) normalize every feature map with
its mean and variance over the *whole image*. A tile run on its own would use its own statistics:
a tile of sky would get the contrast of a busy one, a dark corner would be brightened, and the
tiles would drift apart in brightness and stroke. So the per-channel statistics of every such layer
are first measured for the whole image and then frozen (`InstanceStat.frozen`) while the tiles run.
Batch norm in eval mode uses running statistics and needs nothing.

How the statistics are measured (`stats=`):
- "preview": one pass over a downscaled copy of the image; cheap, but the statistics of a smaller
  image are not those of the big one (the network is not scale invariant);
- "refine" (default): the preview, then `refine` passes over the full-resolution tiles with those
  statistics frozen, measuring every layer's input over the whole image. Each norm layer
  re-standardizes what reaches it, so one pass removes nearly all of the preview's error;
- "exact": layer by layer, each pass running the tiles only up to the layer it measures, with the
  earlier layers frozen at their exact values. Equal to the untiled statistics up to rounding, but
  ~7x the cost of the image; kept for checking the others.
Measured on 1024x768 photos (bench/tiling.py, tiles of 256): see BENCH NUMBERS below.

How tiles fit together.
- Every tile runs with HALO pixels of real image around it, cut off afterwards: reflection padding
  at a cut edge is not the image, and its effect reaches as far as the receptive field (~70 px,
  measured), fading fast. With the halo and frozen statistics a tile's inside is the untiled result
  to float rounding.
- Neighbouring tiles overlap by about OVERLAP pixels and are blended with linear ramps that sum to
  one (feathering), so whatever difference is left fades across the overlap instead of showing as
  a line.
- Tile corners fall on multiples of 4, so the two stride-2 convolutions and the two upsamplings
  sample the same grid as in the whole image.

Memory: the input stays uint8 on the CPU (windows are converted one at a time), and the output is
accumulated in float32 one band of tiles at a time and stored as soon as no later tile touches it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .norms import Condition, InstanceStat, Norm

ALIGN = 4  # two stride-2 convolutions: tile corners on multiples of 4
HALO = 64  # context around every tile, px (multiple of ALIGN)
OVERLAP = 32  # feathered overlap between neighbouring tiles, px
MIN_TILE = 64
STATS = ("refine", "preview", "exact")
PREVIEW_PIXELS = 1_000_000  # the preview's size; also bounded by the memory budget


def bytes_per_pixel(width: int) -> float:
    """Peak working memory of one forward pass per input pixel, float32, for a network of `width`.

    Measured on CPU (bench/tiling.py): ~960 B/px at width 32, ~545 at width 16, i.e. about 30 bytes
    per channel of the first layer; rounded up here.
    """
    return 32.0 * width + 64.0


def budget_pixels(memory_mb: float, width: int) -> int:
    """How many pixels one forward pass may have within `memory_mb` of working memory."""
    return max(MIN_TILE * MIN_TILE, int(memory_mb * 2**20 / bytes_per_pixel(width)))


def tile_for_pixels(pixels: int, halo: int = HALO) -> int:
    """The largest tile whose window (tile plus halo on both sides) has at most `pixels` pixels."""
    side = int(math.isqrt(pixels)) - 2 * halo
    return max(MIN_TILE, side // ALIGN * ALIGN)


def _up(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Cores [start, end) of equal size covering [0, length), starts on multiples of ALIGN,
    neighbours overlapping by at least `overlap` (length, tile and overlap multiples of ALIGN)."""
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    # equal cores just large enough to cover with the overlap (ALIGN more for rounding the starts down)
    size = min(length, _up(math.ceil((length + (n - 1) * (overlap + ALIGN)) / n)))
    starts = [i * (length - size) // (n - 1) // ALIGN * ALIGN for i in range(n)]
    return [(s, s + size) for s in starts]


def ramps(cores: list[tuple[int, int]]) -> list[torch.Tensor]:
    """1-D feathering weights per core: linear ramps across each overlap, 1 elsewhere. Where two
    cores overlap their ramps sum to one, so the 2-D products form a partition of unity."""
    out = []
    for i, (s, e) in enumerate(cores):
        w = torch.ones(e - s)
        if i > 0 and cores[i - 1][1] > s:  # rises across the overlap with the previous core
            a = cores[i - 1][1] - s
            w[:a] = (torch.arange(a) + 0.5) / a
        if i + 1 < len(cores) and cores[i + 1][0] < e:  # falls across the overlap with the next
            b = e - cores[i + 1][0]
            w[e - s - b:] = torch.minimum(w[e - s - b:], (b - 0.5 - torch.arange(b)) / b)
        out.append(w)
    return out


def owned(cores: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """A partition of [0, length) with one part inside each core: where each tile's pixels are
    counted for the statistics, so every pixel is counted exactly once."""
    cuts = [0] + [(cores[i][1] + cores[i + 1][0]) // 2 // ALIGN * ALIGN for i in range(len(cores) - 1)]
    return list(zip(cuts, cuts[1:] + [cores[-1][1]]))


@dataclass(frozen=True)
class Window:
    y: tuple[int, int]  # rows run through the network (core plus halo), padded-image coordinates
    x: tuple[int, int]
    core_y: tuple[int, int]  # rows this tile contributes to the output
    core_x: tuple[int, int]
    own_y: tuple[int, int]  # rows this tile counts for the statistics
    own_x: tuple[int, int]


@dataclass
class Plan:
    height: int  # the padded image (multiples of ALIGN), as the untiled network sees it
    width: int
    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    halo: int

    def windows(self, row: int | None = None) -> Iterable[Window]:
        own_r, own_c = owned(self.rows), owned(self.cols)
        for i in ([row] if row is not None else range(len(self.rows))):
            for j, c in enumerate(self.cols):
                r = self.rows[i]
                yield Window((max(0, r[0] - self.halo), min(self.height, r[1] + self.halo)),
                             (max(0, c[0] - self.halo), min(self.width, c[1] + self.halo)),
                             r, c, own_r[i], own_c[j])

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def computed_pixels(self) -> int:
        return sum((w.y[1] - w.y[0]) * (w.x[1] - w.x[0]) for w in self.windows())


def plan(height: int, width: int, tile: int, halo: int = HALO, overlap: int = OVERLAP) -> Plan:
    """Tiles for a (height, width) image (before padding to multiples of ALIGN)."""
    h, w = _up(height), _up(width)
    tile = max(2 * ALIGN, _up(tile))
    halo = _up(max(0, halo))
    # ramps from both sides must fit in a core: the overlap is at most about a third of the tile
    overlap = max(0, min(_up(overlap), tile // 3 // ALIGN * ALIGN))
    return Plan(h, w, spans(h, tile, overlap), spans(w, tile, overlap), halo)


# -- running windows ---------------------------------------------------------------------------------

class _Source:
    """The image and its condition, cut into windows of the padded image on demand.

    x stays where it is (usually uint8 on the CPU); a window is converted to float on the device
    only when it runs. Padding to multiples of ALIGN is done per window, the same way as untiled.
    """

    def __init__(self, x: torch.Tensor, cond: Condition, device: torch.device, pad_mode: str):
        self.x, self.cond, self.device, self.pad_mode = x, cond, device, pad_mode
        self.h, self.w = x.shape[-2:]

    def window(self, y: tuple[int, int], x: tuple[int, int]) -> tuple[torch.Tensor, Condition]:
        (y0, y1), (x0, x1) = y, x
        py, px = max(0, y1 - self.h), max(0, x1 - self.w)  # rows/cols in the padding
        t = self.x[:, y0:y1 - py, x0:x1 - px][None].to(self.device)
        t = t.float().div_(255) if t.dtype == torch.uint8 else t.float()
        if py or px:
            t = F.pad(t, (0, px, 0, py), mode=self.pad_mode)
        styles = self.cond.styles
        if styles is not None and styles.dim() == 4:
            styles = styles[:, :, y0:y1 - py, x0:x1 - px].to(self.device)
            if py or px:
                styles = F.pad(styles, (0, px, 0, py), mode="replicate")
        return t, Condition(styles, self.cond.strength)


class _Stop(Exception):
    """Ends a statistics pass once the last layer it measures has been seen."""


def stat_norms(net: nn.Module) -> list[Norm]:
    """The norms whose statistics are per image (instance, conditional, layer, group)."""
    return [m for m in net.modules() if isinstance(m, Norm) and isinstance(m.stat, (InstanceStat, nn.GroupNorm))]


class _Meter:
    """Per-channel mean and variance of a layer's input over the whole image, gathered from the
    owned part of every window (float64 sums; per-window moments are exact float32 reductions)."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, x: torch.Tensor):
        var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean, var = mean.double().cpu(), var.double().cpu()
        self.n += n
        self.s1 = self.s1 + n * mean
        self.s2 = self.s2 + n * (var + mean * mean)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        return mean, (self.s2 / self.n - mean * mean).clamp_min(0)


def _freeze_params(stat: nn.Module, mean: torch.Tensor, var: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel statistics -> what this layer normalizes with, shaped (1, C, 1, 1)."""
    if isinstance(stat, nn.GroupNorm):  # a group's moments are the averages of its channels'
        g = stat.num_groups
        m = mean.view(g, -1).mean(1)
        v = (var + mean * mean).view(g, -1).mean(1) - m * m
        mean, var = m.repeat_interleave(mean.numel() // g), v.repeat_interleave(mean.numel() // g)
    return mean.float().view(1, -1, 1, 1).to(device), var.float().view(1, -1, 1, 1).to(device)


class _Frozen:
    """Freeze the given norms at the given statistics; group/layer norms are swapped for an
    InstanceStat with per-channel values for the duration (the same arithmetic, same eps)."""

    def __init__(self, norms: list[Norm], stats: dict[int, tuple[torch.Tensor, torch.Tensor]], device):
        self.norms, self.stats, self.device, self.saved = norms, stats, device, []

    def __enter__(self):
        for i, norm in enumerate(self.norms):
            if i not in self.stats:
                continue
            stat = norm.stat
            frozen = _freeze_params(stat, *self.stats[i], self.device)
            self.saved.append((norm, stat, getattr(stat, "frozen", None)))
            if isinstance(stat, InstanceStat):
                stat.frozen = frozen
            else:
                norm.stat = InstanceStat(eps=stat.eps)
                norm.stat.frozen = frozen
        return self

    def __exit__(self, *exc):
        for norm, stat, frozen in reversed(self.saved):
            norm.stat = stat
            if isinstance(stat, InstanceStat):
                stat.frozen = frozen


def _measure(net, norms, src: _Source, windows: list[Window], frozen: dict, measure: list[int],
             stop: int | None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """One statistics pass: run every window with `frozen` statistics, gathering the inputs of the
    norms in `measure` over the owned regions; stop each window after norm `stop` has been seen."""
    meters = {i: _Meter() for i in measure}
    current: list[Window] = []

    def hook(i):
        def pre(module, args):
            x, w = args[0], current[0]
            f = (w.y[1] - w.y[0]) // x.shape[-2]  # this layer's resolution: 1, 2 or 4 px of the image
            y0, y1 = (w.own_y[0] - w.y[0]) // f, (w.own_y[1] - w.y[0]) // f
            x0, x1 = (w.own_x[0] - w.x[0]) // f, (w.own_x[1] - w.x[0]) // f
            meters[i].add(x[:, :, y0:y1, x0:x1])
            if i == stop:
                raise _Stop
        return pre

    with _Frozen(norms, frozen, src.device):
        handles = [norms[i].stat.register_forward_pre_hook(hook(i)) for i in measure]
        try:
            for w in windows:
                current[:] = [w]
                t, cond = src.window(w.y, w.x)
                try:
                    net(t, cond)
                except _Stop:
                    pass
                del t
        finally:
            for h in handles:
                h.remove()
    return {i: m.result() for i, m in meters.items()}


def _preview(x: torch.Tensor, cond: Condition, pixels: int, pad_mode: str) -> tuple[torch.Tensor, Condition]:
    """A downscaled copy whose size is at most `pixels`, sides multiples of ALIGN (or the image)."""
    h, w = x.shape[-2:]
    s = min(1.0, math.sqrt(pixels / (h * w)))
    ph, pw = max(ALIGN, round(h * s) // ALIGN * ALIGN), max(ALIGN, round(w * s) // ALIGN * ALIGN)
    # antialiased resize straight from uint8: no full-size float copy of a big image
    if s == 1.0:  # it fits: the preview is the image itself, and its statistics are exact
        return x, cond
    small = F.interpolate(x[None], size=(ph, pw), mode="bilinear", antialias=True, align_corners=False)
    styles = cond.styles
    if styles is not None and styles.dim() == 4:
        styles = F.interpolate(styles.float(), size=(ph, pw), mode="bilinear", antialias=True, align_corners=False)
    return small[0], Condition(styles, cond.strength)


@torch.inference_mode()
def image_stats(net, x: torch.Tensor, cond: Condition, p: Plan, device, *, stats: str = "refine",
                refine: int = 1, preview_pixels: int = PREVIEW_PIXELS, pad_mode: str = "reflect",
                ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (mean, var) of every per-image norm's input over the whole image, by `stats`."""
    norms = stat_norms(net)
    if not norms:
        return {}
    everything = list(range(len(norms)))
    src = _Source(x, cond, device, pad_mode)
    windows = list(p.windows())
    if stats == "exact":
        found: dict = {}
        for i in everything:  # layer i measured with every earlier layer frozen at its exact value
            found.update(_measure(net, norms, src, windows, found, [i], stop=i))
        return found
    if stats not in ("preview", "refine"):
        raise ValueError(f"unknown statistics method {stats!r}; choose one of {', '.join(STATS)}")
    small, small_cond = _preview(x, cond, preview_pixels, pad_mode)
    sh, sw = _up(small.shape[-2]), _up(small.shape[-1])  # padded as the untiled network pads
    whole = Window((0, sh), (0, sw), (0, sh), (0, sw), (0, sh), (0, sw))
    found = _measure(net, norms, _Source(small, small_cond, device, pad_mode), [whole], {}, everything, stop=None)
    for _ in range(refine if stats == "refine" else 0):
        found = _measure(net, norms, src, windows, found, everything, stop=everything[-1])
    return found


@torch.inference_mode()
def stylize_tiled(net, x: torch.Tensor, cond: Condition, tile: int, device, *, halo: int = HALO,
                  overlap: int = OVERLAP, stats: str = "refine", refine: int = 1,
                  preview_pixels: int = PREVIEW_PIXELS, pad_mode: str = "reflect",
                  dtype: torch.dtype = torch.float32,
                  found: dict | None = None) -> torch.Tensor:
    """x: (3, H, W) uint8 or float in [0, 1], on the CPU -> (3, H, W) clamped to [0, 1] (float32) or
    in [0, 255] (uint8). cond.styles: (1, N) weights or (1, N, H, W) maps; `found`: statistics
    from image_stats to reuse (otherwise measured here)."""
    h, w = x.shape[-2:]
    p = plan(h, w, tile, halo, overlap)
    if found is None:
        found = image_stats(net, x, cond, p, device, stats=stats, refine=refine,
                            preview_pixels=preview_pixels, pad_mode=pad_mode)
    norms = stat_norms(net)
    src = _Source(x, cond, device, pad_mode)
    out = torch.empty((3, h, w), dtype=dtype)
    row_w, col_w = ramps(p.rows), ramps(p.cols)

    def store(a: int, b: int, acc: torch.Tensor):  # rows [a, b) are final
        acc = acc.clamp_(0, 1)
        out[:, a:b] = acc.mul_(255).round_().to(dtype) if dtype == torch.uint8 else acc.to(dtype)

    carry = None  # rows shared with the previous band of tiles, partly summed
    with _Frozen(norms, found, device):
        for i, (r0, r1) in enumerate(p.rows):
            acc = torch.zeros(3, min(r1, h) - r0, w)
            if carry is not None:
                acc[:, :carry.shape[1]] += carry
            for win, wc in zip(p.windows(i), col_w):
                t, c = src.window(win.y, win.x)
                y = net(t, c)[0]
                del t
                (c0, c1), wr = win.core_x, row_w[i]
                rows, cols = min(r1, h) - r0, min(c1, w) - c0
                core = y[:, r0 - win.y[0]:r0 - win.y[0] + rows, c0 - win.x[0]:c0 - win.x[0] + cols].float().cpu()
                weight = wr[:rows, None] * wc[None, :cols]
                acc[:, :, c0:c0 + cols].addcmul_(core, weight)
                del y, core
            nxt = p.rows[i + 1][0] if i + 1 < len(p.rows) else h
            store(r0, nxt, acc[:, :nxt - r0])
            carry = acc[:, nxt - r0:].clone() if i + 1 < len(p.rows) else None
            del acc
    return out


def run_tiles(net, x: torch.Tensor, cond: Condition, tile: int, device, notice: Callable[[str], None] | None = None,
              **kw) -> torch.Tensor:
    """stylize_tiled, halving the tile on a GPU out-of-memory error until it fits."""
    while True:
        try:
            return stylize_tiled(net, x, cond, tile, device, **kw)
        except torch.cuda.OutOfMemoryError:
            if tile <= MIN_TILE:
                raise
            tile = max(MIN_TILE, tile // 2 // ALIGN * ALIGN)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if notice:
                notice(f"out of GPU memory; retrying with tiles of {tile} px")
