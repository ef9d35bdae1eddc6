"""Stylizing on the CPU through ONNX Runtime, without importing torch.

Why: on a CPU, most of a one-photo run used to be start-up and a slow forward pass. Importing torch
and torchvision takes seconds, ONNX Runtime a fraction of one, and ONNX Runtime ran the transformer
network faster than eager PyTorch (figures: docs/benchmarks.md; bench/apply.py).
Which graph a model runs, and its export into the cache on first use, is graphs.py's; this module
only runs a graph (export.py checks each graph it writes with it).

Covered: whole-image passes of transformer models (style choice, mixing, strength) and of models
for any painting (arbitrary-style and AdaIN) with one painting. Masks, --preserve-color, style interpolation and images over the memory
budget go to the PyTorch path (per-pixel conditions, colour conversion, tiling), as does --tile.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path
from typing import Callable

import numpy as np

from stylize.apply import mixing, palette, scale
from stylize.errors import StylizeError
from stylize.images import read_array
from stylize.apply.batch import budget_pixels
from stylize.settings import ApplyConfig

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
    """An exported model (export.py) in an ONNX Runtime session; the file pipeline's interface."""

    def __init__(self, graph: str | Path, style_size: int | None = ApplyConfig.style_size, memory_mb: float = ApplyConfig.memory_mb,
                 fallback: Callable[[], object] | None = None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(graph), session_options(ort), providers=["CPUExecutionProvider"])
            self.meta = json.loads(self.session.get_modelmeta().custom_metadata_map["stylize"])
        except Exception as e:
            raise StylizeError(f"{graph}: not a stylize ONNX graph ({type(e).__name__})")
        self.name = Path(graph).stem.removesuffix("-default").rsplit("-", 1)[0]
        self.styles: list[str] = self.meta["styles"]
        self.arbitrary = bool(self.meta.get("arbitrary"))  # a transformer for any painting (style_prediction.py)
        self.adaptive = self.meta["kind"] == "adain" or self.arbitrary  # a style image at apply time
        self.has_strength = self.meta["kind"] == "adain" or bool(self.meta["strength"])  # --style-weight works
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.style_size = style_size or self.meta.get("style_size", 512)
        self.budget = 1 << 62 if self.adaptive and not self.arbitrary else budget_pixels(memory_mb, self.meta["width"])
        self._fallback, self._torch = fallback, None  # PyTorch stylizer for images over the budget
        self._style_cache: dict = {}
        self.apply = self.meta.get("apply") or {}  # how the model applies: mixing.calibrated
        self.colours = palette.colours(self.apply)  # a trained model's styles' palettes

    def stylize(self, x: np.ndarray, weights: list[float] | None = None, strength: float = 1.0,
                style: np.ndarray | None = None) -> np.ndarray:
        """(3, H, W) float in [0, 1] -> (3, H, W) float in [0, 1] (a default graph: uint8 -> uint8);
        padded and cropped as in PyTorch."""
        _, h, w = x.shape
        m = self.meta["multiple"]
        if self.adaptive and not self.arbitrary:
            ph, pw = (-h) % m, (-w) % m
        else:  # and at least 8 for the 9x9 reflection pad
            ph, pw = max(8, h + (-h) % m) - h, max(8, w + (-w) % m) - w
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
        feed = {"image": np.ascontiguousarray(x[None], dtype=np.uint8 if self.meta.get("default") else np.float32)}
        if self.adaptive:
            feed["style"] = np.ascontiguousarray(style[None], dtype=np.float32)
            feed["strength" if self.arbitrary else "alpha"] = np.array([strength], dtype=np.float32)
        elif self.meta.get("default"):
            if (weights and weights != [1.0] + [0.0] * (len(self.styles) - 1)) or strength != 1.0:
                raise StylizeError(f"{self.name}: this graph stylizes only with the first style at full strength")
        else:
            feed["styles"] = np.array([weights or [1.0] + [0.0] * (len(self.styles) - 1)], dtype=np.float32)
            if "strength" in self.inputs:
                feed["strength"] = np.array([strength], dtype=np.float32)
        return self.session.run(None, feed)[0][0, :, :h, :w]

    # -- the file pipeline's interface (pipeline.py) ------------------------------------------------
    def condition(self, specs: list[str] | None, mask=None, photo=None, match_color: bool = False):
        if self.adaptive:
            if not specs:
                raise StylizeError(f"model {self.name} is adaptive: give a style image with --style PAINTING.jpg")
            self._specs = specs
            path = mixing.style_image(specs[0])[0]
            if path not in self._style_cache:
                style, _ = read_array(path, self.style_size)
                if min(style.shape[1:]) < 16:
                    raise StylizeError(f"{path}: style image too small ({style.shape[2]}x{style.shape[1]}); need at least 16 px")
                if self.arbitrary:  # cropped as in style_prediction.crop_to_multiple
                    m = self.meta["style_multiple"]
                    style = style[:, : style.shape[1] - style.shape[1] % m, : style.shape[2] - style.shape[2] % m]
                self._style_cache[path] = style, palette.stats(style)
                while len(self._style_cache) > 8:  # a long-lived process (stylize serve) sees many paintings
                    self._style_cache.pop(next(iter(self._style_cache)))
            return self._style_cache[path]
        return mixing.style_weights(specs, self.styles, self.name)

    def load(self, path, max_size: int | None = None):
        return read_array(path, max_size, uint8=True)

    wrap = staticmethod(lambda a: a)  # a decoded (3, H, W) uint8 array, as load() gives it (video.py)

    def load_mask(self, path, size):
        raise StylizeError("masks run on the PyTorch path; use --runtime torch")

    def run(self, x: np.ndarray, cond, strength: float) -> np.ndarray:
        mixing.check_strength(strength, self.name, self.has_strength)
        shape = scale.work_shape(x.shape[1], x.shape[2], self.apply)  # as the PyTorch path: scale.py
        h, w = shape or x.shape[1:]
        if h * w > self.budget and self._fallback is not None:
            import torch  # tiling: over the memory budget, the PyTorch path runs it in tiles

            self._torch = self._torch or self._fallback()
            if self.arbitrary:  # the PyTorch stylizer bakes the painting into its own network
                return self._torch.run(torch.from_numpy(x), self._torch.condition(self._specs), strength)
            return self._torch.run(torch.from_numpy(x), torch.tensor(cond), strength)
        network_strength, amount = mixing.calibrated(strength, self.apply)
        targets, weights = self.colours, cond if cond is not None else [1.0] + [0.0] * (len(self.styles) - 1)
        small = x if shape is None else scale.resize(x, shape)
        if self.meta.get("default"):  # uint8 in and out; the calibrated strength is in the graph
            y = self.stylize(small, cond, strength)
        else:
            photo = small.astype(np.float32) / 255
            if self.adaptive:
                style, colours = cond
                targets, weights = [colours], [1.0]
                y = self.stylize(photo, strength=network_strength, style=style)
            else:
                y = self.stylize(photo, cond, network_strength)
            y = y * 255
            y = np.round(y, out=y).astype(np.uint8)  # in place: one photo-sized temporary fewer
        if shape is not None:
            y = scale.restore(y, small, x)
        return palette.recolour(y, targets, weights, amount) if amount and targets else y
