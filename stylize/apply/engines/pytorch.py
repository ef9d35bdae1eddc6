"""Applying a trained model: load it, choose and mix styles, set strength, stylize tensors and files.

Library only: progress goes through a callback and nothing is printed here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stylize.apply import mixing, palette, scale
from stylize.models import modelfile
from stylize.apply.engines import tiling
from stylize.devices import pick_device
from stylize.errors import StylizeError
from stylize.images import load_image
from stylize.models.networks import NetConfig, TransformerNet
from stylize.models.norms import Condition
from stylize.apply.batch import ApplyReport, Interrupted, apply_files, expand_inputs, output_paths  # noqa: F401 (API)

from stylize.settings import DEFAULT_MODEL, ApplyConfig


class Stylizer:
    """A loaded model, ready to stylize (3, H, W) tensors in [0, 1] (or uint8) of any size.

    An image over the memory budget (`memory_mb` of working memory for the network), or any image
    larger than `tile` when that is set, is stylized in tiles (tiling.py) with the untiled result. On
    a GPU, running out of memory falls back to tiles by itself and says so through `notice`.
    """

    def __init__(self, model: str | Path | dict = DEFAULT_MODEL, device: str = "auto", tile: int | None = None,
                 memory_mb: float = ApplyConfig.memory_mb, notice: Callable[[str], None] | None = None,
                 tile_progress: Callable[[int, int], None] | None = None):
        self.tile, self.memory_mb, self.notice, self.tile_progress = tile, memory_mb, notice, tile_progress
        self.record = model if isinstance(model, dict) else modelfile.load(model)
        if self.record.get("kind") != "transformer":
            raise StylizeError(f"{self.record['path']}: a {self.record.get('kind')} model, not a transformer network")
        self.device = pick_device(device)
        self.name = Path(self.record["path"]).stem
        self.styles: list[str] = list(self.record["styles"])
        self.has_strength = bool(self.record["net"].get("strength"))  # --style-weight works
        self.net = modelfile.build(self.record, lambda: TransformerNet(NetConfig(**self.record["net"])),
                                   self.record["state_dict"])
        self.net.eval().requires_grad_(False).to(self.device)
        self.apply = self.record.get("apply") or {}  # how the file says it applies: mixing.calibrated

    def palettes(self) -> list | None:
        """The styles' colour statistics for the palette step (palette.recolour), in style order."""
        return palette.colours(self.apply)

    def condition(self, specs: list[str] | None, mask: torch.Tensor | None = None, photo=None,
                  match_color: bool = False) -> torch.Tensor:
        """Style weights (N,), or with a mask (H, W) spatial weights (N, H, W): white -> first style."""
        if match_color:
            raise StylizeError("--color-method match needs a style image, so an adaptive model; use luminance")
        weights = self.style_weights(specs)
        if mask is None:
            return weights
        if not specs or len(specs) != 2:
            raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
        a, b = (self.style_index(s.partition("=")[0]) for s in specs)
        w = torch.zeros(len(self.styles), *mask.shape)
        w[a] += mask
        w[b] += 1 - mask
        return w

    def style_weights(self, specs: list[str] | None) -> torch.Tensor:
        """Parse ["starry"], ["1"], ["starry=0.7", "wave=0.3"] into normalised weights (N,)."""
        return torch.tensor(mixing.style_weights(specs, self.styles, self.name))

    def style_index(self, name: str) -> int:
        return mixing.style_index(name, self.styles, self.name)

    # the file pipeline's interface (pipeline.py): uint8 photos in and out, a quarter of float's memory
    @property
    def budget(self) -> int:
        return tiling.budget_pixels(self.memory_mb, self.net.cfg.width)

    def load(self, path, max_size: int | None = None):
        return load_image(path, max_size, torch.uint8)

    load_mask = staticmethod(lambda path, size: load_mask(path, size))
    wrap = staticmethod(torch.from_numpy)  # a decoded (3, H, W) uint8 array, as load() gives it (video.py)

    def run(self, x: torch.Tensor, cond, strength: float) -> torch.Tensor:
        """x at `strength` as the model file says it applies (mixing.calibrated): the network at its
        calibrated strength, then the styles' palette (palette.recolour; per pixel with a mask)."""
        mixing.check_strength(strength, self.name, self.has_strength)
        network_strength, amount = mixing.calibrated(strength, self.apply)
        shape = scale.work_shape(x.shape[1], x.shape[2], self.apply)
        if shape is None:
            y = self(x, cond, network_strength, dtype=torch.uint8)
        else:  # at the scale the network was trained at (scale.py); a mask goes down with the photo
            small, small_cond = scale.resize(x.numpy(), shape), cond
            if torch.is_tensor(cond) and cond.dim() == 3:
                small_cond = torch.nn.functional.interpolate(cond[None].float(), size=shape, mode="bilinear",
                                                             align_corners=False)[0]
            y_small = self(torch.from_numpy(small), small_cond, network_strength, dtype=torch.uint8)
            y = torch.from_numpy(scale.restore(y_small.numpy(), small, x.numpy()))
        targets = self.palettes() if amount else None
        if targets:
            y = torch.from_numpy(palette.recolour(y.numpy(), targets, np.asarray(cond), amount))
        return y

    def tile_size(self, memory_mb: float | None = None) -> int:
        """The tile side that keeps one window of the network within the memory budget."""
        pixels = tiling.budget_pixels(memory_mb or self.memory_mb, self.net.cfg.width)
        return tiling.tile_for_pixels(pixels)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, styles: torch.Tensor | None = None, strength: float = 1.0,
                 tile: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x: (3, H, W) float in [0, 1] or uint8; styles: (N,) weights or (N, H, W) spatial weights;
        strength in [0, 1]; tile: tile side in pixels (None: the Stylizer's; 0: only over the memory
        budget). Returns (3, H, W) on the CPU: float in [0, 1], or uint8 with dtype=torch.uint8."""
        mixing.check_strength(strength, self.name, self.has_strength)
        _, h, w = x.shape
        # two stride-2 convolutions: sizes must be multiples of 4; and at least 8 for the 9x9 reflection pad
        ph, pw = max(8, h + (-h) % 4) - h, max(8, w + (-w) % 4) - w
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        s = torch.tensor([strength], device=self.device) if self.record["net"].get("strength") else None
        tile = self.tile if tile is None else tile
        over_budget = (h + ph) * (w + pw) > tiling.budget_pixels(self.memory_mb, self.net.cfg.width)
        if (tile and max(h, w) > tile) or (not tile and over_budget):
            return self._tiled(x, styles, s, tile or self.tile_size(), mode, dtype)
        try:
            return self._whole(x, styles, s, ph, pw, mode, dtype)
        except torch.cuda.OutOfMemoryError:
            pass  # tile outside this block: its traceback still holds the failed attempt's tensors
        torch.cuda.empty_cache()
        budget = self.memory_mb
        if self.device.type == "cuda":  # another process may hold most of the card
            budget = min(budget, torch.cuda.mem_get_info(self.device)[0] / 2**20 / 2)
        tile = self.tile_size(budget)
        if self.notice:
            self.notice(f"out of GPU memory for {w}x{h} in one piece; stylizing it in tiles of {tile} px")
        return self._tiled(x, styles, s, tile, mode, dtype)

    def _whole(self, x, styles, s, ph: int, pw: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
        _, h, w = x.shape
        xb = x[None].to(self.device)
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode=mode)
        if styles is not None:
            styles = styles.to(self.device)[None]
            if styles.dim() == 4 and (ph or pw):
                styles = F.pad(styles, (0, pw, 0, ph), mode="replicate")
        y = self.net(xb, Condition(styles, s))[0, :, :h, :w].clamp_(0, 1)
        return (y.mul_(255).round_().to(dtype) if dtype == torch.uint8 else y.float().contiguous()).cpu()

    def _tiled(self, x, styles, s, tile: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
        if styles is not None:  # weights go to the device now; spatial maps stay here and go tile by tile
            styles = styles[None].to(self.device) if styles.dim() == 1 else styles[None].cpu()
        return tiling.run_tiles(self.net, x.cpu(), Condition(styles, s), tile, self.device, self.notice,
                                pad_mode=mode, dtype=dtype, memory_mb=self.memory_mb, progress=self.tile_progress)


class ArbitraryStylizer(Stylizer):
    """An arbitrary-style transformer model (style_prediction.py): any painting, given at apply time.

    The paintings' embeddings are baked into an ordinary N-style network (style_prediction.bake), so
    from there on it is a Stylizer: mixing, masks, strength and tiling work as for trained styles."""

    def __init__(self, record: dict, device: str = "auto", tile: int | None = None,
                 memory_mb: float = ApplyConfig.memory_mb, notice=None, tile_progress=None,
                 style_size: int | None = None):
        from stylize.models.style_prediction import PredictorConfig, StylePredictor
        from stylize.features.vgg import loss_network

        super().__init__(record, device, tile, memory_mb, notice, tile_progress)
        self.base = self.net
        p = {k: (tuple(v) if isinstance(v, list) else v) for k, v in record["predictor"].items() if k != "state_dict"}
        self.predictor = modelfile.build(record, lambda: StylePredictor(PredictorConfig(**p)),
                                         record["predictor"]["state_dict"], "style predictor")
        self.features = loss_network(p["loss_net"], list(p["layers"]))
        self.predictor.eval().requires_grad_(False).to(self.device)
        self.features.to(self.device)
        self.style_size = style_size or p["style_size"]
        self.styles, self._embeddings, self._paintings = [], {}, {}
        self._palettes, self._matched = [], False

    def painting(self, path: str) -> torch.Tensor:
        """A painting as the predictor reads it: at style_size, cropped to the network's multiple."""
        from stylize.train.data import load_style
        from stylize.models.style_prediction import crop_to_multiple

        if path not in self._paintings:
            self._paintings = {path: crop_to_multiple(load_style(path, self.style_size)[1]), **self._paintings}
            while len(self._paintings) > 8:  # a long-lived process (stylize serve) sees many paintings
                self._paintings.pop(next(reversed(self._paintings)))
        return self._paintings[path]

    @torch.inference_mode()
    def embedding(self, path: str, photo: torch.Tensor | None = None) -> torch.Tensor:
        """A painting's style embedding (D,); with `photo`, of the painting recoloured to the photo's colours."""
        from stylize.apply.color import match_colors

        key = (path, id(photo) if photo is not None else None)
        if key not in self._embeddings:
            style = self.painting(path)
            if photo is not None:
                style = match_colors(style, photo.float() / 255 if photo.dtype == torch.uint8 else photo)
            self._embeddings = {k: v for k, v in self._embeddings.items() if k[1] is None}  # one photo's at a time
            self._embeddings[key] = self.predictor(self.features(style[None].to(self.device)))[0]
        return self._embeddings[key]

    def condition(self, specs: list[str] | None, mask: torch.Tensor | None = None, photo=None,
                  match_color: bool = False) -> torch.Tensor:
        """Paintings (PATH or PATH=W) -> the baked network's style weights (N,), or (N, H, W) with a mask."""
        from stylize.models.style_prediction import bake

        if not specs:
            raise StylizeError(f"model {self.name} takes any painting: give one with --style PAINTING.jpg")
        paths, weights = mixing.painting_weights(specs)
        embeddings = torch.stack([self.embedding(p, photo if match_color else None) for p in paths])
        self.net, self.styles = bake(self.base, embeddings), paths
        # the palette step follows the paintings, unless their colours were given the photo's
        self._palettes, self._matched = [palette.stats(self.painting(p).numpy()) for p in paths], match_color
        if mask is None:
            return torch.tensor(weights)
        if len(specs) != 2:
            raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
        return torch.stack([mask, 1 - mask])

    def palettes(self) -> list | None:
        """The paintings' own colours, unless they were given the photo's (--color-method match)."""
        return None if self._matched else self._palettes


class AdaINStylizer:
    """An adaptive (AdaIN) model: any style image, given at apply time (see adain.py)."""

    def __init__(self, record: dict, device: str = "auto", style_size: int | None = 512):
        from stylize.models.adain import AdaINConfig, AdaINNet

        self.record, self.device, self.style_size = record, pick_device(device), style_size
        self.name = Path(record["path"]).stem
        self.has_strength = True  # the paper's alpha
        self.styles: list[str] = []
        self.net = modelfile.build(record, lambda: AdaINNet(AdaINConfig(**record["net"])), record["state_dict"])
        self.net.eval().requires_grad_(False).to(self.device)
        self._stats: dict = {}

    def _style(self, path: str, photo: torch.Tensor | None, match: bool):
        from stylize.apply.color import match_colors
        from stylize.train.data import load_style
        from stylize.features.losses import mean_std

        key = (path, id(photo) if match else None)
        if key not in self._stats:
            _, style = load_style(path, self.style_size)
            if match and photo is not None:
                style = match_colors(style, photo)
            with torch.inference_mode():
                self._stats[key] = mean_std(self.net.encoder(style[None].to(self.device)))
        return self._stats[key]

    def condition(self, specs: list[str] | None, mask: torch.Tensor | None = None, photo=None,
                  match_color: bool = False):
        """Style images (PATH or PATH=W) -> (stats per style, weights, masks) for AdaINNet."""
        if not specs:
            raise StylizeError(f"model {self.name} is adaptive: give a style image with --style PAINTING.jpg")
        paths, weights = mixing.painting_weights(specs)
        stats = [self._style(p, photo, match_color) for p in paths]
        masks = None
        if mask is not None:
            if len(specs) != 2:
                raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
            m = mask[None, None].to(self.device)
            masks = [m, 1 - m]
        return stats, weights, masks

    budget = 1 << 62  # runs untiled
    load = staticmethod(lambda path, max_size=None: load_image(path, max_size))
    load_mask = staticmethod(lambda path, size: load_mask(path, size))
    wrap = staticmethod(lambda a: torch.from_numpy(a).float() / 255)  # as load() gives it (video.py)

    def run(self, x: torch.Tensor, cond, strength: float) -> torch.Tensor:
        return self(x, cond, strength)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, cond, strength: float = 1.0) -> torch.Tensor:
        """strength is the paper's alpha: 0 decodes the photo's own features."""
        mixing.check_strength(strength)
        stats, weights, masks = cond
        _, h, w = x.shape
        ph, pw = (-h) % 8, (-w) % 8  # three poolings in the encoder
        xb = x[None].to(self.device)
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        if masks is not None and (ph or pw):
            masks = [F.pad(m, (0, pw, 0, ph), mode="replicate") for m in masks]
        y = self.net(xb, stats, weights, masks, alpha=strength)
        return y[0, :, :h, :w].clamp(0, 1).float().cpu()


def load_stylizer(model: str | Path = DEFAULT_MODEL, device: str = "auto", style_size: int | None = None,
                  tile: int | None = None, memory_mb: float = ApplyConfig.memory_mb,
                  notice: Callable[[str], None] | None = None, tile_progress: Callable[[int, int], None] | None = None):
    """A Stylizer for transformer models, an ArbitraryStylizer for arbitrary-style ones, an AdaINStylizer
    for AdaIN ones (which run untiled). style_size: the painting's longest side (None: the model's)."""
    record = modelfile.load(model)
    if record.get("kind") == "adain":
        return AdaINStylizer(record, device, style_size or 512)
    if record["net"].get("style_dim"):
        return ArbitraryStylizer(record, device, tile, memory_mb, notice, tile_progress, style_size)
    return Stylizer(record, device, tile, memory_mb, notice, tile_progress)


def load_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """A greyscale mask (white = first style) of the photo's size: (H, W) in [0, 1]."""
    m, _ = load_image(path)
    (mh, mw), (h, w) = m.shape[1:], size
    if (mh, mw) != (h, w):
        # the photo's shape at another size (--max-size scaled the photo): scaled with it
        if abs(mw * h - mh * w) > max(mw, mh, w, h):
            raise StylizeError(f"{path}: mask is {mw}x{mh}, the photo is {w}x{h} (a mask has the photo's shape)")
        m = F.interpolate(m[None], size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    return m.mean(0)


