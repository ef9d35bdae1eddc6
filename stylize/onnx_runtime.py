"""Stylizing on the CPU through ONNX Runtime, without importing torch.

Why: on a CPU, most of a one-photo run used to be start-up and a slow forward pass. Importing torch
and torchvision takes seconds, ONNX Runtime a fraction of one, and ONNX Runtime ran the transformer
network faster than eager PyTorch (figures: docs/benchmarks.md; bench/apply.py).
The first CPU apply of a model exports it once (export.py, which needs torch) into a cache keyed by
the model file's sha256; later runs load the cached graph and never touch torch.

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

from . import mixing, modelfile, palette
from .errors import StylizeError
from .files import file_sha256
from .images import read_array
from .pipeline import budget_pixels
from .settings import ApplyConfig

CACHE_ENV = "STYLIZE_CACHE"
CACHE_MB = 512  # the graph cache keeps the most recently used graphs within this size


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stylize").expanduser()


def installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def accelerator_present() -> bool:
    """Whether --device auto would pick a GPU, judged without importing torch: an NVIDIA driver, or
    an Apple-silicon Mac (MPS)."""
    return Path("/proc/driver/nvidia/version").exists() or (platform.system() == "Darwin" and platform.machine() == "arm64")


def cached_graph(model: str | Path, notice: Callable[[str], None] | None = None, default: bool = False) -> Path:
    """The model's ONNX graph: shipped beside it (SHIPPED_GRAPHS), or in the cache, exported (and
    checked against PyTorch) on first use; with `default`, the faster graph of its default condition
    (export._Default), for transformer models. A cached graph used is marked recent; past CACHE_MB
    the least recently used go."""
    path = modelfile.resolve(model)
    if (shipped := shipped_graph(path, default)).exists():
        return shipped
    graph = graph_path(path, default)
    if graph.exists():
        os.utime(graph)
        return graph
    if notice:
        notice(f"preparing {path.stem} for ONNX Runtime (once, some seconds; cached in {graph.parent})")
    from .export import export_onnx

    export_onnx(path, graph, default=default)
    _prune(graph.parent, keep=graph)
    return graph


def _graph_name(path: Path, default: bool) -> str:
    """Named by the model file's content, not its path: a retrained model never meets a stale graph."""
    return f"{path.stem}-{file_sha256(path)[:20]}{'-default' if default else ''}.onnx"


def graph_path(model: str | Path, default: bool = False) -> Path:
    """Where the cache keeps a model's graph."""
    path = modelfile.resolve(model)
    return cache_dir() / "onnx" / _graph_name(path, default)


# Graphs exported ahead of time and kept in an onnx/ folder beside their models (weights/onnx/ for
# the shipped ones: `python tools/ship_graphs.py`), so that a first apply does not wait for an export.
SHIPPED_GRAPHS = "onnx"


def shipped_graph(model: str | Path, default: bool = False) -> Path:
    path = modelfile.resolve(model)
    return path.parent / SHIPPED_GRAPHS / _graph_name(path, default)


def _prune(folder: Path, keep: Path, limit_mb: float = CACHE_MB) -> None:
    graphs = sorted(folder.glob("*.onnx"), key=lambda g: g.stat().st_mtime, reverse=True)
    total = 0
    for g in graphs:
        total += g.stat().st_size
        if total > limit_mb * 2**20 and g != keep:
            g.unlink(missing_ok=True)


def cache_problem() -> str | None:
    """Why no graph can be written to the cache (a read-only home, an unwritable STYLIZE_CACHE), or None."""
    folder = cache_dir() / "onnx"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create {folder}: {e.strerror}"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"


class OnnxStylizer:
    """An exported model (export.py) in an ONNX Runtime session; the file pipeline's interface."""

    def __init__(self, graph: str | Path, style_size: int | None = ApplyConfig.style_size, memory_mb: float = ApplyConfig.memory_mb,
                 fallback: Callable[[], object] | None = None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
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
        if x.shape[1] * x.shape[2] > self.budget and self._fallback is not None:
            import torch  # tiling: over the memory budget, the PyTorch path runs it in tiles

            self._torch = self._torch or self._fallback()
            if self.arbitrary:  # the PyTorch stylizer bakes the painting into its own network
                return self._torch.run(torch.from_numpy(x), self._torch.condition(self._specs), strength)
            return self._torch.run(torch.from_numpy(x), torch.tensor(cond), strength)
        network_strength, amount = mixing.calibrated(strength, self.apply)
        targets, weights = self.colours, cond if cond is not None else [1.0] + [0.0] * (len(self.styles) - 1)
        if self.meta.get("default"):  # uint8 in and out; the calibrated strength is in the graph
            y = self.stylize(x, cond, strength)
        else:
            photo = x.astype(np.float32) / 255
            if self.adaptive:
                style, colours = cond
                targets, weights = [colours], [1.0]
                y = self.stylize(photo, strength=network_strength, style=style)
            else:
                y = self.stylize(photo, cond, network_strength)
            y = y * 255
            y = np.round(y, out=y).astype(np.uint8)  # in place: one photo-sized temporary fewer
        return palette.recolour(y, targets, weights, amount) if amount and targets else y


def load(model: str | Path, style_size: int | None = ApplyConfig.style_size, memory_mb: float = ApplyConfig.memory_mb,
         notice: Callable[[str], None] | None = None, fallback: Callable[[], object] | None = None,
         default: bool = False, strength: float = 1.0):
    """An OnnxStylizer for the model: its cached graph, exported first if need be. Where the cache
    cannot be written, `fallback()` (the PyTorch stylizer), said once to `notice`; a cached graph
    that does not load (a truncated file, a disk error) is rebuilt.

    `default`: the request is the model's default condition (no --style, full strength), so a
    transformer model runs its faster default graph (an adaptive model needs a --style, so for it the
    flag changes nothing: its graph is exported as always, and its condition() asks for the style).
    `strength` is checked against the model before a first export, which takes seconds."""
    notice = notice or (lambda message: None)
    cached = graph_path(model, default).exists() or shipped_graph(model, default).exists()
    if not cached and strength != 1.0:
        d = modelfile.describe(modelfile.read_record(model))
        mixing.check_strength(strength, d["name"], d["kind"] == "adain" or d["strength"])
    if not cached and (why := cache_problem()):
        if fallback is None:
            raise StylizeError(f"ONNX cache: {why}; set {CACHE_ENV} to a writable folder")
        notice(f"ONNX cache: {why}; using PyTorch (set {CACHE_ENV} to a writable folder for the faster path)")
        return fallback()
    graph = cached_graph(model, notice, default)
    try:
        return OnnxStylizer(graph, style_size, memory_mb, fallback)
    except StylizeError:
        if graph != graph_path(model, default):  # a shipped graph that does not load: the install is broken
            raise
        graph.unlink(missing_ok=True)
        notice(f"{graph}: a damaged cached graph; rebuilding it")
        return OnnxStylizer(cached_graph(model, notice, default), style_size, memory_mb, fallback)
