"""Stylizing on the CPU through ONNX Runtime, without importing torch.

Why: on a CPU, most of a one-photo run used to be start-up and a slow forward pass. Importing torch
and torchvision takes seconds, ONNX Runtime a fraction of one, and ONNX Runtime ran the transformer
network faster than eager PyTorch (figures: docs/benchmarks.md; bench/apply.py).
Which graph a model runs, and its export into the cache on first use, is graphs.py's; this module
only runs a graph (export.py checks each graph it writes with it).

Covered: whole-image passes of transformer models (style choice, mixing, strength) and of models
for any painting (arbitrary-style and AdaIN) with one painting; what happens around the network is
the recipe's (recipe.py), as for PyTorch. Masks, --color-method match, style interpolation and images
over the memory budget go to the PyTorch path (per-pixel conditions, recoloured paintings, tiling),
as does --tile. WCT models run in onnx_wct.py (several graphs, numpy between them).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
from pathlib import Path
from typing import Callable

import numpy as np

from stylize.apply import mixing, palette, recipe
from stylize.apply.budget import budget_pixels
from stylize.apply.recipe import Look
from stylize.errors import StylizeError
from stylize.images import check_style, read_array
from stylize.settings import ApplyConfig

# The version of the graphs export.py writes, in their metadata and in the names graphs.py caches
# them under: bumped whenever a change to export.py changes a graph, so that no cache or shipped
# folder hands an old graph to new code. 2: the default graph bakes the recipe's network strength.
GRAPH_VERSION = 2


def installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def session_options(ort):
    """ONNX Runtime's options for this process: as many compute threads as CPUs it may run on.
    ONNX Runtime's default is the machine's physical cores, whatever the process's CPU affinity
    (taskset, container cpusets), so a process held to one core ran two threads on it: at 1024x768 the
    default model took 1.21 s instead of 0.85 (bench/peer.py --pin 1; docs/benchmarks.md)."""
    options = ort.SessionOptions()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if allowed and allowed < (os.cpu_count() or allowed):
        options.intra_op_num_threads = allowed
    return options


def accelerator_present() -> bool:
    """Whether --device auto would pick a GPU, judged without importing torch: an NVIDIA driver, or
    an Apple-silicon Mac (MPS)."""
    return Path("/proc/driver/nvidia/version").exists() or (platform.system() == "Darwin" and platform.machine() == "arm64")


class OnnxStylizer:
    """An exported model (export.py) in an ONNX Runtime session (recipe.Stylizer)."""

    def __init__(self, graph: str | Path, style_size: int | None = ApplyConfig.style_size, memory_mb: float = ApplyConfig.memory_mb,
                 fallback: Callable[[], object] | None = None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(graph), session_options(ort), providers=["CPUExecutionProvider"])
            self.meta = json.loads(self.session.get_modelmeta().custom_metadata_map["stylize"])
        except Exception as e:
            raise StylizeError(f"{graph}: not a stylize ONNX graph ({type(e).__name__})")
        # a cached graph's name: the model's, its sha256 and the graph version (graphs._graph_name)
        self.name = re.sub(r"-[0-9a-f]{20}(-g\d+)?$", "", Path(graph).stem.removesuffix("-default"))
        self.styles: list[str] = self.meta["styles"]
        self.arbitrary = bool(self.meta.get("arbitrary"))  # a transformer for any painting (style_prediction.py)
        self.adaptive = self.meta["kind"] == "adain" or self.arbitrary  # a style image at apply time
        self.has_strength = self.meta["kind"] == "adain" or bool(self.meta["strength"])  # --style-weight works
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.style_size = style_size or self.meta.get("style_size", 512)
        adain = self.adaptive and not self.arbitrary
        self.multiple, self.least = self.meta["multiple"], 0 if adain else 8  # as the PyTorch engines pad
        self.budget = 1 << 62 if adain else budget_pixels(memory_mb, self.meta["width"])
        self._fallback, self._torch = fallback, None  # PyTorch stylizer for images over the budget
        self._style_cache: dict = {}
        self.apply = self.meta.get("apply") or {}  # how the model applies: recipe.py
        self.colours = palette.colours(self.apply)  # a trained model's styles' palettes

    def stylize(self, x: np.ndarray, weights: list[float] | None = None, strength: float = 1.0,
                style: np.ndarray | None = None) -> np.ndarray:
        """The graph alone: (3, H, W) float in [0, 1] -> (3, H, W) float in [0, 1] (a default graph:
        uint8 -> uint8) at the network's `strength`; padded (recipe.padding) and cropped."""
        _, h, w = x.shape
        ph, pw, mode = recipe.padding(h, w, self.multiple, self.least)
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
        feed = {"image": np.ascontiguousarray(x[None], dtype=np.uint8 if self.meta.get("default") else np.float32)}
        first = [1.0] + [0.0] * (len(self.styles) - 1)
        if self.adaptive:
            feed["style"] = np.ascontiguousarray(style[None], dtype=np.float32)
            feed["strength" if self.arbitrary else "alpha"] = np.array([strength], dtype=np.float32)
        elif self.meta.get("default"):  # its network strength is baked in (export._Default)
            if (weights and weights != first) or strength != self.meta.get("network_strength", 1.0):
                raise StylizeError(f"{self.name}: this graph stylizes only with the first style at full strength")
        else:
            feed["styles"] = np.array([weights or first], dtype=np.float32)
            if "strength" in self.inputs:
                feed["strength"] = np.array([strength], dtype=np.float32)
        return self.session.run(None, feed)[0][0, :, :h, :w]

    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False) -> Look:
        if mask is not None:
            raise StylizeError("masks run on the PyTorch path; use --runtime torch")
        if match_color:
            raise StylizeError("--color-method match runs on the PyTorch path; use --runtime torch")
        if not self.adaptive:
            weights = mixing.style_weights(specs, self.styles, self.name)
            return Look(np.asarray(weights, dtype=np.float32), self.colours, tuple(specs or ()))
        if not specs:
            raise StylizeError(f"model {self.name} is adaptive: give a style image with --style PAINTING.jpg")
        style, colours = self._painting(mixing.style_image(specs[0])[0])
        return Look(np.ones(1, np.float32), [colours], tuple(specs), style)

    def _painting(self, path: str) -> tuple[np.ndarray, tuple]:
        """A style image as the graph takes it, and its colour statistics; cached by content."""
        key = recipe.file_key(path)
        if key not in self._style_cache:
            style, _ = read_array(path, self.style_size)
            check_style(path, style.shape)
            if self.arbitrary:  # cropped as in style_prediction.crop_to_multiple
                m = self.meta["style_multiple"]
                style = style[:, : style.shape[1] - style.shape[1] % m, : style.shape[2] - style.shape[2] % m]
            self._style_cache[key] = style, palette.stats(style)
            while len(self._style_cache) > 8:  # a long-lived process (stylize serve) sees many paintings
                self._style_cache.pop(next(iter(self._style_cache)))
        return self._style_cache[key]

    def load(self, path, max_size: int | None = None):
        return read_array(path, max_size, uint8=True)

    def load_mask(self, path, size):
        raise StylizeError("masks run on the PyTorch path; use --runtime torch")

    def network(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        if x.shape[1] * x.shape[2] > self.budget and self._fallback is not None:
            # over the memory budget: the PyTorch engine runs it in tiles, with its own look
            self._torch = self._torch or self._fallback()
            return self._torch.network(x, self._torch.condition(list(look.specs) or None), strength)
        if self.meta.get("default"):  # uint8 in and out
            return self.stylize(x, look.weights.tolist(), strength)
        photo = x.astype(np.float32) / 255
        if self.adaptive:
            y = self.stylize(photo, strength=strength, style=look.data)
        else:
            y = self.stylize(photo, look.weights.tolist(), strength)
        y *= 255
        return np.round(y, out=y).astype(np.uint8)  # in place: one photo-sized temporary fewer

    def run(self, x: np.ndarray, look: Look, strength: float) -> np.ndarray:
        """recipe.run with this engine."""
        return recipe.run(self, x, look, strength)
