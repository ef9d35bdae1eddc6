"""Tiled apply: stylize an image of any size in bounded memory, with the untiled result.

Why a statistics pass. Instance norm (and layer and group norm) normalize every feature map with its
mean and variance over the *whole image*. A tile run on its own would use its own statistics: a tile
of sky gets the contrast of a busy one, a dark corner is brightened, and the tiles drift apart in
brightness and stroke. So every such layer's per-channel statistics are measured over the whole
image and frozen (`InstanceStat.frozen`; group and layer norms are swapped for a frozen InstanceStat
with per-channel values, the same arithmetic) while the tiles run. Batch norm in eval mode uses its
running statistics and needs nothing.

How they are measured: layer by layer, exactly. A layer's statistics depend on the frozen statistics
of every layer before it, and the network is far too sensitive for shortcuts. Measured with
bench/tiling.py and training checkpoints (1024x768 photos, tiles of 256, PSNR against untiled):
- statistics of a downscaled copy: half the side 19-31 dB (the shipped model: 30.4), a quarter
  15-24 dB. No seams, since every tile shares them, but visibly not the untiled picture. Kept as
  stats="preview", a fast option of this module;
- that preview refined by passes over the tiles with its statistics frozen: 13 dB after one pass,
  5 after two; the fixed-point iteration diverges. Dropped;
- exact, layer by layer (stats="exact", the default): 119 dB with the shipped model, i.e. the
  untiled result to float rounding.
Layer by layer naively means running every tile from the photo up to each of the 15 norms in turn
(~7x the cost of the image). Instead `_Walker` steps the network one convolution at a time: phase k
runs every tile's convolution k from the state the tile kept after phase k-1, gathers that layer's
input over the whole image, then freezes its statistics. The state kept between phases is the
pre-norm output and the residual stream at quarter or half resolution (16 values per window pixel;
the full-resolution first layer is recomputed instead): float32 in memory, or float16 in a temporary
folder when it would outgrow the memory budget (92 dB: still invisible). Cost against untiled: about
a tenth more (docs/benchmarks.md; bench/tiling.py).

How tiles fit together.
- Every tile runs with HALO pixels of real image around it, cut off afterwards: reflection padding at
  a cut edge is not the image. With exact statistics: halo 16 -> 68-76 dB, 24 -> 87-100 dB, 32 ->
  106-119 dB, 48 -> float rounding (trained checkpoint); random untrained networks reach 50-57 dB at
  32. So HALO = 32.
- The image is cut into nearly equal parts on a grid of 4 px; each tile is its part widened by
  OVERLAP/2 across every inner cut, and the overlaps are blended with linear ramps that sum to one
  (feathering), so any difference left fades across the overlap instead of showing as a line.
  Each part is also where that tile's pixels count for the statistics: every pixel counts once.
- Tile corners fall on multiples of 4, so the two stride-2 convolutions and the two upsamplings see
  the same grid as in the whole image, padded to multiples of 4 the way the untiled path pads it.

Memory: the input stays uint8 on the CPU and a window becomes float on the device only when it runs;
the output is summed in float32 one band of tiles at a time and stored as soon as no later tile
touches it. So memory is bounded by the budget, not by the photo (an 8000x6000 photo's peak:
docs/benchmarks.md; bench/tiling.py).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stylize.models.norms import Condition, InstanceStat
from stylize.apply.budget import MIN_TILE

ALIGN = 4  # two stride-2 convolutions: tile corners on multiples of 4
HALO = 32  # context around every tile, px (multiple of ALIGN)
OVERLAP = 16  # feathered overlap between neighbouring tiles, px
STATS = ("exact", "preview")
PREVIEW_PIXELS = 1_000_000  # size of the downscaled copy for stats="preview"
STATE_VALUES = 16  # per window pixel: phases keep a state only if it is at most this big


def tile_for_pixels(pixels: int, halo: int = HALO) -> int:
    """The largest tile whose window (tile plus halo on both sides) has at most `pixels` pixels."""
    side = int(math.isqrt(pixels)) - 2 * halo
    return max(MIN_TILE, side // ALIGN * ALIGN)


def _up(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


# -- geometry ----------------------------------------------------------------------------------------

def spans(length: int, tile: int, half: int) -> list[tuple[int, int]]:
    """Cores of at most `tile` covering [0, length): [0, length) cut into nearly equal parts on the
    ALIGN grid, each widened by `half` across every inner cut, so neighbours overlap by 2 * half
    around the cut and never three at a time (parts are at least 2 * half long; plan() sees to it)."""
    if length <= tile:
        return [(0, length)]
    blocks, per = length // ALIGN, (tile - 2 * half) // ALIGN
    n = math.ceil(blocks / per)
    cuts = [i * blocks // n * ALIGN for i in range(n + 1)]
    return [(max(0, cuts[i] - half), min(length, cuts[i + 1] + half)) for i in range(n)]


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
    """The parts spans() cut [0, length) into (the middles of the overlaps), one inside each core:
    where each tile's pixels count for the statistics, so that every pixel counts exactly once."""
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

    @property
    def pixels(self) -> int:
        return (self.y[1] - self.y[0]) * (self.x[1] - self.x[0])


@dataclass
class Plan:
    height: int  # the padded image (multiples of ALIGN), as the untiled network sees it
    width: int
    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    halo: int

    def windows(self) -> list[Window]:
        """Row by row, left to right."""
        orow, ocol = owned(self.rows), owned(self.cols)
        return [Window((max(0, r[0] - self.halo), min(self.height, r[1] + self.halo)),
                       (max(0, c[0] - self.halo), min(self.width, c[1] + self.halo)), r, c, orow[i], ocol[j])
                for i, r in enumerate(self.rows) for j, c in enumerate(self.cols)]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def plan(height: int, width: int, tile: int, halo: int = HALO, overlap: int = OVERLAP) -> Plan:
    """Tiles for a (height, width) image (before its padding to multiples of ALIGN)."""
    h, w = max(8, _up(height)), max(8, _up(width))  # padded as the untiled network pads (inference.py)
    tile = max(2 * ALIGN, _up(tile))
    # half the overlap on each side of a cut, on the grid; at most a sixth of the tile, so that
    # only neighbours overlap (checked for every size in tests/test_tiling.py)
    half = min(max(0, overlap) // (2 * ALIGN) * ALIGN, tile // (6 * ALIGN) * ALIGN)
    return Plan(h, w, spans(h, tile, half), spans(w, tile, half), _up(max(0, halo)))


# -- the network, one convolution at a time ---------------------------------------------------------

class _Walker:
    """Steps a TransformerNet one ConvNorm at a time through the network's own sequence of units
    (TransformerNet.units, the one forward() runs) with its own pieces (ConvNorm.convolve and .finish,
    TransformerNet.head): unit k's convolution gives its pre-norm output z, `finish` normalizes it
    into the next unit's input. x is the residual stream: a block's input, added back after the
    block's second unit."""

    def __init__(self, net: nn.Module):
        self.net = net
        self.units = net.units()

    def __len__(self):
        return len(self.units)

    def per_image(self, k: int) -> bool:
        """Whether unit k normalizes with statistics of the image (instance, layer, group norm)."""
        return isinstance(self.units[k][0].norm.stat, (InstanceStat, nn.GroupNorm))

    def conv(self, k: int, h: torch.Tensor, x: torch.Tensor | None):
        unit, role = self.units[k]
        return unit.convolve(h), (h if role == "a" else x)

    def finish(self, k: int, z: torch.Tensor, x: torch.Tensor | None, cond: Condition):
        unit, role = self.units[k]
        h = unit.finish(z, cond)
        return (x + h, None) if role == "b" else (h, x)

    def run(self, state, k: int | None, inp: Callable[[], torch.Tensor], cond: Condition):
        """From `state` (j, z_j, x), left after unit j's convolution, or from the input when None, up
        to unit k's convolution -> (k, z_k, x); with k None, to the end -> the output image."""
        if state is None:
            j, h, x = -1, inp(), None
        else:
            j, z, x = state
            h, x = self.finish(j, z, x, cond)
        for u in range(j + 1, len(self) if k is None else k + 1):
            z, x = self.conv(u, h, x)
            if u == k:
                return k, z, x
            h, x = self.finish(u, z, x, cond)
        return self.net.head(inp(), h, cond)


class _Freezer:
    """Freezes units at measured statistics; group/layer norms are swapped for an InstanceStat with
    per-channel values for the duration (the same arithmetic and eps). `restore` undoes it all."""

    def __init__(self, walker: _Walker, device):
        self.walker, self.device, self.saved = walker, device, []

    def freeze(self, k: int, mean: torch.Tensor, var: torch.Tensor):
        norm = self.walker.units[k][0].norm
        stat = norm.stat
        if isinstance(stat, nn.GroupNorm):  # a group's moments are the averages of its channels'
            g, c = stat.num_groups, mean.numel()
            m = mean.view(g, -1).mean(1)
            var = ((var + mean * mean).view(g, -1).mean(1) - m * m).repeat_interleave(c // g)
            mean = m.repeat_interleave(c // g)
        self.saved.append((norm, stat, getattr(stat, "frozen", None)))
        if not isinstance(stat, InstanceStat):
            norm.stat = InstanceStat(eps=stat.eps)
        norm.stat.frozen = (mean.float().view(1, -1, 1, 1).to(self.device),
                            var.float().view(1, -1, 1, 1).to(self.device))

    def restore(self):
        for norm, stat, frozen in reversed(self.saved):
            norm.stat = stat
            if isinstance(stat, InstanceStat):
                stat.frozen = frozen
        self.saved.clear()


class _Meter:
    """Per-channel mean and variance of a layer's input over the whole image, from the owned part of
    every window: float64 sums of exact per-window float32 moments."""

    def __init__(self):
        self.n, self.s1, self.s2 = 0, 0.0, 0.0

    def add(self, z: torch.Tensor, w: Window):
        f = (w.y[1] - w.y[0]) // z.shape[-2]  # this layer's resolution: 1, 2 or 4 image pixels
        z = z[:, :, (w.own_y[0] - w.y[0]) // f:(w.own_y[1] - w.y[0]) // f,
              (w.own_x[0] - w.x[0]) // f:(w.own_x[1] - w.x[0]) // f]
        var, mean = torch.var_mean(z.float(), dim=(0, 2, 3), correction=0)
        n = z.shape[0] * z.shape[2] * z.shape[3]
        mean, var = mean.double().cpu(), var.double().cpu()
        self.n += n
        self.s1 = self.s1 + n * mean
        self.s2 = self.s2 + n * (var + mean * mean)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s1 / self.n
        return mean, (self.s2 / self.n - mean * mean).clamp_min(0)


class _Store:
    """Each window's state between phases, on the CPU: float32 in memory or, when that would not
    fit, float16 (float32 where it would overflow) in files of a temporary folder removed on close."""

    def __init__(self, on_disk: bool):
        self.entries: dict[int, tuple] = {}
        self.given: dict[int, torch.Tensor | None] = {}  # the stream handed out by get(), per window
        self.dir = tempfile.TemporaryDirectory(prefix="stylize-tiles-") if on_disk else None

    def _pack(self, key: str, t: torch.Tensor | None):
        if t is None:
            return None
        if self.dir is None:
            return t.float().cpu().numpy()
        lo, hi = torch.aminmax(t)
        small = max(-lo.item(), hi.item()) < 60000  # float16's range
        a = t.to(torch.float16 if small else torch.float32).cpu().numpy()
        path = Path(self.dir.name) / key
        a.tofile(path)
        return path, a.dtype, a.shape

    def _unpack(self, v, device):
        if v is None:
            return None
        if isinstance(v, tuple):
            path, dtype, shape = v
            v = np.fromfile(path, dtype=dtype).reshape(shape)
        return torch.from_numpy(v).to(device).float()

    def put(self, i: int, state):
        k, z, x = state
        given = self.given.pop(i, None)  # (and let go of it: a big photo has many windows)
        if x is not None and x is given:  # the stream went through unchanged (unit b):
            xs = self.entries[i][2]  # keep what is stored rather than write it again
        else:
            xs = self._pack(f"{i}.x", x)
        self.entries[i] = (k, self._pack(f"{i}.z", z), xs)

    def get(self, i: int, device):
        if i not in self.entries:
            return None
        k, z, x = self.entries[i]
        state = k, self._unpack(z, device), self._unpack(x, device)
        if state[2] is not None:
            self.given[i] = state[2]
        return state

    def close(self):
        self.entries.clear()
        self.given.clear()
        if self.dir is not None:
            self.dir.cleanup()


# -- cutting the image -------------------------------------------------------------------------------

class _Source:
    """The image and its condition, cut into windows of the padded image on demand.

    x stays where it is (usually uint8 on the CPU); a window becomes float on the device only when
    it runs, padded to multiples of ALIGN the way the untiled path pads the whole image.
    """

    def __init__(self, x: torch.Tensor, cond: Condition, device, pad_mode: str):
        self.x, self.cond, self.device, self.pad_mode = x, cond, device, pad_mode
        self.h, self.w = x.shape[-2:]

    def image(self, w: Window) -> torch.Tensor:
        (y0, y1), (x0, x1) = w.y, w.x
        py, px = max(0, y1 - self.h), max(0, x1 - self.w)  # rows/cols in the padding
        t = self.x[:, y0:y1 - py, x0:x1 - px][None].to(self.device)
        t = t.float().div_(255) if t.dtype == torch.uint8 else t.float()
        return F.pad(t, (0, px, 0, py), mode=self.pad_mode) if py or px else t

    def condition(self, w: Window) -> Condition:
        styles = self.cond.styles
        if styles is not None and styles.dim() == 4:  # spatial style weights: cut the same window
            (y0, y1), (x0, x1) = w.y, w.x
            py, px = max(0, y1 - self.h), max(0, x1 - self.w)
            styles = styles[:, :, y0:y1 - py, x0:x1 - px].to(self.device)
            if py or px:
                styles = F.pad(styles, (0, px, 0, py), mode="replicate")
        return Condition(styles, self.cond.strength)


def _preview_source(x: torch.Tensor, cond: Condition, pixels: int, device, pad_mode: str) -> _Source:
    """A downscaled copy of at most `pixels` pixels, sides multiples of ALIGN (stats="preview")."""
    h, w = x.shape[-2:]
    s = min(1.0, math.sqrt(pixels / (h * w)))
    if s < 1.0:
        size = (max(ALIGN, round(h * s) // ALIGN * ALIGN), max(ALIGN, round(w * s) // ALIGN * ALIGN))
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        if cond.styles is not None and cond.styles.dim() == 4:
            cond = Condition(F.interpolate(cond.styles.float(), size=size, mode="bilinear", antialias=True,
                                           align_corners=False), cond.strength)
    return _Source(x, cond, device, pad_mode)


# -- the passes ----------------------------------------------------------------------------------------

def _phases(walker: _Walker, freezer: _Freezer, src: _Source, windows: list[Window], store: _Store | None,
            tick: Callable[[], None] = lambda: None) -> dict:
    """Measure and freeze, unit by unit, the statistics of every per-image norm over all windows.
    With a store, each window keeps its state (when small enough) so the next phase goes on from it."""
    found = {}
    todo = [k for k in range(len(walker)) if walker.per_image(k)]
    for k in todo:
        meter = _Meter()
        for i, w in enumerate(windows):
            state = store.get(i, src.device) if store is not None else None
            state = walker.run(state, k, lambda: src.image(w), src.condition(w))
            meter.add(state[1], w)
            if store is not None and _small(state, w):
                store.put(i, state)
            del state
            tick()
        found[k] = meter.result()
        freezer.freeze(k, *found[k])
        if store is not None:
            store.given.clear()
    return found


def _small(state, w: Window) -> bool:
    """Keep a state only at the coarse layers: at full resolution it would outweigh recomputing it."""
    _, z, x = state
    return z.numel() + (x.numel() if x is not None else 0) <= STATE_VALUES * w.pixels


def _assemble(p: Plan, h: int, w: int, dtype: torch.dtype, tiles: Iterator[tuple[Window, torch.Tensor]]):
    """Blend tiles (row by row, left to right) into an (3, h, w) image. Only one band of rows is
    float32 at a time: a row is final, clamped and stored once the next band of tiles starts below it."""
    out = torch.empty((3, h, w), dtype=dtype)
    row_w, col_w = ramps(p.rows), ramps(p.cols)
    row_index = {r: i for i, r in enumerate(p.rows)}
    col_index = {c: j for j, c in enumerate(p.cols)}
    acc, top, band = torch.zeros(3, 0, w), 0, None  # rows being summed; the image row acc starts at

    def store(rows: int):  # acc's first rows are final: clamp and store them
        done = acc[:, :rows].clamp_(0, 1)
        out[:, top:top + rows] = done.mul_(255).round_().to(dtype) if dtype == torch.uint8 else done.to(dtype)

    for win, y in tiles:
        (r0, r1), (c0, c1) = win.core_y, win.core_x
        if win.core_y != band:  # a new band of tiles: no tile from here on reaches the rows above it
            band = win.core_y
            store(r0 - top)
            nxt = torch.zeros(3, min(r1, h) - r0, w)
            nxt[:, :acc.shape[1] - (r0 - top)] = acc[:, r0 - top:]  # the overlap, partly summed
            acc, top = nxt, r0
        rows, cols = min(r1, h) - r0, min(c1, w) - c0
        core = y[0, :, r0 - win.y[0]:r0 - win.y[0] + rows, c0 - win.x[0]:c0 - win.x[0] + cols].float().cpu()
        weight = row_w[row_index[win.core_y]][:rows, None] * col_w[col_index[win.core_x]][None, :cols]
        acc[:, r0 - top:r0 - top + rows, c0:c0 + cols].addcmul_(core, weight)
        del y, core
    store(acc.shape[1])
    return out


@torch.inference_mode()
def stylize_tiled(net: nn.Module, x: torch.Tensor, cond: Condition, tile: int, device, *,
                  halo: int = HALO, overlap: int = OVERLAP, stats: str = "exact",
                  preview_pixels: int = PREVIEW_PIXELS, pad_mode: str = "reflect",
                  dtype: torch.dtype = torch.float32, memory_mb: float | None = None,
                  progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Stylize x with a TransformerNet in tiles.

    x: (3, H, W) uint8 or float in [0, 1], best on the CPU (windows go to `device` one at a time).
    cond.styles: (1, N) weights or (1, N, H, W) maps (H, W as x). Returns (3, H, W) on the CPU,
    clamped: float32 in [0, 1], or uint8 when dtype is uint8. `memory_mb`: the states kept between
    phases stay in memory up to this size, else go to a temporary folder (None: always memory).
    `progress(done, total)` counts windows run, over all passes.
    """
    if stats not in STATS:
        raise ValueError(f"unknown statistics method {stats!r}; choose one of {', '.join(STATS)}")
    device = torch.device(device)
    h, w = x.shape[-2:]
    p = plan(h, w, tile, halo, overlap)
    windows = p.windows()
    src = _Source(x, cond, device, pad_mode)
    walker, store = _Walker(net), None
    freezer = _Freezer(walker, device)
    passes = 1 + (sum(map(walker.per_image, range(len(walker)))) if stats == "exact" else 0)
    done = [0]

    def tick():
        done[0] += 1
        if progress:
            progress(done[0], passes * len(windows))

    try:
        if stats == "preview":
            small = _preview_source(x, cond, preview_pixels, device, pad_mode)
            sh, sw = max(8, _up(small.h)), max(8, _up(small.w))  # padded as the untiled path pads
            _phases(walker, freezer, small, [Window((0, sh), (0, sw), (0, sh), (0, sw), (0, sh), (0, sw))],
                    _Store(False))
        else:
            state_mb = STATE_VALUES * 4 * sum(win.pixels for win in windows) / 2**20  # float32
            store = _Store(on_disk=memory_mb is not None and state_mb > memory_mb)
            _phases(walker, freezer, src, windows, store, tick)

        def tiles():
            for i, win in enumerate(windows):
                yield win, walker.run(store.get(i, device) if store else None, None, lambda: src.image(win),
                                      src.condition(win))
                tick()

        return _assemble(p, h, w, dtype, tiles())
    finally:
        freezer.restore()
        if store is not None:
            store.close()


def run_tiles(net: nn.Module, x: torch.Tensor, cond: Condition, tile: int, device,
              notice: Callable[[str], None] | None = None, **kw) -> torch.Tensor:
    """stylize_tiled, halving the tile on a GPU out-of-memory error until it fits."""
    while True:
        try:
            return stylize_tiled(net, x, cond, tile, device, **kw)
        except torch.cuda.OutOfMemoryError:
            if tile <= MIN_TILE:
                raise
        # retried out here: inside the except block its traceback would still hold the failed tensors
        tile = max(MIN_TILE, tile // 2 // ALIGN * ALIGN)
        torch.cuda.empty_cache()
        if notice:
            notice(f"out of GPU memory; retrying with tiles of {tile} px")
