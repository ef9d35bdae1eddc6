"""The WCT engine on ONNX Runtime (recipe.Stylizer), without importing torch: a WCT model
(models/wct.py) as an encoder graph per level and one paint graph (export.export_wct; graphs.py
caches and ships them). A painting's encoder graphs give its statistics, from which numpy works out
its colouring once (models/whitening.py: an eigendecomposition, which ONNX lacks); the paint graph
takes the photo, those colourings and the strength and does the rest, the photo's whitening
included (models/wct.wct), as engines/wct.py does it in PyTorch. Why: importing torch was half of a
one-photo run (issue 30; figures in the README).

Covered: one painting or several mixed by weight, and --style-weight. Masks and --color-method
match stay on the PyTorch engine (choose.py sends them there).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from stylize.apply import mixing, recipe
from stylize.apply.engines.onnx_runtime import session_options
from stylize.apply.recipe import Look
from stylize.errors import StylizeError
from stylize.images import check_style, read_array
from stylize.models.whitening import WCTConfig, colouring, fine_band, mix, statistics

CACHED_PAINTINGS = 8  # a long-lived process (stylize serve) sees many paintings


class OnnxWCT:
    """A WCT model's graphs ({"enc-TAP": path} per level and {"paint": path}) in ONNX Runtime sessions."""

    budget = 1 << 62  # runs untiled: the transform needs the whole photo's statistics

    def __init__(self, graphs: dict[str, Path], name: str, style_size: int | None = None):
        import onnxruntime as ort

        self.sessions, meta = {}, None
        options = session_options(ort)
        # without an arena per session: the six graphs of old (a decoder per level) held 640 MB at
        # 1024x768 with, 300 without, in the same time
        options.enable_cpu_mem_arena = False
        for part, graph in graphs.items():
            try:
                self.sessions[part] = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
                meta = json.loads(self.sessions[part].get_modelmeta().custom_metadata_map["stylize"])
            except Exception as e:
                raise StylizeError(f"{graph}: not a stylize ONNX graph ({type(e).__name__})")
        cfg = WCTConfig(**meta["net"])
        self.name, self.levels, self.detail = name, cfg.levels, cfg.detail
        self.styles: list[str] = []
        self.has_strength = True  # every level's strength times --style-weight
        self.apply = meta.get("apply") or {}
        # as engines/wct.py: the coarsest level's features at least 2x2 (a reflection pad of 1 needs 2)
        self.multiple = cfg.multiple
        self.least = 2 * self.multiple
        self.style_size = style_size or cfg.style_size
        self._stats: dict = {}

    def _statistics(self, tap: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(1, 3, H, W) painting in [0, 1] -> its features' (mean, covariance) at `tap`."""
        f, mean, gram = self.sessions[f"enc-{tap}"].run(None, {"image": x})
        return statistics(mean, gram, f.shape[2] * f.shape[3])

    def _painting(self, path: str) -> dict:
        """A painting's {tap: (mean, covariance)}, read once per content (recipe.file_key)."""
        key = recipe.file_key(path)
        if key not in self._stats:
            style, _ = read_array(path, self.style_size)
            check_style(path, style.shape)
            while len(self._stats) >= CACHED_PAINTINGS:
                self._stats.pop(next(iter(self._stats)))
            self._stats[key] = {t: self._statistics(t, style[None]) for t, _ in self.levels}
        return self._stats[key]

    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False) -> Look:
        """Paintings (PATH or PATH=W) -> a Look whose data is {tap: (mean, colouring)}: their statistics
        mixed by weight, as engines/wct.py without a mask."""
        if mask is not None:
            raise StylizeError("masks run on the PyTorch path; use --runtime torch")
        if match_color:
            raise StylizeError("--color-method match runs on the PyTorch path; use --runtime torch")
        if not specs:
            raise StylizeError(f"model {self.name} is adaptive: give a style image with --style PAINTING.jpg")
        paths, weights = mixing.painting_weights(specs)
        stats = [self._painting(p) for p in paths]
        targets = {t: colouring(*mix([s[t] for s in stats], weights)) for t, _ in self.levels}
        return Look(np.asarray(weights, dtype=np.float32), None, tuple(specs), targets)

    def load(self, path, max_size: int | None = None):
        return read_array(path, max_size, uint8=True)

    def load_mask(self, path, size):
        raise StylizeError("masks run on the PyTorch path; use --runtime torch")

    def network(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        """(3, H, W) uint8, H and W multiples of `multiple` -> the paint graph's picture (each level
        encoded, whitened, coloured and decoded) plus the photo's finest band, uint8; at strength 0 the
        photo itself (engines/wct.py)."""
        if strength == 0:
            return x
        feed = {"image": x[None].astype(np.float32) / 255, "strength": np.array([strength], np.float32)}
        for tap, _ in self.levels:
            feed[f"mean_{tap}"], feed[f"colouring_{tap}"] = (a.astype(np.float32) for a in look.data[tap])
        y = self.sessions["paint"].run(None, feed)[0][0] * 255
        if self.detail:  # the photo's finest band, which the decoders lose
            y += fine_band(x, self.detail)
        return np.clip(y, 0, 255).round().astype(np.uint8)

    def run(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        """recipe.run with this engine."""
        return recipe.run(self, x, look, strength)
