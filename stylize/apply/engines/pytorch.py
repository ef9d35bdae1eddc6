"""The PyTorch engine: a loaded model runs its network on a photo, whole or in tiles (tiling.py).

What happens around the network (work size, padding, calibrated strength, palette, colour) is the
recipe's (recipe.py), for every engine alike. Library only: nothing is printed here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stylize.apply import mixing, palette, recipe
from stylize.apply.budget import budget_pixels
from stylize.apply.recipe import Look
from stylize.models import modelfile
from stylize.apply.engines import paintings, tiling
from stylize.devices import pick_device
from stylize.errors import StylizeError
from stylize.images import read_array
from stylize.models.networks import NetConfig, TransformerNet
from stylize.models.norms import Condition

from stylize.settings import DEFAULT_MODEL, ApplyConfig


class Stylizer:
    """A loaded transformer model (recipe.Stylizer), its network run on (3, H, W) photos of any size.

    An image over the memory budget (`memory_mb` of working memory for the network), or any image
    larger than `tile` when that is set, is stylized in tiles (tiling.py) with the untiled result. On
    a GPU, running out of memory falls back to tiles by itself and says so through `notice`.
    """

    multiple, least = 4, 8  # two stride-2 convolutions; the 9x9 reflection pad

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
        self.apply = self.record.get("apply") or {}  # how the file says it applies: recipe.py

    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False) -> Look:
        """Style weights (N,), or with a mask (H, W) spatial weights (N, H, W): white -> first style."""
        if match_color:
            raise StylizeError("--color-method match needs a style image, so an adaptive model; use luminance")
        weights = np.asarray(mixing.style_weights(specs, self.styles, self.name), dtype=np.float32)
        if mask is not None:
            if not specs or len(specs) != 2:
                raise StylizeError("--mask needs exactly two --style values: the first paints the white region")
            mask = np.asarray(mask, dtype=np.float32)
            a, b = (self.style_index(s.partition("=")[0]) for s in specs)
            weights = np.zeros((len(self.styles), *mask.shape), np.float32)
            weights[a] += mask
            weights[b] += 1 - mask
        return Look(weights, palette.colours(self.apply), tuple(specs or ()))

    def style_weights(self, specs: list[str] | None) -> torch.Tensor:
        """Parse ["starry"], ["1"], ["starry=0.7", "wave=0.3"] into normalised weights (N,)."""
        return torch.tensor(mixing.style_weights(specs, self.styles, self.name))

    def style_index(self, name: str) -> int:
        return mixing.style_index(name, self.styles, self.name)

    @property
    def budget(self) -> int:
        return budget_pixels(self.memory_mb, self.net.cfg.width)

    def load(self, path, max_size: int | None = None):
        return read_array(path, max_size, uint8=True)  # a quarter of float's memory

    load_mask = staticmethod(paintings.mask_array)

    def network(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        return self._forward(torch.from_numpy(x), look, strength, None, torch.uint8).numpy()

    run = paintings.run

    def tile_size(self, memory_mb: float | None = None) -> int:
        """The tile side that keeps one window of the network within the memory budget."""
        pixels = budget_pixels(memory_mb or self.memory_mb, self.net.cfg.width)
        return tiling.tile_for_pixels(pixels)

    def __call__(self, x: torch.Tensor, styles: torch.Tensor | Look | None = None, strength: float = 1.0,
                 tile: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The network alone (no recipe) on x: (3, H, W) float in [0, 1] or uint8; styles: (N,) weights,
        (N, H, W) spatial weights or a Look; strength in [0, 1], the network's; tile: tile side in
        pixels (None: the Stylizer's; 0: only over the memory budget). Returns (3, H, W) on the CPU:
        float in [0, 1], or uint8 with dtype=torch.uint8."""
        recipe.check_strength(strength, self.name, self.has_strength)
        return self._forward(x, styles, strength, tile, dtype)

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, styles, strength: float, tile: int | None, dtype: torch.dtype) -> torch.Tensor:
        net = self.net
        if isinstance(styles, Look):  # an arbitrary-style model's look carries its baked network
            net = styles.data if styles.data is not None else self.net
            styles = torch.from_numpy(styles.weights)
        _, h, w = x.shape
        ph, pw, mode = recipe.padding(h, w, self.multiple, self.least)  # none when the recipe padded it
        mode = "replicate" if mode == "edge" else mode
        s = torch.tensor([strength], device=self.device) if self.record["net"].get("strength") else None
        tile = self.tile if tile is None else tile
        over_budget = (h + ph) * (w + pw) > self.budget
        if (tile and max(h, w) > tile) or (not tile and over_budget):
            return self._tiled(net, x, styles, s, tile or self.tile_size(), mode, dtype)
        try:
            return self._whole(net, x, styles, s, ph, pw, mode, dtype)
        except torch.cuda.OutOfMemoryError:
            pass  # tile outside this block: its traceback still holds the failed attempt's tensors
        torch.cuda.empty_cache()
        budget = self.memory_mb
        if self.device.type == "cuda":  # another process may hold most of the card
            budget = min(budget, torch.cuda.mem_get_info(self.device)[0] / 2**20 / 2)
        tile = self.tile_size(budget)
        if self.notice:
            self.notice(f"out of GPU memory for {w}x{h} in one piece; stylizing it in tiles of {tile} px")
        return self._tiled(net, x, styles, s, tile, mode, dtype)

    def _whole(self, net, x, styles, s, ph: int, pw: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
        _, h, w = x.shape
        xb = x[None].to(self.device)
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode=mode)
        if styles is not None:
            styles = styles.to(self.device)[None]
            if styles.dim() == 4 and (ph or pw):
                styles = F.pad(styles, (0, pw, 0, ph), mode="replicate")
        y = net(xb, Condition(styles, s))[0, :, :h, :w].clamp_(0, 1)
        return (y.mul_(255).round_().to(dtype) if dtype == torch.uint8 else y.float().contiguous()).cpu()

    def _tiled(self, net, x, styles, s, tile: int, mode: str, dtype: torch.dtype) -> torch.Tensor:
        if styles is not None:  # weights go to the device now; spatial maps stay here and go tile by tile
            styles = styles[None].to(self.device) if styles.dim() == 1 else styles[None].cpu()
        return tiling.run_tiles(net, x.cpu(), Condition(styles, s), tile, self.device, self.notice,
                                pad_mode=mode, dtype=dtype, memory_mb=self.memory_mb, progress=self.tile_progress)


class ArbitraryStylizer(Stylizer):
    """An arbitrary-style transformer model (style_prediction.py): any painting, given at apply time.

    The paintings' embeddings are baked into an ordinary N-style network (style_prediction.bake),
    which the condition's Look carries: from there on it runs as a Stylizer (mixing, masks, strength,
    tiling). Paintings, embeddings and baked networks are cached by content (recipe.file_key,
    recipe.content_key), never by a Python object's id()."""

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
        self.styles, self._embeddings, self._paintings, self._baked = [], {}, {}, {}

    def painting(self, path: str) -> torch.Tensor:
        """A painting as the predictor reads it: at style_size, cropped to the network's multiple."""
        from stylize.images import load_style
        from stylize.models.style_prediction import crop_to_multiple

        key = recipe.file_key(path)
        if key not in self._paintings:
            self._paintings = {key: crop_to_multiple(load_style(path, self.style_size)[1]), **self._paintings}
            while len(self._paintings) > 8:  # a long-lived process (stylize serve) sees many paintings
                self._paintings.pop(next(reversed(self._paintings)))
        return self._paintings[key]

    @torch.inference_mode()
    def embedding(self, path: str, photo=None, photo_key: tuple | None = None) -> torch.Tensor:
        """A painting's style embedding (D,); with `photo`, of the painting recoloured to the photo's
        colours (photo_key: its recipe.content_key, when known)."""
        from stylize.apply.color import match_colors

        if photo is not None and photo_key is None:
            photo_key = recipe.content_key(photo)
        key = (recipe.file_key(path), photo_key if photo is not None else None)
        if key not in self._embeddings:
            style = self.painting(path)
            if photo is not None:
                style = match_colors(style, photo)
            self._embeddings = {k: v for k, v in self._embeddings.items() if k[1] is None}  # one photo's at a time
            self._embeddings[key] = self.predictor(self.features(style[None].to(self.device)))[0]
        return self._embeddings[key]

    def baked(self, paths: list[str], photo=None) -> torch.nn.Module:
        """The network with these paintings' embeddings baked in (recoloured to `photo`'s colours when
        given), cached by the paintings' and the photo's content."""
        from stylize.models.style_prediction import bake

        photo_key = recipe.content_key(photo) if photo is not None else None
        key = (tuple(recipe.file_key(p) for p in paths), photo_key)
        if key not in self._baked:
            embeddings = torch.stack([self.embedding(p, photo, photo_key) for p in paths])
            while len(self._baked) >= 4:
                self._baked.pop(next(iter(self._baked)))
            self._baked[key] = bake(self.base, embeddings)
        return self._baked[key]

    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False) -> Look:
        """Paintings (PATH or PATH=W) -> weights (N,), or (N, H, W) with a mask, over the baked network
        (the Look's data); the palette step follows the paintings, unless their colours were given
        the photo's (--color-method match)."""
        if not specs:
            raise StylizeError(f"model {self.name} takes any painting: give one with --style PAINTING.jpg")
        paths, weights = mixing.painting_weights(specs)
        matched = match_color and photo is not None
        net = self.baked(paths, photo if matched else None)
        palettes = None if match_color else [palette.stats(self.painting(p).numpy()) for p in paths]
        return Look(paintings.painting_weights(weights, specs, mask), palettes, tuple(specs), net)


class AdaINStylizer:
    """An adaptive (AdaIN) model (recipe.Stylizer): any style image, given at apply time (adain.py).
    Its network runs untiled; strength is the paper's alpha."""

    multiple, least = 8, 0  # three poolings in the encoder
    budget = 1 << 62  # runs untiled

    def __init__(self, record: dict, device: str = "auto", style_size: int | None = 512):
        from stylize.features.losses import mean_std
        from stylize.models.adain import AdaINConfig, AdaINNet

        self.record, self.device, self.style_size = record, pick_device(device), style_size
        self.name = Path(record["path"]).stem
        self.has_strength = True  # the paper's alpha
        self.styles: list[str] = []
        self.apply = record.get("apply") or {}
        self.net = modelfile.build(record, lambda: AdaINNet(AdaINConfig(**record["net"])), record["state_dict"])
        self.net.eval().requires_grad_(False).to(self.device)
        # a style image's relu4_1 statistics
        self._stats = paintings.PaintingStats(lambda style: mean_std(self.net.encoder(style[None].to(self.device))),
                                              style_size)

    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False) -> Look:
        """Style images (PATH or PATH=W) -> a Look: their weights, or with a mask the per-pixel
        [mask, 1 - mask]; its data the statistics per style and their weights, for AdaINNet."""
        _, weights, stats = self._stats.of_request(self.name, specs, photo, match_color)
        return Look(paintings.painting_weights(weights, specs, mask), None, tuple(specs), (stats, weights))

    def load(self, path, max_size: int | None = None):
        return read_array(path, max_size, uint8=True)

    load_mask = staticmethod(paintings.mask_array)

    @torch.inference_mode()
    def network(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        y = self._forward(torch.from_numpy(x)[None].to(self.device).float().div_(255), look, strength)
        return y.mul_(255).round_().to(torch.uint8).cpu().numpy()

    def __call__(self, x: torch.Tensor, look: Look, strength: float = 1.0) -> torch.Tensor:
        """The network alone (no recipe) on x: (3, H, W) float in [0, 1] (or uint8) -> float in [0, 1]
        on the CPU; strength is the paper's alpha (0 decodes the photo's own features)."""
        recipe.check_strength(strength)
        _, h, w = x.shape
        ph, pw, mode = recipe.padding(h, w, self.multiple, self.least)
        xb = x[None].to(self.device)
        xb = xb.float().div_(255) if xb.dtype == torch.uint8 else xb
        if ph or pw:
            xb = F.pad(xb, (0, pw, 0, ph), mode="replicate" if mode == "edge" else mode)
            look = dataclasses.replace(look, weights=np.pad(look.weights, ((0, 0), (0, ph), (0, pw)), mode="edge")) \
                if look.weights.ndim == 3 else look
        return self._forward(xb, look, strength)[:, :h, :w].cpu()

    @torch.inference_mode()
    def _forward(self, xb: torch.Tensor, look: Look, strength: float) -> torch.Tensor:
        """(1, 3, H, W) float on the device, H and W multiples of 8 -> (3, H, W) float in [0, 1]."""
        stats, weights = look.data
        masks = None
        if look.weights.ndim == 3:
            m = torch.from_numpy(look.weights)[:, None, None].to(self.device)
            masks = [m[0], m[1]]
        return self.net(xb, stats, weights, masks, alpha=strength)[0].clamp_(0, 1)

    run = paintings.run


def load_stylizer(model: str | Path = DEFAULT_MODEL, device: str = "auto", style_size: int | None = None,
                  tile: int | None = None, memory_mb: float = ApplyConfig.memory_mb,
                  notice: Callable[[str], None] | None = None, tile_progress: Callable[[int, int], None] | None = None):
    """A Stylizer for transformer models, an ArbitraryStylizer for arbitrary-style ones, an AdaINStylizer
    for AdaIN ones and a WCTStylizer (engines/wct.py) for WCT ones (both untiled). style_size: the
    painting's longest side (None: the model's)."""
    record = modelfile.load(model)
    if record.get("kind") == "adain":
        return AdaINStylizer(record, device, style_size or 512)
    if record.get("kind") == "wct":
        from stylize.apply.engines.wct import WCTStylizer

        return WCTStylizer(record, device, style_size)
    if record["net"].get("style_dim"):
        return ArbitraryStylizer(record, device, tile, memory_mb, notice, tile_progress, style_size)
    return Stylizer(record, device, tile, memory_mb, notice, tile_progress)
